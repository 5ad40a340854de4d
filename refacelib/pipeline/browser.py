"""Check a built book as a reader sees it: headless Chromium over a local web server.

``python -m refacelib.browser runs/quick-phantom/html`` serves the folder on a
free local port, opens ``index.html`` and every page of the book in headless
Chromium, checks that every ``<img>`` the browser was given loaded (the
server answered 200 to Chromium's request) and that every internal link
points at a file of the book, and saves a screenshot of each page into
``runs/<run>/screenshots/``.

It also checks the layout as rendered: the server adds a small script
(:data:`LAYOUT_SCRIPT`) to every HTML page it serves (the files on disk are
not changed); on ``load`` the script measures the page and writes what it
found, as JSON, into a hidden ``<pre id="refacelib-layout">`` that
``--dump-dom`` returns. From it :func:`layout_problems` reports a table wider
than the text column with no scroll container around it, a table cell that
reads ``0.0000`` and, on a chapter page, a figure without a numbered caption.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import html as html_lib
import http.server
import io
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from dataclasses import dataclass, field
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator
from urllib.parse import unquote, urljoin, urlsplit

__all__ = ["CHROMIUM_FLAGS", "LAYOUT_SCRIPT", "find_chromium", "install_chromium", "serve", "open_page",
           "screenshot", "page_links", "read_layout", "layout_problems", "check_book", "PageCheck"]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run")
#: A MyST role that reached the reader as text (e.g. a glue role inside backticks).
_UNRENDERED_ROLE = re.compile(r"\{(?:glue(?::\w+)?|numref|cite(?::\w+)?|ref|doc)\}\S{0,40}")

_FIGURE_AS_TEXT = re.compile(r"&lt;Figure size [0-9x]+ with \d+ Axes&gt;|<Figure size [0-9x]+ with \d+ Axes>")
# a cell that prints a zero with 4+ decimals: a p-value (or effect) rounded to nothing
_ZERO_CELL = re.compile(r"[-+\u2212]?0\.0{4,}")
# what Sphinx's numfig puts before a caption: "Fig. 3", "Figure 3", "Fig. 2.1"
_FIGURE_NUMBER = re.compile(r"(?:Fig\.|Figure)\s*\d+")
_LAYOUT_PRE = re.compile(r'<pre id="refacelib-layout"[^>]*>(.*?)</pre>', re.S)
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")

#: Added before ``</body>`` of every page :func:`check_book` serves. On ``load`` (and again 1.5 s
#: later, after late layout such as web fonts) it writes into ``<pre id="refacelib-layout" hidden>``
#: the JSON ``{"column": {"selector", "width"}, "tables": [...], "images": [...]}``: the text column
#: (the article body of the Jupyter Book theme, else ``article``, ``main``, ``body``) with its content
#: width; each table's rendered width, whether it lies in the column, whether an element between it
#: and the column scrolls horizontally (computed ``overflow-x`` of ``auto`` or ``scroll``), its
#: caption and its rows' cell texts; each image in the column with its ``figure``'s ``figcaption``.
LAYOUT_SCRIPT = """<script>
(function () {
  var COLUMNS = ["article.bd-article", "article", "main", "[role=main]"];
  function column() {
    for (var i = 0; i < COLUMNS.length; i++) {
      var el = document.querySelector(COLUMNS[i]);
      if (el) return [el, COLUMNS[i]];
    }
    return [document.body, "body"];
  }
  function contentWidth(el) {
    var cs = getComputedStyle(el), px = function (v) { return parseFloat(v) || 0; };
    return el.getBoundingClientRect().width - px(cs.paddingLeft) - px(cs.paddingRight)
      - px(cs.borderLeftWidth) - px(cs.borderRightWidth);
  }
  function scrolls(el, stop) {
    for (; el && el !== stop; el = el.parentElement) {
      var o = getComputedStyle(el).overflowX;
      if (o === "auto" || o === "scroll") return true;
    }
    return false;
  }
  function text(el) { return el ? el.textContent : null; }
  function measure() {
    var c = column(), col = c[0], out;
    try {
      out = {column: {selector: c[1], width: contentWidth(col)}, tables: [], images: []};
      document.querySelectorAll("table").forEach(function (t) {
        out.tables.push({id: t.id, caption: text(t.caption), width: t.getBoundingClientRect().width,
          in_column: col.contains(t), scroll: scrolls(t, col),
          rows: Array.prototype.map.call(t.rows, function (r) {
            return Array.prototype.map.call(r.cells, function (cell) { return cell.textContent; });
          })});
      });
      col.querySelectorAll("img").forEach(function (img) {
        var fig = img.closest("figure");
        out.images.push({src: img.getAttribute("src") || "", alt: img.getAttribute("alt") || "",
          figure: !!fig, caption: fig ? text(fig.querySelector("figcaption")) : null});
      });
    } catch (e) {
      out = {error: String(e)};
    }
    var pre = document.getElementById("refacelib-layout");
    if (!pre) {
      pre = document.createElement("pre");
      pre.id = "refacelib-layout";
      pre.hidden = true;
      document.body.appendChild(pre);
    }
    pre.textContent = JSON.stringify(out);
  }
  window.addEventListener("load", function () { measure(); setTimeout(measure, 1500); });
})();
</script>
"""


def find_chromium() -> str | None:
    """Path of a Chromium/Chrome executable (``$REFACE_CHROMIUM`` first), or None.

    Examples
    --------
    >>> import sys
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"REFACE_CHROMIUM": sys.executable}):
    ...     find_chromium() == sys.executable
    True
    """
    env = os.environ.get("REFACE_CHROMIUM")
    if env and shutil.which(env):
        return shutil.which(env)
    for name in _NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def install_chromium(*, timeout: float = 900) -> tuple[str | None, str]:
    """Find Chromium, or install the Debian package ``chromium`` with apt-get when running as root.

    Returns ``(path or None, reason)``; the reason says why it is missing.
    """
    path = find_chromium()
    if path:
        return path, "found"
    apt = shutil.which("apt-get")
    if apt is None:
        return None, "Chromium is not installed and there is no apt-get to install it"
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        return None, "Chromium is not installed; installing it needs root (apt-get install chromium)"
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        # a fresh machine's package lists may be empty or stale: refresh them first
        subprocess.run([apt, "update"], env=env, capture_output=True, text=True, timeout=timeout)
        proc = subprocess.run([apt, "install", "-y", "--no-install-recommends", "chromium"], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"apt-get install chromium failed: {exc}"
    path = find_chromium()
    return (path, "installed") if path else (None, f"apt-get install chromium failed: {proc.stderr[-500:]}")


def _inject(page: bytes, snippet: bytes) -> bytes:
    """``page`` with ``snippet`` inserted before its last ``</body>`` (appended when it has none).

    Examples
    --------
    >>> _inject(b"<html><body><p>x</p></BODY></html>", b"<script></script>")
    b'<html><body><p>x</p><script></script></BODY></html>'
    >>> _inject(b"<p>x</p>", b"<i></i>")
    b'<p>x</p><i></i>'
    """
    end = page.lower().rfind(b"</body>")
    return page + snippet if end < 0 else page[:end] + snippet + page[end:]


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; every request's path and status is recorded, nothing is logged.

    With ``inject``, every ``.html`` file is served with those bytes added before ``</body>``.
    """

    def __init__(self, *args, requests: list, inject: bytes | None = None, **kwargs):
        self._requests = requests
        self._inject = inject
        super().__init__(*args, **kwargs)

    def send_head(self):
        path = self.translate_path(self.path)
        if self._inject is None or not path.endswith(".html") or not os.path.isfile(path):
            return super().send_head()
        try:
            body = _inject(Path(path).read_bytes(), self._inject)
        except OSError:
            return super().send_head()
        self.send_response(200)
        self.send_header("Content-type", self.guess_type(path))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        return io.BytesIO(body)

    def log_request(self, code="-", size="-"):
        self._requests.append((unquote(urlsplit(self.path).path), int(code) if str(code).isdigit() else 0))

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a browser closing early is not an error here
        pass


@contextlib.contextmanager
def serve(folder: os.PathLike, *, inject: str | None = None) -> Iterator[tuple[str, list]]:
    """Serve ``folder`` on 127.0.0.1 at a free port; yield ``(base_url, requests)``.

    ``requests`` fills with ``(path, status)`` of every request served. With
    ``inject`` (HTML, e.g. :data:`LAYOUT_SCRIPT`) every ``.html`` page is served
    with it added before ``</body>``; the files themselves are not changed.
    """
    requests: list = []
    handler = functools.partial(_Handler, directory=str(folder), requests=requests,
                                inject=None if inject is None else inject.encode("utf-8"))
    server = _QuietServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/", requests
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=10)


def open_page(url: str, *, screenshot_path: os.PathLike | None = None, width: int = 1280,
              height: int = 2000, chromium: str | None = None, timeout: float = 120) -> str:
    """Load ``url`` in headless Chromium; return the DOM after load, optionally saving a screenshot."""
    chromium = chromium or find_chromium()
    if chromium is None:
        raise FileNotFoundError("Chromium not found (install the Debian package 'chromium')")
    cmd = [chromium, *CHROMIUM_FLAGS, f"--window-size={width},{height}", "--hide-scrollbars",
           "--virtual-time-budget=5000", "--dump-dom"]
    tmp = None
    if screenshot_path is not None:
        target = Path(screenshot_path)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.stem}.tmp{os.getpid()}.png")
        cmd.append(f"--screenshot={tmp}")
    with contextlib.ExitStack() as stack:
        profile_dir = stack.enter_context(_temp_dir())
        cmd.insert(1, f"--user-data-dir={profile_dir}")
        proc = subprocess.run([*cmd, url], capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"Chromium failed on {url} (exit {proc.returncode}): {proc.stderr[-1000:]}")
    if tmp is not None:
        if not tmp.is_file() or tmp.stat().st_size == 0:
            raise RuntimeError(f"Chromium wrote no screenshot of {url}")
        os.replace(tmp, screenshot_path)
    return proc.stdout


@contextlib.contextmanager
def _temp_dir() -> Iterator[str]:
    import tempfile

    with tempfile.TemporaryDirectory(prefix="refacelib-chromium-") as d:
        yield d


def screenshot(url: str, path: os.PathLike, **kwargs) -> Path:
    """Save a PNG screenshot of ``url`` (see :func:`open_page` for the options)."""
    open_page(url, screenshot_path=path, **kwargs)
    return Path(path)


class _Links(HTMLParser):
    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.images: list[str] = []
        self.links: list[str] = []

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "img" and attrs.get("src"):
            self.images.append(attrs["src"])
        elif tag == "a" and attrs.get("href"):
            self.links.append(attrs["href"])


def page_links(html: str) -> tuple[list[str], list[str]]:
    """``(img srcs, a hrefs)`` of an HTML text.

    Examples
    --------
    >>> page_links('<p><img src="a.png"><a href="b.html#x">b</a></p>')
    (['a.png'], ['b.html#x'])
    """
    parser = _Links()
    parser.feed(html)
    return parser.images, parser.links


def _internal(url: str, page_url: str, root_url: str) -> str | None:
    """Path relative to the served folder of a same-site ``url`` on ``page_url``, else None.

    Examples
    --------
    >>> _internal("../_images/a.png", "http://h:1/book/x.html", "http://h:1/")
    '_images/a.png'
    >>> _internal("https://doi.org/x", "http://h:1/index.html", "http://h:1/") is None
    True
    """
    if url.startswith(("data:", "mailto:", "javascript:")):
        return None
    full = urljoin(page_url, url)
    if not full.startswith(root_url):
        return None
    return unquote(urlsplit(full).path)[len(urlsplit(root_url).path):]


def read_layout(dom: str) -> tuple[dict | None, str]:
    """``(layout, dom without it)``: the JSON that :data:`LAYOUT_SCRIPT` left in a dumped DOM.

    ``layout`` is None when the page holds no such JSON (the script did not run).

    Examples
    --------
    >>> read_layout('<p>x</p><pre id="refacelib-layout" hidden="">{"a": "&lt;b&gt;"}</pre></body>')
    ({'a': '<b>'}, '<p>x</p></body>')
    >>> read_layout('<p>x</p>')
    (None, '<p>x</p>')
    """
    match = _LAYOUT_PRE.search(dom)
    if match is None:
        return None, dom
    try:
        layout = json.loads(html_lib.unescape(match.group(1)))
    except ValueError:
        layout = {"error": f"unreadable layout JSON: {match.group(1)[:200]}"}
    return layout, dom[:match.start()] + dom[match.end():]


def _squash(text: str | None) -> str:
    """``text`` with runs of whitespace made one space, stripped (None gives '')."""
    return " ".join((text or "").split())


def _table_name(number: int, table: dict) -> str:
    """How a problem names a table: its number on the page and its id, caption or header row.

    Examples
    --------
    >>> _table_name(2, {"id": "", "caption": None, "rows": [["Split", "Site", "n"], ["a", "b", "1"]]})
    'table 2 (Split | Site | n)'
    >>> _table_name(1, {"id": "tab-x", "caption": "Results", "rows": []})
    'table 1 (#tab-x)'
    """
    label = ("#" + table["id"]) if table.get("id") else _squash(table.get("caption"))
    if not label and table.get("rows"):
        label = " | ".join(_squash(cell) for cell in table["rows"][0])
    label = label if len(label) <= 80 else label[:77] + "..."
    return f"table {number} ({label})" if label else f"table {number}"


def _wide_table_problems(layout: dict) -> list[str]:
    """Tables of the text column wider than it, with nothing between them and it that scrolls.

    Examples
    --------
    >>> layout = {"column": {"selector": "article.bd-article", "width": 800.0}, "tables": [
    ...     {"width": 1200.4, "in_column": True, "scroll": False, "rows": [["a", "b"]]},
    ...     {"width": 1200.4, "in_column": True, "scroll": True, "rows": [["c"]]},
    ...     {"width": 800.5, "in_column": True, "scroll": False, "rows": [["d"]]}]}
    >>> _wide_table_problems(layout)  # doctest: +NORMALIZE_WHITESPACE
    ['table 1 (a | b) is 1200 px wide, wider than the text column (article.bd-article, 800 px),
      and no element around it scrolls (overflow-x: auto)']
    """
    column = layout["column"]
    problems = []
    for number, table in enumerate(layout.get("tables", []), 1):
        if table["in_column"] and not table["scroll"] and table["width"] > column["width"] + 1:
            problems.append(f"{_table_name(number, table)} is {table['width']:.0f} px wide, wider than the text "
                            f"column ({column['selector']}, {column['width']:.0f} px), and no element around it "
                            "scrolls (overflow-x: auto)")
    return problems


def _zero_cell_problems(layout: dict) -> list[str]:
    """Table cells that read a zero with 4 or more decimals (``0.0000``, ``-0.00000``).

    Examples
    --------
    >>> rows = [["model", "p"], ["A", " 0.0000 "], ["B", "0.0012"], ["C", "10.0000"], ["D", "\\u22120.00000"]]
    >>> for problem in _zero_cell_problems({"tables": [{"rows": rows}]}):
    ...     print(problem)
    table 1 (model | p): row 2, column 2 (p) reads '0.0000'
    table 1 (model | p): row 5, column 2 (p) reads '−0.00000'
    """
    problems = []
    for number, table in enumerate(layout.get("tables", []), 1):
        rows = table.get("rows", [])
        for r, row in enumerate(rows):
            for c, cell in enumerate(row):
                text = cell.strip()
                if not _ZERO_CELL.fullmatch(text):
                    continue
                header = _squash(rows[0][c]) if r > 0 and c < len(rows[0]) else ""
                where = f"row {r + 1}, column {c + 1}" + (f" ({header})" if header else "")
                problems.append(f"{_table_name(number, table)}: {where} reads {text!r}")
    return problems


def _figure_problems(layout: dict) -> list[str]:
    """Images of the text column not in a ``figure`` whose ``figcaption`` starts with ``Fig. N``.

    ``data:`` images (inline icons) are left out.

    Examples
    --------
    >>> images = [{"src": "../_images/a.png", "alt": "", "figure": True, "caption": "  Fig. 1 Ages #"},
    ...           {"src": "../_images/b.png", "alt": "B", "figure": True, "caption": "Ages"},
    ...           {"src": "../_images/c.png", "alt": "", "figure": False, "caption": None},
    ...           {"src": "data:image/svg+xml,x", "alt": "", "figure": False, "caption": None}]
    >>> for problem in _figure_problems({"images": images}):
    ...     print(problem)
    figure ../_images/b.png (alt 'B') has a caption without a figure number: 'Ages'
    figure ../_images/c.png is not in a <figure> with a numbered caption
    """
    problems = []
    for image in layout.get("images", []):
        if image["src"].startswith("data:"):
            continue
        name = image["src"] or "(no src)"
        if image.get("alt") and image["alt"] != image["src"]:
            name += f" (alt {image['alt']!r})"
        caption = _squash(image.get("caption"))
        if not image["figure"]:
            problems.append(f"figure {name} is not in a <figure> with a numbered caption")
        elif image.get("caption") is None:
            problems.append(f"figure {name} has no <figcaption>")
        elif not _FIGURE_NUMBER.match(caption):
            shown = caption if len(caption) <= 60 else caption[:57] + "..."
            problems.append(f"figure {name} has a caption without a figure number: {shown!r}")
    return problems


def layout_problems(layout: dict | None, *, chapter: bool = False) -> list[str]:
    """Problems in what :data:`LAYOUT_SCRIPT` measured on a page (see :func:`read_layout`).

    A table of the text column wider than the column with no scroll container;
    a table cell reading ``0.0000`` (``[-+]?0.0000...``: a value rounded to nothing);
    and, with ``chapter``, an image of the text column without a numbered caption.

    Examples
    --------
    >>> layout_problems(None)
    ['layout not measured: the page script left no result']
    >>> layout_problems({"error": "TypeError: x"})
    ['layout check failed in the page: TypeError: x']
    >>> layout_problems({"column": {"selector": "body", "width": 1264}, "tables": [], "images": []}, chapter=True)
    []
    """
    if layout is None:
        return ["layout not measured: the page script left no result"]
    if "error" in layout:
        return [f"layout check failed in the page: {layout['error']}"]
    problems = _wide_table_problems(layout) + _zero_cell_problems(layout)
    return problems + (_figure_problems(layout) if chapter else [])


@dataclass
class PageCheck:
    """What one page showed: its images, links and the problems found."""

    page: str
    images: int = 0
    links: int = 0
    screenshot: str | None = None
    problems: list[str] = field(default_factory=list)


def check_book(html_folder: os.PathLike, *, screenshots: os.PathLike | None = None,
               pages: list[str] | None = None, chromium: str | None = None,
               width: int = 1280) -> list[PageCheck]:
    """Open ``index.html`` and every page of a built book in headless Chromium.

    For each page: every ``<img>`` in the loaded DOM must have been requested
    by Chromium and served with status 200; no figure may show as the text
    ``<Figure size ...>`` (a figure that was never rendered); every internal
    link must point at an existing file of the book. As laid out in a window
    ``width`` pixels wide (see :func:`layout_problems`): no table of the text
    column may be wider than the column unless an element around it scrolls
    horizontally; no table cell may read ``0.0000``; on a chapter page
    (``chapters/*.html``) every image of the text column must sit in a
    ``<figure>`` whose ``<figcaption>`` starts with its number (``Fig. 3``).
    With ``screenshots`` a PNG of each page is
    saved there (``book_intro.png``, ``chapters_01_cohort.png`` ...).

    Parameters
    ----------
    html_folder : path
        The built book (``runs/<run>/html``).
    pages : list of str, optional
        Pages relative to ``html_folder``; default ``index.html``, then every
        ``.html`` file under ``book/``, ``chapters/`` and ``appendix/``.
    chromium : str, optional
        The browser; default :func:`find_chromium`.
    width : int
        Width of the browser window in CSS pixels (default 1280).
    """
    folder = Path(html_folder)
    if pages is None:
        pages = ["index.html"] + sorted(p.relative_to(folder).as_posix()
                                        for sub in ("book", "chapters", "appendix") for p in (folder / sub).glob("*.html"))
    out = []
    with serve(folder, inject=LAYOUT_SCRIPT) as (base, requests):
        for page in pages:
            check = PageCheck(page)
            shot = None
            if screenshots is not None:
                shot = Path(screenshots) / (page.removesuffix(".html").replace("/", "_") + ".png")
            start = len(requests)
            try:
                dom = open_page(base + page, screenshot_path=shot, chromium=chromium, width=width)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                check.problems.append(f"did not load: {exc}")
                out.append(check)
                continue
            check.screenshot = None if shot is None else shot.name
            served = dict(requests[start:])
            if served.get("/" + page) != 200:
                check.problems.append(f"page itself answered {served.get('/' + page)}")
            # a redirect page (Jupyter Book's index.html) ends on another page: links are relative to it
            shown = [p for p, _ in requests[start:] if p.endswith(".html")]
            shown_page = shown[-1].lstrip("/") if shown else page
            page_url = base + shown_page
            layout, dom = read_layout(dom)
            check.problems.extend(layout_problems(layout, chapter=shown_page.startswith("chapters/")))
            images, links = page_links(dom)
            check.images, check.links = len(images), len(links)
            for text in sorted(set(_FIGURE_AS_TEXT.findall(dom))):
                check.problems.append(f"figure shown as text, not as an image: {html_lib.unescape(text)}")
            for text in sorted(set(_UNRENDERED_ROLE.findall(html_lib.unescape(re.sub(r"<[^>]+>", "", dom))))):
                check.problems.append(f"MyST role shown as text, not rendered: {text}")
            for src in images:
                path = _internal(src, page_url, base)
                if path is not None and served.get("/" + path) != 200:
                    check.problems.append(f"image did not load: {src} (status {served.get('/' + path)})")
            for href in links:
                path = _internal(href, page_url, base)
                if path is None or path == "":
                    continue
                target = folder / path
                if not (target.is_file() or (target.is_dir() and (target / "index.html").is_file())):
                    check.problems.append(f"broken link: {href}")
            out.append(check)
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refacelib.browser", description=__doc__.splitlines()[0])
    parser.add_argument("html", nargs="?", help="built book folder, e.g. runs/quick-phantom/html")
    parser.add_argument("--install", action="store_true",
                        help="only make sure headless Chromium is there (apt-get when missing); exit 1 if it cannot")
    parser.add_argument("--screenshots", default=None, help="folder for the PNGs (default: <run>/screenshots)")
    parser.add_argument("--width", type=int, default=1280, help="browser window width in CSS pixels (default 1280)")
    args = parser.parse_args(argv)
    if args.install:
        chromium, reason = install_chromium()
        print(f"Chromium: {chromium} ({reason})" if chromium else f"error: {reason}", file=sys.stderr)
        return 0 if chromium else 1
    if args.html is None:
        parser.error("give the built book folder (or --install)")
    html = Path(args.html)
    if not (html / "index.html").is_file():
        print(f"error: {html}/index.html not found; build the book first", file=sys.stderr)
        return 2
    chromium, reason = install_chromium()
    if chromium is None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    shots = Path(args.screenshots) if args.screenshots else html.resolve().parent / "screenshots"
    results = check_book(html, screenshots=shots, chromium=chromium, width=args.width)
    for r in results:
        status = "ok" if not r.problems else f"{len(r.problems)} problem(s)"
        print(f"{r.page}: {r.images} images, {r.links} links, {status}")
        for problem in r.problems:
            print(f"    {problem}")
    print(f"screenshots: {shots}")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
