"""Head masks, head and face surfaces, and their renderings.
"""
from refacelib.imaging import surface, render
from refacelib.imaging.surface import *  # noqa: F401,F403
from refacelib.imaging.render import *  # noqa: F401,F403

__all__ = [*surface.__all__, *render.__all__]
