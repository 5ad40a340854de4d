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
# # Re-identification risk
#
# The study's first result: are refaced faces closer to the true face than a
# population-average face? For every test subject and defacing method we extract the outer
# head surface of each candidate inside the face region and measure its mean absolute
# surface distance (MSD, symmetric, mm) to the original face. Then a matching attack asks
# the question a privacy officer needs answered: how often does a refaced face pick out
# the right person?

# %% tags=["parameters"]
# Defaults; `make book` injects its own values, `make lab` sets them through the environment.
import os

profile = os.environ.get("REFACE_PROFILE", "quick")
dataset = os.environ.get("REFACE_DATASET", "phantom")
publish_faces = False

# %% tags=["hide-input"]
import time

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from refacelib import controls, report
from refacelib.evaluation import reid
from refacelib.imaging import render
from refacelib.imaging.surface import head_mask
from refacelib.pipeline import cohort, evaluation, refacing, stages, start_chapter
from refacelib.report import reid_plots, save_figure, save_table
from refacelib.report.viz import placeholder_figure

run, note, faces, chapter_start, study = start_chapter(profile, dataset, publish_faces, study=True)
ckpt_folder, _ = refacing.trained_cascade(run, study)
template, folder, methods, subjects = study.template, study.deface_folder, study.methods, study.test_subjects
refaced, _ = refacing.refaced_test_set(run, study, ckpt_folder)



# %% [markdown]
# This chapter ran on {glue:text}`dataset_name`.
#
# ## The experiment
#
# Everything that produces a candidate face sees only what an attacker has: the defaced
# image and the training cohort. The template is registered to the *defaced* image (the
# removed voxels left out of the similarity metric), the cohort-average head is matched to
# the kept head voxels by quantile matching, and the result is composited into the
# method's own removal mask. The **matched baseline** (`average`) goes through exactly that
# path with a zero residual: it is what the cascade returns before training, so the
# refaced face and its baseline differ only by what the cascade learned. The template's own
# average head through the same path (`template_average`) stands in for mri_reface. On the
# phantom, the **oracle** puts back the face the generator predicts from the rest of the
# head (the best any model could do), and the **swap check** gives each subject another
# subject's learned correction.
#
# ## Surface distances
#
# Face surface: the iso-surface of the Gaussian-smoothed image (σ = 1 voxel) at the
# subject's threshold (half of Otsu's, from its original, the same for every candidate),
# by marching cubes with sub-voxel interpolation, restricted to the template's face
# region carried to the subject by the evaluator's registration to the original
# (`refacelib.evaluation.reid.face_mesh`). MSD is the mean of the two directed mean point-to-triangle
# distances (`refacelib.evaluation.reid.surface_msd`). Saved as `tables/face_msd.csv`.

# %% tags=["hide-input"]
start = time.perf_counter()
msd, surfaces, floor = evaluation.face_evaluation(run, folder, refaced, template, subjects, methods)
msd_csv = save_table(msd, run.tables / "face_msd.csv")
floor_csv = save_table(floor, run.tables / "face_floor.csv")
summary = reid.summary_table(msd)
summary_csv = save_table(summary, run.tables / "face_msd_summary.csv")
floor_mm = float(floor["msd_mm"].median()) if len(floor) else float("nan")
glue("floor_mm", report.fmt_mm(floor_mm), display=False)
shown = summary.pivot_table(index=["test_set", "method"], columns="candidate", values="summary", aggfunc="first")
order = ["defaced", "refaced", "refaced_mean", "linear", "linear_permuted", "average", "template_average", "swapped",
         "oracle"]
order = [c for c in order if c in shown.columns] + [c for c in shown.columns if c not in order]
report.reader_table(shown.reset_index(), csv=[summary_csv, msd_csv, floor_csv],
                    columns={"test_set": "Test set", "method": "Method", **{c: c for c in order}},
                    caption="Median [IQR] face MSD to the original (mm), per candidate.")

# %% [markdown]
# Median [IQR] MSD (mm) per method, test set and candidate. The **test–retest floor**, the
# MSD between the original and a second scan of the same head (another noise draw; phantom
# only), is {glue:text}`floor_mm` mm (median over test subjects): differences below it are
# within what rescanning the same person changes.
#
# ## Refaced against the matched baseline
#
# Per method and test set: the Hodges–Lehmann paired difference of MSD (candidate minus
# baseline, mm; negative: the candidate is closer to the original) with its 95% interval,
# the number of subjects where the candidate is closer, the rank-biserial correlation, and
# the paired Wilcoxon signed-rank test, Holm-corrected across methods; for the single
# sample (what an attacker running the model once sees), the mean of samples, the swap
# check and the oracle, against the matched cohort-average baseline and the matched
# template-average face. Saved as `tables/face_tests.csv`. The table shows the comparisons
# discussed below (the headline estimator, the swap check and the linear priors against the
# matched baseline; the headline estimator against the swap check and against each linear
# prior; the linear prior against its shuffled-face version) per method and test set; the
# full table, every estimator against every baseline, is folded under it.

# %% tags=["hide-input"]
estimators = [e for e in ("refaced", "refaced_mean", "linear", "linear_permuted", "swapped", "oracle")
              if e in set(msd["candidate"])]
tests = controls.face_tests(msd)  # the same tests the controls run at every coupling
tests_csv = save_table(tests, run.tables / "face_tests.csv")
glue("headline_estimator", run.params["reid"]["headline_estimator"], display=False)
test_values = report.reid_test_values(tests, estimator=run.params["reid"]["headline_estimator"])
for key in ("n_closer", "n_comparisons", "n_swap_closer", "n_person_closer"):
    glue(key, test_values[key], display=False)
glue("linear_text", Markdown(test_values["linear_text"]), display=False)
glue("person_text", Markdown(test_values["person_text"]), display=False)

# %% tags=["hide-input"]
est = run.params["reid"]["headline_estimator"]
shown = tests.assign(comparison=tests["estimator"] + " vs " + tests["baseline"])
discussed = shown[shown["comparison"].isin([f"{est} vs average", "swapped vs average", f"{est} vs swapped",
                                            "linear vs average", f"{est} vs linear", f"{est} vs linear_permuted",
                                            "linear vs linear_permuted", "linear_permuted vs average"])]
report.reader_table(shown, csv=tests_csv, summary=discussed, formats={"rbc": 2}, columns={
    "comparison": "Comparison", "method": "Method", "test_set": "Test set", "n": "Subjects",
    "n_closer": "Closer (subjects)", ("hl_diff_mm", "ci_low_mm", "ci_high_mm"): "Paired difference (mm) [95% CI]",
    "rbc": "Rank-biserial r", "p_holm": "p (Holm)"},
    pivot={"index": ["Comparison", "Method"], "columns": "Test set",
           "values": ["Paired difference (mm) [95% CI]", "p (Holm)"]})

# %% [markdown]
# With the {glue:text}`headline_estimator` estimator, the refaced face is significantly closer
# to the original than its matched baseline (Holm-corrected p < 0.05, negative paired
# difference) in {glue:text}`n_closer` of {glue:text}`n_comparisons` method × test-set
# comparisons. **Is that gain about the person?** The swap check (a subject's baseline plus
# another subject's learned correction) is significantly closer than the baseline in
# {glue:text}`n_swap_closer` of those comparisons, and the refaced face is significantly
# closer than the swap check in {glue:text}`n_person_closer`. The most direct
# person-independent baseline is a model trained on shuffled faces: below, the linear
# prior refitted that way, and in [Controls](09_controls.ipynb) the whole cascade (the
# permutation control). The gain over it is what the person's own face contributes.
#
# {glue:md}`person_text`
#
# {glue:md}`linear_text`
#
# {numref}`fig-face-paired-differences` shows every estimator's paired difference, and
# {numref}`fig-face-msd-distributions` and {numref}`fig-face-bland-altman` the per-subject
# distances behind the headline comparison.

# %% [markdown]
# ### How much of the attainable gain?
#
# On the phantom, the oracle face (the face the rest of the head predicts, from the phantom's
# own generator, in the same removal mask) bounds what any model could gain over the matched
# baseline. Per method and test set: the median paired gain of the refaced face over the
# matched average face, the median paired gain of the oracle (the gap), and their ratio, the
# share of the gap the model closes (1: as much as the oracle; 0: nothing; negative: farther
# than the baseline); and, subject by subject, each subject's own share of its gap (median
# over the subjects whose oracle is closer than their matched average face). Saved as
# `tables/face_gap_closed.csv`.

# %% tags=["hide-input"]
gap = reid.gap_closed(msd, candidates=[c for c in ("refaced_mean", "refaced", "linear", "linear_permuted")
                                      if c in set(msd["candidate"])])
gap_csv = save_table(gap, run.tables / "face_gap_closed.csv")
gap_text = report.gap_key_values(gap)["key_gap_closed"]
if len(gap):
    pct = lambda v: f"{v:.0%}" if pd.notna(v) else "n/a"  # noqa: E731
    display(report.reader_table(gap, csv=gap_csv,
                                columns={"candidate": "Candidate", "method": "Method", "test_set": "Test set",
                                         "n": "Subjects", "gain_mm": "Gain over the average face (mm)",
                                         "gap_mm": "Oracle's gain (mm)", "fraction": "Share of the gap closed",
                                         "n_gap": "Subjects with a gap", "fraction_per_subject": "Per-subject share (median)"},
                                formats={"fraction": pct, "fraction_per_subject": pct}))
glue("gap_closed_text", gap_text, display=False)
glue("key_gap_closed", gap_text, display=False)  # for the landing page

# %% [markdown]
# {glue:text}`gap_closed_text`

# %% [markdown]
# ### What the cascade's grid can hold
#
# The cascade generates its residual on a {glue:text}`cascade_voxel_mm` mm grid; finer detail
# comes from the matched average head (`refacelib.diffusion.grid.full_resolution`). The
# **grid ceiling** puts each test subject's own original (brought to that grid by the
# attacker's registration) through the very path of the refaced face, as if a perfect model
# had generated it, and measures its face like every candidate's
# (`refacelib.pipeline.ceiling`). It reads the original, so it is a bound, not a candidate.
# Median face MSD (mm) per method and test set, beside the oracle, the refaced face (mean of
# samples) and the matched average face (`tables/face_grid_ceiling.csv`):

# %% tags=["hide-input"]
from refacelib.pipeline import ceiling  # noqa: E402

voxel_mm = float(run.params["cascade"]["voxel_mm"])
grid = ceiling.grid_ceiling(run, folder, template, subjects, methods, voxel_mm=voxel_mm)
grid_summary = ceiling.ceiling_summary(grid, msd)
grid_csv = save_table(grid_summary, run.tables / "face_grid_ceiling.csv")
glue("cascade_voxel_mm", f"{voxel_mm:g}", display=False)
glue("grid_ceiling_text", report.ceiling_text(grid_summary, voxel_mm), display=False)
grid_labels = {"method": "Method", "test_set": "Test set", "grid_ceiling": "Grid ceiling", "oracle": "Oracle",
               "refaced_mean": "Refaced (mean)", "average": "Matched average"}  # no oracle on real data
report.reader_table(grid_summary, csv=grid_csv,
                    formats={c: 2 for c in grid_summary.columns if c not in ("method", "test_set")},
                    columns={k: v for k, v in grid_labels.items() if k in grid_summary})

# %% [markdown]
# {glue:text}`grid_ceiling_text`

# %% tags=["hide-input"]
fig = reid_plots.plot_paired_differences(tests, baseline="average", estimators=estimators, floor_mm=floor_mm,
                                         note=note)
save_figure(fig, run.figures / "face_paired_differences.png")
glue("fig_face_paired_differences", fig, display=False)

# %% [markdown]
# ```{glue:figure} fig_face_paired_differences
# :name: fig-face-paired-differences
#
# Hodges–Lehmann paired difference of the face MSD (candidate minus the matched
# cohort-average baseline, mm) with its 95% interval, per defacing method (rows) and test
# set (panels) of this run, for the single sample, the mean of samples, the linear prior
# alone and the same prior fitted to shuffled faces (the person-independent baseline; runs
# with a linear prior), the swap check and, on the phantom, the oracle. Left of zero the
# candidate's face is closer to the original;
# the shaded band is ± the test–retest floor.
# ```

# %% tags=["hide-input"]
fig = reid_plots.plot_msd_distributions(msd, candidates=(run.params["reid"]["headline_estimator"], "average"), note=note)
save_figure(fig, run.figures / "face_msd_distributions.png")
glue("fig_face_msd_distributions", fig, display=False)

# %% [markdown]
# ```{glue:figure} fig_face_msd_distributions
# :name: fig-face-msd-distributions
#
# Face MSD to the original (mm) per defacing method, one panel per test set of this run:
# the refaced face ({glue:text}`headline_estimator` estimator) and the matched
# cohort-average baseline as the two halves of a split violin, each with a box and its
# per-subject points.
# ```

# %% tags=["hide-input"]
fig = reid_plots.plot_bland_altman(msd, a=run.params["reid"]["headline_estimator"], b="average", note=note)
save_figure(fig, run.figures / "face_bland_altman.png")
glue("fig_face_bland_altman", fig, display=False)

# %% [markdown]
# ```{glue:figure} fig_face_bland_altman
# :name: fig-face-bland-altman
#
# Bland–Altman plot of the face MSD of the refaced face ({glue:text}`headline_estimator`
# estimator) against the matched cohort-average baseline, pooled over methods: one point per
# subject × method × test set of this run (colour: method); x the mean of the two MSDs, y
# their difference (negative: the refaced face is closer). Lines: the bias (mean difference)
# and the 95% limits of agreement (bias ± 1.96 SD).
# ```

# %% [markdown]
# ## Ours next to the paper's
#
# The paper's column is the follow-up work's median MSD of the refaced face on its 469
# **real** external subjects; ours is the median on this run's external test set.

# %% tags=["hide-input"]
side = report.msd_vs_paper(msd, estimator=run.params["reid"]["headline_estimator"])
side_csv = save_table(side, run.tables / "face_msd_vs_paper.csv")
report.reader_table(side, csv=side_csv, columns={"method": "Method", "ours_median_msd_mm": "Ours: median MSD (mm)",
                                                 "paper_median_msd_mm": "Paper (real data): median MSD (mm)"})

# %% [markdown]
# ## Faces
#
# One test subject: rows original / defaced / refaced / average face, five views each, with
# each row's MSD to the original. For real data the renderings carry an eye bar and are
# shown only with `publish_faces`.

# %% tags=["hide-input"]
sid = next(iter(subjects))
method = run.params["reid"]["render_method"]
cands = evaluation.candidate_images(folder, refaced, sid, method)
original, affine = stages.load_defaced(folder, "original", sid)
row_msd = msd[(msd["subject"] == sid) & (msd["method"] == method)].set_index("candidate")["msd_mm"]
rows = {"original": original, "defaced": cands["defaced"], "refaced": cands["refaced"], "average": cands["average"]}
labels = {k: k if k == "original" else f"{k}\nMSD {row_msd[k]:.2f} mm" for k in rows}
glue("render_subject", sid, display=False)
glue("render_method", method, display=False)
if faces.show:
    fig = render.render_grid({k: (head_mask(v), affine) for k, v in rows.items()}, labels=labels,
                             eye_bar=faces.eye_bar, pixel_mm=run.params["deface"]["render_pixel_mm"])
    save_figure(fig, run.figures / "face_renderings.png")
    glue("fig_face_renderings", fig, display=False)
else:
    display(Markdown("*Withheld: real faces are not published (`publish_faces` is false).*"))
    glue("fig_face_renderings", placeholder_figure("Renderings withheld (publish_faces is false)."), display=False)

# %% [markdown]
# ```{glue:figure} fig_face_renderings
# :name: fig-face-renderings
#
# Surface renderings, five views each, of test subject {glue:text}`render_subject` of this
# run under {glue:text}`render_method`: the original, the defaced image, the refaced face (a
# single sample) and the matched cohort-average face, each labelled with its face MSD to the
# original (mm).
# ```
#
# Subject {glue:text}`render_subject` under {glue:text}`render_method`.
# {numref}`fig-face-distance-refaced` and {numref}`fig-face-distance-average` show the
# distance of each point of the face surface to the original face (mm), for the refaced face
# and for the average face.

# %% tags=["hide-input"]
if faces.show:
    region = evaluation.subject_region(template, folder, sid, original.shape, affine)
    for name in ("refaced", "average"):
        values = reid.vertex_distance_volume(rows[name], original, affine, region)
        fig = render.render_views(head_mask(rows[name]), affine, values=values, values_affine=affine, vmin=0, vmax=4,
                                  cmap="magma", eye_bar=faces.eye_bar, title=f"{name}: distance to original (mm)",
                                  pixel_mm=run.params["deface"]["render_pixel_mm"])
        save_figure(fig, run.figures / f"face_distance_{name}.png")
        glue(f"fig_face_distance_{name}", fig, display=False)
else:
    for name in ("refaced", "average"):
        glue(f"fig_face_distance_{name}", placeholder_figure("Withheld (publish_faces is false)."), display=False)

# %% [markdown]
# ```{glue:figure} fig_face_distance_refaced
# :name: fig-face-distance-refaced
#
# Distance (mm, colour from 0 to 4) of each point of the refaced face's surface (single
# sample) to the original face, five views; test subject {glue:text}`render_subject` of this
# run under {glue:text}`render_method`.
# ```
#
# ```{glue:figure} fig_face_distance_average
# :name: fig-face-distance-average
#
# As {numref}`fig-face-distance-refaced`, for the matched cohort-average face: distance (mm,
# 0 to 4) of each point of its surface to the original face of test subject
# {glue:text}`render_subject` under {glue:text}`render_method`.
# ```

# %% [markdown]
# ## Matching attack
#
# Beyond the paper: for each candidate face of a test subject, rank every original face of
# the same test set by MSD after rigid alignment (ICP to the template's face, the same
# reference for every subject). Top-1 and
# top-5 identification rates and the cumulative match characteristic per method, next to
# the same ranking done with the average face and with the defaced image. The average face
# is not pure chance: it is registered to each subject, so it carries the head's size and
# shape around the face; chance is one over the number of subjects. A refaced face is a
# privacy risk beyond that when it ranks the right person higher than the average face does.
# {numref}`fig-reid-cmc` shows the cumulative match characteristic. Saved as `tables/reid.csv`.

# %% tags=["hide-input"]
reid_rates, curves = evaluation.matching_attack(surfaces, subjects, methods, reference=evaluation.template_face(template))
reid_csv = save_table(reid_rates, run.tables / "reid.csv")
test_set = sorted(set(subjects.values()))[-1]
fig = reid_plots.plot_cmc({f"{m}: {c}": curves[(m, test_set, c)] for m in methods for c in ("refaced_mean", "average")},
                          note=note)
save_figure(fig, run.figures / "reid_cmc.png")
best = reid_rates[reid_rates["candidate"] == "refaced_mean"].sort_values("top1", ascending=False).iloc[0]
same = reid_rates[(reid_rates["candidate"] == "average") & (reid_rates["test_set"] == best["test_set"])
                  & (reid_rates["method"] == best["method"])].iloc[0]
glue("best_top1", f"{best['top1']:.2f}", display=False)
glue("best_method", f"{best['method']} ({best['test_set']})", display=False)
glue("best_average_top1", f"{same['top1']:.2f}", display=False)
glue("best_chance", f"{1 / best['n']:.2f}", display=False)
glue("reid_seconds", round(time.perf_counter() - start, 1), display=False)
glue("cmc_test_set", test_set, display=False)
glue("fig_reid_cmc", fig, display=False)

# %% [markdown]
# ```{glue:figure} fig_reid_cmc
# :name: fig-reid-cmc
#
# Cumulative match characteristic of the matching attack on this run's
# {glue:text}`cmc_test_set` test set: the fraction of subjects whose own original face ranks
# within the top k (by face MSD after rigid ICP alignment), for the refaced face (mean of
# samples) and the matched average face under each defacing method.
# ```

# %% tags=["hide-input"]
report.reader_table(reid_rates, csv=reid_csv, formats={"top1": 2, "top5": 2}, columns={
    "method": "Method", "test_set": "Test set", "candidate": "Candidate", "n": "Subjects",
    "top1": "Top-1 rate", "top5": "Top-5 rate"},
    pivot={"index": ["Test set", "Method"], "columns": "Candidate", "values": "Top-1 rate"},
    caption="Top-1 identification rate of each candidate face; chance is one over the number of subjects.")

# %% [markdown]
# The highest top-1 identification rate of a refaced face (mean of samples) is
# {glue:text}`best_top1`, under {glue:text}`best_method`; the average face reaches
# {glue:text}`best_average_top1` there, and chance is {glue:text}`best_chance`.
#
# ## Known-answer control
#
# On the phantom the generating model fixes how much of the face the rest of the head
# predicts: `face_coupling`, stated below with what it implies. With a coupling of 0 no
# model may beat its matched baseline; [Controls](09_controls.ipynb) reruns the whole
# study at several couplings (`make controls`).

# %% tags=["hide-input"]
if run.is_phantom:
    coupling = cohort.phantom_params(run).face_coupling
    glue("face_coupling", coupling, display=False)
    display(Markdown(f"`face_coupling` = {coupling:g}: about {100 * coupling**2:.0f}% of the variance of each face "
                     f"component is determined by the cranial deformation visible after defacing."))
else:
    display(Markdown("Real data: no known answer."))
display(Markdown(f"This chapter took {time.perf_counter() - start:.1f} s."))

# %% [markdown]
# ## Key results
#
# The numbers the landing page quotes, read back from this chapter's tables
# (`face_msd_summary.csv`, `face_tests.csv`, `reid.csv`) by `refacelib.report.values`: on the
# {glue:text}`key_test_set` test set, the median MSD of the refaced face ({glue:text}`headline_estimator`)
# and of the cohort-average face with the Holm-corrected Wilcoxon p per method, and the
# matching attack's top-1 identification rates.

# %% tags=["hide-input"]
estimator = run.params["reid"]["headline_estimator"]
key = {**report.face_key_values(report.read_table(run.tables, "face_msd_summary"),
                                report.read_table(run.tables, "face_tests"), estimator=estimator),
       **report.reid_key_values(report.read_table(run.tables, "reid"), estimator=estimator),
       **report.floor_key_values(floor),
       **(report.person_key_values(tests, estimator=estimator) if "swapped" in set(tests["estimator"]) else
          {"key_swap_n_closer": report.NA, "key_person_n_closer": report.NA, "key_permuted_n_closer": report.NA})}
for name, value in key.items():
    glue(name, value, display=False)
report.reader_table(report.key_value_table(key, key="glue key"), csv_name="06_reid_key_results.csv")

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
