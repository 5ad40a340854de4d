"""Hashes that key caches and folder names: of JSON-able parameters, and of files."""
from __future__ import annotations

import hashlib
import json
from pathlib import Path
from typing import Any, Iterable

__all__ = ["stable_hash", "files_digest"]


def stable_hash(obj: Any, length: int = 10) -> str:
    """Hash of a JSON-able object that does not depend on key order.

    Examples
    --------
    >>> stable_hash({"a": 1, "b": 2}) == stable_hash({"b": 2, "a": 1})
    True
    """
    text = json.dumps(obj, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:length]


def files_digest(named_files: Iterable[tuple[str, Path]], length: int = 12) -> str:
    """Hash of files' names and bytes, in the order given: ``(name, path)`` pairs.

    The name is what identifies a file in the digest (a base name, a path relative to a
    package); the caller chooses it and the order.

    Examples
    --------
    >>> import tempfile
    >>> f = Path(tempfile.mkdtemp()) / "a.py"
    >>> _ = f.write_text("x = 1")
    >>> files_digest([("a.py", f)]) == files_digest([("b.py", f)])
    False
    """
    digest = hashlib.sha256()
    for name, path in named_files:
        digest.update(name.encode())
        digest.update(Path(path).read_bytes())
    return digest.hexdigest()[:length]
