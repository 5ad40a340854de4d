"""Yes/no parameters, and the error a parameter that cannot be used raises."""
from __future__ import annotations

from typing import Any

__all__ = ["ConfigError", "parse_flag"]

_TRUE, _FALSE = ("1", "true", "yes", "on"), ("0", "false", "no", "off", "")


class ConfigError(ValueError):
    """A profile, dataset or parameter that cannot be used, with the reason."""


def parse_flag(value: Any, *, name: str = "flag") -> bool:
    """A yes/no parameter: a bool, 0/1, or one of true/false/yes/no/on/off/1/0.

    Anything else is a :class:`ConfigError` (a typo never silently means yes).

    Examples
    --------
    >>> parse_flag("1", name="publish_faces"), parse_flag(False), parse_flag("no")
    (True, False, False)
    """
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        text = value.strip().lower()
        if text in _TRUE:
            return True
        if text in _FALSE:
            return False
    raise ConfigError(f"{name} must be true or false (or 1/0, yes/no), got {value!r}")
