"""The house rules of the code, read from the code itself: imports run one way, rooms stay small.

The library is packages in layers (README, Architecture): a package imports only itself and the
packages below it, the commands (modules directly under alexnet/) stand on the library, flows/ on
alexnet/, stages/ on both. No module imports itself back through others (no cycle). No library
module over 350 lines, no function over 60 (a benchmark's `main` aside).
"""

import ast
from pathlib import Path

import pytest

from alexnet.core.closure import ROOT, imported_modules

# Lowest first: each may import the ones before it, never one after it.
LAYERS = ["core", "config", "data", "model", "loading", "training", "evaluation", "tracking", "serving", "pipeline",
          "study", "team"]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 350, 60


def modules() -> dict[str, Path]:
    found = {}
    for top in ("alexnet", "flows", "stages"):
        for path in sorted((ROOT / top).rglob("*.py")):
            parts = path.relative_to(ROOT).with_suffix("").parts
            found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def rank(module: str) -> tuple[int, str]:
    """(layer, name) of a module: its package's place among the layers, then commands, flows, stages."""
    parts = module.split(".")
    if parts[0] == "flows":
        return len(LAYERS) + 1, "flows"
    if parts[0] == "stages":
        return len(LAYERS) + 2, "stages"
    if len(parts) >= 2 and parts[1] in LAYERS:
        return LAYERS.index(parts[1]), parts[1]
    return len(LAYERS), "commands"  # alexnet/<command>.py


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    # A package's __init__ is imported on the way to every module in it; it is not an edge of the design.
    return {name: {m for m in imported_modules(path, ROOT) if m in mods and m != name and not name.startswith(m + ".")
                   and not (mods[m].name == "__init__.py" and "." in m and m.count(".") == 1 and m != "alexnet")}
            for name, path in mods.items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, imports in graph.items():
        mine = rank(module)
        for other in imports:
            if other == "alexnet":
                continue
            theirs = rank(other)
            if theirs[0] > mine[0]:
                bad.append(f"{module} ({mine[1]}) imports {other} ({theirs[1]})")
    return sorted(bad)


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index, low, stack, on, out, counter = {}, {}, [], set(), [], [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_package_imports_one_above_it():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle():
    assert cycles(import_graph()) == []


def test_every_library_package_is_a_layer():
    packages = sorted(p.parent.name for p in (ROOT / "alexnet").glob("*/__init__.py"))
    assert packages == sorted(LAYERS)


def test_the_checks_can_fail():
    graph = {"alexnet.core.a": {"alexnet.training.b"}, "alexnet.training.b": {"alexnet.core.a"}}
    assert upward_imports(graph) == ["alexnet.core.a (core) imports alexnet.training.b (training)"]
    assert cycles(graph) == [["alexnet.core.a", "alexnet.training.b"]]
    assert upward_imports({"alexnet.data.x": {"alexnet.compare"}}) == ["alexnet.data.x (data) imports alexnet.compare "
                                                                       "(commands)"]


def _code_files() -> list[Path]:
    tops = ("alexnet", "flows", "stages", "scripts", "benchmarks")
    return [p for top in tops for p in sorted((ROOT / top).rglob("*.py"))]


@pytest.mark.parametrize("path", [p for p in _code_files() if p.is_relative_to(ROOT / "alexnet")],
                         ids=lambda p: p.relative_to(ROOT).as_posix())
def test_library_modules_stay_small(path):
    assert len(path.read_text().splitlines()) <= MAX_MODULE_LINES


def test_no_function_is_long():
    long = []
    for path in _code_files():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES and not (path.parent.name == "benchmarks" and node.name == "main"):
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name} ({lines} lines)")
    assert long == []
