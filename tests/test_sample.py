"""Refacing: shapes, exact composite outside the mask, seeded reproducibility."""
import numpy as np
import pytest
import torch

from refacelib.diffusion.cascade import CascadeConfig, face_box, make_unet
from refacelib.diffusion.sample import make_sampler, one_step_estimate, reface

TINY = dict(channels=[4, 8], train_timesteps=12, beta_schedule="cosine")


def _batch(n=2, size=16):
    g = np.mgrid[:size, :size, :size].astype(np.float32)
    ball = (((g - 7.5) ** 2).sum(0) < 36).astype(np.float32) * 0.8
    prior = np.repeat(ball[None], n, 0)
    mask = np.repeat((g[0] >= 11)[None], n, 0)
    original = prior + 0.1 * np.random.default_rng(0).random(prior.shape, dtype=np.float32)
    defaced = np.where(mask, 0.0, original).astype(np.float32)
    return defaced, mask, prior


@pytest.fixture(scope="module")
def setup():
    defaced, mask, prior = _batch()
    cfg = CascadeConfig.from_dict(dict(stage1=TINY, stage2=TINY, box=face_box(mask[0], margin=1, multiple=2)))
    models = []
    for stage, cin in ((1, 3), (2, 4)):
        torch.manual_seed(stage)
        net = make_unet(cin, stage=cfg.stage(stage))
        with torch.no_grad():  # random, non-zero weights so the output depends on the noise
            for p in net.parameters():
                p.add_(0.05 * torch.randn_like(p))
        models.append(net)
    return defaced, mask, prior, tuple(models), cfg


def test_outputs_shapes_and_exact_outside_mask(setup):
    defaced, mask, prior, models, cfg = setup
    res = reface(defaced, mask, prior, models, cfg, steps=4, n_samples=3, batch_size=4, device="cpu",
                 return_samples=True)
    assert set(res) == {"sample", "mean", "one_step", "stage1", "samples"}
    for key in ("sample", "mean", "one_step", "stage1"):
        assert res[key].shape == defaced.shape and res[key].dtype == np.float32
        assert np.array_equal(res[key][~mask], defaced[~mask]), key
        assert np.isfinite(res[key]).all()
        assert not np.array_equal(res[key][mask], defaced[mask]), key
    assert res["samples"].shape == (2, 3, 16, 16, 16)
    assert np.array_equal(res["samples"][:, 0], res["sample"])
    assert np.allclose(res["samples"].mean(1), res["mean"], atol=1e-6)
    for s in range(3):
        assert np.array_equal(res["samples"][:, s][~mask], defaced[~mask])


def test_seed_reproduces_and_differs(setup):
    defaced, mask, prior, models, cfg = setup
    kw = dict(steps=3, device="cpu", sampler="ddpm")
    a = reface(defaced, mask, prior, models, cfg, seed=5, **kw)
    b = reface(defaced, mask, prior, models, cfg, seed=5, **kw)
    c = reface(defaced, mask, prior, models, cfg, seed=6, **kw)
    for key in ("sample", "mean", "one_step"):
        assert np.array_equal(a[key], b[key])
    assert not np.array_equal(a["sample"], c["sample"])


def test_batching_and_stage1_only(setup):
    defaced, mask, prior, models, cfg = setup
    res = reface(defaced, mask, prior, (models[0], None), cfg, steps=2, n_samples=2, batch_size=1,
                 device="cpu")
    assert np.array_equal(res["sample"], res["stage1"])
    assert np.array_equal(res["mean"][~mask], defaced[~mask])


def test_samplers_and_one_step(setup):
    defaced, mask, prior, models, cfg = setup
    full = reface(defaced, mask, prior, models, cfg, sampler="ddpm", steps=None, device="cpu")
    assert np.array_equal(full["sample"][~mask], defaced[~mask])
    sched, ts, eta = make_sampler(cfg.stage1, sampler="ddpm", steps=None)
    assert eta is None and ts == list(range(11, -1, -1))
    _, ts, eta = make_sampler(cfg.stage1, sampler="ddpm", steps=4)
    assert eta == 1.0 and len(ts) == 4
    _, ts, eta = make_sampler(cfg.stage1, sampler="ddim", steps=100)
    assert eta == 0.0 and len(ts) == 12
    with pytest.raises(ValueError):
        make_sampler(cfg.stage1, sampler="euler", steps=3)
    est = one_step_estimate(defaced, mask, prior, models, cfg, n_samples=2, device="cpu")
    ref = reface(defaced, mask, prior, models, cfg, sampler="ddim", steps=1, n_samples=2, device="cpu")
    assert np.array_equal(est, ref["mean"]) and np.array_equal(est[~mask], defaced[~mask])
    assert np.allclose(ref["one_step"], ref["mean"], atol=1e-6)


@pytest.mark.parametrize("kind", ["ddim", "ddpm"])
def test_make_sampler_puts_every_scheduler_table_on_the_device(setup, kind):
    # MONAI moves alphas_cumprod on first use: a blocking copy inside the loop on CUDA
    cfg = setup[-1]
    sched, _, _ = make_sampler(cfg.stage1, sampler=kind, steps=None if kind == "ddpm" else 3,
                               device=torch.device("meta"))
    tensors = {k: v for k, v in vars(sched).items() if isinstance(v, torch.Tensor)}
    assert "alphas_cumprod" in tensors and all(v.device.type == "meta" for v in tensors.values())
    sched, _, _ = make_sampler(cfg.stage1, sampler=kind, steps=3)
    assert sched.alphas_cumprod.device.type == "cpu"


def test_untrained_cascade_returns_the_prior_exactly(setup):
    """MONAI zero-initialises the output convolution: an untrained cascade returns the prior inside the
    mask, bit for bit, also outside the stage-2 box (only the generated residual is upsampled from stage 1),
    which makes the zero-residual average face the cascade's own baseline."""
    defaced, _, prior, _, cfg = setup
    g = np.mgrid[:16, :16, :16]
    mask = np.repeat(((g[0] >= 11) | (g[2] <= 2))[None], 2, 0)  # reaches beyond the stage-2 box
    cfg = CascadeConfig.from_dict(dict(stage1=TINY, stage2=TINY, box=face_box(g[0] >= 11, margin=1, multiple=2)))
    models = tuple(make_unet(cin, stage=cfg.stage(s)) for s, cin in ((1, 3), (2, 4)))
    defaced = np.where(mask, 0.0, prior + 0.3).astype(np.float32)  # the kept head differs from the prior
    res = reface(defaced, mask, prior, models, cfg, steps=3, n_samples=2, batch_size=4, device="cpu")
    expected = np.where(mask, prior, defaced)
    for key in ("sample", "mean", "stage1"):
        np.testing.assert_array_equal(res[key], expected, err_msg=key)
