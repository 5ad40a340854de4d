"""``python -m refacelib.bench sizes``: write ``bench/stage_sizes.json`` (see :mod:`refacelib.bench.throughput`)."""
import sys

from refacelib.bench.throughput import main

sys.exit(main())
