"""Build the book: execute each chapter with papermill, then Jupyter Book (execution off).

``python -m refacelib.pipeline book --profile quick --dataset phantom``

* Chapters are the jupytext ``.py`` files of ``notebooks/`` listed in ``_toc.yml``
  (as ``chapters/<name>``). Each is converted, executed by papermill with the
  parameters ``profile`` and ``dataset``, scrubbed of private paths and stored
  in the run folder. A chapter is executed again only when its cache key
  (source, resolved parameters, dataset, refacelib sources, earlier chapters)
  changed.
* A failing chapter stops the build with its own name; its failed copy goes to
  ``failed/`` and the last good HTML stays in place.
* The HTML is built in a staging folder and swapped in only on success, in one
  atomic step: ``html`` is a link to the current build ``.html-<n>``, replaced by
  renaming a new link over it, so a build killed at any point leaves the old
  book or the new one in ``html/``, never none.
* Every cell of a chapter has a time limit (``REFACE_CELL_TIMEOUT`` seconds,
  default :data:`CELL_TIMEOUT`; ``0`` for none): a hung kernel fails the chapter.
* One command at a time per run folder (:func:`run_lock`): ``book``, ``html``,
  ``bench``, ``checkpoint`` (``make checkpoint``) and ``lab`` (``make lab``, for
  as long as JupyterLab runs) refuse to start while another of them holds the run.
* ``python -m refacelib.pipeline bench`` (``make bench``) builds the book, times
  a warm rebuild, executes ``notebooks/90_performance.py`` and rebuilds the HTML
  with it as the Performance appendix; until then the appendix page says that
  the benchmark has not been run.
"""
from __future__ import annotations

import argparse
import contextlib
import fcntl
import hashlib
import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import yaml

from refacelib._utils.hashing import files_digest
from refacelib._utils.io import UnsafeFileError, atomic_path, atomic_write_text, save_table
from refacelib._utils.parallel import check_backend
from refacelib.data.bids import dataset_fingerprint
from refacelib.pipeline import refacing
from refacelib.pipeline.config import ConfigError, Run, check_parameters, open_run, parse_flag, project_root, stable_hash

__all__ = ["ChildrenPeak", "chapter_names", "private_replacements", "build_book", "run_bench", "run_lock", "run_lab", "scrub_notebook", "main"]

KERNEL = {"name": "python3", "display_name": "Python 3", "language": "python"}

#: Default time limit of one cell in seconds (``REFACE_CELL_TIMEOUT`` overrides it, 0 = none): long
#: enough for the longest cell seen (training the quick cascade on 2 CPUs, about 30 min), short
#: enough that a hung kernel does not hold a build for ever. A paper run on a slow GPU may need more.
CELL_TIMEOUT = 4 * 3600


def cell_timeout() -> int | None:
    """Time limit of one chapter cell in seconds (None: no limit), from ``REFACE_CELL_TIMEOUT``.

    Examples
    --------
    >>> from unittest import mock
    >>> with mock.patch.dict(os.environ, {"REFACE_CELL_TIMEOUT": "60"}):
    ...     cell_timeout()
    60
    """
    value = os.environ.get("REFACE_CELL_TIMEOUT", "").strip() or str(CELL_TIMEOUT)
    try:
        seconds = int(value)
    except ValueError:
        raise ConfigError(f"REFACE_CELL_TIMEOUT must be a whole number of seconds, got {value!r}") from None
    return seconds if seconds > 0 else None

#: The benchmark notebook, shown as ``appendix/<name>`` once ``make bench`` executed it.
APPENDIX = "90_performance"
_APPENDIX_NOT_RUN = """# Performance

The benchmarks of this appendix have not been run for this book. `make bench`
(with the same `PROFILE` and `DATASET`) measures the sampler cost against face
quality, the training throughput of both cascade stages, the cost of the face
surface distance and the time and memory of every chapter, and rebuilds the
book with this appendix filled in.
"""


#: Run-folder files a chapter reads that no cached stage of the book produces (``make controls``
#: writes ``tables/controls.csv``, ``make ablation`` ``tables/ablation.csv``): their content enters the
#: chapter's cache key. Paths are relative to the run folder; ``project:`` ones to the project root
#: (the ablation table shipped beside the checkpoints), with ``{profile}`` filled in.
CHAPTER_INPUTS = {"09_controls": ("tables/controls.csv", "tables/controls_offsets.csv",
                                  "tables/controls_permutation.csv", "tables/controls_permutation_msd.csv"),
                  "04_training": ("tables/ablation.csv", "project:checkpoints/ablation-{profile}.csv")}


def chapter_input_paths(run: Run, name: str) -> dict[str, Path]:
    """The files of :data:`CHAPTER_INPUTS` of chapter ``name`` for ``run``: label -> path."""
    out = {}
    for rel in CHAPTER_INPUTS.get(name, ()):
        rel = rel.format(profile=run.profile)
        out[rel] = project_root() / rel.removeprefix("project:") if rel.startswith("project:") else run.folder / rel
    return out


def _inputs_digest(run: Run, name: str) -> str:
    digest = hashlib.sha256()
    for rel, path in chapter_input_paths(run, name).items():
        digest.update(rel.encode() + (path.read_bytes() if path.is_file() else b"absent"))
    return digest.hexdigest()[:12]


class ChapterFailed(RuntimeError):
    """A chapter raised while papermill executed it."""


def chapter_names(toc: Path | None = None) -> list[str]:
    """Chapter notebooks in book order, read from ``_toc.yml`` (``chapters/<name>`` entries)."""
    toc = toc or project_root() / "_toc.yml"
    with open(toc) as fh:
        data = yaml.safe_load(fh)
    files: list[str] = []

    def walk(node):
        if isinstance(node, dict):
            if "file" in node:
                files.append(str(node["file"]))
            for value in node.values():
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(data)
    return [f.split("/", 1)[1] for f in files if f.startswith("chapters/")]


def _source_digest(folder: Path, pattern: str = "*.py") -> str:
    """A short digest of the names and bytes of the files under ``folder`` matching ``pattern`` (folders skipped)."""
    return files_digest((path.name, path) for path in sorted(p for p in folder.rglob(pattern) if p.is_file()))


def _dataset_fingerprint(run: Run) -> str:
    return "phantom" if run.is_phantom else dataset_fingerprint(run.dataset)


def _scrub_pairs(replacements: dict[str, str]) -> list[tuple[str, str]]:
    """Every form of each private path that may appear in a notebook, longest first.

    The path as written, and percent-encoded as in a ``file://`` link or a URL
    (``/a b`` as ``/a%20b``, and with its slashes encoded, ``%2Fa%20b``).
    """
    from urllib.parse import quote

    pairs = {}
    for old, new in replacements.items():
        if not old:
            continue
        pairs[old] = new
        for form in (quote(old, safe="/"), quote(old, safe="")):
            pairs.setdefault(form, quote(new, safe="/") if form.startswith("/") or "%" in form else new)
    return sorted(pairs.items(), key=lambda kv: -len(kv[0]))


def scrub_notebook(nb, replacements: dict[str, str]) -> None:
    """Replace private absolute paths everywhere in a notebook.

    In the notebook's and every cell's metadata, sources, outputs and attachments,
    in strings and in dictionary keys, as written or percent-encoded
    (:func:`_scrub_pairs`).

    Examples
    --------
    >>> import nbformat
    >>> nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell("see /home/me/x")])
    >>> nb.cells[0].metadata["where"] = {"/home/me/y": "file:///home/me/a%20b"}
    >>> scrub_notebook(nb, {"/home/me": "~"})
    >>> nb.cells[0].source, dict(nb.cells[0].metadata)
    ('see ~/x', {'where': {'~/y': 'file://~/a%20b'}})
    """
    items = _scrub_pairs(replacements)

    def clean(value):
        if isinstance(value, str):
            for old, new in items:
                value = value.replace(old, new)
            return value
        if isinstance(value, list):
            return [clean(v) for v in value]
        if isinstance(value, dict):
            return {clean(k): clean(v) for k, v in value.items()}
        return value

    nb.metadata = type(nb.metadata)(clean(dict(nb.metadata)))
    for cell in nb.cells:
        cell.source = clean(cell.source)
        cell.metadata = type(cell.metadata)(clean(dict(cell.metadata)))
        if "attachments" in cell:
            cell.attachments = type(cell.attachments)(clean(dict(cell.attachments)))
        if "outputs" in cell:
            cell.outputs = [type(o)(clean(dict(o))) for o in cell.outputs]


def private_replacements(run: Run) -> dict[str, str]:
    """Private absolute paths of a run and what replaces them in anything published.

    The project folder, the run folder, a real dataset's folder, the Python prefix and
    the home folder, as ``{path: placeholder}`` (:func:`scrub_notebook` applies them).
    """
    out = {str(project_root()): ".", str(run.folder): f"runs/{run.label}"}
    if not run.is_phantom:
        out[run.dataset] = "<DATASET>"
    for prefix in {sys.prefix, sys.base_prefix}:
        out[prefix] = "<python>"
    home = os.path.expanduser("~")
    if home not in ("/", ""):
        out[home] = "~"
    return out


class ChildrenPeak:
    """Peak resident memory (MiB) of this process's children, polled while the block runs.

    A chapter runs in a kernel (a child process) that may start worker processes;
    their summed resident memory is sampled every ``interval`` seconds, so the peak
    is the chapter's own (``resource.RUSAGE_CHILDREN`` would give the largest of every
    child reaped so far: the same number for every later chapter).

    Examples
    --------
    >>> with ChildrenPeak(interval=0.01) as peak:
    ...     _ = subprocess.run([sys.executable, "-c", "x = bytearray(64 * 2**20); import time; time.sleep(0.5)"])
    >>> peak.mib > 50
    True
    """

    def __init__(self, interval: float = 0.25):
        self.interval, self.mib = float(interval), 0.0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)

    def _sample(self) -> float:
        import psutil

        total = 0
        for child in psutil.Process(os.getpid()).children(recursive=True):
            try:
                total += child.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                continue
        return total / 2**20

    def _poll(self) -> None:
        while not self._stop.is_set():
            self.mib = max(self.mib, self._sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> "ChildrenPeak":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()


def _execute(run: Run, name: str, out_path: Path, *, publish_faces: bool = False) -> dict:
    """Convert ``notebooks/<name>.py`` and execute it into ``out_path``."""
    import jupytext
    import nbformat
    import papermill as pm

    src = project_root() / "notebooks" / f"{name}.py"
    nb = jupytext.read(src)
    nb.metadata["kernelspec"] = KERNEL
    failed = run.path("failed", f"{name}.ipynb")
    work = run.path("notebooks", f".{name}.input.ipynb")
    timeout = cell_timeout()
    nbformat.write(nb, work)
    start = time.perf_counter()
    peak = ChildrenPeak()
    try:
        with peak:
            pm.execute_notebook(
                str(work), str(failed),
                parameters={"profile": run.profile, "dataset": run.dataset, "publish_faces": publish_faces},
                kernel_name="python3", cwd=str(src.parent), progress_bar=sys.stderr.isatty(),
                log_output=False, request_save_on_cell_execute=False, execution_timeout=timeout,
            )
    except Exception as err:  # papermill wraps the cell's error; a dead kernel may leave no notebook
        if failed.exists():
            executed = nbformat.read(str(failed), as_version=4)
            scrub_notebook(executed, private_replacements(run))
            nbformat.write(executed, str(failed))
        reason = getattr(err, "ename", type(err).__name__), getattr(err, "evalue", str(err))
        for old, new in _scrub_pairs(private_replacements(run)):
            reason = tuple(part.replace(old, new) for part in reason)
        raise ChapterFailed(
            f"chapter {name} (notebooks/{name}.py) failed: {reason[0]}: {reason[1]}\n"
            f"  the executed copy with the error: {run.relpath(failed)}"
        ) from None
    finally:
        work.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    executed = nbformat.read(failed, as_version=4)
    scrub_notebook(executed, private_replacements(run))
    with atomic_path(out_path) as tmp:
        nbformat.write(executed, tmp)
    failed.unlink(missing_ok=True)
    # the chapter's own peak (kernel and its workers), not the running maximum of every child so far
    return {"chapter": name, "seconds": round(seconds, 2), "peak_rss_mib": round(peak.mib, 1)}


def _take_lock(run: Run, holder: str):
    """The run's lock file, locked (``flock``, released when every copy of it is closed).

    The holder's name and process id are written into it for the message of a refusal.
    """
    lock = open(run.path(".lock"), "a+")
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.seek(0)
        who, _, pid = lock.read().partition("\n")
        lock.close()
        raise ConfigError(f"another {who or 'build'} of runs/{run.label} is running"
                          + (f" (process {pid.strip()})" if pid.strip() else "") + "; wait for it or stop it") from None
    lock.seek(0)
    lock.truncate()
    lock.write(f"{holder}\n{os.getpid()}\n")
    lock.flush()
    return lock


@contextlib.contextmanager
def run_lock(run: Run, *, holder: str = "build"):
    """Refuse a second build (or ``make lab``, ``make checkpoint``) of the same run while one is going on."""
    lock = _take_lock(run, holder)
    try:
        yield
    finally:
        fcntl.flock(lock, fcntl.LOCK_UN)
        lock.close()


def run_lab(profile: str = "quick", dataset: str = "phantom") -> None:
    """Replace this process by JupyterLab in ``notebooks/``, holding the run's lock while it runs.

    The lock's file descriptor is inherited by JupyterLab (``exec``, same process),
    so ``make book`` of the same run refuses to start until JupyterLab exits, and
    ``make lab`` refuses while a build holds the run: a chapter run by hand and
    a build never write the same run folder at the same time.
    """
    check_parameters(profile, dataset, False)
    run = open_run(profile, dataset)
    jupyter = Path(sys.executable).parent / "jupyter"
    if not jupyter.is_file():
        raise ConfigError(f"JupyterLab is not installed next to {sys.executable}; `make lab` installs it")
    lock = _take_lock(run, "JupyterLab session (make lab)")
    os.set_inheritable(lock.fileno(), True)
    env = dict(os.environ, REFACE_PROFILE=profile, REFACE_DATASET=dataset)
    os.execve(jupyter, [str(jupyter), "lab", f"--notebook-dir={project_root() / 'notebooks'}"], env)


#: The chapter that trains the cascade when no checkpoint matches (:func:`refacelib.pipeline.refacing.training_plan`).
TRAINING_CHAPTER = "04_training"


def _warn_training(run: Run, log) -> None:
    """Say before the training chapter runs that it will train, and for about how long."""
    try:
        message = refacing.training_plan(run)
    except Exception as exc:  # the chapter itself reports what is wrong; the warning is a courtesy
        message = None
        log(f"  (could not tell whether the cascade needs training: {type(exc).__name__})")
    if message:
        log(f"  {message}")


def execute_chapters(run: Run, names: list[str], *, force: bool = False, publish_faces: bool = False,
                     log=print) -> list[dict]:
    """Execute every chapter whose cache key changed; return timing rows of executed ones."""
    base = {
        "params": run.params, "profile": run.profile, "data": _dataset_fingerprint(run),
        "publish_faces": publish_faces,
        "lib": _source_digest(Path(__file__).resolve().parents[1]),
    }
    previous, timings = stable_hash(base, 16), []
    for i, name in enumerate(names, 1):
        source = (project_root() / "notebooks" / f"{name}.py").read_text()
        key = stable_hash([previous, source] + ([_inputs_digest(run, name)] if name in CHAPTER_INPUTS else []), 16)
        out = run.folder / "notebooks" / f"{name}.ipynb"
        key_file = run.folder / "notebooks" / f"{name}.key"
        if not force and out.exists() and key_file.exists() and key_file.read_text() == key:
            log(f"[{i}/{len(names)}] {name}: up to date")
        else:
            log(f"[{i}/{len(names)}] {name}: executing ...")
            if name == TRAINING_CHAPTER:
                _warn_training(run, log)
            row = _execute(run, name, out, publish_faces=publish_faces)
            atomic_write_text(key_file, key)
            log(f"[{i}/{len(names)}] {name}: done in {row['seconds']:.1f} s")
            timings.append(row)
        previous = key
    return timings


def _stage(run: Run, names: list[str]) -> Path:
    """Copy config, prose and executed chapters into the run's book source folder."""
    root, stage = project_root(), run.folder / "book_src"
    if stage.exists():
        shutil.rmtree(stage)
    shutil.copytree(root / "book", stage / "book")
    for name in ("_config.yml", "_toc.yml"):
        shutil.copy2(root / name, stage / name)
    (stage / "chapters").mkdir()
    for name in names:
        shutil.copy2(run.folder / "notebooks" / f"{name}.ipynb", stage / "chapters" / f"{name}.ipynb")
    (stage / "appendix").mkdir()
    bench = run.folder / "notebooks" / f"{APPENDIX}.ipynb"
    if bench.exists():
        shutil.copy2(bench, stage / "appendix" / f"{APPENDIX}.ipynb")
    else:
        (stage / "appendix" / f"{APPENDIX}.md").write_text(_APPENDIX_NOT_RUN)
    return stage


def _swap_html(run: Run, built: Path) -> Path:
    """Make ``built`` the run's ``html/`` in one atomic step, then remove the builds it replaced.

    ``html`` is a relative link to the versioned folder ``.html-<n>`` of the run;
    a new link is renamed over it (``os.replace``), so whenever this is killed,
    ``html/`` is the old book or the new one. An ``html/`` folder of the earlier
    layout (a plain folder) becomes a versioned folder first.
    """
    final, version = run.folder / "html", run.folder / f".html-{time.time_ns()}"
    os.rename(built, version)
    link = run.folder / f".html.link-{os.getpid()}"
    link.unlink(missing_ok=True)
    os.symlink(version.name, link, target_is_directory=True)
    if final.is_dir() and not final.is_symlink():  # once, on a run folder of the earlier layout
        os.rename(final, run.folder / f".html-{time.time_ns()}")
    os.replace(link, final)
    for old in run.folder.glob(".html[-.]*"):  # earlier builds, and what killed swaps left behind
        if old.name != version.name:
            if old.is_dir() and not old.is_symlink():
                shutil.rmtree(old, ignore_errors=True)
            else:
                old.unlink(missing_ok=True)
    return final


def build_html(run: Run, names: list[str] | None = None, *, log=print) -> Path:
    """Build the HTML with Jupyter Book (execution off) and swap it into ``html/``."""
    stage = _stage(run, names if names is not None else chapter_names())
    out = run.folder / ".build"
    if out.exists():
        shutil.rmtree(out)
    # -W -n --keep-going: every Sphinx warning, nitpicky ones included, fails the build (all are listed)
    cmd = [sys.executable, "-m", "jupyter_book", "build", str(stage), "--path-output", str(out), "--quiet",
           "-W", "-n", "--keep-going"]
    if shutil.which("jupyter-book", path=str(Path(sys.executable).parent)):
        cmd = [str(Path(sys.executable).parent / "jupyter-book"), *cmd[3:]]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ChapterFailed(f"jupyter-book build failed (the last good book is kept):\n{proc.stdout[-3000:]}{proc.stderr[-3000:]}")
    html = _swap_html(run, out / "_build" / "html")
    shutil.rmtree(out, ignore_errors=True)
    return html


def _html_key(run: Run, names: list[str]) -> str:
    root = project_root()
    parts = [_source_digest(root / "book", "*"), (root / "_config.yml").read_text(), (root / "_toc.yml").read_text()]
    parts += [(run.folder / "notebooks" / f"{n}.key").read_text() for n in names]
    bench_key = run.folder / "notebooks" / f"{APPENDIX}.key"
    parts.append(bench_key.read_text() if bench_key.exists() else "appendix not run")
    return stable_hash(parts, 16)


def _save_timings(run: Run, rows: list[dict]) -> None:
    if not rows:
        return
    import pandas as pd

    path = run.tables / "chapter_timings.csv"
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["chapter"])
    new = pd.DataFrame(rows)
    merged = pd.concat([old[~old["chapter"].isin(new["chapter"])], new], ignore_index=True)
    save_table(merged, path)


def build_book(profile: str = "quick", dataset: str = "phantom", *, force: bool = False,
               publish_faces: bool = False, html: bool = True, log=print) -> Path:
    """Execute the chapters of a run and build its HTML; return the index page.

    The parameters are checked first (:func:`refacelib.pipeline.config.check_parameters`):
    a wrong type, an unknown profile or a missing dataset folder is a
    :class:`ConfigError` before anything is executed.
    """
    publish_faces = check_parameters(profile, dataset, publish_faces)["publish_faces"]
    run = open_run(profile, dataset)
    with run_lock(run):
        names = chapter_names()  # read once: the toc may be edited while a build runs
        timings = execute_chapters(run, names, force=force, publish_faces=publish_faces, log=log)
        _save_timings(run, timings)
        if not html:
            log(f"run folder: {run.relpath(run.folder)}")
            return run.folder / "notebooks"
        key_file = run.folder / "html" / ".key"
        key = _html_key(run, names)
        if force or not key_file.exists() or key_file.read_text() != key:
            log("building HTML with Jupyter Book (execution off) ...")
            html = build_html(run, names, log=log)
            atomic_write_text(html / ".key", key)
        else:
            log("HTML up to date")
    index = run.folder / "html" / "index.html"
    log(f"run folder: {run.relpath(run.folder)}")
    log(f"book:       {run.relpath(index)}")
    return index


def run_bench(profile: str = "quick", dataset: str = "phantom", *, publish_faces: bool = False, log=print) -> Path:
    """Build the book (cached), time a warm rebuild, execute the benchmark notebook, rebuild the HTML.

    The warm rebuild is a second ``python -m refacelib.pipeline book`` in a fresh
    process, as ``make book`` runs it; its wall time goes to
    ``tables/rebuild_timings.csv`` for the notebook to report.
    """
    import pandas as pd

    start = time.perf_counter()
    build_book(profile, dataset, publish_faces=publish_faces, log=log)
    first = time.perf_counter() - start
    cmd = [sys.executable, "-m", "refacelib.pipeline", "book", "--profile", profile, "--dataset", dataset,
           "--publish-faces", "1" if publish_faces else "0"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=project_root())
    warm = time.perf_counter() - start
    if proc.returncode != 0:
        raise ChapterFailed(f"the warm rebuild failed:\n{proc.stdout[-2000:]}{proc.stderr[-2000:]}")
    run = open_run(profile, dataset)
    save_table(pd.DataFrame([
        {"build": "make book (before the benchmark)", "seconds": round(first, 2), "chapters_executed": None},
        {"build": "warm rebuild (nothing changed)", "seconds": round(warm, 2),
         "chapters_executed": proc.stdout.count(": executing")},
    ]), run.tables / "rebuild_timings.csv")
    with run_lock(run):
        names = chapter_names()
        log(f"{APPENDIX}: executing the benchmarks ...")
        row = _execute(run, APPENDIX, run.folder / "notebooks" / f"{APPENDIX}.ipynb", publish_faces=publish_faces)
        atomic_write_text(run.folder / "notebooks" / f"{APPENDIX}.key", stable_hash([row, time.time()], 16))
        log(f"{APPENDIX}: done in {row['seconds']:.1f} s")
        html = build_html(run, names, log=log)
        atomic_write_text(html / ".key", _html_key(run, names))
    index = run.folder / "html" / "index.html"
    log(f"book:       {run.relpath(index)} (Performance appendix included)")
    return index


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m refacelib.pipeline", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    book = sub.add_parser("book", help="execute the chapters and build the HTML")
    book.add_argument("--profile", default="quick")
    book.add_argument("--dataset", default="phantom")
    book.add_argument("--force", action="store_true", help="execute every chapter again")
    book.add_argument("--publish-faces", default="0", help="1 to show real subjects' faces in the HTML")
    book.add_argument("--no-html", action="store_true", help="execute the chapters only")
    html = sub.add_parser("html", help="rebuild the HTML from the executed chapters")
    html.add_argument("--profile", default="quick")
    html.add_argument("--dataset", default="phantom")
    bench = sub.add_parser("bench", help="build the book, run the benchmarks, add the Performance appendix")
    bench.add_argument("--profile", default="quick")
    bench.add_argument("--dataset", default="phantom")
    bench.add_argument("--publish-faces", default="0", help="1 to show real subjects' faces in the HTML")
    ckpt = sub.add_parser("checkpoint", help="train the cascade (cached) and export it to checkpoints/")
    lab = sub.add_parser("lab", help="JupyterLab in notebooks/, holding the run while it runs")
    for command in (ckpt, lab):
        command.add_argument("--profile", default="quick")
        command.add_argument("--dataset", default="phantom")
    where = sub.add_parser("run-folder", help="print the run folder of a profile and dataset")
    where.add_argument("--profile", default="quick")
    where.add_argument("--dataset", default="phantom")
    args = parser.parse_args(argv)
    try:
        if args.command in ("book", "bench"):
            check_backend()  # BACKEND / SCHEDULER of the chapters' workers: a wrong one stops the build here
        if args.command == "book":
            publish = parse_flag(args.publish_faces, name="PUBLISH_FACES")
            build_book(args.profile, args.dataset, force=args.force, publish_faces=publish, html=not args.no_html)
        elif args.command == "bench":
            run_bench(args.profile, args.dataset, publish_faces=parse_flag(args.publish_faces, name="PUBLISH_FACES"))
        elif args.command == "html":
            run = open_run(args.profile, args.dataset)
            with run_lock(run):
                index = build_html(run) / "index.html"
            print(f"book: {run.relpath(index)}")
        elif args.command == "checkpoint":
            run = open_run(args.profile, args.dataset)
            with run_lock(run, holder="checkpoint export (make checkpoint)"):
                return refacing.main(["ship", "--profile", args.profile, "--dataset", args.dataset])
        elif args.command == "lab":
            run_lab(args.profile, args.dataset)
        else:
            print(open_run(args.profile, args.dataset, create=False).folder)
    except (ConfigError, ChapterFailed, UnsafeFileError) as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
