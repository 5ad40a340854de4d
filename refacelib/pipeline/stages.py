"""Cached stages of a run that several chapters share (defacing the cohort).

Each stage writes its products under ``artifacts/<stage>-<hash>/`` where the
hash covers every parameter that produces them; a stage whose ``done.json``
exists is loaded instead of recomputed, and an interrupted stage resumes
subject by subject.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to

from refacelib.deface import methods as deface
from refacelib.imaging import registration
from refacelib.pipeline.cache import is_done, mark_done, read_done, stage_folder
from refacelib.pipeline.config import Run
from refacelib.data.bids import BIDSDataset, Subject, image_fingerprint, load_subject_array
from refacelib._utils.io import save_nifti, save_table
from refacelib._utils.parallel import backend_settings, default_jobs, worker_pool
from refacelib.data.template import Template, head_mask_from_intensity, load_template

__all__ = ["study_template", "subject_brain_mask", "deface_cohort", "training_data_name", "load_defaced", "load_registration", "attacker_registration", "phantom_truth",
           "cohort_average_from_folder", "face_features", "qc_failures", "stage_stats", "qc_summary"]

#: Version of the data owner's side of the defacing stage (the originals, defaced images, removal
#: masks and template-space copies every model trains on); part of its cache key and of the training
#: data's (:func:`training_data_name`): raise it when that changes.
STAGE_VERSION = 4
#: Version of the attacker's side (registrations to the defaced test images,
#: :func:`attacker_registration`); part of the stage's cache key, not of the training data's, since
#: no training example reads it. 1: a skull-stripped image's metric region includes the brain's border.
ATTACKER_VERSION = 1
#: A skull-stripped image is registered to the template's brain over the kept brain grown by this
#: margin, so that the brain's edge (brain against zeros, in both images) is part of the metric.
SKULLSTRIP_METRIC_MARGIN_MM = 8.0



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


def _training_key(run: Run, ds: BIDSDataset) -> dict:
    # the dataset enters by its folder name (the phantom's is a hash of its parameters) and its
    # subjects, never by its absolute path: a fresh clone elsewhere finds the same key; a real
    # dataset's images also enter by size and time (image_fingerprint), the phantom's are
    # determined by its parameters
    key = {"version": STAGE_VERSION, "deface": run.params["deface"], "data": ds.root.name, "ids": ds.ids,
           "methods": deface.method_table().to_dict("records")}
    if not run.is_phantom:
        key["images"] = image_fingerprint(ds)
    return key


def _stage_folder(run: Run, ds: BIDSDataset) -> Path:
    return stage_folder(run, "defaced", {**_training_key(run, ds), "attacker": ATTACKER_VERSION})


def training_data_name(run: Run, ds: BIDSDataset) -> str:
    """The key of what the cascade trains on from the defacing stage (the data owner's side).

    The stage folder's name without the attacker's side (:data:`ATTACKER_VERSION`): a change of
    the attacker's registration re-runs the stage and the refacing but keeps the trained
    cascade, shipped checkpoints included, since no training example reads it.
    """
    return stage_folder(run, "defaced", _training_key(run, ds)).name


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _ants():
    import ants

    return ants


def _save(folder: Path, name: str, sid: str, image, affine, dtype=np.float32) -> None:
    save_nifti(nib.Nifti1Image(np.asarray(image, dtype=dtype), affine), folder / name / f"{sid}.nii.gz")


def _deface_one(run, ds, subject, template, folder, methods, attacker: bool):
    """Deface one subject with every method and store what later stages read.

    The data owner's side: the template is registered to the original image,
    which carries every emulated method's removal region (a real tool sees
    the original too). For a test subject (``attacker``) the attacker's side
    follows: the template is registered again to each *defaced* image, with
    the removal mask left out of the similarity metric (for a skull-stripped
    image, the template's brain to the brain), and the defaced image and its
    mask are brought onto the template grid by that registration only.
    Returns the QC rows and the median head intensity of the original.
    """
    image, affine = load_subject_array(subject, run.params["deface"]["voxel_mm"])
    brain, source = subject_brain_mask(run, ds, subject, image, affine)
    seed = int(run.params.get("seed", 0))
    reg = registration.register_template(image, affine, template, seed=seed)
    results, qc = deface.deface_subject(image, affine, brain_mask=brain, template=template,
                                         methods=methods, registration=reg)
    sid = subject.participant_id
    _save(folder, "original", sid, image, affine)
    _save(folder, "brain", sid, brain, affine, np.uint8)
    tpl = folder / "template_space"
    _save(tpl, "original", sid, reg.to_template(image, affine, order=1), template.affine)
    attack_seconds = 0.0
    for name, res in results.items():
        _save(folder, name, sid, res.image, affine)
        _save(folder, f"{name}_removal", sid, res.removal, affine, np.uint8)
        _save(tpl, name, sid, reg.to_template(res.image, affine, order=1), template.affine)
        _save(tpl, f"{name}_removal", sid, reg.to_template(res.removal, affine, order=0), template.affine, np.uint8)
        if attacker:
            areg = attacker_registration(res.image, res.removal, affine, template, method=name, seed=seed)
            attack_seconds += areg.seconds
            att = folder / "attacker"
            _save(att, name, sid, areg.to_template(res.image, affine, order=1), template.affine)
            _save(att, f"{name}_removal", sid, areg.to_template(res.removal, affine, order=0), template.affine,
                  np.uint8)
            _ants().write_transform(areg.transform, str(_mkdir(att / "transforms" / name) / f"{sid}.mat"))
    _ants().write_transform(reg.transform, str(_mkdir(folder / "transforms") / f"{sid}.mat"))
    for kind in ("oracle", "retest"):  # the phantom's ground truth, for the evaluator only
        truth = phantom_truth(ds, subject, kind)
        if truth is not None:
            _save(folder, kind, sid, load_subject_array(truth, run.params["deface"]["voxel_mm"])[0], affine)
    qc = qc.assign(participant_id=sid, brain_mask_source=source, registration_seconds=round(reg.seconds, 2),
                   attacker_registration_seconds=round(attack_seconds, 2))
    return qc, float(np.median(image[head_mask_from_intensity(image)]))


def attacker_registration(defaced: np.ndarray, removal: np.ndarray, affine: np.ndarray, template: Template, *,
                          method: str, seed: int = 0, **options) -> registration.Registration:
    """The template registered to a defaced image, as an attacker can do it (no original needed).

    The removal mask is left out of the similarity metric; a skull-stripped
    image is matched by the template's brain alone, over the kept brain grown by
    :data:`SKULLSTRIP_METRIC_MARGIN_MM`: both images are then brain against zeros there,
    and the brain's edge is what fixes the scale. Left out with the rest of the
    removal mask, that edge let the template's brain shrink by 1 to 5% in linear size
    on the phantom (its dark edge matched the template's zeros), which moved the
    template's face several millimetres inward. ``options`` (resolution and
    schedule) go to :func:`refacelib.imaging.registration.register_template`; the book
    passes none (:mod:`refacelib.bench.registration` does).
    """
    if method == "skullstrip":
        kept = deface._dilate_mm(~np.asarray(removal, bool), SKULLSTRIP_METRIC_MARGIN_MM, affine)
        return registration.register_template(defaced, affine, template, seed=seed, template_part=template.brain,
                                              exclude=~kept, **options)
    return registration.register_template(defaced, affine, template, seed=seed, exclude=removal, **options)


def phantom_truth(ds: BIDSDataset, subject: Subject, kind: str) -> Path | None:
    """The phantom's oracle or retest image of a subject (``kind``), None when absent (real data)."""
    sid = subject.participant_id
    path = ds.root / "derivatives" / "phantom" / sid / "anat" / f"{sid}_desc-{kind}_T1w.nii.gz"
    return path if path.is_file() else None


def deface_cohort(run: Run, ds: BIDSDataset, template: Template, *, progress: bool = True,
                  n_jobs: int | None = None) -> tuple[Path, pd.DataFrame]:
    """Deface every subject with every method; the training cohort's average head.

    Subjects run in ``n_jobs`` worker processes (default: the usable CPUs, at
    most 8), each single-threaded, so that the files do not depend on it; on
    this machine or on a dask cluster (:func:`refacelib._utils.parallel.worker_pool`,
    ``$REFACE_BACKEND``), which changes neither the files nor the stage's folder.
    Returns the stage folder and the QC table (one row per subject and method).
    """
    from joblib import delayed
    from tqdm.auto import tqdm

    folder = _stage_folder(run, ds)
    if is_done(folder):
        return folder, pd.read_csv(folder / "qc.csv")
    methods = tuple(run.params["deface"]["methods"])
    start = time.perf_counter()
    n_jobs = default_jobs() if n_jobs is None else max(1, int(n_jobs))
    tasks = [delayed(_deface_one)(run, ds, s, template, folder, methods,
                                  str(s.row.get("split", "")).startswith("test")) for s in ds.subjects]
    rows, medians = [], {}
    with worker_pool(n_jobs, return_as="generator") as workers:
        results = tqdm(workers(tasks), total=len(tasks), desc="defacing", disable=not progress)
        for subject, (qc, median) in zip(ds.subjects, results):
            rows.append(qc)
            medians[subject.participant_id] = median
    train = [s.participant_id for s in ds.subjects if s.row.get("split", "") == "train"]
    cohort_avg = cohort_average_from_folder(folder, train, medians, template)
    save_nifti(nib.Nifti1Image(cohort_avg.astype(np.float32), template.affine), folder / "cohort_average.nii.gz")
    qc = pd.concat(rows, ignore_index=True)
    save_table(qc, folder / "qc.csv")
    stats = {"seconds": round(time.perf_counter() - start, 1), "n_subjects": len(ds.subjects),
             "n_train_for_average": len(train), "n_jobs": n_jobs, "backend": backend_settings()[0],
             "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
    mark_done(folder, stats)
    return folder, qc


def cohort_average_from_folder(folder: Path, ids, medians: dict, template: Template) -> np.ndarray:
    """Average head of the training subjects ``ids`` on the template grid.

    Each subject's template-space original is divided by its median head
    intensity (``medians``), averaged, and rescaled to the template's median
    head intensity (as :func:`refacelib.deface.methods.cohort_average`).
    """
    if len(ids) == 0:
        raise ValueError("the cohort average needs at least one training subject")
    acc = np.zeros(template.shape, np.float64)
    for sid in ids:
        acc += load_defaced(folder, "original", sid, space="template")[0] / medians[sid]
    return (acc / len(ids) * float(np.median(template.data[template.head]))).astype(np.float32)


def load_registration(folder: Path, sid: str, template: Template, *, method: str | None = None) -> registration.Registration:
    """A subject's template registration, as stored by :func:`deface_cohort` (transform only).

    ``method`` given: the attacker's registration to that method's defaced image
    (test subjects only).
    """
    base = Path(folder) / "transforms" if method is None else Path(folder) / "attacker" / "transforms" / method
    transform = _ants().read_transform(str(base / f"{sid}.mat"))
    return registration.Registration(template=template, transform=transform)


def load_defaced(folder: Path, name: str, sid: str, *, space: str = "subject") -> tuple[np.ndarray, np.ndarray]:
    """One stored image (``original``, a method, ``<method>_removal``, ``average``...) as (array, affine).

    ``space="template"`` gives the version resampled onto the template grid by
    the subject's registration (every subject on one grid); ``space="attacker"``
    the defaced image or removal mask resampled by the attacker's registration
    to that defaced image (test subjects only).
    """
    bases = {"subject": Path(folder), "template": Path(folder) / "template_space", "attacker": Path(folder) / "attacker"}
    if space not in bases:
        raise ValueError(f"space must be one of {sorted(bases)}, got {space!r}")
    base = bases[space]
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


def qc_failures(qc: pd.DataFrame) -> set[str]:
    """Participants on whom at least one defacing method failed its check (left out of every later chapter).

    Examples
    --------
    >>> qc = pd.DataFrame({"participant_id": ["sub-1", "sub-1", "sub-2"], "method": ["a", "b", "a"],
    ...                    "passed": [True, False, True]})
    >>> qc_failures(qc)
    {'sub-1'}
    """
    return set(qc.loc[~qc["passed"].astype(bool), "participant_id"])


def stage_stats(folder: Path) -> dict:
    """Time and peak memory of a stage (defacing, face distances), as recorded when it ran."""
    return read_done(folder)


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
