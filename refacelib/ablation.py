"""Training recipes compared on the validation split, never on a test set.

``python -m refacelib.ablation --profile quick`` (``make ablation``) trains the
cascade of a profile under each recipe of :func:`variants` (the profile's own
recipe and deviations from it, one setting at a time), refaces the
*validation* subjects with it under every defacing method, and measures their
faces with the re-identification chapter's code (:func:`refacelib.pipeline.evaluation.face_msd_table`):

* the last validation loss of each stage (masked x0 error, EMA weights, fixed noise);
* the paired face distance (MSD, mm) of the mean of samples and of one sample
  minus that of the matched average-face baseline (same region, same path), median
  over validation subjects and methods: negative when the recipe's faces are closer;
* the same for the swap check (another validation subject's learned residual):
  what a recipe gains without knowing the person, and the paired difference of
  the mean of samples minus the swap check: what it gains *for the person*, the
  criterion of :func:`select`.

The validation subjects belong to the training cohort's side (the attacker
holds them with their faces); no test subject is refaced or measured here, so
a recipe chosen from this table has not seen the test sets. Every variant's
checkpoints are cached in the run's ``artifacts/`` like the profile's own
(the profile's recipe reuses the shipped checkpoint), and the table is written
to ``tables/ablation.csv`` of the run; ``--ship`` also copies it next to the
shipped checkpoints (``checkpoints/ablation-<profile>.csv``) so that the
training chapter of a fresh clone can show it without hours of CPU.
"""
from __future__ import annotations

import argparse
import dataclasses
import re
import time
from pathlib import Path

import numpy as np
import pandas as pd

from refacelib._utils.io import save_table
from refacelib.diffusion import train
from refacelib.pipeline import evaluation, refacing
from refacelib.pipeline.config import Run, apply_overrides, open_run, validate_params

__all__ = ["SELECT_BY", "variants", "variant_run", "evaluate_variant", "summarise", "select", "status_text",
           "shipped_table", "table_for_run", "main"]

#: The candidate tried for every recipe, and its baseline (the matched average face).
CANDIDATES = ("refaced_mean", "refaced", "swapped", "linear", "linear_permuted")
BASELINE = "average"


def variants(params: dict) -> dict[str, dict]:
    """Named recipes as dotted overrides of the profile's ``cascade`` section.

    ``base recipe`` is the profile's recipe when the comparison runs (no change);
    each other variant changes one thing of it:
    four times the training steps of both stages, the cosine noise schedule,
    twice the channels, Min-SNR-gamma loss weighting over timesteps (both stages),
    v-prediction (both stages; :class:`refacelib.diffusion.cascade.StageConfig`),
    stage 2 on the grid the faces are measured on
    (``deface.voxel_mm``; stage 1 keeps its resolution) when the cascade's grid
    is coarser, and stage 2 trained on the downsampled original instead of
    stage 1's samples, and the linear prior (:mod:`refacelib.diffusion.linear`) under the cascade.

    Examples
    --------
    >>> p = {"cascade": {"stage1": {"steps": 10, "channels": [4, 8], "norm_num_groups": 4},
    ...                  "stage2": {"steps": 6, "channels": [4, 8], "norm_num_groups": 4}}}
    >>> v = variants(p)
    >>> v["base recipe"], v["4x steps (40 + 24)"]["cascade.stage2.steps"], v["2x channels"]["cascade.stage1.channels"]
    ({}, 24, [8, 16])
    >>> v["min-SNR loss weighting (average prior, 10 + 6 steps)"]
    {'cascade.stage1.loss_weighting': 'min_snr', 'cascade.stage2.loss_weighting': 'min_snr'}
    >>> v["v-prediction (average prior, 10 + 6 steps)"]
    {'cascade.stage1.prediction': 'v', 'cascade.stage2.prediction': 'v'}
    >>> p.update(deface={"voxel_mm": 2.0}); p["cascade"].update(voxel_mm=4.0, factor=2)
    >>> variants(p)["stage 2 at the study's grid"]
    {'cascade.voxel_mm': 2.0, 'cascade.factor': 4}
    """
    c = params["cascade"]
    out: dict[str, dict] = {"base recipe": {}}
    longer = {s: 4 * int(c[f"stage{s}"]["steps"]) for s in (1, 2)}
    # named with the steps it trains, so rows made from different base recipes stay apart
    out[f"4x steps ({longer[1]} + {longer[2]})"] = {f"cascade.stage{s}.steps": n for s, n in longer.items()}
    if any(c[f"stage{s}"].get("beta_schedule", "scaled_linear_beta") != "cosine" for s in (1, 2)):
        out["cosine schedule"] = {f"cascade.stage{s}.beta_schedule": "cosine" for s in (1, 2)}
    out["2x channels"] = {f"cascade.stage{s}.channels": [2 * int(ch) for ch in c[f"stage{s}"]["channels"]]
                          for s in (1, 2)}
    # named with the recipe they modify: later bases (a ridge prior, more steps) differ from the first rows'
    base = f"{c.get('prior', 'average')} prior, {c['stage1']['steps']} + {c['stage2']['steps']} steps"
    if any(c[f"stage{s}"].get("loss_weighting", "uniform") != "min_snr" for s in (1, 2)):
        out[f"min-SNR loss weighting ({base})"] = {f"cascade.stage{s}.loss_weighting": "min_snr" for s in (1, 2)}
    if any(c[f"stage{s}"].get("prediction", "x0") != "v" for s in (1, 2)):
        out[f"v-prediction ({base})"] = {f"cascade.stage{s}.prediction": "v" for s in (1, 2)}
    fine = float(params.get("deface", {}).get("voxel_mm", c.get("voxel_mm", 1.0)))
    ratio = float(c.get("voxel_mm", fine)) / fine
    if ratio > 1 and ratio.is_integer():  # stage 2 at the grid the faces are measured on, stage 1 where it was
        out["stage 2 at the study's grid"] = {"cascade.voxel_mm": fine,
                                              "cascade.factor": int(c.get("factor", 2) * ratio)}
    if c.get("stage2_coarse", refacing.STAGE2_COARSE[0]) == "stage1_samples":
        out["stage 2 on the downsampled original"] = {"cascade.stage2_coarse": "downsampled_truth"}
    if c.get("prior", "average") == "average":
        out["linear (ridge) prior"] = {"cascade.prior": "ridge"}
    return out


def variant_run(run: Run, overrides: dict) -> Run:
    """``run`` with its parameters changed by ``overrides``, in the same folder.

    Only the cascade may change: the data, the defacing and the refacing cache
    are keyed by what they depend on, so a variant reuses the run's cohort and
    defaced images and trains into its own checkpoint folder.
    """
    bad = [k for k in overrides if not str(k).startswith("cascade.")]
    if bad:
        raise ValueError(f"an ablation variant may change cascade.* settings only, not {bad}")
    params = validate_params(apply_overrides(run.params, overrides), source=f"ablation overrides {overrides!r}")
    return dataclasses.replace(run, params=params)


def evaluate_variant(run: Run, *, progress: bool = True) -> tuple[dict, pd.DataFrame]:
    """Train (cached), reface the validation subjects and measure their faces.

    Returns
    -------
    row : dict
        ``checkpoint`` (the cascade's cache folder name), ``stage1_steps``,
        ``stage2_steps``, ``stage1_val_loss``, ``stage2_val_loss``,
        ``stage1_val_tail_pct``, ``stage2_val_tail_pct`` (change of the validation
        loss over the last quarter of the steps, :func:`refacelib.diffusion.train.validation_trend`),
        ``train_seconds`` (measured when the checkpoints were made),
        ``n_subjects``, ``n_pairs``.
    msd : DataFrame
        The face table of the validation subjects (:func:`refacelib.pipeline.evaluation.face_msd_table`).
    """
    study = refacing.setup(run)
    ckpt, history = refacing.trained_cascade(run, study, progress=progress)
    val_ids = list(study.ids["val"])
    if not val_ids:
        raise ValueError("the ablation needs validation subjects (split 'val'); this dataset has none")
    refaced, _ = refacing.reface_test_set(run, study.deface_folder, ckpt, val_ids, study.methods, study.template,
                                          study.config, progress=progress, test_sets=["val"] * len(val_ids),
                                          val_ids=val_ids)
    msd, _, _ = evaluation.face_msd_table(study.deface_folder, refaced, study.template,
                                          {sid: "val" for sid in val_ids}, study.methods, keep_surfaces=False,
                                          progress=progress)
    trend = train.validation_trend(history).set_index("stage")
    row = {"checkpoint": ckpt.name, "n_subjects": len(val_ids), "n_pairs": len(val_ids) * len(study.methods),
           "train_seconds": round(float(history.groupby("stage")["seconds"].max().sum()), 1)}
    for s in (1, 2):
        row[f"stage{s}_steps"] = int(history.loc[history["stage"] == s, "step"].max())
        row[f"stage{s}_val_loss"] = float(trend["last_val_loss"].get(s, np.nan))
        # still falling over the last quarter of its steps (negative) or flat (near 0)
        row[f"stage{s}_val_tail_pct"] = float(trend["tail_change_pct"].get(s, np.nan))
    return row, msd


def summarise(msd: pd.DataFrame) -> dict:
    """Median paired difference (candidate - matched average face, mm) of each candidate.

    Keys ``<candidate>_minus_average_mm`` and ``<candidate>_closer`` (the share of
    subject x method pairs where the candidate is closer), and ``average_msd_mm``.

    Examples
    --------
    >>> msd = pd.DataFrame({"subject": ["a", "a", "b", "b"], "method": "m",
    ...                     "candidate": ["average", "refaced_mean"] * 2, "msd_mm": [2.0, 1.5, 2.0, 2.5]})
    >>> s = summarise(msd)
    >>> s["refaced_mean_minus_average_mm"], s["refaced_mean_closer"], s["average_msd_mm"]
    (0.0, 0.5, 2.0)
    """
    wide = msd.pivot_table(index=["subject", "method"], columns="candidate", values="msd_mm")
    out = {"average_msd_mm": float(wide[BASELINE].median())}
    pairs = [(cand, BASELINE) for cand in CANDIDATES] + [("refaced_mean", "swapped"), ("refaced_mean", "linear_permuted")]
    for cand, base in pairs:
        if cand in wide and base in wide:
            diff = (wide[cand] - wide[base]).dropna()
            out[f"{cand}_minus_{base}_mm"] = float(diff.median())
            out[f"{cand}_closer" if base == BASELINE else f"{cand}_closer_than_{base}"] = float((diff < 0).mean())
    return out


#: The column :func:`select` minimises: the person-specific gain of the mean of samples (its MSD
#: minus the swap check's, which adds another subject's learned residual to the same baseline).
SELECT_BY = "refaced_mean_minus_swapped_mm"


def select(table: pd.DataFrame) -> str:
    """The variant whose mean of samples gains most *for the person* on the validation split.

    The criterion is :data:`SELECT_BY`: the refaced face against the swap check,
    not against the average face, because a recipe can beat the average face by
    learning a better face for everybody, which adds nothing to re-identification
    (the swap check gains as much). Ties go to the earlier row (the base
    recipe comes first).

    Examples
    --------
    >>> select(pd.DataFrame({"variant": ["a", "b"], "refaced_mean_minus_swapped_mm": [-0.1, -0.3]}))
    'b'
    """
    return str(table.loc[table[SELECT_BY].idxmin(), "variant"])


def status_text(table: pd.DataFrame, own: str) -> str:
    """What the training chapter says of the comparison (Markdown): the selected recipe, the one this
    run's checkpoints were trained with (``own``) and, when they differ, by how much the selected one
    gains more for the person on the validation split (:data:`SELECT_BY`).

    Examples
    --------
    >>> t = pd.DataFrame({"variant": ["a", "b"], "selected": [False, True],
    ...                   "refaced_mean_minus_swapped_mm": [-1.400, -1.408]})
    >>> text = status_text(t, "a")
    >>> "trained with **a**, so the book does not yet use" in text, "**b** gains 0.008 mm more" in text
    (True, True)
    >>> status_text(t, "b").endswith("trained with **b**.")
    True
    """
    chosen = str(table.loc[table["selected"].astype(bool), "variant"].iloc[0])
    out = (f"Of the {len(table)} recipes compared, **{chosen}** gained most for the person on the validation "
           f"split; this run's checkpoints were trained with **{own}**")
    if chosen == own:
        return out + "."
    by = table.set_index("variant")[SELECT_BY]
    return out + (f", so the book does not yet use the recipe the validation split prefers (**{chosen}** gains "
                  f"{by[own] - by[chosen]:.3f} mm more for the person there; it would need its checkpoints, and "
                  "those of the controls, trained and shipped).")


def shipped_table(profile: str, *, root: Path | None = None) -> Path:
    """Where ``--ship`` puts the ablation table of ``profile`` (next to the shipped checkpoints)."""
    return Path(root or refacing.shipped_root()) / f"ablation-{profile}.csv"


def table_for_run(run: Run, checkpoint: str, *, root: Path | None = None) -> pd.DataFrame | None:
    """The ablation table that applies to this run: the run's own, else the shipped one.

    A table applies when one of its rows trained the very checkpoint the run
    uses (same configuration, data and code version); None otherwise.
    """
    for path in (run.tables / "ablation.csv", shipped_table(run.profile, root=root)):
        if path.is_file():
            table = pd.read_csv(path)
            if "checkpoint" in table and checkpoint in set(table["checkpoint"]):
                return table
    return None


def run_ablation(run: Run, *, names: list[str] | None = None, progress: bool = True) -> pd.DataFrame:
    """Every variant (or ``names``), one row each; saved to ``tables/ablation.csv`` after each."""
    table = variants(run.params)
    unknown = sorted(set(names or []) - set(table))
    if unknown:
        raise ValueError(f"unknown ablation variants {unknown}; known: {sorted(table)}")
    path = run.tables / "ablation.csv"
    # rows of variants not run now are kept (each is written when done)
    rows = pd.read_csv(path).to_dict("records") if path.is_file() else []
    for name, overrides in table.items():
        if names and name not in names:
            continue
        start = time.perf_counter()
        print(f"ablation: {name} ...", flush=True)
        row, msd = evaluate_variant(variant_run(run, overrides), progress=progress)
        # one row per trained model: a variant that trains an existing row's checkpoint replaces it
        rows = [r for r in rows if r["variant"] != name and r.get("checkpoint") != row["checkpoint"]]
        rows.append({"variant": name, "overrides": ", ".join(f"{k}={v}" for k, v in overrides.items()) or "-",
                     **row})
        save_table(msd.assign(variant=name), run.tables / "ablation_msd" / f"{row['checkpoint']}.csv")
        # every row's summary from its saved face table (rows of an older version gain new columns)
        rows = [{**r, **summarise(pd.read_csv(run.tables / "ablation_msd" / f"{r['checkpoint']}.csv"))}
                if (run.tables / "ablation_msd" / f"{r['checkpoint']}.csv").is_file() else r for r in rows]
        order = list(table)
        out = pd.DataFrame(rows).drop(columns="selected", errors="ignore")
        out = out.sort_values("variant", key=lambda v: v.map(lambda n: order.index(n) if n in order else len(order)),
                              kind="stable").reset_index(drop=True)
        out["selected"] = out["variant"] == select(out)
        save_table(out, path)
        print(f"ablation: {name} done in {time.perf_counter() - start:.0f} s", flush=True)
    return pd.read_csv(path)


def variant_names(text: str) -> list[str]:
    """The names of ``--variants``: comma-separated, a comma inside parentheses belonging to a name.

    Examples
    --------
    >>> variant_names("cosine schedule, v-prediction (ridge prior, 1200 + 960 steps)")
    ['cosine schedule', 'v-prediction (ridge prior, 1200 + 960 steps)']
    >>> variant_names("")
    []
    """
    return [n.strip() for n in re.split(r",(?![^()]*\))", text) if n.strip()]


def main(argv: list[str] | None = None) -> int:
    """``python -m refacelib.ablation --profile quick [--ship]``: compare recipes on the validation split."""
    import shutil

    from refacelib.pipeline.book import run_lock

    parser = argparse.ArgumentParser(prog="python -m refacelib.ablation", description=main.__doc__)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--dataset", default="phantom")
    parser.add_argument("--variants", default="", help="comma-separated names, as the training chapter lists them (default: all)")
    parser.add_argument("--ship", action="store_true", help=f"copy the table to checkpoints/ablation-<profile>.csv")
    args = parser.parse_args(argv)
    run = open_run(args.profile, args.dataset)
    names = variant_names(args.variants) or None
    with run_lock(run, holder="training-recipe ablation (make ablation)"):
        table = run_ablation(run, names=names)
    print(table.to_string(index=False))
    if args.ship:
        shutil.copyfile(run.tables / "ablation.csv", shipped_table(args.profile))
        print(f"shipped {shipped_table(args.profile)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
