"""The linear (kernel ridge) prior: leak-free out-of-fold predictions, penalty chosen on validation."""
import numpy as np
import pytest

from refacelib.diffusion import linear


def _cohort(n, rng, methods=("a", "b")):
    """Heads whose masked face is a linear function of a visible latent (plus noise)."""
    w = np.linspace(1, 2, 6, dtype=np.float32)[:, None, None] * np.ones((6, 5, 5), np.float32)
    z = rng.standard_normal(n).astype(np.float32)
    original = 1 + z[:, None, None, None] * w + 0.01 * rng.standard_normal((n, 6, 5, 5)).astype(np.float32)
    mask = np.zeros((n, 6, 5, 5), bool)
    mask[:, :2] = True
    data = {"original": [], "defaced": [], "mask": [], "prior": [], "subject": [], "method": []}
    for i in range(n):
        for m in methods:
            data["original"].append(original[i])
            data["defaced"].append(np.where(mask[i], 0, original[i]))
            data["mask"].append(mask[i])
            data["prior"].append(np.ones_like(original[i]))
            data["subject"].append(f"s{i}")
            data["method"].append(m)
    return {k: (np.stack(v) if k not in ("subject", "method") else v) for k, v in data.items()}


def test_ridge_recovers_a_face_predictable_from_the_head(rng):
    train, test = _cohort(40, rng), _cohort(10, rng)
    models, record = linear.fit_methods(train, _cohort(8, rng))
    assert set(models) == {"a", "b"} and set(record["a"]["val_masked_mse"]) == {str(lam) for lam in linear.LAMBDAS}
    prior = linear.model_prior(test, models)
    inside = test["mask"]
    before = np.mean((test["prior"] - test["original"])[inside] ** 2)
    after = np.mean((prior - test["original"])[inside] ** 2)
    assert after < 0.05 * before
    np.testing.assert_array_equal(prior[~inside], test["prior"][~inside])  # nothing changes outside the mask


def test_penalty_is_chosen_on_validation_and_kept_on_refit(rng):
    train, val = _cohort(20, rng), _cohort(6, rng)
    lam, scores = linear.select_lambda(*(linear._subset(d, "a")[0] for d in (train, val)))
    assert lam == min(scores, key=scores.get)
    assert linear.select_lambda(linear._subset(train, "a")[0], None) == (linear.DEFAULT_LAMBDA, {})
    models, record = linear.fit_methods(train, lambdas={"a": 0.3, "b": 0.01})
    assert models["a"].lam == 0.3 and record["b"] == {"lambda": 0.01, "val_masked_mse": {}}


def test_training_examples_get_out_of_fold_predictions(rng):
    """A training subject's prior must not come from a fit that saw its own face."""
    train = _cohort(15, rng, methods=("a",))
    models, _ = linear.fit_methods(train, lambdas={"a": 1e-3})
    oof = linear.model_prior(train, models, training=True)
    changed = {k: (v.copy() if isinstance(v, np.ndarray) else list(v)) for k, v in train.items()}
    changed["original"][0][changed["mask"][0]] += 5.0  # subject s0's hidden face moves; its visible head does not
    models2, _ = linear.fit_methods(changed, lambdas={"a": 1e-3})
    oof2 = linear.model_prior(changed, models2, training=True)
    np.testing.assert_allclose(oof2[0], oof[0], atol=1e-5)  # its own prediction ignores its own face
    in_sample = linear.model_prior(changed, models2)
    assert np.abs(in_sample[0] - linear.model_prior(train, models)[0]).max() > 0.05  # an in-sample fit would not


def test_fit_names_what_is_missing(rng):
    train = _cohort(5, rng, methods=("a",))
    sub = linear._subset(train, "a")[0]
    with pytest.raises(ValueError, match="0 visible"):
        linear.fit(sub["original"], sub["defaced"], sub["mask"], sub["prior"], lam=0.1,
                   region=np.ones(sub["mask"].shape[1:], bool), visible=np.zeros(sub["mask"].shape[1:], bool))
    with pytest.raises(ValueError, match="1 examples"):
        linear.fit(*(sub[k][:1] for k in ("original", "defaced", "mask", "prior")), lam=0.1)
