"""Known-answer tests for refacelib.surface."""
import numpy as np
import pytest

from refacelib import surface


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
