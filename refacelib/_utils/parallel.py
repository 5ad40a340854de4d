"""Worker counts for per-subject loops (one process per core, each single-threaded)."""
from __future__ import annotations

import os

__all__ = ["default_jobs"]


def default_jobs() -> int:
    """Worker processes for per-subject loops: the CPUs this process may use, at most 8."""
    try:
        n = len(os.sched_getaffinity(0))
    except AttributeError:  # pragma: no cover - macOS, Windows
        n = os.cpu_count() or 1
    return max(1, min(n, 8))
