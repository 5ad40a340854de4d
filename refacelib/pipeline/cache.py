"""The cache of a run's stages: a folder named by a hash of what the stage depends on, complete once its record exists.

A stage's key holds what changes its files: the parameters that matter, the
dataset (the phantom by its parameters, a real dataset by its images' names,
sizes and times) and the stage's code version. The record is written last,
atomically (:func:`refacelib._utils.io.atomic_write_text`), so a folder without
it is an interrupted stage that runs again.
"""
from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path
from typing import Any

from refacelib._utils.hashing import files_digest, stable_hash
from refacelib._utils.io import atomic_write_text

__all__ = ["stage_folder", "is_done", "read_done", "mark_done", "source_digest"]

#: The record of a complete stage (a cascade stage's is ``stage<N>.done``).
DONE = "done.json"


def stage_folder(run, kind: str, key: Any) -> Path:
    """``<run>/artifacts/<kind>-<hash of key>``: the folder of a stage's files.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> stage_folder(SimpleNamespace(artifacts=Path("a")), "defaced", {"x": 1}).as_posix()
    'a/defaced-613fe5aa65'
    """
    return Path(run.artifacts) / f"{kind}-{stable_hash(key)}"


def is_done(folder: Path, record: str = DONE) -> bool:
    """Whether the stage in ``folder`` completed (its record exists)."""
    return (Path(folder) / record).exists()


def read_done(folder: Path, record: str = DONE) -> dict:
    """What a complete stage recorded about itself."""
    return json.loads((Path(folder) / record).read_text())


def mark_done(folder: Path, info: dict, record: str = DONE) -> None:
    """Record the stage in ``folder`` as complete (atomically, last of its files)."""
    atomic_write_text(Path(folder) / record, json.dumps(info))


def source_digest(modules: tuple[str, ...], root: Path | None = None) -> str:
    """A digest of the bytes of ``modules`` (paths inside the package): the code of a stage, in its key.

    ``root``: a copy of the package (default: this one, read once per process, so that a key
    describes the code this process runs even when the files change under it). The face
    distances and the muscle analysis key their folders with it, so an edit of the code that
    computes them computes again and an edit anywhere else reuses them.

    Examples
    --------
    >>> len(source_digest(("pipeline/cache.py",)))
    12
    """
    if root is None:
        return _loaded_source_digest(tuple(modules))
    return files_digest((name, Path(root) / name) for name in modules)


@lru_cache(maxsize=None)
def _loaded_source_digest(modules: tuple[str, ...]) -> str:
    return source_digest(modules, Path(__file__).resolve().parents[1])
