"""``python -m refacelib.train`` (alone or under ``torchrun``): train one cascade stage.

The command of :func:`refacelib.diffusion.train.main`.
"""
from refacelib.diffusion.train import main

if __name__ == "__main__":
    raise SystemExit(main())
