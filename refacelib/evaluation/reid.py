"""Re-identification analysis: face surface distances, paired tests, matching.

The question of the paper (Gao et al. 2025): is a face put back by a
diffusion model ("refaced") closer to the subject's true face than a
population-average face? Closeness is the symmetric mean surface distance
(MSD, :func:`surface_msd`: exact point-to-triangle distances between the
sub-voxel iso-surfaces of :func:`face_mesh`) between face surfaces restricted
to one face-region mask per subject.

All per-subject numbers live in one tidy table (:data:`MSD_COLUMNS`): one
row per ``subject, test_set, method, candidate`` with ``msd_mm``, where
``method`` is the defacing method and ``candidate`` one of
:data:`CANDIDATES`. Statistics take that table and return tidy tables that
name their test; plotting lives in :mod:`refacelib.report.reid_plots`. The paired
tests (:func:`wilcoxon_tests`) have one row per ``method, test_set,
estimator, baseline`` with ``n, n_closer, W, p, p_holm, rbc,
median_diff_mm`` and the effect size ``hl_diff_mm, ci_low_mm, ci_high_mm``
(Hodges-Lehmann shift of estimator minus baseline MSD with its exact
signed-rank confidence interval, :func:`hodges_lehmann`; negative: the
estimator's face is closer to the original); :func:`summary_table` gives
median [IQR] MSD per ``method, test_set, candidate``.

Empty face surfaces (a defaced face may keep almost none inside the region)
are returned as ``(0, 3)`` arrays, and any MSD against an empty surface is
NaN; NaN pairs are dropped by the tests and count as worst rank in the
matching attack.
"""
from __future__ import annotations

from functools import lru_cache
from typing import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
from scipy.spatial import cKDTree

from refacelib._utils.arrays import bounding_box
from refacelib.imaging.surface import (Mesh, MeshIndex, default_threshold, as_mesh, compact_mesh, face_msd,
                                       head_mask, index_mesh, iso_surface, mesh_msd, point_mesh_distance,
                                       restrict_to_region)

__all__ = [
    "smoothed_threshold",
    "CANDIDATES", "MSD_COLUMNS", "REID_COLUMNS", "face_mesh", "face_surface", "surface_msd", "candidate_msd",
    "surface_offset", "msd_and_offset", "msd_table", "hodges_lehmann", "wilcoxon_tests", "summary_table", "gap_closed", "align_rigid", "msd_matrix",
    "identification_ranks", "cmc", "identification_rates", "reid_table",
    "vertex_distance_volume", "skin_band", "band_intensity_ratio",
]

CANDIDATES = ("refaced", "refaced_mean", "average", "template_average", "defaced")
MSD_COLUMNS = ["subject", "test_set", "method", "candidate", "msd_mm"]
REID_COLUMNS = ["method", "test_set", "candidate", "n", "top1", "top5"]
WILCOXON_TEST = "Wilcoxon signed-rank (paired, two-sided; Holm across methods)"


# --------------------------------------------------------------------------- surfaces
def smoothed_threshold(image: np.ndarray, mask_sigma: float) -> float:
    """Half-Otsu threshold of the whole smoothed image, as :func:`head_mask` picks it."""
    from scipy import ndimage as ndi

    vol = np.asarray(image, dtype=np.float64)
    if mask_sigma > 0:
        vol = ndi.gaussian_filter(vol, mask_sigma)
    positive = vol[vol > 0]
    if positive.size == 0:
        raise ValueError("face_mesh: the image has no positive voxels")
    return default_threshold(positive)


def _clamped_field(vol: np.ndarray, threshold: float) -> np.ndarray:
    """The smoothed image with its topology fixed by the binary head mask.

    The head mask (:func:`refacelib.imaging.surface.head_mask` at ``threshold``:
    largest component, holes filled) decides on which side of the surface
    every voxel lies; the continuous values decide where, between two
    voxels, the surface crosses. Voxels of the filled mask below
    ``threshold`` (cavities, airways closed by the slice filling) are raised
    above it, voxels outside the mask above it (detached noise, goggles,
    other components) are lowered below it; all other voxels keep their
    value. The ``threshold`` iso-surface is then exactly the boundary of the
    mask, placed sub-voxel by linear interpolation of the image itself
    wherever a mask voxel meets a background voxel along a grid edge (all
    of the outer skin except where slice filling closed an opening).
    """
    mask = head_mask(vol, threshold=threshold, smooth_sigma=0.0)
    above = vol > threshold
    delta = max(abs(float(threshold)), 1.0)
    field = vol.copy()
    field[mask & ~above] = threshold + delta
    field[~mask & above] = threshold - delta
    return field


def face_mesh(image: np.ndarray, affine: np.ndarray, region: np.ndarray, *,
              threshold: float | None = None, mask_sigma: float = 1.0,
              margin_vox: int = 3, step_size: int = 1) -> Mesh:
    """Sub-voxel skin surface (world mm triangle mesh) inside the face region.

    The image is smoothed with a Gaussian of ``mask_sigma`` voxels and its
    iso-surface at ``threshold`` is taken by marching cubes
    (:func:`refacelib.imaging.surface.iso_surface`), so the surface follows the
    continuous intensities and moves by fractions of a voxel. The binary
    head mask (largest component, holes filled, as
    :func:`refacelib.imaging.surface.head_mask`) only fixes the topology: it keeps
    the outer skin and removes internal surfaces around dark cavities and
    blobs in the air (see :func:`_clamped_field`). The work runs on the
    region's bounding box grown by ``margin_vox`` voxels (at least 1; the
    affine is shifted accordingly); the box's border is not closed, so the
    surface inside the region is that of the whole image except where the
    largest component or the hole filling depend on anatomy outside the
    box. The mesh is cut to ``region`` (triangles whose three vertices lie
    in region voxels, :func:`refacelib.imaging.surface.restrict_to_region`) and
    vertices no kept triangle uses are dropped.

    The default ``threshold`` is :func:`smoothed_threshold` (half Otsu of the
    smoothed image's positive voxels), as for the former binary surface.
    Where the surface lies in absolute terms depends on that level: on a
    partial-volume sphere of radius 30 mm (intensity 100 inside, 0 outside,
    2 mm voxels) the default smoothing (``mask_sigma=1``) and the half-way
    level 50 put it 0.15 mm inside the true sphere (the smoothing of a
    curved edge, about ``sigma**2 / R``), and the default threshold (24
    there) 1.4 mm outside it. Both offsets are the same for two nearby
    surfaces, so the DISTANCES between surfaces, which the study measures,
    are unbiased at either level: a sphere grown by 0.1, 0.2 or 0.4 mm
    measures 0.10, 0.21, 0.41 mm at level 50 and 0.10, 0.20, 0.40 mm at the
    default (see the known-answer tests).

    Parameters
    ----------
    image : ndarray, shape (X, Y, Z)
    affine : ndarray, shape (4, 4)
        Voxel-to-world (RAS mm) affine of ``image`` and ``region``.
    region : ndarray of bool, shape (X, Y, Z)
        Face-region mask (the same for every candidate of a subject).
    threshold : float, optional
        Iso-level of the smoothed image.
    mask_sigma : float
        Gaussian sigma (voxels) of the image before contouring (0 disables).
    margin_vox : int
        Crop margin (voxels) around the region's bounding box.
    step_size : int
        Marching-cubes step in voxels.

    Returns
    -------
    Mesh
        ``verts (N, 3)`` in world mm and ``faces (M, 3)``; ``(0, 3)`` arrays
        when no surface lies in the region (also for an empty region).

    Raises
    ------
    ValueError
        If the shape of ``region`` differs from ``image``'s, or the image has
        no positive voxel and no ``threshold`` is given.
    """
    from scipy import ndimage as ndi

    image = np.asarray(image, dtype=np.float64)
    region = np.asarray(region, dtype=bool)
    if region.shape != image.shape:
        raise ValueError(f"region {region.shape} and image {image.shape} differ in shape")
    if not region.any():
        return Mesh.empty()
    if threshold is None:
        threshold = smoothed_threshold(image, mask_sigma)
    box = bounding_box(region, max(int(margin_vox), 1))
    vol = ndi.gaussian_filter(image, mask_sigma)[box] if mask_sigma > 0 else image[box]
    shift = np.eye(4)
    shift[:3, 3] = [s.start for s in box]
    crop_affine = np.asarray(affine, dtype=np.float64) @ shift
    if not (vol > threshold).any():
        return Mesh.empty()
    mesh = iso_surface(_clamped_field(vol, threshold), crop_affine, threshold,
                       step_size=step_size)
    if len(mesh.faces) == 0:
        return Mesh.empty()
    verts, faces = restrict_to_region(mesh.verts, mesh.faces, region[box], crop_affine)
    return compact_mesh(verts, faces)


def face_surface(image: np.ndarray, affine: np.ndarray, region: np.ndarray, *,
                 smooth_sigma: float = 1.0, margin_vox: int = 3, mask_sigma: float = 1.0,
                 threshold: float | None = None) -> np.ndarray:
    """Vertices (world mm) of the sub-voxel face surface, :func:`face_mesh`'s ``verts``.

    For code that works on vertex clouds (rendering, the matching attack).
    ``smooth_sigma`` (the Gaussian of the former binary-mask surface) is
    accepted for compatibility and ignored: the surface is now the
    iso-surface of the image smoothed by ``mask_sigma``.

    Returns
    -------
    ndarray, shape (N, 3)
        ``(0, 3)`` when no surface lies in the region.
    """
    del smooth_sigma
    return face_mesh(image, affine, region, threshold=threshold, mask_sigma=mask_sigma,
                     margin_vox=margin_vox).verts


def surface_offset(candidate, original, original_image: np.ndarray, affine: np.ndarray, *,
                   threshold: float, mask_sigma: float = 1.0) -> float:
    """Mean signed distance (mm) of a candidate face surface from the original's: + outside, - inside.

    Each candidate vertex's exact distance to the original mesh
    (:func:`refacelib.imaging.surface.point_mesh_distance`) is negative where the
    vertex lies inside the original head (the original image, smoothed by
    ``mask_sigma`` voxels as :func:`face_mesh` smooths it, is above
    ``threshold`` there) and positive outside. The MSD says how far a
    candidate is; this says in which direction: a face that sits inside the
    true skin everywhere (thinner, or a darker intensity profile at the
    skin) has a negative offset. NaN when either surface is empty.

    Examples
    --------
    >>> import numpy as np
    >>> g = np.indices((30, 30, 30)).astype(float) - 14.5
    >>> ball = lambda r: np.clip(r - np.sqrt((g ** 2).sum(0)) + 0.5, 0, 1) * 100
    >>> region = np.ones((30, 30, 30), bool)
    >>> orig = face_mesh(ball(9), np.eye(4), region, threshold=50)
    >>> small = face_mesh(ball(8), np.eye(4), region, threshold=50)
    >>> round(surface_offset(small, orig, ball(9), np.eye(4), threshold=50), 1)
    -1.0
    """
    from scipy import ndimage

    verts = _vertices(candidate)
    if len(verts) == 0 or len(_vertices(original)) == 0:
        return float("nan")
    target = original if isinstance(original, MeshIndex) else as_mesh(original)
    vol = np.asarray(original_image, dtype=np.float64)
    if mask_sigma > 0:
        vol = ndimage.gaussian_filter(vol, mask_sigma)
    return _signed_mean(verts, point_mesh_distance(verts, target), vol, affine, threshold)


def _signed_mean(verts: np.ndarray, dist: np.ndarray, smoothed: np.ndarray, affine: np.ndarray,
                 threshold: float) -> float:
    """Mean of ``dist``, negative for the vertices inside the head (``smoothed`` above ``threshold``)."""
    from scipy import ndimage

    inv = np.linalg.inv(np.asarray(affine, dtype=np.float64))
    vox = inv[:3, :3] @ verts.T + inv[:3, 3:4]
    inside = ndimage.map_coordinates(smoothed, vox, order=1, mode="nearest") > threshold
    return float(np.mean(np.where(inside, -dist, dist)))


def msd_and_offset(candidate: Mesh, original: MeshIndex, smoothed: np.ndarray, affine: np.ndarray, *,
                   threshold: float) -> tuple[float, float]:
    """:func:`surface_msd` and :func:`surface_offset` of one candidate mesh, each distance computed once.

    ``original``: the original's mesh prepared by :func:`refacelib.imaging.surface.index_mesh`;
    ``smoothed``: the original image already smoothed as :func:`face_mesh` smooths it. The two
    values equal those of the two functions (``surface_offset(..., mask_sigma=0)`` on ``smoothed``)
    bit for bit: the candidate-to-original distances serve both. NaN for an empty surface.
    """
    verts = _vertices(candidate)
    if len(verts) == 0 or len(_vertices(original)) == 0:
        return float("nan"), float("nan")
    d_ab = point_mesh_distance(verts, original)
    d_ba = point_mesh_distance(_vertices(original), candidate)
    return float(0.5 * (d_ab.mean() + d_ba.mean())), _signed_mean(verts, d_ab, np.asarray(smoothed, np.float64),
                                                                   affine, threshold)


#: Depth (mm) of the skin band that :func:`skin_band` takes inside the original's skin.
SKIN_BAND_MM = 4.0


def skin_band(smoothed: np.ndarray, affine: np.ndarray, region: np.ndarray, *, threshold: float,
              depth_mm: float = SKIN_BAND_MM) -> np.ndarray:
    """The original's skin band in the face region: voxels of its head within ``depth_mm`` of the outside.

    ``smoothed``: the original image smoothed as :func:`face_mesh` smooths it; its head is where
    it exceeds ``threshold`` (the face surface's level), so the band is the tissue that decides
    where the face surface lies.

    Examples
    --------
    >>> img = np.zeros((20, 20, 20)); img[4:16, 4:16, 4:16] = 1.0
    >>> band = skin_band(img, np.eye(4), np.ones_like(img, bool), threshold=0.5, depth_mm=2)
    >>> int(band.sum()), bool(band[10, 10, 10]), bool(band[4, 10, 10])
    (1216, False, True)
    """
    from scipy import ndimage as ndi

    from refacelib.imaging.registration import voxel_sizes_mm

    head = np.asarray(smoothed) > threshold
    depth = ndi.distance_transform_edt(head, sampling=voxel_sizes_mm(affine))
    return head & (depth <= float(depth_mm)) & np.asarray(region, bool)


def band_intensity_ratio(candidate: np.ndarray, original: np.ndarray, band: np.ndarray) -> float:
    """Mean intensity of ``candidate`` over that of ``original`` in ``band`` (:func:`skin_band`); NaN if empty.

    Below 1, the candidate's skin is darker than the true skin, so its face surface at the
    original's level lies inside the true one whatever its shape.

    Examples
    --------
    >>> band = np.ones((2, 2, 2), bool)
    >>> band_intensity_ratio(np.full((2, 2, 2), 3.0), np.full((2, 2, 2), 4.0), band)
    0.75
    """
    band = np.asarray(band, bool)
    if not band.any():
        return float("nan")
    true = float(np.asarray(original, np.float64)[band].mean())
    return float(np.asarray(candidate, np.float64)[band].mean() / true) if true > 0 else float("nan")


def _is_mesh(x) -> bool:
    """Whether ``x`` is a mesh (Mesh, MeshIndex or a ``(verts, faces)`` tuple)."""
    return isinstance(x, MeshIndex) or (isinstance(x, tuple) and len(x) == 2)


def _vertices(x) -> np.ndarray:
    """The vertices of a mesh, or ``x`` itself when it is a vertex array."""
    if isinstance(x, MeshIndex):
        return x.mesh.verts
    return as_mesh(x).verts if _is_mesh(x) else np.asarray(x, dtype=np.float64).reshape(-1, 3)


def surface_msd(candidate, original) -> float:
    """Symmetric face MSD (mm), NaN when either surface is empty.

    With two meshes (:class:`refacelib.imaging.surface.Mesh` from :func:`face_mesh`,
    or a prepared :class:`refacelib.imaging.surface.MeshIndex`): the mean over each
    mesh's vertices of the exact point-to-TRIANGLE distance to the other
    mesh's surface, the two directions averaged
    (:func:`refacelib.imaging.surface.mesh_msd`). The point-triangle geometry is
    ``trimesh``'s (:func:`trimesh.triangles.closest_point`, a maintained
    implementation, pure Python and numpy, so no ``rtree`` is needed); the
    candidate triangles come from a SciPy KD-tree over triangle centroids
    with a bound that keeps the result exact
    (:func:`refacelib.imaging.surface.point_mesh_distance`). This resolves
    sub-voxel shifts (a sphere grown by 0.1 mm measures 0.10 mm). On a
    pydeface-template face at 2 mm (about 7000 vertices) a pair takes about
    0.1 s of CPU.

    When either argument is a bare ``(N, 3)`` vertex array (the former
    interface, e.g. :func:`face_surface` output) both are compared as vertex
    clouds by the former nearest-VERTEX metric
    (:func:`refacelib.imaging.surface.face_msd`), which cannot resolve shifts much
    below the vertex spacing; old callers keep working.

    Examples
    --------
    >>> surface_msd(np.zeros((1, 3)), np.zeros((0, 3)))
    nan
    """
    a, b = _vertices(candidate), _vertices(original)
    if len(a) == 0 or len(b) == 0:
        return float("nan")
    if _is_mesh(candidate) and _is_mesh(original):
        return mesh_msd(candidate, original)
    return face_msd(a, b)


def candidate_msd(original: np.ndarray, candidates: Mapping[str, np.ndarray],
                  affine: np.ndarray, region: np.ndarray, **surface_kw) -> dict[str, float]:
    """Symmetric sub-voxel face MSD (mm) of each candidate image against the original.

    The original's face mesh (and its distance index) is computed once;
    every mesh is cut to the same ``region`` (see :func:`face_mesh`, which
    receives ``surface_kw``) and compared by the point-to-triangle
    :func:`surface_msd`. An empty surface gives NaN.

    Returns
    -------
    dict
        ``{candidate name: msd_mm}`` in the order of ``candidates``.
    """
    surface_kw.pop("smooth_sigma", None)  # former binary-surface option, ignored
    ref = face_mesh(original, affine, region, **surface_kw)
    if len(ref.verts):
        ref = index_mesh(ref)
    return {name: surface_msd(face_mesh(img, affine, region, **surface_kw), ref)
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
@lru_cache(maxsize=64)
def _signed_rank_cdf(n: int) -> np.ndarray:
    """Exact null CDF ``P(T+ <= t)``, ``t = 0..n(n+1)/2``, of the signed-rank statistic.

    Counts of the subsets of ranks ``1..n`` with each sum, by dynamic
    programming (add rank ``r``: ``c'[t] = c[t] + c[t - r]``), over ``2**n``.
    Exact in float64 for ``n <= 50`` (all counts below ``2**53``).

    Examples
    --------
    >>> _signed_rank_cdf(3).tolist()  # sums 0,1,2,3,3,4,5,6 of the 8 sign patterns
    [0.125, 0.25, 0.375, 0.625, 0.75, 0.875, 1.0]
    """
    counts = np.zeros(n * (n + 1) // 2 + 1, dtype=np.int64)
    counts[0] = 1
    for r in range(1, n + 1):
        counts[r:] = counts[r:] + counts[:-r]  # right side is evaluated before assignment
    cdf = np.cumsum(counts).astype(np.float64) / float(2 ** n)
    cdf.setflags(write=False)
    return cdf


def _hl_rank(n: int, level: float) -> int:
    """Order ``k`` of the Walsh average giving the lower CI bound (0: level not achievable).

    The interval ``[W_(k), W_(N-k+1)]`` misses the true shift with probability
    ``2 P(T+ <= k-1)``; ``k`` is the largest with that ``<= 1 - level`` (exact
    null distribution for ``n <= 50``, normal approximation with continuity
    correction above).
    """
    half_alpha = (1.0 - level) / 2.0
    if n <= 50:
        # number of t with P(T+ <= t) <= alpha/2 (tiny slack for the rounding of 1 - level)
        return int(np.searchsorted(_signed_rank_cdf(n), half_alpha * (1 + 1e-9), side="right"))
    from scipy.stats import norm

    mean = n * (n + 1) / 4.0
    sd = np.sqrt(n * (n + 1) * (2 * n + 1) / 24.0)
    return max(int(np.floor(mean + 0.5 + norm.ppf(half_alpha) * sd)), 0)


def hodges_lehmann(diff, *, level: float = 0.95) -> tuple[float, float, float]:
    """Hodges-Lehmann estimate of a paired shift with its signed-rank confidence interval.

    The estimate is the median of the ``N = n(n+1)/2`` Walsh averages
    ``(d_i + d_j) / 2, i <= j`` of the differences ``d``; the interval is
    ``[W_(k), W_(N-k+1)]`` of the sorted Walsh averages, the set of shifts
    not rejected by the two-sided Wilcoxon signed-rank test. ``k`` comes from
    the exact null distribution of the signed-rank statistic for ``n <= 50``
    (achieved level ``>= level``; distribution-free for continuous symmetric
    differences) and from its normal approximation above. Non-finite
    differences (NaN) are dropped; fewer than 2 left give NaNs. When
    ``level`` is not achievable with so few pairs (``2 / 2**n > 1 - level``,
    e.g. ``n < 6`` at 95 %) the interval is ``(-inf, inf)``.

    Parameters
    ----------
    diff : array_like
        Paired differences ``x - y`` (e.g. estimator minus baseline MSD).
    level : float
        Confidence level, in (0, 1).

    Returns
    -------
    tuple of float
        ``(estimate, ci_low, ci_high)``.

    Examples
    --------
    >>> hodges_lehmann(np.arange(1.0, 11.0))  # n = 10: CI = [W_(9), W_(47)] of 55
    (5.5, 3.0, 8.0)
    >>> hodges_lehmann([0.5, np.nan])
    (nan, nan, nan)
    """
    if not 0.0 < level < 1.0:
        raise ValueError(f"hodges_lehmann: level must be in (0, 1), got {level}")
    d = np.asarray(diff, dtype=np.float64).ravel()
    d = d[np.isfinite(d)]
    n = d.size
    if n < 2:
        return (np.nan, np.nan, np.nan)
    i, j = np.triu_indices(n)
    walsh = np.sort((d[i] + d[j]) / 2.0)
    estimate = float(np.median(walsh))
    k = _hl_rank(n, level)
    if k < 1:
        return (estimate, -np.inf, np.inf)
    return (estimate, float(walsh[k - 1]), float(walsh[walsh.size - k]))


def _paired_wilcoxon(x: np.ndarray, y: np.ndarray, *, level: float = 0.95) -> dict:
    """n, n_closer, W, p, rbc, median and Hodges-Lehmann difference of paired x vs y.

    NaN pairs are dropped; ``n_closer`` counts the pairs with ``x < y``;
    ``hl_diff_mm, ci_low_mm, ci_high_mm`` are :func:`hodges_lehmann` of
    ``x - y`` (all differences zero: shift 0, interval [0, 0], no test).
    """
    import pingouin as pg

    ok = np.isfinite(x) & np.isfinite(y)
    x, y = x[ok], y[ok]
    out = dict(n=int(ok.sum()), n_closer=int((x < y).sum()), W=np.nan, p=np.nan, rbc=np.nan,
               median_diff_mm=np.nan, hl_diff_mm=np.nan, ci_low_mm=np.nan, ci_high_mm=np.nan)
    if out["n"] < 2:
        return out
    out["median_diff_mm"] = float(np.median(x - y))
    out["hl_diff_mm"], out["ci_low_mm"], out["ci_high_mm"] = hodges_lehmann(x - y, level=level)
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


def wilcoxon_tests(msd: pd.DataFrame, *, baseline: str | Sequence[str] = "average",
                   estimators: Sequence[str] = ("refaced", "refaced_mean"),
                   level: float = 0.95) -> pd.DataFrame:
    """Paired Wilcoxon signed-rank tests of estimator vs baseline MSD, with effect sizes.

    One test per ``baseline x method x test_set x estimator`` on the subjects
    having both MSDs (pingouin.wilcoxon, two-sided; exact p for small n).
    ``baseline`` is one candidate or a list of them (one block of rows per
    baseline, e.g. ``("average", "template_average")``). Signs: ``rbc``
    (pingouin's rank-biserial correlation of estimator minus baseline),
    ``median_diff_mm`` and ``hl_diff_mm`` are negative when the estimator's
    face is closer to the original than the baseline's. ``hl_diff_mm`` is
    the Hodges-Lehmann shift of estimator minus baseline MSD and
    ``ci_low_mm, ci_high_mm`` its ``level`` signed-rank confidence interval
    (:func:`hodges_lehmann`; ``(-inf, inf)`` when too few pairs for the
    level). ``n_closer`` counts the subjects whose estimator MSD is smaller
    than the baseline's. ``p_holm`` is Holm's correction across methods
    within each ``test_set, estimator, baseline``. Fewer than 2 pairs give
    NaN statistics; all differences zero give NaN ``W, p, rbc`` (shift 0).

    Returns
    -------
    DataFrame
        Columns ``method, test_set, estimator, baseline, n, n_closer, W, p,
        p_holm, rbc, median_diff_mm, hl_diff_mm, ci_low_mm, ci_high_mm, test``.
    """
    baselines = (baseline,) if isinstance(baseline, str) else tuple(baseline)
    if not baselines:
        raise ValueError("wilcoxon_tests: no baseline given")
    wide = msd.pivot(index=["method", "test_set", "subject"], columns="candidate",
                     values="msd_mm")
    missing = [b for b in baselines if b not in wide.columns]
    if missing:
        raise ValueError(f"wilcoxon_tests: no rows with candidate {', '.join(map(repr, missing))}")
    rows = []
    for base in baselines:
        for (method, test_set), sub in wide.groupby(level=["method", "test_set"], sort=True):
            for est in estimators:
                if est not in sub.columns:
                    continue
                res = _paired_wilcoxon(sub[est].to_numpy(float), sub[base].to_numpy(float),
                                       level=level)
                rows.append(dict(method=method, test_set=test_set, estimator=est,
                                 baseline=base, **res))
    cols = ["method", "test_set", "estimator", "baseline", "n", "n_closer", "W", "p", "p_holm",
            "rbc", "median_diff_mm", "hl_diff_mm", "ci_low_mm", "ci_high_mm", "test"]
    out = pd.DataFrame(rows, columns=[c for c in cols if c not in ("p_holm", "test")])
    out["n"] = out["n"].astype(int)
    out["n_closer"] = out["n_closer"].astype(int)
    out["p_holm"] = out.groupby(["test_set", "estimator", "baseline"])["p"].transform(_holm)
    out["test"] = f"{WILCOXON_TEST}; Hodges-Lehmann shift with {level:.3g} signed-rank CI"
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


def gap_closed(msd: pd.DataFrame, *, candidates=("refaced_mean", "refaced"), baseline: str = "average",
               bound: str = "oracle") -> pd.DataFrame:
    """How much of the attainable gain over the baseline each candidate reaches.

    Per test set, method and candidate, over the subjects that have all three:
    the median paired gain ``baseline - candidate`` (mm; positive when the
    candidate is closer), the median paired gap ``baseline - bound`` (what the
    oracle face, the best any model could do, gains) and their ratio
    ``fraction`` (1: the candidate gains as much as the oracle; 0: nothing;
    negative: it is farther than the baseline). ``fraction_per_subject``: the
    median over subjects of each subject's own share of its gap
    ``(baseline - candidate) / (baseline - bound)``, over the ``n_gap`` subjects
    whose oracle is closer than their baseline (a subject with no gap has no
    share to close). The two agree when subjects are alike; they part when the
    gains and gaps vary from subject to subject. Empty without ``bound`` rows
    (real data have no oracle).

    Examples
    --------
    >>> msd = pd.DataFrame({"subject": ["a"] * 3 + ["b"] * 3, "test_set": "t", "method": "m",
    ...                     "candidate": ["average", "refaced_mean", "oracle"] * 2,
    ...                     "msd_mm": [2.0, 1.5, 1.0, 3.0, 2.5, 1.0]})
    >>> t = gap_closed(msd, candidates=("refaced_mean",))
    >>> t[["gain_mm", "gap_mm", "fraction", "n_gap", "fraction_per_subject"]].values.tolist()
    [[0.5, 1.5, 0.3333333333333333, 2.0, 0.375]]
    """
    cols = ["test_set", "method", "candidate", "n", "gain_mm", "gap_mm", "fraction", "n_gap", "fraction_per_subject"]
    if bound not in set(msd["candidate"]):
        return pd.DataFrame(columns=cols)
    wide = msd.pivot_table(index=["test_set", "method", "subject"], columns="candidate", values="msd_mm")
    rows = []
    for (test_set, method), w in wide.groupby(level=["test_set", "method"]):
        for cand in candidates:
            if cand not in w:
                continue
            both = w[[baseline, cand, bound]].dropna()
            gains, gaps = both[baseline] - both[cand], both[baseline] - both[bound]
            gain, gap = float(gains.median()), float(gaps.median())
            shares = (gains / gaps)[gaps > 0]
            rows.append({"test_set": test_set, "method": method, "candidate": cand, "n": len(both),
                         "gain_mm": gain, "gap_mm": gap, "fraction": gain / gap if gap > 0 else float("nan"),
                         "n_gap": len(shares),
                         "fraction_per_subject": float(shares.median()) if len(shares) else float("nan")})
    return pd.DataFrame(rows, columns=cols)


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

    Each vertex of the candidate's face mesh (:func:`face_mesh`) carries its
    exact point-to-triangle distance (mm) to the original's face mesh
    (:func:`refacelib.imaging.surface.point_mesh_distance`); it is painted
    into its nearest voxel (mean where several share one). Voxels within
    ``fill_vox`` voxels of a painted one take the nearest painted value, so
    that the ray hits of :func:`refacelib.imaging.render.render_views` (``values=``)
    rarely miss; everything else is NaN (all NaN when a surface is empty).

    Returns
    -------
    ndarray of float, same shape as the images
    """
    from scipy import ndimage as ndi

    shape = np.shape(candidate_image)
    out = np.full(shape, np.nan)
    surface_kw.pop("smooth_sigma", None)  # former binary-surface option, ignored
    cand_mesh = face_mesh(candidate_image, affine, region, **surface_kw)
    orig = face_mesh(original_image, affine, region, **surface_kw)
    if len(cand_mesh.verts) == 0 or len(orig.verts) == 0:
        return out
    cand = cand_mesh.verts
    dist = point_mesh_distance(cand, orig)  # exact point-to-triangle (trimesh geometry)
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
