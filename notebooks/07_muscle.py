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
# # Research potential: muscle radiodensity from facial voxels
#
# The study's second question: do the facial voxels of a head MRI carry information
# about the body (CT skeletal-muscle radiodensity at the abdomen, thigh and shin) that
# defacing throws away? For each muscle and each image type (original, every defaced
# version, skull-stripped) we predict the age- and sex-adjusted muscle measure from the
# facial voxels, out of fold, and correlate prediction and truth; the uncertainty comes
# from rerunning the whole cross-validated pipeline on resamples of the subjects.

# %% tags=["parameters"]
# Defaults; `make book` injects its own values, `make lab` sets them through the environment.
import os

profile = os.environ.get("REFACE_PROFILE", "quick")
dataset = os.environ.get("REFACE_DATASET", "phantom")
publish_faces = False

# %% tags=["hide-input"]
import time

from IPython.display import Markdown, display
from myst_nb import glue

from refacelib import report
from refacelib.evaluation import muscle
from refacelib.pipeline import cohort, muscle_stage, start_chapter
from refacelib.report import paper, save_figure, save_table, viz
from refacelib.report.viz import placeholder_figure

run, note, faces, chapter_start, study = start_chapter(profile, dataset, publish_faces)
ds = cohort.prepare_dataset(run)
settings = run.params["muscle"]
start = time.perf_counter()
glue("has_muscle", "present" if ds.has_muscle else "absent: this chapter is skipped", display=False)
glue("n_folds", settings["n_splits"], display=False)
glue("n_resamples", settings["n_boot"], display=False)



# %% [markdown]
# This chapter ran on {glue:text}`dataset_name`. CT muscle columns:
# {glue:text}`has_muscle`.
#
# ## Method
#
# 1. **Features.** The facial voxels of each image: the face region of pydeface's template
#    (plus the air in front of it), sampled on the template grid after each subject's affine
#    registration, every `stride`-th voxel, each image divided by the median of its brain.
# 2. **Adjust and predict inside the folds** (`refacelib.evaluation.muscle.predict_oof`), with
#    {glue:text}`n_folds`-fold cross-validation. In each fold, using the training subjects
#    only: the muscle measure is regressed on age and sex (ordinary least squares); the
#    training residuals train the voxel model (standardised voxels, PCA, ridge regression,
#    `refacelib.evaluation.muscle.make_model`, whose penalty is chosen by efficient leave-one-out within
#    the training fold: a nested cross-validation); that model predicts the held-out
#    subjects. The held-out subjects' target is their residual under the *training fold's*
#    age and sex model. No held-out subject enters either model, not even the age and sex
#    adjustment of its own target.
# 3. **Correlate.** Spearman's rho between the out-of-fold predictions and these held-out
#    residuals.
# 4. **Resample, refitting everything** (`refacelib.evaluation.muscle.resample_correlations`).
#    {glue:text}`n_resamples` half-samples: half of the subjects, drawn without replacement;
#    on each, steps 2 and 3 are rerun (new folds, every model fitted again), so the interval
#    carries the variability of fitting the models, not only that of the subjects. Each
#    half-sample correlation is rescaled to the full sample on Fisher's z scale (its
#    deviation from the mean of the half-samples shrunk by the square root of the sampling
#    fraction, added to the full-sample estimate): the resampled correlations are centred
#    on the cross-validated rho of all subjects, and their 95% percentile interval is a
#    subsampling interval. Every image type gets the same half-samples and the same folds,
#    so the comparisons are paired. A correlation is significant when its interval
#    excludes 0, as in the paper. Without a signal the interval covers 0 about as often as
#    it should (`tests/test_muscle.py`); around a real signal it tends to be somewhat
#    narrow (simulations in `refacelib.evaluation.muscle.resample_correlations`).
#    Why not the bootstrap? Resampling fixed out-of-fold predictions ignores the fitting,
#    whose variability matters most when there is a signal to fit; a bootstrap with
#    replacement that refits (`scheme="bootstrap"`) is conservative, its intervals clearly
#    wider than the estimate's spread across simulated data sets (`tests/test_muscle.py`):
#    each refit draws fresh prediction noise on a resample whose duplicated subjects count
#    twice.
# 5. **Compare.** The paper's test (Wilcoxon signed-rank on the two sets of resampled
#    correlations) and a sound one: the paired percentile interval of the difference in rho
#    (original minus the other image) on the same half-samples and folds.

# %% tags=["hide-input"]
if ds.has_muscle:  # features and the refitted resamples: a stage of the run's cache (pipeline.muscle_stage)
    result = muscle_stage.muscle_evaluation(run, ds)
    table, corr, diff, boot = result.table, result.corr, result.diff, result.boot
    glue("n_muscle_subjects", len(table), display=False)
    glue("n_features", result.n_features, display=False)
    glue("n_excluded", result.n_excluded, display=False)
else:
    display(Markdown("**Skipped:** this dataset has no `muscle_hu_abdomen`, `muscle_hu_thigh`, "
                     "`muscle_hu_shin` columns in `participants.tsv`."))
    for key in ("n_muscle_subjects", "n_features", "n_excluded"):
        glue(key, "n/a", display=False)

# %% [markdown]
# {glue:text}`n_muscle_subjects` subjects enter the analysis ({glue:text}`n_excluded`
# excluded because a defacing method failed on them), with {glue:text}`n_features` facial
# voxels per image.
#
# ## Correlations

# %% tags=["hide-input"]
if ds.has_muscle:
    corr_csv = save_table(corr, run.tables / "muscle_corr.csv")
    diff_csv = save_table(diff[["muscle", "image", "diff_mean", "ci_low", "ci_high", "wilcoxon_p"]],
                          run.tables / "muscle_diff.csv")
    fig = viz.plot_muscle_correlations(boot, corr, diff, labels=paper.IMAGE_LABELS, note=note)
    save_figure(fig, run.figures / "muscle_correlations.png")
    glue("fig_muscle_correlations", fig, display=False)
else:
    glue("fig_muscle_correlations", placeholder_figure("No CT muscle columns in this dataset: nothing to plot."),
         display=False)

# %% [markdown]
# ```{glue:figure} fig_muscle_correlations
# :name: fig-muscle-correlations
#
# Spearman's rho between the out-of-fold predicted and the true age- and sex-adjusted CT
# muscle radiodensity, from the facial voxels of each image type of this run's subjects, one
# panel per muscle: the {glue:text}`n_resamples` resampled (rescaled half-sample)
# correlations, their mean and 95% percentile interval (solid: excludes 0), and a star where
# the paired difference from the original image excludes 0.
# ```
#
# In {numref}`fig-muscle-correlations`, each panel is one muscle; each cloud holds the resampled (rescaled half-sample)
# correlations of one image type; the point and bar are their mean (centred on the
# full-sample estimate) and 95% CI (solid: CI excludes 0, significant; hollow:
# covers 0); a star marks an image whose paired difference from the original excludes 0.
# A CI below 0 also counts as "significant" under the paper's rule, but it means a
# prediction worse than chance, not information. Skull-stripping leaves no facial voxel:
# its predictions are constant and its correlation is undefined (an empty column).
# Cross-validated correlations also lean slightly below 0 when there is nothing to find,
# and more so in small samples: a small negative estimate is no evidence against the face.
#
# ## Ours next to the paper's
#
# Mean [95% CI] of Spearman's rho per image type and muscle (ours: of the rescaled
# half-sample correlations, centred on the full-sample cross-validated rho; the paper's:
# of its bootstrap). The `paper_*` columns are the **paper's numbers on its real
# cohort** (read off its figure), not a result of this run.

# %% tags=["hide-input"]
if ds.has_muscle:
    side = report.muscle_vs_paper(corr)
    side_csv = save_table(side, run.tables / "muscle_corr_vs_paper.csv")
# the counts the prose quotes, from the saved tables (n/a without muscle columns)
counts = report.muscle_chapter_values(report.read_table(run.tables, "muscle_corr") if ds.has_muscle else None,
                                      report.read_table(run.tables, "muscle_diff") if ds.has_muscle else None)
for key, value in counts.items():
    glue(key, value, display=False)

# %% tags=["hide-input"]
if ds.has_muscle:
    display(report.reader_table(side, csv=[side_csv, corr_csv], columns={
        "image": "Image", "muscle": "Muscle", ("mean", "ci_low", "ci_high"): "ours",
        ("paper_mean", "paper_ci_low", "paper_ci_high"): "paper (real data)"},
        formats={("mean", "ci_low", "ci_high"): 3, ("paper_mean", "paper_ci_low", "paper_ci_high"): 3},
        pivot={"index": "Image", "columns": "Muscle", "values": ["ours", "paper (real data)"]},
        caption="Spearman's rho, mean [95% CI], per image and muscle."))

# %% [markdown]
# From the original images the correlation is significant for
# {glue:text}`n_original_significant` of {glue:text}`n_muscles` muscles.
#
# ## Original against each defaced image
#
# `diff_mean`, `ci_low`, `ci_high`: the difference in rho, original minus the image, and its
# paired percentile interval over the same half-samples and folds; `wilcoxon_p`: the
# paper's test on the resampled correlations. Saved as `tables/muscle_diff.csv`.

# %% tags=["hide-input"]
if ds.has_muscle:
    display(report.reader_table(diff, csv=diff_csv, columns={
        "muscle": "Muscle", "image": "Image", ("diff_mean", "ci_low", "ci_high"): "Difference in rho [95% CI]",
        "diff_significant": "CI excludes 0", "wilcoxon_p": "Wilcoxon p (the paper's test)"},
        formats={("diff_mean", "ci_low", "ci_high"): 3, "wilcoxon_p": "p-sci",
                 "image": lambda image: paper.IMAGE_LABELS.get(image, image)}))

# %% [markdown]
# The paired-difference CI excludes 0 for {glue:text}`n_diff_significant` of
# {glue:text}`n_diff` comparisons; the paper's Wilcoxon test gives p < 1e-4 for
# {glue:text}`n_wilcoxon_significant` of them. {glue:text}`n_diff_undefined` more
# comparisons are undefined and left out of both counts (a constant prediction: no facial
# voxel).
#
# ## Why the paper's test is not enough
#
# The Wilcoxon signed-rank test treats the resampled correlations as independent
# observations. They are not data: their number is chosen by the analyst, and the test's
# p-value shrinks as that number grows, for the same subjects and the same difference
# (refitting the models in every resample does not change this). The paired interval of
# the difference does not shrink with the number of resamples; it only gets more precise.
# The table shows both, computed on the first k resamples, for the comparison with the
# largest difference.

# %% tags=["hide-input"]
if ds.has_muscle:
    demo = muscle.wilcoxon_demo(boot, diff, n_boots=settings["demo_n_boots"])
    demo_csv = save_table(demo, run.tables / "muscle_wilcoxon_vs_nboot.csv")
    display(report.reader_table(demo, csv=demo_csv, columns={
        "comparison": "Comparison", "n_boot": "Resamples", "wilcoxon_p": "Wilcoxon p",
        ("diff_ci_low", "diff_ci_high"): "Difference in rho, 95% CI"},
        formats={"wilcoxon_p": "p-sci", ("diff_ci_low", "diff_ci_high"): 3}))
glue("muscle_seconds", round(time.perf_counter() - start, 1), display=False)
glue("muscle_analysis_seconds", result.seconds if ds.has_muscle else "n/a", display=False)

# %% [markdown]
# This chapter took {glue:text}`muscle_seconds` s. The analysis (features, and the models
# refitted in every fold of every half-sample) is a stage of the run's cache
# (`refacelib.pipeline.muscle_stage`, keyed by the defaced images, the participants, the
# settings and its code): it took {glue:text}`muscle_analysis_seconds` s when it ran.

# %% [markdown]
# ## Key results
#
# The correlations the landing page quotes, read back from `tables/muscle_corr.csv` by
# `refacelib.report.values` (mean [95% CI] per muscle and image; `n/a` without muscle columns).

# %% tags=["hide-input"]
key = report.muscle_key_values(report.read_table(run.tables, "muscle_corr"))
for name, value in key.items():
    glue(name, value, display=False)
display(report.reader_table(report.key_value_table(key, key="glue key"), csv_name="07_muscle_key_results.csv"))

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
