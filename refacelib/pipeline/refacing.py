"""The refacing stages of a run: training data on the common grid, the cached training, the refaced test set.

The grid, the intensity units and the way back to the template grid are
:mod:`refacelib.diffusion.grid`. The prior is the training cohort's average
head, scaled the same way. Refaced images go back to each subject's own grid
through the inverse path and are composited inside that subject's removal
mask, so every voxel outside it is the defaced input bit for bit.
"""
from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd

from refacelib._utils.device import resolve_device
from refacelib._utils.io import atomic_write_text, load_checkpoint, save_nifti, save_table
from refacelib._utils.machine import cpu_model
from refacelib._utils.parallel import worker_pool
from refacelib.data.template import Template
from refacelib.deface.methods import face_region
from refacelib.diffusion import cascade as _cascade
from refacelib.diffusion import linear as _linear
from refacelib.diffusion.grid import (INTENSITY_SCALE, apply_match, common_grid, full_resolution, intensity_match,
                                      subject_scale, zoom_to_shape)
from refacelib.diffusion.sample import reface
from refacelib.diffusion.train import load_stage, train_stage
from refacelib.pipeline.cache import is_done, mark_done, stage_folder
from refacelib.pipeline.cohort import prepare_dataset
from refacelib.pipeline.config import Run, open_run, project_root, stable_hash
from refacelib.pipeline.stages import (deface_cohort, load_defaced, load_registration, qc_failures, study_template,
                                      training_data_name)

__all__ = [
    "CASCADE_VERSION",
    "cascade_config",
    "build_examples",
    "REFACED_NAMES",
    "swap_partners",
    "write_subject",
    "subject_composites",
    "carrying_registration",
    "train_cascade",
    "reface_test_set",
    "record_timings",
    "masked_errors",
    "RefacingSetup",
    "setup",
    "trained_cascade",
    "refaced_test_set",
    "cascade_prior",
    "training_recipe",
    "shuffle_faces",
    "recipe_id",
    "linear_models",
    "examples_prior",
    "refit_linear",
    "LINEAR_CANDIDATES",
    "LINEAR_RECORD",
    "shipped_root",
    "install_shipped",
    "training_provenance",
    "ship",
]

def cascade_config(run: Run, template: Template) -> _cascade.CascadeConfig:
    """The run's cascade configuration, with the face box computed on the common grid."""
    p = dict(run.params["cascade"])
    zoom, _, shape = common_grid(template, p["voxel_mm"])
    region = zoom_to_shape(face_region(template), shape, order=0) > 0.5
    stage2 = _cascade.StageConfig.from_dict(p["stage2"])
    box = _cascade.face_box(region, margin=int(p.get("box_margin", 2)), multiple=stage2.multiple)
    return _cascade.CascadeConfig(stage1=p["stage1"], stage2=p["stage2"], factor=p["factor"], box=box,
                                  per_method=bool(p.get("per_method", False)), seed=int(run.params["seed"]))


def _template_space(folder: Path, name: str, sid: str, attacker: bool) -> np.ndarray:
    """A stored image on the template grid: the attacker's registration when asked and present."""
    if attacker and (Path(folder) / "attacker" / name / f"{sid}.nii.gz").is_file():
        return load_defaced(folder, name, sid, space="attacker")[0]
    return load_defaced(folder, name, sid, space="template")[0]


def build_examples(folder: Path, ids, methods, template: Template, voxel_mm: float, *,
                   attacker: bool = False, baselines: bool = False) -> dict:
    """Arrays (N, X, Y, Z) on the common grid for every (subject, method) pair.

    Keys: original, defaced, mask, prior (the cohort-average head matched to
    each defaced image by :func:`intensity_match` on the kept head voxels),
    lists ``subject``, ``method``, ``match`` (the knots of each example's
    intensity map), ``scale`` (the intensity unit of each example) and the
    float ``average_norm`` (the average head's unit). None when there is no
    subject.

    ``attacker``: the defaced image and its mask come through the attacker's
    registration to the defaced image (:func:`refacelib.pipeline.stages.attacker_registration`),
    where it exists (test subjects); the original is then only the evaluator's
    reference and enters no model input. ``baselines``: also ``template_prior``,
    ``template_match`` and ``template_norm``, the template's average head matched
    the same way (the mri_reface-like baseline).
    """
    if len(ids) == 0:
        return None
    _, _, shape = common_grid(template, voxel_mm)
    brain = zoom_to_shape(template.brain, shape, order=0) > 0.5
    head = zoom_to_shape(template.head, shape, order=0) > 0.5
    averages = {"": nib.load(str(Path(folder) / "cohort_average.nii.gz")).get_fdata(dtype=np.float32)}
    if baselines:
        averages["template_"] = template.data.astype(np.float32)
    averages = {k: zoom_to_shape(v, shape, order=1) for k, v in averages.items()}
    norms = {k: INTENSITY_SCALE * subject_scale(v, brain) for k, v in averages.items()}
    keys = ["original", "defaced", "mask", "subject", "method", "scale"] + [f"{k}{x}" for k in averages
                                                                            for x in ("prior", "match")]
    out = {k: [] for k in keys}
    for sid in ids:
        original = zoom_to_shape(load_defaced(folder, "original", sid, space="template")[0], shape, order=1)
        for method in methods:
            defaced = zoom_to_shape(_template_space(folder, method, sid, attacker), shape, order=1)
            mask = zoom_to_shape(_template_space(folder, f"{method}_removal", sid, attacker), shape, order=0) > 0.5
            scale = INTENSITY_SCALE * subject_scale(defaced, brain)
            out["original"].append(original / scale)
            out["defaced"].append(np.where(mask, 0.0, defaced / scale).astype(np.float32))
            out["mask"].append(mask)
            for k, average in averages.items():
                knots = intensity_match(defaced / scale, average / norms[k], head, mask)
                out[f"{k}prior"].append(apply_match(average / norms[k], knots))
                out[f"{k}match"].append(knots)
            out["subject"].append(sid)
            out["method"].append(method)
            out["scale"].append(scale)
    arrays = {k: np.stack(out[k]).astype(bool if k == "mask" else np.float32)
              for k in out if k in ("original", "defaced", "mask") or k.endswith("prior")}
    lists = {k: out[k] for k in out if k not in arrays}
    norm_keys = {f"{k or 'average_'}norm": float(v) for k, v in norms.items()}
    return {**arrays, **lists, **norm_keys}


#: Version of the training data and output composition; part of every cascade cache key.
#: 4: the intensity map leaves out the kept voxels that touch the removal mask (:func:`intensity_match`).
CASCADE_VERSION = 4

#: Steps between two validation losses (each costs about two training steps on a CPU;
#: it does not change the weights: its noise comes from its own seeded generator).
VAL_EVERY = 25

#: Cascade parameters that change the trained models (sampling settings do not).
TRAINING_KEYS = ("voxel_mm", "factor", "box_margin", "per_method", "stage1", "stage2", "max_seconds_per_stage",
                 "stage2_coarse")

#: How stage 2 sees the coarse image during training (``cascade.stage2_coarse``):
#: ``stage1_samples``, what stage 1 generates for each training example (as at refacing
#: time), or ``downsampled_truth``, the original at stage 1's resolution with
#: ``stage2.cond_noise`` Gaussian noise (standard cascade training).
STAGE2_COARSE = ("stage1_samples", "downsampled_truth")


def cascade_prior(run: Run) -> str:
    """``cascade.prior``: ``average`` (the matched cohort average) or ``ridge`` (plus :mod:`refacelib.diffusion.linear`)."""
    prior = run.params["cascade"].get("prior", "average")
    if prior not in _linear.PRIORS:
        raise ValueError(f"cascade.prior must be one of {_linear.PRIORS}, got {prior!r}")
    return prior


def training_recipe(run: Run) -> dict:
    """The run's cascade parameters that change the trained models (:data:`TRAINING_KEYS`, and the prior)."""
    training = {k: run.params["cascade"].get(k) for k in TRAINING_KEYS}
    if cascade_prior(run) != "average":  # only then: the keys of cascades trained before it existed stay
        training["prior"] = cascade_prior(run)
    if run.params["cascade"].get("shuffle_faces"):
        training["shuffle_faces"] = True
    return training


def shuffle_faces(data: dict | None) -> dict | None:
    """The permutation control's training data: each example's removed voxels from another subject.

    Per method, example ``i`` keeps its own defaced image, mask and prior, but its original
    inside the removal mask becomes that of the next subject (in order, cyclically): what the
    attacker sees no longer predicts the face it is trained to produce, so a model trained on
    it can learn only what is common to faces. (``cascade.shuffle_faces``; the test subjects
    are never shuffled.)

    Examples
    --------
    >>> d = {"original": np.arange(3, dtype=np.float32)[:, None] * np.ones((3, 2), np.float32),
    ...      "mask": np.array([[True, False]] * 3), "method": ["m"] * 3, "subject": ["a", "b", "c"]}
    >>> shuffle_faces(d)["original"].tolist()
    [[1.0, 0.0], [2.0, 1.0], [0.0, 2.0]]
    """
    if data is None:
        return None
    original = np.array(data["original"], copy=True)
    methods = np.asarray(data["method"])
    for method in dict.fromkeys(data["method"]):
        idx = np.flatnonzero(methods == method)
        if len(idx) < 2:
            raise ValueError(f"shuffling faces needs at least 2 subjects per method, {method!r} has {len(idx)}")
        partner = np.roll(idx, -1)
        mask = np.asarray(data["mask"])[idx]
        original[idx] = np.where(mask, np.asarray(data["original"])[partner], np.asarray(data["original"])[idx])
    return {**data, "original": original}


def recipe_id(run: Run) -> str:
    """A short name of the training recipe, the same for runs that differ only in their data (controls)."""
    return stable_hash([training_recipe(run), CASCADE_VERSION])


def _checkpoint_folder(run: Run, config: _cascade.CascadeConfig, data_key: str) -> Path:
    return stage_folder(run, "cascade", [config.to_dict(), data_key, training_recipe(run), CASCADE_VERSION])


def train_cascade(run: Run, train: dict, val: dict | None, config: _cascade.CascadeConfig, *, data_key: str,
                  progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """Train both stages (cached by config and data hash; resumes from checkpoints)."""
    folder = _checkpoint_folder(run, config, data_key)
    folder.mkdir(parents=True, exist_ok=True)
    p = run.params["cascade"]
    if p.get("shuffle_faces"):  # the permutation control: trained on faces that are not the head's own
        train, val = shuffle_faces(train), shuffle_faces(val)
    histories, budget = [], p.get("max_seconds_per_stage")
    coarse_from = p.get("stage2_coarse", STAGE2_COARSE[0])
    if coarse_from not in STAGE2_COARSE:
        raise ValueError(f"cascade.stage2_coarse must be one of {STAGE2_COARSE}, got {coarse_from!r}")
    train_prior, val_prior = train["prior"], None if val is None else val["prior"]
    if cascade_prior(run) == "ridge" and not all((folder / f"stage{s}.done").exists() for s in (1, 2)):
        models, record = _linear.fit_methods(train, val)
        train_prior = _linear.model_prior(train, models, training=True)
        val_prior = None if val is None else _linear.model_prior(val, models)
        atomic_write_text(folder / LINEAR_RECORD, json.dumps(
            {"train_subjects": list(dict.fromkeys(train["subject"])), "methods": record,
             "shuffle_faces": bool(p.get("shuffle_faces"))}, indent=2))
    for stage in (1, 2):
        ckpt = folder / f"stage{stage}.pt"
        hist_path = folder / f"stage{stage}_history.csv"
        if is_done(folder, f"stage{stage}.done"):
            histories.append(pd.read_csv(hist_path))
            continue
        keys = ("original", "defaced", "mask")
        train_data = {**{k: train[k] for k in keys}, "prior": train_prior}
        val_data = None if val is None else {**{k: val[k] for k in keys}, "prior": val_prior}
        prep_start = time.perf_counter()
        if stage == 2 and coarse_from == "stage1_samples":
            stage1 = load_stage(folder / "stage1.pt", device=p.get("device", "auto"))[0]
            seed = int(run.params["seed"])
            for data, offset in ((train_data, 1), (val_data, 2)):
                if data is not None:
                    data["coarse"] = stage1_coarse(stage1, data, config, steps=p["sample_steps"], seed=seed + offset,
                                                   device=p.get("device", "auto"))
        prep_seconds = time.perf_counter() - prep_start
        _, history = train_stage(stage, train_data, config, val_data=val_data,
                                 checkpoint_path=ckpt, progress=progress, max_seconds=budget,
                                 log_every=VAL_EVERY)
        # a stage's wall time includes making its inputs (stage 1's samples, for stage 2)
        history = history.assign(stage=stage, seconds=history["seconds"] + prep_seconds)
        save_table(history, hist_path)
        mark_done(folder, {"steps": int(history["step"].max())}, f"stage{stage}.done")
        histories.append(history)
    return folder, pd.concat(histories, ignore_index=True)


#: The linear prior's record in a cascade folder (``cascade.prior: ridge``): the training subjects,
#: each method's ridge penalty and whether the faces were shuffled, from which :func:`linear_models` refits it.
LINEAR_RECORD = "linear_prior.json"

#: The linear candidates: the cascade's linear prior, and the person-independent baseline, the same
#: kernel ridge fitted to shuffled faces (:func:`refit_linear`).
LINEAR_CANDIDATES = ("linear", "linear_permuted")


def examples_prior(data: dict, linear: dict | None) -> np.ndarray:
    """The cascade's prior for the examples ``data`` (:func:`build_examples`).

    The matched average head ``data["prior"]``, plus the linear prediction when the
    cascade was trained with ``cascade.prior: ridge`` (``linear``: :func:`linear_models`,
    None otherwise).
    """
    return data["prior"] if linear is None else _linear.model_prior(data, linear["linear"])


def linear_models(ckpt_folder: Path, deface_folder: Path, template: Template, voxel_mm: float,
                  methods, *, shuffled: bool = False, val_ids=None) -> dict | None:
    """The linear candidates of a cascade trained with ``cascade.prior: ridge`` (None otherwise).

    Refitted from the training cohort's examples and the penalties recorded at
    training (:data:`LINEAR_RECORD`): the fit is deterministic, and its
    inputs (tens of MB) need not ship with the checkpoint. ``shuffled``: the
    cascade was trained on shuffled faces (``cascade.shuffle_faces``, also read
    from the record), so its prior is refitted on the same shuffled pairs.
    ``val_ids``: the validation subjects on which the permuted baseline's
    penalty is chosen (:func:`refit_linear`). Returns ``{name: {method: model}}``
    for the names of :data:`LINEAR_CANDIDATES` (the permuted baseline only when
    the cascade itself was not trained on shuffled faces).
    """
    path = Path(ckpt_folder) / LINEAR_RECORD
    if not path.is_file():
        return None
    val_ids = list(val_ids or [])
    key = (str(Path(ckpt_folder).resolve()), str(Path(deface_folder).resolve()), float(voxel_mm), tuple(methods),
           path.read_text(), bool(shuffled), tuple(val_ids))
    if key not in _LINEAR_CACHE:  # a process that refaces several times (the sampler benchmark) refits once
        _LINEAR_CACHE.clear()
        record = json.loads(path.read_text())
        out: dict = {name: {} for name in LINEAR_CANDIDATES}
        for method in methods:
            train = build_examples(deface_folder, record["train_subjects"], [method], template, voxel_mm)
            val = build_examples(deface_folder, val_ids, [method], template, voxel_mm) if len(val_ids) > 1 else None
            for name, models in refit_linear(record, train, val, shuffled=shuffled).items():
                out[name].update(models)
        _LINEAR_CACHE[key] = {name: models for name, models in out.items() if models}
    return _LINEAR_CACHE[key]


_LINEAR_CACHE: dict = {}


def refit_linear(record: dict, train: dict, val: dict | None, *, shuffled: bool = False) -> dict:
    """The linear candidates refitted from a cascade's :data:`LINEAR_RECORD` and its training examples.

    ``linear``: the cascade's prior, with the recorded penalty, on the training pairs
    (shuffled by :func:`shuffle_faces` when the cascade was, ``shuffled`` or the
    record's ``shuffle_faces``). ``linear_permuted`` (only for a cascade trained on
    the true pairs): the same kernel ridge fitted to shuffled training faces, its
    penalty chosen on shuffled validation pairs exactly as the prior's was chosen
    on true ones (:func:`refacelib.diffusion.linear.fit_methods`). It differs from
    ``linear`` only in whether each head is paired with its own face, so it can
    learn only what is common to faces: the person-independent baseline.

    Examples
    --------
    >>> rng = np.random.default_rng(0)
    >>> z = rng.standard_normal(12).astype(np.float32)
    >>> original = 1 + z[:, None, None, None] * np.ones((12, 4, 3, 3), np.float32)
    >>> mask = np.zeros((12, 4, 3, 3), bool); mask[:, :1] = True
    >>> train = {"original": original, "defaced": np.where(mask, 0, original), "mask": mask,
    ...          "prior": np.ones_like(original), "method": ["m"] * 12, "subject": [f"s{i}" for i in range(12)]}
    >>> fits = refit_linear({"methods": {"m": {"lambda": 0.01}}}, train, None)
    >>> sorted(fits), fits["linear"]["m"].lam
    (['linear', 'linear_permuted'], 0.01)
    >>> from refacelib.diffusion.linear import predict
    >>> own, permuted = (predict(fits[k]["m"], train["defaced"][:1])[0, 0] for k in ("linear", "linear_permuted"))
    >>> bool(abs(own.mean() - z[0]) < abs(permuted.mean() - z[0]))
    True
    """
    lambdas = {m: r["lambda"] for m, r in record["methods"].items()}
    missing = sorted(set(train["method"]) - set(lambdas))
    if missing:
        raise ValueError(f"{LINEAR_RECORD} has no linear prior for {missing} (it has {sorted(lambdas)})")
    shuffled = bool(shuffled or record.get("shuffle_faces"))
    pairs = shuffle_faces(train) if shuffled else train
    out = {"linear": _linear.fit_methods(pairs, lambdas=lambdas)[0]}
    if not shuffled:
        out["linear_permuted"] = _linear.fit_methods(shuffle_faces(train), shuffle_faces(val))[0]
    return out


def stage1_coarse(stage1_model, data: dict, config: _cascade.CascadeConfig, *, steps: int, seed: int,
                  device="auto", batch_size: int = 32) -> np.ndarray:
    """What stage 1 generates for each example: the coarse input stage 2 gets at refacing time.

    One DDIM sample of ``steps`` steps per example (seeded), upsampled to the
    common grid and composited with the defaced image outside the mask.

    Returns
    -------
    ndarray (N, X, Y, Z), float32
    """
    return reface(data["defaced"], data["mask"], data["prior"], (stage1_model, None), config, steps=steps,
                  n_samples=1, seed=seed, batch_size=batch_size, device=device)["stage1"]


#: Version of what :func:`reface_test_set` writes (part of its cache key).
REFACE_VERSION = 3

#: What :func:`reface_test_set` writes per method: the cascade's estimators, the matched
#: baselines (zero residual through the same path) and the swap check.
REFACED_NAMES = ("sample", "mean", "average", "template_average", "swapped")


def swap_partners(subjects: list, test_sets: list) -> list:
    """Index of the subject whose refaced residual each subject receives in the swap check.

    The next subject of the same test set (cyclically); a subject alone in its
    set keeps its own index.

    Examples
    --------
    >>> swap_partners(["a", "b", "c", "d"], ["x", "x", "y", "y"])
    [1, 0, 3, 2]
    """
    out = []
    for i, t in enumerate(test_sets):
        same = [j for j, u in enumerate(test_sets) if u == t]
        out.append(same[(same.index(i) + 1) % len(same)])
    return out


def reface_test_set(run: Run, deface_folder: Path, ckpt_folder: Path, test_ids, methods, template: Template,
                    config: _cascade.CascadeConfig, *, progress: bool = True, n_jobs: int | None = None,
                    test_sets: list | None = None, models=None, val_ids=None) -> tuple[Path, pd.DataFrame]:
    """Reface every test subject under every method; write NIfTIs in subject space.

    The cascade sees the attacker's view only (:func:`build_examples` with
    ``attacker=True``). Per method and subject it writes ``sample`` and
    ``mean`` (the cascade's estimators), ``average`` and ``template_average``
    (the matched baselines: the cohort's and the template's average head
    through the very same path with a zero residual, so they differ from the
    refaced face only by what the cascade learned) and ``swapped`` (this
    subject's baseline plus the learned residual of another subject of the
    same test set, :func:`swap_partners`: a person-independent correction
    would help it as much as the subject's own). With ``cascade.prior: ridge``
    it also writes the two linear candidates (:func:`linear_models`): ``linear``,
    the cascade's prior alone, and ``linear_permuted``, the same prior fitted to
    shuffled faces (its penalty chosen on ``val_ids``), the person-independent
    baseline.

    Sampling runs in this process (batched over subjects); bringing the results
    to each subject's space and writing them runs in ``n_jobs`` worker
    processes (default :func:`refacelib._utils.parallel.default_jobs`; on this
    machine or a dask cluster, :func:`refacelib._utils.parallel.worker_pool`). The
    files do not depend on either. ``models`` overrides the trained networks (a test
    passes untrained ones).

    Returns the output folder and a table of wall times per method.
    """
    from joblib import delayed

    p = run.params["cascade"]
    test_sets = list(test_sets) if test_sets is not None else ["test"] * len(test_ids)
    # the defacing stage by its folder: the checkpoint's name holds only its training side, and the
    # attacker's registrations (stages.ATTACKER_VERSION) carry every test input and output
    key = [CASCADE_VERSION, REFACE_VERSION, ckpt_folder.name, p["sampler"], p["sample_steps"], p["n_samples"], list(test_ids),
           test_sets, models is None, list(val_ids or []), bool(p.get("shuffle_faces")), Path(deface_folder).name]
    out = stage_folder(run, "refaced", key)
    if is_done(out):
        return out, pd.read_csv(out / "timings.csv")
    if models is None:
        models = tuple(load_stage(ckpt_folder / f"stage{s}.pt", device=p.get("device", "auto"))[0] for s in (1, 2))
    linear = linear_models(ckpt_folder, deface_folder, template, p["voxel_mm"], methods,
                           shuffled=bool(p.get("shuffle_faces")), val_ids=val_ids)
    averages = {"": nib.load(str(Path(deface_folder) / "cohort_average.nii.gz")).get_fdata(dtype=np.float32),
                "template_": template.data.astype(np.float32)}
    partners = swap_partners(list(test_ids), test_sets)
    rows = []
    with worker_pool(n_jobs, max_nbytes=None) as workers:  # no memmaps: tasks are small
        for method in methods:
            start = time.perf_counter()
            data = build_examples(deface_folder, test_ids, [method], template, p["voxel_mm"], attacker=True,
                                  baselines=True)
            prior_used = examples_prior(data, linear)  # what the cascade refines
            permuted = None if linear is None or "linear_permuted" not in linear else \
                _linear.model_prior(data, linear["linear_permuted"])
            result = reface(data["defaced"], data["mask"], prior_used, models, config, sampler=p["sampler"],
                            steps=p["sample_steps"], n_samples=p["n_samples"], seed=int(run.params["seed"]),
                            batch_size=p.get("sample_batch", 8), device=p.get("device", "auto"), progress=progress)
            tasks = []
            for i, sid in enumerate(test_ids):
                j = partners[i]
                learned_j = np.where(data["mask"][j], result["mean"][j] - data["prior"][j], np.float32(0))
                swapped = np.where(data["mask"][i], data["prior"][i] + learned_j, data["defaced"][i])
                volumes = {"sample": (result["sample"][i], ""), "mean": (result["mean"][i], ""),
                           "average": (data["prior"][i], ""), "swapped": (swapped, ""),
                           "template_average": (data["template_prior"][i], "template_")}
                if linear is not None:  # the linear prior alone: what the diffusion stages add is measured against it
                    volumes["linear"] = (prior_used[i], "")
                if permuted is not None:  # the person-independent baseline: the linear prior fitted to shuffled faces
                    volumes["linear_permuted"] = (permuted[i], "")
                specs = {name: (common, data[f"{k}prior"][i], averages[k], data[f"{k or 'average_'}norm"],
                                data[f"{k}match"][i], data["mask"][i]) for name, (common, k) in volumes.items()}
                tasks.append((out, deface_folder, template, sid, method, specs, float(data["scale"][i])))
            workers(delayed(_write_refaced)(*task) for task in tasks)
            rows.append({"step": f"reface {method}", "seconds": round(time.perf_counter() - start, 1),
                         "n": len(test_ids)})
    timings = pd.DataFrame(rows)
    save_table(timings, out / "timings.csv")
    mark_done(out, {"n": len(test_ids)})
    return out, timings


def _write_refaced(out, deface_folder, template, sid, method, specs: dict, scale) -> None:
    """One subject: every volume at full resolution (:func:`full_resolution`), then :func:`write_subject`."""
    volumes = {name: full_resolution(common, prior, average_tpl, template, average_norm=norm, match=match, mask=mask)
               for name, (common, prior, average_tpl, norm, match, mask) in specs.items()}
    write_subject(out, deface_folder, template, sid, method, volumes, scale=scale)


def carrying_registration(deface_folder: Path, template: Template, sid: str, method: str):
    """The registration that carries a subject's cascade input and output under ``method``: the
    attacker's to the defaced image where it was stored (test subjects), else the defacing one."""
    attacker = (Path(deface_folder) / "attacker" / "transforms" / method / f"{sid}.mat").is_file()
    return load_registration(deface_folder, sid, template, method=method if attacker else None)


def subject_composites(deface_folder: Path, template: Template, sid: str, method: str, volumes: dict, *,
                       scale: float) -> tuple[dict[str, np.ndarray], np.ndarray]:
    """Each template-grid volume brought to the subject and composited inside its removal mask.

    The way back is :func:`carrying_registration`. Returns the composites by name and the
    subject's affine; :func:`write_subject` saves them.
    """
    defaced, affine = load_defaced(deface_folder, method, sid)
    removal = load_defaced(deface_folder, f"{method}_removal", sid)[0] > 0
    registration = carrying_registration(deface_folder, template, sid, method)
    out = {}
    for name, vol in volumes.items():
        subject = registration.to_subject((vol * np.float32(scale)).astype(np.float32), defaced.shape, affine, order=1)
        out[name] = np.where(removal, np.clip(subject, 0, None), defaced).astype(np.float32)
    return out, affine


def write_subject(out: Path, deface_folder: Path, template: Template, sid: str, method: str, volumes: dict, *,
                  scale: float) -> None:
    """Bring each template-grid volume to the subject, composite inside its removal mask, save
    (:func:`subject_composites`)."""
    finals, affine = subject_composites(deface_folder, template, sid, method, volumes, scale=scale)
    for name, final in finals.items():
        save_nifti(nib.Nifti1Image(final, affine), out / f"{method}_{name}" / f"{sid}.nii.gz")


def record_timings(run: Run, rows: list[dict]) -> pd.DataFrame:
    """Merge rows {step, device, seconds} into ``tables/timings.csv`` (a step replaces its old row)."""
    path = run.tables / "timings.csv"
    new = pd.DataFrame(rows)[["step", "device", "seconds"]]
    old = pd.read_csv(path) if path.exists() else pd.DataFrame(columns=["step", "device", "seconds"])
    merged = pd.concat([old[~old["step"].isin(new["step"])], new], ignore_index=True)
    save_table(merged, path)
    return merged


def masked_errors(deface_folder: Path, refaced_folder: Path, test_ids, methods) -> pd.DataFrame:
    """Mean absolute intensity error inside each method's removal mask, relative to the brain median.

    Candidates: the single sample, the mean of samples and the matched
    cohort-average baseline, on exactly the same voxels (the method's
    removal mask, where all three differ from the defaced image).
    """
    rows = []
    for sid in test_ids:
        original, _ = load_defaced(deface_folder, "original", sid)
        brain = load_defaced(deface_folder, "brain", sid)[0] > 0
        scale = float(np.median(original[brain])) if brain.any() else 1.0
        for method in methods:
            removal = load_defaced(deface_folder, f"{method}_removal", sid)[0] > 0
            for name, stored in (("refaced", "sample"), ("refaced_mean", "mean"), ("average", "average")):
                img = load_defaced(refaced_folder, f"{method}_{stored}", sid)[0]
                err = float(np.abs(img[removal] - original[removal]).mean() / scale) if removal.any() else np.nan
                rows.append({"subject": sid, "method": method, "candidate": name, "mae_rel": err})
    return pd.DataFrame(rows)


@dataclass
class RefacingSetup:
    """What the refacing chapters share: the cohort, its defacing stage and the cascade config."""

    ds: object
    template: Template
    deface_folder: Path
    qc: pd.DataFrame
    config: _cascade.CascadeConfig
    methods: list
    ids: dict  # split -> participant ids that passed QC (train, val)
    test_subjects: dict  # participant id -> test set
    training_data: str  # the defacing stage's key without its attacker's side (stages.training_data_name)

    @property
    def data_key(self) -> str:
        """What the cascade trains on: the data owner's side of the defacing stage, the subjects and methods."""
        return stable_hash([self.training_data, self.ids, self.methods])


def setup(run: Run) -> RefacingSetup:
    """Load the cohort and its (cached) defacing stage, and resolve the cascade configuration."""
    ds = prepare_dataset(run)
    template = study_template(run)
    folder, qc = deface_cohort(run, ds, template)
    failed = qc_failures(qc)
    ids = {split: [s.participant_id for s in ds.subset(split) if s.participant_id not in failed]
           for split in ("train", "val")}
    tests = {s.participant_id: s.row["split"] for s in ds.subjects
             if str(s.row.get("split", "")).startswith("test") and s.participant_id not in failed}
    return RefacingSetup(ds=ds, template=template, deface_folder=folder, qc=qc,
                         config=cascade_config(run, template), methods=list(run.params["deface"]["methods"]),
                         ids=ids, test_subjects=tests, training_data=training_data_name(run, ds))


def trained_cascade(run: Run, study: RefacingSetup, *, progress: bool = True) -> tuple[Path, pd.DataFrame]:
    """Checkpoints of both stages: trained now, or loaded from the cache without rebuilding the data."""
    folder = _checkpoint_folder(run, study.config, study.data_key)
    if not all(is_done(folder, f"stage{s}.done") for s in (1, 2)):
        install_shipped(folder)
    if all(is_done(folder, f"stage{s}.done") for s in (1, 2)):
        return folder, pd.concat([pd.read_csv(folder / f"stage{s}_history.csv") for s in (1, 2)], ignore_index=True)
    voxel = run.params["cascade"]["voxel_mm"]
    train = build_examples(study.deface_folder, study.ids["train"], study.methods, study.template, voxel)
    val = build_examples(study.deface_folder, study.ids["val"], study.methods, study.template, voxel)
    return train_cascade(run, train, val, study.config, data_key=study.data_key, progress=progress)


def _without_steps(training: dict) -> dict:
    """Training parameters with the step counts and time budget left out (what sets the cost per step)."""
    out = {k: v for k, v in training.items() if k != "max_seconds_per_stage"}
    for s in ("stage1", "stage2"):
        if isinstance(out.get(s), dict):
            out[s] = {k: v for k, v in out[s].items() if k != "steps"}
    return out


def training_estimate(training: dict, *, root: Path | None = None) -> tuple[float, dict] | None:
    """Seconds a training with these parameters should take, from a shipped checkpoint's record.

    A shipped checkpoint whose parameters differ at most in the step counts gives
    the seconds per step of each stage on the machine that trained it
    (``training.json``), scaled to ``training``'s steps. Returns the estimate and
    that checkpoint's record, or None when no shipped checkpoint is comparable.

    Examples
    --------
    >>> import tempfile, json, pathlib
    >>> root = pathlib.Path(tempfile.mkdtemp()); (root / "cascade-x").mkdir()
    >>> rec = {"stages": {"1": {"steps": 10, "seconds": 5.0}, "2": {"steps": 10, "seconds": 2.0}},
    ...        "training": {"stage1": {"steps": 10, "lr": 1}, "stage2": {"steps": 10, "lr": 1}}}
    >>> _ = (root / "cascade-x" / "training.json").write_text(json.dumps(rec))
    >>> training_estimate({"stage1": {"steps": 40, "lr": 1}, "stage2": {"steps": 20, "lr": 1}}, root=root)[0]
    24.0
    >>> training_estimate({"stage1": {"steps": 40, "lr": 2}, "stage2": {"steps": 20, "lr": 1}}, root=root) is None
    True
    """
    want = _without_steps(training)
    for path in sorted(Path(root or shipped_root()).glob("*/training.json")):
        info = json.loads(path.read_text())
        if _without_steps(info.get("training") or {}) != want:
            continue
        seconds = sum(float(info["stages"][str(s)]["seconds"]) / max(int(info["stages"][str(s)]["steps"]), 1)
                      * int(training[f"stage{s}"]["steps"]) for s in (1, 2))
        return round(seconds, 1), info
    return None


def training_plan(run: Run) -> str | None:
    """A warning to print before the training chapter trains the cascade; None when it will not train.

    The cascade is not trained when its checkpoints are cached in the run or
    ship with the project under the run's cache key.
    """
    study = setup(run)
    folder = _checkpoint_folder(run, study.config, study.data_key)
    shipped = Path(shipped_root()) / folder.name
    if all(is_done(folder, f"stage{s}.done") for s in (1, 2)) or (shipped / "training.json").is_file():
        return None
    p = run.params["cascade"]
    training = training_recipe(run)
    steps = f"{p['stage1']['steps']} + {p['stage2']['steps']} steps"
    estimate = training_estimate(training)
    if estimate is None:
        how_long = ("no shipped checkpoint was trained with comparable settings, so the time is unknown: "
                    "on a CPU this can take hours (see the Performance appendix)")
    else:
        seconds, info = estimate
        how_long = (f"about {seconds / 60:.0f} min at the speed the shipped checkpoint was trained "
                    f"({info.get('device', '?')}, {info.get('machine', '?')})")
    budget = p.get("max_seconds_per_stage")
    cap = f"; the time budget stops each stage after {budget:g} s" if budget else ""
    return (f"warning: no trained cascade matches this configuration and these data, so the training chapter "
            f"trains it now ({steps}): {how_long}{cap}. Checkpoints are kept; an interrupted training resumes.")


def refaced_test_set(run: Run, study: RefacingSetup, ckpt_folder: Path, *, progress: bool = True):
    """:func:`reface_test_set` of the study's test subjects (their test sets pair the swap check)."""
    ids = list(study.test_subjects)
    return reface_test_set(run, study.deface_folder, ckpt_folder, ids, study.methods, study.template, study.config,
                           progress=progress, test_sets=[study.test_subjects[s] for s in ids],
                           val_ids=study.ids["val"])


# --------------------------------------------------------------------------- shipped checkpoints
def shipped_root() -> Path:
    """Folder of the checkpoints that ship with the project (``<project root>/checkpoints``)."""
    return project_root() / "checkpoints"


def install_shipped(folder: Path, *, root: Path | None = None) -> bool:
    """Install the shipped checkpoint named like ``folder`` (its cache key) into it.

    A checkpoint ships under the name of the run's cascade cache folder, which
    hashes the cascade configuration, the training data's key and
    :data:`CASCADE_VERSION`: it is used only when all of them match, and the
    cascade is trained from scratch otherwise. Returns True when installed.
    """
    src = Path(root or shipped_root()) / Path(folder).name
    needed = [src / f"stage{s}{ext}" for s in (1, 2) for ext in (".pt", "_history.csv")] + [src / "training.json"]
    if not all(p.is_file() for p in needed):
        return False
    import shutil

    for s in (1, 2):  # a checkpoint that would run code when loaded is refused here, naming the file
        load_checkpoint(src / f"stage{s}.pt")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    info = json.loads((src / "training.json").read_text())
    for s in (1, 2):
        for ext in (".pt", "_history.csv"):
            tmp = folder / f".stage{s}{ext}.tmp"
            shutil.copyfile(src / f"stage{s}{ext}", tmp)
            tmp.replace(folder / f"stage{s}{ext}")
    atomic_write_text(folder / "shipped.json", json.dumps(info, indent=2))
    if (src / LINEAR_RECORD).is_file():
        shutil.copyfile(src / LINEAR_RECORD, folder / LINEAR_RECORD)
    for s in (1, 2):
        mark_done(folder, {"steps": info["stages"][str(s)]["steps"], "shipped": True}, f"stage{s}.done")
    return True


def training_provenance(folder: Path) -> dict | None:
    """Where a cascade was trained, when it came from a shipped checkpoint (else None)."""
    path = Path(folder) / "shipped.json"
    return json.loads(path.read_text()) if path.is_file() else None


def ship(folder: Path, *, root: Path | None = None, device: str = "cpu", command: str = "",
         training: dict | None = None) -> Path:
    """Export a trained cascade folder as a shipped checkpoint (EMA weights only).

    Writes ``<root>/<folder name>/stage{1,2}.pt`` (weights_only-loadable, the
    EMA weights stored once under both ``model`` and ``ema``, no optimiser
    state: it cannot resume training), the loss histories and ``training.json``
    (steps, seconds, device, torch version, date, command and ``training``, the
    run's cascade parameters that change the trained models).
    """
    import datetime
    import platform

    import torch

    folder = Path(folder)
    dst = Path(root or shipped_root()) / folder.name
    dst.mkdir(parents=True, exist_ok=True)
    stages = {}
    for s in (1, 2):
        ckpt = load_checkpoint(folder / f"stage{s}.pt")
        slim = {"step": ckpt["step"], "model": ckpt["ema"], "ema": ckpt["ema"], "config": ckpt["config"],
                "version": ckpt["version"]}
        tmp = dst / f".stage{s}.pt.tmp"
        torch.save(slim, tmp)
        tmp.replace(dst / f"stage{s}.pt")
        history = pd.read_csv(folder / f"stage{s}_history.csv")
        save_table(history, dst / f"stage{s}_history.csv")
        stages[str(s)] = {"steps": int(history["step"].max()), "seconds": round(float(history["seconds"].max()), 1)}
    if (folder / LINEAR_RECORD).is_file():  # the linear prior's penalties and training subjects (a few kB)
        atomic_write_text(dst / LINEAR_RECORD, (folder / LINEAR_RECORD).read_text())
    info = {"stages": stages, "device": device, "torch": torch.__version__,
            "machine": f"{cpu_model()}, {os.cpu_count()} CPUs" if device == "cpu" else platform.machine(),
            "date": datetime.date.today().isoformat(), "command": command, "training": training}
    atomic_write_text(dst / "training.json", json.dumps(info, indent=2))
    return dst


def main(argv: list[str] | None = None) -> int:
    """``python -m refacelib.pipeline.refacing ship --profile quick``: train (cached) and export the checkpoint."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m refacelib.pipeline.refacing", description=main.__doc__)
    parser.add_argument("command", choices=["ship"])
    parser.add_argument("--profile", default="quick")
    parser.add_argument("--dataset", default="phantom")
    args = parser.parse_args(argv)
    run = open_run(args.profile, args.dataset)
    study = setup(run)
    folder, history = trained_cascade(run, study)
    if training_provenance(folder) is not None:
        print(f"{folder.name} came from a shipped checkpoint already; nothing to export")
        return 0
    device = str(resolve_device(run.params["cascade"].get("device", "auto")))
    dst = ship(folder, device=device, command=f"python -m refacelib.pipeline.refacing ship --profile {args.profile}",
               training=training_recipe(run))
    print(f"shipped {dst}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
