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
# # Defacing
#
# The study attacks the output of five defacing methods and compares the attack with a
# population-average face (the idea of mri_reface). This chapter defaces every subject
# of the cohort with every method, registers the template to each defaced test image as
# an attacker would (without the original), builds the training cohort's average head,
# checks the result, and shows what each method leaves of one test subject's head. The
# average faces themselves are put back by the refacing chapter, through the cascade's
# own path, so that they are built exactly like the refaced faces.

# %% tags=["parameters"]
# Defaults; `make book` injects its own values, `make lab` sets them through the environment.
import os

profile = os.environ.get("REFACE_PROFILE", "quick")
dataset = os.environ.get("REFACE_DATASET", "phantom")
publish_faces = False

# %% tags=["hide-input"]
from IPython.display import Markdown, display
from myst_nb import glue

from refacelib import deface, report
from refacelib.imaging import render
from refacelib.imaging.surface import head_mask
from refacelib.pipeline import cohort, stages, start_chapter
from refacelib.report import save_figure, save_table, viz
from refacelib.report.viz import placeholder_figure

run, note, faces, chapter_start, study = start_chapter(profile, dataset, publish_faces)
ds = cohort.prepare_dataset(run)
template = stages.study_template(run)



# %% [markdown]
# This chapter ran on {glue:text}`dataset_name`.
#
# ## The methods and what ran
#
# Where the real program is installed it is called; otherwise a built-in emulation,
# defined on the template and carried to each subject by an ANTsPy affine registration,
# stands in for it and is named so. Saved as `tables/deface_methods.csv`.

# %% tags=["hide-input"]
methods = deface.method_table()
methods_csv = save_table(methods, run.tables / "deface_methods.csv")
glue("n_emulated", int(methods["emulated"].sum()), display=False)
report.reader_table(methods, csv=methods_csv,
                    columns={"method": "Method", "engine": "Engine", "version": "Version", "emulated": "Emulated"})

# %% [markdown]
# {glue:text}`n_emulated` of the methods ran as emulations on this machine.
#
# ## The removal regions on the template
#
# Each emulated region is defined on pydeface's average head; {numref}`fig-deface-regions`
# shows what each method removes (yellow), on a mid-sagittal and an axial slice through the eyes (skull-stripping:
# everything outside the template's deepbet brain mask). Quickshear's region is not
# drawn: the real quickshear computes its shear plane per subject from the brain mask.

# %% tags=["hide-input"]
regions = {**deface.template_regions(template), "skullstrip": template.head & ~template.brain}
fig = viz.plot_regions(template.data, regions, template.affine, eye_world=template.landmarks["eye_left"], note=note)
save_figure(fig, run.figures / "deface_regions.png")
glue("fig_deface_regions", fig, display=False)

# %% [markdown]
# ```{glue:figure} fig_deface_regions
# :name: fig-deface-regions
#
# Removal region of each defacing method (yellow) on the study template (pydeface's average
# head): a mid-sagittal slice (top) and an axial slice through the eyes (bottom). Emulated
# methods only; for skull-stripping, everything outside the template's brain mask.
# ```

# %% [markdown]
# ## Defacing the cohort
#
# Every subject, every method. Brain masks for the phantom: see the QC table's
# `brain_mask_source` column (a parameter, `deface.phantom_brain_mask`).

# %% tags=["hide-input"]
folder, qc = stages.deface_cohort(run, ds, template)
stats = stages.stage_stats(folder)
qc_csv = save_table(qc, run.tables / "deface_qc.csv")
glue("deface_seconds", stats["seconds"], display=False)
glue("deface_peak_mib", stats["peak_rss_mib"], display=False)
glue("deface_n", stats["n_subjects"], display=False)
glue("n_failed", int((~qc["passed"].astype(bool)).sum()), display=False)
glue("brain_source", ", ".join(sorted(qc["brain_mask_source"].unique())), display=False)

# %% [markdown]
# Defacing {glue:text}`deface_n` subjects with every method took
# {glue:text}`deface_seconds` s, with a peak resident memory of
# {glue:text}`deface_peak_mib` MiB (recorded when the stage ran). Brain masks:
# {glue:text}`brain_source`. Failed subject-method pairs, excluded with their reason:
# {glue:text}`n_failed`.
#
# ## Quality control
#
# Fraction of head voxels removed, brain voxels touched (zero for every method but
# skull-stripping) and registration success, per method. Saved as `tables/deface_qc.csv`.

# %% tags=["hide-input"]
summary = stages.qc_summary(qc)
summary_csv = save_table(summary, run.tables / "deface_qc_summary.csv")
report.reader_table(summary, csv=[summary_csv, qc_csv], columns={
    "method": "Method", "n": "Subjects", "failed": "Failed", "removed_head_fraction_median": "Head removed, median (%)",
    "brain_voxels_removed_max": "Brain voxels removed, max", "registration_ok": "Registrations succeeded"},
    formats={"removed_head_fraction_median": lambda f: f"{100 * f:.1f}"})

# %% tags=["hide-input"]
fig = viz.plot_deface_qc(qc, note=note)
save_figure(fig, run.figures / "deface_qc.png")
glue("fig_deface_qc", fig, display=False)

# %% [markdown]
# ```{glue:figure} fig_deface_qc
# :name: fig-deface-qc
#
# Quality control of defacing, per method, on every subject of this run: fraction of the
# head removed, number of brain voxels removed and Dice overlap of the template
# registration (points: subjects; boxes: median and quartiles).
# ```

# %% [markdown]
# ## One test subject
#
# Mid-sagittal slices and 3D renderings of the original and each defaced version. For real data these are shown only when
# `publish_faces` is true, and the renderings carry an eye bar.

# %% tags=["hide-input"]
test_ids = [s.participant_id for s in ds.subjects if str(s.row.get("split", "")).startswith("test")]
sid = (test_ids or ds.ids)[0]
names = ["original", *run.params["deface"]["methods"]]
names = [n for n in names if (folder / n / f"{sid}.nii.gz").exists()]
images = {name: stages.load_defaced(folder, name, sid) for name in names}
glue("example_subject", sid, display=False)
if faces.show:
    fig = viz.plot_mid_sagittal_row(images, note=note)
    save_figure(fig, run.figures / "deface_example_slices.png")
    glue("fig_deface_example_slices", fig, display=False)
else:
    display(Markdown("*Withheld: real faces are not published (`publish_faces` is false).*"))
    glue("fig_deface_example_slices", placeholder_figure("Slices withheld (publish_faces is false)."), display=False)

# %% [markdown]
# ```{glue:figure} fig_deface_example_slices
# :name: fig-deface-example-slices
#
# Mid-sagittal slices of test subject {glue:text}`example_subject` of this run: the original
# and the output of each defacing method, on the same intensity window.
# ```

# %% tags=["hide-input"]
if faces.show:
    rows = {name: (head_mask(img), aff) for name, (img, aff) in images.items()}
    fig = render.render_grid(rows, labels={n: n.replace("_", " ") for n in rows}, eye_bar=faces.eye_bar,
                             pixel_mm=run.params["deface"]["render_pixel_mm"])
    save_figure(fig, run.figures / "deface_example_render.png")
    glue("fig_deface_example_render", fig, display=False)
else:
    glue("fig_deface_example_render", placeholder_figure("Renderings withheld (publish_faces is false)."),
         display=False)

# %% [markdown]
# ```{glue:figure} fig_deface_example_render
# :name: fig-deface-example-render
#
# Surface renderings of the head of test subject {glue:text}`example_subject` of this run,
# five views each: the original (top row) and each defaced version. Renderings of real
# faces carry an eye bar.
# ```
#
# The example subject is {glue:text}`example_subject`. In the original row of
# {numref}`fig-deface-example-render` the nose, lips, chin and eyes read as a face; in the
# defaced rows they are gone, to a degree that differs by method
# ({numref}`fig-deface-example-slices` shows the same on a slice).

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
