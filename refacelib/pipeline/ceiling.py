"""What the cascade's grid can hold: each test subject's own face through the refacing path.

The cascade generates a residual over its prior on a coarse common grid
(``cascade.voxel_mm``) and the refaced image is the full-resolution matched
average head plus that residual, upsampled (:func:`refacelib.diffusion.grid.full_resolution`).
Detail finer than the grid cannot come back, however good the model. The **grid
ceiling** measures that loss: the subject's *original* image, brought onto the grid
by the attacker's registration to the defaced image, is put through the very path of
every refaced candidate (the same intensity unit, prior, mask, upsampling,
registration back and composite), as if a perfect model had generated it, and its
face is measured like every candidate's (:func:`refacelib.pipeline.evaluation.face_msd`).

It is an evaluator's bound, not a candidate: it reads the original. Compared with
the oracle face (what the rest of the head predicts, at full resolution), it says
whether the grid or the prediction limits the model. Works on real data too (it
needs only the originals the evaluator has).
"""
from __future__ import annotations

import time
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from refacelib._utils.io import save_table
from refacelib._utils.parallel import worker_pool
from refacelib.data.template import Template
from refacelib.diffusion.grid import common_grid, full_resolution, zoom_to_shape
from refacelib.pipeline.cache import is_done, mark_done, stage_folder
from refacelib.pipeline.evaluation import face_msd, metric_source_digest, original_face
from refacelib.pipeline.refacing import build_examples, carrying_registration, subject_composites
from refacelib.pipeline.stages import load_defaced

__all__ = ["GRID_CEILING_VERSION", "grid_truth", "subject_ceiling", "grid_ceiling", "ceiling_summary"]

#: Version of what :func:`grid_ceiling` writes (part of its cache key).
GRID_CEILING_VERSION = 1


def grid_truth(deface_folder: Path, template: Template, sid: str, method: str, voxel_mm: float) -> np.ndarray:
    """The subject's original through the refacing path, on the subject's grid (a perfect model's output).

    The original goes to the template by the registration that carries the cascade's input
    (:func:`refacelib.pipeline.refacing.carrying_registration`), onto the common grid at
    ``voxel_mm`` and into the example's intensity unit; it then replaces the cascade's output in
    :func:`refacelib.diffusion.grid.full_resolution` and
    :func:`refacelib.pipeline.refacing.subject_composites`, exactly as a refaced sample does.
    """
    data = build_examples(deface_folder, [sid], [method], template, voxel_mm, attacker=True)
    original, affine = load_defaced(deface_folder, "original", sid)
    registration = carrying_registration(deface_folder, template, sid, method)
    _, _, shape = common_grid(template, voxel_mm)
    scale = float(data["scale"][0])
    truth = zoom_to_shape(registration.to_template(original, affine, order=1), shape, order=1) / np.float32(scale)
    average = nib.load(str(Path(deface_folder) / "cohort_average.nii.gz")).get_fdata(dtype=np.float32)
    common = full_resolution(truth.astype(np.float32), data["prior"][0], average, template,
                             average_norm=data["average_norm"], match=data["match"][0], mask=data["mask"][0])
    return subject_composites(deface_folder, template, sid, method, {"grid_truth": common}, scale=scale)[0]["grid_truth"]


def subject_ceiling(deface_folder: Path, template: Template, sid: str, test_set: str, methods,
                    voxel_mm: float) -> list[dict]:
    """One subject's rows of :func:`grid_ceiling` (one worker's share)."""
    _, face = original_face(deface_folder, template, sid)
    return [{"subject": sid, "test_set": test_set, "method": method,
             "msd_mm": face_msd(grid_truth(deface_folder, template, sid, method, voxel_mm), face)}
            for method in methods]


def grid_ceiling(run, deface_folder: Path, template: Template, subjects: dict[str, str], methods, *,
                 voxel_mm: float, n_jobs: int | None = None) -> pd.DataFrame:
    """Face MSD (mm) of :func:`grid_truth` for every subject and method: one row each.

    Subjects run in worker processes (``n_jobs``, :func:`refacelib._utils.parallel.worker_pool`).
    Cached as a stage of the run (``artifacts/gridceiling-<hash>/ceiling.csv``), keyed by the
    defacing stage's folder, the subjects, methods, grid, :data:`GRID_CEILING_VERSION` and the
    digest of the measuring code (:func:`refacelib.pipeline.evaluation.metric_source_digest`).
    """
    from joblib import delayed

    key = {"version": GRID_CEILING_VERSION, "code": metric_source_digest(), "deface": Path(deface_folder).name,
           "subjects": dict(subjects), "methods": list(methods), "voxel_mm": float(voxel_mm)}
    folder = stage_folder(run, "gridceiling", key)
    if not is_done(folder):
        start = time.perf_counter()
        with worker_pool(n_jobs) as workers:
            parts = workers(delayed(subject_ceiling)(deface_folder, template, sid, test_set, list(methods), voxel_mm)
                            for sid, test_set in subjects.items())
        table = pd.DataFrame([row for part in parts for row in part],
                             columns=["subject", "test_set", "method", "msd_mm"])
        save_table(table, folder / "ceiling.csv")
        mark_done(folder, {"seconds": round(time.perf_counter() - start, 1), "n_subjects": len(subjects)})
    return pd.read_csv(folder / "ceiling.csv", float_precision="round_trip", dtype={"subject": str, "test_set": str})


def ceiling_summary(ceiling: pd.DataFrame, msd: pd.DataFrame,
                    candidates=("average", "refaced_mean", "oracle")) -> pd.DataFrame:
    """Median face MSD per method and test set: the grid ceiling beside the ``candidates`` of the face table.

    Examples
    --------
    >>> ceiling = pd.DataFrame({"subject": ["a", "b"], "test_set": "t", "method": "m", "msd_mm": [0.3, 0.5]})
    >>> msd = pd.DataFrame({"subject": ["a", "b", "a", "b"], "test_set": "t", "method": "m",
    ...                     "candidate": ["oracle", "oracle", "average", "average"], "msd_mm": [0.6, 0.8, 2.0, 3.0]})
    >>> ceiling_summary(ceiling, msd).to_dict("records")
    [{'method': 'm', 'test_set': 't', 'grid_ceiling': 0.4, 'oracle': 0.7, 'average': 2.5}]
    """
    wide = (msd[msd["candidate"].isin(list(candidates))]
            .pivot_table(index=["method", "test_set"], columns="candidate", values="msd_mm", aggfunc="median"))
    ceil = ceiling.groupby(["method", "test_set"])["msd_mm"].median().rename("grid_ceiling")
    out = pd.concat([ceil, wide], axis=1).reset_index()
    order = ["method", "test_set", "grid_ceiling"] + [c for c in ("oracle", "refaced_mean", "average") if c in out]
    return out[order + [c for c in out.columns if c not in order]]
