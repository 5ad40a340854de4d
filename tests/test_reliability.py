"""Untrusted files, crafted parameters, locks, atomic writes and runs killed mid-way."""
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from refacelib import config, io, pipeline, train
from refacelib.cascade import CascadeConfig, face_box

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
    """Unpickling this object opens (creates) a file: a stand-in for arbitrary code."""

    def __init__(self, target):
        self.target = str(target)

    def __reduce__(self):
        return (open, (self.target, "w"))


def test_checkpoint_carrying_code_is_refused(tmp_path):
    marker, ckpt = tmp_path / "pwned.txt", tmp_path / "evil.pt"
    torch.save({"step": 1, "model": {}, "config": {"stage": 1}, "hook": _Payload(marker)}, ckpt)
    with pytest.raises(io.UnsafeFileError, match=r"evil.pt: refused to load: .*could run code.*\(io.open\)"):
        io.load_checkpoint(ckpt)
    with pytest.raises(pickle.UnpicklingError):  # the training module's loads refuse it too
        train.load_stage(ckpt, device="cpu")
    with pytest.raises(pickle.UnpicklingError):
        train.train_stage(1, _data(), _config(2), device="cpu", checkpoint_path=ckpt, progress=False)
    assert not marker.exists()
    # the payload is live: an unsafe load would have run it
    torch.load(ckpt, weights_only=False)
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


@pytest.mark.parametrize("name", ["..", "../..", ".", "b/..", "we ird;name ../"])
def test_dataset_folder_name_cannot_steer_the_run_folder(runs, tmp_path, name):
    (tmp_path / "a" / "b").mkdir(parents=True, exist_ok=True)
    (tmp_path / "a" / "we ird;name ..").mkdir(exist_ok=True)
    run = config.open_run("tiny", str(tmp_path / "a" / name))
    assert run.folder.parent == runs and run.folder.name.startswith("tiny-")


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


# --------------------------------------------------------------------------- killed training
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
    assert list(history.step) == [killed_at + 1, killed_at + 2]  # continued, not restarted
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
from refacelib import config

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
