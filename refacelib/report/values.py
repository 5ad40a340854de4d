"""The public report: key-result values from a run's tables, and each chapter's provenance footer.

Every number on the landing page and on the comparison page is glued from a
chapter. The functions here turn the run's tidy tables (``tables/*.csv``) into
the strings that are glued, so that the rules (which test set, which
estimator, how a p-value is written) live in one tested place. Keys are made
for every method the paper studied (:data:`PAPER_METHODS`), whether or not the
run has it: a method the run lacks reads ``n/a``, so a page that names all of
them always builds.

The footer (:func:`provenance_markdown`) states refacelib's version, the git
commit, the profile, the dataset label, the parameter hash, the device and the
chapter's wall time.

Every table a chapter shows goes through :func:`reader_table`: no index, human
column names, p-values as ``< 0.001`` (:func:`fmt_pvalue`), an estimate and its
interval in one cell, a sideways-scrolling container, long tables summarised
with the full table folded, and a CSV download link (:func:`csv_link`).

Examples
--------
>>> fmt_p(0.000012)
'1.2e-05'
>>> fmt_ci(0.41, 0.24, 0.55)
'0.41 [0.24, 0.55]'
"""
from __future__ import annotations

import math
import numbers
import time
from typing import Iterable

import numpy as np
import pandas as pd

from refacelib import __version__
from refacelib._utils.device import resolve_device
from refacelib._utils.git import git_commit
from refacelib._utils.hashing import stable_hash
from refacelib._utils.paths import dataset_label, project_root
from refacelib.report import paper

__all__ = [
    "is_significant",
    "count_significant",
    "reid_test_values",
    "gap_key_values",
    "ceiling_text",
    "PAPER_METHODS",
    "MUSCLES",
    "muscle_chapter_values",
    "NA",
    "fmt_mm",
    "fmt_p",
    "fmt_rate",
    "fmt_ci",
    "fmt_pvalue",
    "fmt_number",
    "MAX_ROWS",
    "format_table",
    "key_value_table",
    "csv_link",
    "archive_link",
    "ReaderTable",
    "reader_table",
    "headline_test_set",
    "read_table",
    "face_key_values",
    "floor_key_values",
    "person_key_values",
    "reid_key_values",
    "muscle_key_values",
    "msd_comparison_values",
    "muscle_comparison_values",
    "example_msd_values",
    "closer_counts",
    "muscle_test_values",
    "emulated_methods",
    "method_engines",
    "provenance_fields",
    "provenance_markdown",
    "chapter_footer",
]

#: The defacing methods of the paper, in its order (our names).
PAPER_METHODS: tuple[str, ...] = tuple(m for m in paper.IMAGE_LABELS if m != "original")
#: The CT muscle levels of the paper.
MUSCLES: tuple[str, ...] = ("abdomen", "thigh", "shin")
#: What a key reads when the run has no value for it.
NA = "n/a"


def _missing(value) -> bool:
    try:
        return value is None or math.isnan(float(value))
    except (TypeError, ValueError):
        return True


def fmt_mm(value, *, decimals: int = 2) -> str:
    """A distance in mm with ``decimals`` decimals, ``n/a`` when missing.

    Examples
    --------
    >>> fmt_mm(1.2345), fmt_mm(float("nan"))
    ('1.23', 'n/a')
    """
    return NA if _missing(value) else f"{float(value):.{decimals}f}"


def fmt_p(value) -> str:
    """A p-value with two significant digits (``n/a`` when missing).

    Examples
    --------
    >>> fmt_p(0.0123), fmt_p(0.5)
    ('0.012', '0.5')
    """
    return NA if _missing(value) else f"{float(value):.2g}"


def fmt_rate(value) -> str:
    """A rate in [0, 1] with two decimals.

    Examples
    --------
    >>> fmt_rate(0.6)
    '0.60'
    """
    return NA if _missing(value) else f"{float(value):.2f}"


def fmt_ci(mean, low, high, *, decimals: int = 2) -> str:
    """``mean [low, high]``; ``undefined`` when the mean is missing (e.g. a constant prediction).

    Examples
    --------
    >>> fmt_ci(float("nan"), float("nan"), float("nan"))
    'undefined'
    """
    if _missing(mean):
        return "undefined"
    return f"{mean:.{decimals}f} [{low:.{decimals}f}, {high:.{decimals}f}]"


def read_table(folder, name: str) -> pd.DataFrame | None:
    """``<folder>/<name>.csv``, or None when no chapter wrote it (e.g. a dataset without muscle columns).

    Examples
    --------
    >>> read_table("/nonexistent", "reid") is None
    True
    """
    from pathlib import Path

    path = Path(folder) / f"{name}.csv"
    return pd.read_csv(path) if path.exists() else None


def headline_test_set(test_sets: Iterable[str]) -> str:
    """The test set the headline numbers come from: the external one when present.

    Examples
    --------
    >>> headline_test_set(["test_internal", "test_external"])
    'test_external'
    >>> headline_test_set(["test"])
    'test'
    """
    names = sorted(set(test_sets))
    if not names:
        raise ValueError("headline_test_set: no test set in the table")
    return "test_external" if "test_external" in names else names[-1]


def face_key_values(summary: pd.DataFrame, tests: pd.DataFrame, *, estimator: str,
                    baseline: str = "average", methods: Iterable[str] = PAPER_METHODS,
                    alpha: float = 0.05) -> dict[str, str]:
    """Refaced vs average-face MSD per method on the headline test set, with the test's p.

    Parameters
    ----------
    summary : DataFrame
        ``tables/face_msd_summary.csv`` (method, test_set, candidate, median_mm, ...).
    tests : DataFrame
        ``tables/face_tests.csv`` (method, test_set, estimator, baseline, p, p_holm,
        hl_diff_mm, ci_low_mm, ci_high_mm, ...).
    estimator : str
        The refaced candidate of the headline (``refaced`` or ``refaced_mean``).
    baseline : str
        The average face compared against (``average``: the training cohort's).
    alpha : float
        Level of the Holm-corrected test for ``key_closer_<method>``.

    Returns
    -------
    dict
        ``key_test_set``, ``key_estimator``, ``key_baseline``, ``key_n_closer``
        (``"k of n"``) and per method ``key_msd_refaced_<m>``,
        ``key_msd_average_<m>``, ``key_diff_<m>`` (Hodges-Lehmann paired difference
        with its 95% interval), ``key_p_<m>`` (Holm-corrected), ``key_closer_<m>``
        (``yes``: significantly closer; ``no, farther``/``no, tie``; the rule of every count).

    Examples
    --------
    >>> s = pd.DataFrame({"method": ["pydeface"] * 2, "test_set": ["test_external"] * 2,
    ...                   "candidate": ["refaced_mean", "average"], "median_mm": [1.0, 1.5]})
    >>> t = pd.DataFrame({"method": ["pydeface"], "test_set": ["test_external"],
    ...                   "estimator": ["refaced_mean"], "baseline": ["average"],
    ...                   "p_holm": [0.001], "hl_diff_mm": [-0.4], "ci_low_mm": [-0.6], "ci_high_mm": [-0.2]})
    >>> v = face_key_values(s, t, estimator="refaced_mean", methods=["pydeface"])
    >>> v["key_msd_refaced_pydeface"], v["key_p_pydeface"], v["key_closer_pydeface"]
    ('1.00', '0.001', 'yes')
    """
    test_set = headline_test_set(summary["test_set"])
    med = summary[summary["test_set"] == test_set].set_index(["method", "candidate"])["median_mm"]
    sel = tests[(tests["test_set"] == test_set) & (tests["estimator"] == estimator) & (tests["baseline"] == baseline)]
    sel = sel.set_index("method")
    out = {"key_test_set": test_set, "key_estimator": estimator, "key_baseline": baseline}
    n_closer = n_tested = 0
    for m in methods:
        out[f"key_msd_refaced_{m}"] = fmt_mm(med.get((m, estimator)))
        out[f"key_msd_average_{m}"] = fmt_mm(med.get((m, baseline)))
        row = sel.loc[m] if m in sel.index else None
        p = None if row is None else row["p_holm"]
        out[f"key_p_{m}"] = fmt_p(p)
        out[f"key_diff_{m}"] = NA if row is None else fmt_ci(row["hl_diff_mm"], row["ci_low_mm"], row["ci_high_mm"])
        if _missing(p):
            out[f"key_closer_{m}"] = NA
            continue
        n_tested += 1
        closer = bool(is_significant(sel.loc[[m]], sign=-1, alpha=alpha).iloc[0])
        n_closer += closer
        out[f"key_closer_{m}"] = "yes" if closer else ("no, farther" if p < alpha else "no, tie")
    out["key_n_closer"] = f"{n_closer} of {n_tested}"
    return out


def reid_key_values(reid: pd.DataFrame, *, estimator: str, methods: Iterable[str] = PAPER_METHODS) -> dict[str, str]:
    """Top-1 identification rates of the matching attack on the headline test set.

    Parameters
    ----------
    reid : DataFrame
        ``tables/reid.csv`` (method, test_set, candidate, n, top1, top5).
    estimator : str
        The refaced candidate (``refaced`` or ``refaced_mean``).

    Returns
    -------
    dict
        ``key_reid_test_set``, ``key_reid_n``, ``key_chance`` (1/n) and per method
        ``key_top1_refaced_<m>``, ``key_top1_average_<m>``, ``key_top1_defaced_<m>``.

    Examples
    --------
    >>> r = pd.DataFrame({"method": ["quickshear"] * 2, "test_set": ["test_external"] * 2,
    ...                   "candidate": ["refaced_mean", "average"], "n": [20, 20],
    ...                   "top1": [0.55, 0.65], "top5": [0.9, 0.9]})
    >>> v = reid_key_values(r, estimator="refaced_mean", methods=["quickshear"])
    >>> v["key_top1_refaced_quickshear"], v["key_chance"], v["key_top1_defaced_quickshear"]
    ('0.55', '0.05', 'n/a')
    """
    test_set = headline_test_set(reid["test_set"])
    sub = reid[reid["test_set"] == test_set]
    top1 = sub.set_index(["method", "candidate"])["top1"]
    n = int(sub["n"].max())
    out = {"key_reid_test_set": test_set, "key_reid_n": str(n), "key_chance": fmt_rate(1 / n)}
    for m in methods:
        for name, cand in (("refaced", estimator), ("average", "average"), ("defaced", "defaced")):
            out[f"key_top1_{name}_{m}"] = fmt_rate(top1.get((m, cand)))
    return out


def muscle_key_values(corr: pd.DataFrame | None, *, images: Iterable[str] = ("original", *PAPER_METHODS),
                      muscles: Iterable[str] = MUSCLES, decimals: int = 2) -> dict[str, str]:
    """Spearman rho (mean [95% CI]) per muscle and image, and its significance.

    Parameters
    ----------
    corr : DataFrame or None
        ``tables/muscle_corr.csv`` (muscle, image, mean, ci_low, ci_high,
        significant); None when the dataset has no muscle columns (every key
        then reads ``n/a``).

    Returns
    -------
    dict
        ``key_rho_<muscle>_<image>`` and ``key_sig_<muscle>_<image>`` (``yes``/``no``).

    Examples
    --------
    >>> c = pd.DataFrame({"muscle": ["shin"], "image": ["original"], "mean": [0.376],
    ...                   "ci_low": [0.207], "ci_high": [0.538], "significant": [True]})
    >>> muscle_key_values(c, images=["original"], muscles=["shin"])
    {'key_rho_shin_original': '0.38 [0.21, 0.54]', 'key_sig_shin_original': 'yes'}
    >>> undefined = c.assign(mean=float("nan"), ci_low=float("nan"), ci_high=float("nan"), significant=False)
    >>> muscle_key_values(undefined, images=["original"], muscles=["shin"])
    {'key_rho_shin_original': 'undefined', 'key_sig_shin_original': 'n/a'}
    """
    table = None if corr is None else corr.set_index(["muscle", "image"])
    out = {}
    for muscle in muscles:
        for image in images:
            if table is None or (muscle, image) not in table.index:
                out[f"key_rho_{muscle}_{image}"] = out[f"key_sig_{muscle}_{image}"] = NA
                continue
            row = table.loc[(muscle, image)]
            out[f"key_rho_{muscle}_{image}"] = fmt_ci(row["mean"], row["ci_low"], row["ci_high"], decimals=decimals)
            # an undefined correlation (constant prediction) is neither significant nor not
            out[f"key_sig_{muscle}_{image}"] = (NA if _missing(row["mean"]) else
                                                "yes" if bool(row["significant"]) else "no")
    return out


def msd_comparison_values(vs_paper: pd.DataFrame, *, methods: Iterable[str] = PAPER_METHODS) -> dict[str, str]:
    """Median refaced-face MSD, ours and the paper's, per method and for the average face.

    ``vs_paper`` is ``tables/face_msd_vs_paper.csv`` (method, ours_median_msd_mm,
    paper_median_msd_mm); its row ``average (mri_reface)`` gives the keys
    ``ours_msd_average`` and ``paper_msd_average``.

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["mri_deface"], "ours_median_msd_mm": [1.43],
    ...                   "paper_median_msd_mm": [0.45]})
    >>> v = msd_comparison_values(t, methods=["mri_deface"])
    >>> v["ours_msd_mri_deface"], v["paper_msd_mri_deface"], v["ours_msd_average"]
    ('1.43', '0.45', 'n/a')
    """
    table = vs_paper.set_index("method")
    out = {}
    for key, row in [(m, m) for m in methods] + [("average", "average (mri_reface)")]:
        for who in ("ours", "paper"):
            value = table[f"{who}_median_msd_mm"].get(row) if row in table.index else None
            out[f"{who}_msd_{key}"] = fmt_mm(value)
    return out


def muscle_comparison_values(corr: pd.DataFrame | None, *, images: Iterable[str] = ("original", *PAPER_METHODS),
                             muscles: Iterable[str] = MUSCLES, decimals: int = 3) -> dict[str, str]:
    """Spearman rho mean [95% CI], ours (``ours_rho_*``) and the paper's (``paper_rho_*``).

    Both at the paper's precision (three decimals, as read off its figure).

    Examples
    --------
    >>> muscle_comparison_values(None, images=["original"], muscles=["thigh"])
    {'ours_rho_thigh_original': 'n/a', 'paper_rho_thigh_original': '0.360 [0.209, 0.493]'}
    """
    images, muscles = list(images), list(muscles)
    ours = muscle_key_values(corr, images=images, muscles=muscles, decimals=decimals)
    theirs = paper.muscle_correlations().set_index(["muscle", "image"])
    out = {}
    for muscle in muscles:
        for image in images:
            out[f"ours_rho_{muscle}_{image}"] = ours[f"key_rho_{muscle}_{image}"]
            row = theirs.loc[(muscle, image)] if (muscle, image) in theirs.index else None
            out[f"paper_rho_{muscle}_{image}"] = (NA if row is None else fmt_ci(
                row["paper_mean"], row["paper_ci_low"], row["paper_ci_high"], decimals=decimals))
    return out


def example_msd_values(msd: pd.DataFrame, *, method: str, estimator: str, test_set: str | None = None) -> dict[str, str]:
    """Median MSD of the defaced, refaced and average face under one method (the paper's example row).

    The paper reports one MRI_Deface subject; ours is the median over the
    headline test set, so the keys say ``median``.

    Examples
    --------
    >>> m = pd.DataFrame({"subject": ["a", "a", "a"], "test_set": ["test"] * 3,
    ...                   "method": ["mri_deface"] * 3, "candidate": ["defaced", "refaced", "average"],
    ...                   "msd_mm": [9.0, 1.2, 1.3]})
    >>> example_msd_values(m, method="mri_deface", estimator="refaced")["ours_example_refaced"]
    '1.20'
    """
    test_set = test_set or headline_test_set(msd["test_set"])
    sub = msd[(msd["test_set"] == test_set) & (msd["method"] == method)]
    med = sub.groupby("candidate")["msd_mm"].median()
    return {f"ours_example_{name}": fmt_mm(med.get(cand))
            for name, cand in (("defaced", "defaced"), ("refaced", estimator), ("average", "average"))}


def closer_counts(tests: pd.DataFrame, *, estimator: str, baseline: str = "average", alpha: float = 0.05,
                  test_sets: Iterable[str] = ("test_internal", "test_external"),
                  prefix: str = "ours_n_closer") -> dict[str, str]:
    """Methods whose refaced face is significantly closer than the baseline, per test set.

    ``<prefix>_<test_set>`` reads ``"k of n"``: Holm-corrected p < ``alpha``
    and a negative paired shift (Hodges-Lehmann), out of the methods tested.

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["a", "b"], "test_set": ["test_external"] * 2,
    ...                   "estimator": ["refaced"] * 2, "baseline": ["average"] * 2,
    ...                   "p_holm": [0.01, 0.01], "hl_diff_mm": [-0.2, 0.3]})
    >>> closer_counts(t, estimator="refaced")
    {'ours_n_closer_test_internal': 'n/a', 'ours_n_closer_test_external': '1 of 2'}
    """
    sel = tests[(tests["estimator"] == estimator) & (tests["baseline"] == baseline)].dropna(subset=["p_holm"])
    out = {}
    for test_set in test_sets:
        sub = sel[sel["test_set"] == test_set]
        k = count_significant(sub, sign=-1, alpha=alpha)
        out[f"{prefix}_{test_set}"] = f"{k} of {len(sub)}" if len(sub) else NA
    return out


def muscle_test_values(corr: pd.DataFrame | None, diff: pd.DataFrame | None, *, labels: dict | None = None,
                       threshold: float = 1e-4) -> dict[str, str]:
    """The muscle headlines: tests of original vs each image, and the images significant for the shin.

    Parameters
    ----------
    corr : DataFrame or None
        ``tables/muscle_corr.csv``.
    diff : DataFrame or None
        ``tables/muscle_diff.csv`` (muscle, image, diff_mean, ci_low, ci_high, wilcoxon_p).
    labels : dict, optional
        Image name -> the paper's label (default :data:`refacelib.report.paper.IMAGE_LABELS`).
    threshold : float
        The paper's p threshold for the Wilcoxon test.

    Returns
    -------
    dict
        ``ours_n_wilcoxon`` and ``ours_n_diff`` (``"k of n"`` comparisons with
        Wilcoxon p below ``threshold``, with a paired-difference CI excluding 0),
        ``ours_shin_significant`` (labels of the images whose shin CI excludes 0).

    Examples
    --------
    >>> d = pd.DataFrame({"muscle": ["shin"] * 2, "image": ["pydeface", "skullstrip"],
    ...                   "diff_mean": [0.1, float("nan")], "ci_low": [0.02, float("nan")],
    ...                   "ci_high": [0.2, float("nan")], "wilcoxon_p": [1e-9, float("nan")]})
    >>> c = pd.DataFrame({"muscle": ["shin", "shin"], "image": ["original", "pydeface"],
    ...                   "significant": [True, False]})
    >>> muscle_test_values(c, d)
    {'ours_n_wilcoxon': '1 of 1', 'ours_n_diff': '1 of 1', 'ours_shin_significant': 'original'}
    """
    if corr is None or diff is None:
        return {"ours_n_wilcoxon": NA, "ours_n_diff": NA, "ours_shin_significant": NA}
    labels = labels or paper.IMAGE_LABELS
    counts = _muscle_diff_counts(diff, threshold=threshold)
    shin = corr[(corr["muscle"] == "shin") & corr["significant"].astype(bool)]["image"]
    return {
        "ours_n_wilcoxon": f"{counts['wilcoxon']} of {counts['tested']}",
        "ours_n_diff": f"{counts['diff']} of {counts['tested']}",
        "ours_shin_significant": ", ".join(labels.get(i, i) for i in shin) or "none",
    }


def _muscle_diff_counts(diff: pd.DataFrame, *, threshold: float) -> dict[str, int]:
    """Comparisons of ``tables/muscle_diff.csv``: tested (defined), Wilcoxon p below ``threshold``,
    paired-difference CI excluding 0, and undefined (a constant prediction, e.g. skull-stripping)."""
    tested = diff.dropna(subset=["diff_mean", "wilcoxon_p"])
    excludes = (tested["ci_low"] > 0) | (tested["ci_high"] < 0)
    return {"tested": len(tested), "wilcoxon": int((tested["wilcoxon_p"] < threshold).sum()),
            "diff": int(excludes.sum()), "undefined": len(diff) - len(tested)}


def muscle_chapter_values(corr: pd.DataFrame | None, diff: pd.DataFrame | None, *,
                          threshold: float = 1e-4) -> dict[str, str]:
    """The counts the muscle chapter's prose quotes, by the same rule as :func:`muscle_test_values`.

    Parameters
    ----------
    corr, diff : DataFrame or None
        ``tables/muscle_corr.csv`` and ``tables/muscle_diff.csv``; None without muscle
        columns (every value then reads ``n/a``).
    threshold : float
        The paper's p threshold for the Wilcoxon test.

    Returns
    -------
    dict
        ``n_original_significant`` of ``n_muscles`` (the original image's CI excludes 0);
        ``n_diff_significant`` and ``n_wilcoxon_significant`` of ``n_diff`` defined
        comparisons; ``n_diff_undefined`` comparisons without a correlation (constant
        prediction), left out of ``n_diff``.

    Examples
    --------
    >>> d = pd.DataFrame({"muscle": ["shin"] * 2, "image": ["pydeface", "skullstrip"],
    ...                   "diff_mean": [0.1, float("nan")], "ci_low": [-0.02, float("nan")],
    ...                   "ci_high": [0.2, float("nan")], "wilcoxon_p": [1e-9, float("nan")]})
    >>> c = pd.DataFrame({"muscle": ["shin", "shin"], "image": ["original", "pydeface"],
    ...                   "significant": [True, False]})
    >>> muscle_chapter_values(c, d)
    {'n_original_significant': '1', 'n_muscles': '1', 'n_diff_significant': '0', 'n_wilcoxon_significant': '1', 'n_diff': '1', 'n_diff_undefined': '1'}
    """
    keys = ("n_original_significant", "n_muscles", "n_diff_significant", "n_wilcoxon_significant", "n_diff",
            "n_diff_undefined")
    if corr is None or diff is None:
        return dict.fromkeys(keys, NA)
    originals = corr[corr["image"] == "original"]
    counts = _muscle_diff_counts(diff, threshold=threshold)
    values = (int(originals["significant"].astype(bool).sum()), len(originals), counts["diff"], counts["wilcoxon"],
              counts["tested"], counts["undefined"])
    return {k: str(v) for k, v in zip(keys, values)}


def is_significant(tests: pd.DataFrame, *, sign: int, alpha: float) -> pd.Series:
    """The one rule of "significantly closer" (``sign=-1``) or "farther" (``+1``) in every count of the book.

    Holm-corrected p below ``alpha`` and a Hodges-Lehmann paired shift (the signed-rank
    test's own estimate, ``hl_diff_mm``) of that sign.
    """
    return (tests["p_holm"] < alpha) & (sign * tests["hl_diff_mm"] > 0)


def count_significant(tests: pd.DataFrame, *, sign: int, alpha: float) -> int:
    """Rows with Holm p < ``alpha`` and a paired shift of ``sign`` (-1: the estimator closer, +1: farther)."""
    return int(is_significant(tests, sign=sign, alpha=alpha).sum())


def reid_test_values(tests: pd.DataFrame, *, estimator: str, alpha: float = 0.05) -> dict:
    """The counts and the two paragraphs the re-identification chapter glues from its paired tests.

    ``tests`` is :func:`refacelib.controls.face_tests`'s table (every method and test set).
    Counts (int): ``n_closer`` of ``n_comparisons`` (``estimator`` significantly closer than the
    matched baseline ``average``), ``n_swap_closer`` (the swap check closer than the matched
    baseline), ``n_person_closer`` (``estimator`` closer than the swap check). Paragraphs
    (Markdown): ``linear_text``, what the diffusion stages add to the linear prior, and
    ``person_text``, the gain over the person-independent baseline (``linear_permuted``), each
    saying what the run lacks when it has no linear prior. Significant: Holm p < ``alpha`` and a
    Hodges-Lehmann shift of the right sign.

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["a", "a", "a"], "test_set": ["test_external"] * 3,
    ...                   "estimator": ["refaced", "swapped", "refaced"], "baseline": ["average", "average", "swapped"],
    ...                   "p_holm": [0.01, 0.2, 0.03], "hl_diff_mm": [-0.4, -0.1, -0.3]})
    >>> v = reid_test_values(t, estimator="refaced")
    >>> v["n_closer"], v["n_comparisons"], v["n_swap_closer"], v["n_person_closer"]
    (1, 1, 0, 1)
    >>> v["linear_text"]
    "This run's cascade learns its residual over the matched average head (no linear prior)."
    """
    def rows(est: str, base: str) -> pd.DataFrame:
        return tests[(tests["baseline"] == base) & (tests["estimator"] == est)]

    def med(t: pd.DataFrame) -> str:
        return f"{t['hl_diff_mm'].median():+.2f} mm"

    sig = lambda t, sign: count_significant(t, sign=sign, alpha=alpha)  # noqa: E731
    headline = rows(estimator, "average")
    out = {"n_closer": sig(headline, -1), "n_comparisons": len(headline),
           "n_swap_closer": sig(rows("swapped", "average"), -1),
           "n_person_closer": sig(rows(estimator, "swapped"), -1)}
    over_linear, lin_vs_avg = rows(estimator, "linear"), rows("linear", "average")
    if len(over_linear):
        out["linear_text"] = (
            f"**What do the diffusion stages add?** This run's cascade refines a linear prior (see the training "
            f"chapter). The linear prior alone is significantly closer than the matched baseline in "
            f"{sig(lin_vs_avg, -1)} of {len(lin_vs_avg)} comparisons; the refaced face is significantly closer than "
            f"the linear prior alone in {sig(over_linear, -1)} of {len(over_linear)} and significantly farther in "
            f"{sig(over_linear, 1)} (rows 'vs linear' in the full table).")
    else:
        out["linear_text"] = "This run's cascade learns its residual over the matched average head (no linear prior)."
    over_permuted, lin_over_permuted = rows(estimator, "linear_permuted"), rows("linear", "linear_permuted")
    permuted_vs_avg = rows("linear_permuted", "average")
    if len(over_permuted):
        out["person_text"] = (
            f"**The person-independent baseline.** The same linear prior fitted to *shuffled* faces (each training "
            f"head paired with another subject's face, its penalty chosen on shuffled validation pairs; "
            f"`linear_permuted`) can learn only what is common to faces. It is significantly closer than the "
            f"matched baseline in {sig(permuted_vs_avg, -1)} of {len(permuted_vs_avg)} comparisons (median shift "
            f"{med(permuted_vs_avg)}): that much of the gain needs no person. The refaced face is significantly closer "
            f"than it in {sig(over_permuted, -1)} of {len(over_permuted)} comparisons (median shift {med(over_permuted)}), "
            f"and the linear prior fitted to the true pairs in {sig(lin_over_permuted, -1)} of {len(lin_over_permuted)} "
            f"({med(lin_over_permuted)}; rows 'vs linear_permuted' in the full table): this is the part of the gain "
            f"that comes from each subject's own face.")
    else:
        out["person_text"] = ("This run has no linear prior, so no person-independent baseline is fitted here; the "
                              "permutation control ([Controls](09_controls.ipynb)) plays that part.")
    return out


def person_key_values(tests: pd.DataFrame, *, estimator: str, alpha: float = 0.05) -> dict[str, str]:
    """Is the gain about the person? Counts of methods on the headline test set.

    ``key_swap_n_closer``: the swap check (a subject's baseline plus another subject's
    learned residual) significantly closer than the matched baseline; ``key_person_n_closer``:
    the refaced face (``estimator``) significantly closer than the swap check;
    ``key_permuted_n_closer``: the refaced face significantly closer than the
    person-independent baseline (the linear prior fitted to shuffled faces, ``linear_permuted``;
    ``n/a`` without it), the part of the gain that belongs to the person. All read ``"k of n"``.

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["a", "a"], "test_set": ["test_external"] * 2,
    ...                   "estimator": ["swapped", "refaced"], "baseline": ["average", "swapped"],
    ...                   "p_holm": [0.01, 0.5], "hl_diff_mm": [-0.2, -0.01]})
    >>> person_key_values(t, estimator="refaced")
    {'key_swap_n_closer': '1 of 1', 'key_person_n_closer': '0 of 1', 'key_permuted_n_closer': 'n/a'}
    """
    test_set = headline_test_set(tests["test_set"])
    out = {}
    for key, est, base in (("key_swap_n_closer", "swapped", "average"), ("key_person_n_closer", estimator, "swapped"),
                           ("key_permuted_n_closer", estimator, "linear_permuted")):
        sub = tests[(tests["test_set"] == test_set) & (tests["estimator"] == est) & (tests["baseline"] == base)]
        sub = sub.dropna(subset=["p_holm"])
        out[key] = f"{count_significant(sub, sign=-1, alpha=alpha)} of {len(sub)}" if len(sub) else NA
    return out


def gap_key_values(gap: pd.DataFrame | None, *, exclude=("skullstrip",)) -> dict[str, str]:
    """``key_gap_closed``: a sentence on the share of the oracle gap the refaced face closes.

    ``gap`` is :func:`refacelib.evaluation.reid.gap_closed`'s table; methods in ``exclude``
    (skull-stripping removes far more than the face) are left out. Without an
    oracle (real data) the sentence says the attainable gain is unknown.

    Examples
    --------
    >>> g = pd.DataFrame({"test_set": "t", "method": ["a", "a"], "candidate": ["refaced_mean", "refaced"],
    ...                   "fraction": [0.5, 0.2]})
    >>> "a median 50% of the gap" in gap_key_values(g)["key_gap_closed"]
    True
    >>> gap_key_values(None)["key_gap_closed"].startswith("This dataset has no oracle")
    True
    >>> "subject by subject" in gap_key_values(g.assign(fraction_per_subject=[0.6, 0.3]))["key_gap_closed"]
    True
    >>> g2 = pd.concat([g, g.iloc[:1].assign(candidate="linear", fraction=0.4)])
    >>> gap_key_values(g2)["key_gap_closed"].endswith("linear prior alone (before the diffusion stages) closes a median 40% (range 40% to 40%).")
    True
    """
    if gap is None or len(gap) == 0:
        return {"key_gap_closed": "This dataset has no oracle face (real data), so the attainable gain is unknown."}
    kept = gap[~gap["method"].isin(exclude)]
    mean, one = kept[kept["candidate"] == "refaced_mean"], kept[kept["candidate"] == "refaced"]
    return {"key_gap_closed": (
        "The oracle face (what the rest of the phantom's head predicts) bounds what a model can gain over the "
        f"matched average face. For the {kept['method'].nunique()} face-removal methods "
        f"(skull-stripping aside) on {kept['test_set'].nunique()} test sets, the mean of samples closes a median "
        f"{mean['fraction'].median():.0%} of the gap between the matched average face and the oracle "
        f"(range {mean['fraction'].min():.0%} to {mean['fraction'].max():.0%}; half or more in "
        f"{int((mean['fraction'] >= 0.5).sum())} of {len(mean)} method x test-set cells), and a single sample "
        f"a median {one['fraction'].median():.0%} (a quarter or more in {int((one['fraction'] >= 0.25).sum())} "
        f"of {len(one)})." + _per_subject_gap_sentence(mean) + _linear_gap_sentence(kept))}


def _per_subject_gap_sentence(mean: pd.DataFrame) -> str:
    """The same share per subject (``fraction_per_subject`` of :func:`refacelib.evaluation.reid.gap_closed`)."""
    if "fraction_per_subject" not in mean or mean["fraction_per_subject"].isna().all():
        return ""
    per = mean["fraction_per_subject"]
    return (" Taken subject by subject (each subject's own share of its gap, median over the subjects whose oracle "
            f"is closer than their matched average face), the mean of samples closes a median {per.median():.0%} "
            f"(range {per.min():.0%} to {per.max():.0%}; half or more in {int((per >= 0.5).sum())} of {len(per)} "
            "cells): the two readings part where gains and gaps vary from subject to subject.")


def ceiling_text(summary: pd.DataFrame | None, voxel_mm: float, *, exclude=("skullstrip",)) -> str:
    """A sentence on the grid ceiling (:func:`refacelib.pipeline.ceiling.ceiling_summary`'s table).

    Medians over the face-removal methods and test sets (``exclude`` left out) of the grid
    ceiling, the oracle (when present) and the refaced face (mean of samples).

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["a", "b"], "test_set": "t", "grid_ceiling": [0.3, 0.4],
    ...                   "oracle": [0.5, 0.6], "refaced_mean": [1.2, 1.4], "average": [2.0, 2.2]})
    >>> text = ceiling_text(t, 4.0)
    >>> "median face MSD of 0.35 mm" in text, "not what keeps the model from the oracle" in text
    (True, True)
    >>> "would help" in ceiling_text(t.assign(grid_ceiling=[0.7, 0.8]), 4.0)
    True
    >>> ceiling_text(None, 4.0)
    'The grid ceiling was not measured.'
    """
    if summary is None or len(summary) == 0:
        return "The grid ceiling was not measured."
    kept = summary[~summary["method"].isin(exclude)]
    ceil = kept["grid_ceiling"]
    out = (f"A perfect model on the cascade's {voxel_mm:g} mm grid (each subject's own original put through the "
           f"refacing path) reaches a median face MSD of {fmt_mm(ceil.median())} mm over the "
           f"{kept['method'].nunique()} face-removal methods and {kept['test_set'].nunique()} test sets "
           f"(range {fmt_mm(ceil.min())} to {fmt_mm(ceil.max())} mm)")
    if "refaced_mean" in kept:
        out += f", the refaced face (mean of samples) {fmt_mm(kept['refaced_mean'].median())} mm"
    if "oracle" not in kept or kept["oracle"].isna().all():
        return out + "."
    oracle = kept["oracle"].median()
    out += f" and the oracle face {fmt_mm(oracle)} mm"
    if ceil.median() < oracle:
        return out + (": what the grid loses is less than what the rest of the head leaves unpredictable, so the "
                      "grid is not what keeps the model from the oracle.")
    return out + ": the grid loses more than the oracle misses, so a finer grid would help."


def _linear_gap_sentence(kept: pd.DataFrame) -> str:
    """With a linear prior under the cascade (``linear`` rows): the share the prior alone closes, and
    the share its person-independent twin (``linear_permuted``, fitted to shuffled faces) closes."""
    lin = kept[kept["candidate"] == "linear"]
    if lin.empty:
        return ""
    out = (f" The linear prior alone (before the diffusion stages) closes a median {lin['fraction'].median():.0%} "
           f"(range {lin['fraction'].min():.0%} to {lin['fraction'].max():.0%}).")
    perm = kept[kept["candidate"] == "linear_permuted"]
    if len(perm):
        out += (f" Fitted to shuffled faces (so that it cannot know whose face it is), the same prior closes a median "
                f"{perm['fraction'].median():.0%} (range {perm['fraction'].min():.0%} to "
                f"{perm['fraction'].max():.0%}): that share needs no person.")
    return out


def floor_key_values(floor: pd.DataFrame | None) -> dict[str, str]:
    """``key_floor``: the median test-retest face distance (mm), ``n/a`` without retest scans.

    Examples
    --------
    >>> floor_key_values(pd.DataFrame({"msd_mm": [0.1, 0.3]}))
    {'key_floor': '0.20'}
    >>> floor_key_values(None)
    {'key_floor': 'n/a'}
    """
    if floor is None or len(floor) == 0:
        return {"key_floor": NA}
    return {"key_floor": fmt_mm(float(floor["msd_mm"].median()))}


def emulated_methods(methods_table: pd.DataFrame) -> str:
    """Comma-separated names of the emulated defacing methods (``none`` when all ran for real).

    Examples
    --------
    >>> emulated_methods(pd.DataFrame({"method": ["pydeface", "quickshear"], "emulated": [True, False]}))
    'pydeface'
    """
    names = methods_table.loc[methods_table["emulated"].astype(str).str.lower() == "true", "method"]
    return ", ".join(names) if len(names) else "none"


def method_engines(methods_table: pd.DataFrame, *, methods: Iterable[str] = PAPER_METHODS) -> dict[str, str]:
    """``engine_<method>``: ``emulated``, ``real tool`` or ``not run`` for each of the paper's methods.

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["pydeface", "quickshear"], "emulated": [True, False]})
    >>> method_engines(t, methods=["pydeface", "quickshear", "mri_deface"])
    {'engine_pydeface': 'emulated', 'engine_quickshear': 'real tool', 'engine_mri_deface': 'not run'}
    """
    flags = dict(zip(methods_table["method"], methods_table["emulated"].astype(str).str.lower() == "true"))
    return {f"engine_{m}": ("not run" if m not in flags else "emulated" if flags[m] else "real tool")
            for m in methods}


def _device_name(request) -> str:
    """The device a chapter computes on, with the GPU's name when there is one."""
    try:
        device = resolve_device(request)
    except RuntimeError as err:
        return f"unavailable ({err})"
    if device.type == "cuda":
        import torch

        return f"{device} ({torch.cuda.get_device_name(device)})"
    return str(device)


def provenance_fields(run, *, started: float, now: float | None = None) -> dict[str, str]:
    """What the footer of a chapter states, as strings.

    Parameters
    ----------
    run : refacelib.pipeline.config.Run
    started : float
        ``time.time()`` taken in the chapter's first code cell.
    now : float, optional
        End of the chapter (default: now).

    Returns
    -------
    dict
        refacelib, commit, profile, dataset, parameters (hash), device, wall time.
    """
    now = time.time() if now is None else now
    return {
        "refacelib": __version__,
        "commit": git_commit(project_root()),
        "profile": run.profile,
        "dataset": dataset_label(run.dataset),
        "parameters": stable_hash(run.params),
        "device": _device_name(run.params.get("cascade", {}).get("device", "auto")),
        "wall time": f"{max(0.0, now - started):.1f} s",
    }


def provenance_markdown(fields: dict[str, str]) -> str:
    """The footer line: ``**Provenance.** refacelib `0.1.0` · commit `abc` · ...``.

    Examples
    --------
    >>> provenance_markdown({"profile": "tiny", "wall time": "1.0 s"})
    '**Provenance.** profile `tiny` · wall time `1.0 s`'
    """
    return "**Provenance.** " + " · ".join(f"{k} `{v}`" for k, v in fields.items())


def chapter_footer(run, *, started: float):
    """The provenance footer of a chapter as an IPython Markdown object (for the last cell)."""
    from IPython.display import Markdown

    return Markdown(provenance_markdown(provenance_fields(run, started=started)))


# ------------------------------------------------------------------ tables for readers
#: Tables longer than this are summarised on the page, the full table folded below it.
MAX_ROWS = 15
#: CSV files larger than this are not embedded as a download link (named instead).
MAX_EMBED_BYTES = 2_000_000
_UNITS = (("_mm", "mm"), ("_mib", "MiB"), ("_gib", "GiB"), ("_seconds", "s"), ("seconds", "s"),
          ("_s", "s"), ("_%", "%"), ("_hu", "HU"))


def fmt_pvalue(value, *, floor: float = 1e-3, scientific: bool = False) -> str:
    """A p-value for a reader: ``< 0.001`` (or scientific notation), never ``0.0000``.

    Parameters
    ----------
    floor : float
        Below it a p-value reads ``< floor`` (``scientific=False``) or ``1.2e-05``.
    scientific : bool
        Keep the order of magnitude of tiny p-values (for tests compared with a threshold
        below ``floor``, such as the paper's 1e-4).

    Examples
    --------
    >>> fmt_pvalue(3e-12), fmt_pvalue(3e-12, scientific=True), fmt_pvalue(0.0412), fmt_pvalue(0.5)
    ('< 0.001', '3.0e-12', '0.041', '0.5')
    """
    if _missing(value):
        return NA
    p = float(value)
    if p >= floor:
        return f"{p:.2g}"
    if not scientific:
        return f"< {floor:g}"
    return f"{p:.1e}" if p > 0 else "< 1e-300"


def fmt_number(value, *, digits: int = 3) -> str:
    """A measured number to ``digits`` significant digits, without scientific notation above 0.001.

    Examples
    --------
    >>> fmt_number(1234.5), fmt_number(12.345), fmt_number(0.01234), fmt_number(0.0)
    ('1,234', '12.3', '0.0123', '0')
    """
    if _missing(value):
        return NA
    x = float(value)
    if x == 0:
        return "0"
    if abs(x) < 1e-3:
        return f"{x:.{digits - 1}e}"
    decimals = max(0, digits - 1 - math.floor(math.log10(abs(x))))
    return f"{x:,.{decimals}f}"


def _human(name) -> str:
    """A column label from a column name: ``hl_diff_mm`` -> ``hl diff (mm)``."""
    if isinstance(name, tuple):
        return _human(name[0]) + " [95% CI]"
    name = str(name)
    for suffix, unit in _UNITS if "_per_" not in name else ():  # voxels_per_s: a rate, not seconds
        if name.lower().endswith(suffix) and len(name) > len(suffix):
            return f"{name[:-len(suffix)].replace('_', ' ').strip()} ({unit})"
    return name.replace("_", " ")


def _is_p(name) -> bool:
    return isinstance(name, str) and (name in ("p", "pvalue", "p_value") or name.startswith("p_")
                                      or name.endswith("_p"))


def _formatter(key, values: pd.Series, fmt):
    """value -> str for one column (``fmt`` as in :func:`reader_table`, None: from the name)."""
    if callable(fmt):
        return lambda v: NA if _missing(v) and not isinstance(v, str) else str(fmt(v))
    if fmt is None:
        name = key[0] if isinstance(key, tuple) else key
        if _is_p(name):
            fmt = "p"
        elif str(name).endswith("_mm"):
            fmt = 2
        elif values.dtype == bool:
            fmt = "bool"
        else:
            finite = pd.to_numeric(values, errors="coerce").dropna() if values.dtype != object else pd.Series([])
            finite = finite[finite.abs() < float("inf")]
            if not len(finite):
                fmt = "number"  # text, or numbers of several kinds (a key-value table): one by one
            elif (finite % 1 == 0).all():
                fmt = "int"
            else:  # one precision per column: three significant digits of its largest value
                top = float(finite.abs().max())
                fmt = min(4, max(0, 2 - math.floor(math.log10(top)))) if top > 0 else 2
    if fmt in ("p", "p-sci"):
        return lambda v: fmt_pvalue(v, scientific=fmt == "p-sci")
    if fmt == "int":
        return lambda v: NA if _missing(v) else f"{int(round(float(v))):,}"
    if fmt == "bool":
        return lambda v: NA if v is None or (isinstance(v, float) and math.isnan(v)) else ("yes" if v else "no")

    def number(v):
        if v is None or v is pd.NA or (isinstance(v, float) and math.isnan(v)):
            return NA
        if isinstance(v, (bool, np.bool_)):
            return "yes" if v else "no"
        if isinstance(v, numbers.Integral):
            return f"{int(v):,}"
        if isinstance(v, numbers.Real):
            return fmt_number(v) if fmt == "number" else fmt_mm(v, decimals=int(fmt))
        return str(v)  # text, or anything else a table may hold
    return number


def key_value_table(values: dict, *, key: str = "key", value: str = "value") -> pd.DataFrame:
    """A two-column table of a (nested) dict: nested keys joined by dots, lists as text.

    Examples
    --------
    >>> key_value_table({"a": 1, "b": {"c": [1, 2]}}).values.tolist()
    [['a', 1], ['b.c', '[1, 2]']]
    """
    rows = []

    def walk(prefix, item):
        if isinstance(item, dict):
            for k, v in item.items():
                walk(f"{prefix}.{k}" if prefix else str(k), v)
        else:
            rows.append((prefix, str(item) if isinstance(item, (list, tuple)) else item))
    walk("", values)
    return pd.DataFrame(rows, columns=[key, value])


def format_table(df: pd.DataFrame, *, columns: dict | None = None, formats: dict | None = None) -> pd.DataFrame:
    """The cells of ``df`` as the strings a reader sees, under human column names (index dropped).

    Parameters
    ----------
    columns, formats
        As in :func:`reader_table`.

    Examples
    --------
    >>> t = pd.DataFrame({"hl_diff_mm": [-0.213], "ci_low_mm": [-0.3], "ci_high_mm": [-0.12], "p_holm": [1e-9]})
    >>> cols = {("hl_diff_mm", "ci_low_mm", "ci_high_mm"): "difference (mm)", "p_holm": "p"}
    >>> format_table(t, columns=cols).values.tolist()
    [['-0.21 [-0.30, -0.12]', '< 0.001']]
    """
    formats = formats or {}
    columns = columns if columns is not None else {c: _human(c) for c in df.columns}
    out = {}
    for key, label in columns.items():
        if isinstance(key, tuple):  # (estimate, low, high) or (low, high): one interval cell
            decimals = formats.get(key, 2)
            frame = df[list(key)]
            out[label] = [fmt_ci(*row, decimals=decimals) if len(key) == 3 else
                          (NA if _missing(row[0]) else f"[{row[0]:.{decimals}f}, {row[1]:.{decimals}f}]")
                          for row in frame.itertuples(index=False)]
        else:
            fmt = _formatter(key, df[key], formats.get(key))
            out[label] = [fmt(v) for v in df[key]]
    return pd.DataFrame(out, columns=list(columns.values()), index=range(len(df)))


def _pivot(cells: pd.DataFrame, *, index, columns: str, values) -> pd.DataFrame:
    """Pivot formatted cells; several values become ``<column value>: <value label>`` columns."""
    index = [index] if isinstance(index, str) else list(index)
    values = [values] if isinstance(values, str) else list(values)
    wide = cells.pivot(index=index, columns=columns, values=values)
    order = list(dict.fromkeys(cells[columns]))
    wide = wide[[(v, c) for c in order for v in values]]
    rows = list(dict.fromkeys(cells[index].itertuples(index=False, name=None)))  # first-seen order, not sorted
    wide = wide.reindex([r[0] for r in rows] if len(index) == 1 else pd.MultiIndex.from_tuples(rows, names=index))
    wide.columns = [str(c) if len(values) == 1 else f"{c}: {v}" for v, c in wide.columns]
    return wide.reset_index().fillna("")


_TABLE_STYLE = "<style>table.reader-table th, table.reader-table td { padding: 0.25em 0.75em; }</style>"


def _html_table(cells: pd.DataFrame) -> str:
    """One scrolling table: wide tables scroll sideways instead of being cut off; cells do not wrap."""
    table = cells.to_html(index=False, border=0, escape=True, classes="reader-table", na_rep=NA, justify="left")
    table = table.replace("<table ", '<table style="white-space: nowrap; margin: 0;" ', 1)
    return f'<div class="reader-table-scroll" style="overflow-x: auto; max-width: 100%;">\n{table}\n</div>'


def csv_link(table, *, name: str | None = None) -> str:
    """An HTML link that downloads a table as CSV from the page itself (a ``data:`` URI).

    ``table`` is a CSV file (e.g. what :func:`refacelib._utils.io.save_table` wrote) or a DataFrame.
    The content is percent-encoded, not base64, so path scrubbing and privacy checks still
    read it. A file above :data:`MAX_EMBED_BYTES` is named instead of embedded.

    Examples
    --------
    >>> csv_link(pd.DataFrame({"a": [1]}), name="x.csv").split('"')[:4]
    ['<a download=', 'x.csv', ' href=', 'data:text/csv;charset=utf-8,a%0A1%0A']
    """
    import html
    from pathlib import Path
    from urllib.parse import quote

    if isinstance(table, pd.DataFrame):
        text, name = table.to_csv(index=False), name or "table.csv"
    else:
        path = Path(table)
        text, name = path.read_text(), name or path.name
    n_rows = max(0, text.count("\n") - 1)
    if len(text.encode()) > MAX_EMBED_BYTES:
        return (f"<span>Full table: <code>tables/{html.escape(name)}</code> in the run folder "
                f"({len(text.encode()) / 1e6:.1f} MB, too large to embed here).</span>")
    href = "data:text/csv;charset=utf-8," + quote(text, safe="/:,")
    return (f'<a download="{html.escape(name)}" href="{href}">Download <code>{html.escape(name)}</code></a> '
            f"(CSV, {n_rows} rows)")


def archive_link(folder, *, members=("tables", "inputs/params.yaml"), name: str = "results.zip",
                 replacements: dict | None = None, private=()) -> str:
    """An HTML link that downloads a run's tables and parameters as one zip (a ``data:`` URI).

    ``members`` are files or folders under the run ``folder`` (a folder contributes its
    ``.csv`` files); the zip is deterministic (sorted names, fixed timestamps), so an
    unchanged run gives the same link. A zip is opaque to the page's path scrubbing, so
    every file is scrubbed first with ``replacements`` (``{private path: placeholder}``,
    e.g. :func:`refacelib.pipeline.book.private_replacements`: a real dataset's path in
    ``params.yaml`` becomes ``<DATASET>``), and a :class:`ValueError` is raised if any of
    the ``private`` strings is still there.

    Examples
    --------
    >>> import tempfile, pathlib
    >>> d = pathlib.Path(tempfile.mkdtemp()); (d / "tables").mkdir()
    >>> _ = (d / "tables" / "a.csv").write_text("x\\n1\\n")
    >>> archive_link(d, members=("tables",)).startswith('<a download="results.zip" href="data:application/zip;base64,')
    True
    >>> archive_link(d, members=("tables",), private=["1"])
    Traceback (most recent call last):
    ...
    ValueError: tables/a.csv contains a private path; not embedded
    >>> archive_link(d, members=("tables",), replacements={"1": "<x>"}, private=["1"])[:12]
    '<a download='

    """
    import base64
    import html
    import io
    import zipfile
    from pathlib import Path

    folder = Path(folder)
    files = []
    for member in members:
        path = folder / member
        files += sorted(path.glob("*.csv")) if path.is_dir() else ([path] if path.is_file() else [])
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path in files:
            rel = path.relative_to(folder).as_posix()
            text = path.read_text(encoding="utf-8", errors="replace")
            for old, new in sorted((replacements or {}).items(), key=lambda kv: -len(kv[0])):
                text = text.replace(old, new) if old else text
            data = text.encode("utf-8")
            if any(p and str(p) in text for p in private):
                raise ValueError(f"{rel} contains a private path; not embedded")
            archive.writestr(zipfile.ZipInfo(rel, date_time=(1980, 1, 1, 0, 0, 0)), data,
                             compress_type=zipfile.ZIP_DEFLATED)
    payload = buffer.getvalue()
    if len(payload) > MAX_EMBED_BYTES:
        return f"<span>The tables are in <code>tables/</code> of the run folder ({len(payload) / 1e6:.1f} MB zipped).</span>"
    href = "data:application/zip;base64," + base64.b64encode(payload).decode()
    return (f'<a download="{html.escape(name)}" href="{href}">Download <code>{html.escape(name)}</code></a> '
            f"({len(files)} files: every table of this run and its parameters, {len(payload) / 1e3:.0f} kB)")


class ReaderTable:
    """What :func:`reader_table` returns: shown as HTML in a notebook and in the book.

    Attributes: ``page`` (the cells shown on the page), ``full`` (every row, formatted),
    ``folded`` (whether the full table sits in a ``<details>`` block) and ``html``.
    """

    def __init__(self, page: pd.DataFrame, full: pd.DataFrame, html: str, folded: bool):
        self.page, self.full, self.html, self.folded = page, full, html, folded

    def _repr_html_(self) -> str:
        return self.html

    def __repr__(self) -> str:
        return self.page.to_string(index=False)


def reader_table(df: pd.DataFrame, *, columns: dict | None = None, formats: dict | None = None,
                 max_rows: int = MAX_ROWS, summary: pd.DataFrame | None = None, pivot: dict | None = None,
                 csv=None, csv_name: str | None = None, caption: str | None = None) -> ReaderTable:
    """A table as a reader of the book should see it; every table the book shows goes through here.

    No index column; human column names with units; numbers to a sensible precision;
    p-values as ``< 0.001`` (:func:`fmt_pvalue`); an estimate and its interval in one
    cell (``-0.21 [-0.30, -0.12]``). The table scrolls sideways inside its container
    instead of being cut off. A table longer than ``max_rows`` is summarised on the page
    (``summary`` rows, pivoted by ``pivot``; else its first rows) and shown in full in a
    folded ``<details>`` block. A link downloads the table as CSV (:func:`csv_link`).

    Parameters
    ----------
    df : DataFrame
        The tidy table.
    columns : dict, optional
        Column -> label, in the order shown; a tuple ``(estimate, low, high)`` (or
        ``(low, high)``) of columns makes one interval cell. Columns not named are not
        shown (the CSV keeps them). Default: every column, its name made readable.
    formats : dict, optional
        Column (or interval tuple) -> decimals (int), ``"p"`` (``< 0.001``), ``"p-sci"``
        (scientific below 0.001), ``"int"``, ``"bool"`` or a callable. Default from the name
        and type: ``p``, ``p_*``, ``*_p`` are p-values, ``*_mm`` two decimals, integers as
        integers, other numbers with one precision per column (three significant digits of
        its largest value); intervals two decimals.
    max_rows : int
        Longest table shown in full on the page.
    summary : DataFrame, optional
        Rows of ``df`` (same columns) to summarise a long table with, e.g. one comparison.
    pivot : dict, optional
        ``index``, ``columns``, ``values`` (labels, after ``columns`` renamed them) to
        pivot the summary with, e.g. method x test set.
    csv : path or list of paths, optional
        The CSV file the table was saved as (and others it summarises, e.g. the
        per-subject table); each gets a download link (default: ``df`` as CSV).
    csv_name : str, optional
        File name of the download when ``csv`` is not given.
    caption : str, optional
        A line under the table.

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["pydeface"], "p_holm": [1e-9]})
    >>> r = reader_table(t, columns={"method": "Method", "p_holm": "p (Holm)"})
    >>> r.page.values.tolist(), "overflow-x: auto" in r.html, r.folded
    ([['pydeface', '< 0.001']], True, False)
    """
    import html as html_lib

    full = format_table(df, columns=columns, formats=formats)
    folded = len(df) > max_rows
    note = ""
    if folded:
        summary = None if summary is not None and len(summary) == 0 else summary
        page = format_table(df if summary is None else summary, columns=columns, formats=formats)
        if pivot is not None:
            page = _pivot(page, **pivot)
        if len(page) > max_rows:
            page, note = page.head(max_rows), f"The first {max_rows} of {len(df)} rows."
    else:
        page = full
    parts = ['<div class="reader-table">', _TABLE_STYLE, _html_table(page)]
    caption = " ".join(text for text in (caption, note) if text)
    if caption:
        parts.append(f'<p class="reader-table-caption">{html_lib.escape(caption)}</p>')
    if folded:
        parts.append(f"<details><summary>Show the full table ({len(df)} rows)</summary>\n"
                     f"{_html_table(full)}\n</details>")
    sources = [df] if csv is None else list(csv) if isinstance(csv, (list, tuple)) else [csv]
    links = " · ".join(csv_link(source, name=csv_name) for source in sources)
    parts += [f'<p class="reader-table-download">{links}</p>', "</div>"]
    return ReaderTable(page, full, "\n".join(parts), folded)
