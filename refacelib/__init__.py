"""refacelib: the library behind the book reproducing Gao et al. (2025).

Subpackages, each importing only those listed before it (``tests/test_layers.py``):
``_utils`` (helpers), ``data``, ``imaging``, ``deface``, ``diffusion`` (which imports
neither ``data`` nor ``deface``), ``evaluation``, ``report``, ``pipeline`` (the only one
that knows run folders, notebooks and the book) and ``bench``. Each re-exports its
public names in ``__all__``, e.g. ``from refacelib.data import load_bids``. The
commands ``python -m refacelib.ablation``, ``refacelib.controls``, ``refacelib.train``
and ``refacelib.browser`` are modules at the top.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
