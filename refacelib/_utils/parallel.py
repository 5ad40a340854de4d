"""Worker pools for the per-subject loops: joblib's loky on this machine, or a dask cluster.

Every loop that runs one task per subject (defacing, face surfaces, the matching
attack, writing refaced images) takes its workers from :func:`worker_pool`. Two
backends give the same files:

``loky`` (default)
    Worker processes on this machine (``n_jobs``, default :func:`default_jobs`).
``dask``
    The same tasks sent to a ``dask.distributed`` cluster through joblib's dask
    backend: the scheduler at ``scheduler`` when given (the workers must see the
    same file paths and have refacelib installed), else a ``LocalCluster`` of
    ``n_jobs`` worker processes. Needs the ``cluster`` extra
    (``pip install -c constraints.txt -e '.[cluster]'``).

Each worker is one single-threaded process (ANTs registrations are seeded
through a global of antspyx, and a thread count can change a float sum), so the
results are bit-identical whatever the backend and the number of workers.

The backend is a property of the machine, not of the study: it is read from
``$REFACE_BACKEND`` and ``$REFACE_SCHEDULER`` (``make book BACKEND=dask
SCHEDULER=tcp://host:8786``), never from a profile, and it enters no cache key.
A LocalCluster starts its workers by spawning: a script (not a notebook) that
uses one needs the ``if __name__ == "__main__":`` guard.
"""
from __future__ import annotations

import gc
import os
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

from refacelib._utils.flags import ConfigError

__all__ = ["BACKENDS", "CLUSTER_INSTALL", "default_jobs", "backend_settings", "check_backend", "worker_pool"]

#: The backends :func:`worker_pool` offers; the first is the default.
BACKENDS = ("loky", "dask")
#: How to install what the ``dask`` backend needs (the ``cluster`` extra).
CLUSTER_INSTALL = "pip install -c constraints.txt -e '.[cluster]'"


def default_jobs() -> int:
    """Worker processes for per-subject loops: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))


def backend_settings(backend: str | None = None, scheduler: str | None = None) -> tuple[str, str | None]:
    """The backend and the scheduler address: the arguments, else ``$REFACE_BACKEND`` / ``$REFACE_SCHEDULER``.

    An empty value counts as unset (the backend is then ``loky``, the scheduler none).

    Raises
    ------
    ConfigError
        For a backend other than those of :data:`BACKENDS`, or a scheduler with the ``loky`` backend.

    Examples
    --------
    >>> backend_settings("", "")
    ('loky', None)
    >>> backend_settings("dask", " tcp://10.0.0.5:8786 ")
    ('dask', 'tcp://10.0.0.5:8786')
    """
    backend = os.environ.get("REFACE_BACKEND", "") if backend is None else backend
    scheduler = os.environ.get("REFACE_SCHEDULER", "") if scheduler is None else scheduler
    backend = str(backend).strip().lower() or BACKENDS[0]
    scheduler = str(scheduler).strip() or None
    if backend not in BACKENDS:
        raise ConfigError(f"BACKEND (REFACE_BACKEND) must be one of {', '.join(BACKENDS)}, got {backend!r}")
    if scheduler and backend != "dask":
        raise ConfigError(f"SCHEDULER (REFACE_SCHEDULER) is the address of a dask scheduler, used with "
                          f"BACKEND=dask only; got SCHEDULER={scheduler!r} with BACKEND={backend}")
    return backend, scheduler


def _distributed():
    """The ``distributed`` package, or a :class:`ConfigError` that says how to install it."""
    try:
        import distributed
    except ImportError:
        raise ConfigError(f"BACKEND=dask needs dask.distributed, which is not installed in this environment; "
                          f"install the cluster extra: {CLUSTER_INSTALL}") from None
    return distributed


def check_backend(backend: str | None = None, scheduler: str | None = None) -> tuple[str, str | None]:
    """:func:`backend_settings`, and for ``dask`` that ``dask.distributed`` can be imported.

    Cheap (no cluster is started, no scheduler contacted): a build calls it before
    its first chapter so that a wrong setting stops it at once.

    Examples
    --------
    >>> check_backend("loky", "")
    ('loky', None)
    """
    settings = backend_settings(backend, scheduler)
    if settings[0] == "dask":
        _distributed()
    return settings


def _serial(tasks: Iterable, return_as: str = "list"):
    """joblib ``delayed`` tasks run one after another in this process."""
    results = (fn(*args, **kwargs) for fn, args, kwargs in tasks)
    return results if return_as == "generator" else list(results)


def _connect(distributed, scheduler: str, timeout: float):
    """A client of the scheduler at ``scheduler``, or a :class:`ConfigError` naming the address."""
    try:
        return distributed.Client(scheduler, timeout=timeout)
    except (OSError, ValueError) as err:  # OSError: nobody answers in time; ValueError: not an address
        message = (f"cannot reach the dask scheduler at SCHEDULER={scheduler!r} (REFACE_SCHEDULER) "
                   f"within {timeout:g} s: {err}; start it (dask scheduler) or correct the address")
    # The failed Client lives on in the error's frames; collected at some later moment, its __del__
    # stops an event loop, and inside the start of another cluster's loop that deadlocks (seen: a
    # LocalCluster started after a failed connection hung in LoopRunner.stop). Collect it here.
    gc.collect()
    raise ConfigError(message) from None


def _require_single_threaded(client, where: str) -> None:
    """A :class:`ConfigError` when a worker of the cluster runs more than one thread."""
    threads = {w: n for w, n in client.nthreads().items() if n != 1}
    if threads:
        raise ConfigError(f"the dask workers of {where} must run one thread each (results would depend on "
                          f"the threads otherwise); {len(threads)} run {max(threads.values())}: start them with "
                          f"`dask worker --nthreads 1` (dask-jobqueue: processes equal to cores)")


@contextmanager
def _dask_client(n_workers: int, scheduler: str | None, timeout: float):
    """A client of the scheduler, or of a new LocalCluster of ``n_workers`` single-threaded processes."""
    distributed = _distributed()
    if scheduler:
        with _connect(distributed, scheduler, timeout) as client:
            _require_single_threaded(client, f"the scheduler at {scheduler}")
            yield client
        return
    with _local_cluster(distributed, n_workers) as cluster:
        with distributed.Client(cluster, timeout=timeout) as client:
            client.wait_for_workers(n_workers, timeout=WORKER_START_SECONDS)
            yield client


#: Attempts to start a LocalCluster before giving up (see :func:`_local_cluster`).
LOCAL_CLUSTER_ATTEMPTS = 3
#: Seconds a LocalCluster's worker process may take to start and reach its scheduler
#: (the nanny's ``death_timeout``): a worker that never comes up fails the start, which
#: is retried, instead of leaving the tasks waiting for it.
WORKER_START_SECONDS = 120


def _local_cluster(distributed, n_workers: int, attempts: int = LOCAL_CLUSTER_ATTEMPTS):
    """A new LocalCluster of ``n_workers`` single-threaded processes, retried when its event loop is late.

    distributed waits a fixed 10 s for the thread of its event loop to start and then
    fails with a bare ``AssertionError`` (``distributed.utils.LoopRunner``); on a busy
    two-core machine that happened once in CI. A worker process that does not reach the
    scheduler within :data:`WORKER_START_SECONDS` makes the start fail too
    (``RuntimeError: Cluster failed to start``) rather than wait without end. Such failures
    leave nothing behind, so they are retried; after ``attempts`` failures the error says
    what happened.
    """
    import warnings

    for attempt in range(1, attempts + 1):
        if attempt > 1:  # the failed cluster, collected later, could stop a loop inside this start (see _connect)
            gc.collect()
        try:
            # no dashboard; no memory limit per worker, as loky's processes have none
            return distributed.LocalCluster(n_workers=n_workers, threads_per_worker=1, processes=True,
                                            dashboard_address=None, memory_limit=0,
                                            death_timeout=WORKER_START_SECONDS)
        except (AssertionError, TimeoutError, RuntimeError) as err:
            if attempt == attempts:
                raise RuntimeError(f"a dask LocalCluster of {n_workers} workers did not start in {attempts} "
                                   f"attempts ({type(err).__name__}: {err or 'its event loop did not start in time'}); "
                                   f"the machine may be overloaded: retry, or use BACKEND=loky") from err
            warnings.warn(f"the dask LocalCluster did not start (attempt {attempt} of {attempts}: "
                          f"{type(err).__name__}); retrying", RuntimeWarning, stacklevel=2)


@contextmanager
def worker_pool(n_jobs: int | None = None, *, backend: str | None = None, scheduler: str | None = None,
                return_as: str = "list", max_nbytes: str | None = "1M",
                connect_timeout: float = 30.0) -> Iterator[Callable[[Iterable], Iterable]]:
    """Workers for joblib ``delayed`` tasks: a callable that runs an iterable of them, results in order.

    Parameters
    ----------
    n_jobs : int, optional
        Worker processes (default :func:`default_jobs`): loky's processes, or the
        LocalCluster's workers. With ``loky``, 1 runs the tasks in this process.
        A scheduler's cluster uses all its workers.
    backend, scheduler : str, optional
        See :func:`backend_settings` (default: ``$REFACE_BACKEND``, ``$REFACE_SCHEDULER``).
    return_as : {"list", "generator"}
        The results as a list, or as a generator to consume inside the ``with`` block.
    max_nbytes : str or None
        loky only: arrays larger than this reach the workers as memory maps (None: never).
    connect_timeout : float
        Seconds to wait for the scheduler.

    Raises
    ------
    ConfigError
        A wrong setting (:func:`backend_settings`), ``dask`` without ``dask.distributed``
        installed, a scheduler that cannot be reached or whose workers run several threads.

    Examples
    --------
    >>> from joblib import delayed
    >>> with worker_pool(1, backend="loky", scheduler="") as run:
    ...     run(delayed(pow)(i, 2) for i in range(4))
    [0, 1, 4, 9]
    """
    from joblib import Parallel, parallel_config

    backend, scheduler = backend_settings(backend, scheduler)
    n_jobs = default_jobs() if n_jobs is None else max(1, int(n_jobs))
    if backend == "loky" and n_jobs == 1:
        yield lambda tasks: _serial(tasks, return_as)
    elif backend == "loky":
        with parallel_config(backend="loky", inner_max_num_threads=1):
            yield Parallel(n_jobs=n_jobs, return_as=return_as, max_nbytes=max_nbytes)
    else:
        with _dask_client(n_jobs, scheduler, connect_timeout), parallel_config(backend="dask"):
            yield Parallel(n_jobs=-1, return_as=return_as)
