"""Headless Chromium on a small served book: images load, links resolve, screenshots saved, layout checked."""
import os
import struct
import zlib

import pytest

from refacelib.pipeline import browser


@pytest.fixture(scope="module")
def chromium():
    path, reason = browser.install_chromium()
    if path is None:
        if os.environ.get("CI"):  # CI must run the browser checks, not skip them
            pytest.fail(f"headless Chromium unavailable under CI: {reason}")
        pytest.skip(f"headless Chromium unavailable: {reason}")
    return path


def _png(width=8, height=6):
    raw = b"".join(b"\x00" + b"\xc0\x20\x20" * width for _ in range(height))

    def chunk(tag, data):
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b""))


def _book(root):
    """index.html redirects (as Jupyter Book's does) to book/intro.html, which links a chapter."""
    (root / "book").mkdir(parents=True)
    (root / "chapters").mkdir()
    (root / "_images").mkdir()
    (root / "_images" / "fig.png").write_bytes(_png())
    (root / "index.html").write_text('<meta http-equiv="Refresh" content="0; url=book/intro.html" />')
    (root / "book" / "intro.html").write_text(
        '<html><body><h1>Intro</h1><img src="../_images/fig.png">'
        '<a href="../chapters/01.html#top">chapter</a> <a href="#x">here</a> '
        '<a href="https://doi.org/10.1/x">paper</a></body></html>')
    (root / "chapters" / "01.html").write_text(
        '<html><body><h1>Chapter</h1><figure><img src="../_images/fig.png"><figcaption>Fig. 1 A plot</figcaption>'
        '</figure><a href="../book/intro.html">back</a></body></html>')
    return root


def _page(root, name, body):
    """Write ``root/name``: a UTF-8 page with ``body`` inside ``<body>`` (folders made as needed)."""
    path = root / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f'<!DOCTYPE html><html><head><meta charset="utf-8"></head><body>{body}</body></html>',
                    encoding="utf-8")
    return name


def _problems(root, pages, chromium):
    return {r.page: r.problems for r in browser.check_book(root, pages=pages, chromium=chromium)}


_WIDE = '<table id="wide"><tr><th>name</th></tr><tr><td><div style="width: 900px">x</div></td></tr></table>'


def test_served_book_passes_and_screenshots_are_saved(chromium, tmp_path):
    html = _book(tmp_path / "html")
    results = browser.check_book(html, screenshots=tmp_path / "screenshots", chromium=chromium)
    assert [r.page for r in results] == ["index.html", "book/intro.html", "chapters/01.html"]
    assert all(r.problems == [] for r in results), [r.problems for r in results]
    assert [r.images for r in results] == [1, 1, 1]  # index.html ends on intro.html
    for r in results:
        shot = tmp_path / "screenshots" / r.screenshot
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 1000
    assert not list((tmp_path / "screenshots").glob(".*"))  # no temporary files left


def test_missing_image_broken_link_and_unrendered_figure_are_reported(chromium, tmp_path):
    html = _book(tmp_path / "html")
    (html / "_images" / "fig.png").unlink()
    (html / "chapters" / "01.html").write_text(
        '<html><body><a href="../book/gone.html">gone</a><pre>&lt;Figure size 640x480 with 1 Axes&gt;</pre>'
        '</body></html>')
    results = {r.page: r for r in browser.check_book(html, chromium=chromium)}
    assert any("image did not load: ../_images/fig.png (status 404)" in p for p in results["book/intro.html"].problems)
    chapter = results["chapters/01.html"].problems
    assert "broken link: ../book/gone.html" in chapter
    assert "figure shown as text, not as an image: <Figure size 640x480 with 1 Axes>" in chapter


def test_table_wider_than_the_text_column_needs_a_scroll_container(chromium, tmp_path):
    html = tmp_path / "html"
    article = '<article style="width: 600px">{}</article>'
    pages = [_page(html, "book/bare.html", article.format(_WIDE)),
             _page(html, "book/scrolls.html", article.format(f'<div style="overflow-x: auto">{_WIDE}</div>')),
             _page(html, "book/narrow.html", article.format(_WIDE.replace("900px", "300px"))),
             _page(html, "book/body.html", _WIDE.replace("900px", "3000px"))]
    problems = _problems(html, pages, chromium)
    assert len(problems["book/bare.html"]) == 1, problems
    assert problems["book/bare.html"][0].startswith("table 1 (#wide) is 9")  # 900 px and the cell's padding
    assert "wider than the text column (article, 600 px)" in problems["book/bare.html"][0]
    assert problems["book/scrolls.html"] == [] and problems["book/narrow.html"] == []
    assert len(problems["book/body.html"]) == 1 and "(body, " in problems["book/body.html"][0], problems


def test_table_wider_than_the_window_is_measured_at_the_given_width(chromium, tmp_path):
    html = tmp_path / "html"
    page = _page(html, "book/t.html", _WIDE.replace("900px", "1000px"))
    assert _problems(html, [page], chromium)[page] == []  # the default window is 1280 px wide
    narrow = browser.check_book(html, pages=[page], chromium=chromium, width=800)
    assert len(narrow[0].problems) == 1 and "wider than the text column" in narrow[0].problems[0]


def test_zero_printed_with_four_decimals_is_reported(chromium, tmp_path):
    html = tmp_path / "html"
    rows = "".join(f"<tr><td>{m}</td><td> {p} </td></tr>" for m, p in
                   [("A", "0.0000"), ("B", "0.0012"), ("C", "10.0000"), ("D", "\u22120.00000"), ("E", "0.0")])
    page = _page(html, "book/p.html", f"<table><thead><tr><th>model</th><th>p</th></tr></thead>{rows}</table>")
    assert _problems(html, [page], chromium)[page] == [
        "table 1 (model | p): row 2, column 2 (p) reads '0.0000'",
        "table 1 (model | p): row 5, column 2 (p) reads '\u22120.00000'"]


def test_myst_role_left_as_text_is_reported(chromium, tmp_path):
    html = tmp_path / "html"
    bad = _page(html, "book/bad.html", "<p>on device <code>{glue:text}</code>device``.</p>")
    good = _page(html, "book/good.html", "<p>on device <strong>cpu</strong>.</p>")
    problems = _problems(html, [bad, good], chromium)
    assert problems[good] == [] and len(problems[bad]) == 1
    assert problems[bad][0].startswith("MyST role shown as text, not rendered: {glue:text}")


def test_chapter_figures_need_a_numbered_caption(chromium, tmp_path):
    html = tmp_path / "html"
    (html / "_images").mkdir(parents=True)
    for name in ("a.png", "b.png", "c.png"):
        (html / "_images" / name).write_bytes(_png())
    figures = ('<figure><img src="../_images/a.png"><figcaption><p><span class="caption-number">Fig. 1 </span>'
               '<span class="caption-text">Ages</span></p></figcaption></figure>'
               '<figure><img src="../_images/b.png" alt="b plot"><figcaption>Ages by site</figcaption></figure>'
               '<p><img src="../_images/c.png"></p>')
    pages = [_page(html, "chapters/x.html", f"<main>{figures}</main>"), _page(html, "book/y.html", figures)]
    problems = _problems(html, pages, chromium)
    assert problems["chapters/x.html"] == [
        "figure ../_images/b.png (alt 'b plot') has a caption without a figure number: 'Ages by site'",
        "figure ../_images/c.png is not in a <figure> with a numbered caption"]
    assert problems["book/y.html"] == []  # only chapter pages number their figures


def test_layout_is_measured_on_the_page_and_the_files_stay_unchanged(chromium, tmp_path):
    html = tmp_path / "html"
    page = _page(html, "book/z.html", "<p>text</p>")
    before = (html / page).read_bytes()
    with browser.serve(html, inject=browser.LAYOUT_SCRIPT) as (base, _):
        layout, dom = browser.read_layout(browser.open_page(base + page, chromium=chromium, width=1000))
    assert layout["column"]["selector"] == "body" and 950 < layout["column"]["width"] <= 1000
    assert '<pre id="refacelib-layout"' not in dom and (html / page).read_bytes() == before
    assert browser.layout_problems(None) == ["layout not measured: the page script left no result"]


def test_page_links_and_internal_paths():
    images, links = browser.page_links('<img src="a.png"><img alt="x"><a href="b.html">b</a><a name="c">c</a>')
    assert images == ["a.png"] and links == ["b.html"]
    assert browser._internal("../_images/a.png", "http://h:1/book/x.html", "http://h:1/") == "_images/a.png"
    assert browser._internal("mailto:a@b", "http://h:1/x.html", "http://h:1/") is None


def _executable(path):
    path.write_text("#!/bin/sh\n")
    path.chmod(0o755)
    return str(path)


def test_find_chromium_prefers_the_variable_then_the_usual_names(tmp_path, monkeypatch):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("REFACE_CHROMIUM", raising=False)
    assert browser.find_chromium() is None
    on_path = _executable(bin_dir / "chromium-browser")
    assert browser.find_chromium() == on_path
    chosen = _executable(tmp_path / "my-chrome")
    monkeypatch.setenv("REFACE_CHROMIUM", chosen)
    assert browser.find_chromium() == chosen
    monkeypatch.setenv("REFACE_CHROMIUM", str(tmp_path / "missing"))  # not executable: the usual names
    assert browser.find_chromium() == on_path


def test_install_refreshes_package_lists_then_installs(monkeypatch):
    calls = []
    found = iter([None, "/usr/bin/chromium"])
    monkeypatch.setattr(browser, "find_chromium", lambda: next(found))
    monkeypatch.setattr(browser.shutil, "which", lambda name: "/usr/bin/apt-get" if name == "apt-get" else None)
    monkeypatch.setattr(browser.os, "geteuid", lambda: 0)
    monkeypatch.setattr(browser.subprocess, "run",
                        lambda cmd, **kw: calls.append(cmd[1:]) or browser.subprocess.CompletedProcess(cmd, 0, "", ""))
    assert browser.install_chromium() == ("/usr/bin/chromium", "installed")
    assert calls == [["update"], ["install", "-y", "--no-install-recommends", "chromium"]]


def test_install_command_fails_when_chromium_cannot_be_had(monkeypatch, capsys):
    monkeypatch.setattr(browser, "install_chromium", lambda: (None, "no apt-get"))
    assert browser.main(["--install"]) == 1
    assert "no apt-get" in capsys.readouterr().err
    monkeypatch.setattr(browser, "install_chromium", lambda: ("/x/chromium", "found"))
    assert browser.main(["--install"]) == 0


def test_ci_runs_the_browser_checks_instead_of_skipping():
    """.ci/run sets CI and make test installs Chromium first under CI (the fixture then fails, not skips)."""
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    assert 'export CI="${CI:-true}"' in (root / ".ci" / "run").read_text()
    recipe = (root / "Makefile").read_text().split("\ntest:", 1)[1].split("\n\n", 1)[0]
    assert 'if [ -n "$$CI" ]; then $(BIN)/python -m refacelib.browser --install; fi' in recipe
