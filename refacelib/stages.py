"""Cached stages of a run that several chapters share (defacing the cohort).

Each stage writes its products under ``artifacts/<stage>-<hash>/`` where the
hash covers every parameter that produces them; a stage whose ``done.json``
exists is loaded instead of recomputed, and an interrupted stage resumes
subject by subject.
"""
from __future__ import annotations

import json
import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to

from . import deface
from .config import Run, stable_hash
from .data import BIDSDataset, Subject, load_subject_array
from .io import atomic_write_text, save_nifti, save_table
from .surface import head_mask
from .template import Template, load_template

__all__ = ["study_template", "subject_brain_mask", "deface_cohort", "load_defaced", "load_registration", "face_features", "stage_stats", "qc_summary", "CANDIDATES"]

#: Bump when what a stage writes changes, so that old caches are not reused.
STAGE_VERSION = 3  # 3: seeded, single-threaded (repeatable) ANTs registration

#: Images per subject written by :func:`deface_cohort`, besides one per method.
CANDIDATES = ("original", "average", "template_average")


def study_template(run: Run) -> Template:
    """pydeface's average head on the run's working grid."""
    return load_template(run.params["deface"]["voxel_mm"], cache_dir=run.artifacts / "template")


def subject_brain_mask(run: Run, ds: BIDSDataset, subject: Subject, image, affine) -> tuple[np.ndarray, str]:
    """Brain mask on the subject's working grid, and where it came from.

    The phantom's ground-truth mask is used when ``deface.phantom_brain_mask``
    is ``ground_truth`` (a parameter choice stated in the book); otherwise deepbet.
    """
    sid = subject.participant_id
    truth = ds.root / "derivatives" / "phantom" / sid / "anat" / f"{sid}_desc-brain_mask.nii.gz"
    if run.is_phantom and run.params["deface"].get("phantom_brain_mask") == "ground_truth" and truth.exists():
        ref = nib.Nifti1Image(np.zeros(image.shape, np.uint8), affine)
        mask = resample_from_to(nib.load(str(truth)), ref, order=0)
        return np.asarray(mask.dataobj) > 0, "phantom ground truth"
    return deface.deepbet_brain_mask(image, affine), "deepbet"


def _stage_folder(run: Run, ds: BIDSDataset) -> Path:
    # the dataset enters by its folder name (the phantom's is a hash of its parameters) and its
    # subjects, never by its absolute path: a fresh clone elsewhere finds the same key
    key = stable_hash({"version": STAGE_VERSION, "deface": run.params["deface"], "data": ds.root.name, "ids": ds.ids,
                       "methods": deface.method_table().to_dict("records")})
    return run.artifacts / f"defaced-{key}"


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ants():
    import ants

    return ants


def _save(folder: Path, name: str, sid: str, image, affine, dtype=np.float32) -> None:
    save_nifti(nib.Nifti1Image(np.asarray(image, dtype=dtype), affine), folder / name / f"{sid}.nii.gz")


def _deface_one(run, ds, subject, template, folder, methods):
    image, affine = load_subject_array(subject, run.params["deface"]["voxel_mm"])
    brain, source = subject_brain_mask(run, ds, subject, image, affine)
    reg = deface.register_template(image, affine, template, seed=int(run.params.get("seed", 0)))
    results, qc = deface.deface_subject(image, affine, brain_mask=brain, template=template,
                                         methods=methods, registration=reg)
    sid = subject.participant_id
    _save(folder, "original", sid, image, affine)
    _save(folder, "brain", sid, brain, affine, np.uint8)
    tpl = folder / "template_space"
    _save(tpl, "original", sid, reg.to_template(image, affine, order=1), template.affine)
    for name, res in results.items():
        _save(folder, name, sid, res.image, affine)
        _save(folder, f"{name}_removal", sid, res.removal, affine, np.uint8)
        _save(tpl, name, sid, reg.to_template(res.image, affine, order=1), template.affine)
        _save(tpl, f"{name}_removal", sid, reg.to_template(res.removal, affine, order=0), template.affine, np.uint8)
    _ants().write_transform(reg.transform, str(_mkdir(folder / "transforms") / f"{sid}.mat"))
    qc = qc.assign(participant_id=sid, brain_mask_source=source, registration_seconds=round(reg.seconds, 2))
    return image, affine, brain, reg, qc


def deface_cohort(run: Run, ds: BIDSDataset, template: Template, *, progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """Deface every subject with every method; add both average faces to the test subjects.

    Returns the stage folder and the QC table (one row per subject and method).
    """
    from tqdm.auto import tqdm

    folder = _stage_folder(run, ds)
    if (folder / "done.json").exists():
        return folder, pd.read_csv(folder / "qc.csv")
    methods = tuple(run.params["deface"]["methods"])
    start, rows, train, tests = time.perf_counter(), [], [], []
    for subject in tqdm(ds.subjects, desc="defacing", disable=not progress):
        image, affine, brain, reg, qc = _deface_one(run, ds, subject, template, folder, methods)
        rows.append(qc)
        split = subject.row.get("split", "")
        if split == "train":
            train.append((image, affine, reg))
        elif str(split).startswith("test"):
            tests.append((subject.participant_id, image, affine, brain, reg))
    cohort_avg = deface.cohort_average([t[0] for t in train], [t[1] for t in train], template, [t[2] for t in train])
    save_nifti(nib.Nifti1Image(cohort_avg.astype(np.float32), template.affine), folder / "cohort_average.nii.gz")
    region = deface.face_region(template)
    for sid, image, affine, brain, reg in tests:
        head = head_mask(image)
        for name, average in (("average", cohort_avg), ("template_average", template.data)):
            out, replaced = deface.average_face(image, affine, average=average, registration=reg,
                                                face_region=region, head_mask=head)
            _save(folder, name, sid, out, affine)
            _save(folder, f"{name}_removal", sid, replaced, affine, np.uint8)
    qc = pd.concat(rows, ignore_index=True)
    save_table(qc, folder / "qc.csv")
    stats = {"seconds": round(time.perf_counter() - start, 1), "n_subjects": len(ds.subjects),
             "n_train_for_average": len(train),
             "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    atomic_write_text(folder / "done.json", json.dumps(stats))
    return folder, qc


def load_registration(folder: Path, sid: str, template: Template) -> deface.Registration:
    """A subject's template registration, as stored by :func:`deface_cohort` (transform only)."""
    transform = _ants().read_transform(str(Path(folder) / "transforms" / f"{sid}.mat"))
    return deface.Registration(template=template, transform=transform)


def load_defaced(folder: Path, name: str, sid: str, *, space: str = "subject") -> tuple[np.ndarray, np.ndarray]:
    """One stored image (``original``, a method, ``<method>_removal``, ``average``...) as (array, affine).

    ``space="template"`` gives the version resampled onto the template grid by
    the subject's registration (every subject on one grid).
    """
    base = Path(folder) / "template_space" if space == "template" else Path(folder)
    img = nib.load(str(base / name / f"{sid}.nii.gz"))
    return np.asarray(img.dataobj), img.affine


def face_features(folder: Path, ids, name: str, *, region: np.ndarray, brain: np.ndarray, stride: int = 1) -> np.ndarray:
    """Facial voxels of one image type for every subject, on the template grid.

    Each image is divided by the median of its non-zero voxels inside the
    template's brain mask (the brain survives every defacing method, so every
    image type is normalised the same way), then the voxels of ``region``
    are taken, every ``stride``-th voxel along each axis.

    Returns an array (n_subjects, n_voxels).
    """
    sub = (slice(None, None, stride),) * 3
    keep = region[sub]
    rows = []
    for sid in ids:
        img, _ = load_defaced(folder, name, sid, space="template")
        inside = img[brain & (img > 0)]
        scale = float(np.median(inside)) if inside.size else 1.0
        rows.append(img[sub][keep] / max(scale, 1e-6))
    return np.stack(rows).astype(np.float32)


def stage_stats(folder: Path) -> dict:
    """Time and peak memory of the defacing stage, as recorded when it ran."""
    return json.loads((Path(folder) / "done.json").read_text())


def qc_summary(qc: pd.DataFrame) -> pd.DataFrame:
    """Per method: subjects, failures, median removed fraction, max brain voxels removed, registrations ok.

    Examples
    --------
    >>> qc = pd.DataFrame({"method": ["a", "a"], "passed": [True, False], "removed_head_fraction": [0.1, 0.3],
    ...                    "brain_voxels_removed": [0, 2], "registration_ok": [True, True]})
    >>> qc_summary(qc)[["method", "n", "failed"]].values.tolist()
    [['a', 2, 1]]
    """
    grouped = qc.groupby("method", sort=False)
    return pd.DataFrame({
        "n": grouped.size(),
        "failed": grouped["passed"].apply(lambda s: int((~s.astype(bool)).sum())),
        "removed_head_fraction_median": grouped["removed_head_fraction"].median().round(4),
        "brain_voxels_removed_max": grouped["brain_voxels_removed"].max(),
        "registration_ok": grouped["registration_ok"].apply(lambda s: int(s.astype(bool).sum())),
    }).reset_index()
