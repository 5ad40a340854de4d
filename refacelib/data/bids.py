"""Dataset loader: a BIDS-style folder of whole-head T1w images.

:func:`load_bids` indexes ``sub-*/[ses-*/]anat/sub-*_T1w.nii[.gz]`` together
with ``participants.tsv`` and validates both without reading any voxels.
:func:`load_image` reads one image, validates it and reorients it to RAS+;
:func:`resample_to_spacing` brings it to an isotropic grid. Every problem with
the input is reported as a :class:`DatasetError` that names the file (relative
to the dataset root where known) or the participant ids, and the problem.

Limits, each a keyword with a module-level default: ages outside
:data:`AGE_RANGE` (1 to 120 years), images of more than :data:`MAX_VOXELS`
voxels (512**3, checked from the header before any voxel is read) and affines
whose voxel axes depart more than :data:`MAX_SHEAR_DEG` degrees from
perpendicular (an error, not a warning). :func:`load_bids` checks every image
header (voxel type, size, dimensions, voxel size, affine) before any work starts.

A dataset has one identity for the caches (:func:`file_fingerprint`, the size and the
modification time in ns of a file, never its absolute path): :func:`image_fingerprint` (each
subject's T1w) keys the defacing stage, :func:`dataset_fingerprint` (every file outside
``derivatives/``) keys the executed chapters, and the input screening caches each image's
verdict under its :func:`file_fingerprint`. Two more names serve other ends: the run
folder's label (:func:`refacelib._utils.paths.dataset_label`, the folder's name and a hash of
its path, so that two datasets never share a run folder) and the pseudonym key
(:func:`refacelib.data.privacy.dataset_key`, from ``participants.tsv``, so that a copy of the
dataset gets the same pseudonyms).
"""
from __future__ import annotations

import os
import stat
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_to_output

from refacelib._utils.hashing import stable_hash

__all__ = [
    "MUSCLE_COLUMNS",
    "REQUIRED_COLUMNS",
    "AGE_RANGE",
    "MAX_VOXELS",
    "MAX_SHEAR_DEG",
    "DatasetError",
    "Subject",
    "BIDSDataset",
    "load_bids",
    "load_image",
    "resample_to_spacing",
    "load_subject_array",
    "file_fingerprint",
    "image_fingerprint",
    "dataset_fingerprint",
]

MUSCLE_COLUMNS = ("muscle_hu_abdomen", "muscle_hu_thigh", "muscle_hu_shin")
REQUIRED_COLUMNS = ("participant_id", "age", "sex")
#: Plausible ages in years, inclusive (``load_bids(age_range=...)``); others are typos or other units.
AGE_RANGE = (1.0, 120.0)
#: Largest image read, in voxels (``max_voxels=``): 512**3, about 0.5 GB as float32.
MAX_VOXELS = 512 ** 3
#: Largest angle (degrees) between a pair of voxel axes and a right angle (``max_shear_deg=``).
MAX_SHEAR_DEG = 5.0
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
    """Sorted T1w image files of ``pid`` in one ``anat`` folder (links too, even broken ones)."""
    if not anat.is_dir():
        return []
    return sorted(
        p for p in anat.glob(f"{pid}_*T1w.nii*")
        if p.name.endswith(("_T1w.nii", "_T1w.nii.gz")) and (p.is_file() or p.is_symlink())
    )


def _find_t1w(root: Path) -> dict[str, Path]:
    """Map participant id to its one T1w image.

    Policy: the images in ``sub-*/anat`` are used, else those of the first
    session (in sort order) that has any. That folder must hold exactly one
    T1w image: several (an ``acq-`` or ``run-`` variant, ``.nii`` beside
    ``.nii.gz``) are a :class:`DatasetError` listing them, never a silent pick.
    """
    found: dict[str, Path] = {}
    several = []
    for sub_dir in sorted(p for p in root.glob("sub-*") if p.is_dir()):
        pid = sub_dir.name
        candidates = _t1w_in(sub_dir / "anat", pid)
        for ses in sorted(p for p in sub_dir.glob("ses-*") if p.is_dir()):
            if candidates:
                break
            candidates = _t1w_in(ses / "anat", pid)
        if len(candidates) > 1:
            several.append(f"{pid}: {_ids_text(_rel(p, root) for p in candidates)}")
        elif candidates:
            found[pid] = candidates[0]
    if several:
        raise DatasetError("several T1w images for one subject (keep exactly one per subject; of several "
                           "sessions the first is used): " + "; ".join(several))
    return found


def _read_participants(root: Path) -> pd.DataFrame:
    """Read ``participants.tsv`` as strings; check columns, ids and duplicates."""
    path = root / "participants.tsv"
    if not path.is_file():
        raise DatasetError(f"participants.tsv: file not found in dataset {root}")
    try:
        header = pd.read_csv(path, sep="\t", header=None, nrows=1, dtype=str, keep_default_na=False)
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False, na_values=_NA_VALUES)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as exc:
        raise DatasetError(f"participants.tsv: cannot be parsed as a TSV table ({exc})") from exc
    dup_columns = _duplicates(header.iloc[0])
    if dup_columns:
        raise DatasetError(f"participants.tsv: duplicate column(s) {_ids_text(dup_columns)} "
                           "(each column must appear once)")
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


def _duplicates(names: Sequence) -> list[str]:
    """Sorted names (stripped, empty ones ignored) that occur more than once.

    Examples
    --------
    >>> _duplicates(["participant_id", "age", "sex", "age ", "", ""])
    ['age']
    """
    names = [str(n).strip() for n in names]
    return sorted({n for n in names if n and names.count(n) > 1})


def _age_bounds(age_range: Sequence[float]) -> tuple[float, float]:
    """``age_range`` as ``(low, high)``: two finite numbers, ``low <= high``.

    Examples
    --------
    >>> _age_bounds((1, 120))
    (1.0, 120.0)
    """
    try:
        low, high = (float(a) for a in age_range)
    except (TypeError, ValueError) as exc:
        raise DatasetError(f"age_range must be two numbers (low, high), got {age_range!r}") from exc
    if not (np.isfinite(low) and np.isfinite(high) and low <= high):
        raise DatasetError(f"age_range must be two finite numbers with low <= high, got {age_range!r}")
    return low, high


def _parse_age(df: pd.DataFrame, *, age_range: Sequence[float] = AGE_RANGE) -> pd.Series:
    """Ages as floats; a missing, non-numeric or out-of-``age_range`` (inclusive) age is an error."""
    low, high = _age_bounds(age_range)
    age = pd.to_numeric(df["age"], errors="coerce").astype(float)
    bad = age.isna() | ~np.isfinite(age)
    if bad.any():
        raise DatasetError("participants.tsv: missing or non-numeric age for "
                           f"{_ids_text(df.loc[bad, 'participant_id'])}")
    out = (age < low) | (age > high)
    if out.any():
        found = _ids_text(f"{pid} ({a:g})" for pid, a in zip(df.loc[out, "participant_id"], age[out]))
        raise DatasetError(f"participants.tsv: implausible age(s) for {found}; expected {low:g} to "
                           f"{high:g} years (age_range)")
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
        _check_file(images[pid], _rel(images[pid], root))


def load_bids(root: os.PathLike | str, *, seed: int = 0,
              split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
              age_range: Sequence[float] = AGE_RANGE, max_voxels: int = MAX_VOXELS,
              max_shear_deg: float = MAX_SHEAR_DEG) -> BIDSDataset:
    """Index and validate a BIDS-style T1w dataset (headers only, no voxels are read).

    Each subject needs exactly one T1w image, in ``sub-*/anat`` or else in its
    first session (sorted); several images in that folder (an ``acq-``
    variant, ``.nii`` beside ``.nii.gz``) are an error that lists them. Every
    image header is checked as in :func:`load_image`.

    Parameters
    ----------
    root : path-like
        Dataset folder holding ``participants.tsv`` and ``sub-*`` folders.
    seed, split_fractions
        Used to assign train/val/test when ``participants.tsv`` has no
        ``split`` column.
    age_range : (float, float)
        Plausible ages in years, inclusive; any other age is an error.
    max_voxels, max_shear_deg
        Limits on every image, as in :func:`load_image`.

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
    df["age"] = _parse_age(df, age_range=age_range)
    df["sex"] = _parse_sex(df)
    for column in MUSCLE_COLUMNS:
        if column in df.columns:
            df[column] = _parse_muscle(df, column)
    site = df["site"] if "site" in df.columns else pd.Series(np.nan, index=df.index, dtype=object)
    df["site"] = site.map(lambda v: str(v).strip() if pd.notna(v) else _DEFAULT_SITE)
    df["split"] = _parse_split(df, seed=seed, fractions=split_fractions)
    _match_images(df, images, root)
    for pid in df["participant_id"]:
        name = _rel(images[pid], root)
        img, raw_zooms = _open_header(images[pid], name)
        _check_header(img, raw_zooms, name, max_voxels=max_voxels, max_shear_deg=max_shear_deg)
    subjects = [Subject(row["participant_id"], images[row["participant_id"]], row)
                for row in df.to_dict("records")]
    return BIDSDataset(root=root, participants=df, subjects=subjects)


def _check_file(path: Path, name: str) -> None:
    """``path`` is (a link to) a non-empty regular file; a broken or looping link names itself."""
    try:
        st = path.stat()
    except OSError as exc:
        what = "symbolic link cannot be followed" if path.is_symlink() else "image file not found"
        raise DatasetError(f"{name}: {what} ({exc.strerror})") from exc
    if not stat.S_ISREG(st.st_mode):
        raise DatasetError(f"{name}: not a regular file")
    if st.st_size == 0:
        raise DatasetError(f"{name}: image file is empty (0 bytes)")


def _open_header(path: Path, name: str) -> tuple[nib.spatialimages.SpatialImage, tuple]:
    """The image (no voxels read) and its header zooms as stored; errors name the file."""
    _check_file(path, name)
    try:
        img = nib.load(str(path))
        with nib.openers.ImageOpener(str(path)) as fobj:
            raw_header = type(img.header).from_fileobj(fobj, check=False)
    except _READ_ERRORS as exc:
        raise DatasetError(f"{name}: unreadable, truncated or corrupt image "
                           f"({type(exc).__name__}: {exc})") from exc
    return img, raw_header.get_zooms()


def _read_voxels(img: nib.spatialimages.SpatialImage, name: str) -> np.ndarray:
    """The voxel array of an image whose header was checked; errors name the file."""
    try:
        return np.asarray(img.dataobj)
    except _READ_ERRORS as exc:
        raise DatasetError(f"{name}: unreadable, truncated or corrupt image "
                           f"({type(exc).__name__}: {exc})") from exc
    except MemoryError as exc:
        raise DatasetError(f"{name}: not enough memory to read shape {tuple(img.shape)}") from exc


def _check_dtype(dtype, name: str) -> None:
    """Voxels must be real numbers: RGB, complex and other structured types are refused.

    Examples
    --------
    >>> _check_dtype(np.dtype(np.int16), "a.nii")
    >>> _check_dtype(np.dtype(np.complex64), "a.nii")  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    refacelib.data.bids.DatasetError: a.nii: unsupported voxel type complex (complex64); expected real-valued...
    """
    dtype = np.dtype(dtype)
    if dtype.kind not in "biuf":
        kind = {"c": "complex", "V": "RGB or structured"}.get(dtype.kind, dtype.kind)
        raise DatasetError(f"{name}: unsupported voxel type {kind} ({dtype}); expected real-valued "
                           "(integer or float) intensities")


def _check_shape(shape: Sequence[int], name: str, *, max_voxels: int) -> None:
    """Non-empty, 3-D once trailing size-1 dimensions go, at most ``max_voxels`` voxels.

    Examples
    --------
    >>> _check_shape((2000, 2000, 2000), "big.nii", max_voxels=MAX_VOXELS)  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    refacelib.data.bids.DatasetError: big.nii: image too large to load: header shape 2000x2000x2000 ...
    """
    shape = tuple(int(s) for s in shape)
    if 0 in shape:
        raise DatasetError(f"{name}: empty image (shape {shape})")
    core = shape
    while len(core) > 3 and core[-1] == 1:
        core = core[:-1]
    if len(core) != 3:
        raise DatasetError(f"{name}: expected a 3-D image, got {len(core)}-D shape {core}")
    n = int(np.prod(shape, dtype=np.int64))
    if n > max_voxels:
        raise DatasetError(f"{name}: image too large to load: header shape {'x'.join(map(str, shape))} "
                           f"({n:,} voxels) exceeds max_voxels={max_voxels:,}")


def _check_header(img: nib.spatialimages.SpatialImage, raw_zooms: Sequence[float], name: str, *,
                  max_voxels: int, max_shear_deg: float) -> None:
    """Voxel type, shape, size and geometry, from the header alone."""
    _check_dtype(img.get_data_dtype(), name)
    _check_shape(img.shape, name, max_voxels=max_voxels)
    _check_geometry(img, raw_zooms, name, max_shear_deg=max_shear_deg)


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


def _shear_deg(affine: np.ndarray) -> float:
    """Largest departure (degrees) of a pair of voxel axes from a right angle.

    Examples
    --------
    >>> sheared = np.eye(4); sheared[0, 1] = np.tan(np.radians(10))
    >>> _shear_deg(np.diag([1.0, 2.0, 3.0, 1.0])), round(_shear_deg(sheared), 6)
    (0.0, 10.0)
    """
    m = np.asarray(affine, dtype=float)[:3, :3]
    u = m / np.linalg.norm(m, axis=0)
    cos = np.abs(u.T @ u)[np.triu_indices(3, 1)]
    return float(np.degrees(np.arcsin(np.clip(cos.max(), 0.0, 1.0))))


def _check_geometry(img: nib.spatialimages.SpatialImage, raw_zooms: Sequence[float],
                    path: Path | str, *, max_shear_deg: float = MAX_SHEAR_DEG) -> None:
    """Header zooms (as stored and as loaded) positive; affine's 3x3 invertible, barely sheared.

    nibabel silently replaces zero or negative pixdim on load, so the zooms
    stored in the file are checked as well. Voxel axes more than
    ``max_shear_deg`` degrees from perpendicular are an error: the pipeline
    takes voxel sizes and orientation from an orthogonal grid.
    """
    _check_zooms(raw_zooms, path)
    _check_zooms(img.header.get_zooms(), path)
    affine = np.asarray(img.affine, dtype=float)
    if not np.all(np.isfinite(affine)) or abs(np.linalg.det(affine[:3, :3])) < 1e-12:
        raise DatasetError(f"{path}: invalid affine (non-finite or singular voxel-to-world "
                           "matrix, i.e. a zero voxel size)")
    shear = _shear_deg(affine)
    if shear > max_shear_deg:
        raise DatasetError(f"{path}: strongly sheared affine: voxel axes {shear:.1f} degrees from "
                           f"perpendicular (more than max_shear_deg={max_shear_deg:g}); reslice the "
                           "image to an orthogonal grid first")


def _fresh_image(data: np.ndarray, affine: np.ndarray, dtype=np.float32) -> nib.Nifti1Image:
    """A new NIfTI-1 image with ``dtype`` data, mm units and header from ``affine``."""
    out = nib.Nifti1Image(np.ascontiguousarray(data, dtype=dtype), np.asarray(affine, float))
    out.set_data_dtype(dtype)
    out.header.set_xyzt_units("mm")
    return out


def load_image(path: os.PathLike | str, *, dtype=np.float32, max_voxels: int = MAX_VOXELS,
               max_shear_deg: float = MAX_SHEAR_DEG) -> nib.Nifti1Image:
    """Load, validate and reorient one image to RAS+ (closest canonical).

    A 4-D image whose extra dimensions have size 1 is squeezed to 3-D. The
    header is checked before any voxel is read: a voxel type that is not
    real-valued (RGB, complex), more than ``max_voxels`` voxels, a non-3-D or
    empty shape, invalid voxel sizes, a singular affine or one sheared by more
    than ``max_shear_deg`` degrees. Then unreadable data, NaN/Inf and all-zero
    images. Each raises :class:`DatasetError` naming the file; a broken or
    looping symbolic link is named as such.
    """
    path = Path(path)
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise DatasetError(f"dtype must be a floating type, got {np.dtype(dtype)}")
    img, raw_zooms = _open_header(path, str(path))
    _check_header(img, raw_zooms, str(path), max_voxels=max_voxels, max_shear_deg=max_shear_deg)
    data = _as_3d(_read_voxels(img, str(path)), path)
    data = data.astype(dtype)
    _check_values(data, path)
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
                       order: int = 1, max_voxels: int = MAX_VOXELS,
                       max_shear_deg: float = MAX_SHEAR_DEG) -> tuple[np.ndarray, np.ndarray]:
    """Load an image (RAS+) resampled to ``voxel_mm``: ``(data, affine)``.

    ``data`` is a float32 array and ``affine`` its voxel-to-world matrix; the
    limits are those of :func:`load_image`.
    """
    path = subject_or_path.t1w if isinstance(subject_or_path, Subject) else subject_or_path
    img = resample_to_spacing(load_image(path, max_voxels=max_voxels, max_shear_deg=max_shear_deg),
                              voxel_mm, order=order)
    return np.asarray(img.dataobj, dtype=np.float32), img.affine.copy()


def file_fingerprint(path: os.PathLike | str) -> list[int]:
    """A file's size (bytes) and modification time (ns): its identity in every cache of a real dataset.

    Cheap (the file is not read); an image replaced in place, even by one of the same
    size, gets a new modification time.
    """
    st = Path(path).stat()
    return [st.st_size, st.st_mtime_ns]


def image_fingerprint(ds: BIDSDataset) -> list:
    """Each subject's T1w file as ``[id, file name, size, modification time in ns]``.

    Enters the defacing stage's key for a real dataset, so that an image replaced
    in place under the same participant id is defaced again instead of reusing
    the cache.
    """
    return [[s.participant_id, Path(s.t1w).name, *file_fingerprint(s.t1w)] for s in ds.subjects]


def dataset_fingerprint(root: os.PathLike | str) -> str:
    """A hash of every file of a dataset outside ``derivatives/``: relative path, size and time (ns).

    Keys the executed chapters of a real dataset: a changed image, ``participants.tsv``
    or sidecar re-executes them. The absolute path does not enter, so a copy of the
    dataset elsewhere with the same files keeps the key.
    """
    root = Path(root)
    entries = []
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if p.is_file() and "derivatives" not in rel.parts:
            entries.append([rel.as_posix(), *file_fingerprint(p)])
    return stable_hash(entries)
