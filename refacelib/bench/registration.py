"""Cheaper template registration against the book's setting, measured on the phantom.

The defacing stage registers pydeface's template to every subject (the data
owner's side) and, for a test subject, again to each defaced image with its
removal mask left out (the attacker's side, most of the cost):
:func:`refacelib.imaging.registration.register_template` with ANTsPy's affine at 4 mm,
iterations 200x100x50x10. On the phantom the true map from the template to a
subject is known (:func:`refacelib.data.phantom.pose_affine`), so each setting's
error is measured, not guessed.

* :data:`SETTINGS`: named settings, the book's first, then cheaper ones (coarser
  resampling, fewer iterations or levels, a rigid start).
* :func:`registration_benchmark`: per subject, setting and side, wall and CPU
  seconds and the RMS and maximum distance (mm) between the estimated and the
  true positions of the template's head voxels (:func:`position_error`).
* :func:`registration_summary`: median cost and error per setting, the error
  change against the book's setting, and the cheapest setting within a tolerance.
* ``python -m refacelib.bench registration`` (:func:`main`) writes
  ``bench/results/registration-<profile>.csv`` and a small ``.json`` of the machine
  and its load, shown by the Performance appendix.

Examples
--------
>>> [s.name for s in SETTINGS][:3]
['current', '6 mm', '8 mm']
>>> SETTINGS[0].options()["iterations"]
(200, 100, 50, 10)
"""
from __future__ import annotations

import argparse
import datetime
import importlib.metadata
import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
from nibabel.processing import resample_from_to

from refacelib._utils.io import atomic_write_text, save_nifti, save_table
from refacelib._utils.machine import cpu_model
from refacelib.data.bids import load_subject_array
from refacelib.data.phantom import (PhantomParams, build_basis, generate_subject, pose_affine, stored_image,
                                    template_positions)
from refacelib.data.template import Template, load_template
from refacelib.deface.methods import deface_subject
from refacelib.imaging.registration import (AFFINE_ITERATIONS, AFFINE_SHRINK_FACTORS, AFFINE_SMOOTHING_SIGMAS,
                                            DICE_SUCCESS, register_template)
from refacelib.pipeline.config import load_profile, project_root, runs_root
from refacelib.pipeline.stages import attacker_registration

__all__ = [
    "RegistrationSetting",
    "SETTINGS",
    "REFERENCE",
    "TOLERANCE_MM",
    "benchmark_indices",
    "phantom_subject",
    "head_points",
    "registration_matrix",
    "position_error",
    "deformation_floor",
    "registration_benchmark",
    "registration_summary",
    "registration_verdict",
    "verdict_text",
    "machine_load",
    "results_paths",
    "load_registration_results",
]

#: Largest rise of the median error (mm) over the book's setting that a cheaper setting may cost.
TOLERANCE_MM = 0.2
SIDES = ("owner", "attacker")


@dataclass(frozen=True)
class RegistrationSetting:
    """One way of running :func:`~refacelib.imaging.registration.register_template`; the defaults are the book's."""

    name: str
    voxel_mm: float = 4.0
    iterations: tuple = AFFINE_ITERATIONS
    shrink_factors: tuple = AFFINE_SHRINK_FACTORS
    smoothing_sigmas: tuple = AFFINE_SMOOTHING_SIGMAS
    initial: str = "none"

    def options(self) -> dict:
        """Keywords of :func:`~refacelib.imaging.registration.register_template`."""
        return {"voxel_mm": self.voxel_mm, "iterations": tuple(self.iterations),
                "shrink_factors": tuple(self.shrink_factors), "smoothing_sigmas": tuple(self.smoothing_sigmas),
                "initial": self.initial}

    def describe(self) -> dict:
        """Columns of a results row: resolution, schedule and start, as text.

        Examples
        --------
        >>> RegistrationSetting("x", iterations=(50, 25), shrink_factors=(4, 2), smoothing_sigmas=(2, 1)).describe()
        {'voxel_mm': 4.0, 'iterations': '50x25', 'shrink_factors': '4x2', 'smoothing_sigmas': '2x1', 'initial': 'none'}
        """
        return {"voxel_mm": float(self.voxel_mm), "iterations": "x".join(map(str, self.iterations)),
                "shrink_factors": "x".join(map(str, self.shrink_factors)),
                "smoothing_sigmas": "x".join(map(str, self.smoothing_sigmas)), "initial": self.initial}


#: The book's setting first (:data:`REFERENCE`), then cheaper ones. "halved": every level's
#: iterations halved; "3 levels": the full-resolution level dropped (its iterations cost the
#: most); "2 levels": the coarsest and the full-resolution levels dropped; "rigid start": a
#: rigid stage, then the affine, both with the schedule named.
SETTINGS = (
    RegistrationSetting("current"),
    RegistrationSetting("6 mm", voxel_mm=6.0),
    RegistrationSetting("8 mm", voxel_mm=8.0),
    RegistrationSetting("halved", iterations=(100, 50, 25, 5)),
    RegistrationSetting("3 levels", iterations=(100, 50, 25), shrink_factors=(6, 4, 2), smoothing_sigmas=(3, 2, 1)),
    RegistrationSetting("2 levels", iterations=(50, 25), shrink_factors=(4, 2), smoothing_sigmas=(2, 1)),
    RegistrationSetting("rigid start, halved", iterations=(100, 50, 25, 5), initial="rigid"),
    RegistrationSetting("rigid start, 3 levels", iterations=(100, 50, 25), shrink_factors=(6, 4, 2),
                        smoothing_sigmas=(3, 2, 1), initial="rigid"),
)
REFERENCE = SETTINGS[0].name


# --------------------------------------------------------------------------- subjects and truth
def benchmark_indices(params: PhantomParams, n: int) -> list[int]:
    """The first ``n`` test subjects of a phantom cohort, internal and external alternating.

    Both sites enter: the external one is stored with thicker slices in LPS.

    Examples
    --------
    >>> benchmark_indices(PhantomParams(n_train=2, n_val=1, n_test_internal=2, n_test_external=3), 4)
    [3, 5, 4, 6]
    """
    first = params.n_train + params.n_val
    internal = list(range(first, first + params.n_test_internal))
    external = list(range(first + params.n_test_internal, params.n_subjects))
    pairs = [i for pair in zip(internal, external) for i in pair]
    rest = internal[len(external):] + external[len(internal):]
    return (pairs + rest)[: int(n)]


def phantom_subject(index: int, basis, params: PhantomParams, *, voxel_mm: float) -> dict:
    """Phantom subject ``index`` as the defacing stage reads it; nothing else is generated.

    The image is stored as its site stores it (:func:`refacelib.data.phantom.stored_image`;
    site B: thick slices, LPS) and loaded by :func:`refacelib.data.bids.load_subject_array`
    at ``voxel_mm``; the ground-truth brain mask is resampled to that grid (nearest), as
    :func:`refacelib.pipeline.stages.subject_brain_mask` does. Returns ``participant_id,
    site, image, affine, brain, latents``.
    """
    s = generate_subject(index, basis, params)
    with tempfile.TemporaryDirectory() as tmp:
        path = save_nifti(stored_image(s, s["image"], params), Path(tmp) / "t1w.nii.gz")
        image, affine = load_subject_array(path, voxel_mm)
    truth = nib.Nifti1Image(s["brain"].astype(np.uint8), s["affine"])
    brain = np.asarray(resample_from_to(truth, nib.Nifti1Image(np.zeros(image.shape, np.uint8), affine),
                                        order=0).dataobj) > 0
    return {"participant_id": s["participant_id"], "site": s["site"], "image": image, "affine": affine,
            "brain": brain, "latents": s["latents"]}


def head_points(template: Template) -> np.ndarray:
    """World coordinates (N, 3, RAS mm) of the template's head voxels: where errors are measured."""
    vox = np.argwhere(template.head).astype(float)
    return vox @ template.affine[:3, :3].T + template.affine[:3, 3]


def registration_matrix(transform) -> np.ndarray:
    """The affine of an ANTs registration as a 4x4 map from template to subject world (RAS mm).

    ``transform`` maps subject points to template points in ANTs' LPS space,
    ``p -> M (p - c) + c + t`` (``parameters``: ``M`` row by row, then ``t``;
    ``fixed_parameters``: ``c``); this is its inverse, in RAS.

    Examples
    --------
    >>> from types import SimpleNamespace
    >>> shift = SimpleNamespace(parameters=[1, 0, 0, 0, 1, 0, 0, 0, 1, 1.0, 2.0, 3.0], fixed_parameters=[5, 5, 5])
    >>> registration_matrix(shift)[:3, 3].tolist()  # LPS +t is RAS (-1, -2, +3); template -> subject undoes it
    [1.0, 2.0, -3.0]
    """
    kind = getattr(transform, "transform_type", "AffineTransform")
    if kind != "AffineTransform":
        raise ValueError(f"expected an ANTs AffineTransform, got {kind}")
    p = np.asarray(transform.parameters, float)
    centre = np.asarray(transform.fixed_parameters, float)
    lps = np.eye(4)
    lps[:3, :3] = p[:9].reshape(3, 3)
    lps[:3, 3] = centre + p[9:12] - lps[:3, :3] @ centre
    flip = np.diag([-1.0, -1.0, 1.0, 1.0])
    return np.linalg.inv(flip @ lps @ flip)


def position_error(estimated: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """RMS and maximum distance (mm) between two sets of positions (N, 3), point by point.

    Examples
    --------
    >>> position_error(np.zeros((4, 3)), np.array([[3.0, 0, 0], [0, 4.0, 0], [0, 0, 0], [0, 0, 0]]))
    (2.5, 4.0)
    """
    dist = np.linalg.norm(np.asarray(estimated, float) - np.asarray(truth, float), axis=1)
    return float(np.sqrt(np.mean(dist**2))), float(dist.max())


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return np.asarray(points, float) @ matrix[:3, :3].T + matrix[:3, 3]


def deformation_floor(points: np.ndarray, positions: np.ndarray, truth: np.ndarray) -> dict:
    """What the phantom's own deformation does to an affine registration's error (mm, RMS over ``points``).

    ``positions``: where the subject shows the template ``points``, deformation
    included (:func:`refacelib.data.phantom.template_positions`; NaN rows, where the
    warp folds, are left out); ``truth``: its pose
    (:func:`refacelib.data.phantom.pose_affine`). ``floor_mm``: the RMS distance of
    ``positions`` from their least-squares affine fit, the smallest error against
    the true positions that any affine can reach (an affine's squared RMS error is
    ``floor_mm**2`` plus its squared RMS distance from the fit).
    ``deform_affine_mm``: the fit against the pose: the part of the deformation an
    affine can absorb, so an error against the pose of this size is no failure.
    ``resolved``: the fraction of points with a position (not NaN).

    Examples
    --------
    >>> pts = np.random.default_rng(0).normal(size=(50, 3))
    >>> deformation_floor(pts, pts + [1.0, 0.0, 0.0], np.eye(4))
    {'floor_mm': 0.0, 'deform_affine_mm': 1.0, 'resolved': 1.0}
    """
    keep = np.isfinite(positions).all(axis=1)
    design, positions = np.c_[np.asarray(points, float), np.ones(len(points))][keep], positions[keep]
    coef, *_ = np.linalg.lstsq(design, positions, rcond=None)
    fit = design @ coef
    return {"floor_mm": round(position_error(fit, positions)[0], 4),
            "deform_affine_mm": round(position_error(fit, design @ truth[:3].T)[0], 4),
            "resolved": round(float(keep.mean()), 5)}


def machine_load() -> dict:
    """The load of this (possibly shared) machine: ``load_1min, load_5min, load_15min, cpus``."""
    load = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"load_1min": round(load[0], 2), "load_5min": round(load[1], 2), "load_15min": round(load[2], 2),
            "cpus": int(cpus)}


# --------------------------------------------------------------------------- measurement
def _timed(fn):
    start, cpu = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - start, time.process_time() - cpu


def registration_benchmark(subjects, template: Template, settings=SETTINGS, *, basis, params: PhantomParams,
                           seed: int = 0, method: str = "pydeface", progress: bool = False) -> pd.DataFrame:
    """Cost and error of each setting's registrations, owner's and attacker's, per subject.

    Per subject, the book's own steps make the defaced image: the template
    registered at the book's setting, then ``method`` (:func:`~refacelib.deface.methods.deface_subject`).
    Each setting then registers the template to the original (``owner``) and to
    the defaced image with its removal mask left out (``attacker``,
    :func:`~refacelib.pipeline.stages.attacker_registration`). The settings run in
    a rotated order from subject to subject, so a drift of the machine's load
    spreads over all of them.

    The error is measured at the template's head voxels (:func:`head_points`):
    the distance between where the estimated affine puts them in the subject and
    where the subject truly shows them, pose and deformation
    (:func:`~refacelib.data.phantom.template_positions`; ``rms_mm``, ``max_mm``:
    never below ``floor_mm``, :func:`deformation_floor`; over the ``resolved``
    fraction of the voxels, those where the warp does not fold), and where the pose alone
    puts them (:func:`~refacelib.data.phantom.pose_affine`; ``pose_rms_mm``,
    ``pose_max_mm``).

    Parameters
    ----------
    subjects : list of dict
        :func:`phantom_subject` of the cohort of ``basis`` and ``params``.
    template : Template
        The template registered (the run's working grid).
    settings : sequence of RegistrationSetting
    seed : int
        ANTs' seed, as the pipeline passes it (the profile's ``seed``).

    Returns
    -------
    DataFrame
        ``subject, site, setting, side, voxel_mm, iterations, shrink_factors,
        smoothing_sigmas, initial, seconds, cpu_seconds, rms_mm, max_mm,
        pose_rms_mm, pose_max_mm, dice, floor_mm, deform_affine_mm, resolved, load_1min``.
    """
    from tqdm.auto import tqdm

    points, rows = head_points(template), []
    for k, s in enumerate(tqdm(subjects, desc="registration settings", disable=not progress)):
        truth = pose_affine(s["latents"], basis.template)
        positions = template_positions(points, basis, params, s["latents"])
        pose, floor = _apply(truth, points), deformation_floor(points, positions, truth)
        resolved = np.isfinite(positions).all(axis=1)
        book = register_template(s["image"], s["affine"], template, seed=seed)
        defaced = deface_subject(s["image"], s["affine"], brain_mask=s["brain"], template=template,
                                 methods=(method,), registration=book)[0][method]
        calls = {"owner": lambda o: register_template(s["image"], s["affine"], template, seed=seed, **o),
                 "attacker": lambda o: attacker_registration(defaced.image, defaced.removal, s["affine"], template,
                                                             method=method, seed=seed, **o)}
        order = list(settings)[k % len(settings):] + list(settings)[: k % len(settings)]
        for setting in order:
            for side in SIDES:
                reg, seconds, cpu = _timed(lambda: calls[side](setting.options()))
                estimate = _apply(registration_matrix(reg.transform), points)
                rms, worst = position_error(estimate[resolved], positions[resolved])
                pose_rms, pose_worst = position_error(estimate, pose)
                rows.append({"subject": s["participant_id"], "site": s["site"], "setting": setting.name,
                             "side": side, **setting.describe(), "seconds": round(seconds, 4),
                             "cpu_seconds": round(cpu, 4), "rms_mm": round(rms, 4), "max_mm": round(worst, 4),
                             "pose_rms_mm": round(pose_rms, 4), "pose_max_mm": round(pose_worst, 4),
                             "dice": round(float(reg.metric), 4), **floor, "load_1min": machine_load()["load_1min"]})
    rank = {**{s.name: i for i, s in enumerate(settings)}, **{side: i for i, side in enumerate(SIDES)}}
    return (pd.DataFrame(rows).sort_values(["subject", "setting", "side"], kind="stable",
                                           key=lambda c: c if c.name == "subject" else c.map(rank))
            .reset_index(drop=True))


# --------------------------------------------------------------------------- summary
def registration_summary(table: pd.DataFrame, *, reference: str = REFERENCE, tolerance_mm: float = TOLERANCE_MM,
                         error: str = "rms_mm", cost: str = "cpu_seconds") -> pd.DataFrame:
    """Median cost and error per setting and side, and the cheapest setting within tolerance.

    ``change_mm``: the setting's median ``error`` minus the reference's, same side.
    ``failed``: registrations the pipeline calls failed (``dice`` at most
    :data:`~refacelib.imaging.registration.DICE_SUCCESS`; 0 without a ``dice`` column).
    A setting ``qualifies`` when that change is at most ``tolerance_mm`` on every
    side and it fails no more often than the reference; its cost ``cost_s`` is the
    sum over sides of the median ``cost`` (CPU seconds by default: steadier than
    wall time on a shared machine), ``speedup`` the reference's cost over it.
    ``chosen`` marks the cheapest qualifying setting. The setting's resolution,
    schedule and start, the medians of ``pose_rms_mm`` and ``floor_mm`` and the
    lowest ``dice`` come along when the table has them.

    Examples
    --------
    >>> t = pd.DataFrame({"setting": ["current"] * 4 + ["cheap"] * 4 + ["cheaper"] * 4,
    ...                   "side": ["owner", "owner", "attacker", "attacker"] * 3,
    ...                   "seconds": [2.0] * 4 + [1.0] * 4 + [0.5] * 4, "cpu_seconds": [2.0] * 4 + [1.0] * 4 + [0.5] * 4,
    ...                   "rms_mm": [1.0, 1.2, 1.4, 1.6, 1.1, 1.3, 1.5, 1.7, 2.0, 2.0, 2.0, 2.0],
    ...                   "max_mm": [2.0] * 12})
    >>> s = registration_summary(t)
    >>> s[s["side"] == "owner"][["setting", "change_mm", "speedup", "qualifies", "chosen"]].values.tolist()
    [['current', 0.0, 1.0, True, False], ['cheap', 0.1, 2.0, True, True], ['cheaper', 0.9, 4.0, False, False]]
    """
    agg = {name: (name, "first") for name in ("voxel_mm", "iterations", "shrink_factors", "initial") if name in table}
    agg.update(n=(error, "size"), seconds=("seconds", "median"), cpu_seconds=("cpu_seconds", "median"),
               rms_mm=("rms_mm", "median"), rms_q1=("rms_mm", lambda v: v.quantile(0.25)),
               rms_q3=("rms_mm", lambda v: v.quantile(0.75)), max_mm=("max_mm", "max"))
    agg.update({name: (name, how) for name, how in (("pose_rms_mm", "median"), ("floor_mm", "median"),
                                                    ("dice", "min")) if name in table})
    if error not in agg:
        agg[error] = (error, "median")
    table = table.assign(failed=table["dice"] <= DICE_SUCCESS if "dice" in table else False)
    agg["failed"] = ("failed", "sum")
    out = table.groupby(["setting", "side"], sort=False).agg(**agg).reset_index()
    ref = out[out["setting"] == reference].set_index("side")[error]
    out["change_mm"] = (out[error] - out["side"].map(ref)).round(4)
    out["within_tolerance"] = out["change_mm"] <= tolerance_mm + 1e-9
    per = out.groupby("setting", sort=False).agg(cost_s=(cost, "sum"), all_within=("within_tolerance", "all"),
                                                 failed_total=("failed", "sum"))
    per["qualifies"] = per["all_within"] & (per["failed_total"] <= per.loc[reference, "failed_total"])
    per = per.drop(columns=["all_within", "failed_total"])
    per["speedup"] = (per.loc[reference, "cost_s"] / per["cost_s"]).round(2)
    per["chosen"] = per.index == per[per["qualifies"]]["cost_s"].idxmin()
    return out.join(per, on="setting")


def registration_verdict(summary: pd.DataFrame, *, reference: str = REFERENCE, error: str = "rms_mm") -> dict:
    """The chosen setting of :func:`registration_summary`, its speed-up and error change per side,
    and the most accurate setting (lowest mean over sides of the median ``error``).

    Examples
    --------
    >>> s = pd.DataFrame({"setting": ["current", "current", "fast", "fast"], "side": ["owner", "attacker"] * 2,
    ...                   "rms_mm": [1.0, 1.2, 1.1, 1.2], "change_mm": [0.0, 0.0, 0.1, 0.0],
    ...                   "speedup": [1.0, 1.0, 2.5, 2.5], "chosen": [False, False, True, True]})
    >>> v = registration_verdict(s)
    >>> v["chosen"], v["speedup"], v["change_owner_mm"], v["most_accurate"], v["reference_most_accurate"]
    ('fast', 2.5, 0.1, 'current', True)
    """
    chosen = summary[summary["chosen"]]
    by_side = chosen.set_index("side")
    accuracy = summary.groupby("setting", sort=False)[error].mean()
    out = {"chosen": str(chosen["setting"].iloc[0]), "speedup": float(chosen["speedup"].iloc[0]),
           "most_accurate": str(accuracy.idxmin()),
           "reference_most_accurate": bool(accuracy[reference] <= accuracy.min() + 1e-9)}
    out.update({f"change_{side}_mm": float(by_side.loc[side, "change_mm"]) for side in by_side.index})
    return out


def verdict_text(verdict: dict, *, reference: str = REFERENCE) -> str:
    """The verdict of :func:`registration_verdict` as a phrase for the book.

    Examples
    --------
    >>> verdict_text({"chosen": "8 mm", "speedup": 2.5, "change_owner_mm": 0.05, "change_attacker_mm": -0.1})
    "`8 mm`, 2.50x the current setting's speed, median error +0.05 mm (owner) and -0.10 mm (attacker)"
    >>> verdict_text({"chosen": "current", "speedup": 1.0})
    'none: no cheaper setting stays within the tolerance on both sides, so the current one is the cheapest that does'
    """
    if verdict["chosen"] == reference:
        return "none: no cheaper setting stays within the tolerance on both sides, so the current one is the cheapest that does"
    return (f"`{verdict['chosen']}`, {verdict['speedup']:.2f}x the current setting's speed, median error "
            f"{round(verdict['change_owner_mm'], 2) + 0.0:+.2f} mm (owner) and "
            f"{round(verdict['change_attacker_mm'], 2) + 0.0:+.2f} mm (attacker)")


# --------------------------------------------------------------------------- files and command line
def results_paths(folder: Path, profile: str) -> tuple[Path, Path]:
    """``registration-<profile>.csv`` and ``.json`` in ``folder`` (the repository's ``bench/results``)."""
    return Path(folder) / f"registration-{profile}.csv", Path(folder) / f"registration-{profile}.json"


def load_registration_results(folder: Path, profile: str) -> tuple[pd.DataFrame, dict] | None:
    """The stored table and its metadata, or None when ``python -m refacelib.bench registration`` has not run."""
    csv, meta = results_paths(folder, profile)
    if not csv.is_file():
        return None
    return pd.read_csv(csv), (json.loads(meta.read_text()) if meta.is_file() else {})


def main(argv=None) -> int:
    """``python -m refacelib.bench registration --profile quick --subjects 8``."""
    parser = argparse.ArgumentParser(prog="python -m refacelib.bench registration",
                                     description="ANTs registration settings against the phantom's true pose")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--subjects", type=int, default=8, help="test subjects, internal and external alternating")
    parser.add_argument("--method", default="pydeface", help="defacing method of the attacker's image")
    parser.add_argument("--settings", nargs="+", default=None, help=f"names among {[s.name for s in SETTINGS]}")
    parser.add_argument("--out", default=None, help="default: bench/results/")
    args = parser.parse_args(argv)
    params = load_profile(args.profile)
    chosen = [s for s in SETTINGS if args.settings is None or s.name in args.settings]
    cache = runs_root() / ".template-cache"  # the template's brain mask (deepbet), computed once
    template = load_template(params["deface"]["voxel_mm"], cache_dir=cache)
    phantom = PhantomParams.from_dict(params.get("phantom"))
    basis = build_basis(load_template(phantom.voxel_mm, cache_dir=cache), phantom)
    subjects = [phantom_subject(i, basis, phantom, voxel_mm=params["deface"]["voxel_mm"])
                for i in benchmark_indices(phantom, args.subjects)]
    before, start = machine_load(), time.perf_counter()
    table = registration_benchmark(subjects, template, chosen, basis=basis, params=phantom,
                                   seed=int(params.get("seed", 0)), method=args.method, progress=True)
    meta = {"profile": args.profile, "n_subjects": len(subjects), "method": args.method,
            "seed": int(params.get("seed", 0)), "date": datetime.date.today().isoformat(),
            "seconds": round(time.perf_counter() - start, 1), "cpu_model": cpu_model(),
            "load_before": before, "load_after": machine_load(),
            "itk_threads": os.environ.get("ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS"),
            "antspyx": importlib.metadata.version("antspyx")}
    csv, meta_path = results_paths(Path(args.out) if args.out else project_root() / "bench" / "results", args.profile)
    save_table(table, csv)
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    print(registration_summary(table).to_string(index=False))
    return 0
