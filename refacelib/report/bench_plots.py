"""Figures of the Performance appendix: benchmark tables in, figures out (plotting only)."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.ticker  # noqa: E402
import matplotlib.pyplot as plt  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["plot_registration_tradeoff", "plot_sampler_tradeoff", "plot_cost_curves", "plot_gpu_budget"]


def plot_registration_tradeoff(summary: pd.DataFrame, *, reference: str, tolerance_mm: float):
    """Median error (IQR bars) against median CPU seconds, one marker per setting, owner's and attacker's side.

    ``summary`` is :func:`refacelib.bench.registration.registration_summary`'s table (setting, side,
    cpu_seconds, rms_mm, rms_q1, rms_q3, floor_mm, chosen); ``reference`` the book's setting, whose
    error plus ``tolerance_mm`` is drawn as the line a cheaper setting must stay under.
    """
    fig, axes = plt.subplots(1, 2, figsize=(10, 4.4), sharey=True)
    markers = dict(zip(summary["setting"].unique(), "osD^v<>Pp*hX"))
    for ax, side in zip(axes, ("owner", "attacker")):
        s = summary[summary["side"] == side]
        for _, r in s.iterrows():
            ax.errorbar(r["cpu_seconds"], r["rms_mm"], yerr=[[r["rms_mm"] - r["rms_q1"]], [r["rms_q3"] - r["rms_mm"]]],
                        fmt=markers[r["setting"]], capsize=3, label=r["setting"] + (" (chosen)" if r["chosen"] else ""),
                        mfc="none" if not r["chosen"] else None)
        ref = s[s["setting"] == reference].iloc[0]
        ax.axhline(ref["rms_mm"] + tolerance_mm, color="grey", ls="--", lw=1, label="current + tolerance")
        ax.axhline(s["floor_mm"].median(), color="grey", ls=":", lw=1, label="affine floor (median)")
        # a failed registration is centimetres off: the frame stops at twice the current error
        ax.set_ylim(0.8 * s["floor_mm"].median(), 2 * ref["rms_mm"])
        ax.margins(x=0.1)
        ax.set(title=f"{side}'s registration", xlabel="CPU seconds per registration (median)")
    axes[0].set_ylabel("error (mm), median and IQR")
    handles, labels = axes[0].get_legend_handles_labels()
    fig.legend(handles, labels, loc="lower center", ncol=5, fontsize=8, frameon=False)
    fig.tight_layout(rect=(0, 0.14, 1, 1))
    return fig


def plot_sampler_tradeoff(summary: pd.DataFrame, average_msd: float):
    """Median MSD (IQR bars) and wall time against network evaluations, DDIM and DDPM.

    ``summary`` is :func:`refacelib.bench.quality.sampler_summary`'s table (sampler, kind, nfe,
    seconds, msd_median, msd_q1, msd_q3); ``average_msd`` the cohort-average face's median MSD
    (a dashed line: what a sampler must beat).
    """
    fig, (ax_msd, ax_time) = plt.subplots(1, 2, figsize=(10, 3.8))
    for kind, marker in (("ddim", "o"), ("ddpm", "s")):
        s = summary[summary["kind"] == kind]
        err = [s["msd_median"] - s["msd_q1"], s["msd_q3"] - s["msd_median"]]
        ax_msd.errorbar(s["nfe"], s["msd_median"], yerr=err, fmt=marker + "-", capsize=3, label=kind.upper())
        ax_time.plot(s["nfe"], s["seconds"], marker + "-", label=kind.upper())
        for _, r in s.iterrows():
            ax_msd.annotate(r["sampler"], (r["nfe"], r["msd_median"]), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    ax_msd.axhline(average_msd, color="grey", ls="--", lw=1, label="cohort-average face")
    ax_msd.set(xscale="log", xlabel="network evaluations per face", ylabel="face MSD (mm), median and IQR")
    ax_time.set(xscale="log", yscale="log", xlabel="network evaluations per face", ylabel="wall time (s)")
    for ax in (ax_msd, ax_time):
        ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_cost_curves(measured: pd.DataFrame, lines: pd.DataFrame, paper_n: int, cores: int):
    """Wall seconds of each stage against the cohort: measured points, fitted lines out to the paper's cohort.

    ``measured`` and ``lines`` hold stage, n_subjects, seconds (:func:`refacelib.bench.costs.measure_costs`
    and :func:`refacelib.bench.costs.projection_lines`); ``paper_n`` is the paper's cohort (a star
    per stage at the end of each line), ``cores`` the workers of the measurement.
    """
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for i, (stage, g) in enumerate(measured.groupby("stage", sort=False)):
        line = lines[lines["stage"] == stage]
        ax.plot(g["n_subjects"], g["seconds"], "o", color=f"C{i}", label=stage)
        ax.plot(line["n_subjects"], line["seconds"], "-", color=f"C{i}", lw=1)
        ax.plot([paper_n], [line["seconds"].iloc[-1]], "*", color=f"C{i}", ms=9)
    ax.set(xscale="log", yscale="log", xlabel="cohort size (subjects, in the paper's split proportions)",
           ylabel=f"wall time on {cores} cores (s)",
           title="points: measured; lines: fitted; stars: the paper's cohort, projected")
    ax.axvline(paper_n, color="grey", ls=":", lw=1)
    ax.annotate("paper cohort", (paper_n, 0.02), xycoords=("data", "axes fraction"), xytext=(-4, 0),
                textcoords="offset points", ha="right", fontsize=8, color="grey")
    ax.title.set_fontsize(9)
    ax.legend(fontsize=8, loc="upper left")
    fig.tight_layout()
    return fig


def plot_gpu_budget(table: pd.DataFrame, budget_hours: float, *, card: str = "the measured GPU"):
    """Hours to reface the paper's cohort against the change in face MSD, one marker per setting and sample count.

    ``table`` is :func:`refacelib.bench.settings.budget_table`'s (setting, steps, compiled, samples,
    hours, change_mm, change_q1, change_q3); a vertical dashed line marks ``budget_hours``. Settings
    without a measured MSD change are drawn at zero change, labelled "(MSD not measured)".
    """
    fig, ax = plt.subplots(figsize=(8, 4.6))
    measured = table.dropna(subset=["change_mm"])
    for i, (setting, g) in enumerate(table.groupby("setting", sort=False)):
        g = g.sort_values("samples")
        has = g.dropna(subset=["change_mm"])
        style = dict(color=f"C{i}", marker="s" if g["compiled"].any() else "o",
                     mfc="none" if g["compiled"].any() else None)
        if len(has):
            err = [has["change_mm"] - has["change_q1"], has["change_q3"] - has["change_mm"]]
            ax.errorbar(has["hours"], has["change_mm"], yerr=err, capsize=3, ls="-", lw=1, label=setting, **style)
            for _, r in has.iterrows():
                ax.annotate(f"x{int(r['samples'])}", (r["hours"], r["change_mm"]), textcoords="offset points",
                            xytext=(3, 3), fontsize=7, color=f"C{i}")
        else:
            ax.plot(g["hours"], [0] * len(g), ls="none", label=f"{setting} (MSD not measured)", **style)
    ax.axvline(budget_hours, color="grey", ls="--", lw=1, label=f"{budget_hours:g} GPU-hour")
    ax.axhline(0, color="grey", lw=0.5)
    ax.set(xscale="log", xlabel=f"hours to reface the paper's cohort on {card}",
           ylabel="change in face MSD from the paper's setting (mm)\nmedian and IQR over subjects"
           if len(measured) else "face MSD change (not measured)")
    ax.xaxis.set_major_formatter(matplotlib.ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    return fig
