"""Figures of the re-identification analysis (plotting only).

Every function takes tables or arrays computed by :mod:`refacelib.evaluation.reid`
(the tidy MSD table ``subject, test_set, method, candidate, msd_mm``, CMC
curves) and returns a :class:`matplotlib.figure.Figure`; ``note`` stamps a
small string in the bottom-right corner (e.g. "phantom (simulated data)").
"""
from __future__ import annotations

from typing import Mapping, Sequence

import matplotlib
import matplotlib.layout_engine

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

__all__ = ["plot_msd_distributions", "plot_bland_altman", "plot_cmc", "plot_paired_differences",
           "plot_dose_response", "plot_offsets", "CANDIDATE_LABELS"]

CANDIDATE_LABELS = {
    "refaced": "refaced (one sample)",
    "refaced_mean": "refaced (mean of samples)",
    "average": "cohort average face",
    "template_average": "template average face",
    "defaced": "defaced",
    "linear": "linear prior alone (ridge)",
    "linear_permuted": "linear prior fitted to shuffled faces (person-independent)",
    "swapped": "swap check (another subject's residual)",
    "oracle": "oracle face (phantom's E[face | rest of head])",
}
MSD_LABEL = "MSD to the original face (mm)"


def _stamp(fig, note: str | None) -> None:
    """Small grey italic note in the figure's bottom-right corner.

    With constrained layout the axes are kept clear of the note's strip.
    """
    if note:
        engine = fig.get_layout_engine()
        if isinstance(engine, matplotlib.layout_engine.ConstrainedLayoutEngine):
            engine.set(rect=(0.0, 0.035, 1.0, 0.965))
        fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=8, color="0.4",
                 style="italic")


def _msd_panel(ax, sub: pd.DataFrame, *, order, candidates, palette) -> None:
    """Split violins (one candidate per half), narrow boxes and jittered points."""
    kw = dict(x="method", y="msd_mm", hue="candidate", order=order, hue_order=list(candidates),
              ax=ax)
    if sub["msd_mm"].notna().any():
        sns.violinplot(sub, split=len(candidates) == 2, inner=None, cut=0, linewidth=0.8,
                       palette=palette, density_norm="width", legend=False, **kw)
        for coll in ax.collections:
            coll.set_alpha(0.45)
        sns.boxplot(sub, width=0.25, showfliers=False, fill=False, linewidth=1.0,
                    palette=palette, gap=0.3, legend=False, **kw)
        sns.stripplot(sub, dodge=True, jitter=0.08, size=3, palette=palette, alpha=0.8,
                      legend=False, **kw)
    ax.set_xlabel("defacing method")
    ax.set_ylabel(MSD_LABEL)
    ax.tick_params(axis="x", rotation=30)


def plot_msd_distributions(msd: pd.DataFrame, *,
                           candidates: Sequence[str] = ("refaced_mean", "average"),
                           test_sets: Sequence[str] | None = None,
                           note: str | None = None):
    """MSD distributions per defacing method, one panel per test set.

    For each method the two ``candidates`` share a split violin (left and
    right halves), with a box and the per-subject points of each.

    Returns
    -------
    matplotlib.figure.Figure
        One axis per test set.
    """
    if test_sets is None:
        test_sets = list(dict.fromkeys(msd["test_set"]))
    data = msd[msd["candidate"].isin(candidates)]
    order = sorted(data["method"].unique())
    palette = dict(zip(candidates, sns.color_palette("colorblind", len(candidates))))
    fig, axes = plt.subplots(1, len(test_sets), figsize=(1.2 + 1.3 * max(len(order), 2)
                                                         * len(test_sets), 3.8),
                             squeeze=False, sharey=True, constrained_layout=True)
    for ax, ts in zip(axes[0], test_sets):
        _msd_panel(ax, data[data["test_set"] == ts], order=order, candidates=candidates,
                   palette=palette)
        ax.set_title(str(ts))
    handles = [matplotlib.patches.Patch(color=palette[c], label=CANDIDATE_LABELS.get(c, c))
               for c in candidates]
    fig.legend(handles=handles, loc="outside upper center", ncols=len(candidates),
               frameon=False, fontsize=9)
    _stamp(fig, note)
    return fig


def _ba_pairs(msd: pd.DataFrame, a: str, b: str) -> pd.DataFrame:
    """Per-subject ``a``/``b`` MSD pairs with their mean and difference."""
    wide = msd.pivot(index=["method", "test_set", "subject"], columns="candidate",
                     values="msd_mm")[[a, b]].dropna().reset_index()
    wide["mean"] = 0.5 * (wide[a] + wide[b])
    wide["diff"] = wide[a] - wide[b]
    return wide


def plot_bland_altman(msd: pd.DataFrame, *, a: str = "refaced_mean", b: str = "average",
                      note: str | None = None):
    """Bland-Altman plot of candidate ``a`` vs ``b`` MSD, pooled over methods.

    Each point is one subject x method x test set (coloured by method): x
    the mean of the two MSDs, y their difference ``a - b`` (negative: ``a``
    closer to the original face). Lines: bias (mean difference) and the 95%
    limits of agreement (bias +/- 1.96 SD), zero dotted.

    Returns
    -------
    matplotlib.figure.Figure
        One axis.
    """
    pairs = _ba_pairs(msd, a, b)
    fig, ax = plt.subplots(figsize=(5.2, 4.0), constrained_layout=True)
    sns.scatterplot(pairs, x="mean", y="diff", hue="method", s=22, ax=ax, palette="colorblind")
    ax.axhline(0.0, color="0.6", ls=":", lw=1)
    if len(pairs) >= 2:
        bias, sd = float(pairs["diff"].mean()), float(pairs["diff"].std(ddof=1))
        for y, label, ls in ((bias, f"bias {bias:.2f}", "-"),
                             (bias + 1.96 * sd, f"+1.96 SD {bias + 1.96 * sd:.2f}", "--"),
                             (bias - 1.96 * sd, f"-1.96 SD {bias - 1.96 * sd:.2f}", "--")):
            ax.axhline(y, color="0.2", ls=ls, lw=1)
            ax.annotate(label, (1.0, y), xycoords=("axes fraction", "data"), ha="right",
                        va="bottom", fontsize=8)
    la, lb = CANDIDATE_LABELS.get(a, a), CANDIDATE_LABELS.get(b, b)
    ax.set_title(f"{la} vs {lb}", fontsize=10)
    ax.set_xlabel("mean of the two MSDs (mm)")
    ax.set_ylabel(f"MSD difference {a} - {b} (mm)")
    if ax.get_legend() is not None:
        ax.legend(title="method", fontsize=8, title_fontsize=8)
    _stamp(fig, note)
    return fig


def plot_cmc(curves: Mapping[str, np.ndarray], *, note: str | None = None):
    """Cumulative match characteristic curves (identification rate vs rank).

    Parameters
    ----------
    curves : dict
        ``{label: cmc array}`` (from :func:`refacelib.evaluation.reid.cmc`), value k-1 the
        fraction of candidates whose true original ranks within the top k.

    Returns
    -------
    matplotlib.figure.Figure
        One axis.
    """
    fig, ax = plt.subplots(figsize=(4.8, 3.8), constrained_layout=True)
    n_max = 1
    for label, curve in curves.items():
        curve = np.asarray(curve, dtype=float)
        k = np.arange(1, len(curve) + 1)
        ax.step(k, curve, where="post", label=label, marker="o", ms=3)
        n_max = max(n_max, len(curve))
    ax.plot([1, n_max], [1 / n_max, 1.0], color="0.6", ls=":", lw=1, label="chance")
    ax.set_xlabel("rank k")
    ax.set_ylabel("identification rate (rank <= k)")
    ax.set_ylim(0, 1.02)
    ax.legend(fontsize=8)
    _stamp(fig, note)
    return fig


def plot_paired_differences(tests: pd.DataFrame, *, baseline: str = "average",
                            estimators: Sequence[str] = ("refaced", "refaced_mean", "swapped", "oracle"),
                            floor_mm: float | None = None, note: str | None = None):
    """Forest plot: Hodges-Lehmann paired difference (candidate - baseline, mm) with its 95% interval.

    One panel per test set, one row per method, one marker per estimator; left of
    zero the candidate's face is closer to the original than the baseline's.
    ``floor_mm`` (the test-retest floor) is drawn as a shaded band +-floor around zero.
    """
    sub = tests[(tests["baseline"] == baseline) & tests["estimator"].isin(estimators)]
    sets = sorted(sub["test_set"].unique())
    methods = list(dict.fromkeys(sub["method"]))
    present = [e for e in estimators if e in set(sub["estimator"])]
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(5.2 * max(len(sets), 1), 0.55 * len(methods) + 1.8),
                             sharey=True, squeeze=False, layout="constrained")
    colors = dict(zip(present, sns.color_palette("colorblind", len(present))))
    for ax, test_set in zip(axes[0], sets):
        part = sub[sub["test_set"] == test_set]
        if floor_mm is not None and np.isfinite(floor_mm):
            ax.axvspan(-floor_mm, floor_mm, color="0.9", zorder=0, label="test-retest floor")
        ax.axvline(0, color="0.3", lw=0.8)
        for k, est in enumerate(present):
            rows = part[part["estimator"] == est].set_index("method").reindex(methods)
            y = np.arange(len(methods)) + (k - (len(present) - 1) / 2) * min(0.18, 0.8 / len(present))
            err = np.vstack([rows["hl_diff_mm"] - rows["ci_low_mm"], rows["ci_high_mm"] - rows["hl_diff_mm"]])
            ax.errorbar(rows["hl_diff_mm"], y, xerr=err, fmt="o", ms=4, capsize=2, color=colors[est],
                        label=CANDIDATE_LABELS.get(est, est))
        ax.set_yticks(np.arange(len(methods)), methods)
        ax.invert_yaxis()
        ax.set_title(test_set)
        ax.set_xlabel(f"paired difference vs {CANDIDATE_LABELS.get(baseline, baseline)} (mm)")
    axes[0][0].legend(fontsize=7, loc="best")
    _stamp(fig, note)
    return fig


def plot_dose_response(controls: pd.DataFrame, *, estimator: str = "refaced_mean", baseline: str = "average",
                       note: str | None = None):
    """Paired difference (estimator - matched baseline, mm) with 95% intervals against ``face_coupling``.

    One line per method, one panel per test set; ``controls`` is ``tables/controls.csv``.
    """
    sub = controls[(controls["estimator"] == estimator) & (controls["baseline"] == baseline)]
    sets = sorted(sub["test_set"].unique())
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(5.2 * max(len(sets), 1), 3.6), sharey=True,
                             squeeze=False, layout="constrained")
    methods = list(dict.fromkeys(sub["method"]))
    colors = dict(zip(methods, sns.color_palette("colorblind", len(methods))))
    for ax, test_set in zip(axes[0], sets):
        part = sub[sub["test_set"] == test_set]
        for k, method in enumerate(methods):
            rows = part[part["method"] == method].sort_values("coupling")
            x = rows["coupling"] + (k - (len(methods) - 1) / 2) * 0.012
            err = np.vstack([rows["hl_diff_mm"] - rows["ci_low_mm"], rows["ci_high_mm"] - rows["hl_diff_mm"]])
            ax.errorbar(x, rows["hl_diff_mm"], yerr=err, fmt="o-", ms=4, capsize=2, lw=1, color=colors[method],
                        label=method)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_title(test_set)
        ax.set_xlabel("face_coupling (0: the null phantom)")
    base = {"average": "matched baseline", "swapped": "swap check"}.get(baseline, baseline)
    axes[0][0].set_ylabel(f"{CANDIDATE_LABELS.get(estimator, estimator)}\nminus {base} (mm)")
    fig.suptitle("face_coupling: how much of the face the rest of the head predicts (phantom)", fontsize=9)
    axes[0][0].legend(fontsize=7)
    _stamp(fig, note)
    return fig


def plot_offsets(offsets: pd.DataFrame, *, coupling: float = 0.0,
                 candidates: Sequence[str] = ("average", "refaced_mean", "swapped", "oracle"),
                 note: str | None = None):
    """Median signed surface offset (mm; negative: inside the true skin) per method and candidate at one coupling.

    ``offsets`` is ``tables/controls_offsets.csv`` (:func:`refacelib.controls.offsets_table` per
    coupling). One panel per test set, one bar per candidate.
    """
    sub = offsets[np.isclose(offsets["coupling"], coupling) & offsets["candidate"].isin(candidates)]
    sets = sorted(sub["test_set"].unique())
    fig, axes = plt.subplots(1, max(len(sets), 1), figsize=(5.2 * max(len(sets), 1), 3.6), sharey=True,
                             squeeze=False, layout="constrained")
    present = [c for c in candidates if c in set(sub["candidate"])]
    colors = dict(zip(present, sns.color_palette("colorblind", len(present))))
    width = 0.8 / max(len(present), 1)
    for ax, test_set in zip(axes[0], sets):
        part = sub[sub["test_set"] == test_set]
        methods = list(dict.fromkeys(part["method"]))
        for k, cand in enumerate(present):
            rows = part[part["candidate"] == cand].set_index("method").reindex(methods)
            x = np.arange(len(methods)) + (k - (len(present) - 1) / 2) * width
            ax.bar(x, rows["offset_mm"], width=width, color=colors[cand], label=CANDIDATE_LABELS.get(cand, cand))
        ax.set_xticks(np.arange(len(methods)), methods, rotation=30, ha="right", fontsize=8)
        ax.axhline(0, color="0.3", lw=0.8)
        ax.set_title(f"{test_set}, " + ("the null phantom" if coupling == 0 else f"face_coupling {coupling:g}"))
    axes[0][0].set_ylabel("median signed offset (mm)\n< 0: inside the true skin")
    axes[0][0].legend(fontsize=7)
    _stamp(fig, note)
    return fig
