"""Face evaluation of a run: surface distances of every candidate face and the matching attack.

Candidates of a test subject under a defacing method: the defaced image, the
refaced image (a single sample and the mean of samples), the matched baselines
(the cohort's and the template's average face through the cascade's own path
with a zero residual), the swap check and, for the phantom, the oracle face.
All are compared with the subject's original on the same face region (the
template's face region carried to the subject by the evaluator's registration
to the original), at the same surface threshold.
"""
from __future__ import annotations

import resource
import time
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import ndimage

from refacelib.evaluation import reid
from refacelib.deface.methods import face_region
from refacelib._utils.parallel import worker_pool
from refacelib.pipeline.cache import is_done, mark_done, source_digest, stage_folder
from refacelib.pipeline.refacing import LINEAR_CANDIDATES
from refacelib.pipeline.stages import load_defaced, load_registration
from refacelib._utils.io import atomic_path, save_table
from refacelib.imaging.surface import index_mesh
from refacelib.data.template import Template

__all__ = ["subject_region", "candidate_images", "original_face", "face_msd", "face_msd_table", "face_evaluation",
           "faces_folder", "metric_source_digest", "fast_msd_matrix", "template_face", "matching_attack", "ATTACK_CANDIDATES"]

#: The candidates the matching attack ranks (:func:`matching_attack`), whose surfaces
#: :func:`face_evaluation` keeps.
ATTACK_CANDIDATES = ("refaced", "refaced_mean", "average", "defaced")

#: Version of what :func:`face_evaluation` writes (part of its cache key, with the source
#: digest of the modules that measure, :func:`metric_source_digest`).
FACE_EVAL_VERSION = 1

#: The modules whose code decides a face distance, relative to the package: every edit to
#: one of them (even a comment) makes :func:`face_evaluation` measure again.
METRIC_MODULES = ("pipeline/evaluation.py", "pipeline/stages.py", "evaluation/reid.py", "imaging/surface.py",
                  "imaging/registration.py", "deface/methods.py", "data/template.py")


def subject_region(template: Template, deface_folder: Path, sid: str, shape, affine) -> np.ndarray:
    """The template's face region on a subject's grid (nearest neighbour, through its registration).

    The evaluator's registration (template to the original image), the same for every candidate.
    """
    return load_registration(deface_folder, sid, template).to_subject(face_region(template), shape, affine, order=0)


def _stored(folder: Path, name: str, sid: str) -> np.ndarray | None:
    path = Path(folder) / name / f"{sid}.nii.gz"
    return load_defaced(folder, name, sid)[0] if path.is_file() else None


def candidate_images(deface_folder: Path, refaced_folder: Path, sid: str, method: str) -> dict[str, np.ndarray]:
    """Every candidate face of one subject under one method, on the subject's grid.

    ``defaced``; the cascade's ``refaced`` (one sample) and ``refaced_mean``;
    the matched baselines ``average`` and ``template_average`` (the same path
    as the cascade with a zero residual, in the same removal mask); ``swapped``
    (the swap check, :func:`refacelib.pipeline.refacing.reface_test_set`); ``linear``, the
    linear prior alone, and ``linear_permuted``, the same prior fitted to shuffled faces (the
    person-independent baseline), when the cascade has one (:mod:`refacelib.diffusion.linear`,
    :func:`refacelib.pipeline.refacing.refit_linear`); and, for the
    phantom, ``oracle``: the subject's head regenerated with its face latents
    replaced by their expectation given the rest of the head, composited into
    the same removal mask (the best any model could do).
    """
    defaced = load_defaced(deface_folder, method, sid)[0]
    out = {"defaced": defaced}
    for name, stored in (("refaced", "sample"), ("refaced_mean", "mean"), ("average", "average"),
                         ("template_average", "template_average"), ("swapped", "swapped")):
        out[name] = load_defaced(refaced_folder, f"{method}_{stored}", sid)[0]
    for name in LINEAR_CANDIDATES:  # cascade.prior: ridge: the linear candidates, through the same path
        linear = _stored(refaced_folder, f"{method}_{name}", sid)
        if linear is not None:
            out[name] = linear
    oracle = _stored(deface_folder, "oracle", sid)
    if oracle is not None:
        removal = load_defaced(deface_folder, f"{method}_removal", sid)[0] > 0
        out["oracle"] = np.where(removal, oracle, defaced).astype(np.float32)
    return out


def original_face(deface_folder: Path, template: Template, sid: str) -> tuple[np.ndarray, dict]:
    """A subject's original image, and what every candidate face of the subject is measured against.

    The dict holds ``affine``, ``region`` (:func:`subject_region`), ``threshold``
    (one per subject, from its original, so candidates differ only by their voxels)
    and ``original_surface`` (the original's face mesh).
    """
    original, affine = load_defaced(deface_folder, "original", sid)
    region = subject_region(template, deface_folder, sid, original.shape, affine)
    threshold = reid.smoothed_threshold(original, 1.0)
    return original, {"affine": affine, "region": region, "threshold": threshold,
                      "original_surface": reid.face_mesh(original, affine, region, threshold=threshold)}


def face_msd(image: np.ndarray, face: dict, target=None) -> float:
    """Face MSD (mm) of a candidate image against the original of :func:`original_face`.

    ``target``: the original's surface prepared by :func:`refacelib.imaging.surface.index_mesh`
    (the same distances, faster for many candidates).
    """
    mesh = reid.face_mesh(image, face["affine"], face["region"], threshold=face["threshold"])
    return reid.surface_msd(mesh, face["original_surface"] if target is None else target)


def _subject_faces(deface_folder: Path, refaced_folder: Path, template: Template, sid: str, test_set: str,
                   methods, keep_surfaces: bool) -> tuple[list, dict, list]:
    """MSD rows, face surfaces and test-retest rows of one subject (one worker's share of :func:`face_msd_table`)."""
    original, face = original_face(deface_folder, template, sid)
    affine, region, threshold, orig_mesh = face["affine"], face["region"], face["threshold"], face["original_surface"]
    # prepared once per subject: the original's triangle index (every candidate's MSD and offset) and
    # its smoothed image (the offset's inside test, as face_mesh smooths it)
    target = index_mesh(orig_mesh) if len(orig_mesh.verts) else orig_mesh
    smoothed = ndimage.gaussian_filter(np.asarray(original, np.float64), 1.0)
    band = reid.skin_band(smoothed, affine, region, threshold=threshold)  # the tissue that places the face surface
    rows, surfaces, floor = [], {(sid, "original"): orig_mesh.verts}, []
    retest = _stored(deface_folder, "retest", sid)
    if retest is not None:
        floor.append({"subject": sid, "test_set": test_set, "msd_mm": face_msd(retest, face)})
    for method in methods:
        for name, image in candidate_images(deface_folder, refaced_folder, sid, method).items():
            mesh = reid.face_mesh(image, affine, region, threshold=threshold)
            if keep_surfaces:
                surfaces[(sid, f"{method}:{name}")] = mesh.verts
            msd, offset = reid.msd_and_offset(mesh, target, smoothed, affine, threshold=threshold)
            rows.append({"subject": sid, "test_set": test_set, "method": method, "candidate": name,
                         "msd_mm": msd, "offset_mm": offset,
                         "skin_intensity": reid.band_intensity_ratio(image, original, band)})
    return rows, surfaces, floor


def face_msd_table(deface_folder: Path, refaced_folder: Path, template: Template, subjects: dict[str, str],
                   methods, *, keep_surfaces: bool = True, progress: bool = True, n_jobs: int | None = None):
    """MSD (mm) of every candidate face against the original, per subject and method.

    Subjects run in parallel worker processes (``n_jobs``, default
    :func:`refacelib._utils.parallel.default_jobs`; on this machine or a dask cluster,
    :func:`refacelib._utils.parallel.worker_pool`); the result does not depend on either.

    Parameters
    ----------
    subjects : dict participant_id -> test set name
    n_jobs : int, optional
        Worker processes; 1 runs in this process (with the ``loky`` backend).

    Returns
    -------
    msd : DataFrame with columns subject, test_set, method, candidate, msd_mm, offset_mm (the mean
        signed distance of the candidate's surface from the original's, :func:`refacelib.evaluation.reid.surface_offset`:
        negative when it sits inside the true skin) and skin_intensity (the candidate's mean
        intensity over the original's in the original's skin band of the face region,
        :func:`refacelib.evaluation.reid.skin_band`: below 1, a skin too dark for the surface's level)
    surfaces : dict (sid, name) -> face vertices (mm), name ``original`` or ``<method>:<candidate>``
    floor : DataFrame with columns subject, test_set, msd_mm: the test-retest floor, the MSD
        between the original and a second scan of the same head (phantom only; empty otherwise)
    """
    from joblib import delayed
    from tqdm.auto import tqdm

    tasks = (delayed(_subject_faces)(deface_folder, refaced_folder, template, sid, test_set, list(methods),
                                     keep_surfaces) for sid, test_set in subjects.items())
    rows, surfaces, floor = [], {}, []
    with worker_pool(n_jobs, return_as="generator") as workers:
        for sub_rows, sub_surfaces, sub_floor in tqdm(workers(tasks), total=len(subjects), desc="face surfaces",
                                                      disable=not progress):
            rows.extend(sub_rows)
            surfaces.update(sub_surfaces)
            floor.extend(sub_floor)
    return reid.msd_table(rows), surfaces, pd.DataFrame(floor, columns=["subject", "test_set", "msd_mm"])


def metric_source_digest(root: Path | None = None) -> str:
    """A digest of the bytes of :data:`METRIC_MODULES`: the code that measures, in the cache key of :func:`face_evaluation`.

    ``root``: a copy of the package (default: this one, read once per process, so that the key
    describes the code this process runs even when the files change under it).

    Examples
    --------
    >>> len(metric_source_digest())
    12
    """
    return source_digest(METRIC_MODULES, root)


def _surface_key(sid: str, name: str) -> str:
    return f"{sid}|{name}"


def faces_folder(run, deface_folder: Path, refaced_folder: Path, subjects: dict[str, str], methods) -> Path:
    """The folder of :func:`face_evaluation`'s stage (see there for its key); its ``done.json`` records
    the seconds and peak memory of the measurement."""
    key = {"version": FACE_EVAL_VERSION, "code": metric_source_digest(), "deface": Path(deface_folder).name,
           "refaced": Path(refaced_folder).name, "subjects": dict(subjects), "methods": list(methods)}
    return stage_folder(run, "faces", key)


def face_evaluation(run, deface_folder: Path, refaced_folder: Path, template: Template, subjects: dict[str, str],
                    methods, *, progress: bool = True, n_jobs: int | None = None):
    """:func:`face_msd_table` of a run, kept as a stage of the run's cache.

    The stage's folder (``<run>/artifacts/faces-<hash>``) is keyed by the two folders it
    reads (the defacing and refacing stages, whose names are hashes of what made them),
    the subjects and their test sets, the methods, :data:`FACE_EVAL_VERSION` and the
    digest of the measuring code (:func:`metric_source_digest`), so an edit anywhere else
    in the library reuses the distances and an edit of the metric measures again. It holds
    ``msd.csv``, ``floor.csv`` and ``surfaces.npz`` (the original's and the
    :data:`ATTACK_CANDIDATES`' face vertices, what the matching attack needs), and its
    record last: an interrupted evaluation runs again.

    Returns the same as :func:`face_msd_table`, with ``surfaces`` restricted to the
    original and :data:`ATTACK_CANDIDATES`; the values equal a fresh computation bit for bit.
    """
    folder = faces_folder(run, deface_folder, refaced_folder, subjects, methods)
    if not is_done(folder):
        start = time.perf_counter()
        msd, surfaces, floor = face_msd_table(deface_folder, refaced_folder, template, subjects, methods,
                                              progress=progress, n_jobs=n_jobs)
        keep = {"original"} | {f"{m}:{c}" for m in methods for c in ATTACK_CANDIDATES}
        folder.mkdir(parents=True, exist_ok=True)
        save_table(msd, folder / "msd.csv")
        save_table(floor, folder / "floor.csv")
        with atomic_path(folder / "surfaces.npz") as tmp:
            with open(tmp, "wb") as fh:
                np.savez(fh, **{_surface_key(sid, name): v for (sid, name), v in surfaces.items() if name in keep})
        mark_done(folder, {"seconds": round(time.perf_counter() - start, 1), "n_subjects": len(subjects),
                           "n_rows": len(msd),
                           "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)})
    read = dict(float_precision="round_trip", dtype={"subject": str, "test_set": str})
    msd = pd.read_csv(folder / "msd.csv", **read)
    floor = pd.read_csv(folder / "floor.csv", **read)
    with np.load(folder / "surfaces.npz", allow_pickle=False) as stored:
        surfaces = {tuple(k.split("|", 1)): stored[k] for k in stored.files}
    return msd, surfaces, floor


def _subsample(points: np.ndarray, max_points: int, seed: int = 0) -> np.ndarray:
    if len(points) <= max_points:
        return points
    return points[np.random.default_rng(seed).choice(len(points), max_points, replace=False)]


def fast_msd_matrix(candidates: list, originals: list, *, max_points: int = 1500) -> np.ndarray:
    """Symmetric face MSD of every candidate against every original.

    Each KD-tree is built once, and each surface is represented by at most
    ``max_points`` of its vertices (a seeded random subset), which keeps the
    n x n comparison of the matching attack to seconds. Empty surfaces give NaN.
    """
    from scipy.spatial import cKDTree

    cands = [_subsample(c, max_points) for c in candidates]
    origs = [_subsample(o, max_points) for o in originals]
    c_trees = [cKDTree(c) if len(c) else None for c in cands]
    o_trees = [cKDTree(o) if len(o) else None for o in origs]
    out = np.full((len(cands), len(origs)), np.nan)
    for i, (c, ct) in enumerate(zip(cands, c_trees)):
        for j, (o, ot) in enumerate(zip(origs, o_trees)):
            if ct is not None and ot is not None:
                out[i, j] = 0.5 * (ot.query(c)[0].mean() + ct.query(o)[0].mean())
    return out


def _rank_candidates(cands: list, reference: np.ndarray, originals: list, max_points: int) -> np.ndarray:
    """Identification ranks of aligned candidate faces among aligned originals."""
    aligned = [reid.align_rigid(_subsample(v, max_points), reference) if len(v) else v for v in cands]
    return reid.identification_ranks(fast_msd_matrix(aligned, originals, max_points=max_points))


def template_face(template: Template) -> np.ndarray:
    """Vertices of the template's own face surface: the common reference of the matching attack."""
    return reid.face_surface(template.data, template.affine, face_region(template))


def matching_attack(surfaces: dict, subjects: dict[str, str], methods, *, reference: np.ndarray,
                    candidates=ATTACK_CANDIDATES,
                    max_points: int = 1500, n_jobs: int | None = None) -> tuple[pd.DataFrame, dict]:
    """Rank every original test face for each candidate face; top-1/top-5 and CMC curves.

    Candidate ``i`` of a test set belongs to original ``i``. Each face surface is first
    rigidly aligned (ICP) to ``reference``, the template's face (:func:`template_face`),
    the same for every subject, so that pose does not decide the match and no test
    subject is privileged; then every candidate is compared with every original of the
    same test set by MSD (:func:`fast_msd_matrix`). Method x candidate pairs run in
    parallel worker processes (``n_jobs``, default :func:`refacelib._utils.parallel.default_jobs`;
    on this machine or a dask cluster, :func:`refacelib._utils.parallel.worker_pool`).
    """
    with worker_pool(n_jobs) as workers:
        return _matching_attack(surfaces, subjects, methods, reference=reference, candidates=candidates,
                                max_points=max_points, workers=workers)


def _matching_attack(surfaces: dict, subjects: dict[str, str], methods, *, reference: np.ndarray, candidates,
                     max_points: int, workers) -> tuple[pd.DataFrame, dict]:
    """:func:`matching_attack` with its ``workers`` (:func:`refacelib._utils.parallel.worker_pool`)."""
    from joblib import delayed

    rows, curves = [], {}
    for test_set in sorted(set(subjects.values())):
        ids = [s for s, t in subjects.items() if t == test_set]
        reference = _subsample(np.asarray(reference, float), max_points)
        originals = [reid.align_rigid(_subsample(v, max_points), reference) if len(v) else v
                     for v in (surfaces[(sid, "original")] for sid in ids)]
        pairs = [(method, cand) for method in methods for cand in candidates]
        tasks = [delayed(_rank_candidates)([surfaces[(sid, f"{m}:{c}")] for sid in ids], reference, originals,
                                           max_points) for m, c in pairs]
        all_ranks = workers(tasks)
        for (method, cand), ranks in zip(pairs, all_ranks):
            rows.append({"method": method, "test_set": test_set, "candidate": cand, "ranks": ranks})
            curves[(method, test_set, cand)] = reid.cmc(ranks, len(ids))
    return reid.reid_table(rows), curves
