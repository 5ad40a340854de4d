"""environment.yml, constraints.txt and pyproject.toml agree."""
import re
import tomllib
from pathlib import Path

import yaml
from packaging.requirements import Requirement

ROOT = Path(__file__).resolve().parents[1]


def _norm(name):
    return re.sub(r"[-_.]+", "-", name).lower()


def _constraints():
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#")[0].strip()
        if line:
            name, version = line.split("==")
            pins[_norm(name)] = version
    return pins


def _environment_pins():
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    pip = next(d["pip"] for d in env["dependencies"] if isinstance(d, dict) and "pip" in d)
    pins = {}
    for item in pip:
        if "==" in item:
            name, version = item.split("==")
            pins[_norm(name)] = version
    return env, pins


def _declared():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    for extra in project["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return project, reqs


def test_environment_pins_every_declared_dependency_within_its_range():
    _, reqs = _declared()
    _, pins = _environment_pins()
    for req in reqs:
        name = _norm(req.name)
        assert name in pins, f"environment.yml does not pin {req.name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{req.name}=={pins[name]} outside {req.specifier}"


def test_environment_and_constraints_pin_the_same_versions():
    _, env_pins = _environment_pins()
    pins = _constraints()
    for name, version in env_pins.items():
        assert pins.get(name) == version, f"{name}: environment.yml {version} vs constraints.txt {pins.get(name)}"


def test_python_versions_agree():
    project, _ = _declared()
    env, _ = _environment_pins()
    python = next(d for d in env["dependencies"] if isinstance(d, str) and d.startswith("python="))
    assert project["requires-python"].startswith(">=3.11") and python == "python=3.11"


def test_torch_is_pinned_to_the_cpu_build_only_in_constraints():
    _, reqs = _declared()
    torch = next(r for r in reqs if r.name == "torch")
    assert "==" not in str(torch.specifier), "pyproject must keep a range so GPU users keep their CUDA torch"
    assert _constraints()["torch"] == "2.13.0"
