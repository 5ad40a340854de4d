"""Screen input images: whole heads only, never brain-only or already defaced ones.

The study defaces whole-head T1w images and refaces them. An image that was
already skull-stripped (brain only) or already defaced would be "defaced"
and "refaced" again and give meaningless numbers, so such images are
reported by name instead.

Two measures on the head mask of a RAS+ image (:func:`head_features`):

* ``volume_ml``: volume of the filled head mask. A whole head (even cut at
  the chin) is above 3 L; a brain with its cerebellum is below 2 L.
* ``face_cut`` and ``rest_cut``: the fraction of the head's surface voxels
  that are tissue lying next to an exactly-zero voxel, in the face zone
  (anterior 40 % and lower 60 % of the head's extent) and in the back half of
  the head. Defacing zeroes the face, so the tissue left behind borders
  zeros there and nowhere else; an original scan has noise (or a zeroed
  background all around the head) and scores alike in both zones.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from refacelib._utils.io import save_table
from refacelib.data.bids import BIDSDataset, DatasetError, file_fingerprint, load_subject_array
from refacelib.data.template import head_mask_from_intensity, head_threshold

__all__ = [
    "BRAIN_ONLY_MAX_ML",
    "FACE_CUT_MIN",
    "head_features",
    "classify_head",
    "screen_dataset",
    "require_whole_heads",
]

#: A filled head mask smaller than this (mL) is taken as a brain-only image.
BRAIN_ONLY_MAX_ML = 2500.0
#: Fraction of the face surface bordering zeroed voxels above which a head is defaced.
FACE_CUT_MIN = 0.15
#: ... provided it is this many times the fraction at the back of the head (plus 0.05).
_CUT_RATIO = 3.0
_COLUMNS = ["participant_id", "file", "status", "reason", "volume_ml", "face_cut", "rest_cut"]


def head_features(data: np.ndarray, affine: np.ndarray) -> dict[str, float]:
    """Head volume (mL) and the zero-bordered surface fractions of a RAS+ image.

    Examples
    --------
    >>> g = np.indices((40, 40, 40)) - 19.5
    >>> ball = 100.0 * ((g ** 2).sum(0) < 15 ** 2) + 1.0   # a noisy-air stand-in: no zeros
    >>> f = head_features(ball, np.diag([5.0, 5.0, 5.0, 1.0]))
    >>> round(f["volume_ml"], -2), f["face_cut"], f["rest_cut"]
    (2100.0, 0.0, 0.0)
    """
    data = np.asarray(data, dtype=np.float32)
    threshold = head_threshold(data)
    head = head_mask_from_intensity(data, threshold=threshold)
    voxel = np.sqrt((np.asarray(affine, float)[:3, :3] ** 2).sum(0))
    cut = (data > threshold) & ndimage.binary_dilation(data == 0)
    surface = head & ~ndimage.binary_erosion(head)
    idx = np.argwhere(head)
    lo, hi = idx.min(0), idx.max(0)
    y = np.arange(data.shape[1])[None, :, None]
    z = np.arange(data.shape[2])[None, None, :]
    zones = {
        "face_cut": (y > lo[1] + 0.6 * (hi[1] - lo[1])) & (z < lo[2] + 0.6 * (hi[2] - lo[2])),
        "rest_cut": np.broadcast_to(y < (lo[1] + hi[1]) / 2, data.shape),
    }
    out = {"volume_ml": float(head.sum() * np.prod(voxel) / 1000.0)}
    for name, zone in zones.items():
        n_surface = int((surface & zone).sum())
        out[name] = round(float((cut & zone).sum()) / n_surface, 4) if n_surface else 0.0
    return out


def classify_head(data: np.ndarray, affine: np.ndarray) -> tuple[str, str, dict]:
    """``("whole_head" | "brain_only" | "defaced", reason, features)`` of a RAS+ image.

    Examples
    --------
    >>> g = np.indices((40, 40, 40)) - 19.5
    >>> brain = 100.0 * ((g ** 2).sum(0) < 8 ** 2)
    >>> classify_head(brain, np.diag([5.0, 5.0, 5.0, 1.0]))[0]
    'brain_only'
    """
    try:
        f = head_features(data, affine)
    except ValueError as exc:
        return "unreadable", f"no head found in the image ({exc})", {}
    if f["volume_ml"] < BRAIN_ONLY_MAX_ML:
        return "brain_only", (
            f"looks brain-only (already skull-stripped): the head is {f['volume_ml']:.0f} mL, "
            f"below {BRAIN_ONLY_MAX_ML:.0f} mL for a whole head"), f
    if f["face_cut"] >= FACE_CUT_MIN and f["face_cut"] >= _CUT_RATIO * f["rest_cut"] + 0.05:
        return "defaced", (
            f"looks already defaced: {100 * f['face_cut']:.0f}% of the face surface borders zeroed "
            f"voxels (back of the head: {100 * f['rest_cut']:.0f}%)"), f
    return "whole_head", "", f


def _file_key(path: Path) -> str:
    size, mtime_ns = file_fingerprint(path)
    return f"{size}:{mtime_ns}"


def _rel(path: Path, root: Path) -> str:
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return Path(path).name


def screen_dataset(ds: BIDSDataset, *, voxel_mm: float, cache: os.PathLike | None = None) -> pd.DataFrame:
    """One row per subject: ``participant_id, file, status, reason`` and the measures.

    Each image is loaded (RAS+, resampled to ``voxel_mm``) and classified by
    :func:`classify_head`. With ``cache`` (a CSV path, private to the run)
    images whose size and modification time are unchanged are not read again.
    """
    cache = Path(cache) if cache is not None else None
    old = pd.read_csv(cache, dtype={"key": str}) if cache is not None and cache.is_file() else None
    known = {} if old is None else {(r["file"], r["key"], float(r["voxel_mm"])): r for r in old.to_dict("records")}
    rows = []
    for subject in ds.subjects:
        file, key = _rel(subject.t1w, ds.root), _file_key(subject.t1w)
        hit = known.get((file, key, float(voxel_mm)))
        if hit is None:
            data, affine = load_subject_array(subject, voxel_mm)
            status, reason, f = classify_head(data, affine)
            hit = {"file": file, "key": key, "voxel_mm": float(voxel_mm), "status": status,
                   "reason": reason, **{k: f.get(k, np.nan) for k in _COLUMNS[4:]}}
        rows.append({**hit, "participant_id": subject.participant_id})
    table = pd.DataFrame(rows, columns=_COLUMNS + ["key", "voxel_mm"])
    if cache is not None:
        save_table(table.drop(columns="participant_id"), cache)
    table["reason"] = table["reason"].fillna("")
    return table[_COLUMNS]


def require_whole_heads(ds: BIDSDataset, *, voxel_mm: float, cache: os.PathLike | None = None) -> pd.DataFrame:
    """:func:`screen_dataset`, raising :class:`DatasetError` that names every flagged file.

    Returns the screening table when every image is a whole head.
    """
    table = screen_dataset(ds, voxel_mm=voxel_mm, cache=cache)
    bad = table[table["status"] != "whole_head"]
    if len(bad):
        lines = [f"  {r.file}: {r.reason}" for r in bad.itertuples()]
        raise DatasetError(
            f"{len(bad)} of {len(table)} image(s) are not whole-head T1w images; this study needs the "
            "original heads with their faces (remove these subjects or supply the original images):\n"
            + "\n".join(lines))
    return table
