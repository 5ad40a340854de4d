"""Affine registration of pydeface's template to a subject (ANTsPy), and the warps it gives.

:func:`register_template` is the one registration of the study: the defacing emulations
warp their template-space removal regions with it, and the attacker registers the
template to a *defaced* image with it (the removal mask left out of the metric). It is
seeded and single-threaded, so the same input gives the same transform.
:mod:`refacelib.bench.registration` measures cheaper schedules against the book's.
"""
from __future__ import annotations

import os
import tempfile
import time
from dataclasses import dataclass, field

import numpy as np

from refacelib.data.template import Template, head_mask_from_intensity

__all__ = ["Registration", "register_template", "voxel_sizes_mm", "DICE_SUCCESS", "AFFINE_ITERATIONS", "AFFINE_SHRINK_FACTORS",
           "AFFINE_SMOOTHING_SIGMAS", "INITIAL_STARTS"]

#: Dice of template vs subject head masks above which a registration succeeded.
DICE_SUCCESS = 0.8
_LPS = np.diag([-1.0, -1.0, 1.0, 1.0])


def _ants():
    # ANTs repeats a registration only single-threaded and seeded; ITK reads the thread count
    # from the environment when it first starts threads (a user's own setting is kept)
    os.environ.setdefault("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS", "1")
    import ants

    return ants


def voxel_sizes_mm(affine: np.ndarray) -> np.ndarray:
    """Voxel sizes (mm) along the array axes of an image with this affine (shear and rotation allowed).

    Examples
    --------
    >>> voxel_sizes_mm(np.diag([2.0, -3.0, 1.5, 1.0])).tolist()
    [2.0, 3.0, 1.5]
    """
    return np.linalg.norm(np.asarray(affine)[:3, :3], axis=0)


def _to_ants(array: np.ndarray, affine: np.ndarray):
    """ANTs image of ``array``: RAS affine converted to ANTs' LPS physical space."""
    lps = _LPS @ np.asarray(affine, float)
    spacing = voxel_sizes_mm(lps)
    return _ants().from_numpy(np.asarray(array, np.float32), origin=tuple(lps[:3, 3]),
                              spacing=tuple(spacing), direction=lps[:3, :3] / spacing)


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    total = int(a.sum()) + int(b.sum())
    return 2.0 * float((a & b).sum()) / total if total else 0.0


# --------------------------------------------------------------------------- registration
@dataclass
class Registration:
    """Affine map from pydeface's template to one subject (ANTsPy).

    Attributes
    ----------
    template : the registered :class:`~refacelib.data.template.Template`
    transform : ANTsTransform mapping subject points to template points
        (the ``fwdtransforms`` of ``ants.registration(fixed=subject, moving=template)``)
    metric : Dice of the warped template head mask and the subject head mask
    success : ``metric > DICE_SUCCESS``
    seconds : wall time of the registration
    """

    template: Template
    transform: object
    metric: float = float("nan")
    success: bool = False
    seconds: float = 0.0
    cache: dict = field(default_factory=dict, repr=False)

    def to_subject(self, template_array: np.ndarray, shape: tuple, affine: np.ndarray, *,
                   order: int = 0) -> np.ndarray:
        """Warp a template-grid array into the subject grid (order 0: nearest, 1: linear)."""
        ants = _ants()
        moving = _to_ants(np.asarray(template_array, np.float32), self.template.affine)
        ref = _to_ants(np.zeros(shape, np.float32), affine)
        out = ants.apply_ants_transform_to_image(
            self.transform, moving, ref, interpolation="nearestneighbor" if order == 0 else "linear").numpy()
        return out > 0.5 if template_array.dtype == bool else out.astype(np.float32)

    def to_template(self, array: np.ndarray, affine: np.ndarray, *, order: int = 1) -> np.ndarray:
        """Bring a subject-grid array onto the template grid with the inverse transform."""
        ants = _ants()
        moving = _to_ants(np.asarray(array, np.float32), affine)
        ref = _to_ants(np.zeros(self.template.shape, np.float32), self.template.affine)
        out = ants.apply_ants_transform_to_image(
            self.transform.invert(), moving, ref,
            interpolation="nearestneighbor" if order == 0 else "linear").numpy()
        return out > 0.5 if array.dtype == bool else out.astype(np.float32)


#: The book's registration schedule: ANTsPy's affine levels (iterations, shrink factors, smoothing sigmas).
AFFINE_ITERATIONS, AFFINE_SHRINK_FACTORS, AFFINE_SMOOTHING_SIGMAS = (200, 100, 50, 10), (6, 4, 2, 1), (3, 2, 1, 0)
#: Starts of the affine stage: ANTs' centre-of-mass alignment, or a rigid stage first.
INITIAL_STARTS = ("none", "rigid")


def _ants_affine(fixed, moving, *, seed: int, mask, iterations, shrink_factors, smoothing_sigmas, initial: str,
                 outprefix: str):
    """ANTsPy affine registration of ``moving`` to ``fixed``: the ``fwdtransforms`` files.

    ``initial="rigid"`` runs a rigid stage with the same schedule first and starts the
    affine stage from it (ANTs collapses the two into one affine file); ``"none"``
    starts from ANTs' own centre-of-mass alignment. ``seed`` is ANTs' (non-zero) seed.
    ``outprefix``: where ANTs writes its transform files (the caller removes them).
    """
    ants = _ants()
    if initial not in INITIAL_STARTS:
        raise ValueError(f"initial must be one of {INITIAL_STARTS}, got {initial!r}")
    schedule = {"aff_iterations": tuple(int(i) for i in iterations),
                "aff_shrink_factors": tuple(int(f) for f in shrink_factors),
                "aff_smoothing_sigmas": tuple(int(s) for s in smoothing_sigmas)}
    if len({len(v) for v in schedule.values()}) != 1:
        raise ValueError(f"iterations, shrink_factors and smoothing_sigmas need one value per level, got {schedule}")
    extra = {} if mask is None else {"mask": mask}
    if initial == "rigid":
        rigid = ants.registration(fixed=fixed, moving=moving, type_of_transform="Rigid", random_seed=seed,
                                  outprefix=f"{outprefix}rigid_", **schedule, **extra)
        extra["initial_transform"] = list(rigid["fwdtransforms"])
    reg = ants.registration(fixed=fixed, moving=moving, type_of_transform="Affine", random_seed=seed,
                            outprefix=f"{outprefix}affine_", **schedule, **extra)
    return reg["fwdtransforms"]


def register_template(image: np.ndarray, affine: np.ndarray, template: Template, *,
                      voxel_mm: float = 4.0, seed: int = 0, exclude: np.ndarray | None = None,
                      template_part: np.ndarray | None = None, iterations=AFFINE_ITERATIONS,
                      shrink_factors=AFFINE_SHRINK_FACTORS, smoothing_sigmas=AFFINE_SMOOTHING_SIGMAS,
                      initial: str = "none") -> Registration:
    """Affine-register ``template`` (moving) to the subject (fixed) with ANTsPy.

    Both images are resampled to ``voxel_mm`` first, for speed. The registration
    is judged by the Dice of the warped template head and the subject head mask.
    Seeded and single-threaded, so that the same input gives the same transform.

    ``exclude`` (bool, subject grid) leaves voxels out of the similarity metric
    and of the Dice: the attacker's registration of a *defaced* image passes
    the removal mask, so that the zeroed face neither pulls the template nor
    is needed (:func:`refacelib.pipeline.stages.deface_cohort`). ``template_part`` (bool,
    template grid) registers only that part of the template (its brain, for
    a skull-stripped image, which has nothing else to align to).

    ``iterations``, ``shrink_factors`` and ``smoothing_sigmas`` (one value per
    level) and ``initial`` (``"none"`` or ``"rigid"``: a rigid stage with the same
    schedule first) set ANTs' work; the defaults are the book's setting, and
    :mod:`refacelib.bench.registration` measures cheaper ones against it.
    """
    ants = _ants()
    start = time.perf_counter()
    fixed = ants.resample_image(_to_ants(image, affine), (voxel_mm,) * 3, use_voxels=False, interp_type=0)
    source = template.data if template_part is None else np.where(template_part, template.data, 0)
    moving = ants.resample_image(_to_ants(source, template.affine), (voxel_mm,) * 3,
                                 use_voxels=False, interp_type=0)
    keep = None
    if exclude is not None:
        keep_img = ants.resample_image(_to_ants((~np.asarray(exclude, bool)).astype(np.float32), affine),
                                       (voxel_mm,) * 3, use_voxels=False, interp_type=1)
        keep = keep_img.new_image_like((keep_img.numpy() > 0.5).astype(np.float32))
    # antspyx takes the seed from ants.config (its random_seed argument is not passed on), and
    # ANTs reads a seed of 0 as "draw one from the clock": seed s is passed on as s + 1
    ants_seed = int(seed) % (2**31 - 2) + 1
    previous, ants.config._random_seed = ants.config._random_seed, ants_seed
    try:
        # ANTs writes its transforms to files; read back here, removed with their folder (a
        # registration per subject and method would otherwise leave a file each in the temp folder)
        with tempfile.TemporaryDirectory(prefix="refacelib-ants-") as tmp:
            files = _ants_affine(fixed, moving, seed=ants_seed, mask=keep, iterations=iterations,
                                 shrink_factors=shrink_factors, smoothing_sigmas=smoothing_sigmas, initial=initial,
                                 outprefix=os.path.join(tmp, "reg_"))
            transform = ants.read_transform(files[0])
    finally:
        ants.config._random_seed = previous
    out = Registration(template=template, transform=transform)
    head = head_mask_from_intensity(image)
    warped = out.to_subject(template.head if template_part is None else np.asarray(template_part, bool),
                            image.shape, affine)
    if template_part is not None:
        head = head_mask_from_intensity(image) if exclude is None else ~np.asarray(exclude, bool)
    if exclude is not None:
        head, warped = head & ~exclude, warped & ~exclude
    out.metric = _dice(warped, head)
    out.success = bool(out.metric > DICE_SUCCESS)
    out.seconds = time.perf_counter() - start
    return out
