"""``python -m refacelib.pipeline``: build the book (see :mod:`refacelib.pipeline.book`)."""
import sys

from refacelib.pipeline.book import main

sys.exit(main())
