"""The research-potential analysis of a run (chapter 07) as a cached stage.

Facial features of every image type, then :func:`refacelib.evaluation.muscle.analyze_muscle`
(cross-validated predictions, refitted in every resample): about a minute on the quick
profile, and the same for every rebuild of the book after a library edit that does not
touch it. The stage's folder (``<run>/artifacts/muscle-<hash>``) is keyed by what the
analysis reads and the code that computes it, like the face distances
(:func:`refacelib.pipeline.evaluation.face_evaluation`): the defacing stage's folder (its
name is a hash of the dataset's images and the defacing), the participants' covariates
and muscle values, the image types, the profile's ``muscle`` settings and seed,
:data:`MUSCLE_VERSION` and a digest of :data:`MUSCLE_MODULES`. Its record is written last:
an interrupted analysis runs again.
"""
from __future__ import annotations

import resource
import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from refacelib._utils.hashing import stable_hash
from refacelib._utils.io import save_table
from refacelib.data.bids import MUSCLE_COLUMNS, BIDSDataset
from refacelib.deface import methods as deface
from refacelib.evaluation import muscle
from refacelib.pipeline.cache import is_done, mark_done, read_done, source_digest, stage_folder
from refacelib.pipeline.config import Run
from refacelib.pipeline.stages import deface_cohort, face_features, qc_failures, study_template

__all__ = ["MUSCLE_VERSION", "MUSCLE_MODULES", "MUSCLE_SETTINGS", "MuscleResult", "muscle_folder",
           "cached_record", "muscle_evaluation"]

#: Version of what the stage writes; part of its key: raise it when that changes.
MUSCLE_VERSION = 1

#: The modules whose code computes the stage's tables (their bytes are in its key).
MUSCLE_MODULES = ("evaluation/muscle.py", "pipeline/muscle_stage.py", "pipeline/stages.py", "deface/methods.py",
                  "data/template.py", "imaging/registration.py")

#: The profile's ``muscle`` settings that change the tables (``demo_n_boots`` only changes a chapter's demo).
MUSCLE_SETTINGS = ("n_boot", "n_splits", "n_components", "stride")

#: Columns of the participants table the analysis reads.
_INPUT_COLUMNS = ("participant_id", "age", "sex", *MUSCLE_COLUMNS)


@dataclass(frozen=True)
class MuscleResult:
    """What chapter 07 shows: the analysed participants, the size of the features, and the three tables.

    ``seconds``: how long the analysis took when the stage was computed. ``corr``, ``diff`` and ``boot`` are those of :func:`refacelib.evaluation.muscle.analyze_muscle`
    (``diff_significant`` is None where a comparison is undefined).
    """

    table: pd.DataFrame
    n_features: int
    n_excluded: int
    seconds: float
    corr: pd.DataFrame
    diff: pd.DataFrame
    boot: pd.DataFrame


def code_digest(root: Path | None = None) -> str:
    """A digest of the bytes of :data:`MUSCLE_MODULES` (``root``: a copy of the package; default this one, read once).

    Examples
    --------
    >>> len(code_digest())
    12
    """
    return source_digest(MUSCLE_MODULES, root)


def muscle_folder(run: Run, deface_folder: Path, table: pd.DataFrame, images) -> Path:
    """The stage's folder for these inputs (see the module's docstring for the key)."""
    columns = [c for c in _INPUT_COLUMNS if c in table.columns]
    settings = {k: run.params["muscle"][k] for k in MUSCLE_SETTINGS}
    key = {"version": MUSCLE_VERSION, "code": code_digest(), "deface": Path(deface_folder).name,
           "participants": stable_hash(table[columns].to_csv(index=False)), "images": list(images),
           "settings": settings, "seed": int(run.params["seed"])}
    return stage_folder(run, "muscle", key)


def _read(path: Path, **kw) -> pd.DataFrame:
    return pd.read_csv(path, float_precision="round_trip", **kw)


def _inputs(run: Run, ds: BIDSDataset):
    """The template, the defacing stage's folder, the analysed participants, the failures and the image types."""
    template = study_template(run)
    deface_folder, qc = deface_cohort(run, ds, template)
    failed = qc_failures(qc)
    table = ds.participants[~ds.participants["participant_id"].isin(failed)].reset_index(drop=True)
    return template, deface_folder, table, failed, ["original", *run.params["deface"]["methods"]]


def cached_record(run: Run, ds: BIDSDataset) -> dict | None:
    """The record of the run's complete muscle stage (seconds, peak memory, sizes), None when it has not run.

    Computes nothing (the defacing stage it reads is cached by then).
    """
    if not ds.has_muscle:
        return None
    _, deface_folder, table, _, images = _inputs(run, ds)
    folder = muscle_folder(run, deface_folder, table, images)
    return read_done(folder) if is_done(folder) else None


def muscle_evaluation(run: Run, ds: BIDSDataset) -> MuscleResult:
    """Chapter 07's analysis of ``ds`` (which must have muscle columns), computed once and kept in the run's cache.

    Participants on whom a defacing method failed its check are left out (all image types
    are compared on the same people). The features are the facial voxels of each image on
    the template grid (:func:`refacelib.pipeline.stages.face_features`, every
    ``muscle.stride``-th voxel of pydeface's face region); the tables read back equal a
    fresh computation bit for bit.
    """
    if not ds.has_muscle:
        raise ValueError("the dataset has no muscle columns (muscle_hu_abdomen, muscle_hu_thigh, muscle_hu_shin)")
    settings = run.params["muscle"]
    template, deface_folder, table, failed, images = _inputs(run, ds)
    folder = muscle_folder(run, deface_folder, table, images)
    if not is_done(folder):
        start = time.perf_counter()
        region = deface.face_region(template)
        features = {name: face_features(deface_folder, table["participant_id"], name, region=region,
                                        brain=template.brain, stride=settings["stride"]) for name in images}
        corr, diff, boot = muscle.analyze_muscle(table, features, n_boot=settings["n_boot"],
                                                 seed=int(run.params["seed"]), n_splits=settings["n_splits"],
                                                 n_components=settings["n_components"])
        folder.mkdir(parents=True, exist_ok=True)
        for name, frame in (("corr", corr), ("diff", diff), ("boot", boot)):
            save_table(frame, folder / f"{name}.csv")
        mark_done(folder, {"seconds": round(time.perf_counter() - start, 1), "n_subjects": len(table),
                           "n_features": int(features["original"].shape[1]), "n_excluded": len(failed),
                           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    record = read_done(folder)
    diff = _read(folder / "diff.csv")
    # undefined comparisons were None: an empty cell, read as NaN; None again (NaN would read as True)
    diff["diff_significant"] = diff["diff_significant"].astype(object).where(diff["diff_significant"].notna(), None)
    return MuscleResult(table=table, n_features=int(record["n_features"]), n_excluded=int(record["n_excluded"]),
                        seconds=float(record["seconds"]), corr=_read(folder / "corr.csv"), diff=diff, boot=_read(folder / "boot.csv"))
