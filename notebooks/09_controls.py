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
# # Controls
#
# Does the pipeline find an effect where one was planted, and none where none was? The
# phantom lets us set how much of the face the rest of the head predicts
# (`phantom.face_coupling`, [the phantom](../book/phantom.md)) and rerun the whole study:
# phantom, defacing, cascade training, refacing and face distances. `make controls` runs
# it at couplings 0, 0.5, 0.8 and 1 and writes `tables/controls.csv`; this chapter shows
# that table.
#
# - **Permutation control** (the book's run, its cascade retrained on shuffled faces: each
#   training subject's removed voxels taken from another subject): nothing the attacker sees
#   predicts the face the model learns, so whatever it still gains is not about the person.
#   It is the null for the whole pipeline, and it runs on any dataset.
# - **Negative control, the null phantom** (the run `runs/<profile>-phantom-null`): coupling 0,
#   no soft tissue on the scalp and no skull deformation
#   ([`control_overrides`](../book/methods.md)). The visible head is then the template under
#   pose, scale, intensity, bias field and noise only, which every candidate receives through
#   the same registration: nothing an attacker sees predicts the face. (Coupling 0 alone is not
#   such a null: the skull's deformation fades into the face over a band the removal masks
#   reach, and it biases the registration in ways the visible head reveals, so a model could
#   learn where the face lies.)
# - **Dose response**: the paired difference (refaced minus matched baseline) should fall
#   below zero as the coupling grows, if the model learns the predictable part of a face. Its
#   point at coupling 0 is the null phantom: from 0 to 0.5 the skull deformation comes in as
#   well, so the change from 0.5 to 1 is the coupling's alone.
# - **Swap check**: each subject's baseline plus *another* subject's learned correction.
#   If it helps as much as the subject's own, the "gain" is not about the person.
# - **Oracle**: the face the phantom's generator predicts from the rest of the head, the
#   best any model could do.

# %% tags=["parameters"]
# Defaults; `make book` injects its own values, `make lab` sets them through the environment.
import os

profile = os.environ.get("REFACE_PROFILE", "quick")
dataset = os.environ.get("REFACE_DATASET", "phantom")
publish_faces = False

# %% tags=["hide-input"]
from IPython.display import Markdown, display
from myst_nb import glue

from refacelib import controls as controls_lib
from refacelib import report
from refacelib.pipeline import refacing, start_chapter
from refacelib.report import reid_plots, save_figure
from refacelib.report.viz import placeholder_figure

run, note, faces, chapter_start, study = start_chapter(profile, dataset, publish_faces)
controls = report.read_table(run.tables, "controls") if run.is_phantom else None
offsets = report.read_table(run.tables, "controls_offsets") if run.is_phantom else None
# only couplings whose cascade was trained with this book's recipe enter the dose response
recipe = refacing.recipe_id(run)
controls, stale = controls_lib.same_recipe(controls, recipe)
offsets, _ = controls_lib.same_recipe(offsets, recipe)
have = controls is not None and len(controls) > 0
have_offsets = offsets is not None and len(offsets) > 0 and bool((offsets["coupling"] == 0).any())
controls_csv, offsets_csv = run.tables / "controls.csv", run.tables / "controls_offsets.csv"
TEST_COLUMNS = {"method": "Method", "test_set": "Test set", "estimator": "Estimator",
                "n": "Subjects", ("hl_diff_mm", "ci_low_mm", "ci_high_mm"): "Paired difference (mm) [95% CI]",
                "p_holm": "Holm p", "rbc": "Rank-biserial", "closer_significant": "Closer, significant"}
TEST_COLUMNS_PAIRED = {"method": "Method", "test_set": "Test set", "estimator": "Estimator", "n": "Subjects",
                       "n_closer": "Closer (subjects)",
                       ("hl_diff_mm", "ci_low_mm", "ci_high_mm"): "Paired difference (mm) [95% CI]",
                       "p_holm": "Holm p", "rbc": "Rank-biserial"}
if not run.is_phantom:
    display(Markdown("*The controls need a dataset whose ground truth is known: they run on the phantom only.*"))
elif not have:
    display(Markdown(f"*The controls have not been run for this book: `make controls PROFILE={profile}` runs "
                     "them (one full study per coupling) and rebuilds the book with this chapter filled in.*"))
if stale:
    display(Markdown(f"*Couplings {', '.join(f'{c:g}' for c in stale)} were run with another training recipe than "
                     f"this book's cascade and are left out: `make controls PROFILE={profile}` reruns them.*"))




missing = ("Not drawn: the controls run on the phantom only." if not run.is_phantom else
           f"Not drawn: the controls have not been run for this book (make controls PROFILE={profile}).")

# %% [markdown]
# This chapter ran on {glue:text}`dataset_name`.
#
# ## Negative control and dose response
#
# Hodges–Lehmann paired difference of the face distance (candidate minus the matched
# cohort-average baseline, mm; negative: the candidate's face is closer to the original)
# with its 95% interval, against the coupling, for the mean of samples.

# %% tags=["hide-input"]
if have:
    fig = reid_plots.plot_dose_response(controls, estimator="refaced_mean", baseline="average", note=note)
    save_figure(fig, run.figures / "controls_dose_response.png")
    glue("fig_controls_dose_response", fig, display=False)
    dose_text = report.dose_response_text(controls)
else:
    glue("fig_controls_dose_response", placeholder_figure(missing), display=False)
    dose_text = ""
glue("dose_response_text", Markdown(dose_text or "*Fewer than two couplings ran with this book's recipe: no dose "
                                                 f"response to read (`make controls PROFILE={profile}`).*"),
     display=False)

# %% [markdown]
# ```{glue:figure} fig_controls_dose_response
# :name: fig-controls-dose-response
#
# Dose response of this run's control studies (`tables/controls.csv`, one full study per
# coupling): the Hodges–Lehmann paired difference of the face MSD, mean of samples minus the
# matched cohort-average baseline (mm), with its 95% interval, against the phantom's
# `face_coupling`; one line per defacing method, one panel per test set. Below zero the
# refaced face is closer to the original. At coupling 0 the null phantom (no soft tissue on
# the scalp, no skull deformation either).
# ```
#
# {glue:md}`dose_response_text`

# %% tags=["hide-input"]
null = person = None  # the negative control's summaries, when it ran (also for the landing page)
if have and bool((controls["coupling"] == 0).any()):
    null = report.negative_control_summary(controls)
    person = report.negative_control_summary(controls, baseline="swapped")
    null_text = report.null_chapter_text(controls, null, person)
    display(report.reader_table(null, csv=controls_csv, columns=TEST_COLUMNS, formats={"rbc": 2},
                                caption="Negative control (null phantom): refaced vs the matched cohort-average baseline."))
else:
    null_text = (f"*The negative control (the null phantom) has not been run for this book: `make controls "
                 f"PROFILE={profile}` runs it.*" if run.is_phantom else
                 "*The negative control needs the phantom: it does not run on this dataset.*")
glue("null_text", Markdown(null_text), display=False)

# %% [markdown]
# {glue:md}`null_text`
#
# ## Permutation control: trained on shuffled faces
#
# The book's recipe and data, with one change: during training (ridge prior and both
# networks), each training or validation subject's removed voxels are those of the next
# subject (`cascade.shuffle_faces`, `refacelib.pipeline.refacing.shuffle_faces`). The test subjects
# are refaced and measured as in the re-identification chapter. Mean of samples against the
# swap check and against the matched average face:

# %% tags=["hide-input"]
perm = report.read_table(run.tables, "controls_permutation")
perm_ok = (perm is not None and len(perm) > 0 and "recipe" in perm
           and bool((perm["recipe"].astype(str) == recipe).all()))
if perm_ok:  # against the swap check and the matched average face, beside the book's own model
    perm_summary = report.permutation_summary(perm, report.read_table(run.tables, "face_tests"))
    vs_swap = perm_summary["vs_swap"]
    glue("perm_text", Markdown(report.permutation_text(perm_summary)), display=False)
    display(report.reader_table(vs_swap, csv=run.tables / "controls_permutation.csv", columns=TEST_COLUMNS,
                                formats={"rbc": 2},
                                caption="Permutation control: mean of samples vs the swap check."))
else:
    glue("perm_text", Markdown("*The permutation control has not been run with this book's training recipe: "
                               f"`make controls PROFILE={profile}` runs it.*"), display=False)
perm_msd = report.read_table(run.tables, "controls_permutation_msd")
own_msd = report.read_table(run.tables, "face_msd")
if perm_ok and perm_msd is not None and own_msd is not None and "recipe" in perm_msd \
        and bool((perm_msd["recipe"].astype(str) == recipe).all()):
    paired = controls_lib.permutation_tests(own_msd, perm_msd)
    paired_csv = report.save_table(paired, run.tables / "controls_permutation_paired.csv")
    # (significant wins, comparisons, median shift in mm) over the face-removal methods; also for the landing page
    perm_landing = report.permutation_paired_summary(paired)
    glue("perm_paired_text", Markdown(report.permutation_paired_text(perm_landing)), display=False)
    display(report.reader_table(paired, csv=paired_csv, columns=TEST_COLUMNS_PAIRED, formats={"rbc": 2},
                                caption="Book's model minus permutation model, paired by subject (mm)."))
else:
    glue("perm_paired_text", Markdown("*No per-subject table of the permutation control with this book's recipe "
                                      f"(`tables/controls_permutation_msd.csv`): `make controls PROFILE={profile}` "
                                      "writes it.*"), display=False)
    perm_landing = None

# %% [markdown]
# {glue:md}`perm_text`
#
# {glue:md}`perm_paired_text`
#
# ## Where a null "gain" comes from: the signed surface offset
#
# The face MSD says how far a candidate's skin surface is from the original's, not in which
# direction. The signed offset ([`reid.surface_offset`](../book/methods.md)) does: the mean
# distance of the candidate's surface from the original's, negative where it lies inside the
# true skin. Per method, the median over the test subjects in the null phantom:

# %% tags=["hide-input"]
if have_offsets:
    fig = reid_plots.plot_offsets(offsets, coupling=0.0, note=note)
    save_figure(fig, run.figures / "controls_offsets.png")
    glue("fig_controls_offsets", fig, display=False)
    keys = report.offset_key_values(offsets, coupling=0.0)
else:
    keys = {}
    display(Markdown("*The signed offsets were not measured for this book (`make controls` writes them).*"))
    glue("fig_controls_offsets", placeholder_figure(missing if not run.is_phantom else
                                                    "Not drawn: the signed offsets were not measured for this book."),
         display=False)
skull = report.offset_key_values(offsets[offsets["method"] == "skullstrip"], coupling=0.0,
                                 candidates=("average", "swapped"), exclude=()) if have_offsets else {}
# the skin band's brightness of the matched average face, relative to the true skin's
skin = report.offset_key_values(offsets, coupling=0.0, candidates=("average",), column="skin_intensity",
                                prefix="skin") if have_offsets else {}
skin_skull = report.offset_key_values(offsets[offsets["method"] == "skullstrip"], coupling=0.0,
                                      candidates=("average",), exclude=(), column="skin_intensity",
                                      prefix="skin") if have_offsets else {}
for test_set in ("internal", "external"):
    glue(f"skin_average_{test_set}", skin.get(f"skin_average_{test_set}", "not measured"), display=False)
    glue(f"skin_average_skullstrip_{test_set}", skin_skull.get(f"skin_average_{test_set}", "not measured"),
         display=False)
for cand in ("average", "refaced_mean", "swapped", "oracle"):
    for test_set in ("internal", "external"):
        key = f"offset_{cand}_{test_set}"
        glue(key, keys.get(key, "not run"), display=False)
        if cand in ("average", "swapped"):
            glue(f"offset_{cand}_skullstrip_{test_set}", skull.get(key, "not run"), display=False)
# the landing page's sentences on the controls, complete whether or not each control ran
for key, text in report.landing_controls_text(null, person, keys, perm_landing, profile=profile,
                                              is_phantom=run.is_phantom, dose=dose_text).items():
    glue(key, text, display=False)

# %% [markdown]
# ```{glue:figure} fig_controls_offsets
# :name: fig-controls-offsets
#
# Signed surface offset of each candidate face from the original's skin in the null phantom
# (`tables/controls_offsets.csv` of this run's control studies): median over the test
# subjects (mm; negative: inside the true skin), per defacing method, for the matched
# cohort-average baseline, the refaced face (mean of samples), the swap check and the
# oracle; one panel per test set.
# ```

# %% [markdown]
# Median over the methods other than skull-stripping, in the null phantom: the matched baseline's
# face lies {glue:text}`offset_average_internal` mm (internal) and
# {glue:text}`offset_average_external` mm (external) from the true skin; the refaced face
# (mean of samples) {glue:text}`offset_refaced_mean_internal` and
# {glue:text}`offset_refaced_mean_external` mm; the swap check
# {glue:text}`offset_swapped_internal` and {glue:text}`offset_swapped_external` mm; the
# oracle {glue:text}`offset_oracle_internal` and {glue:text}`offset_oracle_external` mm.
# The oracle is the mean face under each subject's true pose: its offset is how far the test
# subjects' own faces lie from the mean face, on average. The baseline is the voxel-wise mean
# of the training heads, intensity-matched to each subject and placed by the attacker's
# registration.
#
# Skull-stripping leaves the registration and the intensity match only the brain to go by, and
# this control found two errors of this project's there. The registration left the brain's edge
# out of its metric, which let the template's brain shrink and moved its face inward; it now
# includes the edge. The intensity map was fitted partly on the brain's edge, where resampling
# blends in the removed zeros, which made the matched average's skin far too dark; the voxels
# along the cut are now left out of the fit ([methods](../book/methods.md)). With both errors, a
# cascade learned to move every skull-stripped face outward and beat its baseline in the null
# phantom, knowing no face. Now the skull-stripped matched average face lies
# {glue:text}`offset_average_skullstrip_internal` mm (internal) and
# {glue:text}`offset_average_skullstrip_external` mm (external) from the true skin (the swap
# check {glue:text}`offset_swapped_skullstrip_internal` and
# {glue:text}`offset_swapped_skullstrip_external` mm), and in the skin band that places the face
# surface its skin has {glue:text}`skin_average_skullstrip_internal` (internal) and
# {glue:text}`skin_average_skullstrip_external` (external) of the true skin's intensity, against
# {glue:text}`skin_average_internal` and {glue:text}`skin_average_external` for the other methods
# (median; [skin intensity](../book/methods.md)). A brain-only map is extrapolated below the
# brain's range of intensities, where the outer face lies, so on a site with another contrast it
# can still miss the skin's brightness.
#
# Such an error of a baseline, the same for everyone, is what a generative model can "beat"
# with no information about whose face it is: the swap check, which adds *another* subject's
# learned correction, then moves a face by about as much as the subject's own. Where the refaced
# face's and the swap check's offsets agree, the correction does not depend on the person.
# Whether a refaced face carries the person is therefore read from the matched average face,
# the swap check and the permutation model together, never from the average face alone.

# %% tags=["hide-input"]
if have:
    fig = reid_plots.plot_dose_response(controls, estimator="refaced_mean", baseline="swapped", note=note)
    save_figure(fig, run.figures / "controls_person_specific.png")
    glue("fig_controls_person_specific", fig, display=False)
else:
    glue("fig_controls_person_specific", placeholder_figure(missing), display=False)

# %% [markdown]
# ```{glue:figure} fig_controls_person_specific
# :name: fig-controls-person-specific
#
# The person-specific part of the gain in this run's control studies: the Hodges–Lehmann
# paired difference of the face MSD, mean of samples minus the swap check (mm), with its
# 95% interval, against `face_coupling`; one line per defacing method, one panel per test
# set. Below zero the subject's own refaced face is closer to the original than a
# baseline corrected with another subject's learned correction.
# ```

# %% tags=["hide-input"]
if person is not None:
    display(report.reader_table(person, csv=controls_csv, columns=TEST_COLUMNS, formats={"rbc": 2},
                                caption="Negative control (null phantom): refaced vs the swap check."))

# %% [markdown]
# The person-specific part of the gain (refaced minus swap check) against the coupling:
# if the cascade learned the predictable part of a face, it falls below zero as the
# coupling grows.
#
# ## Swap check and oracle at every coupling

# %% tags=["hide-input"]
if have:
    fig = reid_plots.plot_dose_response(controls, estimator="swapped", baseline="average", note=note)
    save_figure(fig, run.figures / "controls_swap.png")
    glue("fig_controls_swap", fig, display=False)
    fig = reid_plots.plot_dose_response(controls, estimator="oracle", baseline="average", note=note)
    save_figure(fig, run.figures / "controls_oracle.png")
    glue("fig_controls_oracle", fig, display=False)
else:
    glue("fig_controls_swap", placeholder_figure(missing), display=False)
    glue("fig_controls_oracle", placeholder_figure(missing), display=False)

# %% [markdown]
# ```{glue:figure} fig_controls_swap
# :name: fig-controls-swap
#
# Swap check at every coupling of this run's control studies: the Hodges–Lehmann paired
# difference of the face MSD, swap check (a subject's baseline plus another subject's learned
# correction) minus the matched cohort-average baseline (mm), with its 95% interval, against
# `face_coupling`; one line per defacing method, one panel per test set.
# ```
#
# ```{glue:figure} fig_controls_oracle
# :name: fig-controls-oracle
#
# Oracle at every coupling of this run's control studies: the Hodges–Lehmann paired
# difference of the face MSD, oracle (the face the phantom's generator predicts from the rest
# of the head) minus the matched cohort-average baseline (mm), with its 95% interval, against
# `face_coupling`; one line per defacing method, one panel per test set.
# ```

# %% tags=["hide-input"]
if have:
    display(report.reader_table(report.controls_overview(controls), formats={"coupling": lambda v: f"{v:g}"},
                                csv=[p for p in (controls_csv, offsets_csv) if p.exists()]))

# %% [markdown]
# The table lists, per coupling and test set, in how many methods each candidate was
# significantly closer to the original than the matched baseline (Holm p < 0.05), and
# the median of the per-method paired differences.

# %% tags=["remove-input"]
display(report.chapter_footer(run, started=chapter_start))
