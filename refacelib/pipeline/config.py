"""Profiles, datasets and run folders.

A *run* is one (profile, dataset) pair. Everything it produces lives in its own
folder ``runs/<profile>-<dataset label>/``: the resolved parameters, artifacts,
figures, tables and executed notebooks. ``make book`` and a notebook opened by
hand resolve the same folder through :func:`open_run`.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from refacelib._utils.flags import ConfigError, parse_flag
from refacelib._utils.hashing import stable_hash
from refacelib._utils.io import atomic_write_text
from refacelib._utils.paths import PHANTOM, _LABEL_RE, dataset_label, project_root
from refacelib.pipeline.schema import profile_problems

__all__ = [
    "ConfigError",
    "Run",
    "project_root",
    "runs_root",
    "list_profiles",
    "load_profile",
    "dataset_label",
    "open_run",
    "stable_hash",
    "parse_flag",
    "check_parameters",
    "validate_params",
]

_PROFILE_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")


def runs_root() -> Path:
    """Folder that holds every run folder (``$REFACE_RUNS_ROOT`` or ``<root>/runs``)."""
    env = os.environ.get("REFACE_RUNS_ROOT")
    return Path(env).resolve() if env else project_root() / "runs"


def list_profiles() -> list[str]:
    """Names of the profiles in ``params/``.

    Examples
    --------
    >>> "tiny" in list_profiles()
    True
    """
    return sorted(p.stem for p in (project_root() / "params").glob("*.yaml"))


def load_profile(profile: str) -> dict[str, Any]:
    """Read ``params/<profile>.yaml`` into a nested dict.

    The parameters are checked against :data:`refacelib.pipeline.schema.PROFILE_SCHEMA`
    (:func:`validate_params`).

    Raises
    ------
    ConfigError
        If the profile does not exist, or a key is unknown, missing, of the
        wrong type or out of range (every problem named by its dotted key).
    """
    if not isinstance(profile, str) or not profile:
        raise ConfigError(f"PROFILE must be a non-empty string, got {profile!r}")
    if not _PROFILE_RE.fullmatch(profile):
        raise ConfigError(
            f"PROFILE must be a plain name (letters, digits, '_' or '-'), got {profile!r}; "
            f"choose one of {', '.join(list_profiles())}"
        )
    path = project_root() / "params" / f"{profile}.yaml"
    if not path.is_file():
        raise ConfigError(
            f"unknown PROFILE {profile!r}: no file params/{profile}.yaml; "
            f"choose one of {', '.join(list_profiles())}"
        )
    with open(path) as fh:
        params = yaml.safe_load(fh)
    if not isinstance(params, dict):
        raise ConfigError(f"params/{profile}.yaml must hold a mapping of parameters")
    return validate_params(params, source=f"params/{profile}.yaml")


def validate_params(params: Any, *, source: str = "parameters") -> dict[str, Any]:
    """``params`` unchanged when the profile schema accepts it, else a :class:`ConfigError`.

    The error lists every problem, each led by the key's dotted path, after ``source``.

    Examples
    --------
    >>> try:
    ...     validate_params({"seed": "7"}, source="x.yaml")
    ... except ConfigError as err:
    ...     print(str(err).splitlines()[:2])
    ['x.yaml: 8 invalid parameter(s):', "  seed: must be an integer >= 0, got '7'"]
    """
    problems = profile_problems(params)
    if problems:
        raise ConfigError(f"{source}: {len(problems)} invalid parameter(s):\n  " + "\n  ".join(problems))
    return params


@dataclass
class Run:
    """A resolved run: its parameters and its folder layout."""

    profile: str
    dataset: str
    params: dict[str, Any]
    folder: Path
    is_phantom: bool = field(init=False)

    def __post_init__(self) -> None:
        self.is_phantom = self.dataset == PHANTOM

    @property
    def label(self) -> str:
        return self.folder.name

    def path(self, *parts: str) -> Path:
        """A path inside the run folder; its parent folder is created.

        Raises
        ------
        ConfigError
            If the parts lead outside the run folder (``..``, absolute parts).
        """
        out = Path(os.path.normpath(self.folder.joinpath(*parts)))  # lexical: linked subfolders are fine
        try:
            out.relative_to(self.folder)
        except ValueError:
            raise ConfigError(f"path {'/'.join(map(str, parts))!r} would fall outside the run folder "
                              f"runs/{self.label}") from None
        out.parent.mkdir(parents=True, exist_ok=True)
        return out

    @property
    def tables(self) -> Path:
        return _mkdir(self.folder / "tables")

    @property
    def figures(self) -> Path:
        return _mkdir(self.folder / "figures")

    @property
    def artifacts(self) -> Path:
        return _mkdir(self.folder / "artifacts")

    def relpath(self, path: os.PathLike) -> str:
        """Path shown in published output: relative to the project, never absolute."""
        # links are kept where they lie inside the run (``html`` links to the current build)
        for candidate in (Path(os.path.abspath(path)), Path(path).resolve()):
            for base, name in ((self.folder, f"runs/{self.label}"), (project_root(), ".")):
                try:
                    return str(Path(name) / candidate.relative_to(base))
                except ValueError:
                    continue
        return Path(path).name


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _confined(folder: Path, root: Path) -> Path:
    """``folder`` resolved (symbolic links followed); it must be a direct child of ``root``."""
    name = folder.name
    folder = folder.resolve()
    root = root.resolve()
    if folder.parent != root:
        raise ConfigError(f"run folder {name!r} would fall outside the run root {root.name}/ "
                          f"(it resolves elsewhere); remove it or choose another PROFILE/DATASET")
    return folder


def check_parameters(profile: Any, dataset: Any, publish_faces: Any = False) -> dict[str, Any]:
    """Validate the notebook parameters before anything is executed.

    Returns ``{"profile", "dataset", "publish_faces"}`` with ``publish_faces``
    as a bool. Raises :class:`ConfigError` naming the parameter for a wrong
    type, an unknown profile or a dataset folder that does not exist.

    Examples
    --------
    >>> check_parameters("tiny", "phantom", "0")["publish_faces"]
    False
    """
    load_profile(profile)
    return {"profile": profile, "dataset": _check_dataset(dataset),
            "publish_faces": parse_flag(publish_faces, name="publish_faces")}


def _check_dataset(dataset: Any) -> str:
    """``"phantom"`` or the resolved path of an existing folder."""
    if not isinstance(dataset, (str, os.PathLike)) or not str(dataset):
        raise ConfigError(f"DATASET must be 'phantom' or a folder path, got {dataset!r}")
    dataset = str(dataset)
    if dataset == PHANTOM:
        return dataset
    path = Path(dataset).expanduser()
    if not path.is_dir():
        raise ConfigError(f"DATASET folder does not exist: {dataset}")
    return str(path.resolve())


def apply_overrides(params: dict, overrides: dict | None) -> dict:
    """A copy of ``params`` with dotted keys replaced (``{"phantom.face_coupling": 0.0}``).

    Every section must already exist in the profile; :func:`open_run` checks the result
    against the profile schema.

    Examples
    --------
    >>> apply_overrides({"a": {"b": 1}}, {"a.b": 2})
    {'a': {'b': 2}}
    """
    import copy

    out = copy.deepcopy(params)
    for dotted, value in (overrides or {}).items():
        if not isinstance(dotted, str) or not all(dotted.split(".")):
            raise ConfigError(f"override {dotted!r}: must be a dotted key such as 'phantom.face_coupling'")
        node, parts = out, dotted.split(".")
        for part in parts[:-1]:
            if not isinstance(node.get(part), dict):
                raise ConfigError(f"override {dotted!r}: the profile has no section {part!r}")
            node = node[part]
        node[parts[-1]] = value
    return out


def open_run(profile: str = "quick", dataset: str = PHANTOM, *, create: bool = True,
             overrides: dict | None = None, suffix: str = "") -> Run:
    """Resolve a (profile, dataset) pair into a :class:`Run` and its folder.

    The resolved parameters are written to ``inputs/params.yaml`` in the run
    folder (paths there are private: the folder is git-ignored and unpublished).

    Parameters
    ----------
    profile : str
        Name of a file in ``params/`` (``tiny``, ``quick``, ``paper``).
    dataset : str
        ``"phantom"`` or the path of a BIDS-style folder.
    create : bool
        Create the folder and write the resolved parameters.
    overrides : dict, optional
        Dotted parameter keys replaced in the profile (:func:`apply_overrides`);
        used by the controls, which rerun a profile under other settings. The
        result is checked against the profile schema (:func:`validate_params`).
    suffix : str
        Appended to the run folder's name (``runs/<profile>-<dataset>-<suffix>``).
    """
    params = apply_overrides(load_profile(profile), overrides)
    if overrides:
        validate_params(params, source=f"params/{profile}.yaml with overrides {overrides!r}")
    dataset = _check_dataset(dataset)
    name = f"{profile}-{dataset_label(dataset)}" + (f"-{_LABEL_RE.sub('_', suffix)}" if suffix else "")
    folder = _confined(runs_root() / name, runs_root())
    run = Run(profile=profile, dataset=dataset, params=params, folder=folder)
    if create:
        folder.mkdir(parents=True, exist_ok=True)
        resolved = {"profile": profile, "dataset": dataset, "params": params, "overrides": overrides or {}}
        atomic_write_text(run.path("inputs", "params.yaml"), yaml.safe_dump(resolved, sort_keys=True))
    return run
