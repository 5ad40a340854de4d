"""Head surfaces and the face surface-distance metric.

A head is reduced to a binary mask (:func:`head_mask`), the mask to a
triangle mesh in world millimetres (:func:`extract_surface`), and two meshes
are compared by the symmetric mean surface distance (MSD). All geometry is
carried in world (scanner, RAS+) millimetres through an explicit 4x4 affine;
nothing is cached between calls.

Two MSDs live here:

* the sub-voxel face metric of the study, :func:`mesh_msd` on two
  :class:`Mesh` objects: the mean over one mesh's vertices of the exact
  point-to-triangle distance to the other mesh's surface
  (:func:`point_mesh_distance`), both ways, averaged. The meshes come from
  :func:`iso_surface` (marching cubes on a continuous image, so vertex
  positions are interpolated between voxels; see
  :func:`refacelib.evaluation.reid.face_mesh`);
* the older vertex-cloud metric :func:`face_msd` (mean nearest-VERTEX
  distances), kept for point clouds without faces; it cannot see shifts
  much below the vertex spacing.

:func:`mean_surface_distance` applies the vertex metric to two binary masks
on one voxel grid and is checked against MONAI's
``compute_average_surface_distance`` in the tests.
"""
from __future__ import annotations

from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage as ndi
from scipy.spatial import cKDTree

from refacelib._utils.arrays import largest_component

__all__ = [
    "Mesh",
    "default_threshold",
    "as_mesh",
    "head_mask",
    "iso_surface",
    "compact_mesh",
    "MeshIndex",
    "index_mesh",
    "point_mesh_distance",
    "mesh_msd",
    "extract_surface",
    "restrict_to_region",
    "mean_surface_distance",
    "surface_distance",
    "face_msd",
    "vertex_distance_map",
]


class Mesh(NamedTuple):
    """A triangle mesh in world millimetres.

    Attributes
    ----------
    verts : ndarray, shape (N, 3), float64
        Vertex coordinates (mm).
    faces : ndarray, shape (M, 3), int64
        Triangle vertex indices into ``verts``.
    """

    verts: np.ndarray
    faces: np.ndarray

    @classmethod
    def empty(cls) -> "Mesh":
        """A mesh with no vertices and no faces (``(0, 3)`` arrays)."""
        return cls(np.zeros((0, 3)), np.zeros((0, 3), dtype=np.int64))


def as_mesh(mesh) -> Mesh:
    """A :class:`Mesh` (float64 vertices, int64 faces) from a Mesh or ``(verts, faces)``."""
    verts, faces = mesh
    return Mesh(np.asarray(verts, dtype=np.float64).reshape(-1, 3),
                np.asarray(faces, dtype=np.int64).reshape(-1, 3))


def default_threshold(values: np.ndarray) -> float:
    """Half of Otsu's threshold of ``values`` (the positive smoothed voxels)."""
    from skimage.filters import threshold_otsu

    return 0.5 * float(threshold_otsu(values))


def _fill_slices(mask: np.ndarray, axis: int) -> np.ndarray:
    """Fill 2-D holes in every slice of ``mask`` taken along ``axis``."""
    out = np.moveaxis(mask.copy(), axis, 0)
    for k in range(out.shape[0]):
        if out[k].any():
            out[k] = ndi.binary_fill_holes(out[k])
    return np.moveaxis(out, 0, axis)


def head_mask(
    volume: np.ndarray,
    *,
    threshold: float | None = None,
    smooth_sigma: float = 1.0,
    fill_axes: Sequence[int] = (2,),
) -> np.ndarray:
    """Binary head mask: smooth, threshold, largest component, fill holes.

    The **skin** mask of the study's surfaces and face distances. Defacing, registration
    and intensity statistics use the tissue mask
    :func:`refacelib.data.template.head_mask_from_intensity` instead (see there why two).

    Parameters
    ----------
    volume : ndarray, shape (X, Y, Z)
        Intensity volume (e.g. a T1w head with dark background).
    threshold : float, optional
        Intensity threshold applied to the smoothed volume. The default is
        half of Otsu's threshold of the smoothed volume's positive voxels.
        On T1w heads with a dark background Otsu splits air from tissue but
        lands inside the darker tissue (about 137 on the pydeface template,
        cutting through the eyelids); half of it (about 68) follows the
        skin, while staying above faint non-head signal in front of the
        face (the template carries a dim goggle-like shell of 30-60 that
        a log-scale Otsu cut of about 31 would keep).
    smooth_sigma : float
        Gaussian sigma in voxels applied before thresholding (0 disables).
    fill_axes : sequence of int
        Array axes along which holes are also filled slice by slice after
        the 3-D fill; the default ``(2,)`` is the superior axis of RAS
        volumes and closes airways that leave the field of view.

    Returns
    -------
    ndarray of bool, same shape as ``volume``

    Examples
    --------
    >>> v = np.zeros((9, 9, 9)); v[2:7, 2:7, 2:7] = 100.0; v[4, 4, 4] = 0.0
    >>> m = head_mask(v, threshold=50.0, smooth_sigma=0.0)
    >>> int(m.sum()), bool(m[4, 4, 4])
    (125, True)
    """
    vol = np.asarray(volume, dtype=np.float64)
    if smooth_sigma > 0:
        vol = ndi.gaussian_filter(vol, smooth_sigma)
    if threshold is None:
        positive = vol[vol > 0]
        if positive.size == 0:
            raise ValueError("head_mask: the volume has no positive voxels")
        threshold = default_threshold(positive)
    mask = largest_component(vol > threshold)
    mask = ndi.binary_fill_holes(mask)
    for axis in fill_axes:
        mask = _fill_slices(mask, axis)
    return mask


def _apply_affine(affine: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Map (N, 3) points through a 4x4 affine."""
    affine = np.asarray(affine, dtype=np.float64)
    return points @ affine[:3, :3].T + affine[:3, 3]


def extract_surface(
    mask: np.ndarray,
    affine: np.ndarray,
    *,
    smooth_sigma: float = 1.0,
    step_size: int = 1,
) -> tuple[np.ndarray, np.ndarray]:
    """Triangle mesh of a binary mask in world millimetres.

    The mask is padded by one voxel (so surfaces touching the border close),
    smoothed with a Gaussian of ``smooth_sigma`` voxels and contoured at
    0.5 with :func:`skimage.measure.marching_cubes`.

    Parameters
    ----------
    mask : ndarray of bool, shape (X, Y, Z)
    affine : ndarray, shape (4, 4)
        Voxel-to-world affine of ``mask``.
    smooth_sigma : float
        Gaussian sigma in voxels (0 gives the plain staircase surface).
    step_size : int
        Marching-cubes step in voxels (larger is coarser and faster).

    Returns
    -------
    verts_mm : ndarray, shape (N, 3), float64
        Vertex coordinates in world millimetres.
    faces : ndarray, shape (M, 3), int
        Triangle vertex indices.

    Examples
    --------
    >>> m = np.zeros((8, 8, 8), bool); m[2:6, 2:6, 2:6] = True
    >>> v, f = extract_surface(m, np.diag([2.0, 2.0, 2.0, 1.0]), smooth_sigma=0)
    >>> float(v.min()), float(v.max())
    (3.0, 11.0)
    """
    from skimage.measure import marching_cubes

    mask = np.asarray(mask, dtype=bool)
    if not mask.any():
        raise ValueError("extract_surface: the mask is empty")
    field = np.pad(mask.astype(np.float64), 1)
    if smooth_sigma > 0:
        field = ndi.gaussian_filter(field, smooth_sigma)
    verts, faces, _, _ = marching_cubes(field, level=0.5, step_size=step_size)
    verts_mm = _apply_affine(affine, verts.astype(np.float64) - 1.0)
    return verts_mm, faces.astype(np.int64)


def restrict_to_region(
    verts_mm: np.ndarray,
    faces: np.ndarray,
    region_mask: np.ndarray,
    affine: np.ndarray,
) -> tuple[np.ndarray, np.ndarray]:
    """Keep the part of a mesh whose vertices fall inside ``region_mask``.

    Each vertex is mapped to voxel indices through the inverse of
    ``affine``, rounded and clipped to the grid; it is kept when that voxel
    is set. Faces are kept when all three vertices are kept, and reindexed.

    Returns
    -------
    verts : ndarray, shape (K, 3)
    faces : ndarray, shape (L, 3), int

    Examples
    --------
    >>> v = np.array([[0., 0, 0], [1, 0, 0], [0, 1, 0], [5, 5, 5]])
    >>> f = np.array([[0, 1, 2], [1, 2, 3]])
    >>> r = np.zeros((6, 6, 6), bool); r[:2, :2, :2] = True
    >>> kv, kf = restrict_to_region(v, f, r, np.eye(4))
    >>> len(kv), kf.tolist()
    (3, [[0, 1, 2]])
    """
    region = np.asarray(region_mask, dtype=bool)
    verts_mm = np.asarray(verts_mm, dtype=np.float64)
    faces = np.asarray(faces, dtype=np.int64)
    ijk = np.rint(_apply_affine(np.linalg.inv(affine), verts_mm)).astype(np.int64)
    ijk = np.clip(ijk, 0, np.array(region.shape) - 1)
    keep = region[ijk[:, 0], ijk[:, 1], ijk[:, 2]]
    new_index = np.full(len(verts_mm), -1, dtype=np.int64)
    new_index[keep] = np.arange(int(keep.sum()))
    kept_faces = faces[keep[faces].all(axis=1)] if len(faces) else faces.reshape(0, 3)
    return verts_mm[keep], new_index[kept_faces]


def iso_surface(
    volume: np.ndarray,
    affine: np.ndarray,
    level: float,
    *,
    step_size: int = 1,
) -> Mesh:
    """Iso-surface of a continuous volume at ``level``, in world millimetres.

    :func:`skimage.measure.marching_cubes` with ``level=level``: each vertex
    lies on a voxel edge whose two values straddle ``level``, at the linearly
    interpolated crossing, so the surface moves continuously (sub-voxel) with
    the image. The volume is not padded, so surfaces reaching the array
    border stay open there. Vertices are mapped through ``affine`` (any
    orientation, anisotropic voxels).

    Returns
    -------
    Mesh
        Empty (``(0, 3)`` arrays) when ``level`` is outside the volume's range.

    Examples
    --------
    >>> v = np.zeros((6, 6, 6)); v[2:4, 2:4, 2:4] = 100.0
    >>> m = iso_surface(v, np.diag([2.0, 2.0, 2.0, 1.0]), 25.0)
    >>> float(m.verts[:, 0].min()), float(m.verts[:, 0].max())
    (2.5, 7.5)
    """
    from skimage.measure import marching_cubes

    vol = np.asarray(volume, dtype=np.float64)
    if vol.ndim != 3:
        raise ValueError(f"iso_surface: need a 3-D volume, got shape {vol.shape}")
    if min(vol.shape) < 2 or not (vol.min() < level < vol.max()):
        return Mesh.empty()
    verts, faces, _, _ = marching_cubes(vol, level=float(level), step_size=step_size)
    return Mesh(_apply_affine(affine, verts.astype(np.float64)), faces.astype(np.int64))


def compact_mesh(verts: np.ndarray, faces: np.ndarray) -> Mesh:
    """Drop the vertices no face uses and reindex the faces.

    Examples
    --------
    >>> m = compact_mesh(np.arange(12.0).reshape(4, 3), np.array([[1, 2, 3]]))
    >>> m.verts.shape, m.faces.tolist()
    ((3, 3), [[0, 1, 2]])
    """
    verts = np.asarray(verts, dtype=np.float64).reshape(-1, 3)
    faces = np.asarray(faces, dtype=np.int64).reshape(-1, 3)
    used = np.zeros(len(verts), dtype=bool)
    used[faces.ravel()] = True
    new_index = np.cumsum(used) - 1
    return Mesh(verts[used], new_index[faces])


class MeshIndex:
    """A triangle mesh prepared for exact point-to-surface distances.

    Holds the mesh, its proper (non-degenerate) triangles, their centroids,
    radii (largest centroid-to-vertex distance), unit normals, the inward
    in-plane normals and offsets of their edges, and a
    :class:`scipy.spatial.cKDTree` over the centroids. Build it once with
    :func:`index_mesh` to measure many point sets against one surface (e.g.
    every candidate face against the original); nothing is cached
    implicitly.
    """

    __slots__ = ("mesh", "tri", "centroids", "radius", "reach", "normals", "edge_normals",
                 "edge_offsets", "tree", "density")

    def __init__(self, mesh: Mesh):
        mesh = as_mesh(mesh)
        if len(mesh.verts) == 0:
            raise ValueError("index_mesh: the mesh is empty")
        self.mesh = mesh
        tri = mesh.verts[mesh.faces]
        cross = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
        area2 = np.sqrt((cross**2).sum(axis=1))
        scale = float(np.abs(mesh.verts).max()) + 1.0
        proper = area2 > 1e-12 * scale * scale
        tri, cross, area2 = tri[proper], cross[proper], area2[proper]
        self.tri = tri
        self.centroids = tri.mean(axis=1)
        self.radius = np.sqrt(((tri - self.centroids[:, None, :]) ** 2).sum(axis=2)).max(axis=1) \
            if len(tri) else np.zeros(0)
        self.reach = float(self.radius.max()) if len(tri) else 0.0
        self.normals = cross / area2[:, None]
        edges = np.roll(tri, -1, axis=1) - tri  # edge e goes from vertex e to vertex e + 1
        inward = np.cross(self.normals[:, None, :], edges)
        self.edge_normals = inward / np.sqrt((inward**2).sum(axis=2))[:, :, None]
        self.edge_offsets = np.einsum("mej,mej->me", self.edge_normals, tri)
        self.tree = cKDTree(self.centroids if len(tri) else mesh.verts)
        # proper triangles per mm^2 of surface (sizes the first candidate query)
        self.density = len(tri) / max(0.5 * float(area2.sum()), 1e-12)


def index_mesh(mesh: Mesh | MeshIndex) -> MeshIndex:
    """A :class:`MeshIndex` of ``mesh`` (returned as is when already one)."""
    return mesh if isinstance(mesh, MeshIndex) else MeshIndex(mesh)


def _triangle_distance(index: MeshIndex, pts: np.ndarray, p_idx: np.ndarray,
                       t_idx: np.ndarray, chunk_rows: int = 262_144) -> np.ndarray:
    """Exact distances of ``pts[p_idx]`` to triangles ``t_idx`` (pairwise), by trimesh."""
    from trimesh.triangles import closest_point

    out = np.empty(len(p_idx))
    for lo in range(0, len(p_idx), chunk_rows):
        p = pts[p_idx[lo:lo + chunk_rows]]
        q = closest_point(index.tri[t_idx[lo:lo + chunk_rows]], p)
        out[lo:lo + chunk_rows] = np.sqrt(((q - p) ** 2).sum(axis=1))
    return out


def point_mesh_distance(points: np.ndarray, mesh: Mesh | MeshIndex, *, k: int = 32,
                        bin_mm: float = 0.25, max_entries: int = 2_000_000) -> np.ndarray:
    """Exact distance (mm) from each point to the surface of a triangle mesh.

    The geometry of one point against one triangle (the closest point of a
    triangle, Ericson's *Real-Time Collision Detection* method with its
    vertex, edge and face regions) is delegated to the maintained, tested
    :func:`trimesh.triangles.closest_point` of ``trimesh`` (pure Python and
    numpy) rather than re-derived here. trimesh's mesh-level
    ``closest_point`` would need ``rtree`` (a C library) and is slower for
    this use; instead candidate triangles come from a
    :class:`scipy.spatial.cKDTree` over the triangle centroids
    (:class:`MeshIndex`), and the search is exact, not approximate:

    1. each point's nearest-centroid triangle gives an exact distance
       ``best``, an upper bound of the answer;
    2. only a triangle whose centroid lies within ``best`` plus its own
       radius (largest centroid-to-vertex distance) can be closer, so all
       centroids within ``best + reach`` (``reach``, the largest radius) are
       fetched (``k`` nearest under that bound, more while ``k`` are found;
       points are grouped by ``best`` in bins of about ``bin_mm`` because
       the bound is per query);
    3. of those, a triangle is evaluated exactly only when a lower bound of
       its distance (plane distance combined with the in-plane distance to
       its bounding disc and to its edge lines) is below ``best``.

    Degenerate (zero-area) triangles are skipped; a mesh with no proper
    triangle falls back to the nearest vertex.

    Parameters
    ----------
    points : ndarray, shape (N, 3)
    mesh : Mesh or MeshIndex
        Target surface (non-empty).
    k : int
        Least number of centroids fetched per point in the first query of a
        bin (more when the mesh's triangle density predicts more within the
        bound).
    bin_mm : float
        Width of the bins of ``best`` (at 1 mm; bins widen as sqrt(best)).
    max_entries : int
        Largest points x neighbours table of one KD-tree query (memory bound).

    Returns
    -------
    ndarray, shape (N,)

    Examples
    --------
    >>> tri = Mesh(np.array([[0.0, 0, 0], [4, 0, 0], [0, 4, 0]]), np.array([[0, 1, 2]]))
    >>> point_mesh_distance(np.array([[1.0, 1, 3], [0, 0, 0], [-3, -4, 0]]), tri).tolist()
    [3.0, 0.0, 5.0]
    """
    index = index_mesh(mesh)
    pts = np.asarray(points, dtype=np.float64).reshape(-1, 3)
    if len(pts) == 0:
        return np.zeros(0)
    n_tri = len(index.tri)
    if n_tri == 0:
        return index.tree.query(pts)[0]
    all_pts = np.arange(len(pts))
    near_c, nearest = index.tree.query(pts, k=1)
    best = _triangle_distance(index, pts, all_pts, nearest)
    # the surface is at least near_c - reach away: the ball of radius bound meets it
    # in a disc of radius at most sqrt(bound**2 - floor**2) (used to size the queries)
    floor = np.maximum(near_c - index.reach, 0.0)
    radius = np.append(index.radius, 0.0)  # cKDTree marks a missing neighbour by n_tri
    # step 2: candidates, per bin of best (the query's distance bound is a scalar)
    key = np.floor(2.0 * np.sqrt(best) / max(bin_mm, 1e-6)).astype(np.int64)
    cand_p, cand_t = [], []
    for b in np.unique(key):
        todo = all_pts[key == b]
        bound = float(best[todo].max()) + index.reach
        bound = bound * (1.0 + 1e-9) + 1e-9
        # about the number of centroids within the bound on a sheet of the mesh's density
        disc2 = bound * bound - float(floor[todo].min()) ** 2
        expect = int(1.5 * np.pi * disc2 * index.density) + 1
        kk, seen = max(1, min(max(int(k), expect), n_tri)), 0
        while len(todo):
            more = []
            rows = max(1, max_entries // kk)  # bounds the memory of one query
            for lo in range(0, len(todo), rows):
                part = todo[lo:lo + rows]
                cdist, cidx = index.tree.query(pts[part], k=kk, distance_upper_bound=bound)
                cdist, cidx = cdist.reshape(len(part), kk), cidx.reshape(len(part), kk)
                cdist, cidx = cdist[:, seen:], cidx[:, seen:]
                row, col = np.nonzero(cdist - radius[cidx] < best[part, None])
                cand_p.append(part[row])
                cand_t.append(cidx[row, col])
                more.append(part[np.isfinite(cdist[:, -1])])  # k found within the bound
            if kk >= n_tri:
                break
            todo = np.concatenate(more)
            seen, kk = kk, min(4 * kk, n_tri)
    p_idx = np.concatenate(cand_p)
    t_idx = np.concatenate(cand_t)
    keep = t_idx != nearest[p_idx]
    p_idx, t_idx = p_idx[keep], t_idx[keep]
    # step 3: lower bounds, then exact distances where they may beat best
    v = pts[p_idx] - index.centroids[t_idx]
    h = np.einsum("ij,ij->i", v, index.normals[t_idx])
    h2 = h * h
    in_plane = np.sqrt(np.maximum(np.einsum("ij,ij->i", v, v) - h2, 0.0))
    gap = np.maximum(in_plane - index.radius[t_idx], 0.0)
    b2 = best[p_idx] ** 2
    keep = np.flatnonzero(h2 + gap * gap < b2)
    p_idx, t_idx, h2, b2 = p_idx[keep], t_idx[keep], h2[keep], b2[keep]
    side = np.einsum("iej,ij->ie", index.edge_normals[t_idx], pts[p_idx]) - index.edge_offsets[t_idx]
    gap = np.maximum(-side.min(axis=1), 0.0)
    keep = h2 + gap * gap < b2
    p_idx, t_idx = p_idx[keep], t_idx[keep]
    if len(p_idx):
        d = _triangle_distance(index, pts, p_idx, t_idx)
        order = np.argsort(p_idx, kind="stable")
        p_idx, d = p_idx[order], d[order]
        starts = np.flatnonzero(np.r_[True, p_idx[1:] != p_idx[:-1]])
        first = p_idx[starts]
        best[first] = np.minimum(best[first], np.minimum.reduceat(d, starts))
    return best


def mesh_msd(mesh_a: Mesh | MeshIndex, mesh_b: Mesh | MeshIndex) -> float:
    """Symmetric mean surface distance (mm) between two triangle meshes.

    ``0.5 * (mean_a d(a_i, B) + mean_b d(b_j, A))`` where ``d(p, B)`` is the
    exact point-to-surface distance of :func:`point_mesh_distance` and the
    means run over each mesh's vertices. Either mesh may be given as a
    :class:`MeshIndex` to reuse it across calls.

    Raises
    ------
    ValueError
        If a mesh is empty.

    Examples
    --------
    >>> tri = np.array([[0.0, 0, 0], [4, 0, 0], [0, 4, 0]]); f = np.array([[0, 1, 2]])
    >>> mesh_msd(Mesh(tri, f), Mesh(tri + [0, 0, 0.25], f))
    0.25
    """
    a, b = (m if isinstance(m, MeshIndex) else as_mesh(m) for m in (mesh_a, mesh_b))
    va, vb = (m.mesh.verts if isinstance(m, MeshIndex) else m.verts for m in (a, b))
    if len(va) == 0 or len(vb) == 0:
        raise ValueError("mesh_msd: both meshes must be non-empty")
    d_ab = point_mesh_distance(va, b)
    d_ba = point_mesh_distance(vb, a)
    return float(0.5 * (d_ab.mean() + d_ba.mean()))


def surface_distance(
    verts_a: np.ndarray, verts_b: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Nearest-neighbour distances between two point sets, both ways.

    Returns
    -------
    d_ab : ndarray, shape (Na,)
        Distance from each point of ``verts_a`` to the nearest of ``verts_b``.
    d_ba : ndarray, shape (Nb,)
        Distance from each point of ``verts_b`` to the nearest of ``verts_a``.

    Examples
    --------
    >>> a = np.zeros((1, 3)); b = np.array([[3.0, 4.0, 0.0], [0, 0, 10]])
    >>> [x.tolist() for x in surface_distance(a, b)]
    [[5.0], [5.0, 10.0]]
    """
    a = np.asarray(verts_a, dtype=np.float64).reshape(-1, 3)
    b = np.asarray(verts_b, dtype=np.float64).reshape(-1, 3)
    if len(a) == 0 or len(b) == 0:
        raise ValueError("surface_distance: both point sets must be non-empty")
    d_ab, _ = cKDTree(b).query(a)
    d_ba, _ = cKDTree(a).query(b)
    return d_ab, d_ba


def face_msd(candidate_verts: np.ndarray, original_verts: np.ndarray) -> float:
    """Symmetric mean surface distance (mm) between two vertex sets.

    The mean of the two directed mean nearest-vertex distances.

    Examples
    --------
    >>> a = np.zeros((1, 3)); b = np.array([[3.0, 4.0, 0.0], [0, 0, 10]])
    >>> face_msd(a, b)
    6.25
    """
    d_ab, d_ba = surface_distance(candidate_verts, original_verts)
    return float(0.5 * (d_ab.mean() + d_ba.mean()))


def vertex_distance_map(
    verts_candidate: np.ndarray, verts_original: np.ndarray
) -> np.ndarray:
    """Distance (mm) from each candidate vertex to the original surface.

    Examples
    --------
    >>> vertex_distance_map(np.array([[0.0, 0, 2]]), np.zeros((1, 3))).tolist()
    [2.0]
    """
    return surface_distance(verts_candidate, verts_original)[0]


def _spacing3(spacing: float | Sequence[float]) -> np.ndarray:
    """Voxel spacing as three positive floats."""
    sp = np.broadcast_to(np.asarray(spacing, dtype=np.float64), (3,)).copy()
    if np.any(sp <= 0):
        raise ValueError(f"spacing must be positive, got {sp.tolist()}")
    return sp


def mean_surface_distance(
    mask_a: np.ndarray,
    mask_b: np.ndarray,
    spacing: float | Sequence[float],
    *,
    smooth_sigma: float = 0.5,
) -> float:
    """Symmetric mean surface distance (mm) between two binary 3-D masks.

    Both surfaces are extracted by marching cubes (:func:`extract_surface`,
    affine ``diag(spacing)``); the result is the mean of the two directed
    mean nearest-vertex distances (:func:`face_msd`).

    Parameters
    ----------
    mask_a, mask_b : ndarray of bool, shape (X, Y, Z)
        Masks on the same voxel grid.
    spacing : float or sequence of 3 floats
        Voxel size in millimetres.
    smooth_sigma : float
        Gaussian sigma in voxels applied before contouring (reduces the
        staircase of voxelised surfaces).

    Returns
    -------
    float
        0.0 exactly for identical masks.

    Raises
    ------
    ValueError
        If a mask is empty or the shapes differ.

    Examples
    --------
    >>> m = np.zeros((10, 10, 10), bool); m[3:7, 3:7, 3:7] = True
    >>> mean_surface_distance(m, m, 1.0)
    0.0
    """
    a = np.asarray(mask_a, dtype=bool)
    b = np.asarray(mask_b, dtype=bool)
    if a.shape != b.shape or a.ndim != 3:
        raise ValueError(f"masks must be 3-D with equal shapes, got {a.shape} and {b.shape}")
    for name, m in (("mask_a", a), ("mask_b", b)):
        if not m.any():
            raise ValueError(f"mean_surface_distance: {name} is empty (no surface)")
    affine = np.diag(np.append(_spacing3(spacing), 1.0))
    va, _ = extract_surface(a, affine, smooth_sigma=smooth_sigma)
    vb, _ = extract_surface(b, affine, smooth_sigma=smooth_sigma)
    return face_msd(va, vb)
