"""Tables that put this run next to the paper, and the run's settings as a reader reads them.

Each function takes this run's tables (DataFrames) or parameters and returns a
DataFrame or a dict; nothing is read or written here. The paper's numbers come
from :mod:`refacelib.report.paper` and keep a ``paper_`` prefix, so a table
never mixes them up with ours.
"""
from __future__ import annotations

from typing import Iterable

import pandas as pd

from refacelib.report import paper
from refacelib.report.values import fmt_ci

__all__ = ["EXTERNAL_TEST_SETS", "msd_vs_paper", "muscle_vs_paper", "run_settings"]

#: Test sets that stand for the paper's external cohort ("test" when a dataset has one test set).
EXTERNAL_TEST_SETS: tuple[str, ...] = ("test_external", "test")


def msd_vs_paper(msd: pd.DataFrame, *, estimator: str,
                 test_sets: Iterable[str] = EXTERNAL_TEST_SETS) -> pd.DataFrame:
    """Median MSD of the refaced face per method (ours and the follow-up work's), and of the average face.

    Parameters
    ----------
    msd : DataFrame
        ``tables/face_msd.csv`` (test_set, method, candidate, msd_mm, ...).
    estimator : str
        Our refaced candidate (the profile's ``reid.headline_estimator``).
    test_sets : iterable of str
        Our test sets compared with the paper's external cohort.

    Returns
    -------
    DataFrame
        Columns ``method, ours_median_msd_mm, paper_median_msd_mm`` (two decimals), one row per
        method and one ``average (mri_reface)`` row: ours is the template average face, the
        paper's is mri_reface's population-average face.

    Examples
    --------
    >>> msd = pd.DataFrame({"test_set": ["test_external"] * 3 + ["test_internal"],
    ...                     "method": ["pydeface"] * 4,
    ...                     "candidate": ["refaced", "refaced", "template_average", "refaced"],
    ...                     "msd_mm": [1.0, 2.0, 3.0, 9.0]})
    >>> row = msd_vs_paper(msd, estimator="refaced").set_index("method").loc["pydeface"]
    >>> float(row["ours_median_msd_mm"]), float(row["paper_median_msd_mm"])
    (1.5, 0.8)
    >>> float(msd_vs_paper(msd, estimator="refaced").set_index("method").loc["average (mri_reface)", "ours_median_msd_mm"])
    3.0
    """
    ours = msd[msd["test_set"].isin(list(test_sets))]
    refaced = ours[ours["candidate"] == estimator].groupby("method")["msd_mm"].median().round(2)
    refaced = refaced.rename("ours_median_msd_mm").reset_index()
    average = ours[ours["candidate"] == "template_average"]["msd_mm"].median()
    refaced = pd.concat([refaced, pd.DataFrame([{"method": "average (mri_reface)",
                                                 "ours_median_msd_mm": round(average, 2)}])])
    return refaced.merge(paper.refaced_msd_medians(), on="method", how="outer")


def muscle_vs_paper(corr: pd.DataFrame, *, labels: dict | None = None, decimals: int = 3) -> pd.DataFrame:
    """Our Spearman correlations beside the paper's, per muscle and image.

    ``corr`` is ``tables/muscle_corr.csv`` (muscle, image, mean, ci_low, ci_high, ...).
    Returns ``corr``'s columns, the paper's (``paper_mean``, ``paper_ci_low``,
    ``paper_ci_high``; empty where the paper has none), ``ours`` and ``paper (real data)``
    as ``mean [low, high]`` text; images carry the paper's labels
    (:data:`refacelib.report.paper.IMAGE_LABELS`).

    Examples
    --------
    >>> corr = pd.DataFrame({"muscle": ["thigh"], "image": ["original"], "mean": [0.5],
    ...                      "ci_low": [0.25], "ci_high": [0.75]})
    >>> muscle_vs_paper(corr)[["image", "ours", "paper (real data)"]].iloc[0].tolist()
    ['original', '0.500 [0.250, 0.750]', '0.360 [0.209, 0.493]']
    """
    labels = paper.IMAGE_LABELS if labels is None else labels
    side = corr.merge(paper.muscle_correlations(), on=["muscle", "image"], how="left")
    side["ours"] = [fmt_ci(*r, decimals=decimals) for r in side[["mean", "ci_low", "ci_high"]].to_numpy()]
    side["paper (real data)"] = [fmt_ci(*r, decimals=decimals)
                                 for r in side[["paper_mean", "paper_ci_low", "paper_ci_high"]].to_numpy()]
    side["image"] = side["image"].map(lambda image: labels.get(image, image))
    return side


def run_settings(params: dict, config) -> dict:
    """The settings a reader needs to read the results (glued as ``p_<name>`` in the comparison chapter).

    ``params`` is the run's profile (its ``cascade``, ``muscle`` and ``deface`` sections);
    ``config`` the cascade's :class:`~refacelib.diffusion.cascade.CascadeConfig` (steps,
    schedule and timesteps of each stage as trained).

    Examples
    --------
    >>> from types import SimpleNamespace as NS
    >>> stage = NS(train_timesteps=1000, beta_schedule="linear", steps=300)
    >>> params = {"cascade": {"voxel_mm": 4.0, "factor": 2, "sampler": "ddim", "sample_steps": 20, "n_samples": 3},
    ...           "muscle": {"n_boot": 200, "n_splits": 5, "n_components": 10, "stride": 2},
    ...           "deface": {"voxel_mm": 2.0}}
    >>> s = run_settings(params, NS(stage1=stage, stage2=NS(steps=240)))
    >>> s["stage1_mm"], s["stage2_mm"], s["sampler"], s["stage2_steps"], s["deface_mm"]
    ('8', '4', 'DDIM', 240, '2')
    """
    cascade, muscle = params["cascade"], params["muscle"]
    return {
        "stage1_mm": f"{cascade['voxel_mm'] * cascade['factor']:g}", "stage2_mm": f"{cascade['voxel_mm']:g}",
        "factor": cascade["factor"], "sampler": cascade["sampler"].upper(), "sample_steps": cascade["sample_steps"],
        "n_samples": cascade["n_samples"], "train_timesteps": config.stage1.train_timesteps,
        "beta_schedule": config.stage1.beta_schedule, "stage1_steps": config.stage1.steps,
        "stage2_steps": config.stage2.steps, "n_boot": muscle["n_boot"], "n_splits": muscle["n_splits"],
        "n_components": muscle["n_components"], "stride": muscle["stride"],
        "deface_mm": f"{params['deface']['voxel_mm']:g}",
    }
