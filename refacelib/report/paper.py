"""Numbers reported by Gao et al. (2025) on their real cohorts, for side-by-side tables.

These are the paper's results (read off its text and figures, see
``shared/PAPER.md`` of the project), never ours: every table that shows them
labels them as the paper's numbers on real data.
"""
from __future__ import annotations

import pandas as pd

__all__ = ["IMAGE_LABELS", "COHORT_SIZES", "EXAMPLE_SUBJECT_MSD", "muscle_correlations", "refaced_msd_medians", "glue_values"]

#: Our image names -> the paper's labels.
IMAGE_LABELS = {
    "original": "original",
    "fsl_deface": "FSL_deface",
    "mri_deface": "MRI_Deface",
    "pydeface": "Pydeface",
    "quickshear": "Quickshear",
    "skullstrip": "skull-stripping",
}

#: Subjects per split in the paper (180 training; 484 unseen test subjects).
COHORT_SIZES = {"train": 180, "test_internal": 15, "test_external": 469}

#: The paper's one example subject (MRI_Deface), MSD (mm) of each candidate face.
EXAMPLE_SUBJECT_MSD = {"defaced": 2.452, "refaced": 0.363, "average": 0.792}

_MUSCLE = {  # image: {muscle: (mean, ci_low, ci_high)}
    "original": {"abdomen": (0.200, 0.047, 0.358), "thigh": (0.360, 0.209, 0.493), "shin": (0.183, 0.029, 0.336)},
    "fsl_deface": {"abdomen": (0.088, -0.069, 0.259), "thigh": (0.331, 0.181, 0.467), "shin": (0.141, -0.019, 0.286)},
    "mri_deface": {"abdomen": (0.140, -0.022, 0.301), "thigh": (0.307, 0.165, 0.440), "shin": (0.125, -0.033, 0.271)},
    "pydeface": {"abdomen": (0.122, -0.040, 0.297), "thigh": (0.268, 0.118, 0.413), "shin": (0.121, -0.032, 0.276)},
    "quickshear": {"abdomen": (0.177, 0.014, 0.334), "thigh": (0.226, 0.067, 0.378), "shin": (0.120, -0.040, 0.274)},
    "skullstrip": {"abdomen": (0.024, -0.141, 0.184), "thigh": (0.242, 0.099, 0.389), "shin": (0.068, -0.083, 0.223)},
}

#: Median MSD (mm) of the refaced face on 469 external subjects (the group's follow-up work).
_MSD = {"pydeface": 0.80, "fsl_deface": 0.81, "quickshear": 0.72, "mri_deface": 0.45, "skullstrip": 3.35,
        "average (mri_reface)": 0.78}


def muscle_correlations() -> pd.DataFrame:
    """The paper's Spearman correlations: columns muscle, image, paper_mean, paper_ci_low, paper_ci_high.

    Examples
    --------
    >>> muscle_correlations().query("image == 'original' and muscle == 'thigh'")["paper_mean"].item()
    0.36
    """
    rows = [{"muscle": m, "image": image, "paper_mean": v[0], "paper_ci_low": v[1], "paper_ci_high": v[2]}
            for image, by_muscle in _MUSCLE.items() for m, v in by_muscle.items()]
    return pd.DataFrame(rows)


def refaced_msd_medians() -> pd.DataFrame:
    """The follow-up work's median refaced-face MSD per method (external test set)."""
    return pd.DataFrame([{"method": k, "paper_median_msd_mm": v} for k, v in _MSD.items()])


def glue_values() -> dict[str, str]:
    """The paper's sizes and example-subject MSDs as text, keyed for glue (``paper_*``).

    Examples
    --------
    >>> glue_values()["paper_n_test_external"], glue_values()["paper_example_refaced"]
    ('469', '0.363')
    """
    out = {f"paper_n_{k}": str(v) for k, v in COHORT_SIZES.items()}
    out.update({f"paper_example_{k}": f"{v:.3f}" for k, v in EXAMPLE_SUBJECT_MSD.items()})
    return out
