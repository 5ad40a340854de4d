"""The per-subject worker pools: loky by default, dask on a cluster, the same files either way."""
import dataclasses
import hashlib
import os
import shutil
import sys
import time

import nibabel as nib
import pandas as pd
import pytest
from joblib import delayed

from refacelib._utils import parallel
from refacelib._utils.flags import ConfigError


@pytest.fixture
def no_backend_env(monkeypatch):
    """Neither REFACE_BACKEND nor REFACE_SCHEDULER set (the shell's values do not leak in)."""
    monkeypatch.delenv("REFACE_BACKEND", raising=False)
    monkeypatch.delenv("REFACE_SCHEDULER", raising=False)


def _whoami(i):
    """The task's number, the worker's process id and the threads it may use."""
    from threadpoolctl import threadpool_info

    return i, os.getpid(), max([p["num_threads"] for p in threadpool_info()] or [1])


def test_loky_is_the_default_and_runs_in_worker_processes(no_backend_env):
    assert parallel.backend_settings() == ("loky", None)
    with parallel.worker_pool(2) as run:
        results = run(delayed(_whoami)(i) for i in range(4))
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert os.getpid() not in {r[1] for r in results}
    assert {r[2] for r in results} == {1}  # each worker single-threaded
    with parallel.worker_pool(1, return_as="generator") as run:  # one job: this process, lazily
        results = run(delayed(_whoami)(i) for i in range(2))
        assert not isinstance(results, list) and [r[1] for r in results] == [os.getpid()] * 2


def test_backend_from_the_environment_and_arguments(no_backend_env, monkeypatch):
    monkeypatch.setenv("REFACE_BACKEND", " Dask ")
    assert parallel.backend_settings() == ("dask", None)
    monkeypatch.setenv("REFACE_SCHEDULER", "tcp://10.0.0.5:8786")
    assert parallel.backend_settings() == ("dask", "tcp://10.0.0.5:8786")
    assert parallel.backend_settings("loky", "") == ("loky", None)  # arguments win
    monkeypatch.setenv("REFACE_BACKEND", "")  # the Makefile passes empty values: unset
    with pytest.raises(ConfigError, match=r"SCHEDULER .* BACKEND=dask only"):
        parallel.backend_settings()
    with pytest.raises(ConfigError, match=r"BACKEND \(REFACE_BACKEND\) must be one of loky, dask, got 'spark'"):
        parallel.backend_settings("spark", "")


def test_dask_without_distributed_names_the_extra(no_backend_env, monkeypatch):
    monkeypatch.setitem(sys.modules, "distributed", None)  # import distributed now raises ImportError
    for call in (lambda: parallel.check_backend("dask"),
                 lambda: parallel.worker_pool(2, backend="dask").__enter__()):
        with pytest.raises(ConfigError, match=r"needs dask\.distributed.*\.\[cluster\]"):
            call()
    assert parallel.check_backend() == ("loky", None)  # loky does not need it
    with parallel.worker_pool(1) as run:
        assert run([delayed(abs)(-3)]) == [3]


def test_unreachable_scheduler_is_named(no_backend_env):
    pytest.importorskip("distributed")
    for address in ("tcp://127.0.0.1:9", "not-an-address"):
        with pytest.raises(ConfigError, match=f"cannot reach the dask scheduler at SCHEDULER='{address}'"):
            with parallel.worker_pool(2, backend="dask", scheduler=address, connect_timeout=1):
                pass


def test_a_failed_connection_leaves_no_client_behind(no_backend_env):
    """A Client that failed to connect, collected later, can deadlock the start of a LocalCluster
    (its __del__ stops an event loop); the failed connection collects it at once."""
    import gc

    distributed = pytest.importorskip("distributed")
    gc.collect()
    gc.disable()  # only what the library collects itself is gone
    try:
        with pytest.raises(ConfigError, match="cannot reach"):
            with parallel.worker_pool(2, backend="dask", scheduler="tcp://127.0.0.1:9", connect_timeout=1):
                pass
        alive = [o for o in gc.get_objects() if isinstance(o, distributed.Client)]
    finally:
        gc.enable()
    assert alive == []


def test_dask_local_cluster_and_scheduler(no_backend_env):
    distributed = pytest.importorskip("distributed")
    with parallel.worker_pool(2, backend="dask", return_as="generator") as run:  # a LocalCluster of 2 processes
        results = list(run(delayed(_whoami)(i) for i in range(4)))
    assert [r[0] for r in results] == [0, 1, 2, 3]
    assert os.getpid() not in {r[1] for r in results} and {r[2] for r in results} == {1}
    # a scheduler's workers must be single-threaded; in-process clusters keep this cheap
    with distributed.LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address=None) as one:
        with parallel.worker_pool(backend="dask", scheduler=one.scheduler_address) as run:
            assert run(delayed(pow)(i, 2) for i in range(3)) == [0, 1, 4]
    with distributed.LocalCluster(n_workers=1, threads_per_worker=2, processes=False, dashboard_address=None) as two:
        with pytest.raises(ConfigError, match=r"must run one thread each.*--nthreads 1"):
            with parallel.worker_pool(backend="dask", scheduler=two.scheduler_address):
                pass


def test_book_command_stops_on_a_wrong_backend_before_any_work(no_backend_env, monkeypatch, tmp_path, capsys):
    from refacelib.pipeline import book

    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    monkeypatch.setenv("REFACE_BACKEND", "spark")
    assert book.main(["book", "--profile", "tiny"]) == 2
    assert "BACKEND (REFACE_BACKEND) must be one of loky, dask" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()


def _array_digests(folder):
    """sha256 of every image's voxel data (and of every transform file's bytes) under ``folder``."""
    out = {}
    for path in sorted(folder.rglob("*")):
        if path.name.endswith(".nii.gz"):
            out[str(path.relative_to(folder))] = hashlib.sha256(nib.load(str(path)).get_fdata().tobytes()).hexdigest()
        elif path.suffix == ".mat":
            out[str(path.relative_to(folder))] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


@pytest.mark.slow
@pytest.mark.timeout(1200)
def test_defacing_on_a_local_cluster_equals_loky(no_backend_env, monkeypatch, tmp_path):
    """The tiny profile's whole defacing stage: two loky workers, then two dask workers; same folder, same files."""
    pytest.importorskip("distributed")
    from refacelib.pipeline import cohort, config, stages

    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    run = config.open_run("tiny", "phantom")
    ds = cohort.prepare_dataset(run, progress=False)
    # four subjects (two training, one validation, one test) exercise every branch of a subject's task
    keep = {s.participant_id for s in ds.subset("train")[:2] + ds.subset("val")[:1] + ds.subset("test_external")[:1]}
    ds = dataclasses.replace(ds, subjects=[s for s in ds.subjects if s.participant_id in keep],
                             participants=ds.participants[ds.participants["participant_id"].isin(keep)])
    assert len(ds.subjects) == 4
    template = stages.study_template(run)
    loky_folder, loky_qc = stages.deface_cohort(run, ds, template, progress=False, n_jobs=2)
    loky = _array_digests(loky_folder)
    shutil.move(loky_folder, loky_folder.with_name(loky_folder.name + "-loky"))

    monkeypatch.setenv("REFACE_BACKEND", "dask")
    start = time.perf_counter()
    dask_folder, dask_qc = stages.deface_cohort(run, ds, template, progress=False, n_jobs=2)
    print(f"dask LocalCluster defacing: {time.perf_counter() - start:.1f} s")
    assert dask_folder == loky_folder  # the backend enters no cache key
    assert stages.stage_stats(dask_folder)["backend"] == "dask"
    assert len(loky) > 5 * len(ds.subjects) and _array_digests(dask_folder) == loky
    timing = [c for c in loky_qc.columns if c.endswith("_seconds")]
    pd.testing.assert_frame_equal(dask_qc.drop(columns=timing), loky_qc.drop(columns=timing))


class _LateCluster:
    """A stand-in for ``distributed.LocalCluster`` whose first ``fails`` starts fail like a late event loop."""

    calls = 0

    def __init__(self, fails, error=AssertionError):
        self.fails = fails
        self.error = error

    def LocalCluster(self, **kwargs):  # noqa: N802 - the name distributed uses
        type(self).calls += 1
        if type(self).calls <= self.fails:
            raise self.error  # AssertionError: what distributed.utils.LoopRunner raises after waiting 10 s
        return kwargs


def test_a_local_cluster_whose_event_loop_starts_late_is_retried_then_named(monkeypatch):
    _LateCluster.calls = 0
    with pytest.warns(RuntimeWarning) as record:
        started = parallel._local_cluster(_LateCluster(fails=2), 2)
    assert [str(w.message) for w in record] == [
        f"the dask LocalCluster did not start (attempt {i} of 3: AssertionError); retrying" for i in (1, 2)]
    assert started["n_workers"] == 2 and started["threads_per_worker"] == 1 and _LateCluster.calls == 3
    assert started["death_timeout"] == parallel.WORKER_START_SECONDS  # a worker that never comes up fails the start
    _LateCluster.calls = 0
    with pytest.warns(RuntimeWarning), pytest.raises(RuntimeError, match=r"did not start in 3 attempts.*BACKEND=loky"):
        parallel._local_cluster(_LateCluster(fails=3), 2)
    assert _LateCluster.calls == 3


def test_a_local_cluster_whose_worker_does_not_come_up_is_retried():
    """A nanny past its ``death_timeout`` makes distributed raise ``RuntimeError: Cluster failed to start``."""
    _LateCluster.calls = 0
    late_worker = RuntimeError("Cluster failed to start: Nanny failed to start")
    with pytest.warns(RuntimeWarning, match=r"attempt 1 of 3: RuntimeError"):
        started = parallel._local_cluster(_LateCluster(fails=1, error=late_worker), 3)
    assert started["n_workers"] == 3 and _LateCluster.calls == 2
