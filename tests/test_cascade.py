"""Cascade building blocks: configs, boxes, padding, UNet and stage inputs."""
import numpy as np
import pytest
import torch

from refacelib.diffusion.cascade import (
    CascadeConfig,
    StageConfig,
    conditioning,
    downsample_mask,
    face_box,
    make_scheduler,
    make_unet,
    pad_to_multiple,
    predict_x0,
    stage1_inputs,
    stage1_to_full,
    stage2_inputs,
    unpad,
)
from refacelib._utils.device import autocast_context, resolve_device

TINY = dict(channels=[4, 8], train_timesteps=10, beta_schedule="cosine")


def test_config_roundtrip_and_unknown_keys():
    cfg = CascadeConfig.from_dict({"stage1": TINY, "stage2": TINY, "box": [[0, 8], [2, 10], [4, 8]]})
    assert cfg.stage1.channels == (4, 8) and cfg.stage2.multiple == 2
    again = CascadeConfig.from_dict(cfg.to_dict())
    assert again == cfg and again.config_hash() == cfg.config_hash()
    assert CascadeConfig.from_dict({"seed": 1}).config_hash() != CascadeConfig().config_hash()
    with pytest.raises(ValueError, match="unknown"):
        CascadeConfig.from_dict({"stage3": {}})
    with pytest.raises(ValueError, match="unknown"):
        StageConfig.from_dict({"chanels": [4]})
    with pytest.raises(ValueError, match="norm_num_groups"):
        StageConfig(channels=(6, 8), norm_num_groups=4)
    with pytest.raises(ValueError, match="per_method=True is not implemented"):  # refused, not ignored
        CascadeConfig.from_dict({"per_method": True})
    assert CascadeConfig().to_dict()["per_method"] is False  # kept in the dict: shipped checkpoints are named by it


def test_face_box_contains_region_and_is_aligned(rng):
    for _ in range(20):
        m = np.zeros((20, 24, 17), bool)
        lo = rng.integers(0, [15, 18, 12])
        m[lo[0]:lo[0] + 4, lo[1]:lo[1] + 5, lo[2]:lo[2] + 3] = True
        box = face_box(m, margin=2, multiple=4)
        for axis, (a, b) in enumerate(box):
            idx = np.nonzero(m.any(axis=tuple(i for i in range(3) if i != axis)))[0]
            assert (b - a) % 4 == 0 and 0 <= a < b <= m.shape[axis]
            assert a <= max(idx[0] - 2, 0) and b >= min(idx[-1] + 3, m.shape[axis]) or (b - a) == m.shape[axis] // 4 * 4
    with pytest.raises(ValueError):
        face_box(np.zeros((4, 4, 4), bool))


def test_pad_to_multiple_roundtrip():
    a = np.arange(5 * 6 * 7, dtype=np.float32).reshape(1, 5, 6, 7)
    p, crop = pad_to_multiple(a, 4)
    assert p.shape == (1, 8, 8, 8) and np.array_equal(unpad(p, crop), a) and p[0, 5:].sum() == 0
    t, crop = pad_to_multiple(torch.from_numpy(a) > 3, 4)
    assert t.dtype == torch.bool and t.shape == (1, 8, 8, 8)
    assert torch.equal(unpad(t, crop), torch.from_numpy(a) > 3)


def test_make_unet_starts_at_prior():
    st = StageConfig(**TINY)
    net = make_unet(3, stage=st)
    x = torch.rand(2, 1, 8, 8, 8)
    cond = torch.rand(2, 2, 8, 8, 8)
    t = torch.tensor([0, 9])
    out = net(torch.cat([x, cond], 1), timesteps=t)
    assert out.shape == (2, 1, 8, 8, 8) and out.dtype == torch.float32
    prior = torch.rand(2, 1, 8, 8, 8)
    assert torch.equal(predict_x0(net, x, t, cond, prior), prior)  # zero-initialised last conv
    sched = make_scheduler(st, kind="ddim")
    assert sched.clip_sample is False and sched.prediction_type == "sample"


def test_stage_inputs_shapes():
    n, shape = 2, (10, 12, 9)
    d = np.random.default_rng(0).random((n, *shape), dtype=np.float32)
    m = np.zeros((n, *shape), bool)
    m[:, 7:, :, :] = True
    m[0, 0, 0, 0] = True
    low = stage1_inputs(d, m, d, factor=2, multiple=2)
    assert low["defaced"].shape == (n, 1, 6, 6, 6) and low["mask"].dtype == torch.bool
    assert bool(low["mask"][0, 0, 0, 0, 0]) and not bool(low["mask"][1, 0, 0, 0, 0])
    assert conditioning(low).shape == (n, 2, 6, 6, 6)
    full = stage1_to_full(low["defaced"], factor=2, crop=low["crop"])
    assert full.shape == (n, 1, *shape)
    crop = stage2_inputs(d, m, d, full, box=((6, 10), (2, 10), (0, 8)))
    assert crop["coarse"].shape == (n, 1, 4, 8, 8) and conditioning(crop).shape == (n, 3, 4, 8, 8)
    assert torch.equal(crop["defaced"][:, 0], torch.from_numpy(d[:, 6:10, 2:10, 0:8]))
    assert downsample_mask(torch.from_numpy(m[:, None]), 1) is not None


def test_device_helpers():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type in ("cpu", "cuda")
    with autocast_context("cpu"):
        assert not torch.is_autocast_enabled()
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError):
            resolve_device("cuda:1")


def test_stage2_box_must_be_aligned():
    d = np.zeros((1, 8, 8, 8), np.float32)
    with pytest.raises(ValueError, match="divide"):
        stage2_inputs(d, d > 0, d, d, box=((0, 6), (0, 8), (0, 8)), multiple=4)
