"""Head masks, head and face surfaces, their renderings, and the template registration.
"""
from refacelib.imaging import registration, surface, render
from refacelib.imaging.registration import *  # noqa: F401,F403
from refacelib.imaging.surface import *  # noqa: F401,F403
from refacelib.imaging.render import *  # noqa: F401,F403

__all__ = [*registration.__all__, *surface.__all__, *render.__all__]
