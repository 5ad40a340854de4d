"""Measurements behind the Performance appendix.

``python -m refacelib.bench sizes`` writes ``bench/stage_sizes.json``. The modules load on first
use: ``bench/gpu_bench.py`` runs :mod:`refacelib.bench.throughput` on a machine without imaging packages.
"""
import importlib

#: Each module and the public names it holds; loaded on first use (PEP 562).
_MODULES = {
    "throughput": [
        "cpu_model", "machine_info", "profile_sizes", "sized_config", "stage_shapes", "synthetic_volumes",
        "training_throughput", "sampling_throughput", "count_host_syncs", "sampling_sync_audit",
        "paper_projection", "write_results", "load_results", "card_slug",
    ],
    "quality": [
        "sampler_specs", "sampler_benchmark", "sampler_summary", "subject_faces", "subject_space_msd",
        "stored_msd", "face_pair_metrics", "surface_benchmark", "surface_agreement", "chapter_costs",
        "stage_costs", "BOOK_BUDGET_S", "BOOK_MEMORY_MIB", "WARM_REBUILD_S",
    ],
}
_HOME = {name: module for module, names in _MODULES.items() for name in names}

__all__ = [*_MODULES, *_HOME]


def __getattr__(name):
    if name in _MODULES:
        return importlib.import_module(f"{__name__}.{name}")
    if name in _HOME:
        return getattr(importlib.import_module(f"{__name__}.{_HOME[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
