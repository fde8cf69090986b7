"""The package layers of docs/ARCHITECTURE.md, checked on the import graph.

Every ``import`` counts, function-level ones included: an import hidden inside a function still
makes a circle, and hiding it there is the smell this test exists to catch.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: Rank of each layer; a package may import its own layer or lower ones, never a higher one.
LAYERS = {
    "medcore.utils": 0,
    "medcore.io": 1,
    "medcore.dicom": 2,
    "medcore.transforms": 2,
    "medcore.data": 3,
    "medcore.networks": 4,
    "medcore.losses": 4,
    "medcore.metrics": 4,
    "medcore.inferers": 5,
    "medcore.engine": 6,
    "medcore.cli": 7,
    "medcore": 7,
    "pipelines": 8,
}
#: Siblings of one rank that may not import each other (they are alternatives, not layers).
SIBLINGS_APART = {frozenset({"medcore.dicom", "medcore.transforms"})}
ORCHESTRATION = ("dagster", "dagster_pipes", "mlflow", "dvc", "flwr")
NOT_IN_PIPELINES = ("nibabel", "scipy")


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _sources() -> dict[str, Path]:
    files = [*ROOT.joinpath("medcore").rglob("*.py"), *ROOT.joinpath("pipelines").rglob("*.py")]
    return {_module_name(p): p for p in sorted(files)}


def _imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Every module ``name`` imports, at any depth of the file; ``from pkg import sub`` names the submodule."""
    is_package = path.name == "__init__.py"
    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_package else name.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.add(sub if sub in known else target)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    sources = _sources()
    return {name: _imports(name, path, set(sources)) for name, path in sources.items()}


def _layer(module: str) -> str | None:
    matches = [layer for layer in LAYERS if module == layer or module.startswith(layer + ".")]
    return max(matches, key=len) if matches else None


def test_no_upward_or_sideways_imports(graph):
    bad = []
    for module, targets in graph.items():
        here = _layer(module)
        for target in targets:
            there = _layer(target)
            if here is None or there is None or here == there:
                continue
            if LAYERS[there] > LAYERS[here] or frozenset({here, there}) in SIBLINGS_APART:
                bad.append(f"{module} imports {target} ({here} may not import {there})")
    assert not bad, "\n".join(sorted(bad))


def test_no_import_cycles(graph):
    internal = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    state: dict[str, int] = {}
    cycles: list[list[str]] = []

    def visit(module: str, stack: list[str]) -> None:
        state[module] = 1
        stack.append(module)
        for target in sorted(internal[module]):
            # a package's __init__ re-exporting its submodules is not a circle through the submodule
            if target.startswith(module + "."):
                continue
            if state.get(target) == 1:
                cycles.append([*stack[stack.index(target):], target])
            elif target not in state:
                visit(target, stack)
        stack.pop()
        state[module] = 2

    for module in sorted(internal):
        if module not in state:
            visit(module, [])
    assert not cycles, "\n".join(" -> ".join(c) for c in cycles)


def test_no_private_names_across_modules():
    bad = []
    for name, path in _sources().items():
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.ImportFrom) and (node.module or "").split(".")[0] in ("medcore", "pipelines"):
                bad += [f"{name} imports {node.module}.{a.name}" for a in node.names
                        if a.name.startswith("_") and not a.name.startswith("__")]
    assert not bad, "\n".join(bad)


def test_orchestration_stays_out_of_medcore_and_imaging_out_of_pipelines(graph):
    bad = [f"{m} imports {t}" for m, ts in graph.items() if m.startswith("medcore")
           for t in ts if t.split(".")[0] in ORCHESTRATION]
    bad += [f"{m} imports {t}" for m, ts in graph.items() if m.startswith("pipelines")
            for t in ts if t.split(".")[0] in NOT_IN_PIPELINES]
    assert not bad, "\n".join(sorted(bad))


def test_the_checker_sees_function_level_imports(tmp_path):
    source = tmp_path / "mod.py"
    source.write_text("def f():\n    from medcore.engine import run\n    import scipy.ndimage\n")
    assert _imports("medcore.io.mod", source, {"medcore.engine.run"}) == {"medcore.engine.run", "scipy.ndimage"}
