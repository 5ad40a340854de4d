"""Every benchmark code path at a tiny size: throughput, syncs, samplers, surfaces, projections, the GPU script."""
import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

from refacelib.bench import throughput as bench
from refacelib.pipeline import book as pipeline
from refacelib.bench import quality as bq
from refacelib.diffusion.cascade import CascadeConfig
from refacelib.pipeline.config import load_profile

ROOT = Path(__file__).resolve().parents[1]
MICRO = {"channels": [4, 8], "norm_num_groups": 4, "train_timesteps": 20, "beta_schedule": "cosine", "batch_size": 2}
GRID = (12, 16, 16)


@pytest.fixture(scope="module")
def micro():
    return CascadeConfig.from_dict({"stage1": MICRO, "stage2": MICRO, "factor": 2, "box": [[0, 8], [4, 12], [8, 16]]})


def test_stored_stage_sizes_match_the_template(monkeypatch):
    from refacelib.data import template as tpl_module

    # the brain mask (deepbet) plays no part in the sizes; skip computing it
    monkeypatch.setattr(tpl_module, "_template_brain_mask",
                        lambda img, cache: nib.Nifti1Image(np.zeros(img.shape, np.uint8), img.affine))
    stored = json.loads((ROOT / "bench" / "stage_sizes.json").read_text())
    assert set(stored) == {"tiny", "quick", "paper"}
    for profile in ("tiny", "quick"):
        params = load_profile(profile)
        template = tpl_module.load_template(params["deface"]["voxel_mm"])
        assert bench.profile_sizes(params, template) == stored[profile], profile
    cfg, grid = bench.sized_config(load_profile("paper"), stored["paper"])
    shapes = bench.stage_shapes(cfg, grid)
    for stage, shape in shapes.items():
        assert all(s % cfg.stage(stage).multiple == 0 for s in shape)
    assert cfg.stage1.channels == tuple(load_profile("paper")["cascade"]["stage1"]["channels"])


def test_training_throughput_counts_voxels(micro):
    table = bench.training_throughput(micro, GRID, steps=2, warmup=1, device="cpu")
    assert list(table["stage"]) == [1, 2] and set(table["precision"]) == {"fp32"}
    assert list(table["shape"]) == ["6x8x8", "8x8x8"]  # 12 voxels at factor 2
    expected = table["batch_size"] * table["voxels_per_item"] / table["step_seconds"]
    np.testing.assert_allclose(table["voxels_per_s"], expected, rtol=1e-9)
    assert (table["steps_per_s"] > 0).all() and table["peak_gpu_mib"].isna().all()


def test_sampling_throughput_and_auto_batch(micro):
    row = bench.sampling_throughput(micro, GRID, n_items=3, steps=2, batch_size="auto", device="cpu").iloc[0]
    assert row["batch_size"] == 3 and row["nfe_per_item"] == 5 and row["seconds"] > 0
    assert row["seconds_per_item_step"] == pytest.approx(row["seconds"] / 15, rel=1e-9)


def test_batch_from_memory_and_auto_batch_off_cuda(micro):
    from refacelib.diffusion.sample import auto_batch_size, batch_from_memory

    assert batch_from_memory(10e9, 1e9, n_items=100, fraction=0.5) == 5
    assert auto_batch_size((None, None), micro, GRID, device="cpu", n_items=3) == 3


def test_sampling_loop_has_no_host_syncs(micro):
    audit = bench.sampling_sync_audit(micro, GRID, steps=3, device="cpu")
    assert list(audit["sampler"]) == ["ddim", "ddpm"] and (audit["steps"] == 3).all()
    assert (audit["syncs"] == 0).all(), audit
    # the counter is not blind: a planted read-back is counted
    _, n = bench.count_host_syncs(lambda x: bool((x > 0).any()) and x.sum().item(), torch.ones(4))
    assert n == 2


def test_reface_compile_flag_wraps_the_networks(micro, monkeypatch):
    from refacelib.diffusion.sample import reface

    wrapped = []
    monkeypatch.setattr(torch, "compile", lambda m, **kw: wrapped.append(m) or m)
    models = bench._untrained_models(micro, torch.device("cpu"))
    data = bench.synthetic_volumes(GRID, 2, config=micro)
    plain = reface(data["defaced"], data["mask"], data["prior"], models, micro, steps=2, device="cpu")
    compiled = reface(data["defaced"], data["mask"], data["prior"], models, micro, steps=2, device="cpu",
                      compile=True, batch_size="auto")
    assert len(wrapped) == 2
    np.testing.assert_array_equal(plain["sample"], compiled["sample"])


def test_sampler_benchmark_counts_network_evaluations(micro):
    models = bench._untrained_models(micro, torch.device("cpu"))
    data = bench.synthetic_volumes(GRID, 3, config=micro, seed=1)
    data["subject"] = ["a", "b", "c"]
    msd = lambda v: np.abs(v - data["original"]).mean(axis=(1, 2, 3))  # noqa: E731
    table = bq.sampler_benchmark(models, micro, data, [("ddpm", 1000), ("ddim", 2), 3, ("ddim", 500)], msd=msd,
                                 device="cpu", batch_size=2)
    per = table.groupby("sampler", sort=False)["nfe"].first()
    assert dict(per) == {"DDPM-20": 41.0, "DDIM-2": 5.0, "DDIM-3": 7.0, "DDIM-20": 41.0}
    assert len(table) == 12 and (table["seconds"] > 0).all() and (table["cpu_seconds"] > 0).all()
    summary = bq.sampler_summary(table)
    assert summary.iloc[0]["sampler"] == "DDPM-20" and summary.iloc[0]["msd_ratio"] == 1.0
    assert summary.set_index("sampler").loc["DDIM-2", "nfe_speedup"] == pytest.approx(41 / 5, abs=0.01)
    assert summary.set_index("sampler").loc["DDIM-2", "step_speedup"] == 10.0


def test_setting_benchmark_means_of_the_first_samples(micro):
    """The mean of all samples is the sampler's own ``mean``; fewer samples and steps are separate rows."""
    from refacelib.bench import settings as bs
    from refacelib.diffusion.sample import reface

    models = bench._untrained_models(micro, torch.device("cpu"))
    data = bench.synthetic_volumes(GRID, 2, config=micro, seed=2)
    data.update(subject=["a", "b"], method=["m", "m"])
    seen = []
    msd = lambda v: seen.append(np.array(v)) or np.abs(v - data["original"]).mean(axis=(1, 2, 3))  # noqa: E731
    table = bs.setting_benchmark(models, micro, data, [3, 2], n_samples=4, msd=msd, device="cpu", batch_size=4)
    assert table.groupby("steps", sort=False)["samples"].unique().map(list).to_dict() == {3: [1, 2, 4], 2: [1, 2, 4]}
    assert table.groupby("steps")["nfe"].first().to_dict() == {2: 5, 3: 7}
    own = reface(data["defaced"], data["mask"], data["prior"], models, micro, steps=3, n_samples=4, device="cpu",
                 batch_size=4)
    np.testing.assert_allclose(seen[2], own["mean"], atol=1e-5)  # steps 3, all 4 samples
    np.testing.assert_allclose(seen[0], own["sample"], atol=1e-5)  # steps 3, the first sample alone
    summary = bs.setting_summary(table, reference=(3, 4))
    ref = summary[(summary["steps"] == 3) & (summary["samples"] == 4)].iloc[0]
    assert ref["change_mm"] == 0.0 and ref["n"] == 2
    with pytest.raises(ValueError, match="was not measured"):
        bs.setting_summary(table, reference=(50, 8))


def test_budget_choice_from_stored_gpu_rows():
    from refacelib.bench import settings as bs

    paper = load_profile("paper")
    sampling = pd.DataFrame({"steps": [50, 20, 50], "compiled": [False, False, True],
                             "seconds_per_item_step": [0.003, 0.0031, 0.0019]})
    options = bs.within_budget(sampling, paper, samples=bs.sample_counts(8))
    n = (paper["phantom"]["n_test_internal"] + paper["phantom"]["n_test_external"]) * len(paper["deface"]["methods"])
    row = options[(options["setting"] == "DDIM-50") & (options["samples"] == 8)].iloc[0]
    assert row["hours"] == pytest.approx(n * 8 * 101 * 0.003 / 3600, abs=0.01) and not row["within_budget"]
    choice = bs.budget_choice(bs.budget_table(options, None))
    assert choice["hours"] <= 1.0 and choice["samples"] * choice["nfe"] == max(
        r.samples * r.nfe for r in options.itertuples() if r.within_budget)


def test_results_keep_the_latest_file_of_a_card(tmp_path):
    for date, seconds in (("2026-01-01", 9.0), ("2026-02-01", 1.0)):
        bench.write_results(tmp_path / f"cpu-{date}.json", machine=bench.machine_info("cpu"),
                            tables={"sampling": pd.DataFrame({"steps": [5], "seconds_per_item_step": [seconds]})},
                            meta={"date": date, "profile": "paper"})
    loaded = bench.load_results(tmp_path, profile="paper")
    assert loaded["sampling"]["seconds_per_item_step"].tolist() == [1.0]
    assert loaded["machine"]["file"].tolist() == ["cpu-2026-02-01.json"]


def _ball(shape, center, radius):
    idx = np.indices(shape, dtype=float)
    return ((idx - np.asarray(center, float)[:, None, None, None]) ** 2).sum(0) <= radius**2


def test_face_pair_metrics_agree_with_monai_on_spheres():
    shape, affine = (40, 40, 40), np.diag([2.0, 2.0, 2.0, 1.0])
    original = np.where(_ball(shape, (20, 20, 20), 12), 100.0, 0.0)
    candidate = np.where(_ball(shape, (20, 20, 20), 14), 100.0, 0.0)
    region = np.zeros(shape, bool)
    region[:, 24:, :] = True  # the "face": the front of the head
    m = bq.face_pair_metrics(original, candidate, affine, region, threshold=50.0)
    assert m["seconds"] > 0 and m["monai_seconds"] > 0
    assert m["msd_mm"] == pytest.approx(4.0, rel=0.1)  # concentric spheres 2 voxels of 2 mm apart
    assert m["monai_msd_mm"] == pytest.approx(4.0, rel=0.1)
    same = bq.face_pair_metrics(original, original, affine, region, threshold=50.0)
    assert same["msd_mm"] == 0.0 and same["monai_msd_mm"] == 0.0


@pytest.fixture(scope="module")
def deface_folder(tmp_path_factory):
    """One subject on the template grid (identity registration): original, one method, the average face."""
    import ants

    from refacelib._utils.io import save_nifti
    from refacelib.data.template import Template

    folder = tmp_path_factory.mktemp("defaced")
    shape, affine = (24, 28, 24), np.diag([4.0, 4.0, 4.0, 1.0])
    head = _ball(shape, (12, 13, 11), 9)
    face = head & (np.indices(shape)[1] >= 17)
    data = np.where(head, 100.0, 0.0).astype(np.float32)
    data[_ball(shape, (12, 20, 9), 3) & head] = 60.0  # some structure in the face
    template = Template(data=data, head=head, brain=_ball(shape, (12, 11, 13), 5), face=face, affine=affine,
                        landmarks={})
    removal = face & (np.indices(shape)[2] <= 12)
    images = {"original": data, "m": np.where(removal, 0, data), "m_removal": removal.astype(np.uint8),
              "average": data * 0.9}
    for name, image in images.items():
        for base in (folder, folder / "template_space"):
            save_nifti(nib.Nifti1Image(np.asarray(image, np.float32), affine), base / name / "sub-01.nii.gz")
    save_nifti(nib.Nifti1Image(data, affine), folder / "cohort_average.nii.gz")
    (folder / "transforms").mkdir()
    ants.write_transform(ants.create_ants_transform(transform_type="AffineTransform", dimension=3),
                         str(folder / "transforms" / "sub-01.mat"))
    return folder, template


def test_subject_space_msd_puts_the_face_back(deface_folder):
    from refacelib.pipeline import refacing

    folder, template = deface_folder
    data = refacing.build_examples(folder, ["sub-01"], ["m"], template, 4.0)
    faces = bq.subject_faces(folder, template, ["sub-01"])
    assert len(faces["sub-01"]["original_surface"].verts) > 50
    truth = bq.subject_space_msd(faces, data["original"], data, template=template, deface_folder=folder)
    defaced = bq.stored_msd(faces, folder, "m")["msd_mm"].iloc[0]
    assert truth[0] < 0.5 < defaced  # the original's own face comes back; the defaced face is far


def test_surface_benchmark_table(deface_folder, tmp_path):
    from refacelib._utils.io import save_nifti

    folder, template = deface_folder
    original = nib.load(str(folder / "original" / "sub-01.nii.gz"))
    for name in ("m_sample", "m_mean", "m_template_average", "m_swapped"):  # "refaced" images equal to the original
        save_nifti(original, tmp_path / name / "sub-01.nii.gz")
    save_nifti(nib.load(str(folder / "average" / "sub-01.nii.gz")), tmp_path / "m_average" / "sub-01.nii.gz")
    table = bq.surface_benchmark(folder, tmp_path, template, ["sub-01"], ["m"])
    assert list(table["candidate"]) == ["refaced", "average"]
    assert table.iloc[0]["msd_mm"] == 0.0 and table.iloc[0]["monai_msd_mm"] == 0.0
    assert table.iloc[1]["msd_mm"] > 0 and table.iloc[1]["monai_msd_mm"] > 0
    agreement = bq.surface_agreement(table)
    assert agreement["n"].tolist() == [2] and agreement["pearson_r"].iloc[0] == 1.0


def test_chapter_and_stage_costs():
    timings = pd.DataFrame({"chapter": ["01", "02"], "seconds": [100.0, 50.0], "peak_rss_mib": [500.0, 900.0]})
    costs = bq.chapter_costs(timings)
    assert costs.iloc[-1]["seconds"] == 150.0 and costs.iloc[-1]["peak_rss_mib"] == 900.0
    assert bool(costs.iloc[-1]["within_target"])
    assert not bool(bq.chapter_costs(timings, memory_mib=800).iloc[-1]["within_target"])
    stages = bq.stage_costs(None, pd.DataFrame({"step": ["reface a"], "device": ["cpu"], "seconds": [3.0]}))
    assert stages["stage"].tolist() == ["reface a"]


def test_paper_projection_known_answer():
    params = {"cascade": {"stage1": {"steps": 1000, "batch_size": 8}, "stage2": {"steps": 2000, "batch_size": 8},
                          "n_samples": 2, "sample_steps": 10},
              "phantom": {"n_test_internal": 1, "n_test_external": 9}, "deface": {"methods": ["a", "b"]}}
    training = pd.DataFrame({"stage": [1, 2, 1, 2], "precision": ["fp32", "fp32", "bf16", "bf16"],
                             "batch_size": [8, 8, 4, 4], "step_seconds": [9.0, 9.0, 1.8, 3.6]})
    sampling = pd.DataFrame({"seconds_per_item_step": [0.5]})
    hours = bench.paper_projection(training, sampling, params, source="x").set_index("quantity")["hours"]
    assert hours["train stage 1"] == 1.0 and hours["train stage 2"] == 4.0  # bf16, batch 4 -> 8 doubles the time
    assert hours["train (both stages)"] == 5.0
    assert hours["reface (all test subjects x methods)"] == pytest.approx(10 * 2 * 2 * 21 * 0.5 / 3600, abs=0.01)


def test_results_round_trip(tmp_path, micro):
    table = pd.DataFrame({"stage": [1], "precision": ["fp32"], "step_seconds": [0.5]})
    bench.write_results(tmp_path / "cpu-2026-01-01.json", machine=bench.machine_info("cpu"), tables={"training": table},
                        meta={"date": "2026-01-01", "profile": "tiny"})
    loaded = bench.load_results(tmp_path)
    assert loaded["training"]["card"].tolist() == ["cpu"] and loaded["machine"]["date"].tolist() == ["2026-01-01"]
    assert bench.load_results(tmp_path, profile="paper") == {}  # measured at another profile's sizes


def test_appendix_page_before_and_after_bench(tmp_path, monkeypatch):
    from refacelib.pipeline import config

    monkeypatch.setenv("REFACE_RUNS_ROOT", str(tmp_path / "runs"))
    run = config.open_run("tiny", "phantom")
    stage = pipeline._stage(run, [])
    assert "make bench" in (stage / "appendix" / f"{pipeline.APPENDIX}.md").read_text()
    assert "appendix/90_performance" in (ROOT / "_toc.yml").read_text()
    before = pipeline._html_key(run, [])
    (run.folder / "notebooks").mkdir(exist_ok=True)
    (run.folder / "notebooks" / f"{pipeline.APPENDIX}.ipynb").write_text("{}")
    (run.folder / "notebooks" / f"{pipeline.APPENDIX}.key").write_text("abc")
    assert pipeline._html_key(run, []) != before
    stage = pipeline._stage(run, [])
    assert (stage / "appendix" / f"{pipeline.APPENDIX}.ipynb").exists()
    assert not (stage / "appendix" / f"{pipeline.APPENDIX}.md").exists()


def test_gpu_script_runs_at_tiny_size(tmp_path):
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_bench", ROOT / "bench" / "gpu_bench.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    assert module.main(["--tiny", "--out", str(tmp_path), "--device", "cpu"]) == 0
    (path,) = tmp_path.glob("cpu-tiny-*.json")
    result = json.loads(path.read_text())
    assert {"meta", "machine", "training", "sampling", "sync_audit"} <= set(result)
    assert [r["stage"] for r in result["training"]] == [1, 2]
    assert all(r["timed_steps"] == 2 for r in result["training"])
    assert all(r["syncs"] == 0 for r in result["sync_audit"])
    assert result["machine"]["device"] == "cpu"


def test_appendix_figures_draw_their_reference_lines():
    """The Performance appendix's figures (report.bench_plots): the tolerance line sits at the book's setting's
    error plus the tolerance, the cohort-average line at its MSD, and each stage's star at the paper's cohort."""
    from refacelib import report

    reg = pd.DataFrame({"setting": ["book", "cheap"] * 2, "side": ["owner"] * 2 + ["attacker"] * 2,
                        "cpu_seconds": [0.8, 0.5, 0.9, 0.6], "rms_mm": [3.0, 3.1, 3.2, 3.5],
                        "rms_q1": [2.9, 3.0, 3.1, 3.3], "rms_q3": [3.2, 3.3, 3.4, 3.8],
                        "floor_mm": [2.7] * 4, "chosen": [False, True, False, True]})
    fig = report.plot_registration_tradeoff(reg, reference="book", tolerance_mm=0.2)
    dashed = [[line.get_ydata()[0] for line in ax.lines if line.get_linestyle() == "--"] for ax in fig.axes]
    assert np.allclose(dashed, [[3.2], [3.4]])
    sam = pd.DataFrame({"sampler": ["ddim-10", "ddpm-1000"], "kind": ["ddim", "ddpm"], "nfe": [10, 1000],
                        "seconds": [1.0, 90.0], "msd_median": [1.2, 1.1], "msd_q1": [1.0, 0.9], "msd_q3": [1.4, 1.3]})
    fig = report.plot_sampler_tradeoff(sam, 1.45)
    assert [line.get_ydata()[0] for line in fig.axes[0].lines if line.get_linestyle() == "--"] == [1.45]
    measured = pd.DataFrame({"stage": ["deface"] * 2 + ["reface"] * 2, "n_subjects": [6, 12] * 2,
                             "seconds": [30.0, 55.0, 20.0, 41.0]})
    lines = pd.DataFrame({"stage": ["deface"] * 2 + ["reface"] * 2, "n_subjects": [6, 684] * 2,
                          "seconds": [30.0, 3000.0, 20.0, 2000.0]})
    budget = pd.DataFrame({"setting": ["DDIM-50"] * 2 + ["DDIM-10"], "steps": [50, 50, 10], "compiled": [False] * 3,
                           "samples": [8, 4, 8], "hours": [1.6, 0.8, 0.4], "change_mm": [0.0, 0.01, np.nan],
                           "change_q1": [0.0, 0.0, np.nan], "change_q3": [0.0, 0.02, np.nan]})
    fig = report.plot_gpu_budget(budget, 1.0)
    assert [line.get_xdata()[0] for line in fig.axes[0].lines if line.get_linestyle() == "--"] == [1.0]
    assert any("not measured" in t.get_text() for t in fig.axes[0].get_legend().get_texts())
    fig = report.plot_cost_curves(measured, lines, 684, 2)
    stars = [(line.get_xdata()[0], line.get_ydata()[0]) for line in fig.axes[0].lines if line.get_marker() == "*"]
    assert stars == [(684, 3000.0), (684, 2000.0)]
