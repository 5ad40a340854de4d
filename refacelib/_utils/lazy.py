"""Re-export a subpackage's public names, loading each module on first use (PEP 562)."""
from __future__ import annotations

import importlib

__all__ = ["attach"]


def attach(package: str, modules: dict[str, list[str]]):
    """``(__getattr__, __dir__, __all__)`` of ``package``, whose ``modules`` hold these public names.

    Examples
    --------
    >>> getattr_, dir_, names = attach("json", {"decoder": ["JSONDecodeError"]})
    >>> getattr_("JSONDecodeError").__name__, names
    ('JSONDecodeError', ['decoder', 'JSONDecodeError'])
    """
    home = {name: module for module, names in modules.items() for name in names}

    def __getattr__(name):
        if name in modules:
            return importlib.import_module(f"{package}.{name}")
        if name in home:
            return getattr(importlib.import_module(f"{package}.{home[name]}"), name)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    names = [*modules, *home]
    return __getattr__, lambda: sorted(names), names
