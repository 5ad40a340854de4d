"""The overview figure of the landing page, drawn from a run's own images and tables.

Plotting only (the renders and tables are computed by the caller). Top row:
original -> defacing -> defaced -> refacing model -> refaced, as rendered
surfaces of one test subject. Bottom row: the head-body link, the facial voxels
(on a mid-sagittal slice) that predict CT muscle radiodensity, and the run's
Spearman correlations from the original and from each defaced image.
"""
from __future__ import annotations

import matplotlib
import matplotlib.colors

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

__all__ = ["mid_sagittal", "plot_overview"]


def mid_sagittal(volume: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """The sagittal slice through the centre of ``mask``, turned for display (superior up, anterior right).

    Examples
    --------
    >>> v = np.zeros((5, 4, 3)); v[2, 1, 2] = 1
    >>> mid_sagittal(v, v > 0).shape
    (3, 4)
    """
    x = int(round(np.argwhere(mask)[:, 0].mean()))
    return volume[x].T[::-1]


def _arrow(ax, text: str) -> None:
    ax.axis("off")
    ax.annotate("", xy=(0.95, 0.5), xytext=(0.05, 0.5), xycoords="axes fraction",
                arrowprops=dict(arrowstyle="-|>", lw=2, color="0.25"))
    ax.text(0.5, 0.58, text, ha="center", va="bottom", fontsize=8, wrap=True, transform=ax.transAxes)


def _image(ax, image, title: str) -> None:
    ax.axis("off")
    ax.set_title(title, fontsize=9)
    if image is None:
        ax.text(0.5, 0.5, "withheld\n(publish_faces is false)", ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
        return
    ax.imshow(image, cmap="gray", interpolation="nearest")


def _muscle_bars(ax, corr: pd.DataFrame | None, labels: dict) -> None:
    if corr is None or corr.empty:
        ax.axis("off")
        ax.text(0.5, 0.5, "no CT muscle columns in this dataset", ha="center", va="center", fontsize=8,
                transform=ax.transAxes)
        return
    muscles = list(dict.fromkeys(corr["muscle"]))
    images = list(dict.fromkeys(corr["image"]))
    width = 0.8 / len(images)
    colors = plt.get_cmap("tab10")
    for j, image in enumerate(images):
        sub = corr[corr["image"] == image].set_index("muscle").reindex(muscles)
        x = np.arange(len(muscles)) + (j - (len(images) - 1) / 2) * width
        err = np.vstack([sub["mean"] - sub["ci_low"], sub["ci_high"] - sub["mean"]])
        label = labels.get(image, image) + (" (undefined)" if sub["mean"].isna().all() else "")
        ax.bar(x, sub["mean"], width, yerr=err, color=colors(j), label=label,
               error_kw=dict(lw=0.7, capsize=1.5))
    ax.axhline(0, color="0.4", lw=0.8)
    ax.set_xticks(range(len(muscles)), muscles)
    ax.set_ylabel("Spearman rho", fontsize=8)
    ax.set_title("predicted vs true CT muscle radiodensity\n(mean, 95% resampling CI)", fontsize=9)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    ax.tick_params(labelsize=7)


def plot_overview(views: dict, *, steps: list[str], face_slice: np.ndarray | None, eye_bar: np.ndarray | None = None,
                  face_region: np.ndarray | None, corr: pd.DataFrame | None,
                  labels: dict | None = None, titles: dict | None = None, note: str | None = None):
    """The study at a glance (the paper's first figure, from this run).

    Parameters
    ----------
    views : dict
        Three entries, name -> RGB (H, W, 3) render or None (withheld):
        original, defaced, refaced, in this order.
    steps : list of str
        The two arrow labels: the defacing step and the refacing model.
    eye_bar : 2-D bool array or None
        Pixels of ``face_slice`` painted opaque black (a real subject's eye bar,
        :func:`refacelib.data.privacy.sagittal_eye_bar`).
    face_slice, face_region : 2-D arrays or None
        A mid-sagittal slice of the original (display orientation) and the facial
        voxels on it; None withholds the slice.
    corr : DataFrame or None
        ``tables/muscle_corr.csv`` (muscle, image, mean, ci_low, ci_high).
    labels : dict, optional
        Image name -> label for the legend.
    titles : dict, optional
        View name -> panel title (default: the name).
    note : str, optional
        Stamp in the lower right corner (the simulation note).
    """
    if len(views) != 3 or len(steps) != 2:
        raise ValueError("plot_overview: need three views and two steps")
    fig = plt.figure(figsize=(11, 6.6))
    rows = fig.add_gridspec(2, 1, hspace=0.4)
    top = rows[0].subgridspec(1, 5, width_ratios=[3, 1.4, 3, 1.4, 3], wspace=0.05)
    bottom = rows[1].subgridspec(1, 5, width_ratios=[3, 1.4, 0.5, 4.6, 1.6], wspace=0.05)
    titles = titles or {}
    for col, name in zip((0, 2, 4), views):
        _image(fig.add_subplot(top[0, col]), views[name], titles.get(name, name))
    for col, text in zip((1, 3), steps):
        _arrow(fig.add_subplot(top[0, col]), text)
    ax = fig.add_subplot(bottom[0, 0])
    _image(ax, face_slice, "facial voxels (red)")
    if face_slice is not None and face_region is not None:
        red = matplotlib.colors.ListedColormap(["red"])
        ax.imshow(np.ma.masked_where(~face_region, face_region), cmap=red, alpha=0.45, vmin=0, vmax=1)
    if face_slice is not None and eye_bar is not None and np.any(eye_bar):
        black = matplotlib.colors.ListedColormap(["black"])
        ax.imshow(np.ma.masked_where(~np.asarray(eye_bar, bool), eye_bar), cmap=black, vmin=0, vmax=1)
    _arrow(fig.add_subplot(bottom[0, 1]), "PCA + ridge,\nout of fold;\nSpearman rho,\nresampled")
    _muscle_bars(fig.add_subplot(bottom[0, 3]), corr, labels or {})
    fig.text(0.01, 0.97, "Re-identification risk", fontsize=11, weight="bold")
    fig.text(0.01, 0.47, "Research potential: head -> body CT", fontsize=11, weight="bold")
    if note:
        fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=8, color="0.4", style="italic")
    return fig
