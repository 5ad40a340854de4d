"""Cost curves: how the per-subject stages grow with the cohort, and the ``paper`` cohort projected.

* :func:`scaled_splits`, :func:`stage_units`: a cohort of ``n`` subjects in the
  proportions of a reference cohort (the ``paper`` profile's), and the size of each
  stage's work in it.
* :func:`measure_costs`: generate phantom cohorts of several sizes and time, per size,
  phantom generation, defacing, refacing (its networks, its other in-process work and its
  writing workers apart), the face evaluation and the matching attack, each as the book runs it.
* :func:`fit_costs`: per stage, ``seconds = a + b * units`` (non-negative least
  squares) and the log-log exponent of the growth.
* :func:`project_costs`: the ``paper`` cohort on the measured cores, on more cores, and
  with the refacing networks on a measured GPU (:func:`gpu_network_seconds`).
* :func:`write_costs`, :func:`load_costs`: ``bench/results/costs-<profile>.csv`` and its
  ``.json`` record; ``python -m refacelib.bench costs`` writes them (:func:`main`).

Design of the measurement. Every size is the reference cohort scaled down, the same
fraction in each split (:func:`scaled_splits`): a test subject costs several times a
training subject in defacing (the attacker's registration to each defaced image), and
refacing and evaluation work on test subjects only, so only the reference's own mix
extrapolates to it along a straight line. A fixed training set with growing test sets
would leave the training subjects' cost in the intercept, measured at the wrong size.

Refacing needs a trained cascade, which is not trained per size: the networks are the
checkpoint shipped for the profile's training recipe (``checkpoints/``), else untrained
networks of the profile's size (the cost of a network evaluation does not depend on its
weights); the linear prior (``cascade.prior: ridge``) is refitted on each cohort's own
training subjects with the shipped penalties, as the refacing chapter refits it.

The matching attack compares every candidate face with every original of its test set,
so it grows with the square of a test set: its cost per compared pair of subjects is
timed on its own (:func:`refacelib.pipeline.evaluation.fast_msd_matrix` on the largest
test set's faces) and only the remainder is fitted on a straight line.

Examples
--------
>>> stage_units(scaled_splits(32, {"n_train": 180, "n_val": 20, "n_test_internal": 15, "n_test_external": 469}))
{'subjects': 32, 'test subjects': 23, 'subject pairs': 485}
"""
from __future__ import annotations

import argparse
import datetime as _dt
import json
import os
import shutil
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

__all__ = [
    "SPLITS",
    "STAGES",
    "scaled_splits",
    "projection_lines",
    "stage_units",
    "measure_costs",
    "fit_costs",
    "gpu_network_seconds",
    "project_costs",
    "write_costs",
    "load_costs",
]

#: The phantom's splits (keys of a profile's ``phantom`` section), in the order it generates them.
SPLITS = ("n_train", "n_val", "n_test_internal", "n_test_external")

#: Each stage: (name, unit of its size, whether its per-unit work runs on every core).
STAGES = (
    ("phantom generation", "subjects", False),  # one process, subject after subject
    ("defacing", "subjects", True),
    ("refacing (networks)", "test subjects", False),  # one process; its torch threads are not assumed to scale
    ("refacing (examples and prior)", "test subjects", False),  # this process: inputs, linear prior, sampler
    ("refacing (writing)", "test subjects", True),  # workers: back to each subject's grid, the files
    ("face evaluation", "test subjects", True),
    ("matching attack", "test subjects", True),  # plus its pairs of subjects (see the module)
)

#: Candidates of the book's matching attack (:func:`refacelib.pipeline.evaluation.matching_attack`).
ATTACK_CANDIDATES = 4


# --------------------------------------------------------------------------- cohort sizes
def scaled_splits(n: int, reference: dict, *, minimum: dict | None = None) -> dict:
    """Split sizes of an ``n``-subject cohort in the proportions of ``reference``.

    Largest-remainder rounding, after each split gets at least its ``minimum``
    (default: 2 training and 2 external test subjects, which the cohort average,
    the linear prior and the matching attack need).

    Examples
    --------
    >>> paper = {"n_train": 180, "n_val": 20, "n_test_internal": 15, "n_test_external": 469}
    >>> scaled_splits(8, paper), scaled_splits(32, paper)["n_test_internal"]
    ({'n_train': 2, 'n_val': 0, 'n_test_internal': 0, 'n_test_external': 6}, 1)
    >>> sum(scaled_splits(684, paper).values()), scaled_splits(684, paper) == paper
    (684, True)
    """
    minimum = {"n_train": 2, "n_test_external": 2} if minimum is None else minimum
    weights = np.array([float(reference.get(k, 0)) for k in SPLITS])
    quota = int(n) * weights / weights.sum()
    low = np.array([int(minimum.get(k, 0)) for k in SPLITS])
    if low.sum() > n:
        raise ValueError(f"{n} subjects cannot hold the minimum split sizes {minimum}")
    alloc = np.maximum(low, np.floor(quota).astype(int))
    while alloc.sum() < n:  # the largest remainders first
        alloc[int(np.argmax(quota - alloc))] += 1
    while alloc.sum() > n:  # forced up by a minimum: take from the most over-served split above its minimum
        over = np.where(alloc > low, alloc - quota, -np.inf)
        alloc[int(np.argmax(over))] -= 1
    return {k: int(v) for k, v in zip(SPLITS, alloc)}


def stage_units(splits: dict) -> dict:
    """The size of each unit of :data:`STAGES` in a cohort: subjects, test subjects, pairs of test subjects.

    ``subject pairs`` is the sum over test sets of the set's size squared: the
    candidate x original comparisons of the matching attack (per method and candidate).

    Examples
    --------
    >>> stage_units({"n_train": 180, "n_val": 20, "n_test_internal": 15, "n_test_external": 469})
    {'subjects': 684, 'test subjects': 484, 'subject pairs': 220186}
    """
    tests = [int(splits.get("n_test_internal", 0)), int(splits.get("n_test_external", 0))]
    return {"subjects": sum(int(splits.get(k, 0)) for k in SPLITS), "test subjects": sum(tests),
            "subject pairs": sum(t * t for t in tests)}


# --------------------------------------------------------------------------- measurement
class _FunctionClock:
    """Wall seconds inside module functions (outermost calls only), timed while the clock is open.

    Each ``(module, name)`` of ``targets`` is replaced by a timing wrapper until :meth:`close`.
    """

    def __init__(self, targets):
        self.seconds, self._depth, self._saved = 0.0, 0, []
        for module, name in targets:
            original = getattr(module, name)
            self._saved.append((module, name, original))
            setattr(module, name, self._wrap(original))

    def _wrap(self, fn):
        def timed(*args, **kwargs):
            self._depth += 1
            start = time.perf_counter() if self._depth == 1 else None
            try:
                return fn(*args, **kwargs)
            finally:
                self._depth -= 1
                if start is not None:
                    self.seconds += time.perf_counter() - start
        return timed

    def close(self):
        for module, name, original in self._saved:
            setattr(module, name, original)


class _NetworkClock:
    """Wall seconds spent inside the networks' forward passes (forward hooks; CPU or synchronised CUDA)."""

    def __init__(self, models):
        import torch

        self.seconds, self._start, self._handles = 0.0, None, []
        self._sync = (lambda: torch.cuda.synchronize()) if torch.cuda.is_available() else (lambda: None)
        for model in models:
            self._handles += [model.register_forward_pre_hook(self._pre), model.register_forward_hook(self._post)]

    def _pre(self, module, args):
        self._sync()
        self._start = time.perf_counter()

    def _post(self, module, args, output):
        self._sync()
        self.seconds += time.perf_counter() - self._start

    def close(self):
        for h in self._handles:
            h.remove()


def _cascade_models(run, config):
    """The shipped networks of the run's training recipe, else untrained ones of its size; and their source."""
    from refacelib.bench.throughput import _untrained_models
    from refacelib.diffusion.train import load_stage
    from refacelib.pipeline import refacing

    device = run.params["cascade"].get("device", "auto")
    recipe = refacing.training_recipe(run)
    for info_path in sorted(refacing.shipped_root().glob("*/training.json")):
        if json.loads(info_path.read_text()).get("training") == recipe:
            folder = info_path.parent
            models = tuple(load_stage(folder / f"stage{s}.pt", device=device)[0] for s in (1, 2))
            return models, folder
    from refacelib._utils.device import resolve_device

    return _untrained_models(config, resolve_device(device)), None


def _linear_record(folder: Path, train_ids, methods, shipped: Path | None) -> None:
    """A linear prior's record for this cohort: its own training subjects, the shipped penalties (else 0.1)."""
    from refacelib.pipeline.refacing import LINEAR_RECORD

    known = {}
    if shipped is not None and (shipped / LINEAR_RECORD).is_file():
        known = json.loads((shipped / LINEAR_RECORD).read_text()).get("methods", {})
    record = {"train_subjects": list(train_ids), "shuffle_faces": False,
              "methods": {m: {"lambda": float(known.get(m, {}).get("lambda", 0.1))} for m in methods}}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / LINEAR_RECORD).write_text(json.dumps(record, indent=1))


def _pair_core_seconds(surfaces: dict, ids, n_methods: int, *, min_faces: int = 16) -> float:
    """Core-seconds of the matching attack per pair of subjects, from one face-distance matrix timed here.

    The matrix compares the original faces of ``ids``, repeated up to ``min_faces``
    faces so that the comparisons, not the trees built once per face, dominate it;
    one pair of subjects costs one cell per method and attack candidate.
    """
    from refacelib.pipeline.evaluation import fast_msd_matrix

    faces = [surfaces[(sid, "original")] for sid in ids]
    faces = [faces[i % len(faces)] for i in range(max(len(faces), min_faces))]
    start = time.perf_counter()
    fast_msd_matrix(faces, faces)
    return (time.perf_counter() - start) / len(faces) ** 2 * n_methods * ATTACK_CANDIDATES


def _fresh_workers() -> None:
    """Stop loky's reusable worker processes: each stage starts its own, as each chapter's kernel does."""
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)


def _timed(rows: list, stage: str, fn, **row):
    """Run ``fn`` with fresh workers; append a row with its wall seconds and the load average before and after."""
    _fresh_workers()
    before = os.getloadavg()[0]
    start = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - start
    after = os.getloadavg()
    rows.append({"stage": stage, "seconds": round(seconds, 3), "load1_before": round(before, 2),
                 "load1_after": round(after[0], 2), "load5_after": round(after[1], 2),
                 "load15_after": round(after[2], 2), **row})
    return out


def _fresh_run(profile: str, overrides: dict, suffix: str):
    """A run folder emptied first (a cached stage would be timed at nothing), the template's brain mask copied in."""
    from refacelib.data.template import load_template
    from refacelib.pipeline.config import open_run, runs_root
    from refacelib.pipeline.stages import study_template

    run = open_run(profile, "phantom", overrides=overrides, suffix=suffix, create=False)
    if run.folder.exists():
        shutil.rmtree(run.folder)
    run = open_run(profile, "phantom", overrides=overrides, suffix=suffix)
    shared = runs_root() / ".template-cache"  # the template's brain mask (deepbet), computed once for all sizes
    load_template(run.params["deface"]["voxel_mm"], cache_dir=shared)
    (run.artifacts / "template").mkdir(parents=True, exist_ok=True)
    for mask in shared.glob("*.nii.gz"):
        shutil.copyfile(mask, run.artifacts / "template" / mask.name)
    return run, study_template(run)


def _timed_refacing(rows: list, run, folder: Path, split: dict, template, *, n_jobs: int, torch_threads: int,
                    progress: bool, **row):
    """:func:`refacelib.pipeline.refacing.reface_test_set` timed as three rows (:data:`STAGES`).

    Its networks (forward passes); the rest of its work in this process (the
    examples on the common grid, the linear prior's refit and prediction, the
    sampler's own steps); and the remainder, the workers that bring the results
    to each subject's grid and write them.
    """
    import torch

    from refacelib.diffusion import linear
    from refacelib.pipeline import refacing

    tests = {sid: sp for sid, sp in split.items() if sp.startswith("test")}
    methods = list(run.params["deface"]["methods"])
    config = refacing.cascade_config(run, template)
    models, shipped = _cascade_models(run, config)
    ckpt = run.artifacts / "costs-cascade"
    ckpt.mkdir(parents=True, exist_ok=True)
    if refacing.cascade_prior(run) == "ridge":
        _linear_record(ckpt, [s for s, sp in split.items() if sp == "train"], methods, shipped)
    refacing._LINEAR_CACHE.clear()  # refitted in the timed call, as in a fresh chapter
    clock, threads = _NetworkClock(models), torch.get_num_threads()
    inproc = _FunctionClock([(refacing, "build_examples"), (refacing, "linear_models"), (refacing, "reface"),
                             (linear, "model_prior")])
    torch.set_num_threads(torch_threads)
    try:
        refaced, _ = _timed(rows, "refacing", lambda: refacing.reface_test_set(
            run, folder, ckpt, list(tests), methods, template, config, progress=progress, n_jobs=n_jobs,
            test_sets=list(tests.values()), models=models, val_ids=[s for s, sp in split.items() if sp == "val"]),
            cores=n_jobs, **row)
    finally:
        torch.set_num_threads(threads)
        clock.close()
        inproc.close()
    total = rows.pop()
    rows += [{**total, "stage": "refacing (networks)", "seconds": round(clock.seconds, 3), "cores": torch_threads},
             {**total, "stage": "refacing (examples and prior)", "seconds": round(inproc.seconds - clock.seconds, 3),
              "cores": 1},
             {**total, "stage": "refacing (writing)", "seconds": round(total["seconds"] - inproc.seconds, 3)}]
    source = f"checkpoints/{shipped.name}" if shipped else "untrained, the profile's size"
    return refaced, {"cascade": source, "device": str(next(models[0].parameters()).device)}


def _measure_size(profile: str, splits: dict, *, n_jobs: int, torch_threads: int, overrides: dict, keep: bool,
                  progress: bool) -> tuple[list, dict]:
    """Rows of :func:`measure_costs` for one cohort (a fresh run folder ``<profile>-phantom-costs-n<N>``)."""
    from refacelib.pipeline import evaluation
    from refacelib.pipeline.cohort import prepare_dataset
    from refacelib.pipeline.stages import deface_cohort

    units = stage_units(splits)
    run, template = _fresh_run(profile, {**overrides, **{f"phantom.{k}": v for k, v in splits.items()}},
                               f"costs-n{units['subjects']}")
    methods = list(run.params["deface"]["methods"])
    common = {"n_subjects": units["subjects"], **splits, "n_test": units["test subjects"],
              "n_pairs": units["subject pairs"]}
    rows: list = []
    ds = _timed(rows, "phantom generation", lambda: prepare_dataset(run, progress=progress), cores=1, **common)
    folder, _ = _timed(rows, "defacing", lambda: deface_cohort(run, ds, template, progress=progress,
                                                                n_jobs=n_jobs), cores=n_jobs, **common)
    split = {s.participant_id: str(s.row.get("split", "")) for s in ds.subjects}
    tests = {sid: sp for sid, sp in split.items() if sp.startswith("test")}
    refaced, info = _timed_refacing(rows, run, folder, split, template, n_jobs=n_jobs, torch_threads=torch_threads,
                                    progress=progress, **common)
    _, surfaces, _ = _timed(rows, "face evaluation", lambda: evaluation.face_msd_table(
        folder, refaced, template, tests, methods, progress=progress, n_jobs=n_jobs), cores=n_jobs, **common)
    _timed(rows, "matching attack", lambda: evaluation.matching_attack(
        surfaces, tests, methods, reference=evaluation.template_face(template), n_jobs=n_jobs),
        cores=n_jobs, **common)
    largest = max(("test_internal", "test_external"), key=lambda t: sum(v == t for v in tests.values()))
    pair = _pair_core_seconds(surfaces, [s for s, t in tests.items() if t == largest], len(methods))
    rows[-1].update(pair_core_seconds=pair, quadratic_seconds=round(units["subject pairs"] * pair / n_jobs, 3))
    if not keep:
        shutil.rmtree(run.folder)
    return rows, {"run": run.label, "torch_threads": torch_threads, **info}


def measure_costs(profile: str, sizes, *, n_jobs: int = 2, torch_threads: int = 1, reference: dict | None = None,
                  overrides: dict | None = None, keep: bool = False,
                  progress: bool = False) -> tuple[pd.DataFrame, dict]:
    """Time every per-subject stage of the study on phantom cohorts of ``sizes`` subjects.

    Each size is a fresh run folder ``runs/<profile>-phantom-costs-n<N>`` (removed
    after its measurement unless ``keep``) whose phantom splits are ``reference``
    (default: the ``paper`` profile's) scaled to ``N`` (:func:`scaled_splits`); every
    other parameter is the profile's, or set by ``overrides`` (dotted keys, as
    :func:`refacelib.pipeline.config.open_run` takes them). The stages run cold, one after another, as the
    book runs them, with ``n_jobs`` worker processes; the refacing networks run in this
    process on ``torch_threads`` threads (on a loaded machine one thread is faster than
    several, which wait for each other).

    Returns
    -------
    measured : DataFrame
        One row per size and stage: ``stage, unit, units, parallel, seconds`` (wall),
        ``cores``, the cohort (``n_subjects``, the split sizes, ``n_test``, ``n_pairs``),
        the matching attack's ``pair_core_seconds`` and ``quadratic_seconds`` (its
        pairs' share of the wall time), the load average around each stage and
        ``cpu_count``.
    meta : dict
        Profile, sizes, splits, ``n_jobs``, reference, machine, cascade source, load
        average before and after, and the total wall time.
    """
    from refacelib.bench.throughput import cpu_model
    from refacelib.pipeline.config import load_profile

    reference = reference or {k: load_profile("paper")["phantom"][k] for k in SPLITS}
    units_of = {name: unit for name, unit, _ in STAGES}
    parallel = {name: par for name, _, par in STAGES}
    meta = {"profile": profile, "sizes": [int(n) for n in sizes], "n_jobs": int(n_jobs),
            "torch_threads": int(torch_threads), "reference": reference, "overrides": dict(overrides or {}),
            "date": _dt.date.today().isoformat(), "cpu_model": cpu_model(), "cpu_count": os.cpu_count(),
            "usable_cores": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
            "loadavg_before": [round(v, 2) for v in os.getloadavg()], "splits": {}, "runs": {}}
    start, rows = time.perf_counter(), []
    for n in sizes:
        splits = scaled_splits(int(n), reference)
        size_rows, info = _measure_size(profile, splits, n_jobs=int(n_jobs), torch_threads=int(torch_threads),
                                        overrides=dict(overrides or {}), keep=keep, progress=progress)
        meta["splits"][str(n)], meta["runs"][str(n)] = splits, info
        rows += size_rows
    meta.update(loadavg_after=[round(v, 2) for v in os.getloadavg()], seconds=round(time.perf_counter() - start, 1))
    out = pd.DataFrame(rows)
    out.insert(1, "unit", out["stage"].map(units_of))
    out.insert(2, "units", [r[{"subjects": "n_subjects", "test subjects": "n_test"}[u]]
                            for r, u in zip(out.to_dict("records"), out["unit"])])
    out.insert(3, "parallel", out["stage"].map(parallel))
    out["profile"], out["cpu_count"] = profile, os.cpu_count()
    for col in ("pair_core_seconds", "quadratic_seconds"):
        out[col] = out[col].fillna(0.0) if col in out else 0.0
    return out, meta


# --------------------------------------------------------------------------- fit and projection
def fit_costs(measured: pd.DataFrame) -> pd.DataFrame:
    """Per stage, ``seconds = a + b * units`` by non-negative least squares, and the growth's log-log exponent.

    The fit is of ``seconds - quadratic_seconds`` when that column is present (the
    matching attack's pairs, measured apart); the exponent is the slope of
    log(seconds) against log(units) on the totals, 1 for a stage that grows linearly
    once its fixed part is small, above 1 for one that grows faster.

    Returns
    -------
    DataFrame
        ``stage, unit, parallel, cores, n_sizes, a_s`` (fixed seconds), ``b_s`` (seconds
        per unit on ``cores`` cores), ``pair_core_s`` (core-seconds per pair of test
        subjects), ``r2, loglog_exponent``.

    Examples
    --------
    >>> m = pd.DataFrame({"stage": "x", "unit": "subjects", "units": [10, 20, 40, 80],
    ...                   "seconds": [7.0, 12.0, 22.0, 42.0], "cores": 2})
    >>> f = fit_costs(m).iloc[0]
    >>> [round(float(f[k]), 6) for k in ("a_s", "b_s", "r2")], bool(0.7 < f["loglog_exponent"] < 1)
    ([2.0, 0.5, 1.0], True)
    """
    from scipy.optimize import nnls

    rows = []
    for stage, g in measured.groupby("stage", sort=False):
        x = g["units"].to_numpy(float)
        total = g["seconds"].to_numpy(float)
        y = total - (g["quadratic_seconds"].to_numpy(float) if "quadratic_seconds" in g else 0.0)
        (a, b), _ = nnls(np.column_stack([np.ones_like(x), x]), y)
        resid = y - (a + b * x)
        ss = float(((y - y.mean()) ** 2).sum())
        ok = (x > 0) & (total > 0)
        slope = np.polyfit(np.log(x[ok]), np.log(total[ok]), 1)[0] if len(set(x[ok])) > 1 else np.nan
        pair = float(g["pair_core_seconds"].median()) if "pair_core_seconds" in g else 0.0
        rows.append({"stage": stage, "unit": g["unit"].iloc[0],
                     "parallel": bool(g["parallel"].iloc[0]) if "parallel" in g else True,
                     "cores": int(g["cores"].iloc[0]), "n_sizes": int(len(set(x))), "a_s": float(a), "b_s": float(b),
                     "pair_core_s": 0.0 if np.isnan(pair) else pair,
                     "r2": round(1.0 - float((resid ** 2).sum()) / ss, 6) + 0.0 if ss > 0 else np.nan,
                     "loglog_exponent": float(slope)})
    return pd.DataFrame(rows)


def gpu_network_seconds(seconds_per_item_step: float, params: dict, n_test: int, *, steps: int | None = None,
                        samples: int | None = None) -> float:
    """Seconds of the refacing networks for ``n_test`` subjects at a profile's sampler, methods and samples.

    ``steps``, ``samples``: another DDIM step count or number of samples than the profile's
    ``cascade.sample_steps`` and ``cascade.n_samples``.

    Test subjects x methods x ``n_samples`` x ``2 * sample_steps + 1`` network
    evaluations of one item (both stages and the stage-2 one-step estimate), each at
    the measured ``seconds_per_item_step`` (:func:`refacelib.bench.throughput.sampling_throughput`).

    Examples
    --------
    >>> p = {"deface": {"methods": ["a", "b"]}, "cascade": {"n_samples": 8, "sample_steps": 50}}
    >>> gpu_network_seconds(0.001, p, 10)
    16.16
    """
    from refacelib.diffusion.sample import network_evaluations

    p = params.get("cascade", {})  # only read for what is not given
    nfe = network_evaluations(p["sample_steps"] if steps is None else steps)
    samples = int(p["n_samples"] if samples is None else samples)
    return round(n_test * len(params["deface"]["methods"]) * samples * nfe * seconds_per_item_step, 6)


def _stage_seconds(f, units: dict, cores: int) -> tuple[float, str]:
    """One stage of the fit on ``cores`` cores: the fixed part kept, per-unit parts divided among the cores."""
    u = units[f.unit]
    share = f.cores / cores if f.parallel else 1.0
    seconds = f.a_s + f.b_s * u * share
    basis = f"{f.a_s:.3g} s + {u:,} {f.unit} x {f.b_s:.3g} s" + (f" x {f.cores}/{cores} cores" if share != 1 else "")
    if f.pair_core_s > 0:
        seconds += f.pair_core_s * units["subject pairs"] / cores
        basis += f" + {units['subject pairs']:,} subject pairs x {f.pair_core_s:.3g} core-s / {cores} cores"
    return float(seconds), basis


def project_costs(fit: pd.DataFrame, units: dict, *, cores=(2, 16), gpu: dict | None = None) -> pd.DataFrame:
    """Seconds of each stage for a cohort of ``units`` (:func:`stage_units`) on each number of ``cores``.

    Assumptions: the fixed part ``a`` of a stage does not shrink with cores (it is
    serial: pool start-up, averages, the template); the per-unit part of a parallel
    stage divides ideally among the cores (``b * units * measured cores / cores``: a
    lower bound, memory and disk shared as they were); a serial stage (phantom
    generation) is the same on any machine of the same per-core speed; the matching
    attack's pairs cost ``pair_core_s`` core-seconds each, divided among the cores.

    ``gpu``: a setting that takes every stage from ``gpu["cores"]`` cores except
    ``gpu["stage"]``, whose seconds and basis are ``gpu["seconds"]`` and ``gpu["basis"]``
    (e.g. the refacing networks at :func:`gpu_network_seconds`); labelled ``gpu["label"]``.

    Returns
    -------
    DataFrame
        ``setting, cores, stage, unit, units, seconds, hours, basis``, a ``total`` row per setting.

    Examples
    --------
    >>> fit = pd.DataFrame({"stage": ["deface", "gen"], "unit": "subjects", "parallel": [True, False],
    ...                     "cores": [2, 1], "a_s": [10.0, 5.0], "b_s": [4.0, 1.0], "pair_core_s": 0.0})
    >>> p = project_costs(fit, {"subjects": 100, "subject pairs": 0}, cores=(2, 16))
    >>> p.pivot(index="stage", columns="cores", values="seconds").loc[["deface", "gen", "total"]].values.tolist()
    [[410.0, 60.0], [105.0, 105.0], [515.0, 165.0]]
    """
    settings = [(f"{c} cores", int(c), None) for c in cores]
    if gpu is not None:
        settings.append((gpu["label"], int(gpu["cores"]), gpu))
    rows = []
    for label, n_cores, g in settings:
        for f in fit.itertuples():
            if g is not None and f.stage == g["stage"]:
                seconds, basis = float(g["seconds"]), g["basis"]
            else:
                seconds, basis = _stage_seconds(f, units, n_cores)
            rows.append({"setting": label, "cores": n_cores, "stage": f.stage, "unit": f.unit,
                         "units": int(units[f.unit]), "seconds": seconds, "basis": basis})
        total = sum(r["seconds"] for r in rows if r["setting"] == label)
        rows.append({"setting": label, "cores": n_cores, "stage": "total", "unit": "", "units": np.nan,
                     "seconds": total, "basis": "sum of the stages"})
    out = pd.DataFrame(rows)
    out.insert(6, "hours", (out["seconds"] / 3600).round(3))
    out["seconds"] = out["seconds"].round(1)
    return out


# --------------------------------------------------------------------------- files and command line
def write_costs(folder: Path, measured: pd.DataFrame, meta: dict) -> Path:
    """``<folder>/costs-<profile>.csv`` and its record ``costs-<profile>.json`` (``{"meta": ...}``, kind ``costs``)."""
    from refacelib._utils.io import atomic_write_text, save_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    path = save_table(measured, folder / f"costs-{meta['profile']}.csv")
    atomic_write_text(folder / f"costs-{meta['profile']}.json", json.dumps({"meta": {"kind": "costs", **meta}},
                                                                           indent=1) + "\n")
    return path


def load_costs(folder: Path, profile: str) -> tuple[pd.DataFrame, dict] | None:
    """The measurement of :func:`write_costs` for ``profile``, or None when it was never run."""
    csv, record = Path(folder) / f"costs-{profile}.csv", Path(folder) / f"costs-{profile}.json"
    if not csv.is_file():
        return None
    meta = json.loads(record.read_text())["meta"] if record.is_file() else {}
    return pd.read_csv(csv), meta


def main(argv=None) -> int:
    """``python -m refacelib.bench costs --profile quick --sizes 8,16,32``: measure, write the CSV, print the fit."""
    from refacelib.pipeline.config import project_root

    parser = argparse.ArgumentParser(prog="python -m refacelib.bench costs", description=main.__doc__)
    parser.add_argument("--profile", default="tiny")
    parser.add_argument("--sizes", default="6,12,24", help="cohort sizes, comma-separated")
    parser.add_argument("--n-jobs", type=int, default=2, help="worker processes of the per-subject loops")
    parser.add_argument("--torch-threads", type=int, default=1, help="threads of the refacing networks")
    parser.add_argument("--out", default=None, help="default: bench/results/")
    parser.add_argument("--keep", action="store_true", help="keep the run folders runs/<profile>-phantom-costs-n*")
    args = parser.parse_args(argv)
    sizes = [int(s) for s in args.sizes.split(",") if s.strip()]
    measured, meta = measure_costs(args.profile, sizes, n_jobs=args.n_jobs, torch_threads=args.torch_threads,
                                   keep=args.keep, progress=True)
    meta["command"] = (f"python -m refacelib.bench costs --profile {args.profile} --sizes {args.sizes} "
                       f"--n-jobs {args.n_jobs} --torch-threads {args.torch_threads}")
    path = write_costs(Path(args.out) if args.out else project_root() / "bench" / "results", measured, meta)
    print(f"wrote {path}")
    print(fit_costs(measured).to_string(index=False))
    return 0


if __name__ == "__main__":
    sys.exit(main())


def projection_lines(fit: pd.DataFrame, *, smallest: int, largest: int, reference: dict, cores: int,
                     n: int = 30) -> pd.DataFrame:
    """:func:`project_costs` along ``n`` cohort sizes from ``smallest`` to ``largest`` (geometric), for the figure.

    Each cohort is split in the proportions of ``reference`` (:func:`scaled_splits`), as the
    measured cohorts were; one setting, ``cores`` cores (here: the fixed 10 s plus 4 s per subject).
    Adds the column ``n_subjects``.

    Examples
    --------
    >>> fit = pd.DataFrame({"stage": ["deface"], "unit": "subjects", "parallel": [True], "cores": [2],
    ...                     "a_s": [10.0], "b_s": [4.0], "pair_core_s": 0.0})
    >>> ref = {"n_train": 6, "n_val": 2, "n_test_internal": 2, "n_test_external": 2}
    >>> lines = projection_lines(fit, smallest=12, largest=120, reference=ref, cores=2, n=5)
    >>> lines[lines["stage"] == "deface"][["n_subjects", "seconds"]].values.tolist()
    [[12.0, 58.0], [21.0, 94.0], [38.0, 162.0], [67.0, 278.0], [120.0, 490.0]]
    """
    sizes = np.unique(np.geomspace(smallest, largest, n).round())
    return pd.concat([project_costs(fit, stage_units(scaled_splits(int(k), reference)), cores=(cores,))
                      .assign(n_subjects=int(k)) for k in sizes])
