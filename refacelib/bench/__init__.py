"""Measurements behind the Performance appendix.

``python -m refacelib.bench sizes`` writes ``bench/stage_sizes.json``; ``python -m refacelib.bench
registration`` measures cheaper ANTs settings on the phantom (``bench/results/registration-<profile>.csv``);
``python -m refacelib.bench costs`` writes ``bench/results/costs-<profile>.csv`` (:mod:`refacelib.bench.costs`);
:mod:`refacelib.bench.files` measures the image files' compression.
The modules load on first use: ``bench/gpu_bench.py`` runs :mod:`refacelib.bench.throughput` on a machine
without imaging packages.
"""
from refacelib._utils.lazy import attach

#: Each module and the public names it holds; loaded on first use (PEP 562).
_MODULES = {
    "throughput": [
        "cpu_model", "machine_info", "profile_sizes", "sized_config", "stage_shapes", "synthetic_volumes",
        "training_throughput", "sampling_throughput", "count_host_syncs", "sampling_sync_audit",
        "paper_projection", "profile_sampling_row", "refacing_workload", "write_results", "load_results",
        "card_slug",
    ],
    "settings": ["sample_counts", "setting_benchmark", "setting_summary", "within_budget", "budget_table",
                 "budget_choice", "load_settings"],
    "quality": [
        "sampler_specs", "sampler_benchmark", "sampler_summary", "subject_faces", "subject_space_msd",
        "stored_msd", "face_pair_metrics", "surface_benchmark", "surface_agreement", "chapter_costs",
        "stage_costs", "BOOK_BUDGET_S", "BOOK_MEMORY_MIB", "WARM_REBUILD_S",
    ],
    "registration": [
        "RegistrationSetting", "SETTINGS", "REFERENCE", "TOLERANCE_MM", "benchmark_indices", "phantom_subject",
        "head_points", "registration_matrix", "position_error", "deformation_floor", "registration_benchmark",
        "registration_summary", "registration_verdict", "verdict_text", "machine_load", "results_paths",
        "load_registration_results",
    ],
    "costs": [
        "SPLITS", "STAGES", "scaled_splits", "stage_units", "measure_costs", "fit_costs", "gpu_network_seconds",
        "project_costs", "projection_lines", "write_costs", "load_costs",
    ],
    "files": ["nifti_file_costs"],
}
__getattr__, __dir__, __all__ = attach(__name__, _MODULES)
