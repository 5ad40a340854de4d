"""What the book says about its controls: the negative control, the permutation control, the dose response.

Tables in (``tables/controls*.csv``, ``tables/face_tests.csv``), plain values and sentences
out, counted by the one rule of "significantly closer" in :mod:`refacelib.report.values`
(Holm-corrected p and the Hodges-Lehmann shift). The Controls chapter and the landing page
glue them; nothing here reads or writes a file.
"""
from __future__ import annotations

from typing import Iterable

import numpy as np
import pandas as pd

from refacelib.report.values import count_significant, is_significant, fmt_mm

__all__ = ["negative_control_summary", "swap_check_counts", "null_chapter_text", "null_reading", "offset_key_values", "landing_controls_text", "dose_response_text",
           "controls_overview", "permutation_summary", "permutation_text", "permutation_paired_summary",
           "permutation_paired_text"]


def negative_control_summary(controls: pd.DataFrame, *, coupling: float = 0.0, alpha: float = 0.05,
                             estimators: Iterable[str] = ("refaced", "refaced_mean"),
                             baseline: str = "average") -> pd.DataFrame:
    """The negative control: refaced vs ``baseline`` at ``coupling`` (no face signal planted).

    ``baseline="average"`` is the matched average face; ``"swapped"`` the swap check, which
    a person-independent correction beats as well, so only a win over it is about the person.

    One row per method, test set and estimator with the paired difference, its
    interval, Holm p and ``closer_significant`` (p_holm < alpha and a negative
    difference: a false positive of the pipeline).

    Examples
    --------
    >>> c = pd.DataFrame({"coupling": [0.0], "method": ["m"], "test_set": ["t"], "estimator": ["refaced"],
    ...                   "baseline": ["average"], "n": [10], "hl_diff_mm": [0.01], "ci_low_mm": [-0.02],
    ...                   "ci_high_mm": [0.04], "p_holm": [0.6], "rbc": [0.1]})
    >>> negative_control_summary(c)["closer_significant"].tolist()
    [False]
    """
    sel = controls[(controls["coupling"] == coupling) & (controls["baseline"] == baseline)
                   & controls["estimator"].isin(list(estimators))]
    out = sel[["method", "test_set", "estimator", "n", "hl_diff_mm", "ci_low_mm", "ci_high_mm", "p_holm", "rbc"]].copy()
    out["closer_significant"] = is_significant(out, sign=-1, alpha=alpha)
    return out.reset_index(drop=True)


def offset_key_values(offsets: pd.DataFrame, *, coupling: float = 0.0,
                      candidates: Iterable[str] = ("average", "refaced_mean", "swapped", "oracle"),
                      exclude: Iterable[str] = ("skullstrip",), column: str = "offset_mm",
                      prefix: str = "offset") -> dict[str, str]:
    """Glue values ``<prefix>_<candidate>_<test set>``: the median over methods (without ``exclude``) of
    the per-method median of ``column`` at ``coupling``, from ``tables/controls_offsets.csv``: the
    signed surface offset (mm, the default) or ``skin_intensity`` (the candidate's skin band
    intensity relative to the original's, :func:`refacelib.evaluation.reid.band_intensity_ratio`).

    Examples
    --------
    >>> o = pd.DataFrame({"coupling": 0.0, "test_set": "test_external", "method": ["a", "b", "skullstrip"],
    ...                   "candidate": "average", "offset_mm": [-0.8, -1.0, -8.0], "skin_intensity": [1.0, 0.9, 0.4]})
    >>> offset_key_values(o)
    {'offset_average_external': '-0.90'}
    >>> offset_key_values(o, exclude=(), column="skin_intensity", prefix="skin")
    {'skin_average_external': '0.90'}
    """
    if column not in offsets:
        return {}
    sel = offsets[np.isclose(offsets["coupling"], coupling) & ~offsets["method"].isin(list(exclude))]
    out = {}
    for cand in candidates:
        for test_set, part in sel[sel["candidate"] == cand].groupby("test_set"):
            out[f"{prefix}_{cand}_{test_set.removeprefix('test_')}"] = f"{part[column].median():.2f}"
    return out


_NULL_DESIGN = ("the null phantom: face_coupling 0, no soft tissue on the scalp and no skull deformation, so that "
                "nothing an attacker sees predicts the face")


def _null_counts(null: pd.DataFrame, person: pd.DataFrame) -> tuple[int, int, str]:
    """Significant wins over the matched average face and over the swap check, and the methods of the former."""
    wins = null["closer_significant"].astype(bool)
    methods = sorted(set(null.loc[wins, "method"]))
    return int(wins.sum()), int(person["closer_significant"].astype(bool).sum()), ", ".join(methods) or "none"


def swap_check_counts(controls: pd.DataFrame, *, alpha: float = 0.05) -> dict[str, int]:
    """The swap check as a candidate: how often it was significantly closer to the original than the
    matched average face (Holm p < ``alpha``, negative difference).

    The swap check is a subject's matched average face plus *another* subject's learned correction:
    if it beat the average face, the model's gain would not need the person. Keys ``null_wins`` and
    ``null_n`` (method × test-set comparisons in the null phantom, coupling 0), ``all_wins`` and
    ``all_n`` (every coupling in ``controls``), ``couplings`` (how many couplings ran).

    Examples
    --------
    >>> c = pd.DataFrame({"coupling": [0.0, 0.0, 0.8], "method": "m", "test_set": ["a", "b", "a"],
    ...                   "estimator": "swapped", "baseline": "average", "n": 10, "hl_diff_mm": [0.1, -0.2, -0.3],
    ...                   "ci_low_mm": -1.0, "ci_high_mm": 0.5, "p_holm": [0.5, 0.01, 0.01], "rbc": 0.1})
    >>> swap_check_counts(c)
    {'null_wins': 1, 'null_n': 2, 'all_wins': 2, 'all_n': 3, 'couplings': 2}
    """
    couplings = sorted(set(controls["coupling"]))
    parts = {c: negative_control_summary(controls, coupling=c, alpha=alpha, estimators=("swapped",)) for c in couplings}
    null = parts.get(0.0, pd.DataFrame({"closer_significant": []}))
    return {"null_wins": int(null["closer_significant"].astype(bool).sum()), "null_n": len(null),
            "all_wins": int(sum(t["closer_significant"].astype(bool).sum() for t in parts.values())),
            "all_n": int(sum(len(t) for t in parts.values())), "couplings": len(couplings)}


def null_chapter_text(controls: pd.DataFrame, null: pd.DataFrame, person: pd.DataFrame) -> str:
    """The Controls chapter's paragraph on the negative control (Markdown).

    ``null`` and ``person``: :func:`negative_control_summary` against the matched average face
    and the swap check; ``controls`` gives the oracle's paired difference in the null (median
    over the face-removal methods, per test set).

    Examples
    --------
    >>> c = pd.DataFrame({"coupling": 0.0, "method": ["m", "skullstrip"], "test_set": "test_external",
    ...                   "estimator": "oracle", "baseline": "average", "n": 10, "hl_diff_mm": [-0.1, -5.0],
    ...                   "ci_low_mm": -1.0, "ci_high_mm": 0.5, "p_holm": 0.5, "rbc": 0.1})
    >>> t = pd.DataFrame({"method": ["m"], "closer_significant": [False]})
    >>> text = null_chapter_text(c, t, t)
    >>> "in 0 of 1 method" in text, "-0.10 mm (external) and n/a mm (internal)" in text
    (True, True)
    """
    wins, person_wins, methods = _null_counts(null, person)
    oracle = negative_control_summary(controls, estimators=("oracle",))
    oracle = oracle[oracle["method"] != "skullstrip"].groupby("test_set")["hl_diff_mm"].median()
    return ("In the null phantom, a refaced face (either estimator) was significantly closer to the original than its "
            f"matched baseline (Holm p < 0.05, negative difference) in {wins} of {len(null)} method × test-set × "
            f"estimator comparisons (methods: {methods}), and significantly closer than the swap check (a gain that "
            f"another subject's learned correction does not give) in {person_wins} of {len(person)}. "
            + null_reading(wins, person_wins, in_chapter=True)
            + _swap_sentence(swap_check_counts(controls))
            + " The oracle, here the mean face under the subject's true pose, minus the matched average face: a "
            f"median paired difference of {fmt_mm(oracle.get('test_external', float('nan')))} mm (external) and "
            f"{fmt_mm(oracle.get('test_internal', float('nan')))} mm (internal) over the face-removal methods "
            "(negative: the oracle is closer), what the attacker's registration and the averaged baseline cost "
            "every candidate, with no face signal in it.")


def _swap_sentence(counts: dict[str, int]) -> str:
    if not counts["null_n"]:
        return ""
    return (" The swap check itself (a subject's matched average face plus another subject's learned correction) "
            f"was significantly closer to the original than the matched average face in {counts['null_wins']} of "
            f"{counts['null_n']} method × test-set comparisons in the null phantom, and in {counts['all_wins']} of "
            f"{counts['all_n']} over all {counts['couplings']} couplings run: "
            + ("the correction the model learns for one person does not bring another person's face closer."
               if counts["all_wins"] == 0 else "part of what the model learns is not about the person."))


def null_reading(null_wins: int, person_wins: int, *, in_chapter: bool = False) -> str:
    """What the negative control's counts mean (plain text), said wherever they are counted.

    ``null_wins``: significant wins of the refaced face over its matched average face;
    ``person_wins``: over the swap check. At the null phantom the visible head carries only pose,
    scale, intensity, bias field and noise, none of which predicts the face. A win over the
    average face alone is a correction that does not need the person. A win over the swap check
    alone (the average face never beaten) shows that the swap check is not a clean null there: the
    learned correction fits each subject's visible head (its pose, scale or registration), so
    another subject's correction misfits, without either knowing the face. Wins over both are a
    false positive of the pipeline.
    ``in_chapter``: the sentence stands in the Controls chapter itself (points below, not to it).

    Examples
    --------
    >>> null_reading(0, 0)
    'The pipeline found no advantage where none was planted.'
    >>> "false positive" in null_reading(3, 2), "not about the person" in null_reading(3, 0)
    (True, True)
    >>> "not a clean null" in null_reading(0, 2)
    True
    >>> null_reading(3, 0, in_chapter=True).endswith("(below: where each face lies).")
    True
    """
    if null_wins == 0 and person_wins == 0:
        return "The pipeline found no advantage where none was planted."
    out = []
    if person_wins and not null_wins:
        out.append("The refaced face never beat its matched average face, but it beat the swap check. Nothing an "
                   "attacker sees in the null phantom predicts the face, so these wins come from a learned correction "
                   "that fits each subject's visible head (its pose, scale or registration) and misfits another "
                   "subject's: here the swap check, which adds another subject's correction, is not a clean null "
                   "baseline; the matched average face is, and the pipeline found no advantage over it.")
    elif person_wins:
        out.append("A win over the swap check where no face signal was planted is a false positive of the "
                   "pipeline: some part of the attacker's view still carries the person.")
    where = "below: where each face lies" if in_chapter else "the Controls chapter shows where each face lies"
    if null_wins and not person_wins:
        out.append("The wins over the matched average face are shared by the swap check (another subject's learned "
                   f"correction), so they are not about the person: they correct the average face itself ({where}).")
    elif null_wins:
        out.append("Wins over the matched average face that the swap check shares are corrections of the average "
                   f"face, not about the person ({where}).")
    return " ".join(out)


def landing_controls_text(null: pd.DataFrame | None, person: pd.DataFrame | None, offsets: dict,
                          permutation: tuple[int, int, float] | None, *, profile: str,
                          is_phantom: bool = True, dose: str = "") -> dict[str, str]:
    """The landing page's sentences on the controls (plain text), each complete whether or not the control ran.

    Returns ``key_controls_null`` (the negative control: wins over the matched average
    face and over the swap check, and the signed offsets at coupling 0) and
    ``key_controls_permutation`` (the book's model against the permutation model, subject
    by subject). ``null`` and ``person`` are :func:`negative_control_summary` against the
    average face and the swap check; ``offsets`` the keys of :func:`offset_key_values`;
    ``permutation`` is (significant wins, comparisons, median shift in mm) over the
    face-removal methods. ``key_controls_dose`` introduces ``dose`` (:func:`dose_response_text`;
    empty: fewer than two couplings ran). A control that did not run is named with the command that runs
    it, so that a book built without the controls (``make book`` on a fresh clone, or a
    real dataset) never prints a count that is not there. Plain text, because myst-nb
    pastes text, not Markdown, across documents.

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["a", "b"], "closer_significant": [True, False]})
    >>> out = landing_controls_text(t, t, {"offset_average_external": "-1.30",
    ...                             "offset_refaced_mean_external": "-0.50"}, (3, 4, -0.7), profile="quick")
    >>> "closer than its matched average face in 1 of 2" in out["key_controls_null"]
    True
    >>> "false positive of the pipeline" in out["key_controls_null"]  # a win over the swap check is read as one
    True
    >>> out["key_controls_permutation"].endswith("in 3 of 4 face-removal method × test-set comparisons (median shift -0.70 mm).")
    True
    >>> out = landing_controls_text(None, None, {}, None, profile="quick")
    >>> "has not been run for this book" in out["key_controls_null"], "make controls PROFILE=quick" in out["key_controls_permutation"]
    (True, True)
    >>> "phantom only" in landing_controls_text(None, None, {}, None, profile="quick", is_phantom=False)["key_controls_null"]
    True
    >>> landing_controls_text(None, None, {}, None, profile="quick", dose="Oracle: x.")["key_controls_dose"]
    "Over the phantom's face coupling (how much of the face the rest of the head predicts): Oracle: x."
    """
    if not is_phantom:
        null_text = (f"The negative control ({_NULL_DESIGN}) needs the phantom, where the face signal is set by a "
                     "parameter: it runs on the phantom only, not on this dataset.")
    elif null is None or person is None:
        null_text = (f"The negative control ({_NULL_DESIGN}) has not been run for this book: "
                     f"'make controls PROFILE={profile}' runs it.")
    else:
        wins, person_wins, methods = _null_counts(null, person)
        null_text = (f"In the negative control ({_NULL_DESIGN}), the refaced face was significantly closer than its "
                     f"matched average face in {wins} of {len(null)} method × test-set × estimator comparisons "
                     f"(methods: {methods}), and closer than the swap check in {person_wins} of {len(person)}.")
        null_text += " " + null_reading(wins, person_wins)
        average, refaced = offsets.get("offset_average_external"), offsets.get("offset_refaced_mean_external")
        if average is not None and refaced is not None:
            null_text += (f" The signed surface offset says where each face lies: in the null phantom the matched average "
                          f"face lies {average} mm from the true skin on the external test set (median over methods "
                          f"without skull-stripping; negative: inside), the refaced face {refaced} mm.")
    if permutation is None:
        perm_text = (f"It has not been run for this book: 'make controls PROFILE={profile}' runs it." if is_phantom
                     else "It has not been run for this book ('make controls' runs it on the phantom).")
    else:
        wins, n, shift = permutation
        perm_text = (f"The book's model is significantly closer than it, subject by subject, in {wins} of {n} "
                     f"face-removal method × test-set comparisons (median shift {shift:+.2f} mm).")
    if not is_phantom:
        dose_text = "The dose response over the face coupling needs the phantom as well."
    elif not dose:
        dose_text = (f"The dose response over the phantom's face coupling has not been run for this book: "
                     f"'make controls PROFILE={profile}' runs it.")
    else:
        dose_text = f"Over the phantom's face coupling (how much of the face the rest of the head predicts): {dose}"
    return {"key_controls_null": null_text, "key_controls_permutation": perm_text, "key_controls_dose": dose_text}


def dose_response_text(controls: pd.DataFrame, *, estimators: Iterable[str] = ("refaced_mean", "oracle"),
                       baseline: str = "average", exclude: Iterable[str] = ("skullstrip",)) -> str:
    """One sentence per candidate on the dose response: the median over methods (without
    ``exclude``) of the paired difference against ``baseline`` (mm), per coupling and test set,
    and its change from the lowest to the highest coupling. Plain numbers, no verdict typed
    by hand; ``""`` when ``controls`` holds fewer than two couplings.

    Examples
    --------
    >>> c = pd.DataFrame({"coupling": [0.0, 0.0, 1.0, 1.0], "method": ["a", "skullstrip"] * 2,
    ...                   "test_set": "test_external", "estimator": "refaced_mean", "baseline": "average",
    ...                   "hl_diff_mm": [-0.5, -3.0, -0.9, -3.1]})
    >>> dose_response_text(c)
    'Mean of samples minus the matched average face (median over the face-removal methods, mm): external −0.50 at coupling 0, −0.90 at 1; from coupling 0 to 1 it changed by −0.40 mm (external).'
    >>> dose_response_text(c[c["coupling"] == 0])
    ''
    """
    names = {"refaced_mean": "Mean of samples", "refaced": "Single sample", "oracle": "Oracle",
             "swapped": "Swap check"}
    base = {"average": "the matched average face", "swapped": "the swap check"}.get(baseline, baseline)
    sel = controls[(controls["baseline"] == baseline) & ~controls["method"].isin(list(exclude))]
    if sel["coupling"].nunique() < 2:
        return ""

    def mm(v: float) -> str:  # typographic minus
        return fmt_mm(v).replace("-", "\u2212")

    def signed(v: float) -> str:
        return f"{v:+.2f}".replace("-", "\u2212")

    sentences = []
    for est in estimators:
        part = sel[sel["estimator"] == est]
        if part["coupling"].nunique() < 2:
            continue
        med = part.groupby(["test_set", "coupling"])["hl_diff_mm"].median()
        sets = [t for t in ("test_external", "test_internal") if t in med.index.get_level_values(0)]
        sets += sorted(set(med.index.get_level_values(0)) - set(sets))
        per_set, changes = [], []
        for t in sets:
            m = med.loc[t].sort_index()
            label = t.removeprefix("test_")
            per_set.append(f"{label} " + ", ".join(f"{mm(v)} at coupling {c:g}" if i == 0 else f"{mm(v)} at {c:g}"
                                                   for i, (c, v) in enumerate(m.items())))
            changes.append((label, m.index[0], m.index[-1], m.iloc[-1] - m.iloc[0]))
        lo, hi = changes[0][1], changes[0][2]
        sentences.append(f"{names.get(est, est)} minus {base} (median over the face-removal methods, mm): "
                         + "; ".join(per_set) + f"; from coupling {lo:g} to {hi:g} it changed by "
                         + ", ".join(f"{signed(d)} mm ({label})" for label, _, _, d in changes) + ".")
    return " ".join(sentences)


def controls_overview(controls: pd.DataFrame, *, alpha: float = 0.05) -> pd.DataFrame:
    """Per coupling, test set and candidate: methods significantly closer than the matched baseline.

    Columns ``coupling, test_set, estimator, closer`` (``"k of n"``) and
    ``median_hl_diff_mm`` (median over methods of the paired difference).

    Examples
    --------
    >>> c = pd.DataFrame({"coupling": [1.0, 1.0], "method": ["a", "b"], "test_set": ["t", "t"],
    ...                   "estimator": ["oracle"] * 2, "baseline": ["average"] * 2,
    ...                   "hl_diff_mm": [-0.2, -0.1], "p_holm": [0.01, 0.2]})
    >>> controls_overview(c)[["closer", "median_hl_diff_mm"]].values.tolist()
    [['1 of 2', -0.15]]
    """
    sel = controls[controls["baseline"] == "average"]
    rows = []
    for (c, t, e), sub in sel.groupby(["coupling", "test_set", "estimator"], sort=True):
        rows.append({"coupling": c, "test_set": t, "estimator": e,
                     "closer": f"{count_significant(sub, sign=-1, alpha=alpha)} of {len(sub)}",
                     "median_hl_diff_mm": round(float(sub["hl_diff_mm"].median()), 3)})
    return pd.DataFrame(rows, columns=["coupling", "test_set", "estimator", "closer", "median_hl_diff_mm"])


def permutation_summary(perm: pd.DataFrame, own_tests: pd.DataFrame | None, *, alpha: float = 0.05,
                        exclude: Iterable[str] = ("skullstrip",)) -> dict:
    """The permutation model (trained on shuffled faces) against the swap check and the matched average face.

    ``perm``: ``tables/controls_permutation.csv`` (its tests, as :func:`negative_control_summary`
    reads them); ``own_tests``: the book's ``tables/face_tests.csv`` (None: not measured).
    Returns ``vs_swap`` (the table shown), ``n_swap`` and ``n_average`` (significant wins of
    its mean of samples over the swap check and over the matched average face), ``n`` (the
    comparisons of each), and ``perm_gain_mm`` and ``own_gain_mm``: the median
    Hodges-Lehmann shift against the matched average face over the face-removal methods
    (``exclude`` left out) of the permutation model and of the book's model (NaN without
    ``own_tests``).

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["a", "a", "skullstrip"], "test_set": ["t"] * 3, "estimator": ["refaced_mean"] * 3,
    ...                   "baseline": ["swapped", "average", "average"], "n": 9, "hl_diff_mm": [-0.1, -0.4, -3.0],
    ...                   "ci_low_mm": -1.0, "ci_high_mm": 0.1, "p_holm": [0.3, 0.01, 0.01], "rbc": -0.5})
    >>> s = permutation_summary(t, t.assign(hl_diff_mm=[-0.2, -0.9, -3.0]))
    >>> s["n_swap"], s["n_average"], s["perm_gain_mm"], s["own_gain_mm"]
    (0, 2, -0.4, -0.9)
    """
    exclude = list(exclude)
    perm0 = perm.assign(coupling=0.0)
    vs_swap = negative_control_summary(perm0, baseline="swapped", estimators=("refaced_mean",), alpha=alpha)
    vs_avg = negative_control_summary(perm0, baseline="average", estimators=("refaced_mean",), alpha=alpha)

    def gain(table: pd.DataFrame) -> float:
        return float(table.loc[~table["method"].isin(exclude), "hl_diff_mm"].median())

    own_avg = (negative_control_summary(own_tests.assign(coupling=0.0), baseline="average",
                                        estimators=("refaced_mean",), alpha=alpha)
               if own_tests is not None and len(own_tests) else None)
    return {"vs_swap": vs_swap, "n_swap": int(vs_swap["closer_significant"].sum()), "n": len(vs_swap),
            "n_average": int(vs_avg["closer_significant"].sum()), "n_average_of": len(vs_avg),
            "perm_gain_mm": gain(vs_avg), "own_gain_mm": gain(own_avg) if own_avg is not None else float("nan")}


def permutation_text(summary: dict) -> str:
    """The Controls chapter's paragraph on the permutation model (Markdown), from :func:`permutation_summary`.

    Examples
    --------
    >>> s = {"n_swap": 0, "n": 8, "n_average": 6, "n_average_of": 8, "perm_gain_mm": -0.4, "own_gain_mm": -1.1}
    >>> text = permutation_text(s)
    >>> "in **0 of 8**" in text and "found nothing where nothing could be learned" in text and "-1.10 mm" in text
    True
    """
    text = (f"Trained on shuffled faces, the refaced face was significantly closer than the swap check in "
            f"**{summary['n_swap']} of {summary['n']}** method × test-set comparisons, and closer than the matched "
            f"average face in {summary['n_average']} of {summary['n_average_of']}. ")
    if summary["n_swap"]:
        text += ("**So beating the swap check is not evidence that a model knows the person.** A model whose "
                 "residual fits each subject's own removal mask, registration and intensity misfits another "
                 "subject, so the swap check (a partner's residual) is a handicapped baseline, not a "
                 "person-independent one. The permutation model is the person-independent baseline: ")
    else:
        text += ("The swap check found nothing where nothing could be learned, as it should. The permutation "
                 "model is the person-independent baseline: ")
    return text + (f"its face MSD minus the matched average face's is a median {summary['perm_gain_mm']:+.2f} mm "
                   f"for the face-removal methods, the book's model's {summary['own_gain_mm']:+.2f} mm "
                   "(Hodges–Lehmann, median over methods and test sets; negative: closer): only the difference "
                   "can come from the person's own face.")


def permutation_paired_summary(paired: pd.DataFrame, *, alpha: float = 0.05, estimator: str = "refaced_mean",
                               exclude: Iterable[str] = ("skullstrip",)) -> tuple[int, int, float]:
    """(significant wins, comparisons, median shift in mm) of the book's model over the permutation model.

    ``paired``: :func:`refacelib.controls.permutation_tests` (the book's model minus the
    permutation model, subject by subject); the ``estimator``'s rows of the face-removal
    methods (``exclude`` left out), counted by the book's one rule (Holm p and a negative
    Hodges-Lehmann shift). Also the landing page's numbers.

    Examples
    --------
    >>> p = pd.DataFrame({"estimator": ["refaced_mean"] * 3, "method": ["a", "b", "skullstrip"],
    ...                   "p_holm": [0.01, 0.2, 0.01], "hl_diff_mm": [-0.8, -0.2, -2.0]})
    >>> permutation_paired_summary(p)
    (1, 2, -0.5)
    """
    rows = paired[(paired["estimator"] == estimator) & ~paired["method"].isin(list(exclude))]
    return (count_significant(rows, sign=-1, alpha=alpha), len(rows),
            float(rows["hl_diff_mm"].median()) if len(rows) else float("nan"))


def permutation_paired_text(summary: tuple[int, int, float]) -> str:
    """The Controls chapter's paragraph on the paired test against the permutation model (Markdown).

    Examples
    --------
    >>> "in **3 of 4** face-removal" in permutation_paired_text((3, 4, -0.75))
    True
    """
    wins, n, shift = summary
    return ("**The book's model against the permutation model, subject by subject.** Both models reface the same "
            "test subjects under the same methods; they differ only in whether each training head was paired with "
            f"its own face. The book's mean of samples is significantly closer than the permutation model's in "
            f"**{wins} of {n}** face-removal method × test-set comparisons (median shift {shift:+.2f} mm; Wilcoxon "
            "signed-rank, Holm across methods). This is the test of whether the model learned something about the "
            "person; the rows for the single sample and the linear prior alone are in the table.")
