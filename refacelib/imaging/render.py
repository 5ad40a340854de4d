"""Headless renderings of head surfaces in the five views of the paper.

A binary head mask is ray-cast orthographically into a depth map (first
crossing of the 0.5 level of the lightly smoothed mask), Lambert-shaded,
optionally coloured by a voxel map (e.g. a distance map) and covered by an
eye bar. numpy/scipy on the CPU; matplotlib only lays the images out.

Geometry (world = RAS+ millimetres through the affine): a view is an
azimuth about +z and an elevation. At azimuth 0 the camera is at +y looking
towards -y (the face); negative azimuths move it to the subject's left
(-x). Image up is +z and image right is ``forward x up``: world -x in the
frontal view (the subject's right is on the viewer's left, as when facing
a person), world -y in the left profile (the face points to the viewer's
LEFT, as in the paper) and +y in the right profile. A :class:`ViewGrid`
fixes the framing so that several heads render on identical pixel grids.
"""
from __future__ import annotations

import math
from typing import NamedTuple, Sequence

import numpy as np
from scipy import ndimage as ndi

__all__ = ["VIEWS", "VIEW_LABELS", "ViewGrid", "view_grid", "camera_axes", "depth_map",
           "shade", "project_points", "estimate_eyes", "render_view", "render_views",
           "render_grid"]

VIEWS = {"left": -90, "left_3q": -45, "front": 0, "right_3q": 45, "right": 90}
VIEW_LABELS = {"left": "left profile", "left_3q": "left 3/4", "front": "frontal",
               "right_3q": "right 3/4", "right": "right profile"}


class ViewGrid(NamedTuple):
    """Framing shared by all views: world centre and half extents in mm.

    ``radius_mm`` bounds the head horizontally (distance from the vertical
    axis through ``center``), ``half_height_mm`` vertically.
    """

    center: np.ndarray
    radius_mm: float
    half_height_mm: float
    pixel_mm: float


def _mask_corners_world(mask: np.ndarray, affine: np.ndarray) -> np.ndarray:
    """The 8 world corners of the bounding box of the set voxels."""
    idx = np.nonzero(np.asarray(mask))
    if len(idx[0]) == 0:
        raise ValueError("the mask is empty: nothing to render")
    lo = np.array([i.min() for i in idx], float) - 0.5
    hi = np.array([i.max() for i in idx], float) + 0.5
    corners = np.array([[(lo, hi)[b][d] for d, b in enumerate(bits)]
                        for bits in np.ndindex(2, 2, 2)])
    affine = np.asarray(affine, float)
    return corners @ affine[:3, :3].T + affine[:3, 3]


def _grid_from_points(points: np.ndarray, *, pixel_mm: float, margin_mm: float) -> ViewGrid:
    """Smallest :class:`ViewGrid` (plus a margin) framing world points."""
    center = 0.5 * (points.min(axis=0) + points.max(axis=0))
    rel = points - center
    radius = float(np.hypot(rel[:, 0], rel[:, 1]).max()) + margin_mm
    half_height = float(np.abs(rel[:, 2]).max()) + margin_mm
    return ViewGrid(center, radius, half_height, float(pixel_mm))


def view_grid(mask: np.ndarray, affine: np.ndarray, *, pixel_mm: float = 1.0,
              margin_mm: float = 5.0) -> ViewGrid:
    """Framing of a mask: centre of its world bounding box and half extents.

    Examples
    --------
    >>> m = np.zeros((10, 10, 10), bool); m[2:8, 2:8, 2:8] = True
    >>> g = view_grid(m, np.eye(4), margin_mm=0.0)
    >>> g.center.tolist(), round(g.radius_mm, 3), g.half_height_mm
    ([4.5, 4.5, 4.5], 4.243, 3.0)
    """
    pts = _mask_corners_world(mask, affine)
    return _grid_from_points(pts, pixel_mm=pixel_mm, margin_mm=margin_mm)


def camera_axes(azimuth_deg: float, elevation_deg: float = 0.0) -> tuple[np.ndarray, ...]:
    """Unit world vectors (right, up, forward) of a view; forward looks into the scene.

    Examples
    --------
    >>> [(v.round(6) + 0.0).tolist() for v in camera_axes(0.0)]
    [[-1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, -1.0, 0.0]]
    """
    a, e = math.radians(azimuth_deg), math.radians(elevation_deg)
    back = np.array([math.cos(e) * math.sin(a), math.cos(e) * math.cos(a), math.sin(e)])
    up = np.array([-math.sin(e) * math.sin(a), -math.sin(e) * math.cos(a), math.cos(e)])
    forward = -back
    return np.cross(forward, up), up, forward


def _image_size(grid: ViewGrid, elevation_deg: float) -> tuple[int, int, int]:
    """Half sizes (rows, cols, depth samples) of a view's sampling grid."""
    e = abs(math.radians(elevation_deg))
    half_h = grid.half_height_mm * math.cos(e) + grid.radius_mm * math.sin(e)
    half_d = grid.radius_mm * math.cos(e) + grid.half_height_mm * math.sin(e)
    px = grid.pixel_mm
    return (math.ceil(half_h / px), math.ceil(grid.radius_mm / px), math.ceil(half_d / px))


class _Scene(NamedTuple):
    """A mask prepared for ray casting (see :func:`_prepare`)."""

    field: np.ndarray  # smoothed float32 mask, hit where >= 0.5
    affine: np.ndarray
    shell_world: np.ndarray  # (N, 3) centres of the voxels bounding the hit region
    voxel_radius_mm: float  # half diagonal of one voxel
    voxel_min_mm: float  # smallest voxel edge


def _prepare(mask: np.ndarray, affine: np.ndarray, smooth_sigma: float) -> _Scene:
    """Smooth the mask and collect the shell voxels used to bound ray depths.

    Any point where the linearly interpolated field is >= 0.5 lies in the
    cube of a voxel of ``solid`` (the 26-neighbourhood dilation of the
    voxels >= 0.5), so a ray reaches the hit region only after passing
    through a cube of the shell of ``solid``.
    """
    field = np.asarray(mask, dtype=np.float32)
    if smooth_sigma > 0:
        field = ndi.gaussian_filter(field, smooth_sigma)
    if not (field >= 0.5).any():
        raise ValueError("the mask is empty: nothing to render")
    cube = np.ones((3, 3, 3), bool)
    solid = ndi.binary_dilation(field >= 0.5, cube)
    shell = np.argwhere(solid & ~ndi.binary_erosion(solid, cube, border_value=0))
    affine = np.asarray(affine, float)
    world = shell @ affine[:3, :3].T + affine[:3, 3]
    signs = np.array([[1, 1, 1], [1, 1, -1], [1, -1, 1], [-1, 1, 1]], float)
    radius = 0.5 * float(np.linalg.norm(signs @ affine[:3, :3].T, axis=1).max())
    return _Scene(field, affine, world, radius, float(np.linalg.norm(affine[:3, :3], axis=0).min()))


def _depth_bounds(scene: _Scene, grid: ViewGrid, axes, size) -> np.ndarray:
    """Per-pixel lower bound of the hit depth (mm), inf where no hit is possible."""
    right, up, forward = axes
    nh, nw, nd = size
    px = grid.pixel_mm
    rel = scene.shell_world - grid.center
    rows = np.rint(nh - rel @ up / px).astype(np.int64)
    cols = np.rint(nw + rel @ right / px).astype(np.int64)
    t = rel @ forward + nd * px
    ok = (rows >= 0) & (rows <= 2 * nh) & (cols >= 0) & (cols <= 2 * nw)
    zbuf = np.full((2 * nh + 1, 2 * nw + 1), np.inf)
    np.minimum.at(zbuf, (rows[ok], cols[ok]), t[ok])
    reach = scene.voxel_radius_mm / px + 0.75
    k = int(np.ceil(reach))
    yy, xx = np.mgrid[-k:k + 1, -k:k + 1]
    zbuf = ndi.minimum_filter(zbuf, footprint=yy**2 + xx**2 <= reach**2, mode="constant",
                              cval=np.inf)
    return np.maximum(zbuf - scene.voxel_radius_mm - px, 0.0)


def _cast(scene: _Scene, grid: ViewGrid, azimuth_deg, elevation_deg, window=16):
    """Ray-cast a scene: depth (mm from the front plane) and hit points.

    Rays start at their depth bound and are marched ``window`` samples at a
    time, with a step of half the smaller of pixel and voxel size (so thin
    structures such as ears are not stepped over); the first sample >= 0.5
    is the hit, its depth refined by linear interpolation with the
    previous sample.
    """
    axes = right, up, forward = camera_axes(azimuth_deg, elevation_deg)
    size = nh, nw, nd = _image_size(grid, elevation_deg)
    px = grid.pixel_mm
    inv = np.linalg.inv(scene.affine)
    start = _depth_bounds(scene, grid, axes, size)
    depth = np.full(start.shape, np.nan)
    rr, cc = np.nonzero(np.isfinite(start))
    t0 = start[rr, cc]
    base = grid.center + ((nh - rr) * px)[:, None] * up + ((cc - nw) * px)[:, None] * right
    base = base @ inv[:3, :3].T + inv[:3, 3] - nd * px * (inv[:3, :3] @ forward)
    f_v = inv[:3, :3] @ forward
    step = 0.5 * min(px, scene.voxel_min_mm)
    steps = np.arange(-1, window) * step
    t_far = 2 * nd * px
    while len(t0):
        t = t0[:, None] + steps[None, :]
        coords = base.T[:, :, None] + f_v[:, None, None] * t[None]
        vals = ndi.map_coordinates(scene.field, coords, order=1, cval=0.0, prefilter=False)
        inside = vals[:, 1:] >= 0.5
        hit = inside.any(axis=1)
        k = inside.argmax(axis=1) + 1
        v1 = vals[np.arange(len(k)), k]
        v0 = vals[np.arange(len(k)), k - 1]
        frac = np.clip((0.5 - v0) / np.maximum(v1 - v0, 1e-6), 0.0, 1.0)
        depth[rr[hit], cc[hit]] = np.maximum(t[hit, 0] + (k[hit] - 1 + frac[hit]) * step, 0.0)
        keep = ~hit & (t0 + window * step <= t_far)
        rr, cc, base, t0 = rr[keep], cc[keep], base[keep], t0[keep] + window * step
    rows = (nh - np.arange(2 * nh + 1))[:, None, None] * px * up
    cols = (np.arange(2 * nw + 1) - nw)[None, :, None] * px * right
    hit_world = grid.center + rows + cols + (depth[..., None] - nd * px) * forward
    return depth, hit_world


def depth_map(mask: np.ndarray, affine: np.ndarray, *, azimuth_deg: float,
              elevation_deg: float = 0.0, pixel_mm: float = 1.0, grid: ViewGrid | None = None,
              smooth_sigma: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Orthographic depth map of a binary mask seen from one view.

    The mask is smoothed (``smooth_sigma`` voxels) and sampled with linear
    interpolation along the rays of a rotated grid of ``pixel_mm`` pixels;
    the first sample >= 0.5 gives the hit, refined by linear interpolation.

    Parameters
    ----------
    mask, affine : binary mask (X, Y, Z) and its 4x4 voxel-to-world affine.
    azimuth_deg, elevation_deg : view direction (module docstring, ``VIEWS``).
    pixel_mm : pixel size; ignored when ``grid`` is given (``grid.pixel_mm``).
    grid : framing (:class:`ViewGrid`); default :func:`view_grid` of ``mask``.

    Returns
    -------
    depth : ndarray, shape (H, W)
        Distance in mm from the front plane of the view, NaN on background.
        Row 0 is the top of the image (+z), the centre pixel is on the ray
        through ``grid.center``.
    hit_world : ndarray, shape (H, W, 3)
        World coordinates (mm) of the hit points, NaN on background.
    """
    if grid is None:
        grid = view_grid(mask, affine, pixel_mm=pixel_mm)
    return _cast(_prepare(mask, affine, smooth_sigma), grid, azimuth_deg, elevation_deg)


def shade(depth: np.ndarray, *, pixel_mm: float,
          light_dir: Sequence[float] = (-0.45, 0.55, 0.75), ambient: float = 0.12) -> np.ndarray:
    """Lambert shading of a depth map; background (NaN) becomes white (1).

    Normals come from ``np.gradient`` of the depth (background filled with
    the farthest depth, which darkens the silhouette rim). ``light_dir`` is
    in camera coordinates (image right, image up, towards the viewer); the
    default lights from the upper left front.

    Examples
    --------
    >>> s = shade(np.array([[np.nan, 5.0], [5.0, 5.0]]), pixel_mm=1.0)
    >>> float(s[0, 0]), bool(0 < s[1, 1] <= 1)
    (1.0, True)
    """
    bg = np.isnan(depth)
    filled = np.where(bg, np.nanmax(depth) if not bg.all() else 0.0, depth)
    d_row, d_col = np.gradient(filled, pixel_mm)
    normal = np.stack([d_col, -d_row, np.ones_like(filled)], axis=-1)
    normal /= np.linalg.norm(normal, axis=-1, keepdims=True)
    light = np.asarray(light_dir, float) / np.linalg.norm(light_dir)
    lambert = np.clip(normal @ light, 0.0, 1.0)
    return np.where(bg, 1.0, ambient + (1.0 - ambient) * lambert)


def project_points(points_world: np.ndarray, *, azimuth_deg: float, elevation_deg: float = 0.0,
                   grid: ViewGrid) -> np.ndarray:
    """Pixel coordinates (row, col) of world points in a view's image.

    Examples
    --------
    >>> g = ViewGrid(np.zeros(3), 10.0, 10.0, 1.0)
    >>> project_points([[0, 50, 0], [-3, 0, 2]], azimuth_deg=0, grid=g).tolist()
    [[10.0, 10.0], [8.0, 13.0]]
    """
    right, up, _ = camera_axes(azimuth_deg, elevation_deg)
    nh, nw, _ = _image_size(grid, elevation_deg)
    rel = np.atleast_2d(np.asarray(points_world, float)) - grid.center
    rows = nh - rel @ up / grid.pixel_mm
    cols = nw + rel @ right / grid.pixel_mm
    return np.stack([rows, cols], axis=-1)


def estimate_eyes(mask: np.ndarray, affine: np.ndarray, *, grid: ViewGrid | None = None,
                  eye_above_nose_mm: float = 35.0, half_ipd_mm: float = 32.0) -> np.ndarray:
    """Guess the two eye positions (world mm) of a head whose face is at +y.

    Heuristic, on the frontal depth map (the most anterior surface):
    the vertex is the highest row hit; the nose tip is the most anterior
    point within 20 mm of the face midline and 100-200 mm below the vertex
    (adult vertex-to-nose-tip is about 150 mm); the eyes are
    ``eye_above_nose_mm`` above and ``half_ipd_mm`` to either side of the
    nose tip, placed on the surface (median hit point of a 7 mm patch).
    Meant for intact heads; for a defaced head pass the eyes estimated on
    the original.

    Returns
    -------
    ndarray, shape (2, 3)
        Right eye (+x) first, then left eye.
    """
    if grid is None:
        grid = view_grid(mask, affine, pixel_mm=1.0)
    depth, hit = depth_map(mask, affine, azimuth_deg=0.0, grid=grid)
    px = grid.pixel_mm
    hit_rows = np.nonzero(np.isfinite(depth).any(axis=1))[0]
    top = hit_rows[0]
    band = np.arange(top + int(100 / px), min(top + int(200 / px), depth.shape[0]))
    band = band if band.size else hit_rows
    cols_hit = np.nonzero(np.isfinite(depth[band]).any(axis=0))[0]
    mid = 0.5 * (cols_hit[0] + cols_hit[-1])
    sub = np.full(depth.shape, np.inf)
    c0, c1 = int(mid - 20 / px), int(mid + 20 / px) + 1
    sub[band, c0:c1] = np.nan_to_num(depth[band, c0:c1], nan=np.inf)
    nose = hit[np.unravel_index(np.argmin(sub), sub.shape)]
    right, up, _ = camera_axes(0.0)
    eyes = []
    for side in (-1.0, 1.0):  # image right is world -x: -1 gives the +x eye
        guess = nose + eye_above_nose_mm * up + side * half_ipd_mm * right
        r, c = np.rint(project_points(guess, azimuth_deg=0.0, grid=grid)[0]).astype(int)
        h = max(1, int(3.5 / px))
        patch = hit[max(r - h, 0):r + h + 1, max(c - h, 0):c + h + 1].reshape(-1, 3)
        patch = patch[np.isfinite(patch[:, 0])]
        eyes.append(np.median(patch, axis=0) if len(patch) else guess)
    return np.array(eyes)


def _eye_bar_mask(shape, eyes_px, *, pixel_mm, thickness_mm=30.0, margin_mm=20.0):
    """Boolean image of a bar through the projected eyes (row, col pixels)."""
    p1, p2 = np.asarray(eyes_px[0], float), np.asarray(eyes_px[1], float)
    u = p2 - p1
    if np.linalg.norm(u) * pixel_mm < 10.0:  # profile: eyes coincide
        u = np.array([0.0, 1.0])
    u /= np.linalg.norm(u)
    n = np.array([-u[1], u[0]])
    mid = 0.5 * (p1 + p2)
    rr, cc = np.mgrid[: shape[0], : shape[1]]
    rel = np.stack([rr - mid[0], cc - mid[1]], axis=-1)
    s, t = rel @ u, rel @ n
    half_len = 0.5 * abs((p2 - p1) @ u) + margin_mm / pixel_mm
    return (np.abs(s) <= half_len) & (np.abs(t) <= 0.5 * thickness_mm / pixel_mm)


def _eyes_visible(eyes_world, grid, azimuth_deg, elevation_deg) -> bool:
    """True when the camera is not behind the face (eyes' side of the head)."""
    face = (np.mean(eyes_world, axis=0) - grid.center) * (1.0, 1.0, 0.0)
    forward = camera_axes(azimuth_deg, elevation_deg)[2]
    return float(-forward @ face) > -0.2 * float(np.linalg.norm(face))


def _paint_values(shading, hit, values, values_affine, cmap, vmin, vmax):
    """RGB image: colormap of the voxel value at each hit blended with shading."""
    import matplotlib

    rgb = np.repeat(shading[..., None], 3, axis=-1)
    inv = np.linalg.inv(np.asarray(values_affine, float))
    ok = np.isfinite(hit[..., 0])
    ijk = np.rint(hit[ok] @ inv[:3, :3].T + inv[:3, 3]).astype(int)
    inb = np.all((ijk >= 0) & (ijk < np.array(values.shape)), axis=1)
    vals = np.full(len(ijk), np.nan)
    vals[inb] = values[tuple(ijk[inb].T)]
    good = np.isfinite(vals)
    norm = matplotlib.colors.Normalize(vmin=vmin, vmax=vmax)
    colours = matplotlib.colormaps[cmap](norm(vals[good]))[:, :3]
    sub = rgb[ok]
    sub[good] = colours * (0.35 + 0.65 * sub[good])  # keep the shape readable
    rgb[ok] = sub
    return rgb


def _render(scene, grid, azimuth_deg, elevation_deg, *, eyes_world, values, values_affine,
            cmap, vmin, vmax):
    """RGB image of one view of a prepared scene (see :func:`render_view`)."""
    depth, hit = _cast(scene, grid, azimuth_deg, elevation_deg)
    shading = shade(depth, pixel_mm=grid.pixel_mm)
    if values is None:
        rgb = np.repeat(shading[..., None], 3, axis=-1)
    else:
        vaff = scene.affine if values_affine is None else values_affine
        rgb = _paint_values(shading, hit, np.asarray(values, float), vaff, cmap, vmin, vmax)
    if eyes_world is not None and _eyes_visible(eyes_world, grid, azimuth_deg, elevation_deg):
        eyes_px = project_points(eyes_world, azimuth_deg=azimuth_deg,
                                 elevation_deg=elevation_deg, grid=grid)
        rgb[_eye_bar_mask(depth.shape, eyes_px, pixel_mm=grid.pixel_mm)] = 0.0
    return rgb


def render_view(mask: np.ndarray, affine: np.ndarray, *, azimuth_deg: float,
                elevation_deg: float = 0.0, grid: ViewGrid | None = None, pixel_mm: float = 1.0,
                eyes_world: np.ndarray | None = None, values: np.ndarray | None = None,
                values_affine: np.ndarray | None = None, cmap: str = "viridis",
                vmin: float | None = None, vmax: float | None = None,
                smooth_sigma: float = 1.0) -> np.ndarray:
    """One view as an (H, W, 3) RGB float image in [0, 1].

    Grey shaded surface; coloured by ``values`` (voxel map on
    ``values_affine``, default ``affine``) where given and finite, NaN
    values keep the plain shading; an opaque black (0) eye bar is drawn
    when ``eyes_world`` is given and the eyes face the camera.
    """
    if grid is None:
        grid = view_grid(mask, affine, pixel_mm=pixel_mm)
    scene = _prepare(mask, affine, smooth_sigma)
    return _render(scene, grid, azimuth_deg, elevation_deg, eyes_world=eyes_world,
                   values=values, values_affine=values_affine, cmap=cmap, vmin=vmin, vmax=vmax)


def _value_range(values, vmin, vmax):
    """Colour limits shared by all views (finite min/max unless given)."""
    if values is None:
        return vmin, vmax
    finite = np.asarray(values, float)[np.isfinite(values)]
    lo = float(finite.min()) if vmin is None and finite.size else vmin
    hi = float(finite.max()) if vmax is None and finite.size else vmax
    return lo, hi


def render_views(mask: np.ndarray, affine: np.ndarray, *, views: Sequence[str] = tuple(VIEWS),
                 pixel_mm: float = 1.0, eye_bar: bool = False,
                 eyes_world: np.ndarray | None = None, values: np.ndarray | None = None,
                 values_affine: np.ndarray | None = None, cmap: str = "viridis",
                 vmin: float | None = None, vmax: float | None = None,
                 axes: Sequence | None = None, title: str | None = None,
                 grid: ViewGrid | None = None, elevation_deg: float = 0.0,
                 view_titles: bool = True, smooth_sigma: float = 1.0,
                 values_label: str = "distance (mm)"):
    """Render a head in several views (default the five of ``VIEWS``).

    Parameters
    ----------
    mask, affine : binary head mask (X, Y, Z) and its 4x4 voxel-to-world affine.
    views : keys of ``VIEWS``, one panel each, left to right.
    eye_bar, eyes_world : cover the eyes (``eyes_world`` (2, 3) world mm, or
        :func:`estimate_eyes`) with an opaque black bar in every view facing them.
    values, values_affine, cmap, vmin, vmax, values_label : optional voxel
        map coloured at each hit point (nearest voxel; NaN keeps the grey).
    axes : existing axes to draw into (one per view); else a new figure
        (with a colour bar when ``values`` is given).
    grid : shared :class:`ViewGrid` (default: framing of ``mask``).

    Returns
    -------
    matplotlib.figure.Figure
    """
    import matplotlib.pyplot as plt

    if grid is None:
        grid = view_grid(mask, affine, pixel_mm=pixel_mm)
    if eye_bar and eyes_world is None:
        eyes_world = estimate_eyes(mask, affine, grid=grid)
    vmin, vmax = _value_range(values, vmin, vmax)
    new = axes is None
    if new:
        nh, nw, _ = _image_size(grid, elevation_deg)
        size = (2.6 * len(views), 2.6 * (2 * nh + 1) / (2 * nw + 1) + 0.5)
        fig, axes = plt.subplots(1, len(views), figsize=size, squeeze=False)
        axes = axes[0]
    fig = axes[0].figure
    scene = _prepare(mask, affine, smooth_sigma)
    for ax, name in zip(axes, views):
        rgb = _render(scene, grid, VIEWS[name], elevation_deg,
                      eyes_world=eyes_world if eye_bar else None, values=values,
                      values_affine=values_affine, cmap=cmap, vmin=vmin, vmax=vmax)
        ax.imshow(rgb, interpolation="antialiased")
        ax.set_axis_off()
        if view_titles:
            ax.set_title(VIEW_LABELS.get(name, name), fontsize=9)
    if values is not None and new:
        import matplotlib as mpl

        sm = mpl.cm.ScalarMappable(mpl.colors.Normalize(vmin, vmax), cmap=cmap)
        fig.colorbar(sm, ax=list(axes), shrink=0.7, label=values_label)
    if title:
        fig.suptitle(title)
    return fig


def render_grid(rows: dict, *, labels: dict | None = None, eye_bar: bool = False,
                eyes_world: np.ndarray | None = None, pixel_mm: float = 1.0,
                views: Sequence[str] = tuple(VIEWS)):
    """Rows of views, one row per head, with a label left of each row.

    ``rows`` maps a row name to ``(mask, affine)``. All rows share one
    :class:`ViewGrid` (framing of all masks together), so pixels line up
    across rows. Without ``eyes_world`` the eyes are estimated on the FIRST
    row (put the intact original first) and reused for every row.
    """
    import matplotlib.pyplot as plt

    corners = np.concatenate([_mask_corners_world(m, a) for m, a in rows.values()])
    grid = _grid_from_points(corners, pixel_mm=pixel_mm, margin_mm=5.0)
    if eye_bar and eyes_world is None:
        first_mask, first_affine = next(iter(rows.values()))
        eyes_world = estimate_eyes(first_mask, first_affine, grid=grid)
    n, m = len(rows), len(views)
    nh, nw, _ = _image_size(grid, 0.0)
    panel_h = 2.4 * (2 * nh + 1) / (2 * nw + 1) + 0.3
    fig, axes = plt.subplots(n, m, figsize=(2.4 * m + 1.2, panel_h * n), squeeze=False)
    for i, (name, (mask, affine)) in enumerate(rows.items()):
        render_views(mask, affine, views=views, axes=axes[i], grid=grid, eye_bar=eye_bar,
                     eyes_world=eyes_world, view_titles=(i == 0))
        label = (labels or {}).get(name, name)
        axes[i, 0].text(-0.04, 0.5, label, transform=axes[i, 0].transAxes,
                        ha="right", va="center", fontsize=10)
    return fig
