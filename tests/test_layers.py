"""The layers of refacelib: every import points down the declared order, and no module imports itself back.

Parsed with ``ast`` (nothing is imported): an import inside a function counts like
one at the top of the module.
"""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
LIB = ROOT / "refacelib"

#: Each subpackage may import only the subpackages before it (and itself).
LAYERS = ["_utils", "data", "imaging", "deface", "diffusion", "evaluation", "report", "pipeline", "bench"]
#: Exceptions to "anything below": what a layer must not import although it is below.
FORBIDDEN = {"diffusion": {"data", "imaging", "deface"}}
#: Modules at the top of the package: the commands, above every layer.
COMMANDS = {"ablation", "controls", "train", "browser"}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(LIB.rglob("*.py"))}


def _resolve(name: str, modules: dict) -> str | None:
    """The module an imported dotted name lives in (a package's ``__init__`` or a submodule)."""
    while name and name not in modules:
        name = name.rpartition(".")[0]
    return name or None


def _imports(name: str, path: Path, modules: dict) -> set[str]:
    """refacelib modules imported by one module (absolute or relative, anywhere in it)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            # `from package import submodule` imports the submodule
            targets = [f"{module}.{a.name}" if f"{module}.{a.name}" in modules else module for a in node.names]
        else:
            continue
        for target in targets:
            if target == "refacelib" or target.startswith("refacelib."):
                resolved = _resolve(target, modules)
                if resolved and resolved != name:
                    out.add(resolved)
    return out


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {name: _imports(name, path, modules) for name, path in modules.items()}


def _layer(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "refacelib"
    if parts[1] in COMMANDS and len(parts) == 2:
        return "commands"
    return parts[1]


def test_every_module_is_in_a_layer():
    strays = sorted(m for m in _modules() if _layer(m) not in LAYERS + ["commands", "refacelib"])
    assert not strays, f"modules outside the declared layers (add them to LAYERS or a subpackage): {strays}"
    assert all((LIB / layer / "__init__.py").is_file() for layer in LAYERS)


def test_imports_follow_the_layer_order():
    problems = []
    for module, targets in _graph().items():
        src = _layer(module)
        for target in targets:
            dst = _layer(target)
            if dst == "refacelib" or src == dst:
                continue
            if src == "refacelib":
                problems.append(f"{module} -> {target}: the package root imports no layer")
            elif dst == "commands" and src != "commands":
                problems.append(f"{module} -> {target}: a layer imports a command")
            elif src == "commands":
                continue
            elif LAYERS.index(dst) > LAYERS.index(src):
                problems.append(f"{module} -> {target}: {src} is below {dst}")
            elif dst in FORBIDDEN.get(src, ()):
                problems.append(f"{module} -> {target}: {src} must not import {dst}")
    assert not problems, "imports against the layer order:\n" + "\n".join(sorted(problems))


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state, stack = {}, []

    def visit(node):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        state[node] = 2
        stack.pop()
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def test_no_import_cycle():
    cycle = _cycle(_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_the_checks_see_a_cycle_and_a_wrong_direction():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None
    modules = {"refacelib.data.bids": None, "refacelib.data": None, "refacelib.pipeline.config": None}
    assert _resolve("refacelib.data.bids.load_bids", modules) == "refacelib.data.bids"
    assert _resolve("refacelib.data.load_bids", modules) == "refacelib.data"
    assert _layer("refacelib.pipeline.config") == "pipeline" and _layer("refacelib.ablation") == "commands"


def test_subpackages_re_export_their_public_names():
    import importlib

    for layer in LAYERS[1:]:  # _utils is private: its modules are imported by name
        package = importlib.import_module(f"refacelib.{layer}")
        for module in sorted((LIB / layer).glob("*.py")):
            if module.stem.startswith("__"):
                continue
            sub = importlib.import_module(f"refacelib.{layer}.{module.stem}")
            missing = set(getattr(sub, "__all__", ())) - set(package.__all__)
            assert not missing, f"refacelib.{layer} does not re-export {sorted(missing)} of {module.stem}"
            assert all(getattr(package, n) is getattr(sub, n) for n in sub.__all__)


DOTTED = re.compile(r"`(refacelib(?:\.\w+)+)`")


@pytest.mark.parametrize("doc", ["README.md", *sorted(p.name for p in (ROOT / "book").glob("*.md"))])
def test_names_in_the_docs_resolve(doc):
    """Every ``refacelib.x.y`` the README or a book page names exists."""
    import importlib

    path = ROOT / doc if doc == "README.md" else ROOT / "book" / doc
    unresolved = []
    for dotted in sorted(set(DOTTED.findall(path.read_text()))):
        parts = dotted.split(".")
        for i in range(len(parts), 0, -1):
            try:
                obj = importlib.import_module(".".join(parts[:i]))
            except ImportError:
                continue
            try:
                for attr in parts[i:]:
                    obj = getattr(obj, attr)
            except AttributeError:
                unresolved.append(dotted)
            break
        else:
            unresolved.append(dotted)
    assert not unresolved, f"{doc} names what does not exist: {unresolved}"


def test_every_subpackage_ships():
    """pyproject.toml's package list finds every subpackage (a wheel or a plain install carries them)."""
    import tomllib

    from setuptools import find_packages

    setup = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    found = setup["packages"] if isinstance(setup.get("packages"), list) else find_packages(
        str(ROOT), include=setup["packages"]["find"]["include"])
    wanted = {".".join(p.relative_to(ROOT).parts) for p in LIB.rglob("*") if (p / "__init__.py").is_file()} | {"refacelib"}
    assert wanted <= set(found)
