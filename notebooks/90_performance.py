# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # Performance
#
# How long this study takes to rebuild and where the time goes, measured in one run on the
# machine described below, so that ratios hold on a noisy machine: the sampler's cost against
# the quality of the refaced face, the training throughput of both cascade stages, the cost of
# the face surface distance, the time and memory of every chapter, and a projection of the
# `paper` profile from measured per-step costs. `make bench` executes this appendix; the other
# chapters never run it.

# %% tags=["parameters"]
# Defaults; `make bench` injects profile, dataset and publish_faces.
import os

profile = os.environ.get("REFACE_PROFILE", "quick")
dataset = os.environ.get("REFACE_DATASET", "phantom")
publish_faces = False
samplers = [["ddpm", 1000], ["ddim", 10], ["ddim", 25], ["ddim", 50], ["ddim", 100], ["ddim", 250]]
sampler_method = None  # defacing method of the sampler benchmark (default: the first example method)
# internal test subjects of the sampler benchmark (default: all); `REFACE_BENCH_SUBJECTS=5 make bench` cuts it
max_subjects = int(os.environ["REFACE_BENCH_SUBJECTS"]) if os.environ.get("REFACE_BENCH_SUBJECTS") else None
train_steps, train_warmup = 3, 1  # timed and untimed training steps per stage and precision
paper_cpu_batch = 1  # batch of the paper-size steps timed on a CPU (scaled linearly to the profile's)
paper_sampling_items, paper_sampling_steps = 1, 1
# shipped cost curves shown (bench/results/costs-<profile>.csv; default: this profile's, else quick's, else tiny's)
costs_profile = None
costs_cores = 16  # the larger machine of the cost projection
gpu_budget_hours = 1.0  # the GPU time in which the paper's test subjects should be refaced under every method

# %% tags=["hide-input"]
import json

import matplotlib.pyplot as plt
import pandas as pd
from IPython.display import Image, Markdown, display
from myst_nb import glue

from refacelib import bench, report
from refacelib.bench import quality as bq
from refacelib.data.template import load_template
from refacelib.imaging.registration import DICE_SUCCESS
from refacelib.diffusion import resolve_device
from refacelib.diffusion.train import load_stage
from refacelib.pipeline import config, evaluation, muscle_stage, refacing, start_chapter
from refacelib.pipeline.cache import is_done
from refacelib.pipeline.stages import stage_stats
from refacelib.report import save_figure, save_table

run, note, faces, chapter_start, study = start_chapter(profile, dataset, publish_faces, study=True)
settings = run.params["cascade"]
device = resolve_device(settings.get("device", "auto"))
ckpt_folder, _ = refacing.trained_cascade(run, study)
refaced, _ = refacing.refaced_test_set(run, study, ckpt_folder)
bench_dir = config.project_root() / "bench"

# %% [markdown]
# ## The machine
#
# {glue:text}`cpu_model`, {glue:text}`cpu_cores` cores, {glue:text}`ram_gib` GiB of memory;
# PyTorch {glue:text}`torch_version` on {glue:text}`device`. The profile is
# {glue:text}`profile` on {glue:text}`dataset_name`.

# %% tags=["hide-input"]
machine = bench.machine_info(device)
info = machine.set_index("item")["value"]
for key in ("cpu_model", "cpu_cores", "ram_gib", "device"):
    glue(key, info[key], display=False)
glue("torch_version", info["torch"], display=False)
glue("profile", run.profile, display=False)
report.reader_table(machine, csv_name="bench_machine.csv")

# %% [markdown]
# ## Time and memory of the book
#
# Wall time and peak resident memory of each chapter as the pipeline recorded it when it last
# executed the chapter (`tables/chapter_timings.csv`). A chapter that found its expensive
# products cached ran warm, so the total is a cold-build time only when that build started
# from an empty run folder; the cold cost of the cached stages is listed after it. Targets
# for `quick` on 2 CPU cores: at most {glue:text}`budget_min` minutes and
# {glue:text}`budget_gib` GiB.

# %% tags=["hide-input"]
timings_path = run.tables / "chapter_timings.csv"
costs = bq.chapter_costs(pd.read_csv(timings_path)) if timings_path.exists() else None
total = costs.iloc[-1] if costs is not None else None
glue("budget_min", bq.BOOK_BUDGET_S // 60, display=False)
glue("budget_gib", bq.BOOK_MEMORY_MIB // 1024, display=False)
glue("book_minutes", f"{total['seconds'] / 60:.1f}" if total is not None else "n/a", display=False)
glue("book_peak_gib", f"{total['peak_rss_mib'] / 1024:.2f}" if total is not None else "n/a", display=False)
if costs is not None:
    display(report.reader_table(costs, csv=timings_path, formats={"seconds": 1, "peak_rss_mib": 0}))

# %% [markdown]
# The chapters took {glue:text}`book_minutes` minutes in all in their last execution, with a
# peak of {glue:text}`book_peak_gib` GiB. The cached stages, as measured when they were built
# (the records of the defacing, face-distance and muscle stages and `tables/timings.csv`):

# %% tags=["hide-input"]
timing_csv = run.tables / "timings.csv"
faces_done = evaluation.faces_folder(run, study.deface_folder, refaced, study.test_subjects, study.methods)
stages_table = bq.stage_costs(stage_stats(study.deface_folder),
                              pd.read_csv(timing_csv) if timing_csv.exists() else None,
                              stage_stats(faces_done) if is_done(faces_done) else None,
                              muscle_stage.cached_record(run, study.ds))
stages_csv = save_table(stages_table, run.tables / "bench_stage_costs.csv")
dominant = stages_table.sort_values("seconds", ascending=False).iloc[0]
glue("dominant_stage", f"{dominant['stage']} ({dominant['seconds']:.0f} s)", display=False)
# a cold build pays the chapters plus every cached stage (an upper bound: with the shipped
# checkpoint the training rows are skipped, and the phantom's generation is not counted)
cold_s = (float(total["seconds"]) if total is not None else 0.0) + float(stages_table["seconds"].sum())
within = total is not None and cold_s <= bq.BOOK_BUDGET_S and float(total["peak_rss_mib"]) <= bq.BOOK_MEMORY_MIB
glue("cold_minutes", f"{cold_s / 60:.1f}", display=False)
glue("book_target", "met" if within else ("missed" if total is not None else "not measured"), display=False)
report.reader_table(stages_table, csv=stages_csv)

# %% [markdown]
# The most expensive cached stage is {glue:text}`dominant_stage`. Chapters and stages together
# estimate a cold build at {glue:text}`cold_minutes` minutes: the time and memory targets are
# {glue:text}`book_target`. `make bench` first brings
# the book up to date and then runs `make book` once more with nothing changed, in a fresh
# process: that warm rebuild took {glue:text}`warm_seconds` s (target under
# {glue:text}`warm_target` s) and executed {glue:text}`warm_executed` chapters.

# %% tags=["hide-input"]
rebuild_path = run.tables / "rebuild_timings.csv"
rebuild = pd.read_csv(rebuild_path) if rebuild_path.exists() else None
warm = rebuild.iloc[-1] if rebuild is not None else None
glue("warm_seconds", f"{warm['seconds']:.1f}" if warm is not None else "n/a (not measured: run `make bench`)",
     display=False)
glue("warm_target", bq.WARM_REBUILD_S, display=False)
glue("warm_executed", int(warm["chapters_executed"]) if warm is not None else "n/a", display=False)
if rebuild is not None:
    display(report.reader_table(rebuild, csv=rebuild_path))

# %% [markdown]
# ### Image files
#
# Every stage writes its images as `.nii.gz`. Floating-point voxels are stored at gzip level 0
# (stored blocks, still a `.nii.gz` that every reader opens; `refacelib._utils.io.COMPRESSLEVEL`),
# integer masks at level 1: noisy floating-point heads barely compress, and a cold build writes
# and reads thousands of them. One refaced head of this run, saved at nibabel's default level
# 1 and at level 0, fastest of three tries (ratios to level 1):

# %% tags=["hide-input"]
import nibabel as nib  # noqa: E402
import numpy as np  # noqa: E402

from refacelib.bench import files as bench_files  # noqa: E402

example_file = sorted((refaced / f"{run.params['refacing']['example_methods'][0]}_mean").glob("*.nii.gz"))[0]
example_img = nib.load(str(example_file))
file_costs = bench_files.nifti_file_costs(np.asarray(example_img.dataobj, np.float32), example_img.affine)
file_csv = save_table(file_costs, run.tables / "bench_file_costs.csv")
level0 = file_costs.set_index("level").loc[0]
glue("file_write_ratio", f"{1 / level0['write_s_ratio']:.0f}", display=False)
glue("file_read_ratio", f"{1 / level0['read_s_ratio']:.0f}", display=False)
glue("file_size_pct", f"{100 * (level0['mb_ratio'] - 1):.0f}", display=False)
report.reader_table(file_costs, csv=file_csv, formats={"mb": 2, "write_s": 4, "read_s": 4, "mb_ratio": 2,
                                                       "write_s_ratio": 3, "read_s_ratio": 3})

# %% [markdown]
# Level 0 writes this head {glue:text}`file_write_ratio` times and reads it
# {glue:text}`file_read_ratio` times faster than level 1, for a file
# {glue:text}`file_size_pct`% larger.

# %% [markdown]
# ## Registration: cheaper settings
#
# The defacing stage registers pydeface's template to every subject with ANTsPy's affine
# (`refacelib.imaging.registration.register_template`, the setting called `current` below:
# {glue:text}`reg_current_setting`): once to the original, the data owner's side, and, for
# every test subject, once more to each defaced image with its removal mask left out, the
# attacker's side and most of the registration cost. On the phantom the true map from the
# template to a subject is known (`refacelib.data.phantom.pose_affine` and
# `template_positions`): its pose (rotation, translation, scale) and a smooth deformation of
# head and face, which no affine reproduces. `python -m refacelib.bench registration` runs
# each setting below on {glue:text}`reg_n_subjects` test subjects of the
# {glue:text}`reg_profile` phantom (internal and external site alternating), the owner's
# registration of the original and the attacker's of its {glue:text}`reg_method` image, and
# measures the RMS distance between where the estimated affine and the truth put the
# template's head voxels (leaving out those where the phantom's warp folds, at most
# {glue:text}`reg_folded` of a subject's). No affine gets closer than the deformation's
# non-affine part, a median floor of {glue:text}`reg_floor` mm; the error against the pose
# alone is listed too.
# The cost is the CPU time of the whole call (resampling, ANTs, the Dice check),
# single-threaded. The machine was shared with other jobs (load average
# {glue:text}`reg_load` on {glue:text}`reg_cpus` CPUs), so CPU time, not wall time, ranks
# the settings, and both are only comparable within this table. The measurement is shipped
# in `bench/results/`, so this section needs no run of its own.

# %% tags=["hide-input"]
reg_results = next((r for r in (bench.load_registration_results(bench_dir / "results", p)
                                for p in dict.fromkeys([run.profile, "quick"])) if r is not None), None)
reg_summary = bench.registration_summary(reg_results[0]) if reg_results else None
book_setting = bench.SETTINGS[0].describe()
glue("reg_current_setting", f"both images resampled to {book_setting['voxel_mm']:g} mm, iterations "
     f"{book_setting['iterations']} at shrink factors {book_setting['shrink_factors']}", display=False)
if reg_results:
    reg_table, reg_meta = reg_results
    reg_verdict = bench.registration_verdict(reg_summary)
    reg_pose_verdict = bench.registration_verdict(bench.registration_summary(reg_table, error="pose_rms_mm"),
                                                  error="pose_rms_mm")
    reg_csv = save_table(reg_summary, run.tables / "bench_registration_summary.csv")
    glue("reg_profile", f"`{reg_meta.get('profile', '?')}`", display=False)
    glue("reg_n_subjects", reg_table["subject"].nunique(), display=False)
    glue("reg_method", reg_meta.get("method", "defaced"), display=False)
    per_subject = reg_table.drop_duplicates("subject")
    glue("reg_floor", f"{per_subject['floor_mm'].median():.2f}", display=False)
    glue("reg_folded", f"{100 * (1 - per_subject['resolved'].min()):.2f}%", display=False)
    load, load_end = reg_meta.get("load_before", {}), reg_meta.get("load_after", {})
    glue("reg_load", f"{load.get('load_1min', float('nan')):.1f} (1 min) and {load.get('load_15min', float('nan')):.1f} "
         f"(15 min) at the start, {load_end.get('load_1min', float('nan')):.1f} (1 min) at the end", display=False)
    glue("reg_cpus", load.get("cpus", "?"), display=False)
    display(report.reader_table(
        reg_summary, max_rows=len(reg_summary), csv=[reg_csv, bench_dir / "results" / f"registration-{reg_meta['profile']}.csv"],
        columns={"setting": "Setting", "side": "Side", "voxel_mm": "Resampled to (mm)", "iterations": "Iterations",
                 "shrink_factors": "Shrink factors",
                 "initial": "Start", "cpu_seconds": "CPU s (median)", "seconds": "Wall s (median)",
                 ("rms_mm", "rms_q1", "rms_q3"): "Error (mm), median [IQR]", "change_mm": "Change vs current (mm)",
                 "pose_rms_mm": "Error vs pose (mm)", "max_mm": "Worst point (mm)", "dice": "Lowest Dice",
                 "failed": "Failed", "speedup": "Speed-up (both sides)", "chosen": "Chosen"},
        formats={"voxel_mm": 0, "cpu_seconds": 2, "seconds": 2, "speedup": 2, "dice": 3}))
else:
    for key in ("reg_profile", "reg_n_subjects", "reg_method", "reg_floor", "reg_folded", "reg_load", "reg_cpus"):
        glue(key, "n/a", display=False)
    display(Markdown("No measurement stored: run `python -m refacelib.bench registration --profile quick "
                     "--subjects 8` (a few minutes on one core) and commit `bench/results/registration-quick.csv`."))

# %% tags=["hide-input"]
if reg_summary is not None:
    fig = report.plot_registration_tradeoff(reg_summary, reference=bench.REFERENCE, tolerance_mm=bench.TOLERANCE_MM)
    path = save_figure(fig, run.figures / "bench_registration_tradeoff.png")
    plt.close(fig)
    display(Image(filename=str(path)))

# %% tags=["hide-input"]
if reg_summary is not None:
    glue("reg_tolerance", bench.TOLERANCE_MM, display=False)
    current = reg_summary[reg_summary["setting"] == bench.REFERENCE].set_index("side")
    glue("reg_current", f"{current.loc['owner', 'rms_mm']:.2f} mm (owner) and {current.loc['attacker', 'rms_mm']:.2f} "
         "mm (attacker)", display=False)
    glue("reg_verdict", bench.verdict_text(reg_verdict), display=False)
    glue("reg_pose_verdict", "the same" if reg_pose_verdict["chosen"] == reg_verdict["chosen"]
         else bench.verdict_text(reg_pose_verdict), display=False)
    fails = reg_summary.groupby("setting", sort=False)[["failed", "n"]].sum()
    fails = fails[fails["failed"] > 0]
    glue("reg_failures", "; ".join(f"`{name}` {int(r.failed)} of {int(r.n)}" for name, r in fails.iterrows())
         if len(fails) else "none", display=False)
    glue("reg_dice", DICE_SUCCESS, display=False)
    glue("reg_accuracy", "The current setting is also the most accurate one measured."
         if reg_verdict["reference_most_accurate"] else
         f"The current setting is not the most accurate one measured: `{reg_verdict['most_accurate']}` has a lower "
         "median error (mean of both sides).", display=False)
else:
    for key in ("reg_tolerance", "reg_current", "reg_verdict", "reg_pose_verdict", "reg_failures", "reg_dice",
                "reg_accuracy"):
        glue(key, "n/a", display=False)

# %% [markdown]
# The current setting's median error is {glue:text}`reg_current`. Registrations the pipeline
# flags as failed (Dice of the warped template head and the subject's at most
# {glue:text}`reg_dice`; they are centimetres off, above the figure's frame), per setting:
# {glue:text}`reg_failures`. The cheapest setting within {glue:text}`reg_tolerance` mm of the
# current median error on both sides, failing no more often, is {glue:text}`reg_verdict`.
# Judged by the error against the pose alone, the choice is {glue:text}`reg_pose_verdict`.
# {glue:text}`reg_accuracy`
#
# The book's defacing keeps the current setting: a registration decides where
# every emulated method's removal region lands and how every image is brought onto the
# template grid, so changing it would change every defaced image, and with them the training
# data of the shipped checkpoint and every number of the book. A new profile could adopt a
# cheaper setting (the keywords of `register_template`; as a profile parameter they would
# enter the defacing stage's cache key) and would then train its own model.

# %% [markdown]
# ## Sampler cost against face quality
#
# The trained cascade refaces the internal test subjects under one defacing method with each
# sampler: ancestral DDPM over the whole training schedule and DDIM with fewer steps, one
# sample per subject, the same seed. The refaced image is put back into each subject's space
# exactly as the refacing chapter does, and its face MSD against the original is measured as
# in the re-identification chapter. Network evaluations count both stages per refaced face
# (each stage's steps, plus the one-step estimate of stage 2).

# %% tags=["hide-input"]
method = sampler_method or run.params["refacing"]["example_methods"][0]
internal = [s for s, t in study.test_subjects.items() if t == "test_internal"][:max_subjects]
data = refacing.build_examples(study.deface_folder, internal, [method], study.template, settings["voxel_mm"],
                               attacker=True)
models = tuple(load_stage(ckpt_folder / f"stage{s}.pt", device=device)[0] for s in (1, 2))
faces = bq.subject_faces(study.deface_folder, study.template, internal)
msd_fn = lambda volumes: bq.subject_space_msd(faces, volumes, data, template=study.template,  # noqa: E731
                                               deface_folder=study.deface_folder)
# the cascade's prior, as the refacing chapter gives it: the linear prediction with cascade.prior: ridge
linear = refacing.linear_models(ckpt_folder, study.deface_folder, study.template, settings["voxel_mm"], [method],
                                val_ids=list(study.ids["val"]))
model_data = {**data, "prior": refacing.examples_prior(data, linear)}
sampler_table = bq.sampler_benchmark(models, study.config, model_data, samplers, msd=msd_fn,
                                     seed=int(run.params["seed"]), batch_size=settings.get("sample_batch", 8),
                                     device=device)
sampler_csv = save_table(sampler_table, run.tables / "bench_samplers.csv")
# the matched baseline: the cascade's own path with a zero residual (the prior as its output)
average_msd = pd.DataFrame({"msd_mm": msd_fn(data["prior"])})
summary = bq.sampler_summary(sampler_table)
summary_csv = save_table(summary, run.tables / "bench_samplers_summary.csv")
report.reader_table(summary, csv=[summary_csv, sampler_csv])

# %% tags=["hide-input"]
ref = summary[summary["kind"] == "ddpm"].iloc[0]
fast = summary[(summary["kind"] == "ddim") & (summary["steps"] <= 50)]
best = fast.loc[(fast["msd_ratio"] - 1).abs().idxmin()] if len(fast) else None
met = summary[summary["meets_target"]]
glue("n_sampler_subjects", len(internal), display=False)
glue("sampler_method", method, display=False)
glue("ddpm_label", ref["sampler"], display=False)
glue("ddpm_msd", f"{ref['msd_median']:.2f}", display=False)
glue("ddpm_seconds", f"{ref['seconds']:.0f}", display=False)
glue("average_msd", f"{average_msd['msd_mm'].median():.2f}", display=False)
glue("sampler_verdict",
     f"met: {', '.join(met['sampler'])} stay within 5% of {ref['sampler']}'s median MSD with at least 20x fewer "
     "denoising steps" if len(met) else
     (f"missed: the closest DDIM with at most 50 steps, {best['sampler']}, is "
      f"{100 * (best['msd_ratio'] - 1):+.1f}% from {ref['sampler']}'s median MSD at "
      f"{best['step_speedup']:.0f}x fewer denoising steps" if best is not None else "not measured"),
     display=False)

# %% [markdown]
# On {glue:text}`n_sampler_subjects` internal test subjects under {glue:text}`sampler_method`,
# {glue:text}`ddpm_label` gives a median face MSD of {glue:text}`ddpm_msd` mm in
# {glue:text}`ddpm_seconds` s (the cohort-average face: {glue:text}`average_msd` mm). The
# target (DDIM at 50 steps or fewer within 5% of DDPM's median MSD, with at least 20x fewer
# denoising steps) is {glue:text}`sampler_verdict`.

# %% tags=["hide-input"]
fig = report.plot_sampler_tradeoff(summary, float(average_msd["msd_mm"].median()))
path = save_figure(fig, run.figures / "bench_sampler_tradeoff.png")
plt.close(fig)
display(Image(filename=str(path)))

# %% [markdown]
# ## Training throughput
#
# A few timed optimiser steps of each stage (`refacelib.diffusion.train.train_stage`, EMA and all) at
# this profile's stage sizes and batch size, on synthetic volumes of the right shape; the
# first {glue:text}`train_warmup` step(s) are not timed. Voxels per second count the
# network's input voxels times the batch. On CUDA both fp32 and bf16 autocast are timed; on a
# CPU autocast is off, so fp32 only.

# %% tags=["hide-input"]
_, _, grid = refacing.common_grid(study.template, settings["voxel_mm"])
throughput = bench.training_throughput(study.config, grid, steps=train_steps, warmup=train_warmup, device=device)
throughput_csv = save_table(throughput, run.tables / "bench_training.csv")
glue("train_warmup", train_warmup, display=False)
for r in throughput.itertuples():
    glue(f"voxels_per_s_stage{r.stage}_{r.precision}", f"{r.voxels_per_s:,.0f}", display=False)
glue("train_device", str(device), display=False)
report.reader_table(throughput, csv=throughput_csv)

# %% [markdown]
# Stage 1 trains at {glue:text}`voxels_per_s_stage1_fp32` voxels/s and stage 2 at
# {glue:text}`voxels_per_s_stage2_fp32` voxels/s in fp32 on {glue:text}`train_device`.
#
# ## Surface-distance evaluation
#
# For every internal test subject, method and candidate (single refaced sample and the
# cohort-average face): the time of one face MSD as the book computes it (the candidate's face
# surface, a mesh cut to the face region, then the KD-tree distances to the original's, which
# is computed once per subject), and the same distance from MONAI's surface-distance functions
# (`get_mask_edges` and `get_surface_distance`, behind `compute_average_surface_distance`):
# the same head masks, their voxel edges cut to the same face region, the mean of the two
# directed mean distances.

# %% tags=["hide-input"]
surface_table = bq.surface_benchmark(study.deface_folder, refaced, study.template, internal, study.methods)
surface_csv = save_table(surface_table, run.tables / "bench_surface.csv")
agreement = bq.surface_agreement(surface_table)
agreement_csv = save_table(agreement, run.tables / "bench_surface_agreement.csv")
agree = agreement.iloc[0]
glue("n_faces", len(surface_table), display=False)
glue("face_ms", f"{1000 * agree['seconds_median']:.0f}", display=False)
glue("monai_ms", f"{1000 * agree['monai_seconds_median']:.0f}", display=False)
glue("monai_r", f"{agree['pearson_r']:.3f}", display=False)
glue("monai_rho", f"{agree['spearman_rho']:.3f}", display=False)
glue("monai_diff", f"{agree['median_abs_diff_mm']:.3f}", display=False)
glue("monai_rel", f"{100 * agree['median_rel_diff']:.1f}", display=False)
report.reader_table(agreement, csv=[agreement_csv, surface_csv])

# %% [markdown]
# Over {glue:text}`n_faces` faces, one face MSD takes a median {glue:text}`face_ms` ms
# (MONAI's: {glue:text}`monai_ms` ms, head mask included). The two agree with Pearson
# r = {glue:text}`monai_r` and Spearman rho = {glue:text}`monai_rho`, and differ by a median
# {glue:text}`monai_diff` mm ({glue:text}`monai_rel`% of MONAI's value): a smoothed mesh
# against voxel edges.

# %% [markdown]
# ## Cost curves
#
# How the per-subject stages grow with the cohort. `python -m refacelib.bench costs`
# (`refacelib.bench.costs`) generates phantom cohorts of several sizes, each the `paper`
# profile's cohort scaled down with the same fraction of subjects in every split (a test
# subject costs more than a training subject: the attacker's registrations, refacing and
# evaluation are the test subjects' alone, so only the paper's own mix extrapolates to it),
# and times each stage cold, as the book runs it, with its own worker processes: phantom
# generation, defacing, refacing in three parts (its networks; the rest of its work in one
# process: the examples on the common grid, the linear prior refitted on the cohort's training
# subjects, the sampler's own steps; and the worker processes that bring the results back to
# each subject and write them), the face evaluation (surface distances) and the matching
# attack. The refacing networks are the profile's shipped checkpoint, not trained per size:
# their cost does not depend on the cohort. Each stage is fitted as a fixed part plus a cost per subject (per
# test subject from refacing on); the matching attack also compares every pair of test
# subjects of a test set, a cost timed apart that grows with the square of the test set.
# The measurement ships with the project, so this section recomputes nothing:
# {glue:text}`cost_status`.

# %% tags=["hide-input"]
cost_dir = bench_dir / "results"
cost_found = {p: bench.load_costs(cost_dir, p)
              for p in ([costs_profile] if costs_profile else dict.fromkeys([run.profile, "quick", "tiny"]))}
cost_shown = next((p for p, found in cost_found.items() if found is not None), None)
paper_params = config.load_profile("paper")
paper_units = bench.stage_units(paper_params["phantom"])
stored_gpu = bench.load_results(cost_dir, profile="paper") if cost_dir.is_dir() else {}
if cost_shown is not None:
    cost_measured, cost_meta = cost_found[cost_shown]
    cost_fit = bench.fit_costs(cost_measured)
    gpu_setting = None
    if "sampling" in stored_gpu:  # the refacing networks at the paper's sizes and sampler on a measured GPU
        gpu_row = bench.profile_sampling_row(stored_gpu["sampling"], int(paper_params["cascade"]["sample_steps"])).iloc[0]
        gpu_cores = int(stored_gpu["machine"].set_index("card").loc[gpu_row["card"], "cpu_cores"])
        gpu_steps, gpu_samples = paper_params["cascade"]["sample_steps"], paper_params["cascade"]["n_samples"]
        gpu_setting = {"label": f"{gpu_row['card']} + {gpu_cores} cores", "cores": gpu_cores,
                       "stage": "refacing (networks)",
                       "seconds": bench.gpu_network_seconds(float(gpu_row["seconds_per_item_step"]), paper_params,
                                                            paper_units["test subjects"]),
                       "basis": f"paper networks and sampler: {paper_units['test subjects']} test subjects x "
                                f"{len(paper_params['deface']['methods'])} methods x {gpu_samples} samples x "
                                f"{2 * gpu_steps + 1} evaluations x {float(gpu_row['seconds_per_item_step']):.3g} s "
                                f"({gpu_row['card']}, {gpu_row['date']})"}
    cost_projection = bench.project_costs(cost_fit, paper_units, cores=(int(cost_meta["n_jobs"]), costs_cores),
                                          gpu=gpu_setting)
    if gpu_setting:  # like for like: the same GPU at the measured profile's sampler (its networks are no larger)
        shown_params = config.load_profile(cost_shown)
        like_s = bench.gpu_network_seconds(float(gpu_row["seconds_per_item_step"]), shown_params,
                                           paper_units["test subjects"])
        nfe_ratio = gpu_setting["seconds"] / like_s * len(shown_params["deface"]["methods"]) / len(
            paper_params["deface"]["methods"])
        glue("cost_gpu_note", f"{nfe_ratio:.0f} times the network evaluations per subject and method of the "
             f"`{cost_shown}` profile's sampler, through larger networks; at the `{cost_shown}` sampler the same GPU "
             f"would spend about {like_s / 3600:.2f} h or less in the networks", display=False)
    else:
        glue("cost_gpu_note", "no GPU measurement is stored in `bench/results/`", display=False)
    # the fitted lines of the figure: the same projection along cohorts scaled like the measured ones
    cost_lines = bench.projection_lines(cost_fit, smallest=int(cost_measured["n_subjects"].min()),
                                        largest=paper_units["subjects"], reference=cost_meta["reference"],
                                        cores=int(cost_meta["n_jobs"]))
    cost_csvs = [save_table(t, run.tables / f"bench_costs_{name}.csv")
                 for name, t in (("projection", cost_projection), ("fit", cost_fit), ("measured", cost_measured))]
    totals = cost_projection[cost_projection["stage"] == "total"].set_index("setting")["hours"]
    settings_shown = list(dict.fromkeys(cost_projection["setting"]))
    glue("cost_status", f"shown here is `bench/results/costs-{cost_shown}.csv`, measured on "
         f"{cost_meta.get('date', '?')} ({cost_meta.get('command', 'python -m refacelib.bench costs')})", display=False)
    glue("cost_measured", f"the `{cost_shown}` profile at {', '.join(map(str, cost_meta['sizes']))} subjects, "
         f"{cost_meta['n_jobs']} worker processes and {cost_meta.get('torch_threads', 1)} torch thread(s) on "
         f"{cost_meta['cpu_model']} ({cost_meta['cpu_count']} CPUs), {cost_meta['seconds'] / 60:.0f} min in all",
         display=False)
    glue("cost_load", f"{cost_measured['load1_before'].min():.1f} to {cost_measured['load1_after'].max():.1f} "
         f"(1-minute averages around the stages; {cost_meta['cpu_count']} CPUs)", display=False)
    glue("cost_exponents", "; ".join(f"{r.stage} {r.loglog_exponent:.2f}" for r in cost_fit.itertuples()),
         display=False)
    for key, setting in (("paper_cost_measured", settings_shown[0]), ("paper_cost_more", settings_shown[1])):
        glue(key, f"{totals[setting]:,.1f}", display=False)
    glue("paper_cost_gpu", f"{totals[gpu_setting['label']]:,.1f}" if gpu_setting else "n/a (no GPU result stored)",
         display=False)
    glue("cost_gpu_label", gpu_setting["label"] if gpu_setting else "a GPU", display=False)
    cost_top = cost_projection[(cost_projection["setting"] == settings_shown[0])
                               & (cost_projection["stage"] != "total")].sort_values("seconds").iloc[-1]
    glue("cost_dominant", f"{cost_top['stage']} ({cost_top['hours']:,.1f} h)", display=False)
else:
    cost_measured = cost_fit = cost_projection = cost_lines = None
    glue("cost_status", "no measurement is shipped yet: run `python -m refacelib.bench costs --profile quick "
         "--sizes 6,12,24` (20 to 40 minutes on 2 shared CPU cores) and commit `bench/results/costs-quick.csv` and "
         "`costs-quick.json`", display=False)
    for key in ("cost_measured", "cost_load", "cost_exponents", "paper_cost_measured", "paper_cost_more",
                "paper_cost_gpu", "cost_dominant", "cost_gpu_note"):
        glue(key, "n/a (not measured)", display=False)
    glue("cost_gpu_label", "a GPU", display=False)
glue("cost_paper_cohort", f"{paper_units['subjects']} subjects, {paper_units['test subjects']} of them test subjects",
     display=False)
glue("costs_cores", costs_cores, display=False)


# %% tags=["hide-input"]
if cost_measured is not None:
    fig = report.plot_cost_curves(cost_measured, cost_lines, paper_units["subjects"], int(cost_meta["n_jobs"]))
    path = save_figure(fig, run.figures / "bench_cost_curves.png")
    plt.close(fig)
    display(Image(filename=str(path)))

# %% [markdown]
# Measured (the points, and the fit's fixed part and cost per unit below): {glue:text}`cost_measured`.
# The machine was shared with other jobs while it ran; the load average was
# {glue:text}`cost_load`, the measurement's own workers included, so these are the times of a
# loaded machine and overstate a quiet one. Exponents of the growth on log-log axes
# (1: linear; below 1 while a fixed part still counts): {glue:text}`cost_exponents`.

# %% tags=["hide-input"]
if cost_fit is not None:
    display(report.reader_table(cost_fit, csv=cost_csvs[1:], columns={
        "stage": "stage", "unit": "per", "cores": "cores", "n_sizes": "sizes", "a_s": "fixed (s)",
        "b_s": "per unit (s)", "pair_core_s": "per pair of test subjects (core-s)", "r2": "R²",
        "loglog_exponent": "log-log exponent"}, formats={"a_s": 1, "b_s": 2, "pair_core_s": 3, "r2": 3,
                                                          "loglog_exponent": 2}))

# %% [markdown]
# Projected, not measured: the paper's cohort ({glue:text}`cost_paper_cohort`) at the measured
# profile's settings would take {glue:text}`paper_cost_measured` hours on the measured cores,
# {glue:text}`paper_cost_more` hours on {glue:text}`costs_cores` cores, and
# {glue:text}`paper_cost_gpu` hours on {glue:text}`cost_gpu_label`; on the measured cores the
# largest stage is {glue:text}`cost_dominant`. The assumptions: a stage's fixed part does not
# shrink with more cores; the per-subject part of a stage that runs in worker processes
# divides evenly among the cores (a lower bound: memory, disk and the machine's load are as
# they were; and it takes {glue:text}`costs_cores` worker processes, where the pipeline's
# default stops at 8); phantom generation and the refacing networks run in one process and are kept
# as measured on any CPU machine; the matching attack's pairs are divided among the cores.
# On the GPU, every stage is that of the GPU machine's cores except the refacing networks,
# which take the GPU's measured seconds per network evaluation at the `paper` profile's
# networks, sampler and samples (`bench/results/`, see *Stored GPU measurements*): that is
# {glue:text}`cost_gpu_note`. The CPU columns keep the measured profile's grid, networks and
# sampler (the `paper` networks on this CPU are projected in *Projection of the `paper`
# profile*). No column changes the image grid: at the `paper` profile's finer grid every
# per-subject stage costs more.

# %% tags=["hide-input"]
if cost_projection is not None:
    cost_order = [s for s, _, _ in bench.STAGES] + ["total"]
    cost_hours = (cost_projection.pivot(index="stage", columns="setting", values="hours")
                  .reindex(index=cost_order, columns=settings_shown).reset_index())
    display(report.reader_table(cost_hours, csv=cost_csvs, formats={s: 2 for s in settings_shown},
                                caption="Hours for the paper's cohort, projected from the fit above (the GPU "
                                        "column refaces with the paper's networks and sampler); the CSV holds "
                                        "every projection's basis."))

# %% [markdown]
# ## The GPU path
#
# Sampling runs under bf16 autocast on CUDA, sizes its batch to the free GPU memory when
# `sample_batch` is `auto` (`refacelib.diffusion.sample.auto_batch_size`), can compile the networks
# (`compile=True`, off by default) and decides everything in its loops from host integers.
# The audit below counts host-device synchronisations inside one denoising loop: on CUDA
# with PyTorch's sync debug mode, elsewhere the Python calls that would synchronise on a GPU
# (`.item()`, `.cpu()`, `bool()` of a tensor ...).

# %% tags=["hide-input"]
audit = bench.sampling_sync_audit(study.config, grid, device=device)
glue("audit_syncs", int(audit["syncs"].sum()), display=False)
glue("audit_device", str(device), display=False)
report.reader_table(audit, csv_name="bench_sync_audit.csv")

# %% [markdown]
# {glue:text}`audit_syncs` synchronisations inside the sampling loops on
# {glue:text}`audit_device`.
#
# ## Projection of the `paper` profile
#
# The `paper` profile sets the sizes a real study would use (common grid at
# {glue:text}`paper_voxel_mm` mm, whole-head stage at {glue:text}`paper_stage1_mm` mm). Its
# stage sizes, {glue:text}`paper_shapes`, are stored in `bench/stage_sizes.json` for the GPU
# script ({glue:text}`paper_sizes_check`). A few training steps at these sizes (batch
# {glue:text}`paper_cpu_batch` on a CPU, scaled linearly to the profile's batch) and a short
# refacing run give per-step costs; the projection multiplies them by the profile's steps,
# and by {glue:text}`paper_n_test` test subjects x {glue:text}`paper_n_methods` methods x
# {glue:text}`paper_n_samples` samples for refacing.

# %% tags=["hide-input"]
paper = config.load_profile("paper")
stored_sizes = json.loads((bench_dir / "stage_sizes.json").read_text())
paper_cfg, paper_grid = bench.sized_config(paper, stored_sizes["paper"])
fresh = bench.profile_sizes(paper, load_template(paper["deface"]["voxel_mm"], cache_dir=run.artifacts / "template"))
glue("paper_sizes_check", "recomputed from the template now: identical" if fresh == stored_sizes["paper"]
     else f"recomputed from the template now: DIFFERENT, {fresh}; rerun `python -m refacelib.bench sizes`",
     display=False)
shapes = bench.stage_shapes(paper_cfg, paper_grid)
glue("paper_shapes", "; ".join(f"stage {s}: {' x '.join(map(str, v))}" for s, v in shapes.items()), display=False)
glue("paper_voxel_mm", paper["cascade"]["voxel_mm"], display=False)
glue("paper_stage1_mm", paper["cascade"]["voxel_mm"] * paper["cascade"]["factor"], display=False)
glue("paper_cpu_batch", paper_cpu_batch if device.type != "cuda" else "as in the profile", display=False)
glue("paper_n_test", paper["phantom"]["n_test_internal"] + paper["phantom"]["n_test_external"], display=False)
glue("paper_n_methods", len(paper["deface"]["methods"]), display=False)
glue("paper_n_samples", paper["cascade"]["n_samples"], display=False)

# %% tags=["hide-input"]
on_cpu = device.type != "cuda"  # a CPU step takes a minute: one step, no warm-up (its overhead is small)
paper_train = bench.training_throughput(paper_cfg, paper_grid, steps=1, warmup=0 if on_cpu else 1, device=device,
                                        batch_size=paper_cpu_batch if on_cpu else None)
paper_sampling = bench.sampling_throughput(paper_cfg, paper_grid, n_items=paper_sampling_items,
                                           steps=paper_sampling_steps, device=device)
label = f"this machine ({info.get('gpu', 'CPU ' + info['cpu_model'])})"
projection = bench.paper_projection(paper_train, paper_sampling, paper, source=label)
paper_train_csv = save_table(pd.concat([paper_train.assign(source=label)]), run.tables / "bench_paper_training.csv")
projection_csv = save_table(projection, run.tables / "bench_paper_projection.csv")
hours = projection.set_index("quantity")["hours"]
glue("local_train_hours", f"{hours['train (both stages)']:,.0f}", display=False)
glue("local_reface_hours", f"{hours['reface (all test subjects x methods)']:,.0f}", display=False)
glue("local_label", label, display=False)
report.reader_table(projection, csv=[projection_csv, paper_train_csv], formats={"hours": 1})

# %% [markdown]
# Measured on {glue:text}`local_label`: training the paper profile would take
# {glue:text}`local_train_hours` hours and refacing {glue:text}`local_reface_hours` hours.
#
# ## Stored GPU measurements
#
# `bench/gpu_bench.py` measures the same quantities on a GPU (training steps/s at the paper
# stage sizes in fp32 and bf16, sampling throughput at the automatic batch size, peak GPU
# memory and the synchronisation audit) and writes `bench/results/<card>-<date>.json`; every
# such file is shown here, labelled with its card.

# %% tags=["hide-input"]
results = bench.load_results(bench_dir / "results", profile="paper") if (bench_dir / "results").is_dir() else {}
glue("gpu_status", f"{results['machine']['card'].nunique()} card(s): {', '.join(results['machine']['card'].unique())}"
     if "machine" in results else "none stored yet: no GPU has run bench/gpu_bench.py for this repository",
     display=False)
for name in ("training", "training_compiled", "sampling", "sampling_compiled", "sync_audit"):
    if name in results:
        display(Markdown(f"**{name.replace('_', ', ')}**"),
                report.reader_table(results[name], csv_name=f"gpu_{name}.csv"))
gpu_facts = []
if "training" in results:
    tr = results["training"]
    for (card, stage), g in tr.groupby(["card", "stage"]):
        by = g.set_index("precision")
        if {"fp32", "bf16"} <= set(by.index):
            gpu_facts.append(f"{card}, stage {stage}: bf16 autocast {by.loc['fp32', 'step_seconds'] / by.loc['bf16', 'step_seconds']:.1f}x "
                             f"the fp32 steps/s, peak {by.loc['bf16', 'peak_gpu_mib'] / 1024:.1f} GiB "
                             f"(fp32 {by.loc['fp32', 'peak_gpu_mib'] / 1024:.1f} GiB)")
if "training_compiled" in results and "training" in results:
    both = results["training_compiled"].merge(results["training"], on=["card", "stage", "precision"],
                                              suffixes=("_compiled", ""))
    gpu_facts += [f"{r.card}, stage {r.stage}: torch.compile {r.step_seconds / r.step_seconds_compiled:.2f}x "
                  f"the {r.precision} training steps/s" for r in both.itertuples()]
if "sampling_compiled" in results and "sampling" in results:
    on = ["card", "steps"] if "steps" in results["sampling_compiled"] else ["card"]  # like for like: the same steps
    both = results["sampling_compiled"].merge(results["sampling"], on=on, suffixes=("_compiled", ""))
    gpu_facts += [f"{r.card}: torch.compile {r.seconds_per_item_step / r.seconds_per_item_step_compiled:.2f}x "
                  f"the sampling throughput at batch {r.batch_size}"
                  + (f", DDIM-{r.steps}" if "steps" in on else "") for r in both.itertuples()]
if "sync_audit" in results:
    gpu_facts += [f"{r.card}: {r.syncs} host-device synchronisation(s) in {r.steps} {r.sampler.upper()} steps"
                  for r in results["sync_audit"].itertuples()]
glue("gpu_facts", "; ".join(gpu_facts) if gpu_facts else "none", display=False)

# %% [markdown]
# Stored GPU results: {glue:text}`gpu_status`. From them: {glue:text}`gpu_facts`.

# %% tags=["hide-input"]
gpu_projection = pd.concat(
    [bench.paper_projection(results["training"][results["training"]["card"] == card],
                            results["sampling"][results["sampling"]["card"] == card], paper, source=card)
     for card in results["machine"]["card"].unique()], ignore_index=True) if "training" in results else None
if gpu_projection is not None:
    gpu_csv = save_table(gpu_projection, run.tables / "bench_paper_projection_gpu.csv")
    display(report.reader_table(gpu_projection, csv=gpu_csv, formats={"hours": 1}))
glue("gpu_projection", "; ".join(
    f"on one {r.source}: {r.hours:,.1f} h to {r.quantity.split(' (')[0]}"
    for r in gpu_projection.itertuples() if r.quantity in ("train (both stages)", "reface (all test subjects x methods)"))
     if gpu_projection is not None else "not available until a GPU result is stored", display=False)

# %% [markdown]
# Projected from the stored GPU measurements: {glue:text}`gpu_projection`. The study's
# question is one H100; the projection is only for the card(s) named, since an H100 has less
# memory bandwidth than an H200 and these small 3D networks are not compute-bound.

# %% [markdown]
# ## Refacing the paper's cohort within a GPU-hour
#
# The `paper` profile refaces with DDIM at {glue:text}`paper_steps` steps per stage and the
# mean of {glue:text}`paper_n_samples` samples: {glue:text}`paper_setting_hours` on
# {glue:text}`budget_card`. The table lists every measured setting (the GPU file's
# DDIM step counts, each timed at the batch that fitted, and the compiled networks) with 1 to
# {glue:text}`paper_n_samples` samples, the hours it would take for the paper's
# {glue:text}`paper_n_test` test subjects under {glue:text}`paper_n_methods` methods, and what
# it costs in face MSD: the paired change from the paper's setting, median over subjects
# (quartiles), measured with the trained cascade of the {glue:text}`settings_profile` profile on its
# validation split ({glue:text}`settings_status`). The paper-size networks are not trained
# here, so the MSD column says what fewer steps and samples cost a model of this study's kind,
# not what they would cost the paper's. The figure draws the same table: each marker a setting
# and sample count (x1, x2, ...: the samples averaged), left of the dashed line the ones that fit the hour.

# %% tags=["hide-input"]
from refacelib.bench import settings as bs  # noqa: E402

budget_hours = float(gpu_budget_hours)
stored_settings = next(((p, found) for p in dict.fromkeys([run.profile, "quick"])
                        if (found := bs.load_settings(bench_dir / "results", p)) is not None), None)
paper_ref = (int(paper["cascade"]["sample_steps"]), int(paper["cascade"]["n_samples"]))
settings_summary = None
if stored_settings is not None:
    settings_profile, (settings_table, settings_meta) = stored_settings
    measured = set(zip(settings_table["steps"], settings_table["samples"]))
    settings_summary = bs.setting_summary(settings_table, reference=paper_ref) if paper_ref in measured else None
    glue("settings_profile", settings_profile, display=False)
    glue("settings_status", f"`bench/results/settings-{settings_profile}.csv`, {settings_meta['n_subjects']} "
         f"subjects x {len(settings_meta['methods'])} methods, measured on {settings_meta['date']} with "
         f"`python -m refacelib.bench settings`" + ("" if settings_summary is not None else
                                                     f"; it lacks the paper's setting {paper_ref}, so no change is shown"),
         display=False)
else:
    glue("settings_profile", "quick", display=False)
    glue("settings_status", "not stored: run `python -m refacelib.bench settings --profile quick` and commit "
         "`bench/results/settings-quick.csv`", display=False)
glue("paper_steps", paper_ref[0], display=False)
if "sampling" in results:
    card = results["machine"]["card"].iloc[-1]
    rows = pd.concat([results[k][results[k]["card"] == card] for k in ("sampling", "sampling_compiled")
                      if k in results], ignore_index=True)
    options = bs.within_budget(rows, paper, budget_hours=budget_hours,
                               samples=bs.sample_counts(int(paper["cascade"]["n_samples"])))
    budget = bs.budget_table(options, settings_summary)
    budget_csv = save_table(budget, run.tables / "bench_gpu_budget.csv")
    display(report.reader_table(budget, csv=budget_csv, formats={"hours": 2, "change_mm": 3, "change_q1": 3,
                                                                 "change_q3": 3}))
    fig = report.plot_gpu_budget(budget, budget_hours, card=card)
    display(Image(filename=str(save_figure(fig, run.figures / "bench_gpu_budget.png"))))
    plt.close(fig)
    own = budget[(budget["steps"] == paper_ref[0]) & (budget["samples"] == paper_ref[1]) & ~budget["compiled"]]
    choice = bs.budget_choice(budget)
    glue("budget_card", card, display=False)
    glue("paper_setting_hours", f"{own['hours'].iloc[0]:.2f} h" if len(own) else "not measured", display=False)
    if choice is None:
        glue("budget_verdict", f"no measured setting refaces the cohort within {budget_hours:g} GPU-hour",
             display=False)
    else:
        cost = ("; its face-MSD change on the validation split is not measured" if pd.isna(choice["change_mm"]) else
                f"; on the `{settings_profile}` validation split it changes the face MSD by "
                f"{choice['change_mm']:+.3f} mm (quartiles {choice['change_q1']:+.3f} to {choice['change_q3']:+.3f})")
        glue("budget_verdict", f"{choice['setting']} with the mean of {int(choice['samples'])} samples, "
             f"{choice['hours']:.2f} h{cost}", display=False)
else:
    glue("budget_card", "a GPU", display=False)
    glue("paper_setting_hours", "not measured (no GPU result stored)", display=False)
    glue("budget_verdict", "not available until a GPU result is stored", display=False)
glue("budget_hours", f"{budget_hours:g}", display=False)
if settings_summary is not None:
    far = settings_summary.loc[settings_summary["change_mm"].abs().idxmax()]
    glue("settings_spread", f"at most {abs(far['change_mm']):.3f} mm (DDIM-{int(far['steps'])} with "
         f"{int(far['samples'])} sample(s): {far['change_mm']:+.3f} mm, against a median face MSD of "
         f"{settings_summary['msd_median'].iloc[0]:.2f} mm at the paper's setting)", display=False)
else:
    glue("settings_spread", "not measured", display=False)

# %% [markdown]
# Within {glue:text}`budget_hours` GPU-hour, the setting closest to the paper's (the most
# network evaluations per subject: steps and samples together) is {glue:text}`budget_verdict`.
# Across every measured setting, the median face MSD moves from the paper's setting by
# {glue:text}`settings_spread`: the trained networks of this profile add little to their
# linear prior (see the training chapter), so more steps or samples have little to refine.

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
