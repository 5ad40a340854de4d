"""Figures of the book. Plotting only: every function takes computed data."""
from __future__ import annotations

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import seaborn as sns  # noqa: E402

__all__ = ["plot_demographics", "plot_montage", "SIMULATION_NOTE"]

SIMULATION_NOTE = "phantom (simulated data)"


def _stamp(fig, note: str | None) -> None:
    if note:
        fig.text(0.995, 0.005, note, ha="right", va="bottom", fontsize=8, color="0.4", style="italic")


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


def plot_montage(slices: list[np.ndarray], labels: list[str], *, ncols: int = 6, note: str | None = None):
    """Grid of 2-D slices (already oriented for display) with a label each."""
    nrows = int(np.ceil(len(slices) / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(2.0 * ncols, 2.3 * nrows), squeeze=False)
    for ax in axes.ravel():
        ax.axis("off")
    for ax, sl, label in zip(axes.ravel(), slices, labels):
        ax.imshow(sl, cmap="gray", vmin=0, vmax=1, interpolation="nearest")
        ax.set_title(label, fontsize=8)
    fig.tight_layout()
    _stamp(fig, note)
    return fig
