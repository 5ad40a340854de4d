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

# %%
import time

import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from refacelib import cohort, config, evaluation, paper, refacing, reid, reid_plots, render, report, stages
from refacelib.io import save_figure, save_table
from refacelib.surface import head_mask
from refacelib.viz import SIMULATION_NOTE

run = config.open_run(profile, dataset)
chapter_start = time.time()
note = SIMULATION_NOTE if run.is_phantom else None
show_faces = run.is_phantom or config.parse_flag(publish_faces, name="publish_faces")
study = refacing.setup(run)
ds, template, folder, methods, cfg = study.ds, study.template, study.deface_folder, study.methods, study.config
settings = run.params["cascade"]
ckpt_folder, _ = refacing.trained_cascade(run, study)
subjects = study.test_subjects
refaced, _ = refacing.reface_test_set(run, folder, ckpt_folder, list(subjects), methods, template, cfg)
glue("dataset_name", "the phantom cohort (simulated)" if run.is_phantom else "a user-supplied dataset", display=False)

# %% [markdown]
# This chapter ran on {glue:text}`dataset_name`.
#
# ## Surface distances
#
# Head surface: Gaussian-smoothed image, threshold (half of Otsu's), largest component,
# holes filled, marching cubes, in millimetres through the affine; restricted to the face
# region of the template carried to the subject by its registration, the same region for
# every candidate of a subject (`refacelib.reid.face_surface`). MSD is the mean of the two
# directed mean nearest-vertex distances (KD-tree). Saved as `tables/face_msd.csv`.

# %%
start = time.perf_counter()
msd, surfaces = evaluation.face_msd_table(folder, refaced, template, subjects, methods)
save_table(msd, run.tables / "face_msd.csv")
summary = reid.summary_table(msd)
save_table(summary, run.tables / "face_msd_summary.csv")
shown = summary.pivot_table(index=["test_set", "method"], columns="candidate", values="summary", aggfunc="first")
shown

# %% [markdown]
# Median [IQR] MSD (mm) per method, test set and candidate.
#
# ## Refaced against the average face
#
# Paired Wilcoxon signed-rank test of refaced vs average-face MSD per method and test set,
# with the rank-biserial correlation (negative: refaced closer) and Holm correction across
# methods; for both refaced estimators, against the cohort-average face (the fair baseline)
# and the template-average face (mri_reface's). Saved as `tables/face_tests.csv`.

# %%
tests = pd.concat([reid.wilcoxon_tests(msd, baseline=b) for b in ("average", "template_average")], ignore_index=True)
save_table(tests, run.tables / "face_tests.csv")
headline = tests[(tests["baseline"] == "average") & (tests["estimator"] == run.params["reid"]["headline_estimator"])]
closer = headline[(headline["p_holm"] < 0.05) & (headline["median_diff_mm"] < 0)]
glue("headline_estimator", run.params["reid"]["headline_estimator"], display=False)
glue("n_closer", len(closer), display=False)
glue("n_comparisons", len(headline), display=False)
glue("face_tests", tests.round(4), display=False)
tests.round(4)

# %% [markdown]
# With the {glue:text}`headline_estimator` estimator, refaced faces are significantly closer
# to the original than the cohort-average face (Holm-corrected p < 0.05, negative median
# difference) in {glue:text}`n_closer` of {glue:text}`n_comparisons` method x test-set
# comparisons.

# %%
fig = reid_plots.plot_msd_distributions(msd, candidates=(run.params["reid"]["headline_estimator"], "average"), note=note)
save_figure(fig, run.figures / "face_msd_distributions.png")
fig

# %%
fig = reid_plots.plot_bland_altman(msd, a=run.params["reid"]["headline_estimator"], b="average", note=note)
save_figure(fig, run.figures / "face_bland_altman.png")
fig

# %% [markdown]
# ## Ours next to the paper's
#
# The paper's column is the follow-up work's median MSD of the refaced face on its 469
# **real** external subjects; ours is the median on this run's external test set.

# %%
ours = msd[msd["test_set"].isin(["test_external", "test"]) & (msd["candidate"] == run.params["reid"]["headline_estimator"])]
ours = ours.groupby("method")["msd_mm"].median().round(2).rename("ours_median_msd_mm").reset_index()
avg = msd[msd["test_set"].isin(["test_external", "test"]) & (msd["candidate"] == "template_average")]["msd_mm"].median()
ours = pd.concat([ours, pd.DataFrame([{"method": "average (mri_reface)", "ours_median_msd_mm": round(avg, 2)}])])
side = ours.merge(paper.refaced_msd_medians(), on="method", how="outer")
save_table(side, run.tables / "face_msd_vs_paper.csv")
side

# %% [markdown]
# ## Faces
#
# One test subject: rows original / defaced / refaced / average face, five views each, with
# each row's MSD to the original. For real data the renderings carry an eye bar and are
# shown only with `publish_faces`.

# %%
sid = next(iter(subjects))
method = run.params["reid"]["render_method"]
cands = evaluation.candidate_images(folder, refaced, sid, method)
original, affine = stages.load_defaced(folder, "original", sid)
row_msd = msd[(msd["subject"] == sid) & (msd["method"] == method)].set_index("candidate")["msd_mm"]
rows = {"original": original, "defaced": cands["defaced"], "refaced": cands["refaced"], "average": cands["average"]}
labels = {k: k if k == "original" else f"{k}\nMSD {row_msd[k]:.2f} mm" for k in rows}
glue("render_subject", sid, display=False)
glue("render_method", method, display=False)
if show_faces:
    fig = render.render_grid({k: (head_mask(v), affine) for k, v in rows.items()}, labels=labels,
                             eye_bar=not run.is_phantom, pixel_mm=run.params["deface"]["render_pixel_mm"])
    save_figure(fig, run.figures / "face_renderings.png")
    display(fig)
else:
    display(Markdown("*Withheld: real faces are not published (`publish_faces` is false).*"))

# %% [markdown]
# Subject {glue:text}`render_subject` under {glue:text}`render_method`. Below, the distance of
# each point of the face surface to the original face (mm), for the refaced face and for the
# average face.

# %%
if show_faces:
    region = evaluation.subject_region(template, folder, sid, original.shape, affine)
    for name in ("refaced", "average"):
        values = reid.vertex_distance_volume(rows[name], original, affine, region)
        fig = render.render_views(head_mask(rows[name]), affine, values=values, values_affine=affine, vmin=0, vmax=4,
                                  cmap="magma", eye_bar=not run.is_phantom, title=f"{name}: distance to original (mm)",
                                  pixel_mm=run.params["deface"]["render_pixel_mm"])
        save_figure(fig, run.figures / f"face_distance_{name}.png")
        display(fig)

# %% [markdown]
# ## Matching attack
#
# Beyond the paper: for each candidate face of a test subject, rank every original face of
# the same test set by MSD after rigid alignment (ICP to a common reference face). Top-1 and
# top-5 identification rates and the cumulative match characteristic per method, next to
# the same ranking done with the average face and with the defaced image. The average face
# is not pure chance: it is registered to each subject, so it carries the head's size and
# shape around the face; chance is one over the number of subjects. A refaced face is a
# privacy risk beyond that when it ranks the right person higher than the average face does.
# Saved as `tables/reid.csv`.

# %%
reid_rates, curves = evaluation.matching_attack(surfaces, subjects, methods)
save_table(reid_rates, run.tables / "reid.csv")
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
display(fig)
reid_rates

# %% [markdown]
# The highest top-1 identification rate of a refaced face (mean of samples) is
# {glue:text}`best_top1`, under {glue:text}`best_method`; the average face reaches
# {glue:text}`best_average_top1` there, and chance is {glue:text}`best_chance`.
#
# ## Known-answer control
#
# On the phantom the generating model fixes how much of the face the rest of the head
# predicts: `face_coupling`, stated below with what it implies. With a coupling near 0 no
# model may beat the cohort-average face; with a high coupling a model that learned the
# link should.

# %%
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
# (`face_msd_summary.csv`, `face_tests.csv`, `reid.csv`) by `refacelib.report`: on the
# {glue:text}`key_test_set` test set, the median MSD of the refaced face ({glue:text}`headline_estimator`)
# and of the cohort-average face with the Holm-corrected Wilcoxon p per method, and the
# matching attack's top-1 identification rates.

# %%
estimator = run.params["reid"]["headline_estimator"]
key = {**report.face_key_values(report.read_table(run.tables, "face_msd_summary"),
                                report.read_table(run.tables, "face_tests"), estimator=estimator),
       **report.reid_key_values(report.read_table(run.tables, "reid"), estimator=estimator)}
for name, value in key.items():
    glue(name, value, display=False)
pd.Series(key, name="value").to_frame()

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
