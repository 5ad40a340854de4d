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
# # Training the cascade
#
# Two 3D conditional diffusion models, built on MONAI's `DiffusionModelUNet` and its
# DDPM/DDIM schedulers. **Stage 1** generates the whole head at low resolution, conditioned
# by concatenation on the defaced image and its removal mask. **Stage 2** generates the face
# box at the common grid's resolution, conditioned on the defaced image, the mask and the
# upsampled stage-1 result; it is trained on what the trained stage 1 generates for each
# training example, the coarse input it gets at refacing time (`cascade.stage2_coarse`).
# One model serves every defacing method: it is trained on the
# removal masks of all of them, so it learns from what is missing, not from a method's name.
#
# Both predict the clean image as a difference from the training cohort's average head,
# scaled to the subject's intensity; noise is added, and the loss computed, only inside the
# removal mask (see the methods in `refacelib.diffusion.cascade` and `refacelib.diffusion.train`).

# %% tags=["parameters"]
# Defaults; `make book` injects its own values, `make lab` sets them through the environment.
import os

profile = os.environ.get("REFACE_PROFILE", "quick")
dataset = os.environ.get("REFACE_DATASET", "phantom")
publish_faces = False

# %% tags=["hide-input"]
import json
import time

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from refacelib import report
from refacelib.diffusion import resolve_device
from refacelib.diffusion.train import validation_trend
from refacelib.pipeline import config, refacing
from refacelib.report import save_figure, save_table, viz

run = config.open_run(profile, dataset)
chapter_start = time.time()
note = viz.SIMULATION_NOTE if run.is_phantom else None
study = refacing.setup(run)
settings = run.params["cascade"]
cfg = study.config
device = str(resolve_device(settings.get("device", "auto")))
glue("dataset_name", "the phantom cohort (simulated)" if run.is_phantom else "a user-supplied dataset", display=False)

# %% [markdown]
# This chapter ran on {glue:text}`dataset_name`, on device {glue:text}`device`.
#
# ## Training data
#
# Every training subject under every defacing method, on the common grid (template space
# after each subject's affine registration). The validation subjects give the validation loss.

# %% tags=["hide-input"]
_, _, grid_shape = refacing.common_grid(study.template, settings["voxel_mm"])
glue("device", device, display=False)
glue("n_train_examples", len(study.ids["train"]) * len(study.methods), display=False)
glue("n_train_subjects", len(study.ids["train"]), display=False)
glue("grid_shape", " x ".join(map(str, grid_shape)), display=False)
glue("voxel_mm", settings["voxel_mm"], display=False)
glue("box", " x ".join(str(hi - lo) for lo, hi in cfg.box), display=False)
report.reader_table(report.key_value_table(cfg.to_dict(), key="setting"), csv_name="cascade_config.csv",
                    columns={"setting": "Setting of the cascade", "value": "Value"})

# %% [markdown]
# {glue:text}`n_train_examples` training examples ({glue:text}`n_train_subjects` subjects x
# methods) on a {glue:text}`grid_shape` grid at {glue:text}`voxel_mm` mm; the stage-2 face
# box is {glue:text}`box` voxels.
#
# ## Training
#
# AdamW, an exponential moving average of the weights (used for sampling), checkpoints that
# resume after an interruption, and a fixed number of steps per stage (`cascade.stage1.steps`,
# `cascade.stage2.steps`; an optional time budget `max_seconds_per_stage` stops earlier).
# Checkpoints are cached by the hash of the configuration and the data.

# %% tags=["hide-input"]
ckpt_folder, history = refacing.trained_cascade(run, study)
shipped = refacing.training_provenance(ckpt_folder)
trained_on = shipped["device"] if shipped else device
seconds = history.groupby("stage")["seconds"].max()
steps = history.groupby("stage")["step"].max()
history_csv = save_table(history, run.tables / "training_history.csv")
refacing.record_timings(run, [{"step": f"train stage {s}", "device": trained_on, "seconds": round(float(seconds[s]), 1)}
                              for s in seconds.index])
if shipped:
    where = (f"These checkpoints ship with the project (`checkpoints/{ckpt_folder.name}/`): they were trained "
             f"on {shipped['date']} by `{shipped['command']}` on `{shipped['device']}` "
             f"({shipped['machine']}, torch {shipped['torch']}) with this configuration and these training data, "
             "and are used only because the cache key (configuration, data and code version) matches; "
             "with any other setting the cascade is trained here from scratch.")
else:
    where = f"These checkpoints were trained in this run, on `{device}`."
glue("trained_where", where, display=False)
for s in seconds.index:
    glue(f"stage{s}_seconds", round(float(seconds[s]), 1), display=False)
    glue(f"stage{s}_steps", int(steps[s]), display=False)
glue("training_total_seconds", round(float(seconds.sum()), 1), display=False)

# %% [markdown]
# Stage 1 trained for {glue:text}`stage1_steps` steps in {glue:text}`stage1_seconds` s and
# stage 2 for {glue:text}`stage2_steps` steps in {glue:text}`stage2_seconds` s
# ({glue:text}`training_total_seconds` s in all, measured when the checkpoints were made).
# {glue:text}`trained_where`

# %% tags=["hide-input"]
fig = viz.plot_loss_curves(history, note=note)
save_figure(fig, run.figures / "training_loss.png")
glue("fig_training_loss", fig, display=False)

# %% [markdown]
# ```{glue:figure} fig_training_loss
# :name: fig-training-loss
#
# Training loss (per batch) and validation loss (exponential-moving-average weights, on the
# validation subjects) against the training step, log scale, for stage 1 (whole head,
# coarse) and stage 2 (face box, fine) of the checkpoints this run uses. The table below
# gives each stage's steps, wall time and last validation loss.
# ```

# %% tags=["hide-input"]
trend = validation_trend(history)
per_stage = pd.DataFrame({"stage": seconds.index, "steps": steps.values, "seconds": seconds.values}).merge(
    trend, on="stage", how="left")
display(report.reader_table(per_stage, csv=history_csv, columns={
    "stage": "Stage", "steps": "Training steps", "seconds": "Wall time (s)",
    "first_val_loss": "First validation loss", "last_val_loss": "Last validation loss",
    "fell_pct": "Fall, first to last (%)", "tail_change_pct": "Change over the last quarter of steps (%)"},
    formats={"fell_pct": 1, "tail_change_pct": 1}))
for s in (1, 2):  # "n/a" without a validation loss (no validation subjects)
    row = trend[trend["stage"] == s]
    glue(f"stage{s}_val_fell_pct", f"{row['fell_pct'].iloc[0]:.0f}" if len(row) else "n/a", display=False)
    glue(f"stage{s}_val_tail_pct", f"{row['tail_change_pct'].iloc[0]:+.1f}" if len(row) else "n/a",
         display=False)

# %% [markdown]
# The validation loss of stage 1 fell by {glue:text}`stage1_val_fell_pct`% from its first to
# its last value and changed by {glue:text}`stage1_val_tail_pct`% over the last quarter of the
# steps; stage 2's fell by {glue:text}`stage2_val_fell_pct`% and changed by
# {glue:text}`stage2_val_tail_pct`% over its last quarter. A change over the last quarter
# near zero means the curve has flattened; a clearly negative one means training stopped
# while the validation loss was still falling (a longer training would likely help).

# %% [markdown]
# ## The prior under the cascade
#
# The networks learn a residual over a prior (`cascade.prior`). With `average`, the prior
# is the cohort's average head matched to each defaced image. With `ridge`, a linear
# predictor is added to it inside the removal mask (`refacelib.diffusion.linear`): per defacing
# method, kernel ridge regression from the defaced image's visible voxels (common grid) to
# the original's residual over the matched average inside the removed region, fitted on the
# training subjects only, its penalty chosen on the validation subjects. Training examples
# receive out-of-fold predictions (5 folds over subjects), so the residual the networks
# learn is as large as on an unseen subject. It uses only what an attacker has: the defaced
# image, and the training cohort.

# %% tags=["hide-input"]
linear_record = ckpt_folder / refacing.LINEAR_RECORD
if linear_record.is_file():
    record = json.loads(linear_record.read_text())["methods"]
    rows = [{"method": m, "lambda": r["lambda"], **{f"val_{k}": v for k, v in r["val_masked_mse"].items()}}
            for m, r in record.items()]
    glue("prior_status", Markdown(
        f"This run's cascade uses the **linear (ridge) prior**, fitted on {len(study.ids['train'])} training "
        "subjects; the penalty of each method (relative to the kernel's mean diagonal) was chosen by the "
        "validation subjects' mean squared error inside the removal mask (intensity unit squared), in the "
        "table above."),
        display=False)
    display(report.reader_table(pd.DataFrame(rows), csv_name="linear_prior.csv",
                                columns={"method": "Method", "lambda": "Chosen penalty",
                                         **{f"val_{k}": f"Validation error, penalty {k}" for k in
                                            next(iter(record.values()))["val_masked_mse"]}},
                                formats={f"val_{k}": 6 for k in next(iter(record.values()))["val_masked_mse"]}))
else:
    glue("prior_status", Markdown("This run's cascade uses the **matched average head** as its prior "
                                  "(`cascade.prior: average`)."), display=False)

# %% [markdown]
# {glue:md}`prior_status`

# %% [markdown]
# ## Choosing the recipe on the validation split
#
# `make ablation` trains the cascade under a few recipes (the base recipe, the profile's when
# the comparison ran, and variations of one setting each), refaces the **validation** subjects with each under every defacing
# method and measures their faces with the re-identification chapter's code
# (`refacelib.ablation`). No test subject is refaced or measured there, so a recipe chosen
# from this table has not seen the test sets. For each recipe: the last validation loss of
# each stage and the median paired face distance (MSD) of the refaced face minus that of
# the matched average face (same region, same path), over validation subjects x methods;
# negative means closer to the true face. The swap check (another validation subject's
# learned residual added to the same baseline) shows what a recipe gains without knowing
# the person, so the recipe is chosen by the mean of samples minus the swap check: what it
# gains *for the person*, which is what re-identification needs. That reading of the swap
# check is itself tested on the test sets by the permutation control (chapter Controls): a
# model trained on shuffled faces, which cannot know the person, must not beat it.

# %% tags=["hide-input"]
from refacelib import ablation

ablation_table = ablation.table_for_run(run, ckpt_folder.name)
if ablation_table is None:
    glue("ablation_status", Markdown("No recipe comparison applies to this run's checkpoints (none was run on "
                                     "this configuration and these data); `make ablation` makes one."), display=False)
    glue("fig_training_ablation", viz.placeholder_figure("no recipe comparison for this run: make ablation"),
         display=False)
else:
    own = ablation_table.loc[ablation_table["checkpoint"] == ckpt_folder.name, "variant"].iloc[0]
    glue("ablation_status", Markdown(ablation.status_text(ablation_table, own)), display=False)
    fig = viz.plot_ablation(ablation_table, note=note)
    save_figure(fig, run.figures / "training_ablation.png")
    glue("fig_training_ablation", fig, display=False)
    ablation_csv = save_table(ablation_table, run.tables / "training_ablation.csv")
    display(report.reader_table(ablation_table, csv=ablation_csv, columns={
        "variant": "Recipe", "stage1_steps": "Stage-1 steps", "stage2_steps": "Stage-2 steps",
        "stage1_val_loss": "Stage-1 validation loss", "stage2_val_loss": "Stage-2 validation loss",
        "refaced_mean_minus_average_mm": "Mean of samples - average face (mm)",
        "refaced_minus_average_mm": "One sample - average face (mm)",
        "swapped_minus_average_mm": "Swap check - average face (mm)",
        "linear_minus_average_mm": "Linear prior alone - average face (mm)",
        "refaced_mean_minus_swapped_mm": "Mean of samples - swap check (mm)",
        "refaced_mean_closer": "Share of pairs closer (mean)", "train_seconds": "Training time (s)",
        "selected": "Selected"}))

# %% [markdown]
# ```{glue:md} ablation_status
# :format: myst
# ```
#
# ```{glue:figure} fig_training_ablation
# :name: fig-training-ablation
#
# Training recipes compared on the validation split: median paired face distance (mm; left
# of zero means closer to the true face), over validation subjects x defacing methods, of
# the mean of samples, one sample and the swap check against the matched average face, and
# of the mean of samples against the swap check (what the recipe gains for the person).
# The selected recipe (largest gain for the person) is in bold.
# ```

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
