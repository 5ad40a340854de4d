"""Pseudonyms for the participant ids of a real (non-phantom) dataset.

The published tables and pages of a run on real data never show the ids of
``participants.tsv``. :func:`pseudonymize_dataset` replaces every id by a
stable pseudonym (``sub-p`` + a keyed hash) right after the dataset is
loaded, so every later artifact, table, figure label and page uses the
pseudonym only. The key is derived from the content of ``participants.tsv``
and the run seed (:func:`dataset_key`): the same data give the same
pseudonyms on every machine, and nobody without the private table can map a
pseudonym back to an id. The phantom's ids are synthetic and kept.
"""
from __future__ import annotations

import hashlib
import hmac
import os
from dataclasses import replace
from pathlib import Path
from typing import Any, Iterable, NamedTuple

from refacelib._utils.flags import parse_flag
from refacelib.data.bids import BIDSDataset, DatasetError

__all__ = ["PSEUDONYM_PREFIX", "dataset_key", "pseudonym", "pseudonym_map", "pseudonymize_dataset", "eye_bars",
           "FacePolicy", "face_policy", "sagittal_eye_bar"]

PSEUDONYM_PREFIX = "sub-p"
_MIN_LENGTH, _MAX_LENGTH = 8, 32
_HEAD_LENGTH_MM = 190.0  # adult glabella-opisthocranion, for slices of unknown pixel size


class FacePolicy(NamedTuple):
    """What a chapter may publish of a subject's face: ``show`` it, and with an ``eye_bar``."""

    show: bool
    eye_bar: bool


def face_policy(is_phantom: bool, publish_faces: Any = False) -> FacePolicy:
    """Whether faces are shown, and whether they carry an eye bar.

    The phantom's faces are synthetic: always shown, never barred. A real
    subject's face (rendering or slice through the face) is withheld unless
    ``publish_faces`` is true, and then always carries an eye bar.

    Examples
    --------
    >>> face_policy(True), face_policy(False), face_policy(False, "1")
    (FacePolicy(show=True, eye_bar=False), FacePolicy(show=False, eye_bar=True), FacePolicy(show=True, eye_bar=True))
    """
    real = not bool(is_phantom)
    return FacePolicy(show=not real or parse_flag(publish_faces, name="publish_faces"), eye_bar=real)


def dataset_key(root: os.PathLike | str, *, seed: int) -> bytes:
    """Secret key of a dataset: a hash of its ``participants.tsv`` and ``seed``.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (d / "participants.tsv").write_text("participant_id\\tage\\tsex\\nsub-01\\t60\\tF\\n")
    >>> dataset_key(d, seed=0) == dataset_key(d, seed=0) != dataset_key(d, seed=1)
    True
    """
    path = Path(root) / "participants.tsv"
    if not path.is_file():
        raise DatasetError(f"participants.tsv: file not found in dataset {Path(root).name}")
    digest = hashlib.sha256(b"refacelib-pseudonym\0")
    digest.update(path.read_bytes())
    digest.update(f"\0seed={int(seed)}".encode())
    return digest.digest()


def pseudonym(participant_id: str, *, key: bytes, length: int = _MIN_LENGTH) -> str:
    """Stable pseudonym of one id: ``sub-p`` + ``length`` hex digits of HMAC-SHA256.

    Examples
    --------
    >>> pseudonym("sub-01", key=b"k")
    'sub-pbeef60fd'
    >>> pseudonym("sub-01", key=b"k") != pseudonym("sub-01", key=b"other")
    True
    """
    if not isinstance(key, (bytes, bytearray)) or not key:
        raise ValueError("key must be non-empty bytes")
    mac = hmac.new(bytes(key), str(participant_id).encode(), hashlib.sha256).hexdigest()
    return PSEUDONYM_PREFIX + mac[:length]


def pseudonym_map(ids: Iterable[str], *, key: bytes) -> dict[str, str]:
    """Id -> pseudonym for every id; longer hashes are used if two would collide.

    Examples
    --------
    >>> m = pseudonym_map(["sub-01", "sub-02"], key=b"k")
    >>> len(set(m.values())), m["sub-01"] == pseudonym("sub-01", key=b"k")
    (2, True)
    """
    ids = list(dict.fromkeys(str(i) for i in ids))
    for length in range(_MIN_LENGTH, _MAX_LENGTH + 1, 4):
        out = {i: pseudonym(i, key=key, length=length) for i in ids}
        if len(set(out.values())) == len(ids):
            return out
    raise DatasetError("participant ids: pseudonyms collide even at full length")  # pragma: no cover


def pseudonymize_dataset(ds: BIDSDataset, *, key: bytes) -> BIDSDataset:
    """A copy of ``ds`` whose participant ids are pseudonyms (order and splits kept).

    The image paths still point at the original files; they are private and
    never published (executed notebooks show the dataset as ``<DATASET>``).
    """
    mapping = pseudonym_map(ds.ids, key=key)
    participants = ds.participants.copy()
    participants["participant_id"] = participants["participant_id"].map(mapping)
    subjects = []
    for subject in ds.subjects:
        new_id = mapping[subject.participant_id]
        subjects.append(replace(subject, participant_id=new_id, row={**subject.row, "participant_id": new_id}))
    return BIDSDataset(root=ds.root, participants=participants, subjects=subjects)


def eye_bars(image, *, min_side_px: int = 5, min_solidity: float = 0.9) -> list[tuple[int, int, int, int]]:
    """Solid black bars in a published figure: the eye bars of :mod:`refacelib.imaging.render`.

    The renderer paints each bar as an opaque rectangle of pure black (0, 0, 0),
    at least 30 x 40 mm; nothing else in the book's renders is pure black
    (shading and colour maps stay above it). A bar is a connected region of
    pure-black pixels that survives an opening by a ``min_side_px`` square
    (text strokes do not) and fills at least ``min_solidity`` of its convex
    hull (the black background of an image slice around a head does not).

    Parameters
    ----------
    image : path or array (H, W, 3 or 4), uint8 or float in [0, 1]

    Returns
    -------
    list of (row0, col0, row1, col1) bounding boxes

    Examples
    --------
    >>> import numpy as np
    >>> img = np.ones((60, 80, 3))
    >>> img[20:32, 10:50] = 0.0          # a bar
    >>> img[45:47, 5:70] = 0.0           # a thin line (text stroke, axis)
    >>> eye_bars(img)
    [(20, 10, 32, 50)]
    """
    import numpy as np
    from scipy import ndimage
    from skimage.measure import regionprops

    if isinstance(image, (str, os.PathLike)):
        import matplotlib.image as mpimg

        image = mpimg.imread(str(image))
    rgb = np.asarray(image)
    if rgb.dtype == np.uint8:
        rgb = rgb.astype(np.float32) / 255.0
    black = np.all(rgb[..., :3] <= 0.5 / 255.0, axis=-1)
    if rgb.shape[-1] == 4:
        black &= rgb[..., 3] >= 0.99
    black = ndimage.binary_opening(black, structure=np.ones((min_side_px, min_side_px), bool))
    labels, _ = ndimage.label(black)
    return [tuple(int(v) for v in r.bbox) for r in regionprops(labels) if r.solidity >= min_solidity]


def sagittal_eye_bar(head, *, pixel_mm: float | None = None, thickness_mm: float = 30.0,
                     inward_mm: float = 40.0, outward_mm: float = 15.0,
                     eye_above_nose_mm: float = 35.0):
    """Where an eye bar covers the face profile of a sagittal slice.

    The slice is in display orientation (row 0 superior, anterior to the
    right, as :func:`refacelib.report.overview.mid_sagittal`). The heuristic of
    :func:`refacelib.imaging.render.estimate_eyes` in 2-D: the nose tip is the most
    anterior head pixel 100-200 mm below the vertex, the eyes are
    ``eye_above_nose_mm`` above its middle; the bar is ``thickness_mm`` tall and runs
    from ``inward_mm`` behind the most anterior skin at that level to
    ``outward_mm`` in front of it, so the profile (brow, nasal bridge) is hidden.

    Parameters
    ----------
    head : bool array (H, W), the head mask of the slice of an intact head
        (for a defaced version, reuse the bar of its original).
    pixel_mm : pixel size; default: the head's anteroposterior extent taken
        as 190 mm.

    Returns
    -------
    bool array (H, W); all False when the slice holds no head.

    Examples
    --------
    >>> import numpy as np
    >>> head = np.zeros((100, 80), bool); head[5:95, 10:60] = True; head[70:80, 60:66] = True  # nose
    >>> bar = sagittal_eye_bar(head, pixel_mm=2.0)
    >>> rows, cols = np.nonzero(bar)
    >>> int(rows.min()), int(rows.max()), int(cols.min()), int(cols.max())
    (50, 65, 39, 66)
    """
    import numpy as np

    head = np.asarray(head, bool)
    bar = np.zeros(head.shape, bool)
    rows = np.nonzero(head.any(axis=1))[0]
    if rows.size == 0:
        return bar
    if pixel_mm is None:
        cols = np.nonzero(head.any(axis=0))[0]
        pixel_mm = _HEAD_LENGTH_MM / (cols[-1] - cols[0] + 1)
    px = float(pixel_mm)
    front = np.where(head.any(axis=1), head.shape[1] - 1 - np.argmax(head[:, ::-1], axis=1), -1)
    band = np.arange(rows[0] + int(100 / px), min(rows[0] + int(200 / px), head.shape[0]))
    band = band[front[band] >= 0]
    band = band if band.size else rows
    tip = band[front[band] == front[band].max()]  # a flat nose tip: its middle row
    eye = tip[len(tip) // 2] - eye_above_nose_mm / px
    r0 = max(int(round(eye - 0.5 * thickness_mm / px)), 0)
    r1 = min(int(round(eye + 0.5 * thickness_mm / px)) + 1, head.shape[0])
    skin = front[r0:r1].max() if r1 > r0 else -1
    skin = skin if skin >= 0 else front[band].max()
    c0, c1 = max(int(skin - inward_mm / px), 0), min(int(skin + outward_mm / px) + 1, head.shape[1])
    bar[r0:r1, c0:c1] = True
    return bar
