"""Tests of refacelib.evaluation.muscle: in-fold adjustment, out-of-fold prediction, refitted resampling."""
import numpy as np
import pandas as pd
import pytest
from scipy import stats
from threadpoolctl import threadpool_limits

from refacelib.evaluation import muscle as m


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


def _covariates(n, seed):
    """Age and a 0/1 sex column, and a measure they explain (no voxel signal)."""
    rng = np.random.default_rng(seed)
    age, sex = rng.uniform(20, 80, n), rng.integers(0, 2, n).astype(float)
    y = 40 - 0.3 * age + 2 * sex + rng.normal(size=n)
    return np.column_stack([age, sex]), y


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


# ------------------------------------------- the fast model equals make_model
def test_fast_model_equals_make_model_per_target():
    rng = np.random.default_rng(1)
    X = rng.normal(size=(70, 300)) + 3.0
    X[:, 7] = 2.5  # a constant voxel
    Y = np.column_stack([X[:, :5].sum(1) + rng.normal(size=70), rng.normal(size=70)])
    train, test = np.arange(55), np.arange(55, 70)
    fast = m._fit_predict(X[train], Y[train], X[test], np.ones(55), n_components=12)
    for t in range(2):  # the penalty is chosen per target, as RidgeCV on each column
        model = m.make_model(n_components=12).fit(X[train], Y[train, t])
        ref = model.predict(X[test]) - Y[train, t].mean()
        np.testing.assert_allclose(fast[:, t], ref, rtol=1e-8, atol=1e-10)


def test_fast_model_weights_count_rows_and_leave_a_subject_out_whole():
    rng = np.random.default_rng(2)
    X, y = rng.normal(size=(16, 40)), rng.normal(size=16)
    Xte = rng.normal(size=(5, 40))
    w = rng.integers(1, 4, 16).astype(float)
    Xd, yd = np.repeat(X, w.astype(int), axis=0), np.repeat(y, w.astype(int))
    # one penalty: weight k = the subject's row k times (scaler, PCA, ridge)
    fast = m._fit_predict(X, y[:, None], Xte, w, n_components=6, alphas=[3.0])[:, 0]
    ref = m.make_model(n_components=6, alphas=[3.0]).fit(Xd, yd).predict(Xte) - yd.mean()
    np.testing.assert_allclose(fast, ref, rtol=1e-8, atol=1e-10)
    # several penalties: the choice is leave-one-SUBJECT-out (all its copies) of the ridge
    # on the PCA scores (scaler and PCA fixed, as in RidgeCV after the PCA), by brute force
    pre = m.make_model(n_components=6).fit(Xd, yd)
    T = pre[:-1].transform(X)
    alphas = [0.1, 3.0, 100.0, 1e4]
    errors = []
    for a in alphas:
        sq = 0.0
        for i in range(16):
            k = np.arange(16) != i
            tm, ym = np.average(T[k], axis=0, weights=w[k]), np.average(y[k], weights=w[k])
            Tc, yc = T[k] - tm, y[k] - ym
            beta = np.linalg.solve(Tc.T @ (w[k, None] * Tc) + a * np.eye(6), Tc.T @ (w[k] * yc))
            sq += w[i] * (y[i] - ym - (T[i] - tm) @ beta) ** 2
        errors.append(sq)
    best = alphas[int(np.argmin(errors))]
    assert best != alphas[0] and best != alphas[-1]  # an interior choice: the test can fail
    rows = m.make_model(n_components=6, alphas=alphas).fit(Xd, yd)[-1].alpha_
    assert rows != best  # leaving out one row (a copy stays in) would choose another penalty
    chosen = m._fit_predict(X, y[:, None], Xte, w, n_components=6, alphas=alphas)[:, 0]
    direct = m._fit_predict(X, y[:, None], Xte, w, n_components=6, alphas=[best])[:, 0]
    np.testing.assert_allclose(chosen, direct, rtol=1e-10)


def test_fast_model_featureless_predicts_exact_zero():
    X = np.ones((12, 5))
    pred = m._fit_predict(X[:9], np.arange(9.0)[:, None] + 0.1, X[9:], np.ones(9))
    assert (pred == 0).all()
    oof = m.predict_oof(np.zeros((20, 4)), np.arange(20.0))
    assert (oof.pred == 0).all() and np.isnan(m.spearman(oof.target, oof.pred))


# ------------------------------------------------- in-fold covariate adjustment
def test_oof_matches_a_manual_in_fold_computation():
    """Held-out targets are residuals under an OLS fitted on the training fold only."""
    C, y = _covariates(37, 5)
    rng = np.random.default_rng(6)
    X = rng.normal(size=(37, 25)) + 0.05 * y[:, None]
    oof = m.predict_oof(X, y, C, n_splits=4, n_components=6, seed=11)
    D = np.column_stack([np.ones(37), C])
    target, pred = np.full(37, np.nan), np.full(37, np.nan)
    folds = m.KFold(n_splits=4, shuffle=True, random_state=11).split(X)
    for k, (train, test) in enumerate(folds):
        assert (oof.fold[test] == k).all()
        beta = np.linalg.lstsq(D[train], y[train], rcond=None)[0]
        target[test] = y[test] - D[test] @ beta
        r = y[train] - D[train] @ beta
        model = m.make_model(n_components=6).fit(X[train], r)
        pred[test] = model.predict(X[test]) - r.mean()
    np.testing.assert_allclose(oof.target, target, atol=1e-10)
    np.testing.assert_allclose(oof.pred, pred, atol=1e-8)
    # and these are not the whole-cohort residuals (that model saw the held-out subjects)
    whole = y - D @ np.linalg.lstsq(D, y, rcond=None)[0]
    assert np.abs(oof.target - whole).max() > 1e-3


def test_no_model_is_fitted_on_its_held_out_subjects(monkeypatch):
    """Spies: the covariate model and the voxel model of each fold never see its test subjects."""
    ols_seen, model_seen = [], []
    real_ols, real_fit = m._weighted_ols, m._fit_predict

    def ols_spy(D, Y, w):
        ols_seen.append(set(D[:, 1].astype(int)))  # covariate 1 is the subject id
        return real_ols(D, Y, w)

    def fit_spy(X_train, R, X_test, w, **kw):
        model_seen.append((set(X_train[:, 0].astype(int)), set(X_test[:, 0].astype(int))))
        return real_fit(X_train, R, X_test, w, **kw)

    monkeypatch.setattr(m, "_weighted_ols", ols_spy)
    monkeypatch.setattr(m, "_fit_predict", fit_spy)
    n = 23
    ids = np.arange(n, dtype=float)
    rng = np.random.default_rng(0)
    X = np.column_stack([ids, rng.normal(size=(n, 4))])
    oof = m.predict_oof(X, rng.normal(size=n), np.column_stack([ids, rng.normal(size=n)]),
                        n_splits=4, seed=7)
    assert len(ols_seen) == len(model_seen) == 4
    predicted = []
    for k in range(4):
        held_out = set(np.flatnonzero(oof.fold == k))
        assert ols_seen[k] == set(range(n)) - held_out
        train, test = model_seen[k]
        assert train == ols_seen[k] and test == held_out
        predicted += sorted(test)
    assert sorted(predicted) == list(range(n))  # everyone predicted once


def test_covariates_alone_explain_the_target_no_leak():
    """Voxels that encode age (as faces do): whole-cohort adjustment biases rho
    (the training folds' residuals carry the opposite age trend of the held-out
    fold); in-fold adjustment does not."""
    in_fold, whole_cohort, noise_only = [], [], []
    for seed in range(24):
        C, y = _covariates(60, seed)
        rng = np.random.default_rng(100 + seed)
        X = np.column_stack([C[:, 0] + 5 * rng.normal(size=(60, 15)).T[i] for i in range(15)]
                            + [rng.normal(size=(60, 15))])
        oof = m.predict_oof(X, y, C, n_components=5, seed=seed)
        in_fold.append(m.spearman(oof.target, oof.pred))
        noise = m.predict_oof(rng.normal(size=(60, 30)), y, C, n_components=5, seed=seed)
        noise_only.append(m.spearman(noise.target, noise.pred))
        table = pd.DataFrame({"age": C[:, 0], "sex": C[:, 1], "y": y})
        resid = m.residualize(table, ["y"])["y"].to_numpy()
        old = m.predict_oof(X, resid, None, n_components=5, seed=seed)
        whole_cohort.append(m.spearman(resid, old.pred))
    assert abs(np.mean(in_fold)) < 0.08 and abs(np.mean(noise_only)) < 0.08
    assert np.mean(whole_cohort) < -0.1  # the leak this design removes is visible


def test_oof_cannot_memorise_unique_features():
    corrs = []
    for seed in range(8):
        y = np.random.default_rng(seed).normal(size=40)
        X = np.eye(40)  # each subject owns one feature column
        insample = m.make_model(n_components=60).fit(X, y).predict(X)
        assert stats.spearmanr(insample, y)[0] > 0.99  # a leaky model memorises
        oof = m.predict_oof(X, y, n_components=60, seed=seed)
        assert not np.allclose(oof.pred, oof.target, atol=0.1)
        corrs.append(m.spearman(oof.target, oof.pred))
    assert abs(np.mean(corrs)) < 0.2 and max(corrs) < 0.6


def test_predict_oof_guards_and_shapes():
    X, y = np.zeros((20, 3)), np.arange(20.0)
    with pytest.raises(ValueError, match="NaN"):
        m.predict_oof(np.where(np.eye(20, 3) > 0, np.nan, X), y)
    with pytest.raises(ValueError, match="NaN"):
        m.predict_oof(X, np.r_[np.nan, y[1:]])
    with pytest.raises(ValueError, match="NaN"):
        m.predict_oof(X, y, np.r_[np.nan, y[1:]])
    with pytest.raises(ValueError, match="too few"):
        m.predict_oof(X[:9], y[:9], n_splits=5)
    with pytest.raises(ValueError, match="weights"):
        m.predict_oof(X, y, weights=np.full(20, 0.5))
    two = m.predict_oof(np.random.default_rng(0).normal(size=(20, 3)), np.column_stack([y, -y]))
    assert two.pred.shape == two.target.shape == (20, 2) and two.fold.shape == (20,)


# ------------------------------------------------------ refitted resampling
def test_resamples_refit_and_are_paired():
    rng = np.random.default_rng(3)
    C, y = _covariates(30, 3)
    X = rng.normal(size=(30, 10))
    feats = {"a": X, "copy": X.copy(), "flat": np.ones((30, 10))}
    for scheme in m.SCHEMES:
        boot = m.resample_correlations(feats, y, C, scheme=scheme, n_boot=20, n_components=3,
                                       seed=1)
        assert list(boot.columns) == ["boot", "image", "rho"] and len(boot) == 60
        wide = boot.pivot(index="boot", columns="image", values="rho")
        np.testing.assert_array_equal(wide["a"], wide["copy"])  # same subjects and folds
        assert wide["flat"].isna().all() and wide["a"].notna().all()
        assert wide["a"].std() > 0
    with pytest.raises(ValueError, match="scheme"):
        m.resample_correlations(feats, y, C, scheme="jackknife", n_boot=2)
    with pytest.raises(ValueError, match="too few"):
        m.resample_correlations({"a": X[:18]}, y[:18], C[:18], n_boot=2)  # halves of 9 < 10


def test_bootstrap_scheme_keeps_copies_of_a_subject_together(monkeypatch):
    seen = []
    real_fit = m._fit_predict

    def spy(X_train, R, X_test, w, **kw):
        seen.append((X_train[:, 0].astype(int), w, X_test[:, 0].astype(int)))
        return real_fit(X_train, R, X_test, w, **kw)

    monkeypatch.setattr(m, "_fit_predict", spy)
    n = 30
    rng = np.random.default_rng(4)
    X = np.column_stack([np.arange(n), rng.normal(size=(n, 5))])
    m.resample_correlations({"a": X}, rng.normal(size=n), scheme="bootstrap", n_boot=6,
                            n_components=3, seed=2)
    assert len(seen) == 6 * 5
    assert any((w > 1).any() for _, w, _ in seen)  # duplicates enter as weights
    for train, w, test in seen:
        assert len(set(train)) == len(train) and set(train).isdisjoint(test)


def test_subsample_centre_is_the_full_sample_estimate():
    C, y = _covariates(40, 8)
    X = np.random.default_rng(8).normal(size=(40, 12)) + 0.3 * y[:, None]
    boot = m.resample_correlations({"o": X}, y, C, n_boot=30, n_components=4, seed=5)
    oof = m.predict_oof(X, y, C, n_components=4, seed=5)
    full = m.spearman(oof.target, oof.pred)
    assert np.tanh(np.arctanh(boot["rho"]).mean()) == pytest.approx(full, abs=1e-12)
    assert boot["rho"].mean() == pytest.approx(full, abs=0.02)
    # Fisher z keeps an extreme estimate inside (-1, 1), where rho itself would overshoot
    halves = np.array([[[0.99]], [[0.2]], [[0.6]]])
    rescaled = m._rescale_to_full(halves, np.array([[0.97]]), 0.5)
    assert np.all(np.abs(rescaled) < 1) and rescaled[0] > rescaled[2] > rescaled[1]


def test_resampling_is_deterministic_with_a_seed():
    C, y = _covariates(30, 9)
    feats = {"o": np.random.default_rng(9).normal(size=(30, 8))}
    for scheme in m.SCHEMES:
        kw = dict(scheme=scheme, n_boot=15, n_components=3)
        a = m.resample_correlations(feats, y, C, seed=4, **kw)
        pd.testing.assert_frame_equal(a, m.resample_correlations(feats, y, C, seed=4, **kw))
        assert not np.allclose(a["rho"], m.resample_correlations(feats, y, C, seed=5, **kw)["rho"])


def test_noise_null_interval_covers_zero_at_about_the_nominal_rate():
    """Pure noise voxels, a measure that age and sex explain: the 95% interval
    covers 0 in about 95% of data sets and is not much wider than the estimate's
    true spread; the bootstrap scheme covers too, with wider intervals."""
    n_sims, n = 40, 40
    covered = {s: 0 for s in m.SCHEMES}
    width = {s: [] for s in m.SCHEMES}
    full = []
    for seed in range(n_sims):
        C, y = _covariates(n, 1000 + seed)
        X = np.random.default_rng(seed).normal(size=(n, 20))
        oof = m.predict_oof(X, y, C, n_components=3, seed=seed)
        full.append(m.spearman(oof.target, oof.pred))
        for scheme in m.SCHEMES:
            boot = m.resample_correlations({"o": X}, y, C, scheme=scheme, n_boot=40,
                                           n_components=3, seed=seed)
            s = m.summarize_bootstrap(boot).iloc[0]
            covered[scheme] += s["ci_low"] <= 0 <= s["ci_high"]
            width[scheme].append(s["ci_high"] - s["ci_low"])
    assert covered["subsample"] >= 34 and covered["bootstrap"] >= 34
    # nominal: 2 x 1.96 sd of the full-sample estimate
    assert np.mean(width["subsample"]) < 5.2 * np.std(full)
    assert np.mean(width["bootstrap"]) > 1.2 * np.mean(width["subsample"])


def test_planted_signal_is_significant():
    C, y0 = _covariates(80, 5)
    rng = np.random.default_rng(5)
    X = rng.normal(size=(80, 30))
    y = y0 + X @ rng.normal(size=30)
    boot = m.resample_correlations({"original": X}, y, C, n_boot=100, n_components=30)
    s = m.summarize_bootstrap(boot).iloc[0]
    assert s["significant"] and s["ci_low"] > 0.5


# ------------------------------------------------------------ summary utils
def test_bootstrap_indices():
    idx = m.bootstrap_indices(7, n_boot=4, seed=3)
    assert idx.shape == (4, 7) and idx.min() >= 0 and idx.max() < 7
    np.testing.assert_array_equal(idx, m.bootstrap_indices(7, n_boot=4, seed=3))


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
    C, y0 = _covariates(n, seed)
    X = rng.normal(size=(n, 20))
    y = y0 + X @ rng.normal(size=20) / np.sqrt(20)
    Xd = rng.normal(size=X.shape) if defaced_noise is None else (
        X + defaced_noise * rng.normal(size=X.shape))
    return {"original": X, "defaced": Xd}, y, C


def test_compare_images_detects_destroyed_signal():
    feats, y, C = _two_images(80, 0, None)
    boot = m.resample_correlations(feats, y, C, n_boot=150, n_components=20, seed=1)
    row = m.compare_images(boot).iloc[0]
    assert row["ci_low"] > 0 and row["diff_significant"]
    assert row["wilcoxon_p"] < 0.05


def test_wilcoxon_p_shrinks_with_resamples_interval_does_not():
    feats, y, C = _two_images(60, 2, 0.7)
    boot = m.resample_correlations(feats, y, C, n_boot=400, n_components=5, seed=3)
    t = m.wilcoxon_p_vs_nboot(boot, image="defaced", n_boots=(40, 120, 400))
    assert list(t.columns) == ["n_boot", "wilcoxon_p", "diff_ci_low", "diff_ci_high"]
    assert t["n_boot"].tolist() == [40, 120, 400]
    p = t.set_index("n_boot")["wilcoxon_p"]
    assert p[400] <= p[120] <= p[40] and p[400] < 1e-4
    width = (t["diff_ci_high"] - t["diff_ci_low"]).to_numpy()
    assert width[-1] > 0.7 * width[0]  # the interval does not collapse
    assert t["diff_ci_low"].iloc[-1] < 0 < t["diff_ci_high"].iloc[-1]  # nor exclude 0
    with pytest.raises(ValueError):
        m.wilcoxon_p_vs_nboot(boot, image="defaced", n_boots=(2000,))


# ------------------------------------------------------------- whole analysis
def _muscle_table(n, seed):
    table = _age_sex_table(n, seed).reset_index(drop=True)
    rng = np.random.default_rng(seed + 1)
    for mus in m.MUSCLES:
        table[m.muscle_column(mus)] = 40 - 0.2 * table["age"] + rng.normal(size=n)
    return table, rng


def test_analyze_muscle_outputs():
    n = 40
    table, rng = _muscle_table(n, 9)
    table.loc[3, m.muscle_column("shin")] = np.nan
    X = rng.normal(size=(n, 12))
    feats = {"original": X, "copy": X.copy(), "defaced": rng.normal(size=(n, 12))}
    corr, diff, boot = m.analyze_muscle(table, feats, n_boot=30, n_components=5)
    assert list(corr.columns) == ["muscle", "image", "n", "mean", "ci_low",
                                  "ci_high", "significant"]
    assert list(diff.columns) == ["muscle", "image", "diff_mean", "ci_low",
                                  "ci_high", "wilcoxon_p", "diff_significant"]
    assert list(boot.columns) == ["muscle", "boot", "image", "rho"]
    assert len(corr) == 9 and len(diff) == 6 and len(boot) == 3 * 3 * 30
    assert list(corr["muscle"].unique()) == list(m.MUSCLES)
    assert corr.set_index(["muscle", "image"])["n"].unstack()["original"].to_dict() \
        == {"abdomen": 40, "shin": 39, "thigh": 40}
    # same folds and resamples for every image type: a copy differs by exactly 0
    copy = diff[diff["image"] == "copy"]
    assert (copy["diff_mean"] == 0).all() and copy["wilcoxon_p"].isna().all()
    again = m.analyze_muscle(table, feats, n_boot=30, n_components=5)[2]
    pd.testing.assert_frame_equal(boot, again)


def test_analyze_muscle_equals_one_muscle_at_a_time():
    """Muscles on the same participants share resamples, folds and PCA; each
    result equals the single-muscle run, with age and sex fitted in-fold."""
    n = 36
    table, rng = _muscle_table(n, 12)
    table.loc[5, m.muscle_column("thigh")] = np.nan
    feats = {"original": rng.normal(size=(n, 9)), "defaced": rng.normal(size=(n, 9))}
    boot = m.analyze_muscle(table, feats, n_boot=12, n_components=4, seed=3)[2]
    for mus in m.MUSCLES:
        keep = table[m.muscle_column(mus)].notna().to_numpy()
        C = np.column_stack([table["age"], table["sex"] == "M"]).astype(float)[keep]
        alone = m.resample_correlations({k: v[keep] for k, v in feats.items()},
                                        table.loc[keep, m.muscle_column(mus)], C,
                                        n_boot=12, n_components=4, seed=3)
        got = boot[boot["muscle"] == mus].drop(columns="muscle").reset_index(drop=True)
        pd.testing.assert_frame_equal(got, alone, atol=1e-12)


def test_an_undefined_comparison_is_neither_significant_nor_not():
    """A constant prediction has no correlation: its comparison's `diff_significant` is None (read "n/a"), not False."""
    from refacelib import report

    boot = pd.DataFrame({"boot": np.repeat(np.arange(30), 3), "image": ["original", "pydeface", "skullstrip"] * 30,
                         "rho": np.tile([0.4, 0.1, np.nan], 30) + np.repeat(np.linspace(-0.05, 0.05, 30), 3)})
    diff = m.compare_images(boot).set_index("image")
    assert diff.loc["pydeface", "diff_significant"] == True  # noqa: E712  (the CI of 0.3 +- 0 excludes 0)
    assert diff.loc["skullstrip", "diff_significant"] is None
    cells = report.format_table(diff.reset_index(), columns={"image": "Image", "diff_significant": "CI excludes 0"})
    assert cells["CI excludes 0"].tolist() == ["yes", "n/a"]
