"""Do facial voxels predict body muscle? Cross-validated prediction and bootstrap.

For each muscle (CT radiodensity in Hounsfield units at abdomen, thigh and
shin) the target is the measure adjusted for age and sex, and it is predicted
from the facial voxels of one image type by K-fold cross-validation
(:func:`predict_oof`). The adjustment is fitted *inside* the folds: in each
fold an ordinary-least-squares model of the muscle on age and sex is fitted on
the training subjects only; the training residuals train the voxel model and
the held-out target is the held-out subjects' residual under that
training-fold model, so nothing about a held-out subject enters the model that
predicts it, nor the adjustment of its own target. The statistic is Spearman's
rho between the out-of-fold predictions and these held-out residuals.

Its uncertainty comes from refitting (:func:`resample_correlations`): every
resample of subjects reruns the whole cross-validated pipeline (new folds;
covariate model, scaler, PCA and ridge penalty fitted again in every fold),
so the interval carries the variability of fitting as well as that of the
sample. The default resampling is half-sampling (half of the subjects without
replacement, the spread rescaled to the full sample, centred on the
full-sample estimate); the bootstrap with replacement is available but
conservative (see :func:`resample_correlations` for both and their
calibration). The same resamples and folds serve every image type (and every
muscle measured on the same subjects), so the rows of one resample are
paired. Summaries: mean and 95% percentile interval
(:func:`summarize_bootstrap`).

Image types are compared with the original two ways (:func:`compare_images`):
the paper's Wilcoxon signed-rank test on the resampled correlations, whose
p-value shrinks as resamples are added (:func:`wilcoxon_p_vs_nboot`), and a
paired percentile interval of the difference in correlation, computed on the
same resamples (and folds) for every image type.

:func:`residualize` (whole-cohort adjustment) is kept to describe the data; the
analysis does not use it.
"""
from __future__ import annotations

import warnings
from typing import Iterable, Mapping, NamedTuple

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler
from threadpoolctl import threadpool_limits

__all__ = [
    "MUSCLES",
    "muscle_column",
    "residualize",
    "make_model",
    "OutOfFold",
    "predict_oof",
    "spearman",
    "bootstrap_indices",
    "SCHEMES",
    "resample_correlations",
    "summarize_bootstrap",
    "compare_images",
    "analyze_muscle",
    "wilcoxon_p_vs_nboot",
    "wilcoxon_demo",
]

MUSCLES = ("abdomen", "thigh", "shin")
_ALPHAS = tuple(np.logspace(-2, 4, 13))
_DIFF_COLUMNS = ["image", "diff_mean", "ci_low", "ci_high", "wilcoxon_p",
                 "diff_significant"]


def muscle_column(muscle: str) -> str:
    """Name of the table column holding one muscle's radiodensity.

    Examples
    --------
    >>> muscle_column("thigh")
    'muscle_hu_thigh'
    """
    return f"muscle_hu_{muscle}"


def _design(df: pd.DataFrame, covariates: Iterable[str]) -> tuple[np.ndarray, np.ndarray]:
    """Design matrix (intercept, numeric as is, categorical one-hot drop_first)
    and a mask of rows whose covariates are all present."""
    cov = df[list(covariates)]
    complete = cov.notna().all(axis=1).to_numpy()
    parts = [pd.Series(1.0, index=df.index, name="_intercept")]
    for name in cov.columns:
        col = cov[name]
        if pd.api.types.is_numeric_dtype(col) and not pd.api.types.is_bool_dtype(col):
            parts.append(col.astype(float))
        else:
            parts.append(pd.get_dummies(col.astype("category"), prefix=name,
                                        drop_first=True, dtype=float))
    design = pd.concat(parts, axis=1).fillna(0.0).to_numpy(dtype=float)
    return design, complete


def residualize(df: pd.DataFrame, columns: Iterable[str], *,
                covariates: Iterable[str] = ("age", "sex")) -> pd.DataFrame:
    """Residuals of each column after an OLS fit on the covariates.

    The model has an intercept; numeric covariates enter as is, string or
    categorical ones (sex ``"F"``/``"M"``) as one-hot columns with the first
    level dropped. Each column is fitted on its own complete rows; other rows
    get a NaN residual.

    Returns
    -------
    DataFrame
        Residuals, same index and columns as ``df[columns]``.

    Examples
    --------
    >>> df = pd.DataFrame({"age": [20., 30, 40, 50], "sex": list("FMFM"),
    ...                    "y": [1., 2, 3, 4]})
    >>> bool(np.allclose(residualize(df, ["y"])["y"], 0))
    True
    """
    columns = list(columns)
    design, cov_ok = _design(df, covariates)
    out = pd.DataFrame(np.nan, index=df.index, columns=columns)
    for name in columns:
        y = df[name].to_numpy(dtype=float)
        ok = cov_ok & ~np.isnan(y)
        if ok.any():
            beta, *_ = np.linalg.lstsq(design[ok], y[ok], rcond=None)
            out.loc[ok, name] = y[ok] - design[ok] @ beta
    return out


class _CappedPCA(BaseEstimator, TransformerMixin):
    """Exact (full-SVD) PCA whose number of components is capped at fit time
    by ``min(n_components, n_samples - 1, n_features)``."""

    def __init__(self, n_components: int = 20, random_state: int = 0):
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y=None):
        n, p = np.shape(X)
        k = max(1, min(self.n_components, n - 1, p))
        self.pca_ = PCA(n_components=k, svd_solver="full",
                        random_state=self.random_state).fit(X)
        self.n_components_ = k
        return self

    def transform(self, X):
        return self.pca_.transform(X)


def make_model(*, n_components: int = 20, alphas: Iterable[float] = _ALPHAS) -> Pipeline:
    """StandardScaler -> PCA -> RidgeCV pipeline: the voxel model, in scikit-learn form.

    The PCA (exact SVD) keeps at most ``n_components`` components, capped at
    fit time by the training-set size minus one. RidgeCV chooses the penalty
    among ``alphas`` by its efficient leave-one-out cross-validation on the
    training data only, so inside the outer folds of :func:`predict_oof` it
    is the inner loop of a nested cross-validation. (The scaler and PCA are
    fitted once per outer fold, not refitted in the inner leave-one-out,
    which only affects the penalty choice.)

    The analysis fits the same model with ``_fit_predict``, an exact NumPy
    equivalent through the subjects' Gram matrix (the tests pin the two
    equal), many times faster, which is what makes refitting in every
    bootstrap resample affordable; it also takes subject weights, so a
    subject drawn twice by the bootstrap counts twice but is left out as a
    whole by the penalty's leave-one-out.

    Examples
    --------
    >>> [name for name, _ in make_model().steps]
    ['scale', 'pca', 'ridge']
    """
    return Pipeline([
        ("scale", StandardScaler()),
        ("pca", _CappedPCA(n_components=n_components)),
        ("ridge", RidgeCV(alphas=np.asarray(alphas, dtype=float))),
    ])


def _as_2d(y) -> tuple[np.ndarray, bool]:
    y = np.asarray(y, dtype=float)
    return (y[:, None], True) if y.ndim == 1 else (y, False)


def _check_inputs(X, y, covariates, weights, n_splits: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, bool]:
    """Validated float arrays: X (n, p), Y (n, t), design D (n, 1 + q) with an
    intercept first, integer weights (n,); and whether y was one-dimensional."""
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.ndim not in (1, 2) or len(X) != len(y):
        raise ValueError(f"X must be (n_subjects, n_features) and y (n_subjects,) or "
                         f"(n_subjects, n_targets); got {X.shape} and {y.shape}")
    Y, one = _as_2d(y)
    n = len(X)
    if covariates is None:
        C = np.empty((n, 0))
    else:
        C = np.asarray(covariates, dtype=float)
        C = C[:, None] if C.ndim == 1 else C
        if C.ndim != 2 or len(C) != n:
            raise ValueError(f"covariates must be (n_subjects, n_covariates); got {C.shape}")
    w = np.ones(n) if weights is None else np.asarray(weights, dtype=float)
    if w.shape != (n,) or np.any(w < 1) or np.any(w != np.round(w)):
        raise ValueError("weights must be one positive integer (a multiplicity) per subject")
    if np.isnan(X).any() or np.isnan(Y).any() or np.isnan(C).any():
        raise ValueError("X, y and covariates must not contain NaN; drop those subjects first")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    if n < 2 * n_splits:
        raise ValueError(f"{n} subjects are too few for {n_splits}-fold "
                         f"cross-validation (need at least {2 * n_splits})")
    D = np.column_stack([np.ones(n), C])
    return X, Y, D, w, one


def _informative(X: np.ndarray) -> np.ndarray:
    """Columns that vary across subjects (float64). A column constant over all
    subjects is constant in every training fold, where the scaler maps it to 0:
    dropping it changes nothing and saves time (defaced voxels are all 0)."""
    X = np.asarray(X, dtype=float)
    return X[:, np.ptp(X, axis=0) > 0] if len(X) else X


def _folds(n: int, n_splits: int, seed: int) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train, test) positions of ``KFold(n_splits, shuffle=True, random_state=seed)``."""
    return list(KFold(n_splits=n_splits, shuffle=True, random_state=seed).split(np.zeros(n)))


def _weighted_ols(D: np.ndarray, Y: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Least-squares coefficients of Y (m, t) on the design D (m, q), rows weighted by w."""
    sw = np.sqrt(w)[:, None]
    beta, *_ = np.linalg.lstsq(D * sw, Y * sw, rcond=None)
    return beta


def _fold_targets(Y: np.ndarray, D: np.ndarray, w: np.ndarray, folds
                  ) -> tuple[np.ndarray, list[np.ndarray]]:
    """In-fold covariate adjustment.

    For each fold the OLS model of Y on D is fitted on the training subjects
    only. Returns the held-out residuals (every subject once, from the model
    of the fold that holds it out) and, per fold, the training residuals.
    """
    target = np.full(Y.shape, np.nan)
    train_resid = []
    for train, test in folds:
        beta = _weighted_ols(D[train], Y[train], w[train])
        target[test] = Y[test] - D[test] @ beta
        train_resid.append(Y[train] - D[train] @ beta)
    return target, train_resid


def _fit_predict(X_train: np.ndarray, R_train: np.ndarray, X_test: np.ndarray,
                 w: np.ndarray, *, n_components: int = 20,
                 alphas: Iterable[float] = _ALPHAS) -> np.ndarray:
    """Fit :func:`make_model` on (X_train, each column of R_train), predict X_test.

    Exact equivalent of ``make_model(...).fit(X_train, r).predict(X_test) -
    r.mean()`` for each column ``r`` (the ridge intercept, the training
    targets' mean, is left out: for residuals it is 0 up to rounding, and
    leaving it out makes a featureless image predict an exact constant), with
    subject weights ``w`` (a subject of weight 2 counts as two identical rows
    in the scaler, the PCA and the ridge, but is left out as a whole by the
    penalty's leave-one-out; with unit weights this is scikit-learn's
    efficient leave-one-out). The penalty is chosen per column; ties go to the
    first of ``alphas``, as in RidgeCV.

    Works on the m x m Gram matrix of the standardised training subjects:
    PCA scores, ridge fits and leave-one-out residuals for every penalty in
    closed form.
    """
    m = len(X_train)
    W = w.sum()
    mu = w @ X_train / W
    Z = X_train - mu
    var = w @ np.square(Z) / W
    eps = np.finfo(float).eps  # StandardScaler's test for a constant feature; its scale is 1
    constant = var <= W * eps * var + (W * mu * eps) ** 2
    inv_sd = 1.0 / np.sqrt(np.where(constant, 1.0, var))
    Z *= inv_sd
    Z_test = X_test - mu
    Z_test *= inv_sd
    G = np.hstack([Z @ Z.T, Z @ Z_test.T])  # Z_train @ [Z_train; Z_test].T
    sw = np.sqrt(w)
    M = G[:, :m] * np.outer(sw, sw)
    lam, V = np.linalg.eigh((M + M.T) / 2)
    lam, V = lam[::-1], V[:, ::-1]
    k = max(0, min(n_components, m - 1, X_train.shape[1]))
    top = lam[0] if len(lam) else 0.0
    keep = lam[:k] > top * 1e-10 if top > 0 else np.zeros(k, dtype=bool)
    lam, V = lam[:k][keep], V[:, :k][:, keep]
    Rt = sw[:, None] * (R_train - w @ R_train / W)
    proj = V.T @ Rt                                    # (k, t)
    alphas = np.asarray(tuple(alphas), dtype=float)
    shrink = lam[None, :] / (lam[None, :] + alphas[:, None])       # (n_alphas, k)
    fitted = np.einsum("ij,aj,jt->ait", V, shrink, proj)
    leverage = (w / W)[:, None] + (V ** 2) @ shrink.T              # (m, n_alphas)
    with np.errstate(divide="ignore", invalid="ignore"):
        loo = (Rt[None] - fitted) / (1.0 - leverage.T)[:, :, None]
    best = np.argmin((loo ** 2).sum(axis=1), axis=0)               # (t,)
    coef = proj / (lam[:, None] + alphas[best][None, :])           # (k, t)
    return G[:, m:].T @ (sw[:, None] * V) @ coef


def _fold_predictions(X: np.ndarray, train_resid: list[np.ndarray], w: np.ndarray, folds,
                      *, n_components: int, alphas, rows: np.ndarray | None = None
                      ) -> np.ndarray:
    """Out-of-fold predictions of the training-fold residuals from X.

    ``folds`` and ``w`` index the subjects ``rows`` of X (all rows if None).
    """
    rows = np.arange(len(X)) if rows is None else rows
    pred = np.zeros((len(rows), train_resid[0].shape[1]))
    if X.shape[1] == 0:  # no voxel varies: every prediction is the (dropped) intercept
        return pred
    for (train, test), R in zip(folds, train_resid):
        pred[test] = _fit_predict(X[rows[train]], R, X[rows[test]], w[train],
                                  n_components=n_components, alphas=alphas)
    return pred


class OutOfFold(NamedTuple):
    """Result of :func:`predict_oof` (arrays shaped like ``y``, plus ``fold``)."""

    pred: np.ndarray
    """Out-of-fold prediction of each subject's adjusted measure."""
    target: np.ndarray
    """Each subject's residual under the covariate model of the fold that
    holds it out (fitted on that fold's training subjects only)."""
    fold: np.ndarray
    """Index of the fold that holds each subject out."""


def predict_oof(X, y, covariates=None, *, weights=None, n_splits: int = 5,
                n_components: int = 20, alphas: Iterable[float] = _ALPHAS,
                seed: int = 0) -> OutOfFold:
    """Out-of-fold prediction of the covariate-adjusted ``y`` from ``X``.

    Parameters
    ----------
    X : array (n_subjects, n_features)
        Features (facial voxels), one row per subject.
    y : array (n_subjects,) or (n_subjects, n_targets)
        The raw measure(s) (muscle radiodensity), *not* adjusted.
    covariates : array (n_subjects, n_covariates), optional
        Numeric covariates (e.g. age and a 0/1 sex column), without an
        intercept; ``None`` adjusts for the intercept only (the mean).
    weights : array of positive integers, optional
        Multiplicity of each subject (a bootstrap resample's counts); folds
        are drawn over subjects, so all copies of a subject are on the same
        side.

    Subjects are split by ``KFold(n_splits, shuffle=True, random_state=seed)``.
    In each fold, with the training subjects only: (1) an OLS model of ``y``
    on an intercept and ``covariates`` is fitted; (2) its training residuals
    train a fresh :func:`make_model` (scaler, PCA, ridge with its penalty
    chosen by leave-one-out on the training subjects), which predicts the
    held-out subjects; (3) the held-out subjects' target is their residual
    under the model of (1). No held-out subject enters either model.

    ``pred`` is the ridge prediction without its intercept (the mean of the
    training residuals, 0 for OLS residuals), so each fold's predictions
    carry no fold-level constant that is anti-correlated with the held-out
    fold's mean; the statistic of the study is ``spearman(target, pred)``.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> age = rng.uniform(20, 80, 40); X = rng.normal(size=(40, 8))
    >>> y = 0.5 * age + X[:, 0] + 0.1 * rng.normal(size=40)
    >>> oof = predict_oof(X, y, age)
    >>> spearman(oof.target, oof.pred) > 0.8
    True
    """
    X, Y, D, w, one = _check_inputs(X, y, covariates, weights, n_splits)
    folds = _folds(len(X), n_splits, seed)
    target, train_resid = _fold_targets(Y, D, w, folds)
    pred = _fold_predictions(_informative(X), train_resid, w, folds,
                             n_components=n_components, alphas=alphas)
    fold = np.empty(len(X), dtype=int)
    for k, (_, test) in enumerate(folds):
        fold[test] = k
    if one:
        pred, target = pred[:, 0], target[:, 0]
    return OutOfFold(pred, target, fold)


def _rowwise_spearman(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman correlation of matching rows; NaN where a row is constant."""
    ra = stats.rankdata(a, axis=-1)
    rb = stats.rankdata(b, axis=-1)
    ra = ra - ra.mean(axis=-1, keepdims=True)
    rb = rb - rb.mean(axis=-1, keepdims=True)
    den = np.sqrt((ra ** 2).sum(axis=-1) * (rb ** 2).sum(axis=-1))
    num = (ra * rb).sum(axis=-1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(den > 0, num / np.where(den > 0, den, 1.0), np.nan)


def spearman(y, yhat) -> float:
    """Spearman rank correlation (NaN when either input is constant).

    Examples
    --------
    >>> spearman([1, 2, 3, 4], [10, 20, 30, 1])
    -0.2
    """
    return float(_rowwise_spearman(np.asarray(y, float), np.asarray(yhat, float)))


def bootstrap_indices(n: int, *, n_boot: int = 1000, seed: int = 0) -> np.ndarray:
    """Subject indices of ``n_boot`` resamples with replacement, shape (n_boot, n).

    Examples
    --------
    >>> bootstrap_indices(5, n_boot=3).shape
    (3, 5)
    """
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


SCHEMES = ("subsample", "bootstrap")


def _resamples(n: int, n_boot: int, seed: int, scheme: str):
    """Yield (subjects, weights, fold_seed) of each resample.

    ``subsample``: ``n // 2`` distinct subjects drawn without replacement
    (half-sampling), weight 1. ``bootstrap``: ``n`` draws with replacement
    (:func:`bootstrap_indices`); the distinct subjects, weighted by their
    count. Each resample gets its own fold seed.
    """
    if scheme not in SCHEMES:
        raise ValueError(f"scheme must be one of {SCHEMES}, got {scheme!r}")
    draw_seed, fold_seed = np.random.SeedSequence(seed).generate_state(2)
    fold_seeds = np.random.default_rng(int(fold_seed)).integers(0, 2 ** 31 - 1, size=n_boot)
    if scheme == "bootstrap":
        idx = bootstrap_indices(n, n_boot=n_boot, seed=int(draw_seed))
        for b in range(n_boot):
            counts = np.bincount(idx[b], minlength=n)
            subjects = np.flatnonzero(counts)
            yield subjects, counts[subjects].astype(float), int(fold_seeds[b])
    else:
        rng = np.random.default_rng(int(draw_seed))
        for b in range(n_boot):
            yield np.sort(rng.permutation(n)[: n // 2]), np.ones(n // 2), int(fold_seeds[b])


def _cv_rho(feats: list[np.ndarray], Y: np.ndarray, D: np.ndarray, subjects: np.ndarray,
            w: np.ndarray, fold_seed: int, *, n_splits: int, n_components: int, alphas
            ) -> np.ndarray:
    """Spearman rho of out-of-fold prediction and held-out in-fold residual,
    per image and target, on the given subjects (each row repeated by its weight)."""
    folds = _folds(len(subjects), n_splits, fold_seed)
    target, train_resid = _fold_targets(Y[subjects], D[subjects], w, folds)
    rows = np.repeat(np.arange(len(subjects)), w.astype(int))
    out = np.full((len(feats), Y.shape[1]), np.nan)
    for j, X in enumerate(feats):
        pred = _fold_predictions(X, train_resid, w, folds, rows=subjects,
                                 n_components=n_components, alphas=alphas)
        out[j] = _rowwise_spearman(target[rows].T, pred[rows].T)
    return out


def _resampled_rho(features: Mapping[str, np.ndarray], Y: np.ndarray, D: np.ndarray, *,
                   scheme: str, n_boot: int, n_splits: int, n_components: int, alphas,
                   seed: int) -> np.ndarray:
    """Resampled rho per resample, image and target column: (n_boot, n_images, t).

    For ``subsample`` the half-sample correlations are rescaled to the full
    sample (see :func:`resample_correlations`).
    """
    n, t = Y.shape
    if scheme == "subsample" and n // 2 < 2 * n_splits:
        raise ValueError(f"{n} subjects are too few for half-samples with {n_splits}-fold "
                         f"cross-validation (need at least {4 * n_splits})")
    feats = [_informative(X) for X in features.values()]
    kw = dict(n_splits=n_splits, n_components=n_components, alphas=alphas)
    rho = np.full((n_boot, len(feats), t), np.nan)
    with threadpool_limits(limits=1):  # small matrices: extra BLAS threads only cost
        for b, (subjects, w, fold_seed) in enumerate(_resamples(n, n_boot, seed, scheme)):
            if len(subjects) >= 2 * n_splits:  # else too few to cross-validate: NaN
                rho[b] = _cv_rho(feats, Y, D, subjects, w, fold_seed, **kw)
        if scheme == "subsample":
            full = _cv_rho(feats, Y, D, np.arange(n), np.ones(n), seed, **kw)
            rho = _rescale_to_full(rho, full, (n // 2) / n)
    return rho


def _fisher_z(rho: np.ndarray) -> np.ndarray:
    return np.arctanh(np.clip(rho, -1 + 1e-9, 1 - 1e-9))


def _rescale_to_full(rho: np.ndarray, full: np.ndarray, fraction: float) -> np.ndarray:
    """Subsample correlations rescaled to the full sample, on Fisher's z scale.

    ``tanh(z(full) + sqrt(fraction) * (z(rho_b) - mean_b z(rho_b)))``: centred
    on the full-sample estimate (the mean of the z values is exactly
    ``z(full)``), the spread shrunk to the full sample size, and every value
    inside (-1, 1). NaN resamples stay NaN.
    """
    z = _fisher_z(rho)
    with np.errstate(invalid="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN image stays NaN
        centre = np.nanmean(z, axis=0)
    return np.tanh(_fisher_z(full) + np.sqrt(fraction) * (z - centre))


def resample_correlations(features: Mapping[str, np.ndarray], y, covariates=None, *,
                          scheme: str = "subsample", n_boot: int = 1000, n_splits: int = 5,
                          n_components: int = 20, alphas: Iterable[float] = _ALPHAS,
                          seed: int = 0) -> pd.DataFrame:
    """Resampled correlations with the whole cross-validated pipeline refitted.

    Every resample reruns :func:`predict_oof` on its subjects: new folds, the
    age/sex model fitted in each fold's training part, the voxel model
    (scaler, PCA, ridge penalty) refitted in every fold. Its rho is Spearman's
    correlation between the out-of-fold predictions and the held-out in-fold
    residuals. The spread of rho therefore includes the variability of
    fitting, not only that of the subjects. Resample ``b`` has the same
    subjects and the same folds for every image type: rows with the same
    ``boot`` are paired.

    ``scheme="subsample"`` (default; half-sampling): each resample is half of
    the subjects, drawn without replacement. Its correlation ``rho_b`` is
    rescaled to the full sample on Fisher's z scale, ``tanh(z(rho_full) +
    sqrt(m / n) * (z(rho_b) - mean_b z(rho_b)))`` with ``z = arctanh`` and
    ``m = n // 2``, where ``rho_full`` is the estimate of :func:`predict_oof`
    on all subjects with folds seeded by ``seed``. So the returned
    correlations are centred on the full-sample estimate (their mean z is
    exactly its z; their mean is close to it), stay inside (-1, 1), and their
    percentile interval is a subsampling interval. The rescaling assumes
    that the spread comes from the noise of refitted predictions, which is so
    when there is little to predict: in simulations run when this was
    written (100 subjects, 30-40 data sets per setting; the test suite checks
    the no-signal case) the 95% interval covered the true mean correlation in
    94-100% of data sets without a signal, but in 85-97% with one (rho
    0.1-0.6): under a signal it is somewhat narrow.

    ``scheme="bootstrap"``: resamples of ``n`` subjects with replacement; the
    folds are drawn over the distinct subjects (a subject drawn twice sits in
    one fold with weight 2, and the penalty's leave-one-out leaves it out as a
    whole). No rescaling: the correlations' mean is the bootstrap mean, as in
    the paper. This interval is conservative: each refit draws fresh
    prediction noise on a resample whose duplicates halve the effective
    number of pairs, so in the same simulations its intervals were about 1.4
    times as wide as the half-sample ones and covered in 97-100% of data
    sets, with or without a signal: valid, but it detects real signals less
    often.

    A resample with fewer than ``2 * n_splits`` distinct subjects, or where
    the target or the prediction is constant (an image without any varying
    voxel), gives NaN.

    Parameters
    ----------
    features : mapping image name -> array (n_subjects, n_features)
    y : array (n_subjects,)
        The raw measure.
    covariates : array (n_subjects, n_covariates), optional
        As in :func:`predict_oof`.

    Returns
    -------
    DataFrame
        Columns ``boot, image, rho``.
    """
    y = np.asarray(y, dtype=float)
    if y.ndim != 1:
        raise ValueError(f"y must be one-dimensional, got shape {y.shape}")
    if not features:
        raise ValueError("no feature set given")
    for X in features.values():
        _, Y, D, _, _ = _check_inputs(X, y, covariates, None, n_splits)
    rho = _resampled_rho(features, Y, D, scheme=scheme, n_boot=n_boot, n_splits=n_splits,
                         n_components=n_components, alphas=alphas, seed=seed)
    return pd.concat([pd.DataFrame({"boot": np.arange(n_boot), "image": image,
                                    "rho": rho[:, j, 0]})
                      for j, image in enumerate(features)], ignore_index=True)


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    if len(values) == 0:
        return np.nan, np.nan
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize_bootstrap(boot: pd.DataFrame, *, level: float = 0.95) -> pd.DataFrame:
    """Mean and percentile interval of the resampled correlations per image.

    ``boot`` is a table ``boot, image, rho`` such as
    :func:`resample_correlations` returns. NaN resamples are skipped;
    ``n_boot`` counts the ones used. The interval uses :func:`numpy.quantile`
    (linear interpolation); ``significant`` is True when it excludes 0.

    Returns
    -------
    DataFrame
        Columns ``image, n_boot, mean, ci_low, ci_high, significant``.
    """
    rows = []
    for image in pd.unique(boot["image"]):
        rho = boot.loc[boot["image"] == image, "rho"].dropna().to_numpy()
        low, high = _percentile_ci(rho, level)
        rows.append({"image": image, "n_boot": len(rho),
                     "mean": float(rho.mean()) if len(rho) else np.nan,
                     "ci_low": low, "ci_high": high,
                     "significant": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows, columns=["image", "n_boot", "mean", "ci_low",
                                       "ci_high", "significant"])


def _wilcoxon_p(a: np.ndarray, b: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p (NaN when no pair differs)."""
    if len(a) == 0 or np.all(a == b):
        return np.nan
    return float(stats.wilcoxon(a, b, alternative="two-sided").pvalue)


def compare_images(boot: pd.DataFrame, *, reference: str = "original",
                   level: float = 0.95) -> pd.DataFrame:
    """Reference image versus each other image on paired resamples.

    ``diff = rho[reference] - rho[image]`` per resample (paired by ``boot``;
    resamples with NaN in either are dropped). Reported: its mean and
    percentile interval (``diff_significant`` when it excludes 0; None when no resample
    has both correlations, e.g. a constant prediction), and the
    paper's two-sided Wilcoxon signed-rank p on the paired correlations,
    which shrinks with the number of resamples and so is not a valid test.
    The resamples of :func:`resample_correlations` refit every image type
    on the same subjects and folds, so the interval of the difference
    includes the variability of fitting both models.

    Returns
    -------
    DataFrame
        Columns ``image, diff_mean, ci_low, ci_high, wilcoxon_p,
        diff_significant``.
    """
    wide = boot.pivot(index="boot", columns="image", values="rho")
    if reference not in wide.columns:
        raise ValueError(f"reference image {reference!r} not in the resample table")
    rows = []
    for image in pd.unique(boot["image"]):
        if image == reference:
            continue
        pair = wide[[reference, image]].dropna()
        ref, other = pair[reference].to_numpy(), pair[image].to_numpy()
        diff = ref - other
        low, high = _percentile_ci(diff, level)
        rows.append({"image": image,
                     "diff_mean": float(diff.mean()) if len(diff) else np.nan,
                     "ci_low": low, "ci_high": high,
                     "wilcoxon_p": _wilcoxon_p(ref, other),
                     # undefined (no resample with both correlations, e.g. a constant prediction): neither
                     "diff_significant": bool(low > 0 or high < 0) if len(diff) else None})
    return pd.DataFrame(rows, columns=_DIFF_COLUMNS)


def analyze_muscle(table: pd.DataFrame, features: Mapping[str, np.ndarray], *,
                   muscles: Iterable[str] = MUSCLES, n_boot: int = 1000,
                   seed: int = 0, n_splits: int = 5, n_components: int = 20,
                   reference: str = "original", scheme: str = "subsample",
                   covariates: Iterable[str] = ("age", "sex")
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Whole analysis: refitted resamples of the cross-validated pipeline, then compare.

    ``table`` holds one row per participant (same order as the rows of every
    feature matrix) with the ``covariates`` (age and sex) and ``muscle_hu_*``
    columns. Participants without the muscle or covariates are dropped for
    that muscle. For each muscle, :func:`resample_correlations` reruns the
    whole pipeline (in-fold age/sex adjustment, voxel model, out-of-fold
    prediction) on ``n_boot`` resamples of subjects (``scheme``: half-samples
    rescaled to the full sample by default, or bootstrap resamples); rho is
    Spearman's correlation between the out-of-fold predictions and the
    held-out in-fold residuals. Every image type, and every muscle measured
    on the same participants, uses the same resamples and folds (drawn from
    ``seed``), so differences between image types are paired and come from
    the features alone; muscles on the same participants also share each
    fold's scaler and PCA, which are fitted once for all of them.

    Returns
    -------
    corr : DataFrame
        ``muscle, image, n, mean, ci_low, ci_high, significant``; ``mean`` is
        the mean of the resampled correlations (with ``subsample``, close to
        the full-sample cross-validated estimate, on which they are centred).
    diff : DataFrame
        ``muscle, image, diff_mean, ci_low, ci_high, wilcoxon_p,
        diff_significant`` (empty when ``reference`` is not a feature set).
    boot : DataFrame
        ``muscle, boot, image, rho``: the resampled correlations.
    """
    muscles = list(muscles)
    images = list(features)
    design, cov_ok = _design(table, covariates)
    feats = {image: np.asarray(X, dtype=float) for image, X in features.items()}
    for image, X in feats.items():
        if X.ndim != 2 or len(X) != len(table):
            raise ValueError(f"features[{image!r}] has shape {X.shape}; expected "
                             f"({len(table)}, n_features), one row per table row")
    groups: dict[bytes, list[str]] = {}  # muscles measured on the same participants
    for muscle in muscles:
        keep = cov_ok & table[muscle_column(muscle)].notna().to_numpy()
        groups.setdefault(keep.tobytes(), []).append(muscle)
    boot_of, n_of = {}, {}
    for key, group in groups.items():
        keep = np.frombuffer(key, dtype=bool)
        Y = table.loc[keep, [muscle_column(mu) for mu in group]].to_numpy(dtype=float)
        sub = {image: X[keep] for image, X in feats.items()}
        _, Y, D, _, _ = _check_inputs(next(iter(sub.values())), Y, design[keep][:, 1:],
                                      None, n_splits)
        rho = _resampled_rho(sub, Y, D, scheme=scheme, n_boot=n_boot, n_splits=n_splits,
                             n_components=n_components, alphas=_ALPHAS, seed=seed)
        for t, muscle in enumerate(group):
            n_of[muscle] = int(keep.sum())
            boot_of[muscle] = pd.concat(
                [pd.DataFrame({"boot": np.arange(n_boot), "image": image, "rho": rho[:, j, t]})
                 for j, image in enumerate(images)], ignore_index=True)
    corr, diff, boot = [], [], []
    for muscle in muscles:
        b = boot_of[muscle]
        s = summarize_bootstrap(b).drop(columns="n_boot")
        s.insert(0, "muscle", muscle)
        s.insert(2, "n", n_of[muscle])
        corr.append(s)
        if reference in feats:
            d = compare_images(b, reference=reference)
            d.insert(0, "muscle", muscle)
            diff.append(d)
        boot.append(b.assign(muscle=muscle)[["muscle", "boot", "image", "rho"]])
    empty_diff = pd.DataFrame(columns=["muscle"] + _DIFF_COLUMNS)
    return (pd.concat(corr, ignore_index=True),
            pd.concat(diff, ignore_index=True) if diff else empty_diff,
            pd.concat(boot, ignore_index=True))


def wilcoxon_p_vs_nboot(boot: pd.DataFrame, *, reference: str = "original",
                        image: str, n_boots: Iterable[int] = (100, 300, 1000)
                        ) -> pd.DataFrame:
    """The paper's Wilcoxon p and the paired-difference interval on the first
    ``k`` resamples, for each ``k`` in ``n_boots``.

    The p-value falls as ``k`` grows although nothing about the data changes;
    the interval of the difference only settles. ``boot`` holds one muscle.

    Returns
    -------
    DataFrame
        Columns ``n_boot, wilcoxon_p, diff_ci_low, diff_ci_high``.
    """
    if image not in set(boot["image"]):
        raise ValueError(f"image {image!r} not in the resample table")
    boots = np.sort(pd.unique(boot["boot"]))
    pair = boot[boot["image"].isin([reference, image])]
    rows = []
    for k in n_boots:
        if k > len(boots):
            raise ValueError(f"asked for {k} resamples, the table has {len(boots)}")
        sub = pair[pair["boot"].isin(boots[:k])]
        res = compare_images(sub, reference=reference).iloc[0]
        rows.append({"n_boot": int(k), "wilcoxon_p": res["wilcoxon_p"],
                     "diff_ci_low": res["ci_low"], "diff_ci_high": res["ci_high"]})
    return pd.DataFrame(rows, columns=["n_boot", "wilcoxon_p", "diff_ci_low",
                                       "diff_ci_high"])


def wilcoxon_demo(boot: pd.DataFrame, diff: pd.DataFrame, *, reference: str = "original",
                  n_boots: Iterable[int] = (100, 300, 1000)) -> pd.DataFrame:
    """:func:`wilcoxon_p_vs_nboot` for the comparison with the largest difference in rho.

    ``boot`` holds every muscle (column ``muscle``); ``diff`` is :func:`analyze_muscle`'s
    comparison table (``muscle, image, diff_mean, ...``; undefined rows are skipped). The
    result starts with a ``comparison`` column naming the pair and the muscle.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> boot = pd.DataFrame({"muscle": "thigh", "boot": np.repeat(np.arange(20), 2),
    ...                      "image": ["original", "pydeface"] * 20, "rho": rng.normal(0.3, 0.05, 40)})
    >>> diff = pd.DataFrame({"muscle": ["thigh", "thigh"], "image": ["pydeface", "skullstrip"],
    ...                      "diff_mean": [0.1, float("nan")]})
    >>> demo = wilcoxon_demo(boot, diff, n_boots=[10, 20])
    >>> demo["comparison"].tolist(), demo["n_boot"].tolist()
    (['original vs pydeface (thigh)', 'original vs pydeface (thigh)'], [10, 20])
    """
    defined = diff.dropna(subset=["diff_mean"])
    if defined.empty:
        raise ValueError("no defined comparison: every image's prediction is constant")
    worst = defined.sort_values("diff_mean", ascending=False).iloc[0]
    demo = wilcoxon_p_vs_nboot(boot[boot["muscle"] == worst["muscle"]].drop(columns="muscle"),
                               reference=reference, image=worst["image"], n_boots=n_boots)
    demo.insert(0, "comparison", f"{reference} vs {worst['image']} ({worst['muscle']})")
    return demo
