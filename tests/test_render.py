"""Tests for refacelib.imaging.render: geometry of the views, eye bar (timings belong in the benchmark)."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from refacelib.imaging import render  # noqa: E402


def _ball(shape, radius_vox, center=None):
    center = (np.asarray(shape) - 1) / 2.0 if center is None else np.asarray(center, float)
    g = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    return sum((gi - c) ** 2 for gi, c in zip(g, center)) <= radius_vox**2


def _affine(spacing=1.0, offset=(0.0, 0.0, 0.0)):
    a = np.diag([spacing, spacing, spacing, 1.0])
    a[:3, 3] = offset
    return a


def _head(shape=(64, 64, 64)):
    """A ball with a 'nose' bump at +y and an 'ear' bump at +x (1 mm voxels)."""
    m = _ball(shape, 22)
    c = (np.asarray(shape) - 1) / 2.0
    m |= _ball(shape, 5, c + (0, 22, 0))  # nose, anterior
    m |= _ball(shape, 5, c + (22, 0, 6))  # right ear, higher up
    return m


def test_depth_map_sphere():
    r = 15.0
    aff = _affine(2.0, (-30.0, 12.0, 5.0))
    mask = _ball((32, 32, 32), r / 2.0)
    grid = render.view_grid(mask, aff, pixel_mm=1.0)
    depth, hit = render.depth_map(mask, aff, azimuth_deg=30.0, grid=grid)
    h, w = depth.shape
    assert h % 2 == 1 and w % 2 == 1
    centre = (h // 2, w // 2)
    assert depth[centre] <= np.nanmin(depth) + 0.05
    rows, cols = np.mgrid[:h, :w]
    rad = np.hypot(rows - centre[0], cols - centre[1])  # pixels = mm
    assert np.isnan(depth[rad > r + 2]).all()
    assert np.isfinite(depth[rad < r - 2]).all()
    # hit points lie on the sphere (world mm)
    world_centre = aff[:3, 3] + 2.0 * 15.5
    radius = np.linalg.norm(hit[np.isfinite(depth)] - world_centre, axis=1)
    assert abs(np.median(radius) - r) < 1.5


def test_project_points_straight_ahead_is_centre():
    mask = _head()
    aff = _affine(1.0, (-32.0, -40.0, -10.0))
    grid = render.view_grid(mask, aff)
    ahead = grid.center + np.array([0.0, 200.0, 0.0])
    depth, _ = render.depth_map(mask, aff, azimuth_deg=0.0, grid=grid)
    rc = render.project_points(ahead, azimuth_deg=0.0, grid=grid)[0]
    np.testing.assert_allclose(rc, [(depth.shape[0] - 1) / 2, (depth.shape[1] - 1) / 2])


def test_view_orientation():
    mask = _head()
    aff = _affine()
    grid = render.view_grid(mask, aff)
    c = grid.center
    nose = c + (0.0, 27.0, 0.0)
    ear = c + (27.0, 0.0, 6.0)
    # left profile: camera at -x, the face points to the viewer's left
    row, col = render.project_points(nose, azimuth_deg=render.VIEWS["left"], grid=grid)[0]
    assert col < grid.radius_mm / grid.pixel_mm - 10
    # frontal: the subject's right (+x) is on the viewer's left; up is +z
    row, col = render.project_points(ear, azimuth_deg=0.0, grid=grid)[0]
    assert col < grid.radius_mm - 10 and row < grid.half_height_mm
    # the nose is the nearest thing in the frontal view, the ear in the right view
    d_front, _ = render.depth_map(mask, aff, azimuth_deg=0.0, grid=grid)
    d_right, _ = render.depth_map(mask, aff, azimuth_deg=render.VIEWS["right"], grid=grid)
    n_rc = np.rint(render.project_points(nose, azimuth_deg=0.0, grid=grid)[0]).astype(int)
    e_rc = np.rint(render.project_points(ear, azimuth_deg=90.0, grid=grid)[0]).astype(int)
    assert abs(d_front[tuple(n_rc)] - np.nanmin(d_front)) < 1.0
    assert abs(d_right[tuple(e_rc)] - np.nanmin(d_right)) < 1.0


def test_shade_range_and_background():
    depth = np.full((9, 9), np.nan)
    depth[2:7, 2:7] = np.linspace(0, 4, 5)[None, :]
    s = render.shade(depth, pixel_mm=1.0)
    assert s.shape == depth.shape
    assert np.all((s >= 0) & (s <= 1))
    assert np.all(s[np.isnan(depth)] == 1.0)


def test_render_views_five_axes():
    mask = _head()
    aff = _affine(1.0, (10.0, -5.0, 3.0))
    fig = render.render_views(mask, aff, pixel_mm=1.0)
    try:
        assert len(fig.axes) == 5
        for ax in fig.axes:
            img = ax.images[0].get_array()
            assert img.ndim == 3 and np.nanmin(img) >= 0 and np.nanmax(img) <= 1
    finally:
        plt.close(fig)


def test_eye_bar_covers_projected_eyes():
    mask = _head()
    aff = _affine()
    grid = render.view_grid(mask, aff)
    c = grid.center
    eyes = np.array([c + (9.0, 20.0, 10.0), c + (-9.0, 20.0, 10.0)])
    fig = render.render_views(mask, aff, eye_bar=True, eyes_world=eyes, grid=grid)
    try:
        for ax, name in zip(fig.axes, render.VIEWS):
            img = np.asarray(ax.images[0].get_array())
            rc = np.rint(render.project_points(eyes, azimuth_deg=render.VIEWS[name], grid=grid))
            for r, col in rc.astype(int):
                assert np.all(img[r, col] == 0.0), name
        plain = render.render_view(mask, aff, azimuth_deg=0.0, grid=grid)
        r, col = np.rint(render.project_points(eyes, azimuth_deg=0.0, grid=grid)[0]).astype(int)
        assert plain[r, col].min() > 0.0
    finally:
        plt.close(fig)


def test_estimate_eyes_on_a_face_like_head():
    # 1 mm voxels, a head 180 mm tall with a nose 150 mm below the vertex
    shape = (120, 140, 200)
    m = np.zeros(shape, bool)
    g = np.meshgrid(*[np.arange(n) for n in shape], indexing="ij")
    m |= ((g[0] - 60) / 55) ** 2 + ((g[1] - 70) / 65) ** 2 + ((g[2] - 100) / 95) ** 2 <= 1
    nose_vox = np.array([60, 134, 45])
    m |= sum((gi - c) ** 2 for gi, c in zip(g, nose_vox)) <= 8**2
    eyes = render.estimate_eyes(m, _affine())
    assert eyes.shape == (2, 3)
    assert eyes[0, 0] > 60 > eyes[1, 0]  # right eye (+x) first
    assert np.allclose(eyes[:, 2], 45 + 35, atol=2)
    assert np.all(eyes[:, 1] > 100)  # on the anterior surface


def test_values_painting_and_grid():
    mask = _head()
    aff = _affine()
    values = np.where(np.indices(mask.shape)[0] > 32, 5.0, np.nan)
    rgb = render.render_view(mask, aff, azimuth_deg=0.0, values=values, vmin=0, vmax=5,
                             cmap="viridis")
    grey = np.isclose(rgb[..., 0], rgb[..., 1]) & np.isclose(rgb[..., 1], rgb[..., 2])
    h, w, _ = rgb.shape
    # frontal: +x (painted) is on the viewer's left, the NaN half stays grey
    assert not grey[h // 2, w // 2 - 10]
    assert grey[h // 2, w // 2 + 10]
    fig = render.render_grid({"a": (mask, aff), "b": (mask, aff)},
                             labels={"a": "original\nMSD 0.00 mm"}, eye_bar=False)
    try:
        assert len(fig.axes) == 10
        texts = [t.get_text() for ax in fig.axes for t in ax.texts]
        assert "original\nMSD 0.00 mm" in texts and "b" in texts
    finally:
        plt.close(fig)


def test_empty_mask_raises():
    with pytest.raises(ValueError, match="empty"):
        render.depth_map(np.zeros((8, 8, 8), bool), np.eye(4), azimuth_deg=0.0)
