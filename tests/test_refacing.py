"""Run-level refacing helpers: shipped checkpoints and full-resolution composition."""
import json

import numpy as np
import pandas as pd
import pytest
import torch

from refacelib.diffusion import grid
from refacelib.diffusion.cascade import CascadeConfig
from refacelib.diffusion.train import load_stage, train_stage
from refacelib.pipeline import refacing

TINY = dict(channels=[4, 8], train_timesteps=12, beta_schedule="cosine", batch_size=2, steps=3)


def _trained_folder(tmp_path):
    g = np.mgrid[:8, :8, :8].astype(np.float32)
    ball = (((g - 3.5) ** 2).sum(0) < 9).astype(np.float32)
    mask = np.broadcast_to(g[0] >= 6, ball.shape)
    data = {"original": ball[None], "defaced": np.where(mask, 0, ball)[None], "mask": mask[None], "prior": ball[None]}
    cfg = CascadeConfig.from_dict(dict(stage1=TINY, stage2=TINY, box=((0, 8), (0, 8), (0, 8))))
    folder = tmp_path / "run" / "cascade-0123456789"
    for s in (1, 2):
        _, hist = train_stage(s, data, cfg, device="cpu", checkpoint_path=folder / f"stage{s}.pt", progress=False)
        hist.assign(stage=s).to_csv(folder / f"stage{s}_history.csv", index=False)
        (folder / f"stage{s}.done").write_text("{}")
    return folder


def test_ship_then_install_gives_the_ema_weights(tmp_path):
    folder = _trained_folder(tmp_path)
    root = tmp_path / "checkpoints"
    dst = refacing.ship(folder, root=root, device="cpu", command="test")
    assert dst.name == folder.name
    info = json.loads((dst / "training.json").read_text())
    assert info["stages"]["2"]["steps"] == 3 and info["device"] == "cpu"
    slim = torch.load(dst / "stage1.pt", weights_only=True)
    assert "optimizer" not in slim
    target = tmp_path / "other" / folder.name
    assert refacing.install_shipped(target, root=root)
    assert refacing.training_provenance(target)["command"] == "test"
    assert all((target / f"stage{s}.done").exists() for s in (1, 2))
    shipped, _, _ = load_stage(target / "stage1.pt", device="cpu")
    trained, _, _ = load_stage(folder / "stage1.pt", device="cpu")
    for a, b in zip(shipped.state_dict().values(), trained.state_dict().values()):
        assert torch.equal(a, b)
    pd.testing.assert_frame_equal(pd.read_csv(target / "stage2_history.csv"), pd.read_csv(folder / "stage2_history.csv"))


def test_install_needs_the_exact_name_and_every_file(tmp_path):
    folder = _trained_folder(tmp_path)
    root = tmp_path / "checkpoints"
    refacing.ship(folder, root=root)
    assert not refacing.install_shipped(tmp_path / "x" / "cascade-other", root=root)
    (root / folder.name / "stage2.pt").unlink()
    assert not refacing.install_shipped(tmp_path / "y" / folder.name, root=root)
    assert refacing.training_provenance(tmp_path / "y" / folder.name) is None


def test_full_resolution_adds_the_upsampled_residual_to_the_average():
    class T:
        shape = (8, 8, 8)

    rng = np.random.default_rng(0)
    average = rng.random((8, 8, 8)).astype(np.float32) + 1
    prior = np.full((4, 4, 4), 0.5, np.float32)
    knots = np.array([[0.0, 2.0], [0.0, 2.4]])  # a ratio of 1.2
    untrained = grid.full_resolution(prior, prior, average, T, average_norm=2.0, match=knots)
    np.testing.assert_allclose(untrained, average / 2.0 * 1.2, rtol=1e-6)  # the average face, full detail
    shifted = grid.full_resolution(prior + 0.25, prior, average, T, average_norm=2.0, match=knots)
    np.testing.assert_allclose(shifted - untrained, 0.25, atol=1e-6)
    # outside the mask the cascade's output is the defaced image: its difference from the prior
    # must not reach the full-resolution volume (an untrained cascade = the baseline, exactly)
    mask = np.zeros((4, 4, 4), bool)
    mask[2:] = True
    defaced_outside = np.where(mask, prior, prior + 3.0)
    masked = grid.full_resolution(defaced_outside, prior, average, T, average_norm=2.0, match=knots, mask=mask)
    np.testing.assert_array_equal(masked, untrained)


def test_intensity_match_undoes_a_contrast_change_one_ratio_cannot():
    """An external site's gamma: quantile matching maps the average head onto the subject's contrast,
    inside the removed region too, where a single ratio of medians leaves a systematic error."""
    rng = np.random.default_rng(1)
    average = rng.uniform(0.2, 1.0, (12, 12, 12))
    subject = average ** 0.8  # the same anatomy under a gamma contrast change
    head = np.ones(average.shape, bool)
    mask = np.zeros(average.shape, bool)
    mask[:, :, 8:] = True  # the removed face
    knots = grid.intensity_match(np.where(mask, 0, subject), average, head, mask)
    matched = grid.apply_match(average, knots)
    ratio = np.median(subject[~mask]) / np.median(average[~mask])
    err_quantile = np.abs(matched[mask] - subject[mask]).mean()
    err_ratio = np.abs(average[mask] * ratio - subject[mask]).mean()
    assert err_quantile < 0.01 < err_ratio
    assert np.all(np.diff(knots[0]) > 0) and np.all(np.diff(knots[1]) >= 0)  # monotone
    assert grid.apply_match(np.array([0.0]), knots)[0] == 0.0  # air stays air


def test_intensity_match_ignores_the_cut_blended_by_resampling():
    """A skull-stripped head: the kept voxels are a brain whose edge resampling blends with the removed
    zeros. The map must still carry the average's darker outer tissue to the subject's level (the
    voxels along the cut are left out of the fit); fitted on them, it maps that tissue too dark."""
    from scipy import ndimage

    idx = np.indices((24, 24, 24)) - 11.5
    r = np.sqrt((idx ** 2).sum(axis=0))
    average = np.select([r < 7, r < 10], [0.6 + 0.4 * (1 - r / 7), 0.3], 0.0)  # brain, then scalp and face
    subject = 1.3 * average  # the same head, brighter
    head, mask = average > 0, r >= 7  # the skull-stripping removes everything but the brain
    defaced = ndimage.gaussian_filter(np.where(mask, 0.0, subject), 1.0)  # the cut, blended by resampling
    matched = grid.apply_match(average, grid.intensity_match(defaced, average, head, mask))
    outer = head & mask
    assert np.abs(matched[outer] / subject[outer] - 1).mean() < 0.1


def test_swap_partners_stay_in_their_test_set():
    assert refacing.swap_partners(["a", "b", "c"], ["x", "x", "y"]) == [1, 0, 2]


def test_shipped_checkpoints_match_a_profile():
    """Every shipped checkpoint loads safely and was trained with a profile's current stage settings."""
    import yaml

    from refacelib.pipeline.config import project_root

    root = project_root() / "checkpoints"
    folders = sorted(p for p in root.glob("cascade-*") if p.is_dir()) if root.is_dir() else []
    profiles = [yaml.safe_load(p.read_text())["cascade"] for p in sorted((project_root() / "params").glob("*.yaml"))]
    for folder in folders:
        info = json.loads((folder / "training.json").read_text())
        assert {"stages", "device", "torch", "date", "command"} <= set(info)
        saved = [torch.load(folder / f"stage{s}.pt", map_location="cpu", weights_only=True)["config"] for s in (1, 2)]
        matches = [p for p in profiles
                   if all(all(saved[s - 1][f"stage{s}"][k] == v for k, v in p[f"stage{s}"].items()) for s in (1, 2))
                   and saved[0]["factor"] == p["factor"]
                   and all(p.get(k) == v for k, v in (info.get("training") or {}).items()
                           if k != "shuffle_faces")  # the permutation control's one change
                   and (info.get("training") or {}).get("prior", "average") == p.get("prior", "average")]
        assert matches, f"{folder.name} was trained with stage settings no profile has any more: run make checkpoint"
        for s in (1, 2):
            assert info["stages"][str(s)]["steps"] == saved[s - 1][f"stage{s}"]["steps"]


def test_stage1_coarse_is_what_refacing_feeds_stage2(tmp_path):
    folder = _trained_folder(tmp_path)
    model, cfg, _ = load_stage(folder / "stage1.pt", device="cpu")
    g = np.mgrid[:8, :8, :8].astype(np.float32)
    ball = (((g - 3.5) ** 2).sum(0) < 9).astype(np.float32)
    mask = np.broadcast_to(g[0] >= 6, ball.shape)
    data = {"defaced": np.stack([np.where(mask, 0, ball)] * 3), "mask": np.stack([mask] * 3),
            "prior": np.stack([ball * 0.9] * 3)}
    a = refacing.stage1_coarse(model, data, cfg, steps=2, seed=5, device="cpu")
    b = refacing.stage1_coarse(model, data, cfg, steps=2, seed=5, device="cpu")
    assert a.shape == (3, 8, 8, 8) and a.dtype == np.float32
    np.testing.assert_array_equal(a, b)
    assert np.abs(a[:, mask]).sum() > 0 and np.abs(data["defaced"][:, mask]).sum() == 0  # generated inside the mask
    np.testing.assert_array_equal(a[:, ~mask], data["defaced"][:, ~mask])  # kept outside it


def _linear_cohort(n, seed=0):
    """Heads whose masked face is a linear function of a visible latent, for one method."""
    rng = np.random.default_rng(seed)
    z = rng.standard_normal(n).astype(np.float32)
    original = 1 + z[:, None, None, None] * np.linspace(1, 2, 4, dtype=np.float32)[None, :, None, None] \
        * np.ones((n, 4, 3, 3), np.float32)
    mask = np.zeros(original.shape, bool)
    mask[:, :1] = True
    return {"original": original, "defaced": np.where(mask, 0, original), "mask": mask,
            "prior": np.ones_like(original), "method": ["m"] * n, "subject": [f"s{i}" for i in range(n)]}


def test_a_cascade_trained_on_shuffled_faces_gets_its_linear_prior_refitted_on_shuffled_faces():
    """The permutation control's prior must not be refitted on the true pairs at refacing time."""
    from refacelib.diffusion import linear

    train, record = _linear_cohort(16), {"methods": {"m": {"lambda": 0.01}}}
    true_fit = refacing.refit_linear(record, train, None)
    for shuffled_fit in (refacing.refit_linear(record, train, None, shuffled=True),
                         refacing.refit_linear({**record, "shuffle_faces": True}, train, None)):
        assert set(shuffled_fit) == {"linear"}  # no permuted twin of a model that is already permuted
        expected = linear.fit_methods(refacing.shuffle_faces(train), lambdas={"m": 0.01})[0]["m"]
        np.testing.assert_array_equal(shuffled_fit["linear"]["m"].alpha, expected.alpha)
        assert not np.allclose(shuffled_fit["linear"]["m"].alpha, true_fit["linear"]["m"].alpha)
    assert set(true_fit) == {"linear", "linear_permuted"}


def test_the_permuted_linear_baseline_knows_no_person_and_chooses_its_penalty_on_shuffled_validation():
    from refacelib.diffusion import linear

    train, val, test = _linear_cohort(30, 1), _linear_cohort(8, 2), _linear_cohort(10, 3)
    fits = refacing.refit_linear({"methods": {"m": {"lambda": 0.01}}}, train, val)
    _, scores = linear.select_lambda(*(linear._subset(refacing.shuffle_faces(d), "m")[0] for d in (train, val)))
    assert fits["linear_permuted"]["m"].lam == min(scores, key=scores.get)
    inside = test["mask"]
    err = {k: float(np.mean((linear.model_prior(test, fits[k]) - test["original"])[inside] ** 2)) for k in fits}
    assert err["linear"] < 0.1 * err["linear_permuted"]  # only the true pairs predict each subject's face
    with pytest.raises(ValueError, match="no linear prior for"):
        refacing.refit_linear({"methods": {"other": {"lambda": 0.1}}}, train, None)


def test_permutation_tests_pair_subjects_and_name_a_missing_estimator():
    from refacelib import controls

    rows = [{"subject": f"s{i}", "test_set": t, "method": "m", "candidate": c, "msd_mm": 1.0 + i}
            for i in range(8) for t in ("a", "b") for c in ("refaced_mean", "linear")]
    own = pd.DataFrame(rows)
    other = own.assign(msd_mm=own["msd_mm"] + np.where(own["test_set"] == "a", 0.3, -0.3))
    other = other.sample(frac=1.0, random_state=0)  # row order must not matter: pairs are by subject
    t = controls.permutation_tests(own, other).set_index(["estimator", "test_set"])
    assert t.loc[("refaced_mean", "a"), "hl_diff_mm"] == pytest.approx(-0.3)
    assert t.loc[("refaced_mean", "b"), "hl_diff_mm"] == pytest.approx(0.3)
    assert (t["baseline"] == "permutation").all() and (t["n"] == 8).all()
    with pytest.raises(ValueError, match="no estimator"):
        controls.permutation_tests(own, other, estimators=("oracle",))
