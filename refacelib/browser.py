"""Check a built book as a reader sees it: headless Chromium over a local web server.

``python -m refacelib.browser runs/quick-phantom/html`` serves the folder on a
free local port, opens ``index.html`` and every page of the book in headless
Chromium, checks that every ``<img>`` the browser was given loaded (the
server answered 200 to Chromium's request) and that every internal link
points at a file of the book, and saves a screenshot of each page into
``runs/<run>/screenshots/``.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import html as html_lib
import http.server
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

__all__ = ["CHROMIUM_FLAGS", "find_chromium", "install_chromium", "serve", "open_page", "screenshot",
           "dump_dom", "page_links", "check_book", "PageCheck"]

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--no-first-run")
_FIGURE_AS_TEXT = re.compile(r"&lt;Figure size [0-9x]+ with \d+ Axes&gt;|<Figure size [0-9x]+ with \d+ Axes>")
_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


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
        proc = subprocess.run([apt, "install", "-y", "--no-install-recommends", "chromium"], env=env,
                              capture_output=True, text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return None, f"apt-get install chromium failed: {exc}"
    path = find_chromium()
    return (path, "installed") if path else (None, f"apt-get install chromium failed: {proc.stderr[-500:]}")


class _Handler(http.server.SimpleHTTPRequestHandler):
    """Static files; every request's path and status is recorded, nothing is logged."""

    def __init__(self, *args, requests: list, **kwargs):
        self._requests = requests
        super().__init__(*args, **kwargs)

    def log_request(self, code="-", size="-"):
        self._requests.append((unquote(urlsplit(self.path).path), int(code) if str(code).isdigit() else 0))

    def log_message(self, format, *args):  # noqa: A002 - the stdlib's name
        pass


class _QuietServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request, client_address):  # a browser closing early is not an error here
        pass


@contextlib.contextmanager
def serve(folder: os.PathLike) -> Iterator[tuple[str, list]]:
    """Serve ``folder`` on 127.0.0.1 at a free port; yield ``(base_url, requests)``.

    ``requests`` fills with ``(path, status)`` of every request served.
    """
    requests: list = []
    handler = functools.partial(_Handler, directory=str(folder), requests=requests)
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


def dump_dom(url: str, **kwargs) -> str:
    """The DOM of ``url`` after load, as HTML text."""
    return open_page(url, **kwargs)


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


@dataclass
class PageCheck:
    """What one page showed: its images, links and the problems found."""

    page: str
    images: int = 0
    links: int = 0
    screenshot: str | None = None
    problems: list[str] = field(default_factory=list)


def check_book(html_folder: os.PathLike, *, screenshots: os.PathLike | None = None,
               pages: list[str] | None = None, chromium: str | None = None) -> list[PageCheck]:
    """Open ``index.html`` and every page of a built book in headless Chromium.

    For each page: every ``<img>`` in the loaded DOM must have been requested
    by Chromium and served with status 200; no figure may show as the text
    ``<Figure size ...>`` (a figure that was never rendered); every internal
    link must point at an existing file of the book. With ``screenshots`` a PNG of each page is
    saved there (``book_intro.png``, ``chapters_01_cohort.png`` ...).

    Parameters
    ----------
    html_folder : path
        The built book (``runs/<run>/html``).
    pages : list of str, optional
        Pages relative to ``html_folder``; default ``index.html``, then every
        ``.html`` file under ``book/``, ``chapters/`` and ``appendix/``.
    """
    folder = Path(html_folder)
    if pages is None:
        pages = ["index.html"] + sorted(p.relative_to(folder).as_posix()
                                        for sub in ("book", "chapters", "appendix") for p in (folder / sub).glob("*.html"))
    out = []
    with serve(folder) as (base, requests):
        for page in pages:
            check = PageCheck(page)
            shot = None
            if screenshots is not None:
                shot = Path(screenshots) / (page.removesuffix(".html").replace("/", "_") + ".png")
            start = len(requests)
            try:
                dom = open_page(base + page, screenshot_path=shot, chromium=chromium)
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
            page_url = base + (shown[-1].lstrip("/") if shown else page)
            images, links = page_links(dom)
            check.images, check.links = len(images), len(links)
            for text in sorted(set(_FIGURE_AS_TEXT.findall(dom))):
                check.problems.append(f"figure shown as text, not as an image: {html_lib.unescape(text)}")
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
    parser.add_argument("html", help="built book folder, e.g. runs/quick-phantom/html")
    parser.add_argument("--screenshots", default=None, help="folder for the PNGs (default: <run>/screenshots)")
    args = parser.parse_args(argv)
    html = Path(args.html)
    if not (html / "index.html").is_file():
        print(f"error: {html}/index.html not found; build the book first", file=sys.stderr)
        return 2
    chromium, reason = install_chromium()
    if chromium is None:
        print(f"error: {reason}", file=sys.stderr)
        return 2
    shots = Path(args.screenshots) if args.screenshots else html.resolve().parent / "screenshots"
    results = check_book(html, screenshots=shots, chromium=chromium)
    for r in results:
        status = "ok" if not r.problems else f"{len(r.problems)} problem(s)"
        print(f"{r.page}: {r.images} images, {r.links} links, {status}")
        for problem in r.problems:
            print(f"    {problem}")
    print(f"screenshots: {shots}")
    return 1 if any(r.problems for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
