"""The cohort of a run: the phantom (generated and cached) or a BIDS folder.

Compute only; the figures are in :mod:`refacelib.report.viz`.
"""
from __future__ import annotations

from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd

from refacelib.data.bids import (AGE_RANGE, MAX_SHEAR_DEG, MAX_VOXELS, MUSCLE_COLUMNS, BIDSDataset, load_bids,
                                 load_subject_array)
from refacelib.data.inputcheck import require_whole_heads
from refacelib.data.phantom import PhantomParams, build_basis, face_normal_sd, generate_subject, write_cohort
from refacelib.data.privacy import dataset_key, pseudonymize_dataset
from refacelib.data.template import head_mask_from_intensity, load_template, pydeface_version
from refacelib.evaluation.reid import candidate_msd
from refacelib.pipeline.cache import stage_folder
from refacelib.pipeline.config import Run

__all__ = [
    "phantom_params",
    "phantom_folder",
    "input_limits",
    "prepare_dataset",
    "summary_table",
    "describe_dataset",
    "mid_sagittal_slices",
    "face_variation",
]

SPLIT_ORDER = ["train", "val", "test_internal", "test_external", "test"]


def phantom_params(run: Run) -> PhantomParams:
    """The phantom parameters of a run's profile (section ``phantom``)."""
    return PhantomParams.from_dict(run.params.get("phantom"))


def phantom_folder(run: Run) -> Path:
    """Cache folder of the phantom cohort, keyed by its parameters and the template version."""
    return stage_folder(run, "phantom", {"phantom": asdict(phantom_params(run)), "pydeface": pydeface_version()})


def input_limits(cohort: dict) -> dict:
    """The loader's limits on a real dataset from the profile's ``cohort`` section.

    ``age_range`` (plausible ages, years, inclusive), ``max_voxels`` (largest image,
    checked from the header before loading) and ``max_shear_deg`` (largest departure of
    the voxel axes from right angles); each defaults to the loader's constant.

    Examples
    --------
    >>> input_limits({"voxel_mm": 2.0})
    {'age_range': (1.0, 120.0), 'max_voxels': 134217728, 'max_shear_deg': 5.0}
    >>> input_limits({"age_range": [0, 120], "max_voxels": 1000})["max_voxels"]
    1000
    """
    return {"age_range": cohort.get("age_range", AGE_RANGE),
            "max_voxels": int(cohort.get("max_voxels", MAX_VOXELS)),
            "max_shear_deg": float(cohort.get("max_shear_deg", MAX_SHEAR_DEG))}


def prepare_dataset(run: Run, *, progress: bool = True) -> BIDSDataset:
    """Load the run's dataset; for the phantom, generate it first unless cached.

    A real dataset is checked against the profile's limits (:func:`input_limits`:
    ``cohort.age_range``, ``cohort.max_voxels``, ``cohort.max_shear_deg``); its participant ids are replaced by stable pseudonyms
    (:mod:`refacelib.data.privacy`) and its images screened
    (:func:`refacelib.data.inputcheck.require_whole_heads`): a brain-only or
    already defaced image is a :class:`~refacelib.data.bids.DatasetError` naming it.

    A cohort is complete when its ``dataset_description.json`` exists; an
    interrupted generation resumes with the subjects already written.
    """
    if not run.is_phantom:  # real data: ids become pseudonyms, brain-only/defaced images are refused
        seed = int(run.params.get("seed", 0))
        limits = input_limits(run.params["cohort"])
        ds = pseudonymize_dataset(load_bids(run.dataset, seed=seed, **limits), key=dataset_key(run.dataset, seed=seed))
        require_whole_heads(ds, voxel_mm=run.params["cohort"]["voxel_mm"], cache=run.artifacts / "input_check.csv")
        return ds
    folder = phantom_folder(run)
    if not (folder / "dataset_description.json").exists():
        params = phantom_params(run)
        template = load_template(params.voxel_mm, cache_dir=run.artifacts / "template")
        write_cohort(folder, build_basis(template, params), params, progress=progress)
    return load_bids(folder)


def summary_table(participants: pd.DataFrame) -> pd.DataFrame:
    """Participants per split and site: n, age mean (SD), percent female, muscle means.

    Examples
    --------
    >>> df = pd.DataFrame({"participant_id": ["sub-1", "sub-2"], "age": [60.0, 70.0],
    ...                    "sex": ["F", "M"], "site": ["A", "A"], "split": ["train", "train"]})
    >>> summary_table(df)[["split", "n", "female_%"]].values.tolist()
    [['train', 2, 50.0]]
    """
    rows = []
    order = {s: i for i, s in enumerate(SPLIT_ORDER)}
    for (split, site), g in participants.groupby(["split", "site"], sort=False):
        row = {"split": split, "site": site, "n": len(g),
               "age_mean": round(g["age"].mean(), 1), "age_sd": round(g["age"].std(ddof=1), 1) if len(g) > 1 else np.nan,
               "female_%": round(100.0 * (g["sex"] == "F").mean(), 1)}
        for col in MUSCLE_COLUMNS:
            if col in g:
                row[f"{col}_mean"] = round(g[col].mean(), 1)
        rows.append(row)
    out = pd.DataFrame(rows)
    return out.sort_values(by="split", key=lambda s: s.map(order).fillna(99), kind="stable").reset_index(drop=True)


def describe_dataset(run: Run, ds: BIDSDataset) -> str:
    """One paragraph, generated from the parameters, saying what this dataset is."""
    n = len(ds.subjects)
    if not run.is_phantom:
        muscle = "with" if ds.has_muscle else "without"
        return (f"This run uses a user-supplied BIDS-style dataset ({n} participants, {muscle} CT muscle "
                f"columns), profile `{run.profile}`. Its images are real data: faces are shown only when "
                f"the parameter `publish_faces` is true.")
    p = phantom_params(run)
    return (
        f"This run uses the **phantom cohort, a simulation**: {n} synthetic heads generated by "
        f"`refacelib.data.phantom` from the population-average head shipped in pydeface {pydeface_version()}, "
        f"at {p.voxel_mm:g} mm (seed {p.seed}). Each head is the template warped by a smooth cranial "
        f"deformation ({p.cranial_amplitude_mm:g} mm RMS), a five-component face deformation "
        f"({p.face_amplitude_mm:g} mm per component) coupled to the cranial one with "
        f"`face_coupling` = {p.face_coupling:g}, a soft-tissue factor ({p.soft_tissue_mm:g} mm) that also "
        f"drives the simulated CT muscle radiodensity, pose and scale changes, a bias field and Rician "
        f"noise. {p.n_test_external} external-test heads come from a simulated second site with another "
        f"contrast (gamma {p.external_gamma:g}), {p.external_noise_factor:g}x the noise and "
        f"{p.external_slice_factor:g}x thicker slices. No real person is shown or measured here; the "
        f"numbers demonstrate the pipeline, not the paper's empirical claims."
    )


def mid_sagittal_slices(subjects, voxel_mm: float) -> list[np.ndarray]:
    """Mid-sagittal slice of each subject (RAS, resampled to ``voxel_mm``), scaled to [0, 1].

    The sagittal plane is the one through the centre of the head mask.
    """
    out = []
    for subject in subjects:
        data, _ = load_subject_array(subject, voxel_mm)
        head = head_mask_from_intensity(data)
        x = int(round(np.argwhere(head)[:, 0].mean()))
        sl = data[x].T[::-1]
        out.append(np.clip(sl / max(np.percentile(sl[sl > 0], 99), 1e-6), 0, 1))
    return out


def face_variation(run: Run, *, n_subjects: int = 8) -> tuple[pd.DataFrame, dict]:
    """How much the phantom's faces vary: measured on the run's own generative model.

    Per training subject (the first ``n_subjects``): the face MSD (mm, the book's
    metric, :func:`refacelib.evaluation.reid.candidate_msd`) between the subject's head and
    the same head with the mean face (face latents 0, same noise draw), in the
    subject's face region dilated by 3 voxels. And the point-wise SD of the face
    surface along its normal (:func:`refacelib.data.phantom.face_normal_sd`): median,
    90th percentile and maximum, to set beside the published range
    (:data:`refacelib.data.phantom.REFERENCE_FACE_SD_MM`).
    """
    from scipy import ndimage

    params = phantom_params(run)
    basis = build_basis(load_template(params.voxel_mm, cache_dir=run.artifacts / "template"), params)
    rows = []
    for i in range(min(int(n_subjects), params.n_train)):
        subject = generate_subject(i, basis, params)
        mean_face = generate_subject(i, basis, params, face_latents=np.zeros(len(subject["latents"]["face"])))
        region = ndimage.binary_dilation(subject["face"], iterations=3)
        msd = candidate_msd(subject["image"], {"mean": mean_face["image"]}, subject["affine"], region)["mean"]
        rows.append({"participant_id": subject["participant_id"], "msd_mean_face_mm": msd,
                     "soft_tissue": subject["latents"]["soft_tissue"]})
    sd = face_normal_sd(basis, params)
    stats = {"sd_median_mm": float(np.median(sd)), "sd_p90_mm": float(np.percentile(sd, 90)),
             "sd_max_mm": float(sd.max())}
    return pd.DataFrame(rows), stats
