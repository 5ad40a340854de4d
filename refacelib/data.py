"""Dataset loader: a BIDS-style folder of whole-head T1w images.

:func:`load_bids` indexes ``sub-*/[ses-*/]anat/sub-*_T1w.nii[.gz]`` together
with ``participants.tsv`` and validates both without reading any voxels.
:func:`load_image` reads one image, validates it and reorients it to RAS+;
:func:`resample_to_spacing` brings it to an isotropic grid. Every problem with
the input is reported as a :class:`DatasetError` that names the file (relative
to the dataset root where known) or the participant ids, and the problem.
"""
from __future__ import annotations

import os
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_to_output

__all__ = [
    "MUSCLE_COLUMNS",
    "REQUIRED_COLUMNS",
    "DatasetError",
    "Subject",
    "BIDSDataset",
    "load_bids",
    "load_image",
    "resample_to_spacing",
    "load_subject_array",
]

MUSCLE_COLUMNS = ("muscle_hu_abdomen", "muscle_hu_thigh", "muscle_hu_shin")
REQUIRED_COLUMNS = ("participant_id", "age", "sex")
_SPLITS = ("train", "val", "test_internal", "test_external", "test")
_DEFAULT_SITE = "site-1"
_SEX_CODES = {"m": "M", "male": "M", "f": "F", "female": "F"}
_NA_VALUES = ["n/a", "N/A", "NA", "NaN", "nan", ""]
_READ_ERRORS = (
    nib.filebasedimages.ImageFileError,
    nib.spatialimages.HeaderDataError,
    OSError,
    EOFError,
    zlib.error,
    ValueError,
)


class DatasetError(ValueError):
    """Input data that cannot be used, with the file or ids and the reason."""


@dataclass
class Subject:
    """One participant: id, path of the T1w image and the participants row."""

    participant_id: str
    t1w: Path
    row: dict = field(default_factory=dict)


@dataclass
class BIDSDataset:
    """A validated dataset: sorted participants table and matching subjects."""

    root: Path
    participants: pd.DataFrame
    subjects: list[Subject]

    @property
    def has_muscle(self) -> bool:
        """True when every muscle column is present, numeric and not all-NaN."""
        df = self.participants
        return all(
            c in df.columns and pd.api.types.is_numeric_dtype(df[c]) and df[c].notna().any()
            for c in MUSCLE_COLUMNS
        )

    @property
    def ids(self) -> list[str]:
        """Participant ids in dataset order."""
        return [s.participant_id for s in self.subjects]

    def subset(self, split: str) -> list[Subject]:
        """Subjects whose ``split`` column equals ``split``."""
        if split not in _SPLITS:
            raise DatasetError(f"unknown split {split!r}; expected one of {', '.join(_SPLITS)}")
        return [s for s in self.subjects if s.row.get("split") == split]


def _normalise_id(value: str) -> str:
    """Return a participant id with the ``sub-`` prefix.

    Examples
    --------
    >>> _normalise_id(" 01 "), _normalise_id("sub-01")
    ('sub-01', 'sub-01')
    """
    value = str(value).strip()
    return value if value.startswith("sub-") else f"sub-{value}"


def _rel(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it, else as given."""
    try:
        return Path(path).relative_to(root).as_posix()
    except ValueError:
        return str(path)


def _ids_text(ids: Sequence[str]) -> str:
    return ", ".join(str(i) for i in ids)


def _t1w_in(anat: Path, pid: str) -> list[Path]:
    """Sorted T1w image files of ``pid`` in one ``anat`` folder."""
    if not anat.is_dir():
        return []
    return sorted(
        p for p in anat.glob(f"{pid}_*T1w.nii*")
        if p.name.endswith(("_T1w.nii", "_T1w.nii.gz")) and p.is_file()
    )


def _find_t1w(root: Path) -> dict[str, Path]:
    """Map participant id to its T1w image; the first session wins."""
    found: dict[str, Path] = {}
    for sub_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        pid = sub_dir.name
        candidates = _t1w_in(sub_dir / "anat", pid)
        for ses in sorted(p for p in sub_dir.glob("ses-*") if p.is_dir()):
            if candidates:
                break
            candidates = _t1w_in(ses / "anat", pid)
        if candidates:
            found[pid] = candidates[0]
    return found


def _read_participants(root: Path) -> pd.DataFrame:
    """Read ``participants.tsv`` as strings; check columns, ids and duplicates."""
    path = root / "participants.tsv"
    if not path.is_file():
        raise DatasetError(f"participants.tsv: file not found in dataset {root}")
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=_NA_VALUES)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"participants.tsv: cannot be parsed as a TSV table ({exc})") from exc
    df.columns = [str(c).strip() for c in df.columns]
    missing = [c for c in REQUIRED_COLUMNS if c not in df.columns]
    if missing:
        raise DatasetError(f"participants.tsv: missing required column(s): {_ids_text(missing)}")
    if df["participant_id"].isna().any():
        raise DatasetError("participants.tsv: empty participant_id in row(s) "
                           f"{_ids_text(np.flatnonzero(df['participant_id'].isna()) + 1)}")
    df["participant_id"] = df["participant_id"].map(_normalise_id)
    dup = sorted(set(df.loc[df["participant_id"].duplicated(), "participant_id"]))
    if dup:
        raise DatasetError(f"participants.tsv: duplicate participant_id(s): {_ids_text(dup)}")
    return df.sort_values("participant_id", kind="stable").reset_index(drop=True)


def _parse_age(df: pd.DataFrame) -> pd.Series:
    """Ages as floats; missing, non-numeric or negative ages are an error."""
    age = pd.to_numeric(df["age"], errors="coerce").astype(float)
    bad = age.isna() | ~np.isfinite(age) | (age < 0)
    if bad.any():
        raise DatasetError("participants.tsv: missing, non-numeric or negative age for "
                           f"{_ids_text(df.loc[bad, 'participant_id'])}")
    return age


def _parse_sex(df: pd.DataFrame) -> pd.Series:
    """Sex codes normalised to ``"F"``/``"M"``; anything else is an error."""
    sex = df["sex"].map(lambda v: _SEX_CODES.get(str(v).strip().lower()) if pd.notna(v) else None)
    bad = sex.isna()
    if bad.any():
        values = sorted({"n/a" if pd.isna(v) else str(v) for v in df.loc[bad, "sex"]})
        raise DatasetError(f"participants.tsv: unknown sex code(s) {_ids_text(values)} for "
                           f"{_ids_text(df.loc[bad, 'participant_id'])}; "
                           "expected M/F/male/female")
    return sex


def _parse_muscle(df: pd.DataFrame, column: str) -> pd.Series:
    """A muscle column as floats; a present non-numeric value is an error."""
    values = pd.to_numeric(df[column], errors="coerce").astype(float)
    bad = df[column].notna() & (values.isna() | ~np.isfinite(values))
    if bad.any():
        raise DatasetError(f"participants.tsv: column {column!r} has non-numeric values for "
                           f"{_ids_text(df.loc[bad, 'participant_id'])}")
    return values


def _assign_splits(n: int, *, seed: int, fractions: Sequence[float]) -> list[str]:
    """Deterministic train/val/test labels for ``n`` subjects.

    Examples
    --------
    >>> _assign_splits(10, seed=0, fractions=(0.8, 0.1, 0.1)).count("train")
    8
    """
    f = np.asarray(fractions, dtype=float)
    if f.shape != (3,) or not np.all(np.isfinite(f)) or np.any(f < 0) or not np.isclose(f.sum(), 1):
        raise DatasetError(f"split_fractions must be three non-negative numbers summing to 1, "
                           f"got {tuple(fractions)}")
    n_train, n_trainval = (int(b) for b in np.round(np.cumsum(f)[:2] * n))
    labels = np.array(["train"] * n_train + ["val"] * (n_trainval - n_train)
                      + ["test"] * (n - n_trainval), dtype=object)
    out = np.empty(n, dtype=object)
    out[np.random.default_rng(seed).permutation(n)] = labels
    return list(out)


def _parse_split(df: pd.DataFrame, *, seed: int, fractions: Sequence[float]) -> pd.Series:
    """The ``split`` column, validated, or assigned from ``seed`` when absent."""
    if "split" not in df.columns:
        return pd.Series(_assign_splits(len(df), seed=seed, fractions=fractions), index=df.index)
    split = df["split"].map(lambda v: str(v).strip() if pd.notna(v) else None)
    bad = ~split.isin(_SPLITS)
    if bad.any():
        values = sorted({"n/a" if v is None else v for v in split[bad]})
        raise DatasetError(f"participants.tsv: unknown split value(s) {_ids_text(values)} for "
                           f"{_ids_text(df.loc[bad, 'participant_id'])}; "
                           f"expected one of {', '.join(_SPLITS)}")
    return split


def _match_images(df: pd.DataFrame, images: dict[str, Path], root: Path) -> None:
    """Every row has an image and every image a row; images are non-empty."""
    ids = set(df["participant_id"])
    no_image = sorted(ids - set(images))
    if no_image:
        raise DatasetError("participants.tsv: participant(s) without a T1w image: "
                           f"{_ids_text(no_image)}")
    no_row = sorted(set(images) - ids)
    if no_row:
        files = _ids_text(_rel(images[i], root) for i in no_row)
        raise DatasetError(f"T1w image(s) without a participants.tsv row: {_ids_text(no_row)} "
                           f"({files})")
    for pid in sorted(ids):
        if images[pid].stat().st_size == 0:
            raise DatasetError(f"{_rel(images[pid], root)}: image file is empty (0 bytes)")


def load_bids(root: os.PathLike | str, *, seed: int = 0,
              split_fractions: Sequence[float] = (0.8, 0.1, 0.1)) -> BIDSDataset:
    """Index and validate a BIDS-style T1w dataset (no voxels are read).

    Parameters
    ----------
    root : path-like
        Dataset folder holding ``participants.tsv`` and ``sub-*`` folders.
    seed, split_fractions
        Used to assign train/val/test when ``participants.tsv`` has no
        ``split`` column.

    Returns
    -------
    BIDSDataset
        Participants sorted by id, ``sex`` as F/M, ``age`` as float, ``site``
        and ``split`` filled in.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: dataset folder not found or not a folder")
    images = _find_t1w(root)
    if not images:
        raise DatasetError(f"{root}: no T1w images found (expected "
                           "sub-*/anat/sub-*_T1w.nii[.gz] or sub-*/ses-*/anat/...)")
    df = _read_participants(root)
    df["age"] = _parse_age(df)
    df["sex"] = _parse_sex(df)
    for column in MUSCLE_COLUMNS:
        if column in df.columns:
            df[column] = _parse_muscle(df, column)
    site = df["site"] if "site" in df.columns else pd.Series(np.nan, index=df.index, dtype=object)
    df["site"] = site.map(lambda v: str(v).strip() if pd.notna(v) else _DEFAULT_SITE)
    df["split"] = _parse_split(df, seed=seed, fractions=split_fractions)
    _match_images(df, images, root)
    subjects = [Subject(row["participant_id"], images[row["participant_id"]], row)
                for row in df.to_dict("records")]
    return BIDSDataset(root=root, participants=df, subjects=subjects)


def _read_nifti(path: Path) -> tuple[nib.spatialimages.SpatialImage, np.ndarray, tuple]:
    """Load an image, its data and its unfixed header zooms; errors name the file."""
    if not path.is_file():
        raise DatasetError(f"{path}: image file not found")
    if path.stat().st_size == 0:
        raise DatasetError(f"{path}: image file is empty (0 bytes)")
    try:
        img = nib.load(str(path))
        data = np.asarray(img.dataobj)
        with nib.openers.ImageOpener(str(path)) as fobj:
            raw_header = type(img.header).from_fileobj(fobj, check=False)
    except _READ_ERRORS as exc:
        raise DatasetError(f"{path}: unreadable, truncated or corrupt image "
                           f"({type(exc).__name__}: {exc})") from exc
    if 0 in img.shape:
        raise DatasetError(f"{path}: empty image (shape {tuple(img.shape)})")
    return img, data, raw_header.get_zooms()


def _as_3d(data: np.ndarray, path: Path) -> np.ndarray:
    """Drop trailing size-1 dimensions beyond the third; require 3-D."""
    while data.ndim > 3 and data.shape[-1] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise DatasetError(f"{path}: expected a 3-D image, got {data.ndim}-D shape {data.shape}")
    return data


def _check_values(data: np.ndarray, path: Path) -> None:
    """Reject empty, all-zero and non-finite images."""
    if data.size == 0:
        raise DatasetError(f"{path}: empty image (shape {data.shape})")
    n_bad = int(data.size - np.count_nonzero(np.isfinite(data)))
    if n_bad:
        raise DatasetError(f"{path}: {n_bad} NaN or Inf voxel(s)")
    if not np.any(data):
        raise DatasetError(f"{path}: empty image (all voxels are zero)")


def _check_zooms(zooms: Sequence[float], path: Path) -> None:
    """Voxel sizes must be finite and positive."""
    zooms = np.asarray(zooms[:3], dtype=float)
    if zooms.size < 3 or not np.all(np.isfinite(zooms)) or np.any(zooms <= 0):
        raise DatasetError(f"{path}: invalid voxel size {tuple(zooms.tolist())} in header "
                           "(must be finite and positive)")


def _check_geometry(img: nib.spatialimages.SpatialImage, raw_zooms: Sequence[float],
                    path: Path) -> None:
    """Header zooms (as stored and as loaded) positive; affine's 3x3 invertible.

    nibabel silently replaces zero or negative pixdim on load, so the zooms
    stored in the file are checked as well.
    """
    _check_zooms(raw_zooms, path)
    _check_zooms(img.header.get_zooms(), path)
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DatasetError(f"{path}: invalid affine (non-finite or singular voxel-to-world "
                           "matrix, i.e. a zero voxel size)")


def _fresh_image(data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> nib.Nifti1Image:
    """A new NIfTI-1 image with ``dtype`` data, mm units and header from ``affine``."""
    out = nib.Nifti1Image(np.ascontiguousarray(data, dtype=dtype), np.asarray(affine, float))
    out.set_data_dtype(dtype)
    out.header.set_xyzt_units("mm")
    return out


def load_image(path: os.PathLike | str, *, dtype=np.float32) -> nib.Nifti1Image:
    """Load, validate and reorient one image to RAS+ (closest canonical).

    A 4-D image whose extra dimensions have size 1 is squeezed to 3-D.
    Unreadable files, non-3-D or empty images, NaN/Inf voxels and invalid
    voxel sizes raise :class:`DatasetError` naming the file.
    """
    path = Path(path)
    img, data, raw_zooms = _read_nifti(path)
    data = _as_3d(data, path)
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise DatasetError(f"dtype must be a floating type, got {np.dtype(dtype)}")
    data = data.astype(dtype)
    _check_values(data, path)
    _check_geometry(img, raw_zooms, path)
    canon = nib.as_closest_canonical(_fresh_image(data, img.affine, dtype))
    return _fresh_image(np.asarray(canon.dataobj), canon.affine, dtype)


def resample_to_spacing(img: nib.spatialimages.SpatialImage, voxel_mm: float, *,
                        order: int = 1) -> nib.Nifti1Image:
    """Resample ``img`` to isotropic ``voxel_mm`` over the same field of view.

    Uses :func:`nibabel.processing.resample_to_output` with spline ``order``;
    the result is RAS+ with float32 data.
    """
    try:
        v = float(voxel_mm)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"voxel_mm must be a number, got {voxel_mm!r}") from exc
    if not np.isfinite(v) or v <= 0:
        raise DatasetError(f"voxel_mm must be finite and positive, got {voxel_mm!r}")
    if order not in range(6):
        raise DatasetError(f"order must be an integer 0..5, got {order!r}")
    if len(img.shape) != 3:
        raise DatasetError(f"expected a 3-D image to resample, got shape {img.shape}")
    src = _fresh_image(np.asanyarray(img.dataobj), img.affine)
    out = resample_to_output(src, voxel_sizes=(v, v, v), order=order)
    canon = nib.as_closest_canonical(out)
    return _fresh_image(np.asanyarray(canon.dataobj), canon.affine)


def load_subject_array(subject_or_path: Subject | os.PathLike | str, voxel_mm: float, *,
                       order: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Load an image (RAS+) resampled to ``voxel_mm``: ``(data, affine)``.

    ``data`` is a float32 array and ``affine`` its voxel-to-world matrix.
    """
    path = subject_or_path.t1w if isinstance(subject_or_path, Subject) else subject_or_path
    img = resample_to_spacing(load_image(path), voxel_mm, order=order)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine.copy()
