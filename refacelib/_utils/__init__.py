"""Helpers every layer may use (private: import the module, e.g. ``refacelib._utils.io``).

:mod:`~refacelib._utils.io` atomic writers, :mod:`~refacelib._utils.hashing` the cache keys' hash,
:mod:`~refacelib._utils.paths` the repository root and dataset labels, :mod:`~refacelib._utils.flags`
yes/no parameters, :mod:`~refacelib._utils.device` devices and mixed precision,
:mod:`~refacelib._utils.parallel` worker pools (loky or a dask cluster), :mod:`~refacelib._utils.machine` and
:mod:`~refacelib._utils.git` what a result was computed on and from.
"""
