"""A linear prior for the cascade: kernel ridge regression from the visible head to the face.

The diffusion cascade learns a residual over a prior. With ``cascade.prior:
average`` the prior is the cohort's average head matched to each defaced image
(:func:`refacelib.pipeline.refacing.build_examples`). With ``cascade.prior: ridge`` a
linear predictor is added to it inside the removal mask: for each defacing
method, kernel ridge regression from the defaced image's visible voxels (on the
cascade's common grid) to the residual of the original over the matched average
inside the region the method removes. It is fitted on the training cohort only,
its penalty chosen on the validation split (:data:`LAMBDAS`), and it sees only
what an attacker has: the defaced image at prediction time, the training
cohort at fit time.

The diffusion stages then learn what the linear predictor misses. Training
examples receive out-of-fold predictions (:func:`out_of_fold`), so that the
residual the networks learn has the size it has on unseen subjects.

All functions are pure: arrays in, arrays out; nothing is written.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy import ndimage

__all__ = ["LAMBDAS", "FOLDS", "PRIORS", "RidgeFace", "fit", "predict", "select_lambda", "out_of_fold",
           "fit_methods", "model_prior"]

#: Ridge penalties tried on the validation split, relative to the mean of the kernel's diagonal.
LAMBDAS = (0.01, 0.03, 0.1, 0.3, 1.0)

#: Penalty used when there is no validation subject to choose one.
DEFAULT_LAMBDA = 0.1

#: Folds (over training subjects) of the out-of-fold predictions for the training examples.
FOLDS = 5

#: Values of ``cascade.prior``.
PRIORS = ("average", "ridge")

#: A visible voxel is one outside the predicted region where the training originals' mean exceeds this
#: (in the cascade's intensity unit): the head, not the air around it.
HEAD_LEVEL = 0.05


@dataclass(frozen=True)
class RidgeFace:
    """A fitted predictor (dual form) for one defacing method.

    ``region``: where it predicts (the training examples' removal masks, united
    and dilated by one voxel); ``visible``: the voxels it reads (head voxels
    outside ``region``); ``features`` (n, p) the centred training inputs;
    ``alpha`` (n, q) the dual coefficients; ``x_mean`` (p,), ``r_mean`` (q,)
    the training means; ``lam`` the relative penalty.
    """

    region: np.ndarray
    visible: np.ndarray
    features: np.ndarray
    alpha: np.ndarray
    x_mean: np.ndarray
    r_mean: np.ndarray
    lam: float


def _region_and_visible(original: np.ndarray, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    region = ndimage.binary_dilation(np.asarray(mask, bool).any(axis=0))
    visible = ~region & (np.asarray(original, np.float32).mean(axis=0) > HEAD_LEVEL)
    return region, visible


def fit(original: np.ndarray, defaced: np.ndarray, mask: np.ndarray, prior: np.ndarray, *, lam: float,
        region: np.ndarray | None = None, visible: np.ndarray | None = None) -> RidgeFace:
    """Kernel ridge from ``defaced``'s visible voxels to ``original - prior`` in the removal region.

    Arrays (n, X, Y, Z) of the training examples of one method. ``region`` and
    ``visible`` default to those of these examples (:class:`RidgeFace`).

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> w = np.linspace(1, 2, 4, dtype=np.float32)[None, :, None, None] * np.ones((1, 4, 4, 4), np.float32)
    >>> original = 1 + rng.standard_normal((30, 1, 1, 1)).astype(np.float32) * w
    >>> mask = np.zeros((30, 4, 4, 4), bool); mask[:, :1] = True
    >>> m = fit(original, np.where(mask, 0, original), mask, np.ones_like(original), lam=1e-4,
    ...         region=mask[0], visible=~mask[0])
    >>> residual = predict(m, np.where(mask[:1], 0, 1 + 0.5 * w))  # a new head: its face is 1 + 0.5 * w
    >>> bool(np.abs(residual[0, 0] - 0.5).max() < 1e-2), bool(residual[0, 1:].any())
    (True, False)
    """
    if region is None or visible is None:
        r, v = _region_and_visible(original, mask)
        region = r if region is None else np.asarray(region, bool)
        visible = v if visible is None else np.asarray(visible, bool)
    if len(original) < 2 or not visible.any() or not region.any():
        raise ValueError(f"a linear prior needs at least 2 training examples, visible voxels and a removal region "
                         f"(got {len(original)} examples, {int(visible.sum())} visible, {int(region.sum())} removed)")
    x = np.asarray(defaced, np.float64)[:, visible]
    r = (np.asarray(original, np.float64) - np.asarray(prior, np.float64))[:, region]
    x_mean, r_mean = x.mean(axis=0), r.mean(axis=0)
    a = x - x_mean
    k = a @ a.T
    penalty = float(lam) * max(float(np.trace(k)) / len(k), 1e-12)
    alpha = np.linalg.solve(k + penalty * np.eye(len(k)), r - r_mean)
    return RidgeFace(region=region, visible=visible, features=a.astype(np.float32), alpha=alpha.astype(np.float32),
                     x_mean=x_mean.astype(np.float32), r_mean=r_mean.astype(np.float32), lam=float(lam))


def predict(model: RidgeFace, defaced: np.ndarray) -> np.ndarray:
    """Predicted residual over the prior, (n, X, Y, Z), zero outside ``model.region``."""
    defaced = np.asarray(defaced, np.float32)
    x = defaced[:, model.visible] - model.x_mean
    r = model.r_mean + (x @ model.features.T) @ model.alpha
    out = np.zeros(defaced.shape, np.float32)
    out[:, model.region] = r
    return out


def _masked_error(residual: np.ndarray, original, prior, mask) -> float:
    """Median over examples of the mean squared error inside each example's removal mask."""
    err = (np.asarray(prior, np.float32) + residual - np.asarray(original, np.float32)) ** 2
    m = np.asarray(mask, bool)
    return float(np.median([e[k].mean() for e, k in zip(err, m) if k.any()]))


def select_lambda(train: dict, val: dict | None, *, lambdas=LAMBDAS) -> tuple[float, dict]:
    """The penalty with the lowest validation error inside the removal masks, and every score.

    ``train``/``val``: dicts of arrays ``original``, ``defaced``, ``mask``,
    ``prior`` (n, X, Y, Z) of one method. Without validation examples:
    :data:`DEFAULT_LAMBDA` and no scores.
    """
    if val is None or len(val["original"]) == 0:
        return DEFAULT_LAMBDA, {}
    region, visible = _region_and_visible(train["original"], train["mask"])
    scores = {}
    for lam in lambdas:
        model = fit(train["original"], train["defaced"], train["mask"], train["prior"], lam=lam,
                    region=region, visible=visible)
        residual = np.where(val["mask"], predict(model, val["defaced"]), np.float32(0))
        scores[float(lam)] = _masked_error(residual, val["original"], val["prior"], val["mask"])
    return min(scores, key=scores.get), scores


def out_of_fold(train: dict, subjects: list, *, lam: float, folds: int = FOLDS) -> np.ndarray:
    """Each training example's residual predicted by a fit that did not see its subject.

    Subjects are dealt to ``folds`` folds in their order (deterministic);
    region and visible voxels are those of all training examples, as in the
    final fit.
    """
    subjects = list(subjects)
    names = list(dict.fromkeys(subjects))
    fold_of = {s: i % max(1, min(folds, len(names))) for i, s in enumerate(names)}
    region, visible = _region_and_visible(train["original"], train["mask"])
    out = np.zeros(np.shape(train["original"]), np.float32)
    idx = np.array([fold_of[s] for s in subjects])
    for f in sorted(set(idx)):
        held, kept = idx == f, idx != f
        if not kept.any():
            continue
        model = fit(*(np.asarray(train[k])[kept] for k in ("original", "defaced", "mask", "prior")), lam=lam,
                    region=region, visible=visible)
        out[held] = predict(model, np.asarray(train["defaced"])[held])
    return out


def _subset(data: dict, method: str) -> tuple[dict, np.ndarray]:
    keep = np.asarray(data["method"]) == method
    return {k: np.asarray(data[k])[keep] for k in ("original", "defaced", "mask", "prior")}, keep


def fit_methods(train: dict, val: dict | None = None, *, lambdas: dict | None = None) -> tuple[dict, dict]:
    """One :class:`RidgeFace` per defacing method of ``train`` (examples of :func:`build_examples`).

    ``lambdas`` (method -> penalty) skips the choice on ``val`` (a refit of a
    trained cascade's prior). Returns ``(models, record)``, the record holding
    each method's penalty and validation scores (JSON-ready).
    """
    models, record = {}, {}
    for method in dict.fromkeys(train["method"]):
        tr, _ = _subset(train, method)
        if lambdas is not None and method in lambdas:
            lam, scores = float(lambdas[method]), {}
        else:
            va = _subset(val, method)[0] if val is not None else None
            lam, scores = select_lambda(tr, va)
        models[method] = fit(tr["original"], tr["defaced"], tr["mask"], tr["prior"], lam=lam)
        record[method] = {"lambda": lam, "val_masked_mse": {str(k): v for k, v in scores.items()}}
    return models, record


def model_prior(data: dict, models: dict, *, training: bool = False) -> np.ndarray:
    """The prior the cascade sees: ``data["prior"]`` plus each example's predicted residual inside its mask.

    ``training``: the examples are the training cohort the models were fitted
    on, so each gets its out-of-fold prediction (:func:`out_of_fold`, with its
    method's penalty) instead of an in-sample one.
    """
    prior = np.array(data["prior"], np.float32, copy=True)
    for method, model in models.items():
        sub, keep = _subset(data, method)
        if not keep.any():
            continue
        if training:
            subjects = [s for s, k in zip(data["subject"], keep) if k]
            residual = out_of_fold(sub, subjects, lam=model.lam)
        else:
            residual = predict(model, sub["defaced"])
        prior[keep] = sub["prior"] + np.where(sub["mask"], residual, np.float32(0))
    return prior
