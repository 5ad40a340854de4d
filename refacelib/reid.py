"""Re-identification analysis: face surface distances, paired tests, matching.

The question of the paper (Gao et al. 2025): is a face put back by a
diffusion model ("refaced") closer to the subject's true face than a
population-average face? Closeness is the symmetric mean surface distance
(MSD, :func:`refacelib.surface.face_msd`) between face surfaces restricted
to one face-region mask per subject.

All per-subject numbers live in one tidy table (:data:`MSD_COLUMNS`): one
row per ``subject, test_set, method, candidate`` with ``msd_mm``, where
``method`` is the defacing method and ``candidate`` one of
:data:`CANDIDATES`. Statistics take that table and return tidy tables that
name their test; plotting lives in :mod:`refacelib.reid_plots`.

Empty face surfaces (a defaced face may keep almost none inside the region)
are returned as ``(0, 3)`` arrays, and any MSD against an empty surface is
NaN; NaN pairs are dropped by the tests and count as worst rank in the
matching attack.
"""
from __future__ import annotations

from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from refacelib.surface import (extract_surface, face_msd, head_mask, restrict_to_region,
                               vertex_distance_map)

__all__ = [
    "smoothed_threshold",
    "CANDIDATES", "MSD_COLUMNS", "REID_COLUMNS", "face_surface", "surface_msd", "candidate_msd",
    "msd_table", "wilcoxon_tests", "summary_table", "align_rigid", "msd_matrix",
    "identification_ranks", "cmc", "identification_rates", "reid_table",
    "vertex_distance_volume",
]

CANDIDATES = ("refaced", "refaced_mean", "average", "template_average", "defaced")
MSD_COLUMNS = ["subject", "test_set", "method", "candidate", "msd_mm"]
REID_COLUMNS = ["method", "test_set", "candidate", "n", "top1", "top5"]
WILCOXON_TEST = "Wilcoxon signed-rank (paired, two-sided; Holm across methods)"


# --------------------------------------------------------------------------- surfaces
def smoothed_threshold(image: np.ndarray, mask_sigma: float) -> float:
    """Half-Otsu threshold of the whole smoothed image, as :func:`head_mask` picks it."""
    from scipy import ndimage as ndi

    from refacelib.surface import _default_threshold

    vol = np.asarray(image, dtype=np.float64)
    if mask_sigma > 0:
        vol = ndi.gaussian_filter(vol, mask_sigma)
    positive = vol[vol > 0]
    if positive.size == 0:
        raise ValueError("face_surface: the image has no positive voxels")
    return _default_threshold(positive)


def _region_crop(region: np.ndarray, margin_vox: int) -> tuple[slice, ...]:
    """Slices of the bounding box of ``region`` grown by ``margin_vox`` (clipped)."""
    idx = np.nonzero(region)
    if len(idx[0]) == 0:
        raise ValueError("face_surface: the face region is empty")
    return tuple(slice(max(int(i.min()) - margin_vox, 0), min(int(i.max()) + margin_vox + 1, n))
                 for i, n in zip(idx, region.shape))


def face_surface(image: np.ndarray, affine: np.ndarray, region: np.ndarray, *,
                 smooth_sigma: float = 1.0, margin_vox: int = 3, mask_sigma: float = 1.0,
                 threshold: float | None = None) -> np.ndarray:
    """Vertices (world mm) of the head surface inside the face region.

    The threshold is that of :func:`refacelib.surface.head_mask` on the whole
    image (half Otsu of the smoothed positive voxels) unless ``threshold``
    is given. The head mask (largest component, hole filling) and marching
    cubes then run on the region's bounding box grown by a margin only
    (for speed; the affine is shifted accordingly), and the mesh is cut to
    ``region`` (:func:`refacelib.surface.restrict_to_region`). The margin
    is ``margin_vox`` raised to at least the mesh-smoothing kernel radius
    plus 2 voxels, so that the artificial walls at the crop border neither
    enter the region nor bend the surface inside it: the vertices equal
    those of the uncropped volume, except where the largest component or
    the hole filling would depend on anatomy outside the box. With a fixed
    ``threshold`` the result depends on the voxels within the box only.

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS mm) affine of ``image`` and ``region``.
    region : ndarray of bool, shape (X, Y, Z)
        Face-region mask (the same for every candidate of a subject).
    smooth_sigma : float
        Gaussian sigma (voxels) of the mask before marching cubes.
    margin_vox : int
        Least crop margin (voxels) around the region's bounding box.
    mask_sigma : float
        Gaussian sigma (voxels) of the image before thresholding.
    threshold : float, optional
        Fixed intensity threshold of the smoothed image.

    Returns
    -------
    ndarray, shape (N, 3)
        ``(0, 3)`` when no surface lies in the region.
    """
    from scipy import ndimage as ndi

    image = np.asarray(image, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if region.shape != image.shape:
        raise ValueError(f"region {region.shape} and image {image.shape} differ in shape")
    if threshold is None:
        threshold = smoothed_threshold(image, mask_sigma)
    margin = max(int(margin_vox), int(4.0 * smooth_sigma + 0.5) + 2)
    box = _region_crop(region, margin)
    vol = ndi.gaussian_filter(image, mask_sigma)[box] if mask_sigma > 0 else image[box]
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    crop_affine = np.asarray(affine, dtype=np.float64) @ shift
    mask = head_mask(vol, threshold=threshold, smooth_sigma=0.0)
    if not mask.any():
        return np.zeros((0, 3))
    verts, faces = extract_surface(mask, crop_affine, smooth_sigma=smooth_sigma)
    verts, _ = restrict_to_region(verts, faces, region[box], crop_affine)
    return verts.reshape(-1, 3)


def surface_msd(candidate_verts: np.ndarray, original_verts: np.ndarray) -> float:
    """Symmetric face MSD (mm), NaN when either surface is empty.

    Examples
    --------
    >>> surface_msd(np.zeros((1, 3)), np.zeros((0, 3)))
    nan
    """
    if len(candidate_verts) == 0 or len(original_verts) == 0:
        return float("nan")
    return face_msd(candidate_verts, original_verts)


def candidate_msd(original: np.ndarray, candidates: Mapping[str, np.ndarray],
                  affine: np.ndarray, region: np.ndarray, **surface_kw) -> dict[str, float]:
    """Symmetric face MSD (mm) of each candidate image against the original.

    The original's face surface is computed once; every surface is cut to
    the same ``region`` (see :func:`face_surface`, which receives
    ``surface_kw``). An empty surface gives NaN.

    Returns
    -------
    dict
        ``{candidate name: msd_mm}`` in the order of ``candidates``.
    """
    ref = face_surface(original, affine, region, **surface_kw)
    return {name: surface_msd(face_surface(img, affine, region, **surface_kw), ref)
            for name, img in candidates.items()}


def msd_table(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Tidy MSD table (:data:`MSD_COLUMNS` first) from row dicts.

    Examples
    --------
    >>> msd_table([dict(subject="s1", test_set="t", method="m", candidate="average",
    ...                 msd_mm=2.0)]).shape
    (1, 5)
    """
    df = pd.DataFrame(list(rows))
    missing = [c for c in MSD_COLUMNS if c not in df.columns]
    if missing:
        raise ValueError(f"msd_table: missing columns {missing}")
    df["msd_mm"] = df["msd_mm"].astype(float)
    return df[MSD_COLUMNS + [c for c in df.columns if c not in MSD_COLUMNS]]


# --------------------------------------------------------------------------- statistics
def _paired_wilcoxon(x: np.ndarray, y: np.ndarray) -> dict:
    """W, p, rbc, median difference of paired x vs y (NaN pairs dropped)."""
    import pingouin as pg

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = dict(n=int(ok.sum()), W=np.nan, p=np.nan, rbc=np.nan, median_diff_mm=np.nan)
    if out["n"] < 2:
        return out
    out["median_diff_mm"] = float(np.median(x - y))
    if np.all(x == y):
        return out
    res = pg.wilcoxon(x, y, alternative="two-sided")
    out.update(W=float(res["W_val"].iloc[0]), p=float(res["p_val"].iloc[0]),
               rbc=float(res["RBC"].iloc[0]))
    return out


def _holm(p: pd.Series) -> pd.Series:
    """Holm-adjusted p values; NaN stays NaN and is not counted."""
    import pingouin as pg

    out = pd.Series(np.nan, index=p.index)
    ok = p.notna()
    if ok.any():
        out[ok] = np.minimum(pg.multicomp(p[ok].to_numpy(), method="holm")[1], 1.0)
    return out


def wilcoxon_tests(msd: pd.DataFrame, *, baseline: str = "average",
                   estimators: Sequence[str] = ("refaced", "refaced_mean")) -> pd.DataFrame:
    """Paired Wilcoxon signed-rank tests of estimator vs baseline MSD.

    One test per ``method x test_set x estimator`` on the subjects having
    both MSDs (pingouin.wilcoxon, two-sided; exact p for small n). Signs:
    ``rbc`` (pingouin's rank-biserial correlation of estimator minus
    baseline) and ``median_diff_mm`` are negative when the estimator's face
    is closer to the original than the baseline's. ``p_holm`` is Holm's
    correction across methods within each ``test_set, estimator,
    baseline``. Fewer than 2 pairs (or all differences zero) give NaN.
    For the template-average baseline call again with
    ``baseline="template_average"`` and concatenate.

    Returns
    -------
    DataFrame
        Columns ``method, test_set, estimator, baseline, n, W, p, p_holm,
        rbc, median_diff_mm, test``.
    """
    wide = msd.pivot(index=["method", "test_set", "subject"], columns="candidate",
                     values="msd_mm")
    if baseline not in wide.columns:
        raise ValueError(f"wilcoxon_tests: no rows with candidate {baseline!r}")
    rows = []
    for (method, test_set), sub in wide.groupby(level=["method", "test_set"], sort=True):
        for est in estimators:
            if est not in sub.columns:
                continue
            res = _paired_wilcoxon(sub[est].to_numpy(float), sub[baseline].to_numpy(float))
            rows.append(dict(method=method, test_set=test_set, estimator=est,
                             baseline=baseline, **res))
    cols = ["method", "test_set", "estimator", "baseline", "n", "W", "p", "p_holm", "rbc",
            "median_diff_mm", "test"]
    out = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "test")])
    out["p_holm"] = out.groupby(["test_set", "estimator", "baseline"])["p"].transform(_holm)
    out["test"] = WILCOXON_TEST
    return out[cols]


def summary_table(msd: pd.DataFrame, *, decimals: int = 2) -> pd.DataFrame:
    """Median and quartiles of MSD per ``method x test_set x candidate``.

    Returns
    -------
    DataFrame
        Columns ``method, test_set, candidate, n, median_mm, q1_mm, q3_mm,
        iqr_mm, summary`` (``summary`` = ``"median [q1, q3]"``); NaN MSDs are
        left out and ``n`` counts the finite ones.
    """
    g = msd.dropna(subset=["msd_mm"]).groupby(["method", "test_set", "candidate"])["msd_mm"]
    out = pd.DataFrame({"n": g.size(), "median_mm": g.median(), "q1_mm": g.quantile(0.25),
                        "q3_mm": g.quantile(0.75)}).reset_index()
    out["iqr_mm"] = out["q3_mm"] - out["q1_mm"]
    f = f"{{:.{decimals}f}}"
    out["summary"] = [f"{f.format(m)} [{f.format(a)}, {f.format(b)}]"
                      for m, a, b in zip(out["median_mm"], out["q1_mm"], out["q3_mm"])]
    return out


# --------------------------------------------------------------------------- matching attack
def _kabsch(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Rotation R and translation t minimising ||src @ R.T + t - dst||."""
    cs, cd = src.mean(axis=0), dst.mean(axis=0)
    u, _, vt = np.linalg.svd((src - cs).T @ (dst - cd))
    d = np.sign(np.linalg.det(vt.T @ u.T))
    rot = vt.T @ np.diag([1.0, 1.0, d]) @ u.T
    return rot, cd - cs @ rot.T


def align_rigid(src: np.ndarray, dst: np.ndarray, *, iterations: int = 20,
                tol_mm: float = 1e-4) -> np.ndarray:
    """Rigidly align point set ``src`` to ``dst`` by a small ICP.

    Each iteration pairs every source point with its nearest destination
    point and applies the Kabsch rotation/translation; it stops after
    ``iterations`` or when the mean distance improves by less than
    ``tol_mm``. A local method: the sets must start roughly aligned.

    Returns
    -------
    ndarray, shape (N, 3)
        The moved ``src`` (empty inputs are returned unchanged).
    """
    src = np.asarray(src, dtype=np.float64).reshape(-1, 3)
    dst = np.asarray(dst, dtype=np.float64).reshape(-1, 3)
    if len(src) < 3 or len(dst) < 3:
        return src.copy()
    tree, moved, last = cKDTree(dst), src.copy(), np.inf
    for _ in range(iterations):
        dist, idx = tree.query(moved)
        if last - dist.mean() < tol_mm:
            break
        last = dist.mean()
        rot, t = _kabsch(moved, dst[idx])
        moved = moved @ rot.T + t
    return moved


def msd_matrix(candidate_surfaces: Sequence[np.ndarray], original_surfaces: Sequence[np.ndarray],
               *, align: bool = False, iterations: int = 20) -> np.ndarray:
    """Symmetric face MSD of every candidate against every original.

    The surfaces must already be in one common space (e.g. all resampled to
    the template grid after affine registration): that alignment is the
    caller's. ``align=True`` additionally refines each pair with
    :func:`align_rigid` (ICP) before measuring. Empty surfaces give NaN.

    Returns
    -------
    ndarray, shape (n_candidates, n_originals)
    """
    out = np.full((len(candidate_surfaces), len(original_surfaces)), np.nan)
    for i, c in enumerate(candidate_surfaces):
        for j, o in enumerate(original_surfaces):
            moved = align_rigid(c, o, iterations=iterations) if align else c
            out[i, j] = surface_msd(moved, o)
    return out


def identification_ranks(matrix: np.ndarray) -> np.ndarray:
    """Rank (1 = best) of the true original for each candidate.

    Candidate ``i`` belongs to original ``i``; a smaller MSD is a better
    match. Ties count against the attacker (an original as close as the
    true one ranks before it) and NaN counts as infinitely far, so a NaN
    true distance ranks last.

    Examples
    --------
    >>> identification_ranks(np.array([[1.0, 2.0], [0.5, 0.5]])).tolist()
    [1, 2]
    """
    m = np.asarray(matrix, dtype=np.float64)
    if m.ndim != 2 or m.shape[0] > m.shape[1]:
        raise ValueError(f"need an (n_c, n_o) matrix with n_c <= n_o, got {m.shape}")
    m = np.where(np.isnan(m), np.inf, m)
    true = np.diag(m)[:, None]
    worse_or_tied = m <= true
    return worse_or_tied.sum(axis=1).astype(np.int64)


def cmc(ranks: np.ndarray, n: int) -> np.ndarray:
    """Cumulative match characteristic: fraction of ranks <= k for k = 1..n.

    Examples
    --------
    >>> cmc(np.array([1, 2, 2, 4]), 4).tolist()
    [0.25, 0.75, 0.75, 1.0]
    """
    ranks = np.asarray(ranks)
    if ranks.size == 0:
        return np.full(n, np.nan)
    return (ranks[None, :] <= np.arange(1, n + 1)[:, None]).mean(axis=1)


def identification_rates(ranks: np.ndarray, *, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Top-k identification rates ``{"top1": ..., "top5": ...}``.

    Examples
    --------
    >>> identification_rates(np.array([1, 3, 6, 1]))
    {'top1': 0.5, 'top5': 0.75}
    """
    ranks = np.asarray(ranks)
    return {f"top{k}": float(np.mean(ranks <= k)) if ranks.size else float("nan") for k in ks}


def reid_table(rows: Iterable[Mapping]) -> pd.DataFrame:
    """Matching-attack table from rows with ``method, test_set, candidate, ranks``.

    Returns
    -------
    DataFrame
        Columns ``method, test_set, candidate, n, top1, top5`` (the gallery
        size ``n`` is the number of ranked candidates).
    """
    out = []
    for row in rows:
        ranks = np.asarray(row["ranks"])
        out.append(dict(method=row["method"], test_set=row["test_set"],
                        candidate=row["candidate"], n=int(ranks.size),
                        **identification_rates(ranks, ks=(1, 5))))
    return pd.DataFrame(out, columns=REID_COLUMNS)


# --------------------------------------------------------------------------- distance maps
def vertex_distance_volume(candidate_image: np.ndarray, original_image: np.ndarray,
                           affine: np.ndarray, region: np.ndarray, *, fill_vox: int = 1,
                           **surface_kw) -> np.ndarray:
    """Voxel map of candidate-to-original face distances for rendering.

    Each vertex of the candidate's face surface (:func:`face_surface`)
    carries its distance (mm) to the original's face surface; it is painted
    into its nearest voxel (mean where several share one). Voxels within
    ``fill_vox`` voxels of a painted one take the nearest painted value, so
    that the ray hits of :func:`refacelib.render.render_views` (``values=``)
    rarely miss; everything else is NaN (all NaN when a surface is empty).

    Returns
    -------
    ndarray of float, same shape as the images
    """
    from scipy import ndimage as ndi

    shape = np.shape(candidate_image)
    out = np.full(shape, np.nan)
    cand = face_surface(candidate_image, affine, region, **surface_kw)
    orig = face_surface(original_image, affine, region, **surface_kw)
    if len(cand) == 0 or len(orig) == 0:
        return out
    dist = vertex_distance_map(cand, orig)
    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    ijk = np.clip(np.rint(cand @ inv[:3, :3].T + inv[:3, 3]).astype(np.int64), 0,
                  np.array(shape) - 1)
    flat = np.ravel_multi_index(tuple(ijk.T), shape)
    total = np.bincount(flat, weights=dist, minlength=out.size)
    count = np.bincount(flat, minlength=out.size)
    painted = count > 0
    out.ravel()[painted] = total[painted] / count[painted]
    if fill_vox > 0:
        empty = np.isnan(out)
        gap, idx = ndi.distance_transform_edt(empty, return_indices=True)
        near = empty & (gap <= fill_vox)
        out[near] = out[tuple(i[near] for i in idx)]
    return out
