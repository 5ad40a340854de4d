"""Quality and cost of the study's own steps, for the Performance appendix; tidy DataFrames.

* :func:`sampler_benchmark`: wall time, network evaluations and face MSD of a
  trained cascade under a list of samplers (DDPM-1000, DDIM-10 ... 250), the
  MSD computed in each subject's space exactly as the book does
  (:func:`subject_faces`, :func:`subject_space_msd`).
* :func:`face_pair_metrics`, :func:`surface_benchmark`: time of one face
  surface distance, and MONAI's ``compute_average_surface_distance`` on the
  same face masks (:func:`surface_agreement`).
* :func:`chapter_costs`, :func:`stage_costs`: the recorded time and peak
  memory of each chapter and cached stage, against the targets.

Examples
--------
>>> sampler_specs([("ddpm", 1000), 10], 1000)
[('DDPM-1000', 'ddpm', 1000), ('DDIM-10', 'ddim', 10)]
"""
from __future__ import annotations

import contextlib
import time
from pathlib import Path

import numpy as np
import pandas as pd

from refacelib._utils.arrays import bounding_box
from refacelib._utils.device import resolve_device
from refacelib.diffusion import grid
from refacelib.diffusion.cascade import CascadeConfig
from refacelib.diffusion.sample import auto_batch_size, reface
from refacelib.evaluation import reid
from refacelib.imaging.surface import head_mask
from refacelib.pipeline import refacing
from refacelib.pipeline.evaluation import candidate_images, face_msd, original_face, subject_region
from refacelib.pipeline.stages import load_defaced

__all__ = [
    "sampler_specs",
    "sampler_benchmark",
    "sampler_summary",
    "subject_faces",
    "subject_space_msd",
    "stored_msd",
    "face_pair_metrics",
    "surface_benchmark",
    "surface_agreement",
    "chapter_costs",
    "stage_costs",
    "BOOK_BUDGET_S",
    "BOOK_MEMORY_MIB",
    "WARM_REBUILD_S",
]

#: Targets of the issue for a cold ``make book`` on ``quick`` (2 CPU cores).
BOOK_BUDGET_S, BOOK_MEMORY_MIB, WARM_REBUILD_S = 20 * 60, 6 * 1024, 60


# --------------------------------------------------------------------------- samplers
def sampler_specs(samplers, train_timesteps: int) -> list[tuple[str, str, int]]:
    """``(label, sampler, steps)`` with steps clipped to the schedule, duplicates dropped.

    Examples
    --------
    >>> sampler_specs([("ddpm", 1000), ("ddim", 10), 50, ("ddim", 250)], 100)
    [('DDPM-100', 'ddpm', 100), ('DDIM-10', 'ddim', 10), ('DDIM-50', 'ddim', 50), ('DDIM-100', 'ddim', 100)]
    """
    out, seen = [], set()
    for spec in samplers:
        kind, steps = ("ddim", spec) if isinstance(spec, (int, np.integer)) else (str(spec[0]).lower(), spec[1])
        steps = int(train_timesteps) if steps is None else max(1, min(int(steps), int(train_timesteps)))
        if (kind, steps) not in seen:
            seen.add((kind, steps))
            out.append((f"{kind.upper()}-{steps}", kind, steps))
    return out


@contextlib.contextmanager
def _forward_counter(models):
    """Count the items passed through each network (forward hooks)."""
    counts = {}
    handles = []
    for stage, model in enumerate(models, 1):
        if model is None:
            continue
        counts[stage] = 0

        def hook(module, args, output, stage=stage):
            counts[stage] += int(args[0].shape[0])

        handles.append(model.register_forward_hook(hook))
    try:
        yield counts
    finally:
        for h in handles:
            h.remove()


def sampler_benchmark(models, config: CascadeConfig, data: dict, samplers, *, msd, seed: int = 0,
                      batch_size: int | str = 8, device="auto", progress: bool = False) -> pd.DataFrame:
    """Wall time, network evaluations and face MSD of each sampler, one sample per subject.

    Parameters
    ----------
    models : (stage1, stage2) trained networks
    config : CascadeConfig
    data : dict
        ``defaced``, ``mask``, ``prior`` arrays (N, X, Y, Z) on the common grid and
        ``subject`` (N ids).
    samplers : list
        ``("ddpm", 1000)``, ``("ddim", 10)`` or a bare step count (DDIM).
    msd : callable
        ``msd(refaced)`` -> N face MSDs (mm) of the refaced volumes (N, X, Y, Z),
        e.g. :func:`subject_space_msd` with its preparation bound.

    Returns
    -------
    DataFrame
        ``sampler, kind, steps, nfe, seconds, cpu_seconds, seconds_per_subject, subject, msd_mm``;
        ``nfe`` is the network evaluations per refaced face, both stages (the
        sampler's steps in each stage plus the stage-2 one-step estimate);
        ``cpu_seconds`` the process's CPU time, steadier than wall time on a
        shared machine.
    """
    device = resolve_device(device)
    n, rows = len(data["subject"]), []
    if batch_size == "auto":  # sized before counting, so the probe passes are not counted
        batch_size = auto_batch_size(models, config, tuple(np.shape(data["defaced"])[1:]), device=device, n_items=n)
    for label, kind, steps in sampler_specs(samplers, config.stage1.train_timesteps):
        with _forward_counter(models) as calls:
            start, cpu_start = time.perf_counter(), time.process_time()
            res = reface(data["defaced"], data["mask"], data["prior"], models, config, sampler=kind, steps=steps,
                         n_samples=1, seed=seed, batch_size=batch_size, device=device, progress=progress)
            seconds, cpu = time.perf_counter() - start, time.process_time() - cpu_start
        values = np.asarray(msd(res["sample"]), float)
        for sid, value in zip(data["subject"], values):
            rows.append({"sampler": label, "kind": kind, "steps": steps, "nfe": sum(calls.values()) / n,
                         "seconds": round(seconds, 3), "cpu_seconds": round(cpu, 3),
                         "seconds_per_subject": round(seconds / n, 4),
                         "subject": sid, "msd_mm": float(value)})
    return pd.DataFrame(rows)


def sampler_summary(table: pd.DataFrame, *, reference: str | None = None, tolerance: float = 0.05,
                    max_steps: int = 50, min_speedup: float = 20.0) -> pd.DataFrame:
    """Median MSD and cost per sampler against the reference (default: the DDPM row).

    ``meets_target``: DDIM with at most ``max_steps`` steps, median MSD within
    ``tolerance`` of the reference's and at least ``min_speedup`` times fewer
    denoising steps (``step_speedup``; ``nfe_speedup`` is the measured ratio of
    network evaluations, which also counts the one-step estimate of stage 2).

    Examples
    --------
    >>> t = pd.DataFrame({"sampler": ["DDPM-1000"] * 2 + ["DDIM-10"] * 2, "kind": ["ddpm"] * 2 + ["ddim"] * 2,
    ...                   "steps": [1000] * 2 + [10] * 2, "nfe": [2001] * 2 + [21] * 2, "seconds": [100.0] * 2 + [1.0] * 2,
    ...                   "cpu_seconds": [190.0] * 2 + [2.0] * 2, "msd_mm": [1.0, 2.0, 1.5, 1.6]})
    >>> sampler_summary(t)[["sampler", "msd_ratio", "meets_target"]].values.tolist()
    [['DDPM-1000', 1.0, False], ['DDIM-10', 1.0333, True]]
    """
    reference = reference or table.loc[table["kind"] == "ddpm", "sampler"].iloc[0]
    out = (table.groupby("sampler", sort=False)
           .agg(kind=("kind", "first"), steps=("steps", "first"), nfe=("nfe", "first"), seconds=("seconds", "first"),
                cpu_seconds=("cpu_seconds", "first"),
                n=("msd_mm", "size"), msd_median=("msd_mm", "median"),
                msd_q1=("msd_mm", lambda s: s.quantile(0.25)), msd_q3=("msd_mm", lambda s: s.quantile(0.75)))
           .reset_index())
    ref = out.set_index("sampler").loc[reference]
    out["msd_ratio"] = (out["msd_median"] / ref["msd_median"]).round(4)
    out["step_speedup"] = (ref["steps"] / out["steps"]).round(2)
    out["nfe_speedup"] = (ref["nfe"] / out["nfe"]).round(2)
    out["time_speedup"] = (ref["seconds"] / out["seconds"]).round(2)
    out["meets_target"] = ((out["kind"] == "ddim") & (out["steps"] <= max_steps)
                           & ((out["msd_ratio"] - 1).abs() <= tolerance) & (out["step_speedup"] >= min_speedup))
    return out


def subject_faces(deface_folder: Path, template, ids) -> dict:
    """Each subject's original face surface, face region and surface threshold, loaded once.

    The same as :func:`refacelib.pipeline.evaluation.face_msd_table` computes them.
    """
    return {sid: original_face(deface_folder, template, sid)[1] for sid in ids}


def subject_space_msd(faces: dict, refaced, data: dict, *, template, deface_folder: Path) -> np.ndarray:
    """Face MSD (mm) of common-grid refaced volumes, each in its subject's space.

    Each volume is brought to full resolution and to the subject's grid, and
    composited inside the subject's removal mask, by the refacing chapter's own
    steps (:func:`refacelib.diffusion.grid.full_resolution` and the writer of
    :func:`refacelib.pipeline.refacing.reface_test_set`, into a temporary folder); its
    face surface is then compared with the original's as in the
    re-identification chapter.

    Parameters
    ----------
    faces : dict
        :func:`subject_faces` of the subjects of ``data``.
    refaced : array (N, X, Y, Z)
        The sampler's output on the common grid.
    data : dict
        :func:`refacelib.pipeline.refacing.build_examples` of these subjects, one method.
    """
    import tempfile

    import nibabel as nib

    average = nib.load(str(Path(deface_folder) / "cohort_average.nii.gz")).get_fdata(dtype=np.float32)
    out = []
    with tempfile.TemporaryDirectory() as tmp:
        for i, (sid, method) in enumerate(zip(data["subject"], data["method"])):
            volume = grid.full_resolution(refaced[i], data["prior"][i], average, template,
                                              average_norm=data["average_norm"], match=data["match"][i],
                                              mask=data["mask"][i])
            refacing.write_subject(Path(tmp), deface_folder, template, sid, method, {"sample": volume},
                                    scale=data["scale"][i])
            image = load_defaced(Path(tmp), f"{method}_sample", sid)[0]
            out.append(face_msd(image, faces[sid]))
    return np.asarray(out, float)


def stored_msd(faces: dict, deface_folder: Path, name: str) -> pd.DataFrame:
    """Face MSD of a stored candidate (``average``, ``template_average``, a method) per subject."""
    rows = []
    for sid, f in faces.items():
        rows.append({"subject": sid, "candidate": name,
                     "msd_mm": face_msd(load_defaced(deface_folder, name, sid)[0], f)})
    return pd.DataFrame(rows)


# --------------------------------------------------------------------------- surface distance
def _head_in_box(image: np.ndarray, threshold: float, box) -> np.ndarray:
    """The head mask :func:`refacelib.evaluation.reid.face_surface` contours, on the face region's box."""
    from scipy import ndimage as ndi

    vol = ndi.gaussian_filter(np.asarray(image, np.float64), 1.0)[box]
    return head_mask(vol, threshold=threshold, smooth_sigma=0.0)


def face_pair_metrics(original: np.ndarray, candidate: np.ndarray, affine: np.ndarray, region: np.ndarray, *,
                      threshold: float, original_surface: np.ndarray | None = None) -> dict:
    """The book's face MSD of one candidate with its cost, and MONAI's surface distance on the same faces.

    ``msd_mm`` and ``seconds``: the book's face MSD (:func:`refacelib.evaluation.reid.face_surface`
    of the candidate, a mesh cut to the face region, then
    :func:`refacelib.evaluation.reid.surface_msd` against the original's surface, given or
    computed once). ``monai_msd_mm`` and ``monai_seconds``: the same definition
    (mean of the two directed mean distances between the face surfaces) from
    MONAI's ``get_mask_edges`` and ``get_surface_distance`` (the functions behind
    ``compute_average_surface_distance``) on the same head masks, voxel edges
    cut to the same region instead of a mesh.
    """
    from monai.metrics.utils import get_mask_edges, get_surface_distance

    if original_surface is None:
        original_surface = reid.face_mesh(original, affine, region, threshold=threshold)
    start = time.perf_counter()
    mesh = reid.face_mesh(candidate, affine, region, threshold=threshold)
    msd = reid.surface_msd(mesh, original_surface)
    seconds = time.perf_counter() - start
    box = bounding_box(region, 6)
    spacing = [float(s) for s in np.sqrt((np.asarray(affine)[:3, :3] ** 2).sum(0))]
    face = region[box]
    head_o = _head_in_box(original, threshold, box)
    start = time.perf_counter()
    head_c = _head_in_box(candidate, threshold, box)
    edges_c, edges_o = get_mask_edges(head_c, head_o, crop=False)
    edges_c, edges_o = np.asarray(edges_c, bool) & face, np.asarray(edges_o, bool) & face
    out = {"msd_mm": msd, "seconds": seconds, "monai_msd_mm": np.nan, "monai_seconds": np.nan}
    if edges_c.any() and edges_o.any():
        directed = [float(np.mean(get_surface_distance(a, b, spacing=spacing)))
                    for a, b in ((edges_c, edges_o), (edges_o, edges_c))]
        out["monai_msd_mm"] = 0.5 * (directed[0] + directed[1])
        out["monai_seconds"] = time.perf_counter() - start
    return out


def surface_benchmark(deface_folder: Path, refaced_folder: Path, template, ids, methods, *,
                      candidates=("refaced", "average")) -> pd.DataFrame:
    """:func:`face_pair_metrics` for every subject, method and candidate of a run.

    Returns
    -------
    DataFrame
        ``subject, method, candidate, n_vertices_original, msd_mm, seconds, monai_msd_mm,
        monai_seconds``.
    """
    rows = []
    for sid in ids:
        original, affine = load_defaced(deface_folder, "original", sid)
        region = subject_region(template, deface_folder, sid, original.shape, affine)
        threshold = reid.smoothed_threshold(original, 1.0)
        surf = reid.face_mesh(original, affine, region, threshold=threshold)
        for method in methods:
            images = candidate_images(deface_folder, refaced_folder, sid, method)
            for name in candidates:
                metrics = face_pair_metrics(original, images[name], affine, region, threshold=threshold,
                                            original_surface=surf)
                rows.append({"subject": sid, "method": method, "candidate": name,
                             "n_vertices_original": len(surf.verts), **metrics})
    return pd.DataFrame(rows)


def surface_agreement(table: pd.DataFrame) -> pd.DataFrame:
    """Cost per face and agreement of the book's face MSD with MONAI's (:func:`surface_benchmark`).

    Returns
    -------
    DataFrame, one row
        ``n, seconds_median, monai_seconds_median, pearson_r, spearman_rho,
        median_abs_diff_mm, median_rel_diff``.

    Examples
    --------
    >>> t = pd.DataFrame({"msd_mm": [1.0, 2.0, 3.0], "monai_msd_mm": [1.1, 2.0, 3.3],
    ...                   "seconds": [0.1, 0.2, 0.3], "monai_seconds": [0.2, 0.2, 0.2]})
    >>> surface_agreement(t)[["n", "median_abs_diff_mm"]].values.tolist()
    [[3.0, 0.1]]
    """
    t = table.dropna(subset=["msd_mm", "monai_msd_mm"])
    diff = (t["msd_mm"] - t["monai_msd_mm"]).abs()
    return pd.DataFrame([{
        "n": len(t), "seconds_median": round(float(table["seconds"].median()), 4),
        "monai_seconds_median": round(float(table["monai_seconds"].median()), 4),
        "pearson_r": round(float(t["msd_mm"].corr(t["monai_msd_mm"])), 4),
        "spearman_rho": round(float(t["msd_mm"].corr(t["monai_msd_mm"], method="spearman")), 4),
        "median_abs_diff_mm": round(float(diff.median()), 4),
        "median_rel_diff": round(float((diff / t["monai_msd_mm"]).median()), 4)}])


# --------------------------------------------------------------------------- book costs
def chapter_costs(timings: pd.DataFrame, *, budget_s: float = BOOK_BUDGET_S,
                  memory_mib: float = BOOK_MEMORY_MIB) -> pd.DataFrame:
    """Seconds and peak resident memory per chapter (``chapter_timings.csv``) plus a total row.

    Examples
    --------
    >>> t = pd.DataFrame({"chapter": ["a", "b"], "seconds": [600.0, 700.0], "peak_rss_mib": [900.0, 800.0]})
    >>> total = chapter_costs(t).iloc[-1]
    >>> total["chapter"], float(total["seconds"]), bool(total["within_target"])
    ('total', 1300.0, False)
    """
    out = timings[["chapter", "seconds", "peak_rss_mib"]].copy()
    out["within_target"] = pd.NA
    total = {"chapter": "total", "seconds": float(out["seconds"].sum()), "peak_rss_mib": float(out["peak_rss_mib"].max())}
    total["within_target"] = bool(total["seconds"] <= budget_s and total["peak_rss_mib"] <= memory_mib)
    return pd.concat([out, pd.DataFrame([total])], ignore_index=True)


def stage_costs(deface_stats: dict | None, timings: pd.DataFrame | None,
                faces_stats: dict | None = None, muscle_stats: dict | None = None) -> pd.DataFrame:
    """Cold cost of the cached stages: defacing (its ``done.json``), the rows of ``timings.csv``,
    the face distances (their ``done.json``, :func:`refacelib.pipeline.evaluation.face_evaluation`)
    and the muscle analysis (:func:`refacelib.pipeline.muscle_stage.muscle_evaluation`).

    Examples
    --------
    >>> stage_costs({"seconds": 5.0, "peak_rss_mib": 300.0},
    ...             pd.DataFrame({"step": ["train stage 1"], "device": ["cpu"], "seconds": [2.0]}),
    ...             {"seconds": 3.0, "peak_rss_mib": 400.0}, {"seconds": 4.0, "peak_rss_mib": 500.0})["seconds"].tolist()
    [5.0, 2.0, 3.0, 4.0]
    """
    rows = []
    if deface_stats:
        rows.append({"stage": "defacing (all subjects, all methods)", "device": "cpu",
                     "seconds": float(deface_stats.get("seconds", np.nan)),
                     "peak_rss_mib": float(deface_stats.get("peak_rss_mib", np.nan))})
    if timings is not None:
        for r in timings.itertuples():
            rows.append({"stage": r.step, "device": r.device, "seconds": float(r.seconds), "peak_rss_mib": np.nan})
    if faces_stats:
        rows.append({"stage": "face distances (every candidate, test subjects)", "device": "cpu",
                     "seconds": float(faces_stats.get("seconds", np.nan)),
                     "peak_rss_mib": float(faces_stats.get("peak_rss_mib", np.nan))})
    if muscle_stats:
        rows.append({"stage": "muscle analysis (features, refitted resamples)", "device": "cpu",
                     "seconds": float(muscle_stats.get("seconds", np.nan)),
                     "peak_rss_mib": float(muscle_stats.get("peak_rss_mib", np.nan))})
    return pd.DataFrame(rows, columns=["stage", "device", "seconds", "peak_rss_mib"])
