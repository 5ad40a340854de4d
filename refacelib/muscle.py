"""Do facial voxels predict body muscle? Cross-validated prediction and bootstrap.

For each muscle (CT radiodensity in Hounsfield units at abdomen, thigh and
shin) the age and sex effects are regressed out (:func:`residualize`); the
residual is predicted out-of-fold from the facial voxels of one image type
(:func:`predict_oof`); the Spearman correlation between predicted and true
residual is bootstrapped over subjects (:func:`bootstrap_correlations`) and
summarised as a mean with a 95% percentile interval
(:func:`summarize_bootstrap`).

Image types are compared with the original two ways (:func:`compare_images`):
the paper's Wilcoxon signed-rank test on the bootstrap correlations, whose
p-value shrinks as resamples are added (:func:`wilcoxon_p_vs_nboot`), and a
paired bootstrap interval of the difference in correlation, computed on the
same resamples for every image type.
"""
from __future__ import annotations

import zlib
from typing import Iterable, Mapping

import numpy as np
import pandas as pd
from scipy import stats
from sklearn.base import BaseEstimator, TransformerMixin
from sklearn.decomposition import PCA
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold
from sklearn.pipeline import Pipeline
from sklearn.preprocessing import StandardScaler

__all__ = [
    "MUSCLES",
    "muscle_column",
    "residualize",
    "make_model",
    "predict_oof",
    "spearman",
    "bootstrap_indices",
    "bootstrap_correlations",
    "summarize_bootstrap",
    "compare_images",
    "analyze_muscle",
    "wilcoxon_p_vs_nboot",
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
    """PCA whose number of components is capped at fit time by
    ``min(n_components, n_samples - 1, n_features)``."""

    def __init__(self, n_components: int = 20, random_state: int = 0):
        self.n_components = n_components
        self.random_state = random_state

    def fit(self, X, y=None):
        n, p = np.shape(X)
        k = max(1, min(self.n_components, n - 1, p))
        self.pca_ = PCA(n_components=k, random_state=self.random_state).fit(X)
        self.n_components_ = k
        return self

    def transform(self, X):
        return self.pca_.transform(X)


def make_model(*, n_components: int = 20, alphas: Iterable[float] = _ALPHAS) -> Pipeline:
    """StandardScaler -> PCA -> RidgeCV pipeline.

    The PCA keeps at most ``n_components`` components, capped at fit time by
    the training-set size minus one. RidgeCV chooses the penalty among
    ``alphas`` by its efficient leave-one-out (generalised) cross-validation
    on the training data only, so inside the outer KFold of
    :func:`predict_oof` it is the inner loop of a nested cross-validation.
    (The scaler and PCA are fitted once per outer fold, not refitted in the
    inner leave-one-out, which only affects the penalty choice.)

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


def _check_xy(X, y, n_splits: int) -> tuple[np.ndarray, np.ndarray]:
    X = np.asarray(X, dtype=float)
    y = np.asarray(y, dtype=float)
    if X.ndim != 2 or y.ndim != 1 or len(X) != len(y):
        raise ValueError(f"X must be (n_subjects, n_features) and y (n_subjects,); "
                         f"got {X.shape} and {y.shape}")
    if np.isnan(X).any() or np.isnan(y).any():
        raise ValueError("X and y must not contain NaN; drop those subjects first")
    if n_splits < 2:
        raise ValueError(f"n_splits must be at least 2, got {n_splits}")
    if len(y) < 2 * n_splits:
        raise ValueError(f"{len(y)} subjects are too few for {n_splits}-fold "
                         f"cross-validation (need at least {2 * n_splits})")
    return X, y


def predict_oof(X, y, *, n_splits: int = 5, n_components: int = 20,
                alphas: Iterable[float] = _ALPHAS, seed: int = 0,
                center: bool = True) -> np.ndarray:
    """Out-of-fold predictions of ``y`` from ``X`` (subjects by features).

    Subjects are split by ``KFold(n_splits, shuffle=True, random_state=seed)``;
    each fold is predicted by a fresh :func:`make_model` fitted on the other
    folds, so no subject is predicted by a model that saw it.

    With ``center=True`` (default) each fold's predictions have the mean of
    its *training* targets removed (the model's intercept, a constant per
    fold). That constant is anti-correlated with the held-out fold's mean
    (exactly so for residuals, whose overall mean is 0) and otherwise drives
    the pooled correlation negative under the null; removing it uses no
    held-out information. ``center=False`` gives the raw predictions.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> X = rng.normal(size=(30, 8)); y = X[:, 0] + 0.1 * rng.normal(size=30)
    >>> spearman(y, predict_oof(X, y)) > 0.8
    True
    """
    X, y = _check_xy(X, y, n_splits)
    pred = np.full(len(y), np.nan)
    folds = KFold(n_splits=n_splits, shuffle=True, random_state=seed)
    for train, test in folds.split(X):
        model = make_model(n_components=n_components, alphas=alphas)
        model.fit(X[train], y[train])
        offset = y[train].mean() if center else 0.0
        pred[test] = model.predict(X[test]) - offset
    return pred


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


def bootstrap_correlations(y, predictions: Mapping[str, np.ndarray], *,
                           n_boot: int = 1000, seed: int = 0) -> pd.DataFrame:
    """Spearman correlation of ``y`` with each prediction on paired resamples.

    The same resample indices serve every image type, so the rows with the
    same ``boot`` are paired. Resamples where ``y`` or the prediction is
    constant give NaN.

    Returns
    -------
    DataFrame
        Columns ``boot, image, rho``.
    """
    y = np.asarray(y, dtype=float)
    idx = bootstrap_indices(len(y), n_boot=n_boot, seed=seed)
    frames = []
    for image, yhat in predictions.items():
        yhat = np.asarray(yhat, dtype=float)
        if yhat.shape != y.shape:
            raise ValueError(f"predictions[{image!r}] has shape {yhat.shape}, "
                             f"expected {y.shape}")
        rho = _rowwise_spearman(y[idx], yhat[idx])
        frames.append(pd.DataFrame({"boot": np.arange(n_boot), "image": image,
                                    "rho": rho}))
    return pd.concat(frames, ignore_index=True)


def _percentile_ci(values: np.ndarray, level: float) -> tuple[float, float]:
    if len(values) == 0:
        return np.nan, np.nan
    tail = (1.0 - level) / 2.0
    low, high = np.quantile(values, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize_bootstrap(boot: pd.DataFrame, *, level: float = 0.95) -> pd.DataFrame:
    """Mean and percentile interval of the bootstrap correlations per image.

    NaN resamples are skipped; ``n_boot`` counts the ones used. The interval
    uses :func:`numpy.quantile` (linear interpolation); ``significant`` is
    True when it excludes 0.

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
    percentile interval (``diff_significant`` when it excludes 0), and the
    paper's two-sided Wilcoxon signed-rank p on the paired correlations,
    which shrinks with the number of resamples and so is not a valid test.

    Returns
    -------
    DataFrame
        Columns ``image, diff_mean, ci_low, ci_high, wilcoxon_p,
        diff_significant``.
    """
    wide = boot.pivot(index="boot", columns="image", values="rho")
    if reference not in wide.columns:
        raise ValueError(f"reference image {reference!r} not in the bootstrap table")
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
                     "diff_significant": bool(low > 0 or high < 0)})
    return pd.DataFrame(rows, columns=_DIFF_COLUMNS)


def _muscle_seeds(seed: int, muscle: str) -> tuple[int, int]:
    """Deterministic (cv_seed, boot_seed) of one muscle, independent of order."""
    ss = np.random.SeedSequence([seed, zlib.crc32(muscle.encode())])
    cv_seed, boot_seed = ss.generate_state(2)
    return int(cv_seed), int(boot_seed)


def analyze_muscle(table: pd.DataFrame, features: Mapping[str, np.ndarray], *,
                   muscles: Iterable[str] = MUSCLES, n_boot: int = 1000,
                   seed: int = 0, n_splits: int = 5, n_components: int = 20,
                   reference: str = "original"
                   ) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """Whole analysis: residualize, predict out-of-fold, bootstrap, compare.

    ``table`` holds one row per participant (same order as the rows of every
    feature matrix) with ``age``, ``sex`` and ``muscle_hu_*`` columns.
    Participants without the muscle or covariates are dropped for that
    muscle. Each muscle gets its own seeds derived from ``seed`` and its
    name; within a muscle every image type uses the same folds and the same
    resamples, so differences come from the features alone.

    Returns
    -------
    corr : DataFrame
        ``muscle, image, n, mean, ci_low, ci_high, significant``.
    diff : DataFrame
        ``muscle, image, diff_mean, ci_low, ci_high, wilcoxon_p,
        diff_significant`` (empty when ``reference`` is not a feature set).
    boot : DataFrame
        ``muscle, boot, image, rho``.
    """
    corr, diff, boot = [], [], []
    for muscle in muscles:
        col = muscle_column(muscle)
        resid = residualize(table, [col])[col].to_numpy()
        keep = ~np.isnan(resid)
        cv_seed, boot_seed = _muscle_seeds(seed, muscle)
        preds = {image: predict_oof(np.asarray(X)[keep], resid[keep],
                                    n_splits=n_splits, n_components=n_components,
                                    seed=cv_seed)
                 for image, X in features.items()}
        b = bootstrap_correlations(resid[keep], preds, n_boot=n_boot, seed=boot_seed)
        s = summarize_bootstrap(b).drop(columns="n_boot")
        s.insert(0, "muscle", muscle)
        s.insert(2, "n", int(keep.sum()))
        corr.append(s)
        if reference in preds:
            d = compare_images(b, reference=reference)
            d.insert(0, "muscle", muscle)
            diff.append(d)
        b.insert(0, "muscle", muscle)
        boot.append(b)
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
        raise ValueError(f"image {image!r} not in the bootstrap table")
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
