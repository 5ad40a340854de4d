"""Runs of the study: run folders, the cached stages that read and write artifacts, the book build.

The only layer that knows about run folders, notebooks or the book. ``python -m refacelib.pipeline``
builds the book (:func:`refacelib.pipeline.book.main`). The modules load on first use, so that
``refacelib.pipeline.config`` (profiles) needs no imaging package.
"""
from refacelib._utils.lazy import attach

#: Each module and the public names it holds; loaded on first use (PEP 562).
_MODULES = {
    "schema": [
        "Spec", "PROFILE_SCHEMA", "DEFACE_METHODS", "profile_problems", "check",
    ],
    "config": [
        "ConfigError", "Run", "project_root", "runs_root", "list_profiles", "load_profile", "dataset_label",
        "open_run", "stable_hash", "parse_flag", "check_parameters", "validate_params",
    ],
    "cache": [
        "stage_folder", "is_done", "read_done", "mark_done", "source_digest",
    ],
    "stages": [
        "study_template", "subject_brain_mask", "deface_cohort", "load_defaced",
        "load_registration", "attacker_registration", "phantom_truth", "cohort_average_from_folder", "training_data_name",
        "face_features", "qc_failures", "stage_stats", "qc_summary",
    ],
    "cohort": [
        "phantom_params", "phantom_folder", "input_limits", "prepare_dataset", "summary_table", "describe_dataset",
        "mid_sagittal_slices", "face_variation",
    ],
    "evaluation": [
        "subject_region", "candidate_images", "original_face", "face_msd", "face_msd_table", "face_evaluation",
        "faces_folder", "metric_source_digest", "ATTACK_CANDIDATES", "fast_msd_matrix",
        "template_face", "matching_attack",
    ],
    "refacing": [
        "INTENSITY_SCALE", "CASCADE_VERSION", "cascade_config", "common_grid", "subject_scale",
        "intensity_match", "apply_match", "build_examples", "full_resolution", "REFACED_NAMES",
        "swap_partners", "write_subject", "train_cascade", "reface_test_set", "record_timings",
        "masked_errors", "RefacingSetup", "setup", "trained_cascade", "refaced_test_set", "shipped_root",
        "install_shipped", "training_provenance", "ship", "cascade_prior", "training_recipe", "shuffle_faces",
        "recipe_id", "linear_models", "examples_prior", "refit_linear", "LINEAR_CANDIDATES", "LINEAR_RECORD",
        "subject_composites", "carrying_registration",
    ],
    "ceiling": [
        "GRID_CEILING_VERSION", "grid_truth", "subject_ceiling", "grid_ceiling", "ceiling_summary",
    ],
    "muscle_stage": [
        "MUSCLE_VERSION", "MUSCLE_MODULES", "MUSCLE_SETTINGS", "MuscleResult", "muscle_folder", "cached_record",
        "muscle_evaluation",
    ],
    "chapter": [
        "Chapter", "dataset_name", "start_chapter",
    ],
    "book": [
        "ChildrenPeak", "chapter_names", "private_replacements", "build_book", "run_bench", "run_lock",
        "run_lab", "scrub_notebook", "main",
    ],
    "browser": [
        "CHROMIUM_FLAGS", "LAYOUT_SCRIPT", "find_chromium", "install_chromium", "serve", "open_page",
        "screenshot", "page_links", "read_layout", "layout_problems", "check_book", "PageCheck",
    ],
}
__getattr__, __dir__, __all__ = attach(__name__, _MODULES)
