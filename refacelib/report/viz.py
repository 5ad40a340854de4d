"""Figures of the book. Plotting only: every function takes computed data."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

from refacelib.data.privacy import sagittal_eye_bar
from refacelib.imaging.surface import head_mask

__all__ = ["placeholder_figure", "plot_demographics", "plot_montage", "plot_regions", "plot_deface_qc", "plot_mid_sagittal_row", "plot_muscle_correlations", "plot_loss_curves", "plot_ablation", "SIMULATION_NOTE"]

SIMULATION_NOTE = "phantom (simulated data)"


def _show_figures_in_notebooks() -> None:
    """Give figures a PNG display in a Jupyter kernel although the backend is Agg.

    With Agg chosen before pyplot, IPython has no image formatter for figures: a
    figure (shown, or glued with myst-nb) would reach the book as the text
    ``<Figure size ...>``. Registering the PNG formatter shows each figure once,
    where the chapter displays or glues it (Agg never shows figures by itself).
    """
    try:
        from IPython import get_ipython
        from IPython.core.pylabtools import select_figure_formats
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None:
        select_figure_formats(shell, {"png"}, bbox_inches="tight")


_show_figures_in_notebooks()


def _stamp(fig, note: str | None) -> None:
    if note:
        fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=8, color="0.4", style="italic")


def placeholder_figure(text: str):
    """A small figure that only says ``text``: it stands in for a numbered figure a run does not draw.

    A chapter's numbered figure (myst-nb ``glue:figure``) needs its glued figure in every
    run; where the figure is withheld (real faces) or has no data, this takes its place.

    Examples
    --------
    >>> fig = placeholder_figure("Not drawn.")
    >>> fig.axes[0].texts[0].get_text()
    'Not drawn.'
    """
    fig, ax = plt.subplots(figsize=(6.4, 0.9))
    ax.text(0.5, 0.5, text, ha="center", va="center", fontsize=10, style="italic", color="0.3", wrap=True)
    ax.set_axis_off()
    plt.close(fig)
    return fig


def plot_demographics(participants: pd.DataFrame, *, muscle_columns=(), note: str | None = None):
    """Age by split and site, sex counts, and each muscle measure against age."""
    n_panels = 2 + len(muscle_columns)
    fig, axes = plt.subplots(1, n_panels, figsize=(3.6 * n_panels, 3.4), constrained_layout=True)
    sns.histplot(participants, x="age", hue="split", multiple="stack", bins=12, ax=axes[0])
    axes[0].set_title("Age by split")
    sns.countplot(participants, x="split", hue="sex", ax=axes[1])
    axes[1].set_title("Sex by split")
    axes[1].tick_params(axis="x", rotation=30)
    for ax, col in zip(axes[2:], muscle_columns):
        sns.scatterplot(participants, x="age", y=col, hue="sex", s=18, ax=ax, legend=ax is axes[2])
        ax.set_title(col.replace("muscle_hu_", "Muscle HU: "))
        ax.set_ylabel("HU")
    _stamp(fig, note)
    return fig


def _wants_eye_bar(eye_bar: bool | None, note: str | None) -> bool:
    """Slices of real faces carry an eye bar: by default every figure not stamped as the phantom."""
    return note != SIMULATION_NOTE if eye_bar is None else bool(eye_bar)


def _cover_eyes(ax, bar: np.ndarray, *, pixel_mm: float) -> None:
    """Paint ``bar`` opaque pure black over an image axis, in a white frame.

    The frame (at least 3 mm) keeps the bar apart from black air or removed
    voxels, so that :func:`refacelib.data.privacy.eye_bars` finds it as one solid bar.
    """
    from scipy import ndimage

    bar = np.asarray(bar, bool).copy()
    width = max(1, int(round(3.0 / pixel_mm)))
    bar[:width], bar[-width:], bar[:, :width], bar[:, -width:] = False, False, False, False
    if not bar.any():
        return
    frame = ndimage.binary_dilation(bar, iterations=width) & ~bar
    rgba = np.zeros(bar.shape + (4,))
    rgba[frame] = (1.0, 1.0, 1.0, 1.0)
    rgba[bar] = (0.0, 0.0, 0.0, 1.0)
    ax.imshow(rgba, interpolation="nearest")


def plot_montage(slices: list[np.ndarray], labels: list[str], *, ncols: int = 6, note: str | None = None,
                 eye_bar: bool | None = None, pixel_mm: float | None = None):
    """Grid of 2-D sagittal slices (display orientation, values in [0, 1]) with a label each.

    ``eye_bar`` covers each face profile with a bar at eye level
    (:func:`refacelib.data.privacy.sagittal_eye_bar`; ``pixel_mm`` default: from
    the head's length); the default ``None`` bars every montage not stamped
    with :data:`SIMULATION_NOTE`, so slices of real faces are never shown bare.
    """
    bars = _wants_eye_bar(eye_bar, note)
    nrows = int(np.ceil(len(slices) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sl, label in zip(axes.ravel(), slices, labels):
        ax.imshow(sl, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=8)
        if bars:
            head = head_mask(np.asarray(sl, float)[None], fill_axes=(0,))[0]
            bar = sagittal_eye_bar(head, pixel_mm=pixel_mm)
            _cover_eyes(ax, bar, pixel_mm=pixel_mm or 190.0 / max(int(head.any(axis=0).sum()), 1))
    fig.tight_layout()
    _stamp(fig, note)
    return fig


def _mid_x(image: np.ndarray, head: np.ndarray | None = None) -> int:
    head = head_mask(image) if head is None else head
    return int(round(np.argwhere(head)[:, 0].mean()))


def _display(sl: np.ndarray) -> np.ndarray:
    """A (y, z) slice turned for display: superior up, anterior right."""
    return sl.T[::-1]


def plot_regions(template: np.ndarray, regions: dict, affine: np.ndarray, *, eye_world, note: str | None = None):
    """Each method's removal region (red) on a mid-sagittal and an axial template slice."""
    inv = np.linalg.inv(affine)
    x = int(round(template.shape[0] / 2))
    z = int(round((inv @ np.append(eye_world, 1.0))[2]))
    fig, axes = plt.subplots(2, len(regions), figsize=(2.6 * len(regions), 5.4), squeeze=False)
    vmax = np.percentile(template, 99)
    for col, (name, region) in enumerate(regions.items()):
        for row, (img, reg) in enumerate(((_display(template[x]), _display(region[x])),
                                          (template[:, :, z].T[::-1], region[:, :, z].T[::-1]))):
            ax = axes[row, col]
            ax.imshow(img, cmap="gray", vmin=0, vmax=vmax)
            ax.imshow(np.ma.masked_where(~reg, reg), cmap="autumn", alpha=0.55, vmin=0, vmax=1)
            ax.axis("off")
        axes[0, col].set_title(name.replace("_", " "), fontsize=9)
    fig.tight_layout()
    _stamp(fig, note)
    return fig


def plot_deface_qc(qc: pd.DataFrame, *, note: str | None = None):
    """Per method: fraction of the head removed, brain voxels touched, registration Dice."""
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.4), constrained_layout=True)
    order = list(dict.fromkeys(qc["method"]))
    for ax, col, title in zip(axes, ("removed_head_fraction", "brain_voxels_removed", "registration_dice"),
                              ("Fraction of head removed", "Brain voxels removed", "Registration Dice")):
        sns.stripplot(qc, x="method", y=col, order=order, ax=ax, size=3, alpha=0.7)
        sns.boxplot(qc, x="method", y=col, order=order, ax=ax, showfliers=False, fill=False, color="0.3")
        ax.set_title(title)
        ax.set_xlabel("")
        ax.tick_params(axis="x", rotation=35)
    _stamp(fig, note)
    return fig


def plot_mid_sagittal_row(images: dict, *, note: str | None = None, eye_bar: bool | None = None):
    """Mid-sagittal slices of one subject's versions (name -> (array, affine)), same window.

    ``eye_bar`` covers the face profile of every panel with the bar found on
    the FIRST image (put the intact original first;
    :func:`refacelib.data.privacy.sagittal_eye_bar`). The default ``None`` bars
    every row not stamped with :data:`SIMULATION_NOTE`: a real subject's
    profile is never shown bare.
    """
    first, affine = next(iter(images.values()))
    head = head_mask(first)
    x, vmax = _mid_x(first, head), np.percentile(first[first > 0], 99)
    bar, pixel_mm = None, float(np.sqrt(np.prod(np.linalg.norm(np.asarray(affine)[:3, 1:3], axis=0))))
    if _wants_eye_bar(eye_bar, note):
        bar = sagittal_eye_bar(_display(head[x]), pixel_mm=pixel_mm)
    fig, axes = plt.subplots(1, len(images), figsize=(2.2 * len(images), 2.6), squeeze=False)
    for ax, (name, (img, _)) in zip(axes[0], images.items()):
        ax.imshow(_display(img[x]), cmap="gray", vmin=0, vmax=vmax)
        ax.set_title(name.replace("_", " "), fontsize=9)
        ax.axis("off")
        if bar is not None:
            _cover_eyes(ax, bar, pixel_mm=pixel_mm)
    fig.tight_layout()
    _stamp(fig, note)
    return fig


def plot_ablation(table: pd.DataFrame, *, note: str | None = None):
    """Each training recipe's gain over the matched average face on the validation split.

    One row per variant: the median paired MSD difference (mm; left of zero = the first
    is closer to the true face) of the mean of samples, one sample and the swap check
    against the matched average face, and of the mean of samples against the swap
    check (the person-specific part, the selection criterion); the selected variant's
    label is bold.
    """
    marks = {"refaced_mean_minus_average_mm": ("o", "mean of samples - average face"),
             "refaced_minus_average_mm": ("s", "one sample - average face"),
             "swapped_minus_average_mm": ("x", "swap check - average face"),
             "refaced_mean_minus_swapped_mm": ("D", "mean of samples - swap check\n(gain for the person: selects)")}
    names = list(table["variant"])
    y = np.arange(len(names))[::-1]
    fig, ax = plt.subplots(figsize=(10.5, 0.55 * len(names) + 1.8), constrained_layout=True)
    ax.axvline(0.0, color="0.5", lw=0.8)
    for col, (marker, label) in marks.items():
        if col in table:
            ax.plot(table[col], y, marker, ms=7, ls="none", label=label, alpha=0.85)
    ax.set_yticks(y, names)
    if "selected" in table:
        for tick, chosen in zip(ax.get_yticklabels(), table["selected"].astype(bool)):
            tick.set_fontweight("bold" if chosen else "normal")
    ax.set_xlabel("median paired MSD difference (mm; < 0: the first is closer to the true face)")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    _stamp(fig, note)
    return fig


def plot_muscle_correlations(boot: pd.DataFrame, corr: pd.DataFrame, diff: pd.DataFrame, *,
                             labels: dict | None = None, note: str | None = None):
    """The paper's layout: one panel per muscle, resampled correlations per image, mean and 95% CI.

    A star above an image marks a paired-difference CI (original minus image) that
    excludes 0; a CI that excludes 0 is drawn in a solid colour, one that covers 0 hollow.
    An image whose correlation is undefined (NaN: the model's predictions were constant,
    as when defacing left no facial voxel) is labelled so instead of left blank.
    """
    muscles = list(dict.fromkeys(corr["muscle"]))
    images = list(dict.fromkeys(corr["image"]))
    labels = labels or {}
    fig, axes = plt.subplots(1, len(muscles), figsize=(4.2 * len(muscles), 4.0), sharey=True, squeeze=False)
    palette = dict(zip(images, sns.color_palette("tab10", len(images))))
    for ax, muscle in zip(axes[0], muscles):
        b = boot[boot["muscle"] == muscle]
        sns.stripplot(b, x="image", y="rho", order=images, hue="image", palette=palette, size=1.5,
                      alpha=0.25, jitter=0.3, ax=ax, legend=False)
        for i, image in enumerate(images):
            row = corr[(corr["muscle"] == muscle) & (corr["image"] == image)].iloc[0]
            if not np.isfinite(row["mean"]):  # constant predictions (e.g. no facial voxel left)
                ax.text(i, 0.02, "undefined:\nconstant\nprediction", ha="center", va="bottom", fontsize=7,
                        color="0.3")
                continue
            face = palette[image] if row["significant"] else "white"
            ax.errorbar(i, row["mean"], yerr=[[row["mean"] - row["ci_low"]], [row["ci_high"] - row["mean"]]],
                        fmt="o", color="black", mfc=face, ms=7, capsize=4, zorder=5)
            d = diff[(diff["muscle"] == muscle) & (diff["image"] == image)]
            flag = d["diff_significant"].iloc[0] if len(d) else None
            if pd.notna(flag) and bool(flag):  # None or NaN: an undefined comparison, no star
                ax.text(i, row["ci_high"] + 0.04, "*", ha="center", fontsize=14)
        ax.axhline(0, color="0.5", lw=0.8, ls="--")
        ax.set_title(muscle)
        ax.set_xticks(range(len(images)), [labels.get(i, i) for i in images], rotation=40, ha="right")
        ax.set_xlabel("")
        ax.set_ylabel("Spearman rho (predicted vs true residual)")
    fig.tight_layout()
    _stamp(fig, note)
    return fig


def plot_loss_curves(history: pd.DataFrame, *, note: str | None = None):
    """Training and validation loss of each stage against the step."""
    stages = sorted(history["stage"].unique())
    fig, axes = plt.subplots(1, len(stages), figsize=(4.5 * len(stages), 3.4), squeeze=False, constrained_layout=True)
    for ax, stage in zip(axes[0], stages):
        h = history[history["stage"] == stage]
        ax.plot(h["step"], h["loss"], lw=0.8, alpha=0.6, label="train (batch)")
        if "val_loss" in h and h["val_loss"].notna().any():
            v = h.dropna(subset=["val_loss"])
            ax.plot(v["step"], v["val_loss"], "o-", ms=3, label="validation (EMA)")
        ax.set_yscale("log")
        ax.set_title(f"stage {stage}: {'whole head, coarse' if stage == 1 else 'face box, fine'}")
        ax.set_xlabel("step")
        ax.set_ylabel("masked x0 MSE")
        ax.legend(fontsize=8)
    _stamp(fig, note)
    return fig
