"""``python -m refacelib.browser``: check a built book in headless Chromium.

The command of :func:`refacelib.pipeline.browser.main`.
"""
from refacelib.pipeline.browser import main

if __name__ == "__main__":
    raise SystemExit(main())
