"""refacelib.report: key-result values from small tables, the provenance footer, and the
rule that the landing page's key results and our column of the comparison are glued."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from refacelib import report
from refacelib.config import open_run

ROOT = Path(__file__).resolve().parents[1]
GLUE = re.compile(r"\{glue(?::text|:md|)?\}`[^`]+`")
NUMBER = re.compile(r"\d")


# ------------------------------------------------------------------ key-result values
@pytest.fixture()
def face_tables():
    summary = pd.DataFrame({
        "method": ["pydeface"] * 4 + ["quickshear"] * 2,
        "test_set": ["test_external", "test_external", "test_internal", "test_internal",
                     "test_external", "test_external"],
        "candidate": ["refaced_mean", "average"] * 3,
        "median_mm": [1.004, 1.5, 9.0, 9.0, 2.0, 1.0],
    })
    tests = pd.DataFrame({
        "method": ["pydeface", "quickshear", "pydeface"],
        "test_set": ["test_external", "test_external", "test_internal"],
        "estimator": ["refaced_mean"] * 3, "baseline": ["average"] * 3,
        "p_holm": [0.004, 0.003, 0.9], "median_diff_mm": [-0.5, 1.0, 0.0],
    })
    return summary, tests


def test_face_key_values_reads_the_external_test_set(face_tables):
    summary, tests = face_tables
    v = report.face_key_values(summary, tests, estimator="refaced_mean", methods=["pydeface", "quickshear", "mri_deface"])
    assert v["key_test_set"] == "test_external"
    assert (v["key_msd_refaced_pydeface"], v["key_msd_average_pydeface"]) == ("1.00", "1.50")
    assert v["key_p_pydeface"] == "0.004"
    # significant and closer / significant and farther / absent from the run
    assert v["key_closer_pydeface"] == "yes"
    assert v["key_closer_quickshear"] == "no, farther"
    assert v["key_msd_refaced_mri_deface"] == v["key_p_mri_deface"] == v["key_closer_mri_deface"] == report.NA
    assert v["key_n_closer"] == "1 of 2"


def test_face_key_values_makes_a_key_for_every_paper_method(face_tables):
    v = report.face_key_values(*face_tables, estimator="refaced_mean")
    for m in report.PAPER_METHODS:
        assert {f"key_msd_refaced_{m}", f"key_msd_average_{m}", f"key_p_{m}", f"key_closer_{m}"} <= set(v)


def test_closer_counts_per_test_set(face_tables):
    _, tests = face_tables
    v = report.closer_counts(tests, estimator="refaced_mean")
    assert v == {"ours_n_closer_test_internal": "0 of 1", "ours_n_closer_test_external": "1 of 2"}


def test_reid_key_values_chance_and_rates():
    reid = pd.DataFrame({"method": ["pydeface"] * 3 + ["pydeface"], "test_set": ["test_external"] * 3 + ["test_internal"],
                         "candidate": ["refaced_mean", "average", "defaced", "refaced_mean"],
                         "n": [4, 4, 4, 2], "top1": [0.5, 0.25, 0.0, 1.0], "top5": [1.0] * 4})
    v = report.reid_key_values(reid, estimator="refaced_mean", methods=["pydeface"])
    assert v["key_reid_test_set"] == "test_external" and v["key_reid_n"] == "4"
    assert v["key_chance"] == "0.25"
    assert (v["key_top1_refaced_pydeface"], v["key_top1_average_pydeface"], v["key_top1_defaced_pydeface"]) == \
        ("0.50", "0.25", "0.00")


def test_muscle_values_undefined_and_missing():
    corr = pd.DataFrame({"muscle": ["thigh", "thigh"], "image": ["original", "skullstrip"],
                         "mean": [0.5564, np.nan], "ci_low": [0.4146, np.nan], "ci_high": [0.678, np.nan],
                         "significant": [True, False]})
    v = report.muscle_key_values(corr, images=["original", "skullstrip", "pydeface"], muscles=["thigh"])
    assert v["key_rho_thigh_original"] == "0.56 [0.41, 0.68]" and v["key_sig_thigh_original"] == "yes"
    assert v["key_rho_thigh_skullstrip"] == "undefined"
    assert v["key_rho_thigh_pydeface"] == report.NA
    assert set(report.muscle_key_values(None).values()) == {report.NA}


def test_muscle_comparison_keeps_the_papers_precision():
    v = report.muscle_comparison_values(None, images=["quickshear"], muscles=["abdomen"])
    assert v == {"ours_rho_abdomen_quickshear": report.NA, "paper_rho_abdomen_quickshear": "0.177 [0.014, 0.334]"}


def test_muscle_test_values_counts_only_defined_comparisons():
    diff = pd.DataFrame({"muscle": ["shin"] * 3, "image": ["pydeface", "quickshear", "skullstrip"],
                         "diff_mean": [0.1, 0.0, np.nan], "ci_low": [0.01, -0.1, np.nan],
                         "ci_high": [0.2, 0.1, np.nan], "wilcoxon_p": [1e-9, 1e-3, np.nan]})
    corr = pd.DataFrame({"muscle": ["shin"] * 3, "image": ["original", "pydeface", "quickshear"],
                         "significant": [True, True, False]})
    v = report.muscle_test_values(corr, diff)
    assert v == {"ours_n_wilcoxon": "1 of 2", "ours_n_diff": "1 of 2", "ours_shin_significant": "original, Pydeface"}


def test_msd_comparison_and_example_values():
    side = pd.DataFrame({"method": ["pydeface", "average (mri_reface)"], "ours_median_msd_mm": [1.434, 1.39],
                         "paper_median_msd_mm": [0.8, 0.78]})
    v = report.msd_comparison_values(side, methods=["pydeface"])
    assert v == {"ours_msd_pydeface": "1.43", "paper_msd_pydeface": "0.80",
                 "ours_msd_average": "1.39", "paper_msd_average": "0.78"}
    msd = pd.DataFrame({"subject": list("aabbcc"), "test_set": ["test_external"] * 6, "method": ["mri_deface"] * 6,
                        "candidate": ["refaced", "average"] * 3, "msd_mm": [1.0, 2.0, 3.0, 4.0, 5.0, 6.0]})
    e = report.example_msd_values(msd, method="mri_deface", estimator="refaced")
    assert e == {"ours_example_defaced": report.NA, "ours_example_refaced": "3.00", "ours_example_average": "4.00"}


def test_formatting_edge_cases():
    assert report.fmt_p(9.5367431640625e-06) == "9.5e-06"
    assert report.fmt_mm(None) == report.NA and report.fmt_rate(math.nan) == report.NA
    assert report.emulated_methods(pd.DataFrame({"method": ["quickshear"], "emulated": ["False"]})) == "none"
    with pytest.raises(ValueError):
        report.headline_test_set([])


# ------------------------------------------------------------------ provenance footer
def test_provenance_footer_states_every_field(tmp_path, monkeypatch):
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path))
    run = open_run("tiny", "phantom")
    fields = report.provenance_fields(run, started=100.0, now=112.34)
    assert list(fields) == ["refacelib", "commit", "profile", "dataset", "parameters", "device", "wall time"]
    assert fields["profile"] == "tiny" and fields["dataset"] == "phantom"
    assert fields["wall time"] == "12.3 s"
    assert fields["device"] in ("cpu",) or fields["device"].startswith("cuda")
    md = report.provenance_markdown(fields)
    assert md.startswith("**Provenance.**") and "`12.3 s`" in md and str(tmp_path) not in md


# ------------------------------------------------------------------ glued, not typed
def _key_results_box(text: str) -> str:
    match = re.search(r"^::::\{admonition\} Key results.*?^::::$", text, re.S | re.M)
    assert match, "book/intro.md has no 'Key results' admonition"
    return match.group(0)


def _table_rows(text: str):
    for line in text.splitlines():
        if line.startswith("|") and not re.fullmatch(r"\|[-| :]+\|", line.strip()):
            yield [c.strip() for c in line.strip().strip("|").split("|")]


def test_key_results_box_holds_glue_references_not_typed_numbers():
    box = _key_results_box((ROOT / "book" / "intro.md").read_text())
    rows = list(_table_rows(box))
    assert len(rows) >= 3 * 2, "the box should hold the face, matching-attack and muscle tables"
    glued = 0
    for row in rows:
        header = not any(GLUE.search(c) for c in row)
        for cell in row[1:]:  # the first column names the method or image
            if header:
                assert not NUMBER.search(GLUE.sub("", cell)) or cell.startswith("p ("), cell
                continue
            assert GLUE.fullmatch(cell), f"key-results cell is not a single glue reference: {cell!r}"
            glued += 1
    assert glued >= 5 * 4 + 5 * 3 + 6 * 3
    # prose of the box: every number glued (allowed: the names 'top-1' and '95%')
    prose = "\n".join(line for line in box.splitlines() if not line.startswith("|"))
    prose = GLUE.sub("", prose)
    prose = re.sub(r"Top-1|top-1|95%", "", prose)
    assert not NUMBER.search(prose), f"typed number in the key-results box: {prose!r}"


def _markdown_cells(path: Path) -> str:
    import jupytext

    nb = jupytext.read(path)
    return "\n".join(c.source for c in nb.cells if c.cell_type == "markdown")


def test_comparison_tables_glue_our_column():
    text = _markdown_cells(ROOT / "notebooks" / "08_comparison.py")
    tables, current = [], []
    for line in text.splitlines() + [""]:
        if line.startswith("|"):
            current.append(line)
        elif current:
            tables.append(current)
            current = []
    checked = 0
    for table in tables:
        header = [c.strip() for c in table[0].strip().strip("|").split("|")]
        if not any(h.startswith("ours") for h in header):
            continue
        col = next(i for i, h in enumerate(header) if h.startswith("ours"))
        for row in list(_table_rows("\n".join(table)))[1:]:
            assert GLUE.fullmatch(row[col]), f"our column holds {row[col]!r}, not a glue reference"
            checked += 1
    assert checked >= 15 + 18, f"expected the face and muscle comparison rows, checked {checked}"


def test_every_glue_key_the_landing_page_quotes_is_produced(face_tables):
    """Keys of 06/07 come from report functions: quoting a key they do not make would only fail the build."""
    text = (ROOT / "book" / "intro.md").read_text()
    quoted = set(re.findall(r"\{glue(?::text)?\}`\.\./chapters/(\d\d_\w+)\.ipynb::(key_\w+)(?::s)?`", text))
    reid = pd.DataFrame({"method": ["x"], "test_set": ["test_external"], "candidate": ["a"], "n": [2], "top1": [0.5]})
    made = {
        "06_reid": set(report.face_key_values(*face_tables, estimator="refaced_mean"))
        | set(report.reid_key_values(reid, estimator="refaced_mean")) | set(report.floor_key_values(None))
        | set(report.person_key_values(face_tables[1].assign(hl_diff_mm=-0.1), estimator="refaced_mean")),
        "07_muscle": set(report.muscle_key_values(None)),
    }
    assert {doc for doc, _ in quoted} == set(made)
    for doc, key in quoted:
        assert key in made[doc], f"book/intro.md quotes {doc}::{key}, which no report function makes"


@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "book").glob("*.md")))
def test_cross_document_glue_text_has_a_format_spec(page):
    """myst-nb splits ``{glue:text}`` at its last colon: ``path::key`` alone reads as key ``path:``."""
    text = (ROOT / "book" / page).read_text()
    for ref in re.findall(r"\{glue:text\}`([^`]*::[^`]*)`", text):
        assert re.fullmatch(r"[^:]+::\w+:[^:]+", ref), f"{page}: write {ref!r} as 'path::key:s'"
