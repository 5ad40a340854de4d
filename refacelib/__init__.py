"""refacelib: the library behind the book reproducing Gao et al. (2025).

Subpackages re-export their public functions; import them explicitly, e.g.
``from refacelib import phantom``.
"""
__version__ = "0.1.0"

__all__ = ["__version__"]
