"""Untrusted files, crafted parameters, locks, atomic writes and runs killed mid-way."""
import fcntl
import hashlib
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from refacelib._utils import io
from refacelib.diffusion import train
from refacelib.pipeline import book as pipeline
from refacelib.pipeline import config
from refacelib.diffusion.cascade import CascadeConfig, face_box

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def runs(tmp_path, monkeypatch):
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    return tmp_path / "runs"


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1",
                PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))


# --------------------------------------------------------------------------- untrusted checkpoints
class _Payload:
    """Unpickling this object runs a shell command that creates a file: a stand-in for arbitrary code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (os.system, (f"touch {shlex.quote(self.target)}",))


def _evil_checkpoint(path, marker):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"step": 1, "model": {}, "ema": {}, "optimizer": {}, "config": {"stage": 1}, "version": "x",
                "hook": _Payload(marker)}, path)
    return path


def _shipped_folder(folder, *, evil_stage, marker):
    """A shipped-checkpoint folder (both stages, histories, training.json) with one checkpoint carrying code."""
    folder.mkdir(parents=True)
    for s in (1, 2):
        if s == evil_stage:
            _evil_checkpoint(folder / f"stage{s}.pt", marker)
        else:
            torch.save({"step": 2, "model": {}, "ema": {}, "config": {"stage": s}, "version": "x"},
                       folder / f"stage{s}.pt")
        (folder / f"stage{s}_history.csv").write_text("step,loss,val_loss,seconds,stage\n2,0.1,,1.0,1\n")
    (folder / "training.json").write_text(json.dumps({"stages": {"1": {"steps": 2}, "2": {"steps": 2}}}))
    return folder / f"stage{evil_stage}.pt"


def _load_stage(tmp_path, marker):
    ckpt = _evil_checkpoint(tmp_path / "stage1.pt", marker)
    return ckpt, lambda: train.load_stage(ckpt, device="cpu")


def _resume(tmp_path, marker):
    ckpt = _evil_checkpoint(tmp_path / "stage1.pt", marker)
    return ckpt, lambda: train.train_stage(1, _data(), _config(2), device="cpu", checkpoint_path=ckpt, progress=False)


def _ship(tmp_path, marker):
    from refacelib.pipeline import refacing

    ckpt = _shipped_folder(tmp_path / "artifacts" / "cascade-x", evil_stage=1, marker=marker)
    return ckpt, lambda: refacing.ship(ckpt.parent, root=tmp_path / "shipped")


def _install_shipped(tmp_path, marker):
    from refacelib.pipeline import refacing

    ckpt = _shipped_folder(tmp_path / "shipped" / "cascade-x", evil_stage=2, marker=marker)
    target = tmp_path / "run" / "cascade-x"

    def install():
        try:
            refacing.install_shipped(target, root=tmp_path / "shipped")
        finally:  # refused before anything is copied: no stage of it is installed
            assert not target.exists() or list(target.iterdir()) == []
    return ckpt, install


@pytest.fixture(params=[True, False], ids=["torch-default", "torch-2.4-default"])
def torch_load_default(request, monkeypatch):
    """``torch.load`` as now (weights_only defaults to True) and as in torch 2.4 (False), which pyproject allows."""
    if not request.param:
        real = torch.load
        monkeypatch.setattr(torch, "load", lambda *a, weights_only=False, **k: real(*a, weights_only=weights_only, **k))


@pytest.mark.parametrize("entry", [_load_stage, _resume, _ship, _install_shipped],
                         ids=["load_stage", "resume", "ship", "install_shipped"])
def test_checkpoint_carrying_code_is_refused_naming_the_file(tmp_path, torch_load_default, entry):
    marker = tmp_path / "pwned.txt"
    ckpt, load = entry(tmp_path, marker)
    with pytest.raises(io.UnsafeFileError) as refused:
        load()
    assert not marker.exists()
    assert re.fullmatch(re.escape(str(ckpt)) + r": refused to load: .*could run code.*\(posix\.system\).*",
                        str(refused.value)), str(refused.value)


def test_the_payload_of_the_refused_checkpoint_is_live(tmp_path):
    marker, ckpt = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    _evil_checkpoint(ckpt, marker)
    with pytest.raises(io.UnsafeFileError, match=re.escape(str(ckpt))):
        io.load_checkpoint(ckpt)
    assert not marker.exists()
    torch.load(ckpt, weights_only=False)  # an unsafe load runs it: the tests above can fail
    assert marker.exists()


# --------------------------------------------------------------------------- crafted parameters
@pytest.mark.parametrize("profile", ["../params/tiny", "/etc/passwd", "tiny/../tiny", "..", "tiny.yaml", " tiny"])
def test_profile_must_be_a_plain_name(runs, profile):
    with pytest.raises(config.ConfigError, match="PROFILE must be a plain name"):
        config.open_run(profile, "phantom")
    assert not runs.exists()


def test_run_folder_linked_outside_the_run_root_is_refused(runs, tmp_path):
    outside = tmp_path / "elsewhere"
    outside.mkdir()
    runs.mkdir()
    (runs / "tiny-phantom").symlink_to(outside, target_is_directory=True)
    with pytest.raises(config.ConfigError, match="would fall outside the run root"):
        config.open_run("tiny", "phantom")
    assert list(outside.iterdir()) == []


@pytest.mark.parametrize("name, stem", [
    ("..", None), ("../..", None), (".", None), ("b/..", None),  # resolved first: the folder's own name
    ("we ird;name ../", "we_ird_name"), ("$(touch x)", "touch_x"), (".hidden", "hidden"), ("...", "dataset"),
])
def test_dataset_folder_name_cannot_steer_the_run_folder(runs, tmp_path, name, stem):
    for folder in ("b", "we ird;name ..", "$(touch x)", ".hidden", "..."):
        (tmp_path / "a" / folder).mkdir(parents=True, exist_ok=True)
    dataset = (tmp_path / "a" / name).resolve()
    run = config.open_run("tiny", str(tmp_path / "a" / name))
    digest = hashlib.sha1(str(dataset).encode()).hexdigest()[:6]
    assert run.folder.parent == runs and re.fullmatch(r"tiny-[A-Za-z0-9][A-Za-z0-9_.-]*-[0-9a-f]{6}", run.folder.name)
    assert run.folder.name == f"tiny-{stem or dataset.name}-{digest}"


@pytest.mark.parametrize("parts", [("..", "x.csv"), ("tables", "..", "..", "x.csv"), ("/tmp/x.csv",)])
def test_paths_inside_a_run_stay_inside(runs, parts):
    run = config.open_run("tiny", "phantom")
    with pytest.raises(config.ConfigError, match="outside the run folder"):
        run.path(*parts)
    assert run.path("tables", "x.csv") == run.folder / "tables" / "x.csv"


@pytest.mark.parametrize("kwargs, message", [
    (dict(publish_faces="maybe"), "publish_faces must be true or false"),
    (dict(publish_faces=2), "publish_faces must be true or false"),
    (dict(publish_faces=None), "publish_faces must be true or false"),
    (dict(profile=3), "PROFILE must be a non-empty string"),
    (dict(profile="huge"), "unknown PROFILE 'huge'"),
    (dict(dataset=3), "DATASET must be 'phantom' or a folder path"),
    (dict(dataset="/no/such/folder"), "DATASET folder does not exist"),
])
def test_bad_parameters_stop_before_anything_runs(runs, monkeypatch, kwargs, message):
    monkeypatch.setattr(pipeline, "execute_chapters", lambda *a, **k: pytest.fail("a chapter was executed"))
    args = {"profile": "tiny", "dataset": "phantom", **kwargs}
    log = []
    with pytest.raises(config.ConfigError, match=message):
        pipeline.build_book(args.pop("profile"), args.pop("dataset"), log=log.append, **args)
    assert log == [] and not runs.exists()


def test_command_line_rejects_a_misspelt_flag(runs, capsys, monkeypatch):
    monkeypatch.setattr(pipeline, "execute_chapters", lambda *a, **k: pytest.fail("a chapter was executed"))
    assert pipeline.main(["book", "--profile", "tiny", "--publish-faces", "ture"]) == 2
    assert "PUBLISH_FACES must be true or false" in capsys.readouterr().err
    assert not runs.exists()


@pytest.mark.parametrize("value, expected", [(True, True), (0, False), ("1", True), ("yes", True), ("", False),
                                             ("False", False)])
def test_flags_parse(value, expected):
    assert config.parse_flag(value) is expected


def test_second_build_of_the_same_run_is_refused(runs, monkeypatch):
    monkeypatch.setattr(pipeline, "execute_chapters", lambda *a, **k: pytest.fail("a chapter was executed"))
    run = config.open_run("tiny", "phantom")
    with pipeline.run_lock(run):
        with pytest.raises(config.ConfigError, match="another build of runs/tiny-phantom is running"):
            pipeline.build_book("tiny", "phantom", log=lambda *_: None)


def test_checkpoint_export_holds_the_run_lock(runs, monkeypatch, capsys):
    from refacelib.pipeline import refacing

    monkeypatch.setattr(pipeline, "execute_chapters", lambda *a, **k: pytest.fail("a chapter was executed"))
    exported = []

    def ship(argv):  # refacing.main: trains (cached) and exports; a build of the same run must wait meanwhile
        with pytest.raises(config.ConfigError, match=r"another checkpoint export \(make checkpoint\) of "
                                                     r"runs/tiny-phantom is running \(process \d+\)"):
            pipeline.build_book("tiny", "phantom", log=lambda *_: None)
        exported.append(argv)
        return 0

    monkeypatch.setattr(refacing, "main", ship)
    assert pipeline.main(["checkpoint", "--profile", "tiny"]) == 0
    assert exported == [["ship", "--profile", "tiny", "--dataset", "phantom"]]
    with pipeline.run_lock(config.open_run("tiny", "phantom")):
        assert pipeline.main(["checkpoint", "--profile", "tiny"]) == 2
    assert "another build of runs/tiny-phantom is running" in capsys.readouterr().err and len(exported) == 1


class _Exec(Exception):
    """Stands for os.execve: the test stops where JupyterLab would replace the process."""


def test_lab_holds_the_run_while_jupyterlab_runs(runs, monkeypatch, tmp_path, capsys):
    bin_dir = tmp_path / "venv" / "bin"
    bin_dir.mkdir(parents=True)
    (bin_dir / "jupyter").write_text("#!/bin/sh\n")
    monkeypatch.setattr(sys, "executable", str(bin_dir / "python"))
    monkeypatch.setattr(pipeline, "execute_chapters", lambda *a, **k: pytest.fail("a chapter was executed"))
    run, started = config.open_run("tiny", "phantom"), []

    def execve(path, args, env):
        lock_fds = [int(fd) for fd in os.listdir("/proc/self/fd")
                    if os.path.realpath(f"/proc/self/fd/{fd}") == str((run.folder / ".lock").resolve())]
        assert lock_fds and all(os.get_inheritable(fd) for fd in lock_fds)  # JupyterLab keeps the lock
        with pytest.raises(config.ConfigError, match=r"another JupyterLab session \(make lab\) of runs/tiny-phantom"):
            pipeline.build_book("tiny", "phantom", log=lambda *_: None)
        started.append((str(path), args, env))
        for fd in lock_fds:  # what JupyterLab exiting does
            fcntl.flock(fd, fcntl.LOCK_UN)
        raise _Exec

    monkeypatch.setattr(os, "execve", execve)
    with pytest.raises(_Exec):
        pipeline.main(["lab", "--profile", "tiny"])
    (path, args, env), = started
    assert path == str(bin_dir / "jupyter") and args[1:] == ["lab", f"--notebook-dir={ROOT / 'notebooks'}"]
    assert env["REFACE_PROFILE"] == "tiny" and env["REFACE_DATASET"] == "phantom"
    with pipeline.run_lock(run):  # released when JupyterLab exits; and a build holding it refuses make lab
        assert pipeline.main(["lab", "--profile", "tiny"]) == 2
    assert "another build of runs/tiny-phantom is running" in capsys.readouterr().err and len(started) == 1


# --------------------------------------------------------------------------- atomic writes
def test_failed_write_keeps_the_previous_artifact(tmp_path):
    path = io.atomic_write_text(tmp_path / "table.csv", "good\n")
    with pytest.raises(RuntimeError):
        with io.atomic_path(path) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed while writing")
    assert path.read_text() == "good\n" and sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_saved_figure_is_complete_and_closed(tmp_path):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots()
    ax.plot([0, 1])
    path = io.save_figure(fig, tmp_path / "f.png")
    assert path.read_bytes()[:4] == b"\x89PNG" and not plt.fignum_exists(fig.number)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.png"]


class _Killed(BaseException):
    """A kill at one file-system step (not an error anything would catch)."""


def _kill_at_step(monkeypatch, n):
    """Make the n-th renaming, linking or deleting call (0-based) die; return the steps done so far."""
    done = []
    for name in ("rename", "replace", "symlink", "unlink", "rmdir"):
        def step(*args, _real=getattr(os, name), _name=name, **kwargs):
            if len(done) == n:
                raise _Killed(_name)
            done.append(_name)
            return _real(*args, **kwargs)
        monkeypatch.setattr(os, name, step)
    return done


def _built_html(folder, text):
    (folder / "chapters").mkdir(parents=True)
    for page in ("index.html", "chapters/01.html"):
        (folder / page).write_text(text)
    return folder


def _book_shown(run):
    html = run.folder / "html"
    pages = {(html / page).read_text() for page in ("index.html", "chapters/01.html")}
    assert len(pages) == 1, "html/ mixes two builds"
    return pages.pop()


def test_html_swap_killed_at_any_step_leaves_a_complete_book(runs, monkeypatch):
    run = config.open_run("tiny", "phantom")
    pipeline._swap_html(run, _built_html(run.folder / ".build" / "first", "old"))
    for n in range(100):
        built = _built_html(run.folder / ".build" / str(n), f"new {n}")
        with monkeypatch.context() as m:
            done = _kill_at_step(m, n)
            try:
                pipeline._swap_html(run, built)
                break
            except _Killed:
                pass
        assert _book_shown(run) in ("old", *(f"new {k}" for k in range(n + 1))), (n, done)
    assert n >= 3, done  # the swap has steps a kill can fall between, and each was tried
    assert _book_shown(run) == f"new {n}"
    # the builds replaced, and what the killed swaps left behind, are gone
    html = run.folder / "html"
    assert html.is_symlink() and [p.name for p in run.folder.glob(".html*")] == [os.readlink(html)]


def test_html_folder_of_the_earlier_layout_is_replaced_and_removed(runs):
    run = config.open_run("tiny", "phantom")
    _built_html(run.folder / "html", "plain folder")
    pipeline._swap_html(run, _built_html(run.folder / ".build" / "1", "new"))
    assert _book_shown(run) == "new" and (run.folder / "html").is_symlink()
    assert [p.name for p in run.folder.glob(".html*")] == [os.readlink(run.folder / "html")]


def test_built_html_is_read_through_the_link(runs, monkeypatch):
    """Everything that reads html/ (key file, page search, the browser check's server) sees the current build."""
    import urllib.request

    from refacelib.pipeline import browser

    run = config.open_run("tiny", "phantom")
    out, builds = run.folder / ".build" / "_build" / "html", []

    def jupyter_book(cmd, **kwargs):
        _built_html(out, f"build {len(builds)}")
        builds.append(cmd)
        return subprocess.CompletedProcess(cmd, 0, "", "")

    monkeypatch.setattr(pipeline.subprocess, "run", jupyter_book)
    for k in range(2):
        html = pipeline.build_html(run, [], log=lambda *_: None)
        io.atomic_write_text(html / ".key", f"key {k}")
    assert html == run.folder / "html" and (html / ".key").read_text() == "key 1"
    assert sorted(p.relative_to(html).as_posix() for p in html.rglob("*.html")) == ["chapters/01.html", "index.html"]
    with browser.serve(html) as (base, _):
        assert urllib.request.urlopen(base + "chapters/01.html").read() == b"build 1"
    assert not (run.folder / ".build").exists() and len(list(run.folder.glob(".html*"))) == 1


def test_every_test_runs_under_a_time_limit(request):
    """pytest-timeout is active with a generous default (the tiny-book tests set a longer one of their own)."""
    assert request.config.pluginmanager.hasplugin("timeout")
    assert 300 <= float(request.config.getini("timeout")) <= 3600


def test_chapter_cells_run_under_a_time_limit(mini_project, monkeypatch):
    import papermill

    seen = []

    def execute_notebook(source, target, **kwargs):
        seen.append(kwargs["execution_timeout"])
        shutil.copyfile(source, target)

    monkeypatch.setattr(papermill, "execute_notebook", execute_notebook)
    run = config.open_run("tiny", "phantom")
    out = run.folder / "notebooks" / "01_only.ipynb"
    monkeypatch.delenv("REFACE_CELL_TIMEOUT", raising=False)
    pipeline._execute(run, "01_only", out)
    for value in ("90", "0"):
        monkeypatch.setenv("REFACE_CELL_TIMEOUT", value)
        pipeline._execute(run, "01_only", out)
    assert seen == [pipeline.CELL_TIMEOUT, 90, None] and 600 <= pipeline.CELL_TIMEOUT
    monkeypatch.setenv("REFACE_CELL_TIMEOUT", "an hour")
    with pytest.raises(config.ConfigError, match="REFACE_CELL_TIMEOUT must be a whole number of seconds"):
        pipeline._execute(run, "01_only", out)
    assert len(seen) == 3


# --------------------------------------------------------------------------- killed training
def test_checkpoint_save_killed_mid_way_keeps_the_previous_checkpoint(tmp_path, monkeypatch):
    ckpt = tmp_path / "stage1.pt"
    train.train_stage(1, _data(), _config(2), device="cpu", checkpoint_path=ckpt, progress=False)
    before = ckpt.read_bytes()

    def killed_save(obj, f, *args, **kwargs):  # writes part of the file, then the process dies
        Path(f).write_bytes(before[: len(before) // 2])
        raise _Killed("torch.save")

    monkeypatch.setattr(torch, "save", killed_save)
    with pytest.raises(_Killed):
        train.train_stage(1, _data(), _config(4), device="cpu", checkpoint_path=ckpt, checkpoint_every=1,
                          progress=False)
    monkeypatch.undo()
    assert ckpt.read_bytes() == before and io.load_checkpoint(ckpt)["step"] == 2
    assert sorted(p.name for p in tmp_path.iterdir()) == ["stage1.pt"]  # no partial file left


def _data(size=16):
    g = np.mgrid[:size, :size, :size].astype(np.float32)
    ball = (((g - 7.5) ** 2).sum(0) < 36).astype(np.float32) * 0.8
    nose = (((g - np.array([13.0, 7.5, 7.5])[:, None, None, None]) ** 2).sum(0) < 4) * 0.6
    original = np.maximum(ball, nose)[None].repeat(2, 0).astype(np.float32)
    mask = np.broadcast_to(g[0] >= 11, original.shape).copy()
    return {"original": original, "defaced": np.where(mask, 0.0, original).astype(np.float32),
            "mask": mask, "prior": ball[None].repeat(2, 0)}


def _config(steps):
    box = face_box(_data()["mask"][0], margin=1, multiple=2)
    st = dict(channels=[4, 8], train_timesteps=12, beta_schedule="cosine", batch_size=2, steps=steps)
    return CascadeConfig.from_dict(dict(stage1=st, stage2=st, box=box))


def test_training_killed_mid_way_resumes_from_its_last_checkpoint(tmp_path):
    np.savez(tmp_path / "data.npz", **_data())
    (tmp_path / "config.json").write_text(json.dumps(_config(100_000).to_dict()))
    ckpt = tmp_path / "stage1.pt"
    cmd = [sys.executable, "-m", "refacelib.train", "--data", str(tmp_path / "data.npz"), "--config",
           str(tmp_path / "config.json"), "--stage", "1", "--out", str(ckpt), "--device", "cpu",
           "--no-progress", "--checkpoint-every", "3"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 180
        while not ckpt.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "no checkpoint within 180 s"
            time.sleep(0.05)
        time.sleep(0.3)  # let it train on past the first checkpoint
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert proc.returncode == -signal.SIGKILL
    saved = torch.load(ckpt, weights_only=True)  # intact: written under a temporary name, then renamed
    killed_at = saved["step"]
    assert killed_at >= 3 and killed_at % 3 == 0 and killed_at < 100_000
    _, history = train.train_stage(1, _data(), _config(killed_at + 2), device="cpu", checkpoint_path=ckpt,
                                   progress=False)
    # continued, not restarted; the curve keeps the killed run's steps up to its checkpoint
    assert list(history.step) == list(range(1, killed_at + 3))
    assert torch.load(ckpt, weights_only=True)["step"] == killed_at + 2


# --------------------------------------------------------------------------- killed notebook
CHAPTER = '''# %% [markdown]
# # A chapter
#
# One table from the run.

# %% tags=["parameters"]
profile = "tiny"
dataset = "phantom"
publish_faces = False

# %%
from refacelib.pipeline import config

run = config.open_run(profile, dataset)
run.profile
'''


@pytest.fixture
def mini_project(tmp_path, monkeypatch):
    """A one-chapter book with its own project and run root."""
    base = tmp_path / "project"
    (base / "book").mkdir(parents=True)
    (base / "notebooks").mkdir()
    shutil.copytree(ROOT / "params", base / "params")
    (base / "_config.yml").write_text('title: "Mini"\nonly_build_toc_files: true\n'
                                      'execute:\n  execute_notebooks: "off"\n')
    (base / "_toc.yml").write_text("format: jb-book\nroot: book/intro\nchapters:\n  - file: chapters/01_only\n")
    (base / "book" / "intro.md").write_text("# Mini book\n\nOne chapter.\n")
    (base / "notebooks" / "01_only.py").write_text(CHAPTER)
    monkeypatch.setenv("REFACE_PROJECT_ROOT", str(base))
    monkeypatch.setenv("REFACE_RUNS_ROOT", str(base / "runs"))
    return base


@pytest.mark.slow
def test_notebook_killed_mid_way_keeps_the_previous_book(mini_project):
    index = pipeline.build_book("tiny", "phantom", log=lambda *_: None)
    run = index.parents[1]
    executed, key = run / "notebooks" / "01_only.ipynb", run / "notebooks" / "01_only.key"
    before = {p: p.read_bytes() for p in (index, executed, key, run / "html" / "chapters" / "01_only.html")}
    source = mini_project / "notebooks" / "01_only.py"
    original = source.read_text()
    started = mini_project / "started"
    source.write_text(original + f'\n# %%\nimport pathlib, time\npathlib.Path({str(started)!r}).touch()\n'
                                 'time.sleep(300)\n')
    proc = subprocess.Popen([sys.executable, "-m", "refacelib.pipeline", "book", "--profile", "tiny"], env=_env(),
                            cwd=mini_project, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)  # its own process group: the kernel dies with it
    try:
        deadline = time.monotonic() + 180
        while not started.exists():
            assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
            assert time.monotonic() < deadline, "the chapter never started"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        proc.stderr.close()
    assert {p: p.read_bytes() for p in before} == before  # the previous book and chapter are intact
    source.write_text(original)
    log = []
    assert pipeline.build_book("tiny", "phantom", log=log.append) == index  # not locked out by the dead build
    assert "[1/1] 01_only: up to date" in log and "HTML up to date" in log, log


def test_chapter_peak_memory_is_per_chapter_not_a_running_maximum():
    """Each chapter's peak memory is its own: a small chapter after a big one reports less."""
    import subprocess
    import sys

    from refacelib.pipeline.book import ChildrenPeak

    code = "x = bytearray({} * 2**20); x[::4096] = b'1' * len(x[::4096]); import time; time.sleep(0.6)"
    with ChildrenPeak(interval=0.02) as big:
        subprocess.run([sys.executable, "-c", code.format(300)], check=True)
    with ChildrenPeak(interval=0.02) as small:
        subprocess.run([sys.executable, "-c", code.format(20)], check=True)
    assert big.mib > 250
    assert small.mib < big.mib - 200


def test_defacing_cache_key_sees_an_image_replaced_in_place(tmp_path):
    """A real dataset's image overwritten under the same participant id must be defaced again
    (the key held only the folder name and the ids); the phantom's key stays a function of its parameters."""
    import pandas as pd

    from refacelib.pipeline import stages
    from refacelib.data.bids import BIDSDataset, Subject

    image = tmp_path / "data" / "sub-01_T1w.nii.gz"
    image.parent.mkdir()
    image.write_bytes(b"first image")
    ds = BIDSDataset(root=image.parent, participants=pd.DataFrame({"participant_id": ["sub-01"]}),
                     subjects=[Subject("sub-01", image)])
    params = config.load_profile("tiny")
    real = config.Run(profile="tiny", dataset=str(image.parent), params=params, folder=tmp_path / "run")
    phantom = config.Run(profile="tiny", dataset=config.PHANTOM, params=params, folder=tmp_path / "run")
    before = {r.dataset: stages._stage_folder(r, ds) for r in (real, phantom)}
    image.write_bytes(b"another subject's image")
    after = {r.dataset: stages._stage_folder(r, ds) for r in (real, phantom)}
    assert after[real.dataset] != before[real.dataset]
    assert after[phantom.dataset] == before[phantom.dataset]


def test_attacker_side_of_defacing_keys_the_stage_not_the_training_data(tmp_path, monkeypatch):
    """A change of the attacker's registration (stages.ATTACKER_VERSION) re-runs the defacing stage (its
    folder changes) but keeps the cascade's training key (training_data_name), so a trained or shipped
    checkpoint stays valid; a change of the data owner's side (STAGE_VERSION) changes both."""
    import pandas as pd

    from refacelib.pipeline import stages
    from refacelib.data.bids import BIDSDataset, Subject

    ds = BIDSDataset(root=tmp_path / "data", participants=pd.DataFrame({"participant_id": ["sub-01"]}),
                     subjects=[Subject("sub-01", tmp_path / "data" / "sub-01_T1w.nii.gz")])
    run = config.Run(profile="tiny", dataset=config.PHANTOM, params=config.load_profile("tiny"), folder=tmp_path / "run")
    folder, training = stages._stage_folder(run, ds), stages.training_data_name(run, ds)
    assert folder.name != training  # the attacker's side is in the stage's key
    monkeypatch.setattr(stages, "ATTACKER_VERSION", stages.ATTACKER_VERSION + 1)
    assert stages._stage_folder(run, ds) != folder
    assert stages.training_data_name(run, ds) == training
    monkeypatch.setattr(stages, "STAGE_VERSION", stages.STAGE_VERSION + 1)
    assert stages.training_data_name(run, ds) != training


def test_one_file_identity_keys_every_cache_of_a_real_dataset(tmp_path):
    """file_fingerprint (size, time in ns) is the identity of the defacing key, the chapters' key and the
    screening cache: a rewrite with the same size is seen, derivatives/ and the dataset's location are not."""
    import os
    import shutil

    import pandas as pd

    from refacelib.data import bids, inputcheck
    from refacelib.data.bids import BIDSDataset, Subject

    root = tmp_path / "data"
    image = root / "sub-01" / "anat" / "sub-01_T1w.nii.gz"
    image.parent.mkdir(parents=True)
    image.write_bytes(b"first image")
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t50\n")
    (root / "derivatives").mkdir()
    ds = BIDSDataset(root=root, participants=pd.DataFrame({"participant_id": ["sub-01"]}),
                     subjects=[Subject("sub-01", image)])
    os.utime(image, ns=(1_000_000_000_000_000_001, 1_000_000_000_000_000_001))
    first = (bids.image_fingerprint(ds), bids.dataset_fingerprint(root), inputcheck._file_key(image))
    assert first[0] == [["sub-01", "sub-01_T1w.nii.gz", 11, 1_000_000_000_000_000_001]]
    assert first[2] == "11:1000000000000000001"
    # derivatives/ are the pipeline's own outputs: not part of the dataset's identity
    (root / "derivatives" / "x.txt").write_text("output")
    assert bids.dataset_fingerprint(root) == first[1]
    # a copy elsewhere with the same files and times keeps the keys (no absolute path enters)
    copy = shutil.copytree(root, tmp_path / "elsewhere" / "data")
    assert bids.dataset_fingerprint(copy) == first[1]
    # the same size rewritten a nanosecond later is another image for every cache
    image.write_bytes(b"other image")
    os.utime(image, ns=(1_000_000_000_000_000_002, 1_000_000_000_000_000_002))
    second = (bids.image_fingerprint(ds), bids.dataset_fingerprint(root), inputcheck._file_key(image))
    assert all(a != b for a, b in zip(first, second))
    # participants.tsv changes the chapters' key, not the defacing key (that reads the images)
    (root / "participants.tsv").write_text("participant_id\tage\nsub-01\t51\n")
    assert bids.dataset_fingerprint(root) != second[1] and bids.image_fingerprint(ds) == second[0]


def test_the_book_digest_reads_files_only_and_sees_a_stylesheet_change(tmp_path):
    """book/ holds a folder (_static/); the HTML key's digest must skip it, and still change with its files."""
    from refacelib.pipeline import book as pipeline_book

    (tmp_path / "_static").mkdir()
    (tmp_path / "intro.md").write_text("# Intro\n")
    (tmp_path / "_static" / "custom.css").write_text("span { font-weight: inherit; }\n")
    before = pipeline_book._source_digest(tmp_path, "*")
    (tmp_path / "_static" / "custom.css").write_text("span { font-weight: bold; }\n")
    assert pipeline_book._source_digest(tmp_path, "*") != before
