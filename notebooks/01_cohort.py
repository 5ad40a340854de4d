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
# # Cohort
#
# Who is in this study: the participants table, their demographics and a
# mid-sagittal slice of each head. Every later chapter works on this cohort.

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
from refacelib.data import MUSCLE_COLUMNS
from refacelib.pipeline import cohort, start_chapter
from refacelib.report import save_figure, save_table, viz
from refacelib.report.viz import placeholder_figure

run, note, faces, chapter_start, study = start_chapter(profile, dataset, publish_faces)



# %% [markdown]
# ## The dataset
#
# The paragraph below is generated from the run's parameters.

# %% tags=["hide-input"]
start = time.perf_counter()
ds = cohort.prepare_dataset(run)
participants = ds.participants
glue("cohort_seconds", round(time.perf_counter() - start, 1), display=False)
glue("dataset_description", Markdown(cohort.describe_dataset(run, ds)), display=False)
glue("n_subjects", len(participants), display=False)
glue("n_train", int((participants["split"] == "train").sum()), display=False)
glue("n_test_internal", int((participants["split"] == "test_internal").sum()), display=False)
glue("n_test_external", int((participants["split"] == "test_external").sum()), display=False)
glue("has_muscle", "yes" if ds.has_muscle else "no", display=False)

# %% [markdown]
# ```{glue:md} dataset_description
# :format: myst
# ```
#
# The cohort has {glue:text}`n_subjects` participants: {glue:text}`n_train` for
# training, {glue:text}`n_test_internal` internal and {glue:text}`n_test_external`
# external test subjects. CT muscle measures present: {glue:text}`has_muscle`.
# Loading (and, for the phantom, generating) it took {glue:text}`cohort_seconds` s.

# %% [markdown]
# ## Participants
#
# Per split and site: number of participants, age, percentage of women and,
# where present, the mean CT muscle radiodensity (HU). Saved as
# `tables/participants_summary.csv` in the run folder.

# %% tags=["hide-input"]
summary = cohort.summary_table(participants)
summary_csv = save_table(summary, run.tables / "participants_summary.csv")
save_table(participants, run.tables / "participants.csv")
glue("participants_summary", summary, display=False)
muscle_labels = {f"{c}_mean": f"{c.rsplit('_', 1)[-1]} muscle, mean (HU)" for c in MUSCLE_COLUMNS}
report.reader_table(summary, csv=summary_csv, columns={
    "split": "Split", "site": "Site", "n": "Participants", "age_mean": "Age, mean (years)",
    "age_sd": "Age, SD (years)", "female_%": "Women (%)",
    **{k: v for k, v in muscle_labels.items() if k in summary}})

# %% [markdown]
# ## Demographics

# %% tags=["hide-input"]
muscles = [c for c in MUSCLE_COLUMNS if c in participants] if ds.has_muscle else []
fig = viz.plot_demographics(participants, muscle_columns=muscles, note=note)
save_figure(fig, run.figures / "cohort_demographics.png")
glue("fig_cohort_demographics", fig, display=False)

# %% [markdown]
# ```{glue:figure} fig_cohort_demographics
# :name: fig-cohort-demographics
#
# Demographics of this run's cohort: age by split (stacked histogram), sex by split and,
# where the cohort has CT muscle measures, each muscle's radiodensity (HU) against age, by sex.
# Every participant of this run.
# ```
#
# ## Mid-sagittal slices
#
# {numref}`fig-cohort-montage` shows one slice through the middle of each of the first heads
# of every split, resampled to the profile's resolution. For a real dataset this montage shows
# faces, so it is left out unless `publish_faces` is true.

# %% tags=["hide-input"]
per_split = run.params["cohort"]["montage_per_split"]
picked = participants.groupby("split", sort=False).head(per_split)
by_id = {s.participant_id: s for s in ds.subjects}
glue("montage_per_split", per_split, display=False)
glue("montage_voxel_mm", run.params["cohort"]["voxel_mm"], display=False)
if faces.show:
    slices = cohort.mid_sagittal_slices([by_id[i] for i in picked["participant_id"]], run.params["cohort"]["voxel_mm"])
    labels = [f"{i}\n{s}" for i, s in zip(picked["participant_id"], picked["split"])]
    fig = viz.plot_montage(slices, labels, note=note)
    save_figure(fig, run.figures / "cohort_montage.png")
    glue("fig_cohort_montage", fig, display=False)
else:
    display(Markdown("*Montage withheld: real faces are not published (`publish_faces` is false).*"))
    glue("fig_cohort_montage", placeholder_figure("Montage withheld (publish_faces is false)."), display=False)

# %% [markdown]
# ```{glue:figure} fig_cohort_montage
# :name: fig-cohort-montage
#
# Mid-sagittal slice of the first {glue:text}`montage_per_split` heads of each split of this
# run, resampled to {glue:text}`montage_voxel_mm` mm, each labelled with its participant and
# split. Real faces are shown only when `publish_faces` is true.
# ```

# %% [markdown]
# ## How much do the phantom's faces vary?
#
# Measured on this run's own generative model (phantom only; see
# [the phantom](../book/phantom.md) for the source the face components were sized from).
# Per training subject, the face distance (MSD, the book's metric) between the head and
# the same head with the mean face; and the point-wise standard deviation of the face
# surface along its normal, face components and soft tissue together.

# %% tags=["hide-input"]
if run.is_phantom:
    from refacelib.data.phantom import REFERENCE_FACE_SD_MM

    variation, sd_stats = cohort.face_variation(run)
    save_table(variation, run.tables / "phantom_face_variation.csv")
    glue("face_var_n", len(variation), display=False)
    glue("face_var_msd_median", f"{variation['msd_mean_face_mm'].median():.2f}", display=False)
    glue("face_var_msd_min", f"{variation['msd_mean_face_mm'].min():.2f}", display=False)
    glue("face_var_msd_max", f"{variation['msd_mean_face_mm'].max():.2f}", display=False)
    for key, value in sd_stats.items():
        glue(f"face_{key}", f"{value:.1f}", display=False)
    glue("face_sd_reference", f"{REFERENCE_FACE_SD_MM[0]:g} to {REFERENCE_FACE_SD_MM[1]:g} mm and more", display=False)
    display(Markdown(
        f"Face distance from the mean face, {len(variation)} training subjects: median "
        f"{variation['msd_mean_face_mm'].median():.2f} mm (range {variation['msd_mean_face_mm'].min():.2f} to "
        f"{variation['msd_mean_face_mm'].max():.2f} mm). Point-wise SD of the face surface: median "
        f"{sd_stats['sd_median_mm']:.1f} mm, 90th percentile {sd_stats['sd_p90_mm']:.1f} mm, maximum "
        f"{sd_stats['sd_max_mm']:.1f} mm; in adults' 3D photographs it ranges from "
        f"{REFERENCE_FACE_SD_MM[0]:g} to {REFERENCE_FACE_SD_MM[1]:g} mm and more (Schutte et al. 2023)."))
else:
    display(Markdown("*Real data: the face variation is the cohort's own; nothing is simulated.*"))

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
