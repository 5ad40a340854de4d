"""Defacing methods, their template-space removal regions, the average face and QC.

Every method has the same signature::

    f(image, affine, *, brain_mask, registration, engine="auto") -> DefaceResult

``image`` is a 3-D float32 array with a RAS mm ``affine``; ``brain_mask`` a
bool array on the same grid; ``registration`` the ANTsPy affine registration
of pydeface's template to this subject
(:func:`refacelib.imaging.registration.register_template`).

Engines. ``quickshear`` always runs the real PyPI package. ``pydeface``,
``fsl_deface`` and ``mri_deface`` run the real command when it is on PATH
(pydeface needs FSL's ``flirt``) and otherwise a built-in emulation: a
removal region defined on the template grid (functions ``*_region`` below)
is warped to the subject (nearest neighbour) and restricted to
``dilate(template head warped to the subject, 10 mm) & ~brain_mask``: the
subject's own head or face never shapes the removal region (a real tool's
mask comes from its template and registration, not from the face it removes). ``engine="real"`` forces the
real tool and raises :class:`ToolNotFoundError` when it is missing;
``engine="emulated"`` forces the emulation.

Every result satisfies: the defaced image equals the input bit for bit
outside ``removal``.
"""
from __future__ import annotations

import importlib.metadata
import os
import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from refacelib.data.template import Template, head_mask_from_intensity, pydeface_version
from refacelib.imaging.registration import Registration, voxel_sizes_mm, register_template

__all__ = [
    "template_regions",
    "DefaceResult", "ToolNotFoundError",
    "pydeface_region", "fsl_deface_region", "mri_deface_region", "face_region",
    "deface_pydeface", "deface_fsl", "deface_mri", "deface_quickshear", "skullstrip",
    "deepbet_brain_mask", "METHODS", "REGISTRY", "tool_status", "method_table",
    "cohort_average", "qc", "deface_subject",
]

METHODS = ("fsl_deface", "mri_deface", "pydeface", "quickshear", "skullstrip")
#: Head neighbourhood (mm) to which every warped removal region is restricted.
HEAD_MARGIN_MM = 10.0
_REAL_TOOL = {"pydeface": "pydeface", "fsl_deface": "fsl_deface", "mri_deface": "mri_deface"}


class ToolNotFoundError(RuntimeError):
    """A real defacing tool was requested but is not installed."""


@dataclass
class DefaceResult:
    """Output of one defacing method (see module docstring for the invariant)."""

    image: np.ndarray
    removal: np.ndarray
    method: str
    engine: str
    version: str
    emulated: bool


# --------------------------------------------------------------------------- geometry
def _dilate_mm(mask: np.ndarray, mm: float, affine: np.ndarray) -> np.ndarray:
    """Voxels within ``mm`` of ``mask`` (exact Euclidean distance)."""
    if not mask.any():
        return mask.copy()
    return ndimage.distance_transform_edt(~mask, sampling=voxel_sizes_mm(affine)) <= mm


def _erode_mm(mask: np.ndarray, mm: float, affine: np.ndarray) -> np.ndarray:
    """Voxels of ``mask`` farther than ``mm`` from its outside."""
    return ndimage.distance_transform_edt(mask, sampling=voxel_sizes_mm(affine)) > mm



# --------------------------------------------------------------------------- template regions
def pydeface_region(template: Template) -> np.ndarray:
    """pydeface's removal region: its face mask (``template.face``) plus the air
    within 10 mm in front of it (pydeface's facemask.nii.gz also covers that air)."""
    near = _dilate_mm(template.face, 10.0, template.affine)
    return template.face | (near & ~template.head)


def face_region(template: Template) -> np.ndarray:
    """Face region used for evaluation and for the average face (= :func:`pydeface_region`)."""
    return pydeface_region(template)


def _ear_region(template: Template) -> np.ndarray:
    """Lateral parts of the head at ear level (both sides).

    Voxels of the head dilated by 5 mm whose distance from the mid-sagittal
    plane (midway between the eyes) exceeds the half head width of their axial
    slice minus 20 mm, in the axial band [eye z - 40, eye z + 5] mm and the
    band +-25 mm around the head's antero-posterior centre.
    """
    aff, head = template.affine, _dilate_mm(template.head, 5.0, template.affine)
    world = np.einsum("ij,j...->i...", aff[:3, :3], np.indices(template.shape, dtype=np.float32)) \
        + aff[:3, 3, None, None, None]
    eye = (np.asarray(template.landmarks["eye_left"]) + np.asarray(template.landmarks["eye_right"])) / 2
    ys = world[1][head]
    y_mid = (ys.min() + ys.max()) / 2
    band = (world[2] >= eye[2] - 40) & (world[2] <= eye[2] + 5) & (np.abs(world[1] - y_mid) <= 25)
    dist = np.abs(world[0] - eye[0])
    half = np.zeros(template.shape[2], np.float32)
    for k in range(template.shape[2]):
        if head[:, :, k].any():
            half[k] = dist[:, :, k][head[:, :, k]].max()
    return head & band & (dist > half[None, None, :] - 20.0)


def fsl_deface_region(template: Template) -> np.ndarray:
    """fsl_deface emulation: the pydeface region dilated by 5 mm, union both ears
    (:func:`_ear_region`), minus the template brain dilated by 5 mm."""
    face = _dilate_mm(pydeface_region(template), 5.0, template.affine)
    brain = _dilate_mm(template.brain, 5.0, template.affine)
    return (face | _ear_region(template)) & ~brain


def mri_deface_region(template: Template) -> np.ndarray:
    """mri_deface emulation (conservative): the pydeface region restricted to the
    outer 12 mm shell of the head plus the air, minus the brain dilated by 5 mm."""
    shell = ~_erode_mm(template.head, 12.0, template.affine)
    brain = _dilate_mm(template.brain, 5.0, template.affine)
    return pydeface_region(template) & shell & ~brain


_REGIONS = {"pydeface": pydeface_region, "fsl_deface": fsl_deface_region, "mri_deface": mri_deface_region}


# --------------------------------------------------------------------------- engines
def template_regions(template: Template) -> dict[str, np.ndarray]:
    """The emulated methods' removal regions on the template grid (computed once per template)."""
    if "deface_regions" not in template.cache:
        template.cache["deface_regions"] = {name: fn(template) for name, fn in _REGIONS.items()}
    return template.cache["deface_regions"]


def _emulated_removal(name: str, image, affine, brain_mask, registration: Registration) -> np.ndarray:
    region = template_regions(registration.template)[name]
    warped = registration.to_subject(region, image.shape, affine, order=0)
    head = registration.to_subject(registration.template.head, image.shape, affine, order=0)
    near = _dilate_mm(head, HEAD_MARGIN_MM, affine)
    return warped & near & ~brain_mask


def _real_command(name: str, src: Path, dst: Path) -> list[str]:
    if name == "pydeface":
        return ["pydeface", str(src), "--outfile", str(dst), "--force"]
    if name == "fsl_deface":
        return ["fsl_deface", str(src), str(dst)]
    atlas = os.environ.get("REFACELIB_MRI_DEFACE_ATLAS", "")
    gca = [Path(atlas) / "talairach_mixed_with_skull.gca", Path(atlas) / "face.gca"]
    if not all(p.is_file() for p in gca):
        raise ToolNotFoundError("mri_deface atlases not found: set REFACELIB_MRI_DEFACE_ATLAS")
    return ["mri_deface", str(src), *map(str, gca), str(dst)]


def _real_available(name: str) -> bool:
    if shutil.which(_REAL_TOOL[name]) is None:
        return False
    return name != "pydeface" or shutil.which("flirt") is not None


def _run_real(name: str, image: np.ndarray, affine: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "in.nii.gz", Path(tmp) / "out.nii.gz"
        nib.save(nib.Nifti1Image(image.astype(np.float32), affine), str(src))
        subprocess.run(_real_command(name, src, dst), check=True, capture_output=True)
        out = np.asarray(nib.load(str(dst)).dataobj, dtype=np.float32)
    removal = out != image
    return np.where(removal, out, image).astype(np.float32), removal


def _engine_text(name: str, real: bool) -> tuple[str, str]:
    if real:
        return f"{_REAL_TOOL[name]} (real command on PATH)", _tool_version(name)
    ants_v = importlib.metadata.version("antspyx")
    return (f"built-in emulation of {name} (pydeface's own template and face mask, "
            f"registered by ANTsPy affine)", f"refacelib emulation; antspyx {ants_v}; pydeface data {pydeface_version()}")


def _tool_version(name: str) -> str:
    if name == "pydeface":
        return pydeface_version()
    fsldir = os.environ.get("FSLDIR", "")
    vfile = Path(fsldir) / "etc" / "fslversion"
    return vfile.read_text().strip() if name == "fsl_deface" and vfile.is_file() else "unknown"


def _use_real(name: str, engine: str) -> bool:
    if engine not in ("auto", "real", "emulated"):
        raise ValueError(f"engine must be 'auto', 'real' or 'emulated', got {engine!r}")
    available = _real_available(name)
    if engine == "real" and not available:
        need = "pydeface and FSL's flirt" if name == "pydeface" else _REAL_TOOL[name]
        raise ToolNotFoundError(f"{name}: real tool not found on PATH (needs {need})")
    return engine == "real" or (engine == "auto" and available)


def _template_method(name: str, image, affine, brain_mask, registration, engine) -> DefaceResult:
    image = np.asarray(image, np.float32)
    real = _use_real(name, engine)
    if real:
        out, removal = _run_real(name, image, affine)
    else:
        removal = _emulated_removal(name, image, affine, np.asarray(brain_mask, bool), registration)
        out = np.where(removal, np.float32(0), image)
    engine_text, version = _engine_text(name, real)
    return DefaceResult(out, removal, name, engine_text, version, emulated=not real)


def deface_pydeface(image, affine, *, brain_mask, registration, engine: str = "auto") -> DefaceResult:
    """pydeface: zero its face mask region (:func:`pydeface_region`)."""
    return _template_method("pydeface", image, affine, brain_mask, registration, engine)


def deface_fsl(image, affine, *, brain_mask, registration, engine: str = "auto") -> DefaceResult:
    """fsl_deface: zero face and ears (:func:`fsl_deface_region`)."""
    return _template_method("fsl_deface", image, affine, brain_mask, registration, engine)


def deface_mri(image, affine, *, brain_mask, registration, engine: str = "auto") -> DefaceResult:
    """mri_deface: zero the outer shell of the face (:func:`mri_deface_region`)."""
    return _template_method("mri_deface", image, affine, brain_mask, registration, engine)


def deface_quickshear(image, affine, *, brain_mask, registration=None, engine: str = "auto") -> DefaceResult:
    """The real quickshear package, buffer 10 mm (its ``buff`` is in voxels).

    ``removal`` is the whole half-space quickshear zeroes (also the air in it),
    obtained by running quickshear on an all-ones image with the same mask.
    """
    if engine == "emulated":
        raise ValueError("quickshear has no emulation: it always runs the real package")
    try:
        import quickshear
    except ImportError as err:
        raise ToolNotFoundError("quickshear: Python package 'quickshear' not installed") from err
    image = np.asarray(image, np.float32)
    mask = nib.Nifti1Image(np.asarray(brain_mask, np.uint8), affine)
    buff = 10.0 / float(voxel_sizes_mm(affine).min())
    ones = quickshear.quickshear(nib.Nifti1Image(np.ones(image.shape, np.float32), affine), mask, buff=buff)
    removal = np.asarray(ones.dataobj) == 0
    out = np.asarray(quickshear.quickshear(nib.Nifti1Image(image, affine), mask, buff=buff).dataobj, np.float32)
    version = importlib.metadata.version("quickshear")
    return DefaceResult(out, removal, "quickshear", f"quickshear {version} (PyPI)", version, emulated=False)


def skullstrip(image, affine, *, brain_mask, registration=None, engine: str = "auto",
               brain_mask_source: str = "given") -> DefaceResult:
    """Zero everything outside ``brain_mask``; ``brain_mask_source`` names the mask
    (the phantom's ground truth, or ``"deepbet"`` via :func:`deepbet_brain_mask`)."""
    image = np.asarray(image, np.float32)
    removal = ~np.asarray(brain_mask, bool)
    out = np.where(removal, np.float32(0), image)
    return DefaceResult(out, removal, "skullstrip", f"brain mask zeroing (mask: {brain_mask_source})",
                        "refacelib", emulated=False)


def deepbet_brain_mask(image: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """Brain mask of a real T1w image by deepbet (CPU)."""
    from deepbet.bet import BrainExtraction

    _, mask, _ = BrainExtraction(no_gpu=True).run(nib.Nifti1Image(np.asarray(image, np.float32), affine))
    return np.asarray(mask.dataobj) > 0.5


REGISTRY = {"fsl_deface": deface_fsl, "mri_deface": deface_mri, "pydeface": deface_pydeface,
            "quickshear": deface_quickshear, "skullstrip": skullstrip}


def tool_status() -> dict:
    """Method -> one line saying what would run here and why."""
    out = {}
    for name in METHODS:
        if name in _REAL_TOOL:
            if _real_available(name):
                out[name] = f"{name}: real tool found on PATH"
            else:
                need = "pydeface and FSL's flirt" if name == "pydeface" else _REAL_TOOL[name]
                out[name] = f"{name} not on PATH (needs {need}): using built-in emulation"
        elif name == "quickshear":
            out[name] = f"quickshear {importlib.metadata.version('quickshear')} (PyPI): real package"
        else:
            out[name] = "skullstrip: zeroes outside the given brain mask"
    return out


def method_table() -> pd.DataFrame:
    """Columns ``method, engine, version, emulated`` of what would run on this machine."""
    rows = []
    for name in METHODS:
        if name in _REAL_TOOL:
            real = _real_available(name)
            engine, version = _engine_text(name, real)
            rows.append(dict(method=name, engine=engine, version=version, emulated=not real))
        elif name == "quickshear":
            v = importlib.metadata.version("quickshear")
            rows.append(dict(method=name, engine=f"quickshear {v} (PyPI)", version=v, emulated=False))
        else:
            rows.append(dict(method=name, engine="brain mask zeroing", version="refacelib", emulated=False))
    return pd.DataFrame(rows, columns=["method", "engine", "version", "emulated"])


# --------------------------------------------------------------------------- average face
def cohort_average(images, affines, template: Template, registrations) -> np.ndarray:
    """Average head of a training cohort on the template grid.

    Each image is divided by its median head intensity, brought onto the
    template grid by the inverse of its registration (linear), averaged, and
    rescaled to the template's median head intensity.
    """
    acc = np.zeros(template.shape, np.float64)
    n = 0
    for image, affine, reg in zip(images, affines, registrations):
        head = head_mask_from_intensity(image)
        acc += reg.to_template(np.asarray(image, np.float32) / float(np.median(image[head])), affine)
        n += 1
    if n == 0:
        raise ValueError("cohort_average needs at least one image")
    return (acc / n * float(np.median(template.data[template.head]))).astype(np.float32)


# --------------------------------------------------------------------------- QC and driver
def qc(original, result: DefaceResult, *, head_mask, brain_mask, registration) -> dict:
    """Quality checks of one defacing; ``passed`` False with a ``reason`` on failure."""
    removal = result.removal
    head_removed = int((removal & head_mask).sum())
    brain_removed = int((removal & brain_mask).sum())
    reg_ok = bool(registration.success) if registration is not None else False
    reasons = []
    if head_removed == 0:
        reasons.append("nothing removed from the head")
    if brain_removed and result.method != "skullstrip":
        reasons.append(f"{brain_removed} brain voxels removed")
    if result.emulated and not reg_ok:
        reasons.append("template registration failed")
    if not np.array_equal(result.image[~removal], np.asarray(original, np.float32)[~removal]):
        reasons.append("voxels changed outside the removal mask")
    return {"removed_head_fraction": head_removed / max(int(head_mask.sum()), 1),
            "brain_voxels_removed": brain_removed, "registration_ok": reg_ok,
            "registration_dice": float(registration.metric) if registration is not None else float("nan"),
            "passed": not reasons, "reason": "; ".join(reasons)}


def deface_subject(image, affine, *, brain_mask, template: Template, methods=METHODS,
                   registration: Registration | None = None) -> tuple[dict, pd.DataFrame]:
    """Run ``methods`` on one subject; returns ``(method -> DefaceResult, qc table)``.

    A method that raises or fails QC gets ``passed=False`` and a ``reason``; a
    method that raised has no result.
    """
    image = np.asarray(image, np.float32)
    brain_mask = np.asarray(brain_mask, bool)
    if registration is None:
        registration = register_template(image, affine, template)
    head = head_mask_from_intensity(image)
    results, rows = {}, []
    for name in methods:
        row = {"method": name}
        try:
            res = REGISTRY[name](image, affine, brain_mask=brain_mask, registration=registration)
            row.update(engine=res.engine, version=res.version, emulated=res.emulated)
            row.update(qc(image, res, head_mask=head, brain_mask=brain_mask, registration=registration))
            results[name] = res
        except Exception as err:  # noqa: BLE001 - every failure becomes a QC row
            row.update(passed=False, reason=f"{type(err).__name__}: {err}")
        rows.append(row)
    return results, pd.DataFrame(rows)
