"""The cascaded diffusion model: configuration, networks, conditioning, training and sampling.

Imports neither :mod:`refacelib.data` nor :mod:`refacelib.deface`: arrays in, arrays out.
"""
from refacelib.diffusion import cascade, grid, linear, train, sample
from refacelib.diffusion.cascade import *  # noqa: F401,F403
from refacelib.diffusion.grid import *  # noqa: F401,F403
from refacelib.diffusion.train import *  # noqa: F401,F403
from refacelib.diffusion.sample import *  # noqa: F401,F403
from refacelib.diffusion.linear import *  # noqa: F401,F403

from refacelib._utils.device import autocast_context, resolve_device  # where the cascade computes

__all__ = ["resolve_device", "autocast_context", *cascade.__all__, *grid.__all__, *train.__all__, *sample.__all__, *linear.__all__]
