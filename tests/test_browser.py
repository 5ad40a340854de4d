"""Headless Chromium on a small served book: images load, links resolve, screenshots saved."""
import struct
import zlib

import pytest

from refacelib import browser


@pytest.fixture(scope="module")
def chromium():
    path, reason = browser.install_chromium()
    if path is None:
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
        '<html><body><h1>Chapter</h1><img src="../_images/fig.png"><a href="../book/intro.html">back</a></body></html>')
    return root


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
