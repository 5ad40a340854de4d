"""Measurements on arrays: face surface distances, paired statistics, the matching attack, muscle.
"""
from refacelib.evaluation import reid, muscle
from refacelib.evaluation.reid import *  # noqa: F401,F403
from refacelib.evaluation.muscle import *  # noqa: F401,F403

__all__ = [*reid.__all__, *muscle.__all__]
