"""The package's layers: imports point one way, down the data flow, and never in a circle; an
import inside a function only where it defers a heavy dependency, saying so."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "avlib"
# Lowest first. A module may import from its own sub-package and from layers below; modules
# sharing a layer (training and evaluation) never import each other. The commands
# (python -m avlib.X) sit on top, the reference runs' assembly (pipeline --reference) below them.
LAYERS = (("core",), ("dataio",), ("models",), ("scoring",), ("training", "evaluation"), ("figures",), ("stages",),
          ("reference",), ("pipeline", "predict", "bench", "train", "localise"))


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def avlib_imports(path: Path, known: set[str]) -> list[tuple[str, int, bool]]:
    """(imported avlib module, line, inside a function) of every import in `path`."""
    tree = ast.parse(path.read_text())
    inside = {id(sub) for node in ast.walk(tree) if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
              for sub in ast.walk(node)}
    out = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            # `from avlib.x import y` imports avlib.x.y when that is a module, else a name of avlib.x
            targets = [f"{node.module}.{a.name}" if f"{node.module}.{a.name}" in known else node.module
                       for a in node.names]
        out += [(t, node.lineno, id(node) in inside) for t in targets if t == "avlib" or t.startswith("avlib.")]
    return out


def layer_of(module: str) -> tuple[int, str]:
    """(layer index, the sub-package or command it belongs to) of an avlib module."""
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i, top
    raise AssertionError(f"{module} belongs to no layer of tests/test_layers.py LAYERS: place it")


def import_graph() -> dict[str, set[str]]:
    known = set(modules())
    return {name: {t for t, _, _ in avlib_imports(path, known) if t != name}
            for name, path in modules().items()}


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    bad = []
    for module, targets in graph.items():
        if module == "avlib":
            continue
        own, group = layer_of(module)
        for target in targets:
            if target == "avlib":
                bad.append(f"{module} imports the package root")
                continue
            level, other = layer_of(target)
            if level > own or (level == own and other != group):
                bad.append(f"{module} (layer {LAYERS[own]}) imports {target} (layer {LAYERS[level]})")
    return bad


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every import circle, as the path that closes it (depth-first search)."""
    found, state, stack = [], {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = "done"

    for node in sorted(graph):
        if node not in state:
            visit(node)
    return found


def test_every_import_points_down_the_layers():
    assert upward_imports(import_graph()) == []


def test_the_package_has_no_import_cycle():
    graph = import_graph()
    # a package's __init__ re-exports lazily, so its edges to its own modules are not imports at load
    for name in graph:
        if modules()[name].name == "__init__.py":
            graph[name] = {t for t in graph[name] if not t.startswith(name + ".")}
    assert cycles(graph) == []


def test_an_import_inside_a_function_says_what_it_defers():
    undeclared = []
    for name, path in modules().items():
        lines = path.read_text().splitlines()
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                for sub in ast.walk(node):
                    if isinstance(sub, (ast.Import, ast.ImportFrom)) and "# deferred" not in lines[sub.lineno - 1]:
                        undeclared.append(f"{path.relative_to(PACKAGE.parent)}:{sub.lineno}: {lines[sub.lineno - 1].strip()}")
    assert undeclared == []


def test_the_checks_catch_an_upward_import_and_a_cycle():
    graph = {"avlib.core.paths": {"avlib.stages.common"}, "avlib.stages.common": {"avlib.core.paths"},
             "avlib.training.loop": {"avlib.evaluation.evaluate"}, "avlib.evaluation.evaluate": set()}
    assert upward_imports(graph) == [
        "avlib.core.paths (layer ('core',)) imports avlib.stages.common (layer ('stages',))",
        "avlib.training.loop (layer ('training', 'evaluation')) imports avlib.evaluation.evaluate "
        "(layer ('training', 'evaluation'))"]
    assert cycles(graph) == [["avlib.core.paths", "avlib.stages.common", "avlib.core.paths"]]


@pytest.mark.parametrize("package", ["core", "dataio", "models", "scoring", "training", "evaluation", "stages"])
def test_each_re_exported_name_is_where_its_package_says(package):
    import importlib

    module = importlib.import_module(f"avlib.{package}")
    for name in dir(module):
        assert getattr(module, name) is not None
