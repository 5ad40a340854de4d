"""Atomic writers: every artifact is written to a temporary name, then renamed.

A run killed half-way therefore never leaves a half-written file under the
final name, and the previous good artifact stays in place until the new one
is complete.
"""
from __future__ import annotations

import contextlib
import os
import pickle
import re
import tempfile
from pathlib import Path
from typing import Iterator

__all__ = ["atomic_path", "atomic_write_text", "save_table", "save_figure", "save_nifti", "UnsafeFileError",
           "load_checkpoint"]


@contextlib.contextmanager
def atomic_path(path: os.PathLike) -> Iterator[Path]:
    """Yield a temporary path next to ``path``; rename it into place on success.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> with atomic_path(d / "a.txt") as tmp:
    ...     _ = tmp.write_text("hello")
    >>> (d / "a.txt").read_text()
    'hello'
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    suffix = "".join(path.suffixes)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=f".tmp{suffix}", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: os.PathLike, text: str) -> Path:
    """Write ``text`` to ``path`` atomically and return the path."""
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def save_table(df, path: os.PathLike) -> Path:
    """Write a DataFrame as CSV atomically (no index)."""
    with atomic_path(path) as tmp:
        df.to_csv(tmp, index=False)
    return Path(path)


def save_figure(fig, path: os.PathLike, *, dpi: int = 120) -> Path:
    """Save a matplotlib figure atomically (format from the suffix), then close it in pyplot.

    Closing keeps memory flat and stops Jupyter's inline backend from showing
    the figure a second time at the end of the cell; ``fig`` can still be
    displayed or glued.
    """
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=dpi, bbox_inches="tight", format=path.suffix.lstrip("."))
    import matplotlib.pyplot as plt

    plt.close(fig)
    return path


def save_nifti(img, path: os.PathLike) -> Path:
    """Save a nibabel image atomically."""
    import nibabel as nib

    with atomic_path(path) as tmp:
        nib.save(img, str(tmp))
    return Path(path)


class UnsafeFileError(pickle.UnpicklingError):
    """A file that would run code when loaded; it is refused, not loaded."""


def load_checkpoint(path: os.PathLike, *, map_location="cpu") -> dict:
    """Load a torch checkpoint with ``weights_only=True``: tensors, numbers, strings, containers.

    Every checkpoint the project reads (training resume, :func:`refacelib.diffusion.train.load_stage`,
    shipping and installing shipped checkpoints) goes through here, whatever
    torch's own default of ``weights_only``. A checkpoint that carries any
    other pickled object (which could run code while loading) raises
    :class:`UnsafeFileError` naming the file and the object.

    Examples
    --------
    >>> import tempfile, pathlib, torch
    >>> p = pathlib.Path(tempfile.mkdtemp()) / "c.pt"
    >>> torch.save({"step": 3, "w": torch.zeros(2)}, p)
    >>> load_checkpoint(p)["step"]
    3
    """
    import torch

    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        found = re.search(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) ([\w.]+)", str(exc))
        raise UnsafeFileError(
            f"{path}: refused to load: the checkpoint holds a Python object other than tensors, "
            f"numbers, strings and containers, which could run code when loaded"
            + (f" ({found.group(1)})" if found else "") + "; use only checkpoints this project wrote") from None
