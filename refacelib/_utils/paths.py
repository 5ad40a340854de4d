"""The repository root and the file-system-safe name of a dataset."""
from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

__all__ = ["PHANTOM", "project_root", "dataset_label"]

PHANTOM = "phantom"
_LABEL_RE = re.compile(r"[^A-Za-z0-9_.-]+")


def project_root() -> Path:
    """The repository root: ``$REFACE_PROJECT_ROOT`` or the folder above refacelib.

    Examples
    --------
    >>> (project_root() / "params").is_dir()
    True
    """
    env = os.environ.get("REFACE_PROJECT_ROOT")
    if env:
        return Path(env).resolve()
    return Path(__file__).resolve().parents[2]


def dataset_label(dataset: str | os.PathLike) -> str:
    """Short, file-system-safe name of a dataset used in the run folder name.

    The phantom is ``phantom``; a folder is its name plus a hash of its
    absolute path, so that two datasets never share a run folder.

    Examples
    --------
    >>> dataset_label("phantom")
    'phantom'
    """
    if str(dataset) == PHANTOM:
        return PHANTOM
    path = Path(dataset).expanduser().resolve()
    digest = hashlib.sha1(str(path).encode()).hexdigest()[:6]
    name = _LABEL_RE.sub("_", path.name).strip("._") or "dataset"
    return f"{name}-{digest}"
