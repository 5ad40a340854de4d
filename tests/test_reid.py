"""Re-identification: face MSDs on synthetic heads, paired tests, matching, plots."""
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402
from scipy import ndimage as ndi  # noqa: E402

from refacelib import reid, reid_plots  # noqa: E402

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
    assert list(res.columns) == ["method", "test_set", "estimator", "baseline", "n", "W", "p",
                                 "p_holm", "rbc", "median_diff_mm", "test"]
    mean = res[res["estimator"] == "refaced_mean"].set_index("method")
    # refaced_mean < average for all 10 subjects: exact two-sided p = 2 / 2**10
    assert (mean["n"] == 10).all() and (mean["W"] == 0).all()
    np.testing.assert_allclose(mean["p"], 2 / 1024)
    # pingouin's RBC is of estimator - baseline: -1 when the estimator is always closer
    assert (mean["rbc"] == -1).all() and (mean["median_diff_mm"] < 0).all()
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


def test_summary_table():
    s = reid.summary_table(_msd_fixture())
    assert len(s) == 6 and (s["n"] == 10).all()
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
    from refacelib.evaluation import fast_msd_matrix

    rng = np.random.default_rng(0)
    surfaces = [rng.normal(size=(300, 3)) * (1 + 0.2 * k) for k in range(4)]
    exact = reid.msd_matrix(surfaces, surfaces)
    fast = fast_msd_matrix(surfaces, surfaces, max_points=1000)
    assert np.allclose(exact, fast)
    assert np.allclose(np.diag(fast), 0.0)


def test_matching_attack_same_result_in_parallel():
    from refacelib import evaluation

    noses = [6.0, 9.0, 12.0]
    surfaces, subjects = {}, {}
    for i, r in enumerate(noses):
        sid = f"sub-{i}"
        subjects[sid] = "test_internal"
        surfaces[(sid, "original")] = reid.face_surface(head(r, nose_dx=4.0 * i), AFFINE, REGION)
        surfaces[(sid, "m:refaced")] = reid.face_surface(head(r + 0.5, nose_dx=4.0 * i), AFFINE, REGION)
        surfaces[(sid, "m:average")] = reid.face_surface(head(9.0), AFFINE, REGION)
    kw = dict(candidates=("refaced", "average"), max_points=400)
    serial, _ = evaluation.matching_attack(surfaces, subjects, ["m"], n_jobs=1, **kw)
    parallel, curves = evaluation.matching_attack(surfaces, subjects, ["m"], n_jobs=2, **kw)
    pd.testing.assert_frame_equal(serial, parallel)
    assert serial.set_index("candidate").loc["refaced", "top1"] == 1.0
    assert curves[("m", "test_internal", "refaced")][-1] == 1.0
