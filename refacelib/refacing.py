"""Refacing a run's cohort with the cascade: data on the common grid, training, sampling.

Every subject's images from the defacing stage are on the template grid (its
affine registration). The cascade works on that grid resampled to
``cascade.voxel_mm`` (the *common grid*), with intensities divided by
``INTENSITY_SCALE`` times the median of the brain, which every defacing
method leaves in place. The prior is the training cohort's average head,
scaled the same way. Refaced images go back to each subject's own grid
through the inverse path and are composited inside that subject's removal
mask, so every voxel outside it is the defaced input bit for bit.
"""
from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from scipy import ndimage

from . import cascade as _cascade
from .config import Run, stable_hash
from .io import atomic_write_text, save_nifti, save_table
from .stages import load_defaced, load_registration
from .template import Template

__all__ = [
    "INTENSITY_SCALE",
    "cascade_config",
    "common_grid",
    "subject_scale",
    "build_examples",
    "train_cascade",
    "reface_test_set",
    "to_subject_space",
    "record_timings",
    "masked_errors",
    "RefacingSetup",
    "setup",
    "trained_cascade",
]

#: Intensities on the common grid are image / (INTENSITY_SCALE * median brain intensity).
INTENSITY_SCALE = 2.5


def common_grid(template: Template, voxel_mm: float) -> tuple[float, np.ndarray, tuple]:
    """Zoom factor from the template grid to the common grid, its affine and shape."""
    zoom = template.voxel_mm / float(voxel_mm)
    shape = tuple(int(round(n * zoom)) for n in template.shape)
    affine = template.affine.copy()
    affine[:3, :3] = affine[:3, :3] / zoom
    affine[:3, 3] += affine[:3, :3] @ np.full(3, (1.0 / zoom - 1.0) / 2.0) * zoom
    return zoom, affine, shape


def _zoom(array: np.ndarray, shape: tuple, *, order: int) -> np.ndarray:
    if array.shape == tuple(shape):
        return array
    factors = [n / m for n, m in zip(shape, array.shape)]
    out = ndimage.zoom(array.astype(np.float32), factors, order=order, grid_mode=True, mode="nearest")
    return out


def subject_scale(image_tpl: np.ndarray, brain_tpl: np.ndarray) -> float:
    """Median intensity of the brain (present in every defaced version).

    Examples
    --------
    >>> subject_scale(np.full((4, 4, 4), 3.0), np.ones((4, 4, 4), bool))
    3.0
    """
    inside = image_tpl[brain_tpl & (image_tpl > 0)]
    return float(np.median(inside)) if inside.size else 1.0


def cascade_config(run: Run, template: Template) -> _cascade.CascadeConfig:
    """The run's cascade configuration, with the face box computed on the common grid."""
    p = dict(run.params["cascade"])
    zoom, _, shape = common_grid(template, p["voxel_mm"])
    from .deface import face_region

    region = _zoom(face_region(template), shape, order=0) > 0.5
    stage2 = _cascade.StageConfig.from_dict(p["stage2"])
    box = _cascade.face_box(region, margin=int(p.get("box_margin", 2)), multiple=stage2.multiple)
    return _cascade.CascadeConfig(stage1=p["stage1"], stage2=p["stage2"], factor=p["factor"], box=box,
                                  per_method=bool(p.get("per_method", False)), seed=int(run.params["seed"]))


def build_examples(folder: Path, ids, methods, template: Template, voxel_mm: float) -> dict:
    """Arrays (N, X, Y, Z) on the common grid for every (subject, method) pair.

    Keys: original, defaced, mask, prior, and lists ``subject``, ``method``.
    None when there is no subject.
    """
    if len(ids) == 0:
        return None
    _, _, shape = common_grid(template, voxel_mm)
    brain = _zoom(template.brain, shape, order=0) > 0.5
    average = nib.load(str(Path(folder) / "cohort_average.nii.gz")).get_fdata(dtype=np.float32)
    average = _zoom(average, shape, order=1)
    prior = average / (INTENSITY_SCALE * subject_scale(average, brain))
    out = {k: [] for k in ("original", "defaced", "mask", "prior", "subject", "method")}
    for sid in ids:
        original = _zoom(load_defaced(folder, "original", sid, space="template")[0], shape, order=1)
        for method in methods:
            defaced = _zoom(load_defaced(folder, method, sid, space="template")[0], shape, order=1)
            mask = _zoom(load_defaced(folder, f"{method}_removal", sid, space="template")[0], shape, order=0) > 0.5
            scale = INTENSITY_SCALE * subject_scale(defaced, brain)
            out["original"].append(original / scale)
            out["defaced"].append(np.where(mask, 0.0, defaced / scale).astype(np.float32))
            out["mask"].append(mask)
            out["prior"].append(prior)
            out["subject"].append(sid)
            out["method"].append(method)
    arrays = {k: np.stack(out[k]).astype(bool if k == "mask" else np.float32) for k in ("original", "defaced", "mask", "prior")}
    return {**arrays, "subject": out["subject"], "method": out["method"]}


#: Cascade parameters that change the trained models (sampling settings do not).
TRAINING_KEYS = ("voxel_mm", "factor", "box_margin", "per_method", "stage1", "stage2", "max_seconds_per_stage")


def _checkpoint_folder(run: Run, config: _cascade.CascadeConfig, data_key: str) -> Path:
    training = {k: run.params["cascade"].get(k) for k in TRAINING_KEYS}
    return run.artifacts / f"cascade-{stable_hash([config.to_dict(), data_key, training])}"


def train_cascade(run: Run, train: dict, val: dict | None, config: _cascade.CascadeConfig, *, data_key: str,
                  progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """Train both stages (cached by config and data hash; resumes from checkpoints)."""
    from .train import train_stage

    folder = _checkpoint_folder(run, config, data_key)
    folder.mkdir(parents=True, exist_ok=True)
    histories, budget = [], run.params["cascade"].get("max_seconds_per_stage")
    for stage in (1, 2):
        ckpt = folder / f"stage{stage}.pt"
        hist_path = folder / f"stage{stage}_history.csv"
        if (folder / f"stage{stage}.done").exists():
            histories.append(pd.read_csv(hist_path))
            continue
        keys = ("original", "defaced", "mask", "prior")
        val_data = None if val is None else {k: val[k] for k in keys}
        _, history = train_stage(stage, {k: train[k] for k in keys}, config, val_data=val_data,
                                 checkpoint_path=ckpt, progress=progress, max_seconds=budget)
        history = history.assign(stage=stage)
        save_table(history, hist_path)
        atomic_write_text(folder / f"stage{stage}.done", json.dumps({"steps": int(history["step"].max())}))
        histories.append(history)
    return folder, pd.concat(histories, ignore_index=True)


def to_subject_space(common: np.ndarray, template: Template, deface_folder: Path, sid: str, image: np.ndarray,
                     affine: np.ndarray, scale: float) -> np.ndarray:
    """Bring a common-grid volume back to a subject's grid (template grid, then registration)."""
    tpl = (_zoom(common, template.shape, order=1) * scale).astype(np.float32)
    return load_registration(deface_folder, sid, template).to_subject(tpl, image.shape, affine, order=1)


def reface_test_set(run: Run, deface_folder: Path, ckpt_folder: Path, test_ids, methods, template: Template,
                    config: _cascade.CascadeConfig, *, progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """Reface every test subject under every method; write NIfTIs in subject space.

    Returns the output folder and a table of wall times per method.
    """
    from .sample import reface
    from .train import load_stage

    p = run.params["cascade"]
    out = run.artifacts / f"refaced-{stable_hash([ckpt_folder.name, p['sampler'], p['sample_steps'], p['n_samples'], list(test_ids)])}"
    if (out / "done.json").exists():
        return out, pd.read_csv(out / "timings.csv")
    models = tuple(load_stage(ckpt_folder / f"stage{s}.pt", device=p.get("device", "auto"))[0] for s in (1, 2))
    rows = []
    for method in methods:
        start = time.perf_counter()
        data = build_examples(deface_folder, test_ids, [method], template, p["voxel_mm"])
        result = reface(data["defaced"], data["mask"], data["prior"], models, config, sampler=p["sampler"],
                        steps=p["sample_steps"], n_samples=p["n_samples"], seed=int(run.params["seed"]),
                        batch_size=p.get("sample_batch", 8), device=p.get("device", "auto"), progress=progress)
        for i, sid in enumerate(test_ids):
            _write_subject(out, deface_folder, template, sid, method, {k: result[k][i] for k in ("sample", "mean")})
        rows.append({"step": f"reface {method}", "seconds": round(time.perf_counter() - start, 1), "n": len(test_ids)})
    timings = pd.DataFrame(rows)
    save_table(timings, out / "timings.csv")
    atomic_write_text(out / "done.json", json.dumps({"n": len(test_ids)}))
    return out, timings


def _write_subject(out: Path, deface_folder: Path, template: Template, sid: str, method: str, volumes: dict) -> None:
    """Composite each estimator inside the subject-space removal mask and save it."""
    defaced, affine = load_defaced(deface_folder, method, sid)
    removal = load_defaced(deface_folder, f"{method}_removal", sid)[0] > 0
    brain = template.brain
    defaced_tpl = load_defaced(deface_folder, method, sid, space="template")[0]
    scale = INTENSITY_SCALE * subject_scale(defaced_tpl, brain)
    for name, vol in volumes.items():
        subject = to_subject_space(vol, template, deface_folder, sid, defaced, affine, scale)
        final = np.where(removal, np.clip(subject, 0, None), defaced).astype(np.float32)
        save_nifti(nib.Nifti1Image(final, affine), out / f"{method}_{name}" / f"{sid}.nii.gz")


def record_timings(run: Run, rows: list[dict]) -> pd.DataFrame:
    """Merge rows {step, device, seconds} into ``tables/timings.csv`` (a step replaces its old row)."""
    path = run.tables / "timings.csv"
    new = pd.DataFrame(rows)[["step", "device", "seconds"]]
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "device", "seconds"])
    merged = pd.concat([old[~old["step"].isin(new["step"])], new], ignore_index=True)
    save_table(merged, path)
    return merged


def masked_errors(deface_folder: Path, refaced_folder: Path, test_ids, methods) -> pd.DataFrame:
    """Mean absolute intensity error on the removed face, relative to the brain median.

    Candidates: the single sample, the mean of samples and the cohort-average face,
    all evaluated on the voxels both removed by the method and replaced by the
    average face (elsewhere the average-face image is the original itself).
    """
    rows = []
    for sid in test_ids:
        original, _ = load_defaced(deface_folder, "original", sid)
        brain = load_defaced(deface_folder, "brain", sid)[0] > 0
        scale = float(np.median(original[brain])) if brain.any() else 1.0
        average = load_defaced(deface_folder, "average", sid)[0]
        replaced = load_defaced(deface_folder, "average_removal", sid)[0] > 0
        for method in methods:
            removal = (load_defaced(deface_folder, f"{method}_removal", sid)[0] > 0) & replaced
            cands = {"refaced": load_defaced(refaced_folder, f"{method}_sample", sid)[0],
                     "refaced_mean": load_defaced(refaced_folder, f"{method}_mean", sid)[0], "average": average}
            for name, img in cands.items():
                err = float(np.abs(img[removal] - original[removal]).mean() / scale)
                rows.append({"subject": sid, "method": method, "candidate": name, "mae_rel": err})
    return pd.DataFrame(rows)


@dataclass
class RefacingSetup:
    """What the refacing chapters share: the cohort, its defacing stage and the cascade config."""

    ds: object
    template: Template
    deface_folder: Path
    qc: pd.DataFrame
    config: _cascade.CascadeConfig
    methods: list
    ids: dict  # split -> participant ids that passed QC (train, val)
    test_subjects: dict  # participant id -> test set

    @property
    def data_key(self) -> str:
        return stable_hash([self.deface_folder.name, self.ids, self.methods])


def setup(run: Run) -> RefacingSetup:
    """Load the cohort and its (cached) defacing stage, and resolve the cascade configuration."""
    from .cohort import prepare_dataset
    from .stages import deface_cohort, study_template

    ds = prepare_dataset(run)
    template = study_template(run)
    folder, qc = deface_cohort(run, ds, template)
    failed = set(qc.loc[~qc["passed"].astype(bool), "participant_id"])
    ids = {split: [s.participant_id for s in ds.subset(split) if s.participant_id not in failed]
           for split in ("train", "val")}
    tests = {s.participant_id: s.row["split"] for s in ds.subjects
             if str(s.row.get("split", "")).startswith("test") and s.participant_id not in failed}
    return RefacingSetup(ds=ds, template=template, deface_folder=folder, qc=qc,
                         config=cascade_config(run, template), methods=list(run.params["deface"]["methods"]),
                         ids=ids, test_subjects=tests)


def trained_cascade(run: Run, study: RefacingSetup, *, progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """Checkpoints of both stages: trained now, or loaded from the cache without rebuilding the data."""
    folder = _checkpoint_folder(run, study.config, study.data_key)
    if all((folder / f"stage{s}.done").exists() for s in (1, 2)):
        return folder, pd.concat([pd.read_csv(folder / f"stage{s}_history.csv") for s in (1, 2)], ignore_index=True)
    voxel = run.params["cascade"]["voxel_mm"]
    train = build_examples(study.deface_folder, study.ids["train"], study.methods, study.template, voxel)
    val = build_examples(study.deface_folder, study.ids["val"], study.methods, study.template, voxel)
    return train_cascade(run, train, val, study.config, data_key=study.data_key, progress=progress)
