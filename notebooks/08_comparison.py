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
# # Ours next to the paper
#
# Each number that {cite:t}`gao2025pitfalls` report, next to the same quantity from this
# run, with what separates the two. The paper's column holds its numbers on its **real**
# cohorts (from its text and figures); ours is computed here from the run's tables
# (`tables/*.csv`, written by the earlier chapters). The chapter opens with the study at a
# glance, the paper's first figure redrawn from this run's own images.

# %% tags=["parameters"]
# Defaults; `make book` injects its own values, `make lab` sets them through the environment.
import os

profile = os.environ.get("REFACE_PROFILE", "quick")
dataset = os.environ.get("REFACE_DATASET", "phantom")
publish_faces = False

# %% tags=["hide-input"]
from IPython.display import Markdown, display
from myst_nb import glue

from refacelib import report
from refacelib.data import privacy
from refacelib.imaging import render
from refacelib.imaging.surface import head_mask
from refacelib.pipeline import evaluation, private_replacements, refacing, stages, start_chapter
from refacelib.report import overview, paper, save_figure

run, note, faces, chapter_start, study = start_chapter(profile, dataset, publish_faces, study=True)
estimator = run.params["reid"]["headline_estimator"]
table = lambda name: report.read_table(run.tables, name)  # noqa: E731  (None when a chapter did not write it)

# %% [markdown]
# This chapter ran on {glue:text}`dataset_name`.
#
# ## The study at a glance
#
# {numref}`fig-overview` shows one test subject of this run: its original head, the same
# head defaced, and the head refaced by the cascade (a single sample, what an attacker running the model once sees),
# rendered as surfaces. Below, the head-body link: the facial voxels the muscle model reads,
# and the run's correlations between predicted and true CT muscle radiodensity, from the
# original image and from each defaced one. For a real dataset the faces are withheld
# unless `publish_faces` is true, and renderings carry an eye bar.

# %% tags=["hide-input"]
ckpt_folder, _ = refacing.trained_cascade(run, study)
subjects = study.test_subjects
refaced, _ = refacing.refaced_test_set(run, study, ckpt_folder)
sid, method = next(iter(subjects)), run.params["reid"]["render_method"]
original, affine = stages.load_defaced(study.deface_folder, "original", sid)
cands = evaluation.candidate_images(study.deface_folder, refaced, sid, method)
masks = {"original": head_mask(original), "defaced": head_mask(cands["defaced"]),
         "refaced": head_mask(cands["refaced"])}
grid = render.view_grid(masks["original"], affine, pixel_mm=run.params["deface"]["render_pixel_mm"])
eyes = None if run.is_phantom else render.estimate_eyes(masks["original"], affine, grid=grid)
views = {k: render.render_view(m, affine, azimuth_deg=render.VIEWS["right_3q"], grid=grid, eyes_world=eyes)
         if faces.show else None for k, m in masks.items()}
region = evaluation.subject_region(study.template, study.deface_folder, sid, original.shape, affine)

# %% tags=["hide-input"]
stage1_mm = run.params["cascade"]["voxel_mm"] * run.params["cascade"]["factor"]
msd = table("face_msd")
row_msd = msd[(msd["subject"] == sid) & (msd["method"] == method)].set_index("candidate")["msd_mm"]
titles = {k: f"{k}\nMSD {report.fmt_mm(row_msd[k])} mm to the original" for k in ("defaced", "refaced") if k in row_msd}
linear_prior = run.params["cascade"].get("prior", "average") == "ridge"
steps = [f"defacing\n({method})",
         "refacing model:\n" + ("linear prior +\n" if linear_prior else "")
         + f"3D diffusion cascade\nstage 1 {stage1_mm:g} mm,\nstage 2 {run.params['cascade']['voxel_mm']:g} mm"]
fig = overview.plot_overview(
    views, steps=steps,
    face_slice=overview.mid_sagittal(original, masks["original"]) if faces.show else None,
    face_region=overview.mid_sagittal(region, masks["original"]) if faces.show else None,
    eye_bar=(privacy.sagittal_eye_bar(overview.mid_sagittal(masks["original"], masks["original"]) > 0)
             if faces.show and not run.is_phantom else None),
    corr=table("muscle_corr"), labels=paper.IMAGE_LABELS, titles=titles, note=note)
save_figure(fig, run.figures / "overview.png")
glue("overview_figure", fig, display=False)
glue("overview_subject", sid, display=False)
glue("overview_method", method, display=False)

# %% [markdown]
# ```{glue:figure} overview_figure
# :name: fig-overview
#
# The study at a glance, drawn from this run. Top: test subject {glue:text}`overview_subject`'s
# original head, the same head defaced by {glue:text}`overview_method`, and refaced by the
# refacing model (one sample of the diffusion cascade over its prior), rendered as
# surfaces, with each face's MSD to the
# original. Bottom: the facial voxels the muscle model reads, and Spearman's rho between the
# predicted and the true CT muscle radiodensity from the original and from each defaced
# image, mean and 95% interval (half-samples that refit the model).
# ```
#
# ## Settings of this run
#
# The numbers the methods page refers to, read from the run's parameters
# (`params/<profile>.yaml`) and the cascade configuration; each is glued as `p_<setting>`.

# %% tags=["hide-input"]
settings = report.run_settings(run.params, study.config)
for key, value in settings.items():
    glue(f"p_{key}", value, display=False)
report.reader_table(report.key_value_table(settings, key="setting"),
                    csv_name="08_run_settings.csv")

# %% [markdown]
# ## Re-identification risk
#
# The paper measures the face surface distance (MSD, mm) of each candidate face to the
# original face. Its example subject is one MRI_Deface subject; ours is the median over
# this run's {glue:text}`ours_test_set` test set, with the
# {glue:text}`ours_estimator` estimator of the refaced face. The median refaced MSD per
# method on the paper's side comes from the group's follow-up work on {glue:text}`paper_n_test_external` external
# subjects; the average-face row there is mri_reface's population-average face, which we
# match with the template-average face.

# %% tags=["hide-input"]
tests, summary = table("face_tests"), table("face_msd_summary")
test_set = report.headline_test_set(summary["test_set"])
values = {
    "ours_test_set": test_set, "ours_estimator": estimator,
    **report.example_msd_values(msd, method="mri_deface", estimator=estimator, test_set=test_set),
    **report.closer_counts(tests, estimator=estimator, baseline="average"),
    **report.closer_counts(tests, estimator=estimator, baseline="template_average", prefix="ours_tpl_n_closer"),
    **report.msd_comparison_values(table("face_msd_vs_paper")),
}
participants = table("participants")
for split in ("train", "test_internal", "test_external"):
    values[f"ours_n_{split}"] = str(int((participants["split"] == split).sum()))
values.update(paper.glue_values())
values["ours_emulated"] = report.emulated_methods(table("deface_methods"))
values.update(report.method_engines(table("deface_methods")))
glue("methods_table", report.reader_table(
    table("deface_methods"), csv=run.tables / "deface_methods.csv",
    columns={"method": "Method", "engine": "Engine", "version": "Version", "emulated": "Emulated"}), display=False)
for key, value in values.items():
    glue(key, value, display=False)

# %% [markdown]
# | quantity | paper (real data) | ours (this run) | what separates them |
# |---|---|---|---|
# | training subjects | {glue:text}`paper_n_train` | {glue:text}`ours_n_train` | simulated heads; model size set by the profile |
# | internal test subjects | {glue:text}`paper_n_test_internal` | {glue:text}`ours_n_test_internal` | |
# | external test subjects | {glue:text}`paper_n_test_external` | {glue:text}`ours_n_test_external` | the phantom's "external" set is drawn from the same generator |
# | MRI_Deface, defaced MSD (mm) | {glue:text}`paper_example_defaced` (one subject) | {glue:text}`ours_example_defaced` | ours: median of the test set; mri_deface here: {glue:text}`engine_mri_deface` |
# | MRI_Deface, refaced MSD (mm) | {glue:text}`paper_example_refaced` (one subject) | {glue:text}`ours_example_refaced` | ours: generated on the cascade's grid, finer detail from the average head |
# | MRI_Deface, average-face MSD (mm) | {glue:text}`paper_example_average` (one subject) | {glue:text}`ours_example_average` | ours: the training cohort's average face |
# | refaced closer than the average face, internal test (methods, p < 0.05) | yes | {glue:text}`ours_n_closer_test_internal` | ours: Holm-corrected, cohort-average face |
# | refaced closer than the average face, external test (methods, p < 0.05) | yes | {glue:text}`ours_n_closer_test_external` | as above |
# | refaced closer than the template-average face, external test | yes | {glue:text}`ours_tpl_n_closer_test_external` | the mri_reface-like baseline |
# | median refaced MSD, FSL_deface (mm) | {glue:text}`paper_msd_fsl_deface` | {glue:text}`ours_msd_fsl_deface` | fsl_deface here: {glue:text}`engine_fsl_deface` |
# | median refaced MSD, MRI_Deface (mm) | {glue:text}`paper_msd_mri_deface` | {glue:text}`ours_msd_mri_deface` | mri_deface here: {glue:text}`engine_mri_deface` |
# | median refaced MSD, Pydeface (mm) | {glue:text}`paper_msd_pydeface` | {glue:text}`ours_msd_pydeface` | pydeface here: {glue:text}`engine_pydeface` |
# | median refaced MSD, Quickshear (mm) | {glue:text}`paper_msd_quickshear` | {glue:text}`ours_msd_quickshear` | quickshear here: {glue:text}`engine_quickshear` |
# | median refaced MSD, skull-stripping (mm) | {glue:text}`paper_msd_skullstrip` | {glue:text}`ours_msd_skullstrip` | brain mask: the phantom's ground truth or deepbet (`deface.phantom_brain_mask`) |
# | median MSD, mri_reface's average face (mm) | {glue:text}`paper_msd_average` | {glue:text}`ours_msd_average` | ours: the template-average face |
#
# Emulated defacing tools in this run: {glue:text}`ours_emulated`.
#
# ## Research potential
#
# Spearman's rho between the predicted and the true age- and sex-adjusted CT muscle
# radiodensity, mean [95% interval from half-samples that refit the model]. The paper's values are read off its figure.

# %% tags=["hide-input"]
corr, diff = table("muscle_corr"), table("muscle_diff")
values = {**report.muscle_comparison_values(corr), **report.muscle_test_values(corr, diff)}
for key, value in values.items():
    glue(key, value, display=False)

# %% [markdown]
# | muscle, image | paper (real data) | ours (this run) |
# |---|---|---|
# | abdomen, original | {glue:text}`paper_rho_abdomen_original` | {glue:text}`ours_rho_abdomen_original` |
# | abdomen, FSL_deface | {glue:text}`paper_rho_abdomen_fsl_deface` | {glue:text}`ours_rho_abdomen_fsl_deface` |
# | abdomen, MRI_Deface | {glue:text}`paper_rho_abdomen_mri_deface` | {glue:text}`ours_rho_abdomen_mri_deface` |
# | abdomen, Pydeface | {glue:text}`paper_rho_abdomen_pydeface` | {glue:text}`ours_rho_abdomen_pydeface` |
# | abdomen, Quickshear | {glue:text}`paper_rho_abdomen_quickshear` | {glue:text}`ours_rho_abdomen_quickshear` |
# | abdomen, skull-stripping | {glue:text}`paper_rho_abdomen_skullstrip` | {glue:text}`ours_rho_abdomen_skullstrip` |
# | thigh, original | {glue:text}`paper_rho_thigh_original` | {glue:text}`ours_rho_thigh_original` |
# | thigh, FSL_deface | {glue:text}`paper_rho_thigh_fsl_deface` | {glue:text}`ours_rho_thigh_fsl_deface` |
# | thigh, MRI_Deface | {glue:text}`paper_rho_thigh_mri_deface` | {glue:text}`ours_rho_thigh_mri_deface` |
# | thigh, Pydeface | {glue:text}`paper_rho_thigh_pydeface` | {glue:text}`ours_rho_thigh_pydeface` |
# | thigh, Quickshear | {glue:text}`paper_rho_thigh_quickshear` | {glue:text}`ours_rho_thigh_quickshear` |
# | thigh, skull-stripping | {glue:text}`paper_rho_thigh_skullstrip` | {glue:text}`ours_rho_thigh_skullstrip` |
# | shin, original | {glue:text}`paper_rho_shin_original` | {glue:text}`ours_rho_shin_original` |
# | shin, FSL_deface | {glue:text}`paper_rho_shin_fsl_deface` | {glue:text}`ours_rho_shin_fsl_deface` |
# | shin, MRI_Deface | {glue:text}`paper_rho_shin_mri_deface` | {glue:text}`ours_rho_shin_mri_deface` |
# | shin, Pydeface | {glue:text}`paper_rho_shin_pydeface` | {glue:text}`ours_rho_shin_pydeface` |
# | shin, Quickshear | {glue:text}`paper_rho_shin_quickshear` | {glue:text}`ours_rho_shin_quickshear` |
# | shin, skull-stripping | {glue:text}`paper_rho_shin_skullstrip` | {glue:text}`ours_rho_shin_skullstrip` |
# | shin: images with a significant correlation | original only | {glue:text}`ours_shin_significant` |
# | original vs defaced, Wilcoxon p < 1e-4 (comparisons) | all | {glue:text}`ours_n_wilcoxon` |
# | original vs defaced, paired CI of the difference excludes 0 | not reported | {glue:text}`ours_n_diff` |
#
# "undefined": skull-stripping leaves no facial voxel, so our prediction is constant and
# its correlation undefined (see the [muscle chapter](07_muscle.ipynb)). The paper reports
# a correlation for skull-stripped images, so its features must reach beyond the facial
# voxels; its methods section was not available to us.
#
# ## What separates the two columns
#
# - **Dataset.** Ours is {glue:text}`dataset_name`. On the phantom, how much of the face
#   the rest of the head predicts, and how much the face says about muscle, are parameters
#   of the simulation ([the phantom](../book/phantom.md)); agreement or disagreement with
#   the paper's numbers is not evidence about real faces or real bodies.
# - **Resolution.** The paper's cascade is "3D high-resolution" (whole-head MRI at about
#   1 mm). Here stage 1 runs at {glue:text}`p_stage1_mm` mm and stage 2 at
#   {glue:text}`p_stage2_mm` mm, with images defaced at {glue:text}`p_deface_mm` mm: a
#   surface distance at that grid cannot resolve sub-millimetre facial detail.
# - **Model size and training.** Set by the profile (`cascade.stage1`, `cascade.stage2`:
#   channels and {glue:text}`p_stage1_steps` / {glue:text}`p_stage2_steps` training steps);
#   the paper's architecture and step counts are not published.
# - **Emulated tools.** Emulated in this run: {glue:text}`ours_emulated`. Where FSL or
#   FreeSurfer is not installed, a tool is emulated from pydeface's own template and face
#   mask ([Methods](../book/methods.md#defacing)); its removal region approximates, but is
#   not, the real tool's.
# - **Average face.** The paper's average face is mri_reface's; our fair baseline is the
#   training cohort's average face, and the template-average face stands in for
#   mri_reface.
# - **Sample sizes.** See the subject counts above: a smaller test set gives wider
#   intervals and weaker p-values, and the matching attack's chance level is one over the
#   test set's size.

# %% [markdown]
# ## Take the results away
#
# Every table of this run (the CSV files of its `tables/` folder, each described in the
# README) and the parameters it ran with (`inputs/params.yaml`), in one zip:

# %% tags=["hide-input"]
private = private_replacements(run)  # a real dataset's path in params.yaml becomes <DATASET>
display(Markdown(report.archive_link(run.folder, replacements=private, private=list(private))))

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
