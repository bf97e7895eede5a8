"""The layout of DESIGN.md holds: dependencies flow one way between packages, nothing imports
the training code at run time, no import cycle between modules, no module over 600 lines."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SOURCE = Path(__file__).resolve().parents[1] / "src" / "psfmap"
MAX_LINES = 600
# the old homes kept for one release (psfmap._deprecated): they forward, they own nothing
DEPRECATED = {"identify", "depth"}
# psf -> optics -> operators -> (simulate, restore) -> (calibrate, blind, deepblur) -> (cli, napari)
RANK = {
    "_validation": 0, "_container": 0, "_memory": 0, "_cpu": 0, "_callable_module": 0,
    "_deprecated": 0, "_lazy": 0, "_chunks": 0, "metrics": 0,
    "io": 1, "_zarr": 1, "psf": 1,
    "optics": 2,
    "operators": 3,
    "simulate": 4, "restore": 4, "figures": 4, "orthoviews": 4,
    "calibrate": 5, "blind": 5, "deepblur": 5,
    "training": 6,
    "cli": 7, "napari": 7,
}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(SOURCE.rglob("*.py")):
        parts = path.relative_to(SOURCE.parent).with_suffix("").parts
        name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
        found[name] = path
    return found


def _imports(path: Path, top_level_only: bool) -> set[str]:
    """psfmap modules imported by the file (``from psfmap.x import y`` counts as ``psfmap.x``
    and, when ``psfmap.x.y`` is a module, as that too)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    names = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names if alias.name.startswith("psfmap")}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0 \
                and node.module.startswith("psfmap"):
            names.add(node.module)
            names |= {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _package(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


MODULES = _modules()


@pytest.mark.parametrize("module", sorted(m for m in MODULES if _package(m) not in DEPRECATED))
def test_no_upward_import(module):
    own = _package(module)
    if own == "":  # psfmap/__init__.py: the facade that re-exports the verbs, lazily
        return
    if own not in RANK:
        pytest.fail(f"package {own!r} of {module} has no place in the layering; add it to RANK")
    for target in _imports(MODULES[module], top_level_only=False):
        other = _package(target)
        if target not in MODULES or other in ("", own):
            continue
        assert other not in DEPRECATED, f"{module} imports the deprecated {target}"
        if other == "training":
            assert own in ("training", "cli"), f"{module} imports training code ({target})"
            continue
        assert RANK[other] <= RANK[own], f"{module} (layer {RANK[own]}) imports {target} " \
                                         f"(layer {RANK[other]})"


def test_no_import_cycle():
    graph = {name: {t for t in _imports(path, top_level_only=True) if t in MODULES and t != name}
             for name, path in MODULES.items() if _package(name) not in DEPRECATED}
    # a package's __init__ re-exporting its own submodules is not a cycle of the submodules
    for name, targets in graph.items():
        graph[name] = {t for t in targets if not name.startswith(t + ".")}
    state: dict[str, int] = {}

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in graph.get(node, ()):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                pytest.fail("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [node])


@pytest.mark.parametrize("module", sorted(MODULES))
def test_module_size(module):
    lines = MODULES[module].read_text(encoding="utf-8").count("\n")
    assert lines <= MAX_LINES, f"{module} has {lines} lines (at most {MAX_LINES})"
