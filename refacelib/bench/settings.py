"""Sampler settings against face quality: DDIM steps x samples averaged, on the validation split.

``python -m refacelib.bench settings --profile quick`` refaces the validation subjects of a
trained profile under one defacing method with the book's own inputs (the attacker's view,
the cascade's prior) at several DDIM step counts, ``--samples`` samples each, and measures the
face MSD of the mean of the first 1, 2, 4, ... samples in each subject's space, exactly as
the re-identification chapter measures a refaced face. It writes
``bench/results/settings-<profile>.csv`` and its record ``settings-<profile>.json``; the
Performance appendix reads them beside the GPU's seconds per network evaluation
(``bench/results/<card>-<date>.json``) to say which setting refaces the paper's cohort
within a GPU-hour and what that costs in face MSD. The validation split, not a test set:
the setting is a choice.
"""
from __future__ import annotations

import argparse
import datetime
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

from refacelib._utils.io import atomic_write_text, save_table
from refacelib.bench.costs import gpu_network_seconds
from refacelib.bench.throughput import refacing_workload
from refacelib.diffusion.sample import network_evaluations, reface

__all__ = ["sample_counts", "setting_benchmark", "setting_summary", "within_budget", "budget_table", "budget_choice",
           "load_settings"]


def sample_counts(n_samples: int) -> list[int]:
    """1, 2, 4, ... up to ``n_samples``, and ``n_samples`` itself.

    Examples
    --------
    >>> sample_counts(8), sample_counts(6), sample_counts(1)
    ([1, 2, 4, 8], [1, 2, 4, 6], [1])
    """
    out = [1 << i for i in range(int(np.log2(max(1, n_samples))) + 1)]
    return out if out[-1] == n_samples else out + [int(n_samples)]


def setting_benchmark(models, config, data: dict, steps, *, n_samples: int, msd, seed: int = 0,
                      batch_size: int | str = 8, device="auto", progress: bool = False) -> pd.DataFrame:
    """Face MSD of the mean of the first m samples, for each DDIM step count.

    Parameters
    ----------
    models, config
        The trained cascade (stage 1, stage 2) and its :class:`~refacelib.diffusion.cascade.CascadeConfig`.
    data : dict
        ``defaced``, ``mask``, ``prior`` (N, X, Y, Z) and ``subject``, ``method`` (N); ``prior`` is the
        cascade's (:func:`refacelib.pipeline.refacing.examples_prior`: the linear prediction with
        ``cascade.prior: ridge``).
    steps : sequence of int
        DDIM steps per stage.
    n_samples : int
        Samples per subject; the estimators are the means of the first :func:`sample_counts` of them
        (the first one alone is the single sample an attacker sees).
    msd : callable
        ``msd(volumes)`` -> N face MSDs (mm) of (N, X, Y, Z) common-grid volumes.

    Returns
    -------
    DataFrame
        ``steps, nfe, samples, subject, method, msd_mm, seconds`` (``nfe``: network evaluations per
        sample, both stages; ``seconds``: the wall time of sampling all ``n_samples`` at that step count).
    """
    rows = []
    for k in steps:
        start = time.perf_counter()
        res = reface(data["defaced"], data["mask"], data["prior"], models, config, sampler="ddim", steps=int(k),
                     n_samples=int(n_samples), seed=seed, batch_size=batch_size, device=device,
                     return_samples=True, progress=progress)
        seconds = time.perf_counter() - start
        samples = np.asarray(res["samples"])
        for m in sample_counts(n_samples):
            values = np.asarray(msd(samples[:, :m].mean(axis=1)), float)
            rows += [{"steps": int(k), "nfe": network_evaluations(k), "samples": m, "subject": sid, "method": method,
                      "msd_mm": float(v), "seconds": round(seconds, 2)}
                     for sid, method, v in zip(data["subject"], data["method"], values)]
    return pd.DataFrame(rows)


def setting_summary(table: pd.DataFrame, *, reference: tuple[int, int]) -> pd.DataFrame:
    """Median face MSD per (steps, samples) and its paired change from the ``reference`` setting.

    ``change_mm``: the median over subjects of (setting - reference) MSD, each subject and method
    against itself; ``change_q1``, ``change_q3`` its quartiles.

    Examples
    --------
    >>> t = pd.DataFrame({"steps": [50, 50, 10, 10], "nfe": [101, 101, 21, 21], "samples": [1] * 4,
    ...                   "subject": ["a", "b"] * 2, "method": ["m"] * 4, "msd_mm": [1.0, 2.0, 1.5, 2.0]})
    >>> setting_summary(t, reference=(50, 1))[["steps", "msd_median", "change_mm"]].values.tolist()
    [[50.0, 1.5, 0.0], [10.0, 1.75, 0.25]]
    """
    key = ["subject", "method"]
    ref = table[(table["steps"] == reference[0]) & (table["samples"] == reference[1])].set_index(key)["msd_mm"]
    if ref.empty:
        raise ValueError(f"the reference setting {reference} (steps, samples) was not measured")
    rows = []
    for (steps, samples), g in table.groupby(["steps", "samples"], sort=False):
        diff = g.set_index(key)["msd_mm"] - ref.reindex(g.set_index(key).index)
        rows.append({"steps": steps, "nfe": int(g["nfe"].iloc[0]), "samples": samples, "n": len(g),
                     "msd_median": float(g["msd_mm"].median()), "change_mm": float(diff.median()),
                     "change_q1": float(diff.quantile(0.25)), "change_q3": float(diff.quantile(0.75))})
    out = pd.DataFrame(rows).sort_values(["steps", "samples"], ascending=False, ignore_index=True)
    return out.round({"msd_median": 4, "change_mm": 4, "change_q1": 4, "change_q3": 4})


def within_budget(sampling: pd.DataFrame, params: dict, *, budget_hours: float = 1.0,
                  samples=(1, 2, 4, 8)) -> pd.DataFrame:
    """Hours to reface every test subject under every method, per measured setting and sample count.

    ``sampling``: GPU rows of :func:`refacelib.bench.throughput.sampling_throughput` (``steps``,
    ``compiled``, ``seconds_per_item_step``; each row a DDIM step count measured at the
    profile's sizes). Hours: :func:`refacelib.bench.costs.gpu_network_seconds` for every test
    subject of ``params`` at that step count and number of samples.

    Examples
    --------
    >>> s = pd.DataFrame({"steps": [50, 10], "compiled": [False, False], "seconds_per_item_step": [0.003, 0.0034]})
    >>> p = {"phantom": {"n_test_internal": 15, "n_test_external": 469}, "deface": {"methods": list("abcde")}}
    >>> t = within_budget(s, p, samples=(8, 4))
    >>> t[["setting", "samples", "hours", "within_budget"]].values.tolist()
    [['DDIM-50', 8, 1.63, False], ['DDIM-50', 4, 0.81, True], ['DDIM-10', 8, 0.38, True], ['DDIM-10', 4, 0.19, True]]
    """
    n_test, _ = refacing_workload(params)
    rows = []
    for r in sampling.itertuples():
        for m in samples:
            nfe = network_evaluations(r.steps)
            hours = gpu_network_seconds(float(r.seconds_per_item_step), params, n_test, steps=r.steps, samples=m) / 3600
            rows.append({"setting": f"DDIM-{int(r.steps)}" + (", compiled" if bool(r.compiled) else ""),
                         "steps": int(r.steps), "compiled": bool(r.compiled), "samples": int(m), "nfe": nfe,
                         "hours": round(hours, 2), "within_budget": hours <= budget_hours})
    return pd.DataFrame(rows)


def budget_table(options: pd.DataFrame, summary: pd.DataFrame | None) -> pd.DataFrame:
    """:func:`within_budget` beside each setting's face-MSD change measured on a trained profile.

    ``summary``: :func:`setting_summary` (``steps, samples, change_mm, change_q1, change_q3``), or
    None when no such measurement is stored (the change columns are then missing values).

    Examples
    --------
    >>> o = pd.DataFrame({"setting": ["DDIM-50", "DDIM-10"], "steps": [50, 10], "compiled": [False] * 2,
    ...                   "samples": [8, 8], "nfe": [101, 21], "hours": [1.6, 0.4], "within_budget": [False, True]})
    >>> s = pd.DataFrame({"steps": [50, 10], "samples": [8, 8], "msd_median": [1.0, 1.1], "change_mm": [0.0, 0.1],
    ...                   "change_q1": [0.0, 0.05], "change_q3": [0.0, 0.2]})
    >>> budget_table(o, s)["change_mm"].tolist()
    [0.0, 0.1]
    """
    cols = ["change_mm", "change_q1", "change_q3"]
    if summary is None or summary.empty:
        return options.assign(**{c: np.nan for c in cols})
    return options.merge(summary[["steps", "samples", *cols]], on=["steps", "samples"], how="left")


def budget_choice(table: pd.DataFrame) -> pd.Series | None:
    """The setting closest to the profile's within the budget: the most network evaluations per subject.

    Among the rows of :func:`budget_table` that fit the budget, the one with the most
    ``samples x nfe`` (ties: uncompiled first, then more steps); None if none fits.

    Examples
    --------
    >>> t = pd.DataFrame({"setting": ["DDIM-50", "DDIM-50", "DDIM-20"], "steps": [50, 50, 20],
    ...                   "compiled": [False] * 3, "samples": [8, 4, 8], "nfe": [101, 101, 41],
    ...                   "within_budget": [False, True, True]})
    >>> c = budget_choice(t)
    >>> c["setting"], int(c["samples"])
    ('DDIM-50', 4)
    """
    fit = table[table["within_budget"]]
    if fit.empty:
        return None
    work = fit["samples"] * fit["nfe"]
    order = pd.DataFrame({"work": work, "plain": ~fit["compiled"].astype(bool), "steps": fit["steps"]})
    return fit.loc[order.sort_values(["work", "plain", "steps"], ascending=False).index[0]]


def results_paths(folder: Path, profile: str) -> tuple[Path, Path]:
    """``settings-<profile>.csv`` and its record ``settings-<profile>.json`` in ``folder``."""
    return Path(folder) / f"settings-{profile}.csv", Path(folder) / f"settings-{profile}.json"


def load_settings(folder: Path, profile: str) -> tuple[pd.DataFrame, dict] | None:
    """The stored :func:`setting_benchmark` table of ``profile`` and its record, or None."""
    csv, meta = results_paths(folder, profile)
    if not csv.is_file():
        return None
    return pd.read_csv(csv), (json.loads(meta.read_text()) if meta.is_file() else {})


def main(argv=None) -> int:
    """``python -m refacelib.bench settings --profile quick [--steps 50,20,10,3] [--samples 8]``."""
    from refacelib.bench import quality as bq
    from refacelib.diffusion.train import load_stage
    from refacelib.pipeline import refacing
    from refacelib.pipeline.book import run_lock
    from refacelib.pipeline.config import open_run, project_root

    parser = argparse.ArgumentParser(prog="python -m refacelib.bench settings",
                                     description="DDIM steps x samples against face MSD on the validation split")
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--dataset", default="phantom")
    parser.add_argument("--steps", default="50,20,10,3", help="DDIM steps per stage, comma-separated")
    parser.add_argument("--samples", type=int, default=8, help="samples per subject (means of the first 1, 2, 4, ...)")
    parser.add_argument("--methods", default=None, help="defacing methods, comma-separated (default: all)")
    parser.add_argument("--out", default=None, help="default: bench/results/")
    args = parser.parse_args(argv)
    run = open_run(args.profile, args.dataset)
    steps = [int(x) for x in args.steps.split(",")]
    start = time.perf_counter()
    with run_lock(run, holder="sampler settings benchmark (python -m refacelib.bench settings)"):
        study = refacing.setup(run)
        p = run.params["cascade"]
        ckpt, _ = refacing.trained_cascade(run, study)
        val_ids = list(study.ids["val"])
        methods = args.methods.split(",") if args.methods else list(study.methods)
        models = tuple(load_stage(ckpt / f"stage{s}.pt", device=p.get("device", "auto"))[0] for s in (1, 2))
        linear = refacing.linear_models(ckpt, study.deface_folder, study.template, p["voxel_mm"], methods,
                                        val_ids=val_ids)
        faces = bq.subject_faces(study.deface_folder, study.template, val_ids)
        tables = []
        for method in methods:
            data = refacing.build_examples(study.deface_folder, val_ids, [method], study.template, p["voxel_mm"],
                                           attacker=True)
            msd = lambda v, data=data: bq.subject_space_msd(faces, v, data, template=study.template,  # noqa: E731
                                                            deface_folder=study.deface_folder)
            cascade_data = {**data, "prior": refacing.examples_prior(data, linear)}
            tables.append(setting_benchmark(models, study.config, cascade_data, steps, n_samples=args.samples,
                                            msd=msd, seed=int(run.params["seed"]),
                                            batch_size=p.get("sample_batch", 8), device=p.get("device", "auto")))
            print(f"{method}: done ({time.perf_counter() - start:.0f} s)", flush=True)
    table = pd.concat(tables, ignore_index=True)
    csv, meta_path = results_paths(Path(args.out) if args.out else project_root() / "bench" / "results", args.profile)
    save_table(table, csv)
    meta = {"profile": args.profile, "dataset": args.dataset, "split": "val", "n_subjects": len(val_ids),
            "methods": methods, "steps": steps, "n_samples": args.samples, "checkpoint": ckpt.name,
            "seed": int(run.params["seed"]), "book_setting": [int(p["sample_steps"]), int(p["n_samples"])],
            "date": datetime.date.today().isoformat(), "seconds": round(time.perf_counter() - start, 1)}
    atomic_write_text(meta_path, json.dumps(meta, indent=1) + "\n")
    print(setting_summary(table, reference=(max(steps), args.samples)).to_string(index=False))
    return 0
