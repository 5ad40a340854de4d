"""Defacing: removal regions, methods, brain masks, the cohort-average face and QC.
"""
from refacelib.deface import methods
from refacelib.deface.methods import *  # noqa: F401,F403

__all__ = [*methods.__all__]
