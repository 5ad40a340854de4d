"""The schema of a profile (``params/*.yaml``): its keys, their types and ranges.

:func:`profile_problems` checks a parameter mapping against
:data:`PROFILE_SCHEMA` and returns one message per problem, each led by the
key's dotted path (``cascade.stage1.lr``); :func:`refacelib.pipeline.config.load_profile`
and :func:`refacelib.pipeline.config.open_run` raise them together as one
``ConfigError`` before any work starts. Unknown keys (a typo such as
``cohrt``), missing required keys, wrong types (``voxel_mm: "four"``,
``phantom: [1, 2]``) and values out of range are refused.

The schema is plain Python, one :class:`Spec` per key. The ``phantom`` keys
are the fields of :class:`refacelib.data.phantom.PhantomParams`, the stage keys
those of :class:`refacelib.diffusion.cascade.StageConfig` (``tests/test_schema.py``
keeps them in step); sections whose keys are all optional fall back to those
dataclasses' defaults.
"""
from __future__ import annotations

import difflib
import math
import numbers
from dataclasses import dataclass, field, replace
from typing import Any, Mapping

__all__ = ["Spec", "PROFILE_SCHEMA", "DEFACE_METHODS", "profile_problems", "check"]

_KINDS = {"int": "an integer", "number": "a number", "bool": "true or false", "str": "a string",
          "list": "a list", "map": "a mapping"}


@dataclass(frozen=True)
class Spec:
    """What one parameter may hold.

    Attributes
    ----------
    kind : {"int", "number", "bool", "str", "list", "map"}
        The type; ``bool`` is never taken for a number.
    low, high : float, optional
        Inclusive bounds of a number (``low_open``: ``low`` itself excluded).
    choices : tuple of str
        Allowed strings (empty: any string).
    item : Spec, optional
        The spec of every item of a list.
    length, min_length : int, optional
        Exact or smallest length of a list.
    keys : dict of str to Spec, optional
        The allowed keys of a mapping; any other key is an error.
    optional, nullable : bool
        The key may be missing from its mapping; the value may be null.
    """

    kind: str
    low: float | None = None
    high: float | None = None
    low_open: bool = False
    choices: tuple = ()
    item: "Spec | None" = None
    length: int | None = None
    min_length: int | None = None
    keys: Mapping[str, "Spec"] | None = field(default=None, hash=False)
    optional: bool = False
    nullable: bool = False


def _int(low=None, high=None, **kw) -> Spec:
    return Spec("int", low=low, high=high, **kw)


def _num(low=None, high=None, **kw) -> Spec:
    return Spec("number", low=low, high=high, **kw)


def _pos(**kw) -> Spec:
    return Spec("number", low=0, low_open=True, **kw)


def _one_of(*choices, **kw) -> Spec:
    return Spec("str", choices=choices, **kw)


def _section(keys: dict, **kw) -> Spec:
    return Spec("map", keys=keys, **kw)


def _optional(keys: dict) -> dict:
    """The same keys, each optional (a section whose defaults live in a dataclass)."""
    return {k: replace(v, optional=True) for k, v in keys.items()}


#: The five defacing methods (:data:`refacelib.deface.methods.METHODS`).
DEFACE_METHODS = ("fsl_deface", "mri_deface", "pydeface", "quickshear", "skullstrip")
_MUSCLES = ("abdomen", "thigh", "shin")

_PHANTOM = _optional({
    "seed": _int(0), "voxel_mm": _pos(),
    "n_train": _int(0), "n_val": _int(0), "n_test_internal": _int(0), "n_test_external": _int(0),
    "face_coupling": _num(0, 1),
    "cranial_basis": _int(0), "cranial_amplitude_mm": _num(0), "cranial_smoothness_mm": _pos(),
    "face_amplitude_mm": _num(0), "face_bump_mm": _pos(),
    "soft_tissue_mm": _num(0), "soft_tissue_scalp_fraction": _num(0, 1),
    "rotation_deg": _num(0), "translation_mm": _num(0), "scale_sd": _num(0), "sex_scale": _num(),
    "age_range": Spec("list", item=_num(0), length=2),
    "intensity_sd": _num(0), "bias_strength": _num(0), "noise_sd": _num(0),
    "external_gamma": _pos(), "external_noise_factor": _pos(), "external_slice_factor": _pos(),
    "muscle_coupling": _section({m: _num() for m in _MUSCLES}),
    "muscle_mean_hu": _section({m: _num() for m in _MUSCLES}),
    "muscle_sd_hu": _section({m: _num(0) for m in _MUSCLES}),
    "muscle_age_effect": _num(), "muscle_sex_effect": _num(),
})

_STAGE = _optional({
    "channels": Spec("list", item=_int(1), min_length=1), "num_res_blocks": _int(1),
    "norm_num_groups": _int(1), "train_timesteps": _int(1), "beta_schedule": Spec("str"),
    "lr": _pos(), "steps": _int(1), "batch_size": _int(1), "ema_decay": _num(0, 1), "cond_noise": _num(0),
    "loss_weighting": _one_of("uniform", "min_snr", optional=True), "snr_gamma": _pos(optional=True),
    "prediction": _one_of("x0", "v", optional=True),
})

#: Every key a profile may hold; keys the code reads with ``params[...]`` are required.
PROFILE_SCHEMA = _section({
    "seed": _int(0),
    "phantom": _section(_PHANTOM),
    "cohort": _section({"voxel_mm": _pos(), "montage_per_split": _int(1),
                        "age_range": Spec("list", item=_num(0), length=2, optional=True),
                        "max_voxels": _int(1, optional=True), "max_shear_deg": _num(0, 45, optional=True)}),
    "deface": _section({
        "voxel_mm": _pos(),
        "methods": Spec("list", item=_one_of(*DEFACE_METHODS), min_length=1),
        "phantom_brain_mask": _one_of("ground_truth", "deepbet", optional=True),
        "render_pixel_mm": _pos(),
    }),
    "muscle": _section({
        "n_boot": _int(1), "n_splits": _int(2), "n_components": _int(1), "stride": _int(1),
        "demo_n_boots": Spec("list", item=_int(1), min_length=1),
    }),
    "cascade": _section({
        "voxel_mm": _pos(), "factor": _int(1), "box_margin": _int(0, optional=True),
        "per_method": Spec("bool", optional=True),
        "stage1": _section(_STAGE), "stage2": _section(_STAGE),
        "stage2_coarse": _one_of("stage1_samples", "downsampled_truth", optional=True),
        "prior": _one_of("average", "ridge", optional=True),
        "shuffle_faces": Spec("bool", optional=True),
        "max_seconds_per_stage": _pos(optional=True, nullable=True),
        "sampler": _one_of("ddim", "ddpm"), "sample_steps": _int(1), "n_samples": _int(1),
        "sample_batch": _int(1, optional=True), "device": Spec("str", optional=True),
    }),
    "refacing": _section({"example_methods": Spec("list", item=_one_of(*DEFACE_METHODS), min_length=1)}),
    "reid": _section({"headline_estimator": _one_of("refaced", "refaced_mean"),
                      "render_method": _one_of(*DEFACE_METHODS)}),
})


def _describe(spec: Spec) -> str:
    """What a spec asks for, in words.

    Examples
    --------
    >>> _describe(_num(0, 1)), _describe(_pos()), _describe(_one_of("a", "b"))
    ('a number in [0, 1]', 'a number > 0', "one of 'a', 'b'")
    """
    if spec.choices:
        return "one of " + ", ".join(repr(c) for c in spec.choices)
    text = _KINDS[spec.kind]
    if spec.low is not None and spec.high is not None:
        text += f" in [{spec.low:g}, {spec.high:g}]"
    elif spec.low is not None:
        text += f" {'>' if spec.low_open else '>='} {spec.low:g}"
    elif spec.high is not None:
        text += f" <= {spec.high:g}"
    if spec.length is not None:
        text += f" of {spec.length}"
    elif spec.min_length:
        text = "a non-empty list"
    return text + (" or null" if spec.nullable else "")


def _has_kind(value: Any, kind: str) -> bool:
    if kind == "int":
        return isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, numbers.Real) and not isinstance(value, bool)
    return isinstance(value, {"bool": bool, "str": str, "list": (list, tuple), "map": dict}[kind])


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _check_map(value: dict, spec: Spec, path: str) -> list[str]:
    out = []
    for key in value:
        if key not in spec.keys:
            near = difflib.get_close_matches(str(key), list(spec.keys), n=1)
            hint = f"did you mean {near[0]!r}?" if near else "allowed: " + ", ".join(spec.keys)
            out.append(f"{_join(path, key)}: unknown key ({hint})")
    for key, sub in spec.keys.items():
        if key in value:
            out += check(value[key], sub, path=_join(path, key))
        elif not sub.optional:
            out.append(f"{_join(path, key)}: missing (required, {_describe(sub)})")
    return out


def _check_list(value, spec: Spec, path: str) -> list[str]:
    n = len(value)
    if (spec.length is not None and n != spec.length) or (spec.min_length and n < spec.min_length):
        return [f"{path}: must be {_describe(spec)}, got {list(value)!r}"]
    return [msg for i, v in enumerate(value) for msg in check(v, spec.item, path=f"{path}[{i}]")]


def check(value: Any, spec: Spec, *, path: str = "") -> list[str]:
    """Problems of ``value`` against ``spec``, each led by its dotted path (empty: none).

    Examples
    --------
    >>> check({"lr": "5e-4", "step": 3}, _section({"lr": _pos(), "steps": _int(1)}), path="stage1")
    ["stage1.step: unknown key (did you mean 'steps'?)", "stage1.lr: must be a number > 0, got '5e-4'", \
'stage1.steps: missing (required, an integer >= 1)']
    """
    if value is None:
        return [] if spec.nullable else [f"{path}: must be {_describe(spec)}, got null"]
    if not _has_kind(value, spec.kind):
        return [f"{path}: must be {_describe(spec)}, got {value!r}"]
    if spec.kind == "map":
        return _check_map(value, spec, path)
    if spec.kind == "list":
        return _check_list(value, spec, path)
    if spec.choices and value not in spec.choices:
        return [f"{path}: must be {_describe(spec)}, got {value!r}"]
    if spec.kind in ("int", "number"):
        v = float(value)
        low_bad = spec.low is not None and (v <= spec.low if spec.low_open else v < spec.low)
        if not math.isfinite(v) or low_bad or (spec.high is not None and v > spec.high):
            return [f"{path}: must be {_describe(spec)}, got {value!r}"]
    return []


def profile_problems(params: Any) -> list[str]:
    """Every problem of a profile's parameters against :data:`PROFILE_SCHEMA`.

    Examples
    --------
    >>> import yaml
    >>> from refacelib.pipeline.config import project_root
    >>> profile_problems(yaml.safe_load((project_root() / "params" / "tiny.yaml").read_text()))
    []
    >>> profile_problems({"seed": 7, "phantom": [1, 2]})[0]
    'phantom: must be a mapping, got [1, 2]'
    """
    if not isinstance(params, dict):
        return [f"the profile must be {_describe(PROFILE_SCHEMA)}, got {params!r}"]
    return check(params, PROFILE_SCHEMA)
