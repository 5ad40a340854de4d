"""Tests of refacelib.muscle: residualization, out-of-fold prediction, bootstrap."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from threadpoolctl import threadpool_limits

from refacelib import muscle as m


@pytest.fixture(autouse=True)
def _one_blas_thread():
    """Tiny matrices: BLAS threads only add overhead (10x on a busy machine)."""
    with threadpool_limits(limits=1):
        yield


def _age_sex_table(n, seed):
    rng = np.random.default_rng(seed)
    age = rng.uniform(20, 80, n)
    sex = rng.choice(["F", "M"], n)
    return pd.DataFrame({"age": age, "sex": sex}, index=np.arange(100, 100 + n))


# --------------------------------------------------------------- residualize
def test_residualize_removes_age_and_sex_keeps_noise():
    df = _age_sex_table(200, 1)
    noise = np.random.default_rng(2).normal(0, 3, len(df))
    df["y"] = 2 * df["age"] + 5 * (df["sex"] == "M") + noise
    res = m.residualize(df, ["y"])
    assert list(res.columns) == ["y"] and res.index.equals(df.index)
    r = res["y"].to_numpy()
    assert abs(np.corrcoef(r, df["age"])[0, 1]) < 1e-8
    is_m = (df["sex"] == "M").to_numpy()
    assert abs(r[is_m].mean() - r[~is_m].mean()) < 1e-8
    assert np.corrcoef(r, noise)[0, 1] > 0.9


def test_residualize_nan_rows_per_column():
    df = _age_sex_table(50, 3)
    rng = np.random.default_rng(4)
    df["a"], df["b"] = rng.normal(size=50), rng.normal(size=50)
    df.loc[df.index[5], "a"] = np.nan
    res = m.residualize(df, ["a", "b"])
    assert np.isnan(res["a"].iloc[5]) and res["a"].notna().sum() == 49
    assert res["b"].notna().all()
    # "a" fitted on its own complete rows: same as residualizing the subset
    sub = m.residualize(df.drop(index=df.index[5]), ["a"])["a"]
    np.testing.assert_allclose(res["a"].dropna(), sub, atol=1e-10)


# ------------------------------------------------------- out-of-fold predict
def test_oof_cannot_memorise_unique_features():
    corrs = []
    for seed in range(8):
        y = np.random.default_rng(seed).normal(size=40)
        X = np.eye(40)  # each subject owns one feature column
        insample = m.make_model(n_components=60).fit(X, y).predict(X)
        assert stats.spearmanr(insample, y)[0] > 0.99  # a leaky model memorises
        pred = m.predict_oof(X, y, n_components=60, seed=seed)
        assert not np.allclose(pred, y, atol=0.1)
        corrs.append(m.spearman(y, pred))
    assert abs(np.mean(corrs)) < 0.2 and max(corrs) < 0.6


class _SpyModel:
    """Records the subject ids (column 0 of X) it was fitted and asked on."""

    log = []

    def fit(self, X, y):
        self.train = set(X[:, 0].astype(int))
        return self

    def predict(self, X):
        _SpyModel.log.append((self.train, list(X[:, 0].astype(int))))
        return np.zeros(len(X))


def test_oof_never_predicts_a_training_subject(monkeypatch):
    _SpyModel.log = []
    monkeypatch.setattr(m, "make_model", lambda **kw: _SpyModel())
    n = 23
    X = np.column_stack([np.arange(n), np.random.default_rng(0).normal(size=(n, 3))])
    m.predict_oof(X, np.arange(n, dtype=float), n_splits=4, seed=7)
    assert len(_SpyModel.log) == 4
    predicted = []
    for train, test in _SpyModel.log:
        assert train.isdisjoint(test)
        assert len(train) + len(test) == n
        predicted += test
    assert sorted(predicted) == list(range(n))  # everyone once


def test_predict_oof_guards():
    X, y = np.zeros((20, 3)), np.arange(20.0)
    with pytest.raises(ValueError, match="NaN"):
        m.predict_oof(np.where(np.eye(20, 3) > 0, np.nan, X), y)
    with pytest.raises(ValueError, match="NaN"):
        m.predict_oof(X, np.r_[np.nan, y[1:]])
    with pytest.raises(ValueError, match="too few"):
        m.predict_oof(X[:9], y[:9], n_splits=5)


def test_noise_null_ci_covers_zero_and_centering_removes_bias():
    covered, rho_c, rho_raw = 0, [], []
    for seed in range(50):
        rng = np.random.default_rng(seed)
        X, y = rng.normal(size=(60, 50)), rng.normal(size=60)
        y -= y.mean()  # like a residual
        pred = m.predict_oof(X, y, n_components=3, seed=seed)
        rho_c.append(m.spearman(y, pred))
        rho_raw.append(m.spearman(y, m.predict_oof(X, y, n_components=3, seed=seed,
                                                    center=False)))
        boot = m.bootstrap_correlations(y, {"original": pred}, n_boot=200, seed=seed)
        s = m.summarize_bootstrap(boot).iloc[0]
        covered += s["ci_low"] <= 0 <= s["ci_high"]
    assert covered >= 45
    # raw fold intercepts anti-correlate with held-out means
    assert np.mean(rho_raw) < -0.15
    assert np.mean(rho_c) > -0.12


def test_planted_signal_is_significant():
    rng = np.random.default_rng(5)
    X = rng.normal(size=(80, 30))
    y = X @ rng.normal(size=30) + 0.1 * rng.normal(size=80)
    pred = m.predict_oof(X, y, n_components=30, seed=0)
    s = m.summarize_bootstrap(m.bootstrap_correlations(y, {"original": pred},
                                                       n_boot=500)).iloc[0]
    assert s["significant"] and s["ci_low"] > 0.5


# ------------------------------------------------------------ bootstrap utils
def test_bootstrap_is_paired_and_nan_for_constant():
    idx = m.bootstrap_indices(7, n_boot=4, seed=3)
    assert idx.shape == (4, 7) and idx.min() >= 0 and idx.max() < 7
    np.testing.assert_array_equal(idx, m.bootstrap_indices(7, n_boot=4, seed=3))
    y = np.arange(10.0)
    boot = m.bootstrap_correlations(y, {"a": y, "b": -y, "c": np.ones(10)},
                                    n_boot=20, seed=0)
    assert list(boot.columns) == ["boot", "image", "rho"]
    wide = boot.pivot(index="boot", columns="image", values="rho")
    np.testing.assert_allclose(wide["a"], -wide["b"])  # same resamples
    assert wide["c"].isna().all()


def _hand_boot():
    orig = [0.1, 0.2, 0.3, 0.4, 0.5, np.nan]
    defa = [0.0, -0.2, 0.1, 0.15, -0.1, 0.9]
    return pd.DataFrame({"boot": list(range(6)) * 2,
                         "image": ["original"] * 6 + ["defaced"] * 6,
                         "rho": orig + defa})


def test_summarize_bootstrap_hand_computed():
    s = m.summarize_bootstrap(_hand_boot(), level=0.5).set_index("image")
    o, d = s.loc["original"], s.loc["defaced"]
    assert o["n_boot"] == 5 and d["n_boot"] == 6
    assert o[["mean", "ci_low", "ci_high"]].tolist() == pytest.approx([0.3, 0.2, 0.4])
    # defaced sorted: -.2 -.1 0 .1 .15 .9 -> q25 at 1.25, q75 at 3.75
    assert d[["mean", "ci_low", "ci_high"]].tolist() == pytest.approx(
        [0.85 / 6, -0.075, 0.1375])
    assert o["significant"] and not d["significant"]


def test_compare_images_hand_computed():
    c = m.compare_images(_hand_boot(), level=0.5)
    assert list(c.columns) == ["image", "diff_mean", "ci_low", "ci_high",
                               "wilcoxon_p", "diff_significant"]
    row = c.iloc[0]
    # boot 5 dropped (NaN); diffs .1 .4 .2 .25 .6
    assert row["image"] == "defaced"
    assert [row["diff_mean"], row["ci_low"], row["ci_high"]] == pytest.approx(
        [0.31, 0.2, 0.4])
    assert row["wilcoxon_p"] == pytest.approx(2 / 32)  # exact, all 5 positive
    assert row["diff_significant"]


def _two_images(n, seed, defaced_noise):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(n, 20))
    y = X @ rng.normal(size=20) / np.sqrt(20) + rng.normal(size=n)
    Xd = rng.normal(size=X.shape) if defaced_noise is None else (
        X + defaced_noise * rng.normal(size=X.shape))
    preds = {k: m.predict_oof(v, y, seed=0) for k, v in
             {"original": X, "defaced": Xd}.items()}
    return y, preds


def test_compare_images_detects_destroyed_signal():
    y, preds = _two_images(80, 0, None)
    boot = m.bootstrap_correlations(y, preds, n_boot=500, seed=1)
    row = m.compare_images(boot).iloc[0]
    assert row["ci_low"] > 0 and row["diff_significant"]
    assert row["wilcoxon_p"] < 0.05


def test_wilcoxon_p_shrinks_with_resamples_ci_does_not():
    y, preds = _two_images(100, 2, 0.7)
    boot = m.bootstrap_correlations(y, preds, n_boot=1000, seed=3)
    t = m.wilcoxon_p_vs_nboot(boot, image="defaced")
    assert list(t.columns) == ["n_boot", "wilcoxon_p", "diff_ci_low", "diff_ci_high"]
    assert t["n_boot"].tolist() == [100, 300, 1000]
    p = t.set_index("n_boot")["wilcoxon_p"]
    assert p[1000] <= p[300] <= p[100]
    width = (t["diff_ci_high"] - t["diff_ci_low"]).to_numpy()
    assert width[-1] > 0.7 * width[0]  # the interval does not collapse
    with pytest.raises(ValueError):
        m.wilcoxon_p_vs_nboot(boot, image="defaced", n_boots=(2000,))


# ------------------------------------------------------------- whole analysis
def test_analyze_muscle_outputs():
    n = 40
    table = _age_sex_table(n, 9).reset_index(drop=True)
    rng = np.random.default_rng(10)
    for mus in m.MUSCLES:
        table[m.muscle_column(mus)] = 40 + rng.normal(size=n)
    table.loc[3, m.muscle_column("shin")] = np.nan
    X = rng.normal(size=(n, 12))
    feats = {"original": X, "copy": X.copy(), "defaced": rng.normal(size=(n, 12))}
    corr, diff, boot = m.analyze_muscle(table, feats, n_boot=50, n_components=5)
    assert list(corr.columns) == ["muscle", "image", "n", "mean", "ci_low",
                                  "ci_high", "significant"]
    assert list(diff.columns) == ["muscle", "image", "diff_mean", "ci_low",
                                  "ci_high", "wilcoxon_p", "diff_significant"]
    assert list(boot.columns) == ["muscle", "boot", "image", "rho"]
    assert len(corr) == 9 and len(diff) == 6 and len(boot) == 3 * 3 * 50
    assert corr.set_index(["muscle", "image"])["n"].unstack()["original"].to_dict() \
        == {"abdomen": 40, "shin": 39, "thigh": 40}
    # same folds and resamples for every image type: a copy differs by exactly 0
    copy = diff[diff["image"] == "copy"]
    assert (copy["diff_mean"] == 0).all() and copy["wilcoxon_p"].isna().all()
    # per-muscle seeds differ, and the whole thing is deterministic
    w = boot[boot["image"] == "original"].pivot(index="boot", columns="muscle",
                                                values="rho")
    assert not np.allclose(w["abdomen"], w["thigh"])
    again = m.analyze_muscle(table, feats, n_boot=50, n_components=5)[2]
    pd.testing.assert_frame_equal(boot, again)
