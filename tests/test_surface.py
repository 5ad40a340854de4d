"""Known-answer tests for refacelib.imaging.surface."""
import numpy as np
import pytest

from refacelib.imaging import surface


def _ball(shape, radius_mm, spacing=(1.0, 1.0, 1.0), center=None):
    """Boolean ball of a physical radius on a grid with the given spacing."""
    spacing = np.asarray(spacing, float)
    if center is None:
        center = (np.asarray(shape) - 1) / 2.0
    grids = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    r2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grids, center, spacing))
    return r2 <= radius_mm**2


R, D = 20.0, 3.0


def test_concentric_spheres_isotropic():
    a = _ball((64, 64, 64), R)
    b = _ball((64, 64, 64), R + D)
    msd = surface.mean_surface_distance(a, b, 1.0)
    assert abs(msd - D) < 0.05 * D, msd


def test_concentric_spheres_anisotropic():
    sp = (1.0, 1.0, 2.0)
    a = _ball((64, 64, 32), R, sp)
    b = _ball((64, 64, 32), R + D, sp)
    msd = surface.mean_surface_distance(a, b, sp)
    assert abs(msd - D) < 0.10 * D, msd


def test_identity_and_symmetry(rng):
    a = _ball((40, 40, 40), 12.0)
    b = _ball((40, 40, 40), 10.0, center=(21.0, 19.0, 20.0))
    b[rng.random(b.shape) < 0.01] = True
    assert surface.mean_surface_distance(a, a, (1.0, 1.2, 0.9)) == 0.0
    ab = surface.mean_surface_distance(a, b, (1.0, 1.2, 0.9))
    ba = surface.mean_surface_distance(b, a, (1.0, 1.2, 0.9))
    assert ab > 0
    assert abs(ab - ba) < 1e-9


def test_empty_mask_raises():
    a = _ball((20, 20, 20), 5.0)
    with pytest.raises(ValueError, match="empty"):
        surface.mean_surface_distance(a, np.zeros_like(a), 1.0)


def test_agrees_with_monai():
    torch = pytest.importorskip("torch")
    metrics = pytest.importorskip("monai.metrics")
    for sp, shape in (((1.0, 1.0, 1.0), (64, 64, 64)), ((1.0, 1.0, 2.0), (64, 64, 32))):
        a = _ball(shape, R, sp)
        b = _ball(shape, R + D, sp)
        ours = surface.mean_surface_distance(a, b, sp)

        def onehot(m):
            return torch.from_numpy(np.stack([~m, m])[None].astype(np.float32))

        theirs = float(
            metrics.compute_average_surface_distance(
                onehot(a), onehot(b), include_background=False, symmetric=True, spacing=list(sp)
            ).item()
        )
        assert abs(ours - theirs) < 0.10 * max(ours, theirs), (
            f"spacing={sp}: refacelib {ours:.4f} mm vs MONAI {theirs:.4f} mm"
        )


def test_extract_surface_in_world_mm():
    spacing, offset = 2.0, np.array([-40.0, 10.0, 25.0])
    affine = np.diag([spacing, spacing, spacing, 1.0])
    affine[:3, 3] = offset
    r_mm = 20.0
    center_vox = np.array([15.0, 16.0, 14.0])
    mask = _ball((32, 32, 32), r_mm, (spacing,) * 3, center=center_vox)
    verts, faces = surface.extract_surface(mask, affine)
    world_center = offset + spacing * center_vox
    radius = np.linalg.norm(verts - world_center, axis=1)
    assert abs(radius.mean() - r_mm) < spacing
    assert faces.shape[1] == 3 and faces.max() < len(verts)
    assert verts.dtype == np.float64


def test_restrict_to_region_half_space():
    affine = np.diag([1.5, 1.5, 1.5, 1.0])
    affine[:3, 3] = (-30.0, -30.0, -30.0)
    mask = _ball((40, 40, 40), 20.0, (1.5,) * 3)
    verts, faces = surface.extract_surface(mask, affine)
    region = np.zeros(mask.shape, bool)
    region[:, 21:, :] = True  # world y >= 1.5 mm
    kv, kf = surface.restrict_to_region(verts, faces, region, affine)
    assert 0 < len(kv) < len(verts)
    assert np.all(kv[:, 1] >= 1.5 * 20.5 - 30.0)
    assert kf.min() >= 0 and kf.max() < len(kv)
    # every kept face exists in the original mesh
    assert len(kf) <= len(faces)


def test_surface_distance_helpers():
    a = np.array([[0.0, 0, 0], [1, 0, 0]])
    b = np.array([[0.0, 0, 2]])
    d_ab, d_ba = surface.surface_distance(a, b)
    np.testing.assert_allclose(d_ab, [2.0, np.sqrt(5.0)])
    np.testing.assert_allclose(d_ba, [2.0])
    assert surface.face_msd(a, b) == pytest.approx(0.5 * ((2 + np.sqrt(5)) / 2 + 2))
    np.testing.assert_allclose(surface.vertex_distance_map(a, b), d_ab)


def test_head_mask_one_filled_component(rng):
    shape = (48, 48, 48)
    vol = rng.normal(5.0, 2.0, shape).clip(0)
    head = _ball(shape, 18.0)
    cavity = _ball(shape, 6.0, center=(23.5, 28.0, 20.0))
    vol[head] = 200.0 + rng.normal(0, 10, int(head.sum()))
    vol[cavity] = 5.0
    vol[2:5, 2:5, 2:5] = 150.0  # a detached bright speck
    m = surface.head_mask(vol)
    from scipy import ndimage as ndi

    _, n = ndi.label(m)
    assert n == 1
    assert m[cavity].all()
    assert not m[3, 3, 3]
    # the log-Otsu cut sits on the outer edge of the blurred boundary:
    # the mask lies between the ball eroded by 1 and dilated by 2 voxels
    assert m[ndi.binary_erosion(head)].all()
    assert not m[~ndi.binary_dilation(head, iterations=2)].any()


# --------------------------------------------------------------------------- sub-voxel meshes
def _brute_point_mesh_distance(points, mesh):
    """Distance of every point to every triangle (trimesh geometry), minimum per point."""
    from trimesh.triangles import closest_point

    tri = mesh.verts[mesh.faces]
    out = []
    with np.errstate(invalid="ignore", divide="ignore"):
        for p in points:
            q = closest_point(tri, np.repeat(p[None], len(tri), axis=0))
            out.append(np.nanmin(np.sqrt(((q - p) ** 2).sum(axis=1))))  # degenerate ones: NaN
    return np.array(out)


def test_iso_surface_interpolates_between_voxels():
    affine = np.diag([2.0, 2.0, 2.0, 1.0])
    affine[:3, 3] = (-10.0, 4.0, 1.0)
    vol = np.zeros((8, 8, 8))
    vol[2:6, 2:6, 2:6] = 100.0
    for level, lo_vox in ((50.0, 1.5), (25.0, 1.25), (75.0, 1.75)):
        mesh = surface.iso_surface(vol, affine, level)
        assert mesh.verts.dtype == np.float64 and mesh.faces.shape[1] == 3
        assert mesh.verts[:, 0].min() == pytest.approx(-10.0 + 2.0 * lo_vox)
        assert mesh.verts[:, 0].max() == pytest.approx(-10.0 + 2.0 * (7 - lo_vox))
    assert len(surface.iso_surface(vol, affine, 150.0).verts) == 0
    assert surface.iso_surface(vol, affine, 150.0).faces.shape == (0, 3)


def test_point_mesh_distance_known_answers():
    tri = surface.Mesh(np.array([[0.0, 0, 0], [4, 0, 0], [0, 4, 0]]), np.array([[0, 1, 2]]))
    pts = np.array([[1.0, 1, 3],     # above the face: plane distance
                    [2.0, 2, 0],     # on the hypotenuse
                    [-3.0, -4, 0],   # vertex region of (0, 0, 0)
                    [2.0, -1, 0],    # edge region of the x edge
                    [4.0, 4, 0]])    # edge region of the hypotenuse
    np.testing.assert_allclose(surface.point_mesh_distance(pts, tri),
                               [3.0, 0.0, 5.0, 1.0, np.sqrt(8.0)], atol=1e-12)
    # no triangles: nearest vertex
    pts_only = surface.Mesh(tri.verts, np.zeros((0, 3), np.int64))
    np.testing.assert_allclose(surface.point_mesh_distance(pts[:1], pts_only), [np.sqrt(11.0)])
    with pytest.raises(ValueError, match="empty"):
        surface.point_mesh_distance(pts, surface.Mesh.empty())


def test_point_mesh_distance_is_exact_on_a_marching_cubes_mesh(rng):
    """Against all triangles, for points near, far and on the surface; degenerate ones too."""
    mask = _ball((24, 24, 24), 8.0, center=(11.3, 11.6, 11.9))
    vol = mask.astype(float) * 100.0
    from scipy import ndimage as ndi

    affine = np.array([[1.2, 0.3, 0.0, -5.0], [0.0, 1.5, 0.2, 3.0], [0.1, 0.0, 0.9, 1.0],
                       [0, 0, 0, 1]])
    mesh = surface.iso_surface(ndi.gaussian_filter(vol, 1.0), affine, 50.0)
    a, b = mesh.faces[0, :2]  # degenerate triangles on an existing edge and vertex
    mesh = surface.Mesh(mesh.verts, np.vstack([mesh.faces, [[a, a, b]], [[b, b, b]]]))
    pts = np.vstack([
        mesh.verts[rng.choice(len(mesh.verts), 60)],                       # on it
        mesh.verts[rng.choice(len(mesh.verts), 60)] + rng.normal(0, 0.7, (60, 3)),
        mesh.verts[rng.choice(len(mesh.verts), 40)] + rng.normal(0, 5.0, (40, 3)),
        rng.normal(0, 60.0, (20, 3)),                                       # far away
    ])
    index = surface.index_mesh(mesh)
    d = surface.point_mesh_distance(pts, index)
    np.testing.assert_allclose(d, _brute_point_mesh_distance(pts, mesh), atol=1e-9)
    assert np.all(d[:60] < 1e-9)
    np.testing.assert_array_equal(surface.point_mesh_distance(pts, mesh), d)  # Mesh or MeshIndex


def test_mesh_msd_and_compact_mesh():
    verts = np.array([[0.0, 0, 0], [4, 0, 0], [0, 4, 0], [9, 9, 9]])
    a = surface.compact_mesh(verts, np.array([[0, 1, 2]]))
    assert a.verts.shape == (3, 3)
    b = surface.Mesh(a.verts + [0.0, 0.0, 0.5], a.faces)
    assert surface.mesh_msd(a, b) == pytest.approx(0.5)
    assert surface.mesh_msd(a, a) == 0.0
    assert surface.mesh_msd(surface.index_mesh(a), b) == surface.mesh_msd(a, b)
    # a lone point against the triangle: point-to-triangle one way, vertex-to-point the other
    p = surface.Mesh(np.array([[1.0, 1.0, 2.0]]), np.zeros((0, 3), np.int64))
    expected = 0.5 * (2.0 + np.mean(np.linalg.norm(a.verts - [1.0, 1.0, 2.0], axis=1)))
    assert surface.mesh_msd(p, a) == pytest.approx(expected)
    with pytest.raises(ValueError, match="non-empty"):
        surface.mesh_msd(a, surface.Mesh.empty())
