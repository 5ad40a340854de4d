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
# # Refacing
#
# The trained cascade puts a face back into every internal and external test subject,
# under every defacing method. Two estimators of the face are kept: a **single sample**,
# which is what an attacker running the model once would see, and the **mean of several
# samples**, a better point estimate of the face.

# %% tags=["parameters"]
# Defaults; `make book` injects its own values, `make lab` sets them through the environment.
import os

profile = os.environ.get("REFACE_PROFILE", "quick")
dataset = os.environ.get("REFACE_DATASET", "phantom")
publish_faces = False

# %% tags=["hide-input"]
import pandas as pd
from IPython.display import Markdown, display
from myst_nb import glue

from refacelib import report
from refacelib.diffusion import resolve_device
from refacelib.imaging import render
from refacelib.imaging.surface import head_mask
from refacelib.pipeline import refacing, stages, start_chapter
from refacelib.report import save_figure, save_table, viz
from refacelib.report.viz import placeholder_figure

run, note, faces, chapter_start, study = start_chapter(profile, dataset, publish_faces, study=True)
folder, methods, settings = study.deface_folder, study.methods, run.params["cascade"]
ckpt_folder, _ = refacing.trained_cascade(run, study)
device = str(resolve_device(settings.get("device", "auto")))



# %% [markdown]
# This chapter ran on {glue:text}`dataset_name`.
#
# ## Sampling
#
# DDIM (or ancestral DDPM, a parameter) with a fixed number of steps per stage, batched over
# subjects, every random draw from a seeded `torch.Generator`. Known voxels are reset after
# every step and the result is composited inside the removal mask, on each subject's own
# grid: every voxel outside the mask is the defaced input, bit for bit.
#
# The cascade sees only what an attacker has: the template is registered to each *defaced*
# image (the removed voxels left out of the similarity metric; a skull-stripped image is
# matched by the template's brain, its edge included), and the defaced image and its removal mask are brought
# to the cascade's grid by that registration.
#
# The cascade generates a *residual over the prior* (the cohort-average head, matched in
# intensity to the kept head voxels of the defaced image by quantile matching, those along
# the cut left out, `refacelib.diffusion.grid.intensity_match`) on its own grid. Detail finer than that grid is not
# generated: the refaced image is the full-resolution matched average head plus the
# upsampled residual (`refacelib.diffusion.grid.full_resolution`). An untrained cascade
# therefore returns exactly the matched average head; this zero-residual output, written
# through the same path into the same removal mask, is the **matched baseline** of the
# next chapter, so what separates the refaced face from it is what the model learned.

# %% tags=["hide-input"]
test_ids = list(study.test_subjects)
if not test_ids:
    raise ValueError("no test subjects: give some participants split test_internal or test_external")
refaced, timings = refacing.refaced_test_set(run, study, ckpt_folder)
timings = timings.assign(device=device)
refacing.record_timings(run, timings.to_dict("records"))
glue("n_test", len(test_ids), display=False)
glue("sample_seconds", round(float(timings["seconds"].sum()), 1), display=False)
glue("sampler", f"{settings['sampler'].upper()} with {settings['sample_steps']} steps per stage", display=False)
glue("n_samples", settings["n_samples"], display=False)
all_timings = pd.read_csv(run.tables / "timings.csv")
cascade_steps = all_timings[all_timings["step"].str.match(r"(train stage|reface) ")]
glue("cascade_total_min", f"{cascade_steps['seconds'].sum() / 60:.1f}", display=False)
glue("cascade_devices", ", ".join(sorted(set(cascade_steps["device"].astype(str)))), display=False)
report.reader_table(timings, csv=run.tables / "timings.csv",
                    columns={"step": "Step", "n": "Test subjects", "device": "Device", "seconds": "Wall time (s)"})

# %% [markdown]
# {glue:text}`n_test` test subjects were refaced under every method with
# {glue:text}`sampler`, {glue:text}`n_samples` samples each, in
# {glue:text}`sample_seconds` s (measured when the samples were made). The refaced images
# are NIfTI files in the run folder's `artifacts/refaced-*/<method>_{sample,mean}/`.
#
# Training both stages (previous chapter) and refacing every test subject under every
# method took {glue:text}`cascade_total_min` min in total on {glue:text}`cascade_devices`
# (`tables/timings.csv`; the project's target for the `quick` profile on 2 CPU cores is at
# most 12 minutes).
#
# ## A first check: intensity error inside the removal mask
#
# Mean absolute error against the original inside each method's removal mask, relative to
# the subject's median brain intensity, for the single sample, the mean of samples and the
# matched baseline (the same voxels for all three). The surface-based comparison of the
# paper is the next chapter.

# %% tags=["hide-input"]
errors = refacing.masked_errors(folder, refaced, test_ids, methods)
errors_csv = save_table(errors, run.tables / "refacing_masked_error.csv")
table = errors.pivot_table(index="method", columns="candidate", values="mae_rel", aggfunc="median").round(4)
glue("n_methods_mean_beats_average", int((table["refaced_mean"] < table["average"]).sum()), display=False)
report.reader_table(table.reset_index(), csv=errors_csv, formats=dict.fromkeys(table.columns, 3),
                    columns={"method": "Method", **{c: c for c in table.columns}},
                    caption="Median over test subjects of the relative error inside the removal mask.")

# %% [markdown]
# The mean of samples has a lower median error than the matched baseline for
# {glue:text}`n_methods_mean_beats_average` of the five methods.
#
# ## One test subject
#
# Mid-sagittal slices and renderings of the original, the defaced image, the refaced image
# (single sample) and the matched baseline (the cohort-average face), under two methods
# ({numref}`fig-refacing-1-slices` to {numref}`fig-refacing-2-render`). For real
# data, shown only with `publish_faces`, and renderings carry an eye bar.

# %% tags=["hide-input"]
sid = test_ids[0]
glue("example_subject", sid, display=False)
example_methods = list(run.params["refacing"]["example_methods"])


def example_figures(method):
    """Slices and renderings of the example subject under one method (saved to the run's figures)."""
    if not faces.show:  # real faces are drawn only where the face policy allows it
        raise RuntimeError("example_figures draws faces: call it only when faces.show is true")
    images = {"original": stages.load_defaced(folder, "original", sid),
              "defaced": stages.load_defaced(folder, method, sid),
              "refaced": stages.load_defaced(refaced, f"{method}_sample", sid),
              "average face": stages.load_defaced(refaced, f"{method}_average", sid)}
    slices = viz.plot_mid_sagittal_row(images, note=note)
    slices.suptitle(method, y=1.02)
    save_figure(slices, run.figures / f"refacing_{method}_slices.png")
    rendered = render.render_grid({k: (head_mask(v[0]), v[1]) for k, v in images.items()}, eye_bar=faces.eye_bar,
                                  pixel_mm=run.params["deface"]["render_pixel_mm"])
    save_figure(rendered, run.figures / f"refacing_{method}_render.png")
    return slices, rendered


# the first two example methods are numbered figures (below); any further one is shown here
for i in (1, 2):
    method = example_methods[i - 1] if i <= len(example_methods) else None
    glue(f"refacing_method_{i}", method or "none", display=False)
    if faces.show and method:
        slices, rendered = example_figures(method)
    else:
        why = "Withheld (publish_faces is false)." if method else "No such example method in this profile."
        slices, rendered = placeholder_figure(why), placeholder_figure(why)
    glue(f"fig_refacing_{i}_slices", slices, display=False)
    glue(f"fig_refacing_{i}_render", rendered, display=False)
for method in example_methods[2:] if faces.show else []:
    for fig in example_figures(method):
        display(fig)
if not faces.show:
    display(Markdown("*Withheld: real faces are not published (`publish_faces` is false).*"))

# %% [markdown]
# ```{glue:figure} fig_refacing_1_slices
# :name: fig-refacing-1-slices
#
# Mid-sagittal slices of test subject {glue:text}`example_subject` of this run under
# {glue:text}`refacing_method_1`: the original, the defaced image, the refaced image (a single
# sample of the cascade) and the matched baseline (the cohort-average face), on the same
# intensity window.
# ```
#
# ```{glue:figure} fig_refacing_1_render
# :name: fig-refacing-1-render
#
# Surface renderings, five views each, of the four heads of {numref}`fig-refacing-1-slices`
# (test subject {glue:text}`example_subject`, {glue:text}`refacing_method_1`): original,
# defaced, refaced (single sample) and matched average face.
# ```
#
# ```{glue:figure} fig_refacing_2_slices
# :name: fig-refacing-2-slices
#
# As {numref}`fig-refacing-1-slices`, under {glue:text}`refacing_method_2`: mid-sagittal
# slices of the original, defaced, refaced (single sample) and matched average face of test
# subject {glue:text}`example_subject`.
# ```
#
# ```{glue:figure} fig_refacing_2_render
# :name: fig-refacing-2-render
#
# As {numref}`fig-refacing-1-render`, under {glue:text}`refacing_method_2`: surface
# renderings, five views each, of the original, defaced, refaced (single sample) and matched
# average face of test subject {glue:text}`example_subject`.
# ```

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
