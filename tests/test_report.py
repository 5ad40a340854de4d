"""refacelib.report.values: key-result values from small tables, the provenance footer, and the
rule that the landing page's key results and our column of the comparison are glued."""
from __future__ import annotations

import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from refacelib.report import controls as report_controls
from refacelib.report import values as report
from refacelib.pipeline.config import open_run

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
        "p_holm": [0.004, 0.003, 0.9], "hl_diff_mm": [-0.5, 1.0, 0.0],
        "ci_low_mm": [-0.7, 0.8, -0.2], "ci_high_mm": [-0.3, 1.2, 0.2],
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
        | set(report.person_key_values(face_tables[1].assign(hl_diff_mm=-0.1), estimator="refaced_mean"))
        | set(report.gap_key_values(None)),
        "07_muscle": set(report.muscle_key_values(None)),
        "09_controls": set(report_controls.landing_controls_text(None, None, {}, None, profile="tiny")),
    }
    assert {doc for doc, _ in quoted} == set(made)
    for doc, key in quoted:
        assert key in made[doc], f"book/intro.md quotes {doc}::{key}, which no report function makes"


def _glue_text_without_format_spec(text: str) -> list[str]:
    """Cross-document ``{glue:text}`` references that lack a format spec.

    myst-nb splits ``{glue:text}`` at its last colon: ``path::key`` alone reads as key ``path:``.
    """
    refs = re.findall(r"\{glue:(?:text|md)\}`([^`]*::[^`]*)`", text)
    return [ref for ref in refs if not re.fullmatch(r"[^:]+::\w+:[^:]+", ref)]


GLUE_TEXT_PAGES = sorted(p.name for p in (ROOT / "book").glob("*.md")
                         if re.search(r"\{glue:text\}`[^`]*::", p.read_text()))


def test_the_format_spec_check_finds_a_bare_key():
    good = "{glue:text}`../chapters/06_reid.ipynb::key_floor:s`"
    bare = "{glue:text}`../chapters/06_reid.ipynb::key_floor`"
    assert _glue_text_without_format_spec(f"a {good} b {bare}.") == ["../chapters/06_reid.ipynb::key_floor"]



@pytest.mark.parametrize("page", sorted(p.name for p in (ROOT / "book").glob("*.md")))
def test_no_page_pastes_markdown_from_another_document(page):
    """myst-nb's glue:md looks its key up in the page's own notebook only: across documents it fails the build."""
    assert not re.findall(r"\{glue:md\}`[^`]*::", (ROOT / "book" / page).read_text())
    assert {"intro.md", "methods.md"} <= set(GLUE_TEXT_PAGES)  # the pages the check below reads


@pytest.mark.parametrize("page", GLUE_TEXT_PAGES)
def test_cross_document_glue_text_has_a_format_spec(page):
    text = (ROOT / "book" / page).read_text()
    assert _glue_text_without_format_spec(text) == [], f"{page}: write these as 'path::key:s'"


# ------------------------------------------------------------------ tables for readers
@pytest.fixture()
def tests_table():
    """A face-tests table (tables/face_tests.csv's columns): 5 methods x 2 test sets x 2 comparisons."""
    rows = []
    for k, (comparison, method, test_set) in enumerate(
            (c, m, t) for c in ("swapped", "refaced_mean") for m in ("fsl_deface", "mri_deface", "pydeface",
                                                                     "quickshear", "skullstrip")
            for t in ("test_internal", "test_external")):
        rows.append({"method": method, "test_set": test_set, "estimator": comparison, "baseline": "average",
                     "n": 12, "hl_diff_mm": -0.2134 + 0.01 * k, "ci_low_mm": -0.3012, "ci_high_mm": -0.1249,
                     "rbc": -0.61, "p_holm": 10.0 ** -(k + 5)})
    return pd.DataFrame(rows)


FACE_COLUMNS = {"method": "Method", "test_set": "Test set", "estimator": "Candidate", "n": "n",
                ("hl_diff_mm", "ci_low_mm", "ci_high_mm"): "Paired difference (mm) [95% CI]",
                "rbc": "Rank-biserial r", "p_holm": "p (Holm)"}


def test_reader_table_never_prints_zero_for_tiny_p_values(tests_table):
    shown = report.reader_table(tests_table.head(4), columns=FACE_COLUMNS)
    assert "0.0000" not in shown.html and not shown.page["p (Holm)"].str.contains("e-").any()
    assert shown.page["p (Holm)"].tolist() == ["< 0.001"] * 4
    assert report.fmt_pvalue(0.0) == "< 0.001" and report.fmt_pvalue(0.0412) == "0.041"
    sci = report.reader_table(pd.DataFrame({"wilcoxon_p": [3.2e-30, 0.2]}), formats={"wilcoxon_p": "p-sci"})
    assert sci.page.iloc[:, 0].tolist() == ["3.2e-30", "0.2"]


def test_reader_table_puts_an_estimate_and_its_interval_in_one_cell(tests_table):
    shown = report.reader_table(tests_table.head(2), columns=FACE_COLUMNS)
    assert list(shown.page.columns) == list(FACE_COLUMNS.values())
    assert shown.page["Paired difference (mm) [95% CI]"].iloc[0] == "-0.21 [-0.30, -0.12]"
    table = shown.html.split('class="reader-table-download"')[0]  # the CSV link keeps every column
    assert "<td>-0.21 [-0.30, -0.12]</td>" in table and "ci_low" not in table and "-0.30<" not in table


def test_reader_table_drops_the_index(tests_table):
    indexed = tests_table.head(3).set_index(pd.Index(["row-a", "row-b", "row-c"], name="rowname"))
    shown = report.reader_table(indexed, columns=FACE_COLUMNS)
    body = shown.html.split("<tbody>", 1)[1]
    assert "<th" not in body and "row-a" not in shown.html and "rowname" not in shown.html
    assert list(shown.page.columns)[0] == "Method"


def test_reader_table_scrolls_a_wide_table_in_its_container():
    wide = pd.DataFrame({f"a_rather_long_column_name_{i}": [0.5 * i] for i in range(30)})
    shown = report.reader_table(wide)
    assert shown.html.count("<table") == 1
    assert re.search(r'<div[^>]*style="[^"]*overflow-x:\s*auto[^"]*"[^>]*>\s*<table', shown.html)
    assert "a rather long column name 29" in shown.html  # no column dropped


def test_reader_table_folds_a_long_table_and_summarises_it(tests_table):
    assert len(tests_table) > report.MAX_ROWS
    short = report.reader_table(tests_table.head(report.MAX_ROWS), columns=FACE_COLUMNS)
    assert "<details" not in short.html and not short.folded
    pivot = {"index": ["Candidate", "Method"], "columns": "Test set",
             "values": ["Paired difference (mm) [95% CI]", "p (Holm)"]}
    long = report.reader_table(tests_table, columns=FACE_COLUMNS, pivot=pivot)
    assert long.folded and len(long.page) == 10 <= report.MAX_ROWS
    assert long.page.columns[:3].tolist() == ["Candidate", "Method", "test_internal: Paired difference (mm) [95% CI]"]
    assert long.page["Candidate"].tolist()[:5] == ["swapped"] * 5  # the table's order, not sorted
    folded = re.search(r"<details>(.*?)</details>", long.html, re.S)
    assert folded, "the full table is not in a <details> block"
    assert folded.group(1).count("<tr") == len(tests_table) + 1  # every row, plus the header
    plain = report.reader_table(tests_table, columns=FACE_COLUMNS)  # no summary given: its first rows
    assert len(plain.page) == report.MAX_ROWS and plain.full.shape[0] == len(tests_table)


def test_csv_link_serves_the_saved_table(tmp_path, tests_table):
    from urllib.parse import unquote

    path = tmp_path / "face_tests.csv"
    tests_table.to_csv(path, index=False)
    shown = report.reader_table(tests_table, columns=FACE_COLUMNS, csv=path)
    link = re.search(r'<a download="([^"]+)" href="data:text/csv;charset=utf-8,([^"]*)"', shown.html)
    assert link and link.group(1) == "face_tests.csv"
    assert unquote(link.group(2)) == path.read_text()
    assert f"({len(tests_table)} rows)" in shown.html


# ------------------------------------------------------------------ chapters show reader tables
def _chapters():
    return sorted(p for p in (ROOT / "notebooks").glob("[0-9][0-9]_*.py") if p.stem != "09_controls")


def _code_cells(path: Path):
    import jupytext

    return [c for c in jupytext.read(path).cells if c.cell_type == "code"]


@pytest.mark.parametrize("path", _chapters(), ids=lambda p: p.stem)
def test_chapter_code_is_folded_but_its_parameters_cell_is_not(path):
    cells = _code_cells(path)
    params = [c for c in cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1 and not {"hide-input", "remove-input"} & set(params[0].metadata["tags"])
    for cell in cells:
        if cell is not params[0]:
            tags = set(cell.metadata.get("tags", []))
            assert tags & {"hide-input", "remove-input"}, f"{path.name}: code cell not folded:\n{cell.source[:200]}"


def _shown_values(source: str):
    """The expressions a cell displays: its last bare expression and the arguments of display()."""
    import ast

    tree = ast.parse(source)
    if tree.body and isinstance(tree.body[-1], ast.Expr):
        yield tree.body[-1].value
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "display":
            yield from node.args


@pytest.mark.parametrize("path", _chapters(), ids=lambda p: p.stem)
def test_chapter_shows_no_raw_dataframe(path):
    """What a chapter displays is a figure, Markdown, an image or a reader table, never a raw DataFrame."""
    import ast

    allowed = {"reader_table", "Markdown", "Image", "chapter_footer", "display", "glue"}
    for cell in _code_cells(path):
        for value in _shown_values(cell.source):
            if isinstance(value, ast.Name):
                assert value.id == "fig", f"{path.name}: shows {value.id!r} as it is; use report.reader_table"
                continue
            func = value.func if isinstance(value, ast.Call) else None
            name = getattr(func, "attr", getattr(func, "id", None))
            assert name in allowed, f"{path.name}: shows {ast.unparse(value)!r}; use report.reader_table"


@pytest.mark.parametrize("path", _chapters(), ids=lambda p: p.stem)
def test_chapter_links_the_tables_it_shows_as_csv(path):
    text = path.read_text()
    if "save_table(" in text:
        assert "csv=" in text, f"{path.name} saves tables but links none as a CSV download"


# ------------------------------------------------------------------ licence and citation
def test_license_is_bsd_3_clause():
    text = (ROOT / "LICENSE").read_text()
    assert "BSD 3-Clause" in text and "2026" in text and "The refacelib contributors" in text
    assert text.count("\n3. ") == 1 and "Neither the name of the copyright holder" in text
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    # an SPDX expression (PEP 639): setuptools deprecates the table form and will refuse it
    assert project["license"] == "BSD-3-Clause" and project["license-files"] == ["LICENSE"]


def test_citation_cff_parses_and_cites_the_original_paper():
    import yaml

    cff = yaml.safe_load((ROOT / "CITATION.cff").read_text())
    assert cff["cff-version"] == "1.2.0" and cff["type"] == "software" and cff["license"] == "BSD-3-Clause"
    assert cff["title"] and cff["message"] and cff["authors"]
    # the reproduction is what this file cites; the original paper is its reference (a
    # preferred-citation would replace the reproduction's own entry in "Cite this repository")
    assert "preferred-citation" not in cff
    paper = next(ref for ref in cff["references"] if ref.get("journal"))
    bib = (ROOT / "book" / "references.bib").read_text()
    title = re.search(r"@article\{gao2025pitfalls,.*?title\s*=\s*\{(.*?)\},\n", bib, re.S).group(1)
    assert paper["title"] == title.replace("{", "").replace("}", "")
    assert paper["type"] == "article" and paper["year"] == 2025
    assert paper["journal"] == "Computers in Biology and Medicine" and str(paper["volume"]) == "197"
    assert [a["family-names"] for a in paper["authors"]][:2] == ["Gao", "Xu"] and len(paper["authors"]) == 14


def test_offsets_table_and_key_values_summarise_the_signed_offsets():
    from refacelib import controls

    msd = pd.DataFrame({"subject": ["a", "b", "a", "b"], "test_set": "test_external", "method": "pydeface",
                        "candidate": ["average", "average", "refaced_mean", "refaced_mean"],
                        "msd_mm": [1.0, 2.0, 0.5, 0.7], "offset_mm": [-1.0, -0.6, -0.1, 0.1]})
    table = controls.offsets_table(msd)
    assert table.set_index("candidate").loc["average", "offset_mm"] == pytest.approx(-0.8)
    with_coupling = controls.controls_table({0.0: table})
    keys = report_controls.offset_key_values(with_coupling)
    assert keys == {"offset_average_external": "-0.80", "offset_refaced_mean_external": "0.00"}
    assert report_controls.offset_key_values(with_coupling, coupling=0.5) == {}


def test_upsert_coupling_replaces_only_its_own_rows(tmp_path):
    from refacelib import controls

    path = tmp_path / "c.csv"
    controls.upsert_coupling(path, 0.0, pd.DataFrame({"x": [1]}))
    controls.upsert_coupling(path, 1.0, pd.DataFrame({"x": [2]}))
    table = controls.upsert_coupling(path, 0.0, pd.DataFrame({"x": [3, 4]}))
    assert table["coupling"].tolist() == [0.0, 0.0, 1.0] and table["x"].tolist() == [3, 4, 2]
    assert pd.read_csv(path).equals(table)


def test_plot_offsets_draws_one_bar_per_method_and_candidate():
    from refacelib.report import reid_plots

    rows = [{"coupling": 0.0, "test_set": t, "method": m, "candidate": c, "offset_mm": -0.5, "msd_mm": 1.0}
            for t in ("test_internal", "test_external") for m in ("a", "b", "c") for c in ("average", "oracle")]
    fig = reid_plots.plot_offsets(pd.DataFrame(rows), coupling=0.0)
    bars = [p for ax in fig.axes for p in ax.patches]
    assert len(fig.axes) == 2 and len(bars) == 2 * 3 * 2
    assert all(b.get_height() == pytest.approx(-0.5) for b in bars)


def test_reid_test_values_count_each_comparison_and_write_both_paragraphs():
    """The re-identification chapter's glued counts and paragraphs, from a table of paired tests."""
    import pandas as pd

    from refacelib import report

    rows = []
    for method, shift in (("m1", -0.4), ("m2", 0.3)):
        for est, base, p, hl in (("refaced", "average", 0.01, shift), ("swapped", "average", 0.01, -0.2),
                                 ("refaced", "swapped", 0.5, -0.1), ("linear", "average", 0.01, -0.3),
                                 ("refaced", "linear", 0.01, 0.05), ("refaced", "linear_permuted", 0.02, -0.25),
                                 ("linear", "linear_permuted", 0.2, -0.05), ("linear_permuted", "average", 0.3, -0.01)):
            rows.append({"method": method, "test_set": "test_external", "estimator": est, "baseline": base,
                         "p_holm": p, "hl_diff_mm": hl})
    v = report.reid_test_values(pd.DataFrame(rows), estimator="refaced")
    assert (v["n_closer"], v["n_comparisons"], v["n_swap_closer"], v["n_person_closer"]) == (1, 2, 2, 0)
    assert ("closer than the matched baseline in 2 of 2 comparisons; the refaced face is significantly closer than "
            "the linear prior alone in 0 of 2 and significantly farther in 2") in v["linear_text"]
    assert "matched baseline in 0 of 2 comparisons (median shift -0.01 mm)" in v["person_text"]
    assert "closer than it in 2 of 2 comparisons (median shift -0.25 mm)" in v["person_text"]
    assert "true pairs in 0 of 2 (-0.05 mm;" in v["person_text"]
    # stricter alpha: nothing at p = 0.01 counts
    assert report.reid_test_values(pd.DataFrame(rows), estimator="refaced", alpha=0.005)["n_closer"] == 0


def test_muscle_counts_of_the_chapter_and_the_comparison_agree():
    """Chapter 07 and the comparison chapter count the muscle tests by one rule: undefined rows out of both."""
    nan = float("nan")
    diff = pd.DataFrame({"muscle": ["thigh"] * 3, "image": ["pydeface", "quickshear", "skullstrip"],
                         "diff_mean": [0.3, 0.05, nan], "ci_low": [0.1, -0.1, nan], "ci_high": [0.5, 0.2, nan],
                         "wilcoxon_p": [1e-9, 1e-3, nan]})
    corr = pd.DataFrame({"muscle": ["thigh", "thigh"], "image": ["original", "pydeface"], "significant": [True, False]})
    chapter = report.muscle_chapter_values(corr, diff)
    comparison = report.muscle_test_values(corr, diff)
    assert chapter["n_diff"] == "2" and chapter["n_diff_undefined"] == "1"
    assert comparison["ours_n_diff"] == f"{chapter['n_diff_significant']} of {chapter['n_diff']}" == "1 of 2"
    assert comparison["ours_n_wilcoxon"] == f"{chapter['n_wilcoxon_significant']} of {chapter['n_diff']}" == "1 of 2"
    assert set(report.muscle_chapter_values(None, None).values()) == {"n/a"}


def test_closer_counts_follow_the_hodges_lehmann_shift():
    """A median difference and a Hodges-Lehmann shift of opposite signs: the count follows the test's estimate."""
    tests = pd.DataFrame({"method": ["a", "b"], "test_set": ["test_external"] * 2, "estimator": ["refaced"] * 2,
                          "baseline": ["average"] * 2, "p_holm": [0.01, 0.01], "median_diff_mm": [-0.1, 0.1],
                          "hl_diff_mm": [0.05, -0.05], "ci_low_mm": [0.0, -0.1], "ci_high_mm": [0.1, 0.0]})
    assert report.closer_counts(tests, estimator="refaced", prefix="x")["x_test_external"] == "1 of 2"
    key = report.face_key_values(pd.DataFrame({"method": ["a", "b"], "test_set": ["test_external"] * 2,
                                               "candidate": ["refaced"] * 2, "median_mm": [1.0, 1.0]}),
                                 tests, estimator="refaced", methods=["a", "b"])
    assert (key["key_closer_a"], key["key_closer_b"], key["key_n_closer"]) == ("no, farther", "yes", "1 of 2")


# ------------------------------------------------------------------ tables that reach the page
#: Calls whose result is a table for the reader: shown only as a cell's last top-level expression or
#: through display(...).
_SHOWN_CALLS = ("reader_table",)


def _lost_tables(source: str) -> list[int]:
    """Lines of calls to :data:`_SHOWN_CALLS` whose result a notebook cell would drop: an expression
    statement that is not the cell's last top-level statement (inside an ``if`` block, a loop, or
    followed by more code), not wrapped in ``display``."""
    import ast

    lost = []
    for cell in re.split(r"^# %%.*$", source, flags=re.M):
        try:
            tree = ast.parse(cell)
        except SyntaxError:  # a markdown cell
            continue
        last = tree.body[-1] if tree.body else None
        for node in ast.walk(tree):
            if (isinstance(node, ast.Expr) and isinstance(node.value, ast.Call) and node is not last
                    and getattr(node.value.func, "attr", getattr(node.value.func, "id", "")) in _SHOWN_CALLS):
                lost.append(node.lineno)
    return lost


def test_lost_tables_finds_a_table_inside_a_block():
    assert _lost_tables("# %%\nif x:\n    report.reader_table(t)\ny = 1\n") == [3]
    assert _lost_tables("# %%\nif x:\n    display(report.reader_table(t))\n") == []
    assert _lost_tables("# %%\nx = 1\nreport.reader_table(t)\n") == []


@pytest.mark.parametrize("notebook", sorted((ROOT / "notebooks").glob("*.py")), ids=lambda p: p.stem)
def test_every_reader_table_reaches_the_page(notebook):
    assert _lost_tables(notebook.read_text()) == [], f"{notebook.name}: a table that is built but never shown"
