"""The population-average head that ships inside pydeface, and what we derive from it.

pydeface installs ``data/mean_reg2mean.nii.gz`` (an average whole head, about
1 mm, RAS) and ``data/facemask.nii.gz`` (1 outside the face, 0 on the face it
removes). Both are read from the installed package, never copied into the
repository. The template's brain mask is computed once by deepbet and cached.
"""
from __future__ import annotations

import importlib.metadata
import importlib.resources
from dataclasses import dataclass, field
from pathlib import Path

import nibabel as nib
import numpy as np
from nibabel.processing import resample_from_to, resample_to_output
from scipy import ndimage

from refacelib._utils.arrays import bounding_box, largest_component
from refacelib._utils.io import save_nifti

__all__ = [
    "Template",
    "pydeface_data_path",
    "pydeface_version",
    "load_template",
    "head_mask_from_intensity", "head_threshold", "TISSUE_FRACTION",
    "LANDMARKS_VOX",
]

#: Facial landmarks in voxel indices (x, y, z) of pydeface's 1 mm template,
#: read off its mid-sagittal profile (most anterior head point per axial level).
LANDMARKS_VOX = {
    "nose": (88.0, 238.0, 62.0),
    "lips": (88.0, 229.0, 44.0),
    "chin": (88.0, 224.0, 24.0),
    "cheek_right": (120.0, 214.0, 66.0),
    "cheek_left": (56.0, 214.0, 66.0),
    "brow": (88.0, 227.0, 100.0),
    "eye_right": (118.0, 210.0, 92.0),
    "eye_left": (58.0, 210.0, 92.0),
}


def pydeface_data_path(name: str) -> Path:
    """Path of a data file inside the installed pydeface package."""
    path = Path(str(importlib.resources.files("pydeface") / "data" / name))
    if not path.is_file():
        raise FileNotFoundError(f"pydeface package data missing: data/{name}; reinstall pydeface")
    return path


def pydeface_version() -> str:
    return importlib.metadata.version("pydeface")


@dataclass
class Template:
    """The average head resampled to an isotropic grid, with its masks.

    Attributes
    ----------
    data : float32 array, intensities (background set to 0)
    head, brain, face : bool arrays on the same grid
    affine : 4x4 voxel-to-world (RAS+, mm)
    landmarks : dict name -> world coordinate (mm)
    """

    data: np.ndarray
    head: np.ndarray
    brain: np.ndarray
    face: np.ndarray
    affine: np.ndarray
    landmarks: dict
    cache: dict = field(default_factory=dict, repr=False, compare=False)  # derived regions

    @property
    def voxel_mm(self) -> float:
        return float(abs(self.affine[0, 0]))

    @property
    def shape(self) -> tuple:
        return self.data.shape


#: The tissue threshold of :func:`head_mask_from_intensity`: this fraction of the 99th
#: percentile of the positive voxels.
TISSUE_FRACTION = 0.15


def head_threshold(data: np.ndarray) -> float:
    """The default threshold of :func:`head_mask_from_intensity`: 15 % of the 99th percentile of positive voxels.

    Examples
    --------
    >>> v = np.zeros((4, 4, 4)); v[1:3, 1:3, 1:3] = 100.0
    >>> head_threshold(v)
    15.0
    """
    data = np.asarray(data, dtype=np.float32)
    positive = data[data > 0]
    if positive.size == 0:
        raise ValueError("image has no positive voxels: no head to find")
    return TISSUE_FRACTION * float(np.percentile(positive, 99))


def head_mask_from_intensity(data: np.ndarray, *, threshold: float | None = None) -> np.ndarray:
    """The head's tissue: the largest connected, hole-filled component above ``threshold``.

    The default threshold is :func:`head_threshold` (15 % of the 99th percentile of
    positive voxels), which separates scalp from air on T1 heads; the image is smoothed by a
    Gaussian of 0.7 voxel first. This is the head mask of the pipeline's intensity work:
    intensity statistics, registration weights, defacing, input screening.

    The study has one other head mask, with another purpose:
    :func:`refacelib.imaging.surface.head_mask`, the **skin** mask from which surfaces are
    extracted and faces measured (half of Otsu's threshold, which follows the skin more
    tightly, and holes also filled slice by slice to close airways). Keeping the two apart
    means a change to how faces are measured never changes a defaced image, and the other way
    round.

    Examples
    --------
    >>> v = np.zeros((12, 12, 12)); v[3:9, 3:9, 3:9] = 100.0; v[5:7, 5:7, 5:7] = 0.0
    >>> m = head_mask_from_intensity(v)
    >>> bool(m[6, 6, 6]), bool(m[0, 0, 0])
    (True, False)
    """
    data = np.asarray(data, dtype=np.float32)
    if threshold is None:
        threshold = head_threshold(data)
    mask = ndimage.gaussian_filter(data, 0.7) > threshold
    if not mask.any():
        raise ValueError("no voxel above the head threshold")
    return ndimage.binary_fill_holes(largest_component(mask, connectivity=1))


def _template_brain_mask(img: nib.Nifti1Image, cache: Path | None) -> nib.Nifti1Image:
    if cache is not None and cache.is_file():
        return nib.load(str(cache))
    from deepbet.bet import BrainExtraction

    _, mask, _ = BrainExtraction(no_gpu=True).run(img)
    mask = nib.Nifti1Image(np.asarray(mask.dataobj).astype(np.uint8), img.affine)
    if cache is not None:
        save_nifti(mask, cache)
    return mask


def load_template(voxel_mm: float = 2.0, *, cache_dir: Path | None = None, margin_mm: float = 10.0) -> Template:
    """Load pydeface's average head on an isotropic ``voxel_mm`` grid, cropped to the head.

    The brain mask comes from deepbet run on the 1 mm template (cached in
    ``cache_dir`` when given). The face region is pydeface's own face mask.
    """
    src = nib.load(str(pydeface_data_path("mean_reg2mean.nii.gz")))
    src = nib.Nifti1Image(np.asarray(src.dataobj, dtype=np.float32), src.affine)
    face_src = nib.load(str(pydeface_data_path("facemask.nii.gz")))
    face_src = nib.Nifti1Image((np.asarray(face_src.dataobj) < 0.5).astype(np.float32), face_src.affine)
    cache = Path(cache_dir) / "template_brain_mask_1mm.nii.gz" if cache_dir else None
    brain_src = _template_brain_mask(src, cache)

    img = resample_to_output(src, voxel_sizes=(voxel_mm,) * 3, order=1)
    face = resample_from_to(face_src, img, order=1)
    brain = resample_from_to(nib.Nifti1Image(np.asarray(brain_src.dataobj, np.float32), brain_src.affine), img, order=1)
    data = np.clip(img.get_fdata(dtype=np.float32), 0, None)
    head = head_mask_from_intensity(data)
    box = bounding_box(head, int(np.ceil(margin_mm / voxel_mm)))
    affine = img.affine.copy()
    affine[:3, 3] = nib.affines.apply_affine(img.affine, [s.start for s in box])
    head = head[box]
    data = np.where(ndimage.binary_dilation(head, iterations=1), data[box], 0).astype(np.float32)
    landmarks = {k: nib.affines.apply_affine(src.affine, v) for k, v in LANDMARKS_VOX.items()}
    return Template(
        data=data,
        head=head,
        brain=(np.asarray(brain.dataobj)[box] > 0.5) & head,
        face=(np.asarray(face.dataobj)[box] > 0.5) & head,
        affine=affine,
        landmarks=landmarks,
    )
