"""Re-identification: face MSDs on synthetic heads, paired tests, matching, plots."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from refacelib.evaluation import reid  # noqa: E402
from refacelib.imaging import surface
from refacelib.report import reid_plots

N, VOX = 48, 2.0
AFFINE = np.diag([VOX, VOX, VOX, 1.0])
AFFINE[:3, 3] = -VOX * (N - 1) / 2  # world origin at the grid centre
HEAD_R = 30.0


def _world():
    ijk = np.indices((N, N, N)).reshape(3, -1).T.astype(float)
    return (ijk @ AFFINE[:3, :3].T + AFFINE[:3, 3]).reshape(N, N, N, 3)


XYZ = _world()


def head(nose_r=8.0, *, nose_dx=0.0, value=100.0):
    """Ball head with a spherical nose bump on its +y side."""
    inside = np.linalg.norm(XYZ, axis=-1) <= HEAD_R
    if nose_r > 0:
        inside |= np.linalg.norm(XYZ - [nose_dx, HEAD_R, 0.0], axis=-1) <= nose_r
    return np.where(inside, value, 0.0)


REGION = (XYZ[..., 1] > 14.0) & (np.abs(XYZ[..., 0]) < 22.0) & (np.abs(XYZ[..., 2]) < 22.0)


@pytest.fixture(scope="module")
def original():
    return head(8.0)


def test_identical_zero_and_symmetric(original):
    ref = reid.face_surface(original, AFFINE, REGION)
    assert ref.shape[1] == 3 and len(ref) > 50
    assert reid.candidate_msd(original, {"same": original.copy()}, AFFINE, REGION) == {"same": 0.0}
    other = reid.face_surface(head(12.0), AFFINE, REGION)
    assert reid.surface_msd(other, ref) == pytest.approx(reid.surface_msd(ref, other))
    assert reid.surface_msd(other, ref) > 0


def test_msd_monotone_in_nose_size(original):
    cands = {"n10": head(10.0), "n12": head(12.0), "n14": head(14.0)}
    msd = reid.candidate_msd(original, cands, AFFINE, REGION)
    assert 0 < msd["n10"] < msd["n12"] < msd["n14"]
    assert list(msd) == list(cands)


def test_surface_only_within_region(original):
    """Voxels outside the region (and its crop margin) do not change the MSD."""
    cand = head(11.0)
    base = reid.candidate_msd(original, {"c": cand}, AFFINE, REGION, threshold=50.0)["c"]
    extra = cand.copy()
    extra[np.linalg.norm(XYZ - [0.0, -HEAD_R, 0.0], axis=-1) <= 10] = 100.0  # occiput bump
    extra[XYZ[..., 2] < -30] = 0.0  # chop the bottom
    moved = reid.candidate_msd(original, {"c": extra}, AFFINE, REGION, threshold=50.0)["c"]
    assert moved == base > 0
    # the crop box does not change the surface either
    full = reid.face_surface(cand, AFFINE, REGION, threshold=50.0, margin_vox=40)
    crop = reid.face_surface(cand, AFFINE, REGION, threshold=50.0)
    np.testing.assert_allclose(np.sort(full, axis=0), np.sort(crop, axis=0), atol=1e-4)  # float32 mc


def test_defaced_and_empty_surfaces(original):
    defaced = np.where(REGION, 0.0, original)
    msd = reid.candidate_msd(original, {"defaced": defaced, "n10": head(10.0)}, AFFINE, REGION)
    assert np.isnan(msd["defaced"]) or msd["defaced"] > msd["n10"]
    empty = reid.face_surface(head(8.0) * (~REGION), AFFINE, REGION,
                              threshold=50.0, margin_vox=0)
    assert empty.shape[1] == 3
    assert np.isnan(reid.surface_msd(np.zeros((0, 3)), reid.face_surface(original, AFFINE,
                                                                         REGION)))


def test_vertex_distance_volume(original):
    vol = reid.vertex_distance_volume(head(12.0), original, AFFINE, REGION)
    assert vol.shape == original.shape
    finite = np.isfinite(vol)
    near_region = ndi.binary_dilation(REGION, iterations=2)  # painting + fill_vox=1 reach
    assert finite.any() and not finite[~near_region].any()
    assert np.nanmin(vol) >= 0 and np.nanmax(vol) > 2.0
    same = reid.vertex_distance_volume(original, original, AFFINE, REGION, fill_vox=0)
    assert np.nanmax(same) == 0.0


# --------------------------------------------------------------------------- sub-voxel known answers
PV_R = 30.0  # sphere radius (mm)
PV_C = np.array([0.3, -0.7, 0.45])  # off the voxel grid


def _grid_affine(spacing, rotation=np.eye(3), half_extent_mm=39.0):
    """Grid shape and affine whose centre maps to world 0, covering +-half_extent_mm."""
    spacing = np.asarray(spacing, float)
    shape = tuple(int(np.ceil(2 * half_extent_mm / s)) + 1 for s in spacing)
    affine = np.eye(4)
    affine[:3, :3] = rotation @ np.diag(spacing)
    affine[:3, 3] = -affine[:3, :3] @ ((np.array(shape) - 1) / 2.0)
    return shape, affine


def _pv_sphere(shape, affine, radius, center, *, supersample=4, inside=100.0):
    """Partial-volume image of a sphere: each voxel holds the fraction of it inside, x100.

    The fraction is estimated on a ``supersample**3`` grid of sub-voxel points
    (voxel = the parallelepiped of the affine around the voxel centre).
    """
    off = (np.arange(supersample) + 0.5) / supersample - 0.5
    ijk = np.indices(shape).reshape(3, -1).T.astype(float)
    centre_mm = ijk @ affine[:3, :3].T + affine[:3, 3] - center
    frac = np.zeros(len(ijk))
    for o in np.stack(np.meshgrid(off, off, off, indexing="ij"), -1).reshape(-1, 3):
        p = centre_mm + affine[:3, :3] @ o
        frac += np.einsum("ij,ij->i", p, p) <= radius * radius
    return inside * (frac / supersample**3).reshape(shape)


def _analytic_sphere_msd(ca, ra, cb, rb, n=200_000):
    """Symmetric mean distance between two exact spheres, sampled uniformly (Fibonacci)."""
    i = np.arange(n) + 0.5
    phi, theta = np.arccos(1 - 2 * i / n), np.pi * (1 + 5**0.5) * i
    u = np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], 1)
    d_ab = np.abs(np.linalg.norm(ca + ra * u - cb, axis=1) - rb).mean()
    d_ba = np.abs(np.linalg.norm(cb + rb * u - ca, axis=1) - ra).mean()
    return 0.5 * (d_ab + d_ba)


@pytest.fixture(scope="module")
def pv_grid():
    shape, affine = _grid_affine((2.0, 2.0, 2.0))
    return shape, affine, np.ones(shape, bool)


@pytest.fixture(scope="module")
def pv_base(pv_grid):
    shape, affine, region = pv_grid
    image = _pv_sphere(shape, affine, PV_R, PV_C)
    return image, reid.face_mesh(image, affine, region, threshold=50.0)


def test_face_mesh_is_a_subvoxel_world_mm_surface(pv_grid, pv_base):
    _, _, _ = pv_grid
    image, mesh = pv_base
    assert isinstance(mesh, surface.Mesh)
    assert mesh.verts.dtype == np.float64 and mesh.faces.shape[1] == 3
    assert mesh.faces.min() == 0 and mesh.faces.max() == len(mesh.verts) - 1
    radius = np.linalg.norm(mesh.verts - PV_C, axis=1)
    # level 50 of the smoothed partial-volume image: 0.15 mm inside (curvature of the blur)
    assert abs(radius.mean() - PV_R) < 0.3 and radius.std() < 0.1


def test_grown_sphere_measures_its_growth(pv_grid, pv_base):
    """Sub-voxel: a sphere grown by 0.2 mm measures 0.2 mm; 0.1 < 0.2 < 0.4 in order."""
    shape, affine, region = pv_grid
    _, base = pv_base
    msd = {}
    for grow in (0.1, 0.2, 0.4):
        grown = reid.face_mesh(_pv_sphere(shape, affine, PV_R + grow, PV_C), affine, region,
                               threshold=50.0)
        msd[grow] = reid.surface_msd(grown, base)
        assert abs(msd[grow] - grow) < 0.05, (grow, msd[grow])
    assert 0 < msd[0.1] < msd[0.2] < msd[0.4]
    # the former nearest-vertex metric (kept for bare vertex arrays) cannot see 0.2 mm
    grown = reid.face_mesh(_pv_sphere(shape, affine, PV_R + 0.2, PV_C), affine, region,
                           threshold=50.0)
    assert reid.surface_msd(grown.verts, base.verts) > 0.25


def test_shifted_sphere_matches_the_analytic_distance(pv_grid, pv_base):
    shape, affine, region = pv_grid
    _, base = pv_base
    for shift in ([0.5, 0.0, 0.0], [0.0, 0.3, -0.4]):
        c = PV_C + shift
        moved = reid.face_mesh(_pv_sphere(shape, affine, PV_R, c), affine, region, threshold=50.0)
        expected = _analytic_sphere_msd(PV_C, PV_R, c, PV_R)
        assert abs(expected - 0.25) < 0.01  # |shift| 0.5: mean |cos| = 1/2
        ab, ba = reid.surface_msd(moved, base), reid.surface_msd(base, moved)
        assert abs(ab - expected) < 0.05, (shift, ab, expected)
        assert ab == pytest.approx(ba, rel=1e-12)  # symmetric


def test_surface_offset_has_the_sign_and_size_of_a_growth(pv_grid, pv_base):
    """Known answer: a sphere shrunk by 0.3 mm sits 0.3 mm inside, one grown by 0.3 mm outside."""
    shape, affine, region = pv_grid
    image, base = pv_base
    for grow in (-0.3, 0.3):
        mesh = reid.face_mesh(_pv_sphere(shape, affine, PV_R + grow, PV_C), affine, region, threshold=50.0)
        offset = reid.surface_offset(mesh, base, image, affine, threshold=50.0)
        assert abs(offset - grow) < 0.05, (grow, offset)
    # a shift moves half the surface out and half in: the mean offset is about zero, the MSD is not
    moved = reid.face_mesh(_pv_sphere(shape, affine, PV_R, PV_C + [0.5, 0, 0]), affine, region, threshold=50.0)
    assert abs(reid.surface_offset(moved, base, image, affine, threshold=50.0)) < 0.05
    assert reid.surface_msd(moved, base) > 0.2


def test_msd_and_offset_equal_the_two_functions_bit_for_bit(pv_grid, pv_base):
    """The evaluation's one-pass measurement gives exactly surface_msd and surface_offset (and NaN when empty)."""
    shape, affine, region = pv_grid
    image, base = pv_base
    target = surface.index_mesh(base)
    smoothed = ndi.gaussian_filter(np.asarray(image, np.float64), 1.0)
    for grow, shift in ((-0.3, 0.0), (0.3, 0.4), (0.0, 0.5)):
        mesh = reid.face_mesh(_pv_sphere(shape, affine, PV_R + grow, PV_C + [shift, 0, 0]), affine, region,
                              threshold=50.0)
        msd, offset = reid.msd_and_offset(mesh, target, smoothed, affine, threshold=50.0)
        assert msd == reid.surface_msd(mesh, target)
        assert offset == reid.surface_offset(mesh, target, image, affine, threshold=50.0)
        assert msd > 0.1  # every one of them moved
        assert (np.sign(offset) == np.sign(grow)) if grow else abs(offset) < 0.05
    empty = surface.Mesh.empty()
    assert np.isnan(reid.msd_and_offset(empty, target, smoothed, affine, threshold=50.0)).all()


def test_identical_images_measure_zero(pv_grid, pv_base):
    shape, affine, region = pv_grid
    image, base = pv_base
    again = reid.face_mesh(image.copy(), affine, region, threshold=50.0)
    assert reid.surface_msd(again, base) == 0.0
    assert reid.candidate_msd(image, {"same": image.copy()}, affine, region,
                              threshold=50.0) == {"same": 0.0}


def test_default_threshold_keeps_distances(pv_grid, pv_base):
    """The default (half-Otsu) level sits outside the edge but distances stay unbiased."""
    shape, affine, region = pv_grid
    image, _ = pv_base
    base = reid.face_mesh(image, affine, region)
    assert np.linalg.norm(base.verts - PV_C, axis=1).mean() > PV_R + 0.5
    grown = reid.face_mesh(_pv_sphere(shape, affine, PV_R + 0.2, PV_C), affine, region)
    assert abs(reid.surface_msd(grown, base) - 0.2) < 0.05


def test_oblique_anisotropic_affine():
    axis = np.array([1.0, 2.0, 3.0]) / np.sqrt(14.0)
    a = np.deg2rad(25.0)
    k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
    rotation = np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * k @ k
    shape, affine = _grid_affine((2.0, 1.6, 2.4), rotation)
    region = np.ones(shape, bool)
    base_img = _pv_sphere(shape, affine, PV_R, PV_C)
    base = reid.face_mesh(base_img, affine, region, threshold=50.0)
    radius = np.linalg.norm(base.verts - PV_C, axis=1)
    assert abs(radius.mean() - PV_R) < 0.3 and radius.std() < 0.15  # world mm, a sphere
    grown = reid.face_mesh(_pv_sphere(shape, affine, PV_R + 0.2, PV_C), affine, region,
                           threshold=50.0)
    assert abs(reid.surface_msd(grown, base) - 0.2) < 0.05
    c = PV_C + [0.0, 0.5, 0.0]
    moved = reid.face_mesh(_pv_sphere(shape, affine, PV_R, c), affine, region, threshold=50.0)
    assert abs(reid.surface_msd(moved, base) - _analytic_sphere_msd(PV_C, PV_R, c, PV_R)) < 0.05


def test_face_mesh_region_cut_and_empty(pv_grid, pv_base):
    shape, affine, _ = pv_grid
    image, _ = pv_base
    ijk = np.indices(shape).reshape(3, -1).T
    world = (ijk @ affine[:3, :3].T + affine[:3, 3]).reshape(*shape, 3)
    front = world[..., 1] > 10.0  # a generous face-like box: the sphere's +y cap
    cap = reid.face_mesh(image, affine, front, threshold=50.0)
    assert len(cap.verts) > 100 and cap.verts[:, 1].min() > 10.0 - 1.0
    assert cap.faces.max() == len(cap.verts) - 1  # no unused vertices
    np.testing.assert_array_equal(reid.face_surface(image, affine, front, threshold=50.0),
                                  cap.verts)
    grown = reid.face_mesh(_pv_sphere(shape, affine, PV_R + 0.2, PV_C), affine, front,
                           threshold=50.0)
    assert abs(reid.surface_msd(grown, cap) - 0.2) < 0.05
    # empty region, or no surface inside it: empty mesh and NaN
    empty = reid.face_mesh(image, affine, np.zeros(shape, bool), threshold=50.0)
    assert empty.verts.shape == (0, 3) and empty.faces.shape == (0, 3)
    assert np.isnan(reid.surface_msd(empty, cap)) and np.isnan(reid.surface_msd(cap, empty))
    air = world[..., 0] > 35.0  # outside the sphere
    assert len(reid.face_mesh(image, affine, air, threshold=50.0).verts) == 0
    assert np.isnan(reid.candidate_msd(image, {"c": image}, affine, air, threshold=50.0)["c"])


def test_face_mesh_keeps_only_the_outer_skin(pv_grid, pv_base):
    """A dark cavity inside and a bright blob in the air make no surface."""
    shape, affine, region = pv_grid
    image, base = pv_base
    cavity = _pv_sphere(shape, affine, 8.0, PV_C + [4.0, 0.0, 0.0])
    blob = _pv_sphere(shape, affine, 3.0, np.array([0.0, 0.0, 35.5]))
    noisy = image - cavity + blob
    mesh = reid.face_mesh(noisy, affine, region, threshold=50.0)
    radius = np.linalg.norm(mesh.verts - PV_C, axis=1)
    assert abs(radius - PV_R).max() < 0.5
    assert reid.surface_msd(mesh, base) < 1e-3  # the outer skin only, unchanged


def _msd_fixture():
    rng = np.random.default_rng(0)
    rows = []
    for method, gap in (("m1", 1.0), ("m2", 0.3)):
        for s in range(10):
            avg = 3.0 + rng.random()
            for cand, v in (("average", avg), ("refaced_mean", avg - gap * (1 + 0.1 * s)),
                            ("refaced", avg + (0.2 if s % 2 else -0.3) * (s + 1))):
                rows.append(dict(subject=f"s{s}", test_set="t1", method=method,
                                 candidate=cand, msd_mm=v))
    return reid.msd_table(rows)


def test_wilcoxon_known_outcome():
    res = reid.wilcoxon_tests(_msd_fixture())
    assert list(res.columns) == ["method", "test_set", "estimator", "baseline", "n", "n_closer",
                                 "W", "p", "p_holm", "rbc", "median_diff_mm", "hl_diff_mm",
                                 "ci_low_mm", "ci_high_mm", "test"]
    mean = res[res["estimator"] == "refaced_mean"].set_index("method")
    # refaced_mean < average for all 10 subjects: exact two-sided p = 2 / 2**10
    assert (mean["n"] == 10).all() and (mean["W"] == 0).all()
    np.testing.assert_allclose(mean["p"], 2 / 1024)
    # pingouin's RBC is of estimator - baseline: -1 when the estimator is always closer
    assert (mean["rbc"] == -1).all() and (mean["median_diff_mm"] < 0).all()
    assert (mean["n_closer"] == 10).all()
    assert (mean["hl_diff_mm"] < 0).all() and (mean["ci_high_mm"] < 0).all()
    assert (mean["ci_low_mm"] <= mean["hl_diff_mm"]).all()
    assert (mean["hl_diff_mm"] <= mean["ci_high_mm"]).all()
    np.testing.assert_allclose(mean["p_holm"], 2 * 2 / 1024)  # Holm over 2 methods, tied p
    one = res[res["estimator"] == "refaced"].set_index("method")
    p = one["p"].to_numpy()
    assert one["p_holm"].min() == pytest.approx(min(2 * p.min(), 1.0))
    assert one["p_holm"].max() == pytest.approx(min(max(2 * p.min(), p.max()), 1.0))


def test_wilcoxon_nan_pairs_and_template_baseline():
    msd = _msd_fixture()
    msd.loc[(msd["subject"] == "s0") & (msd["candidate"] == "average"), "msd_mm"] = np.nan
    tmpl = msd[msd["candidate"] == "average"].assign(candidate="template_average")
    tmpl = tmpl[tmpl["subject"].isin(["s1"])]  # a single pair only
    both = pd.concat([reid.wilcoxon_tests(msd),
                      reid.wilcoxon_tests(pd.concat([msd, tmpl]), baseline="template_average")])
    avg = both[both["baseline"] == "average"]
    assert (avg["n"] == 9).all()
    tpl = both[both["baseline"] == "template_average"]
    assert (tpl["n"] == 1).all() and tpl["p"].isna().all() and tpl["p_holm"].isna().all()


def _walsh(d):
    return np.sort([(d[i] + d[j]) / 2 for i in range(len(d)) for j in range(i, len(d))])


@pytest.mark.parametrize("level", [0.8, 0.9, 0.95, 0.99])
def test_hodges_lehmann_against_brute_force(level):
    import itertools

    d = np.random.default_rng(3).normal(0.4, 1.0, size=9)
    n = d.size
    # null distribution of T+ by enumerating the 2**n sign patterns
    t_plus = np.array([sum(r for r, s in zip(range(1, n + 1), signs) if s)
                       for signs in itertools.product((0, 1), repeat=n)])
    k = max(k for k in range(0, n * (n + 1) // 2)
            if 2 * np.mean(t_plus <= k - 1) <= 1 - level + 1e-12)
    assert k >= 1 and 2 * np.mean(t_plus <= k) > 1 - level  # largest k: achieved level >= level
    w = _walsh(d)
    est, lo, hi = reid.hodges_lehmann(d, level=level)
    assert est == pytest.approx(np.median(w))
    assert (lo, hi) == (pytest.approx(w[k - 1]), pytest.approx(w[len(w) - k]))


def test_hodges_lehmann_by_hand():
    # d = 1..10: Walsh sums i + j (i <= j) counted 1,1,2,2,3 for 2..6, so W_(9) = 6/2
    assert reid.hodges_lehmann(np.arange(1.0, 11.0)) == (5.5, 3.0, 8.0)  # n = 10: k = 9 of 55
    assert reid.hodges_lehmann([1.0, 3.0, 2.0]) == (2.0, -np.inf, np.inf)  # 95 % not achievable
    est, lo, hi = reid.hodges_lehmann([1.0, 3.0, 2.0], level=0.7)  # k = 1: min and max
    assert (est, lo, hi) == (2.0, 1.0, 3.0)


def test_hodges_lehmann_coverage():
    rng = np.random.default_rng(7)
    shift, hits = 0.7, 0
    for _ in range(400):
        d = shift + rng.standard_t(df=4, size=15)
        _, lo, hi = reid.hodges_lehmann(d)
        hits += lo <= shift <= hi
    assert 0.92 <= hits / 400 <= 0.99


def test_hodges_lehmann_symmetry_level_and_nans():
    core = np.array([-3.0, -1.0, -0.5, 0.0, 0.5, 1.0, 3.0])
    est, lo, hi = reid.hodges_lehmann(core + 0.7)
    assert est == pytest.approx(0.7) and lo < 0.7 < hi
    rng = np.random.default_rng(11)
    x, y = rng.normal(3.0, 1.0, 30), rng.normal(3.2, 1.0, 30)
    e, lo, hi = reid.hodges_lehmann(x - y)
    assert reid.hodges_lehmann(y - x) == (-e, -hi, -lo)  # antisymmetric, exactly
    _, lo80, hi80 = reid.hodges_lehmann(x - y, level=0.8)
    assert lo < lo80 <= e <= hi80 < hi  # a lower level narrows the interval
    with_nan = np.append(x - y, [np.nan, np.nan])
    assert reid.hodges_lehmann(with_nan) == (e, lo, hi)
    assert all(np.isnan(reid.hodges_lehmann([0.3, np.nan])))
    assert all(np.isnan(reid.hodges_lehmann([])))
    with pytest.raises(ValueError):
        reid.hodges_lehmann(x - y, level=1.0)
    big = rng.normal(-0.2, 1.0, 120)  # normal approximation (n > 50)
    e, lo, hi = reid.hodges_lehmann(big)
    assert np.isfinite([lo, hi]).all() and lo < e < hi and hi - lo < 0.6


def _paired_fixture(delta, n=12):
    rows = []
    for method in ("m1", "m2"):
        for s in range(n):
            avg = 3.0 + 0.25 * s
            for cand, v in (("average", avg), ("template_average", avg + 0.5),
                            ("refaced_mean", avg + delta)):
                rows.append(dict(subject=f"s{s}", test_set="t1", method=method,
                                 candidate=cand, msd_mm=v))
    return reid.msd_table(rows)


def test_wilcoxon_effect_sizes_on_fixed_shift():
    res = reid.wilcoxon_tests(_paired_fixture(-0.1), estimators=("refaced_mean",))
    assert (res["n"] == 12).all() and (res["n_closer"] == 12).all()
    np.testing.assert_allclose(res["hl_diff_mm"], -0.1, atol=1e-12)
    assert (res["ci_low_mm"] <= -0.1 + 1e-12).all() and (res["ci_high_mm"] >= -0.1 - 1e-12).all()
    assert (res["ci_high_mm"] < 0).all()  # excludes 0
    assert (res["p_holm"] < 0.05).all()


def test_wilcoxon_effect_sizes_on_zero_difference():
    res = reid.wilcoxon_tests(_paired_fixture(0.0), estimators=("refaced_mean",))
    assert (res["hl_diff_mm"] == 0).all() and (res["n_closer"] == 0).all()
    assert (res["ci_low_mm"] == 0).all() and (res["ci_high_mm"] == 0).all()
    assert res["p"].isna().all() and not (res["p_holm"] < 0.05).any()
    # symmetric noise around zero: shift 0, interval across 0, not significant
    msd = _paired_fixture(0.0)
    noise = np.tile([-0.3, 0.3, -0.1, 0.1, -0.2, 0.2, -0.05, 0.05, -0.4, 0.4, -0.15, 0.15], 2)
    msd.loc[msd["candidate"] == "refaced_mean", "msd_mm"] += noise
    res = reid.wilcoxon_tests(msd, estimators=("refaced_mean",))
    np.testing.assert_allclose(res["hl_diff_mm"], 0.0, atol=1e-12)
    assert (res["ci_low_mm"] < 0).all() and (res["ci_high_mm"] > 0).all()
    assert (res["p"] > 0.5).all() and (res["n_closer"] == 6).all()


def test_wilcoxon_several_baselines():
    msd = _paired_fixture(-0.1)
    both = reid.wilcoxon_tests(msd, baseline=("average", "template_average"))
    sep = pd.concat([reid.wilcoxon_tests(msd, baseline=b)
                     for b in ("average", "template_average")], ignore_index=True)
    pd.testing.assert_frame_equal(both, sep)
    pd.testing.assert_frame_equal(reid.wilcoxon_tests(msd, baseline=["average"]),
                                  reid.wilcoxon_tests(msd))
    tpl = both[both["baseline"] == "template_average"]
    np.testing.assert_allclose(tpl["hl_diff_mm"], -0.6, atol=1e-12)
    with pytest.raises(ValueError, match="defaced"):
        reid.wilcoxon_tests(msd, baseline=("average", "defaced"))


def test_summary_table():
    s = reid.summary_table(_msd_fixture())
    assert len(s) == 6 and (s["n"] == 10).all()
    extra = reid.summary_table(_msd_fixture().assign(extra="x"))  # extra columns are ignored
    pd.testing.assert_frame_equal(extra, s)
    row = s.iloc[0]
    assert row["q1_mm"] <= row["median_mm"] <= row["q3_mm"]
    assert row["summary"] == f"{row['median_mm']:.2f} [{row['q1_mm']:.2f}, {row['q3_mm']:.2f}]"


def test_identification_ranks_and_cmc():
    rng = np.random.default_rng(1)
    m = rng.random((6, 6)) + 1.0
    m[np.diag_indices(6)] = 0.5
    ranks = reid.identification_ranks(m)
    assert ranks.tolist() == [1] * 6
    assert reid.identification_rates(ranks) == {"top1": 1.0, "top5": 1.0}
    m = np.abs(np.subtract.outer(np.arange(6), np.arange(6))).astype(float)  # |i - j|
    perm = np.array([1, 0, 2, 3, 4, 5])  # candidates 0 and 1 swapped
    ranks = reid.identification_ranks(m[perm])
    # row 0 (now candidate of original 1): true distance 1, tied with column 2 -> rank 3
    assert ranks.tolist() == [3, 2, 1, 1, 1, 1]
    tied = np.array([[1.0, 1.0], [2.0, np.nan]])
    assert reid.identification_ranks(tied).tolist() == [2, 2]  # ties and NaN pessimistic
    curve = reid.cmc(ranks, 6)
    assert np.all(np.diff(curve) >= 0) and curve[-1] == 1.0
    np.testing.assert_allclose(curve, [4 / 6, 5 / 6, 1, 1, 1, 1])
    tab = reid.reid_table([dict(method="m", test_set="t", candidate="refaced", ranks=ranks)])
    assert list(tab.columns) == reid.REID_COLUMNS
    assert tab.iloc[0]["top1"] == pytest.approx(4 / 6) and tab.iloc[0]["n"] == 6


def test_msd_matrix_matching_attack():
    noses = [6.0, 9.0, 12.0]
    heads = [head(r, nose_dx=4.0 * i) for i, r in enumerate(noses)]
    origs = [reid.face_surface(h, AFFINE, REGION) for h in heads]
    cands = [reid.face_surface(head(r + 0.5, nose_dx=4.0 * i), AFFINE, REGION)
             for i, r in enumerate(noses)]
    m = reid.msd_matrix(cands, origs)
    assert m.shape == (3, 3)
    assert reid.identification_ranks(m).tolist() == [1, 1, 1]
    shift = origs[0] + [1.5, -1.0, 0.5]
    assert reid.surface_msd(reid.align_rigid(shift, origs[0]), origs[0]) < \
        0.5 * reid.surface_msd(shift, origs[0])
    aligned = reid.msd_matrix([shift], [origs[0]], align=True)[0, 0]
    assert aligned < 0.5 * reid.msd_matrix([shift], [origs[0]])[0, 0]


def test_plots_return_figures():
    msd = _msd_fixture()
    msd = pd.concat([msd, msd.assign(test_set="t2")])
    fig = reid_plots.plot_msd_distributions(msd, note="phantom (simulated data)")
    assert len(fig.axes) == 2
    assert any(t.get_text() == "phantom (simulated data)" for t in fig.texts)
    assert fig.axes[0].get_ylabel() == "MSD to the original face (mm)"
    plt.close(fig)
    fig = reid_plots.plot_bland_altman(msd, note="x")
    assert len(fig.axes) == 1
    plt.close(fig)
    fig = reid_plots.plot_cmc({"refaced": reid.cmc(np.array([1, 2, 3]), 3),
                               "average": reid.cmc(np.array([2, 3, 3]), 3)})
    assert len(fig.axes) == 1 and len(fig.axes[0].get_legend().get_texts()) == 3
    plt.close(fig)


def test_fast_msd_matrix_matches_the_exact_one_on_small_surfaces():
    from refacelib.pipeline.evaluation import fast_msd_matrix

    rng = np.random.default_rng(0)
    surfaces = [rng.normal(size=(300, 3)) * (1 + 0.2 * k) for k in range(4)]
    exact = reid.msd_matrix(surfaces, surfaces)
    fast = fast_msd_matrix(surfaces, surfaces, max_points=1000)
    assert np.allclose(exact, fast)
    assert np.allclose(np.diag(fast), 0.0)


def test_matching_attack_same_result_in_parallel():
    from refacelib.pipeline import evaluation

    noses = [6.0, 9.0, 12.0]
    surfaces, subjects = {}, {}
    for i, r in enumerate(noses):
        sid = f"sub-{i}"
        subjects[sid] = "test_internal"
        surfaces[(sid, "original")] = reid.face_surface(head(r, nose_dx=4.0 * i), AFFINE, REGION)
        surfaces[(sid, "m:refaced")] = reid.face_surface(head(r + 0.5, nose_dx=4.0 * i), AFFINE, REGION)
        surfaces[(sid, "m:average")] = reid.face_surface(head(9.0), AFFINE, REGION)
    kw = dict(candidates=("refaced", "average"), max_points=400,
              reference=reid.face_surface(head(9.0), AFFINE, REGION))
    serial, _ = evaluation.matching_attack(surfaces, subjects, ["m"], n_jobs=1, **kw)
    parallel, curves = evaluation.matching_attack(surfaces, subjects, ["m"], n_jobs=2, **kw)
    pd.testing.assert_frame_equal(serial, parallel)
    assert serial.set_index("candidate").loc["refaced", "top1"] == 1.0
    assert curves[("m", "test_internal", "refaced")][-1] == 1.0


def test_matching_attack_does_not_depend_on_the_order_of_subjects():
    """Every face is aligned to one external reference, so no test subject is privileged."""
    from refacelib.pipeline import evaluation

    surfaces, subjects = {}, {}
    for i, r in enumerate([6.0, 9.0, 12.0]):
        sid = f"sub-{i}"
        subjects[sid] = "test_internal"
        surfaces[(sid, "original")] = reid.face_surface(head(r, nose_dx=4.0 * i), AFFINE, REGION)
        surfaces[(sid, "m:refaced")] = reid.face_surface(head(r + 0.5, nose_dx=4.0 * i), AFFINE, REGION)
    ref = reid.face_surface(head(9.0), AFFINE, REGION)
    kw = dict(candidates=("refaced",), max_points=400, reference=ref, n_jobs=1)
    _, a = evaluation.matching_attack(surfaces, subjects, ["m"], **kw)
    reordered = dict(reversed(list(subjects.items())))
    _, b = evaluation.matching_attack(surfaces, reordered, ["m"], **kw)
    np.testing.assert_allclose(a[("m", "test_internal", "refaced")], b[("m", "test_internal", "refaced")])
