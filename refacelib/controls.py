"""Controls of the re-identification experiment: the same pipeline where the answer is known.

``python -m refacelib.controls --profile quick`` (``make controls``) reruns the
phantom study of a profile under other values of ``phantom.face_coupling``
(how strongly the face is predictable from the rest of the head), each in its
own cached run folder ``runs/<profile>-phantom-coupling-<value>``, and writes (or updates, coupling
by coupling) ``tables/controls.csv`` in the main run folder:

* **negative control** (the null phantom): at coupling 0, with no soft tissue on the
  scalp and no cranial deformation (:func:`control_overrides`), nothing the attacker
  sees predicts the face, so a refaced face must not beat its matched baseline;
* **dose response**: the paired difference (refaced - matched baseline) against
  the coupling, which should fall as the face becomes predictable;
* **swap check** (in every run): the learned residual of another subject of
  the same test set gives no advantage, unless the "gain" is person-independent;
* **oracle** (in every run): the face predicted from the rest of the head by the
  phantom's own generator, the upper bound of any model.

Each control is a full run of the pipeline (phantom, defacing, cascade
training, refacing, face distances); the book's Controls chapter shows the
table when it exists.
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import pandas as pd

from refacelib._utils.device import resolve_device
from refacelib._utils.io import save_table
from refacelib.evaluation import reid
from refacelib.pipeline import evaluation, refacing
from refacelib.pipeline.book import run_lock
from refacelib.pipeline.config import Run, open_run

__all__ = ["COUPLINGS", "ESTIMATORS", "control_overrides", "control_run", "face_tests", "run_control", "controls_table", "offsets_table",
           "upsert_coupling", "same_recipe", "permutation_run", "PERMUTATION", "permutation_tests",
           "PERMUTATION_MSD_COLUMNS", "ship_control", "main"]

#: Couplings of the dose response (the profile's own value is its main run).
COUPLINGS = (0.0, 0.5, 0.8, 1.0)
#: Candidates tested against the matched baselines in every run.
ESTIMATORS = ("refaced", "refaced_mean", "linear", "linear_permuted", "swapped", "oracle")
BASELINES = ("average", "template_average")


def control_overrides(coupling: float) -> dict:
    """The phantom parameters a control run changes: the coupling, and at coupling 0 everything else
    that ties the face to what an attacker sees.

    At coupling 0 the face latents are independent of what defacing leaves, but two other paths
    still carry the person from the visible head to the face: the soft-tissue factor thickens the
    scalp by ``soft_tissue_scalp_fraction``, and the cranial deformation, visible on the rest of the
    head, fades into the face over the face weight's ramp and biases the affine registration that
    places every candidate's face (a model can learn to undo that bias from the visible head; the
    average face cannot). The negative control (the null phantom) therefore sets
    ``soft_tissue_scalp_fraction`` and ``cranial_amplitude_mm`` to 0 as well: the visible head is
    then the template under pose, scale, intensity, bias field and noise only, and nothing an
    attacker sees predicts the face (book/phantom.md).

    Examples
    --------
    >>> control_overrides(0.0)
    {'phantom.face_coupling': 0.0, 'phantom.soft_tissue_scalp_fraction': 0.0, 'phantom.cranial_amplitude_mm': 0.0}
    >>> control_overrides(0.5)
    {'phantom.face_coupling': 0.5}
    """
    out = {"phantom.face_coupling": float(coupling)}
    if float(coupling) == 0.0:
        out["phantom.soft_tissue_scalp_fraction"] = 0.0
        out["phantom.cranial_amplitude_mm"] = 0.0
    return out


def control_run(profile: str, coupling: float) -> Run:
    """The run of ``profile`` on the phantom with :func:`control_overrides` of ``coupling``.

    The profile's own coupling is its main run (``runs/<profile>-phantom``).
    """
    main_run = open_run(profile, "phantom", create=False)
    own = float((main_run.params.get("phantom") or {}).get("face_coupling", 0.8))
    if abs(float(coupling) - own) < 1e-12:
        return open_run(profile, "phantom")
    suffix = "null" if float(coupling) == 0.0 else f"coupling-{float(coupling):g}"
    return open_run(profile, "phantom", overrides=control_overrides(coupling), suffix=suffix)


#: The permutation control's parameter (the main run's recipe, trained on shuffled faces).
PERMUTATION = {"cascade.shuffle_faces": True}


def permutation_run(run: Run) -> Run:
    """``run`` with its cascade trained on shuffled faces (:func:`refacelib.pipeline.refacing.shuffle_faces`).

    Same folder, cohort, defacing and recipe; only the training pairs differ: each training
    subject's removed voxels come from another subject. Nothing the attacker sees then
    predicts the face the model learns, whatever the dataset (real data included), so the
    refaced face must not beat the swap check: a person-specific "gain" here is a leak.
    """
    from .ablation import variant_run

    return variant_run(run, PERMUTATION)


#: Columns of ``tables/controls_permutation_msd.csv`` (the permutation model's face distances).
PERMUTATION_MSD_COLUMNS = ["subject", "test_set", "method", "candidate", "msd_mm"]


def permutation_tests(msd: pd.DataFrame, permuted: pd.DataFrame, *,
                      estimators=("refaced", "refaced_mean", "linear")) -> pd.DataFrame:
    """The book's model against the permutation model, paired by subject, method and test set.

    ``msd``: the book's face table; ``permuted``: the same candidates of the model trained on
    shuffled faces (``tables/controls_permutation_msd.csv``). For each estimator, a Wilcoxon test
    of its MSD against the same estimator of the permutation model (:func:`refacelib.evaluation.reid.wilcoxon_tests`,
    ``baseline`` reads ``permutation``): the two differ only in whether each training head was
    paired with its own face, so a significant negative shift is the part of the gain that
    needs the person's own face.

    Examples
    --------
    >>> rows = [{"subject": f"s{i}", "test_set": "t", "method": "m", "candidate": "refaced_mean", "msd_mm": 1.0 + i}
    ...         for i in range(8)]
    >>> msd, perm = pd.DataFrame(rows), pd.DataFrame(rows).assign(msd_mm=lambda d: d["msd_mm"] + 0.5)
    >>> t = permutation_tests(msd, perm)
    >>> t[["estimator", "baseline", "n", "n_closer", "hl_diff_mm"]].values.tolist()
    [['refaced_mean', 'permutation', 8, 8, -0.5]]
    """
    out = []
    for est in estimators:
        own, other = msd[msd["candidate"] == est], permuted[permuted["candidate"] == est]
        if own.empty or other.empty:
            continue
        both = pd.concat([own[PERMUTATION_MSD_COLUMNS], other[PERMUTATION_MSD_COLUMNS].assign(candidate="permutation")])
        out.append(reid.wilcoxon_tests(both, baseline="permutation", estimators=(est,)))
    if not out:
        raise ValueError(f"permutation_tests: no estimator of {list(estimators)} in both tables")
    return pd.concat(out, ignore_index=True)


def face_tests(msd: pd.DataFrame) -> pd.DataFrame:
    """Paired tests of every estimator in :data:`ESTIMATORS` present in ``msd`` against both matched
    baselines, of the refaced estimators against the swap check and, when the cascade has a
    linear prior (``linear`` rows), against that prior alone; with ``linear_permuted`` rows (the
    same prior fitted to shuffled faces) the refaced estimators and the linear prior against it:
    the part of the gain that needs the person's own face."""
    present = [e for e in ESTIMATORS if e in set(msd["candidate"])]
    out = [reid.wilcoxon_tests(msd, baseline=BASELINES, estimators=present)]
    if "swapped" in present:
        out.append(reid.wilcoxon_tests(msd, baseline="swapped", estimators=("refaced", "refaced_mean")))
    if "linear" in present:  # what the diffusion stages add to the linear prior they refine
        out.append(reid.wilcoxon_tests(msd, baseline="linear", estimators=("refaced", "refaced_mean")))
    if "linear_permuted" in present:  # the person's part: against the same prior fitted to shuffled faces
        out.append(reid.wilcoxon_tests(msd, baseline="linear_permuted", estimators=("refaced", "refaced_mean", "linear")))
    return pd.concat(out, ignore_index=True)


def run_control(run: Run, *, progress: bool = True) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Every stage of the re-identification experiment for one run (cached); its MSD and test tables."""
    study = refacing.setup(run)
    ckpt, _ = refacing.trained_cascade(run, study, progress=progress)
    refaced, _ = refacing.refaced_test_set(run, study, ckpt, progress=progress)
    msd, _, _ = evaluation.face_evaluation(run, study.deface_folder, refaced, study.template, study.test_subjects,
                                           study.methods, progress=progress)
    return msd, face_tests(msd)


def ship_control(run: Run, *, command: str = "") -> Path | None:
    """Export the trained cascade of a control run to ``checkpoints/`` (as :func:`refacelib.pipeline.refacing.ship`).

    Shipped checkpoints of the controls let ``make controls`` skip their training on a fresh
    clone. Returns the shipped folder, or None when the run's cascade came from one, or is
    shipped already (the main run's cascade, whose provenance must not be overwritten by a
    control's command).
    """
    study = refacing.setup(run)
    folder, _ = refacing.trained_cascade(run, study, progress=False)
    if refacing.training_provenance(folder) is not None or (refacing.shipped_root() / folder.name).is_dir():
        return None
    p = run.params["cascade"]
    return refacing.ship(folder, device=str(resolve_device(p.get("device", "auto"))), command=command,
                         training=refacing.training_recipe(run))


def controls_table(results: dict[float, pd.DataFrame]) -> pd.DataFrame:
    """One table of the tests of every coupling (column ``coupling`` first).

    Examples
    --------
    >>> t = pd.DataFrame({"method": ["m"], "p_holm": [0.5]})
    >>> controls_table({0.0: t, 1.0: t})["coupling"].tolist()
    [0.0, 1.0]
    """
    frames = [t.assign(coupling=float(c)) for c, t in sorted(results.items())]
    out = pd.concat(frames, ignore_index=True)
    return out[["coupling"] + [c for c in out.columns if c != "coupling"]]


def offsets_table(msd: pd.DataFrame) -> pd.DataFrame:
    """Median signed surface offset (mm, ``offset_mm`` of the face table), median MSD and, where
    measured, median ``skin_intensity`` (the candidate's skin band intensity relative to the
    original's) per test set, method and candidate: in which direction each candidate's face
    misses the true skin, and whether its skin is too dark for the surface's level.

    Examples
    --------
    >>> msd = pd.DataFrame({"subject": ["a", "b"], "test_set": "t", "method": "m", "candidate": "average",
    ...                     "msd_mm": [1.0, 2.0], "offset_mm": [-1.0, -0.5]})
    >>> offsets_table(msd)[["offset_mm", "msd_mm", "n"]].values.tolist()
    [[-0.75, 1.5, 2.0]]
    """
    keys = ["test_set", "method", "candidate"]
    out = msd.groupby(keys)[[c for c in ("offset_mm", "msd_mm", "skin_intensity") if c in msd]].median()
    return out.assign(n=msd.groupby(keys)["msd_mm"].count().astype(float)).reset_index()


def same_recipe(table: pd.DataFrame | None, recipe: str) -> tuple[pd.DataFrame | None, list]:
    """The rows of ``table`` whose cascade was trained with ``recipe``, and the couplings left out.

    A coupling run with another recipe (or before recipes were recorded) would mix two models
    in one dose response.

    Examples
    --------
    >>> t = pd.DataFrame({"coupling": [0.0, 0.8, 1.0], "recipe": ["a", "a", "b"]})
    >>> kept, stale = same_recipe(t, "a")
    >>> kept["coupling"].tolist(), stale
    ([0.0, 0.8], [1.0])
    """
    if table is None or len(table) == 0:
        return table, []
    same = table["recipe"].astype(str) == recipe if "recipe" in table else pd.Series(False, index=table.index)
    return table[same].reset_index(drop=True), sorted(float(c) for c in set(table.loc[~same, "coupling"]))


def upsert_coupling(path, coupling: float, table: pd.DataFrame) -> pd.DataFrame:
    """Replace the rows of ``coupling`` in the CSV at ``path`` (kept rows of other couplings), save, return it."""
    table = controls_table({coupling: table})
    if path.exists():  # couplings run earlier and not now are kept; each is written when done
        old = pd.read_csv(path)
        table = pd.concat([old[old["coupling"] != coupling], table], ignore_index=True)
        table = table.sort_values("coupling", kind="stable").reset_index(drop=True)
    save_table(table, path)
    return table


def main(argv: list[str] | None = None) -> int:
    """``python -m refacelib.controls --profile quick``: run the controls, write ``tables/controls.csv``."""
    parser = argparse.ArgumentParser(prog="python -m refacelib.controls", description=main.__doc__)
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--couplings", default=",".join(f"{c:g}" for c in COUPLINGS),
                        help="comma-separated face couplings (default: %(default)s)")
    parser.add_argument("--ship", action="store_true",
                        help="export each control's trained cascade to checkpoints/ (for fresh clones)")
    parser.add_argument("--permutation", choices=("yes", "no", "only"), default="yes",
                        help="also run the permutation control (training faces shuffled); 'only': nothing else")
    args = parser.parse_args(argv)
    couplings = [float(c) for c in args.couplings.split(",") if c.strip()] if args.permutation != "only" else []
    if any(not 0.0 <= c <= 1.0 for c in couplings):
        parser.error(f"couplings must lie in [0, 1], got {couplings}")
    main_run = open_run(args.profile, "phantom")
    path = main_run.tables / "controls.csv"
    if args.permutation != "no":
        run = permutation_run(main_run)
        start = time.perf_counter()
        print(f"control: permutation (training faces shuffled) in runs/{run.label} ...", flush=True)
        with run_lock(run, holder="permutation control (make controls)"):
            msd, tests = run_control(run)
        recipe = refacing.recipe_id(main_run)
        save_table(tests.assign(recipe=recipe), main_run.tables / "controls_permutation.csv")
        # per subject, so that the book's model can be tested against this one subject by subject
        save_table(msd[PERMUTATION_MSD_COLUMNS].assign(recipe=recipe), main_run.tables / "controls_permutation_msd.csv")
        print(f"control: permutation done in {time.perf_counter() - start:.0f} s", flush=True)
        if args.ship:
            shipped = ship_control(run, command=f"python -m refacelib.controls --profile {args.profile} "
                                                "--permutation only --ship")
            print(f"control: shipped {shipped}" if shipped else "control: its cascade came from checkpoints/")
    for c in couplings:
        run = control_run(args.profile, c)
        start = time.perf_counter()
        print(f"control: face_coupling {c:g} in runs/{run.label} ...", flush=True)
        with run_lock(run):
            msd, tests = run_control(run)
        # the recipe the control's cascade was trained with: the chapter uses only the couplings trained
        # like the main run's cascade
        upsert_coupling(path, c, tests.assign(recipe=refacing.recipe_id(run)))
        if "offset_mm" in msd:
            upsert_coupling(main_run.tables / "controls_offsets.csv", c,
                            offsets_table(msd).assign(recipe=refacing.recipe_id(run)))
        print(f"control: face_coupling {c:g} done in {time.perf_counter() - start:.0f} s", flush=True)
        if args.ship:
            shipped = ship_control(run, command=f"python -m refacelib.controls --profile {args.profile} "
                                                f"--couplings {c:g} --ship")
            print(f"control: shipped {shipped}" if shipped else "control: its cascade came from checkpoints/")
    print(f"wrote runs/{main_run.label}/tables/controls.csv; `make book PROFILE={args.profile}` shows it")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
