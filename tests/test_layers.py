"""The package's layers import only downward, and no module imports another in a cycle.

Every ``import`` statement counts: module-level, inside functions, and under ``TYPE_CHECKING``
(a type-only import is still an arrow a reader has to follow). The layers are the ones drawn in
ARCHITECTURE.md; a module may import modules of its own layer (without a cycle) or of lower ones.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "adapterkit"

#: Layer of each module (by dotted-name prefix, longest prefix wins), lowest first.
LAYERS = {
    "adapterkit.context": 0,
    "adapterkit.registry": 0,
    "adapterkit.placement": 0,
    "adapterkit.heads": 0,
    "adapterkit.masked_lm_head": 0,
    "adapterkit.atomic": 0,
    "adapterkit.errors": 0,
    "adapterkit.spelling": 0,
    "adapterkit.bundled_models": 0,
    "adapterkit.vision_models": 0,
    "adapterkit.data": 0,
    "adapterkit.sites": 1,
    "adapterkit.routing": 1,
    "adapterkit.taps": 1,
    "adapterkit.checkpointing": 1,
    "adapterkit.formats": 1,
    "adapterkit.composition": 2,
    "adapterkit.execution": 2,
    "adapterkit.attention": 3,
    "adapterkit.sequence": 3,
    "adapterkit.methods": 4,
    "adapterkit.model": 5,
    "adapterkit.inference": 6,
    "adapterkit.training": 6,
    "adapterkit.distributed": 6,
    "adapterkit.hf_trainer": 6,
    "adapterkit.serve": 6,
    "adapterkit.cli": 7,
    "adapterkit.server": 7,
    "adapterkit.__main__": 7,
    "adapterkit": 7,  # the package itself: its lazy exports reach every layer
}
LAYER_NAMES = ("foundation", "sites and formats", "composition", "attention hooks", "methods", "facade", "workflows", "front ends")


def modules() -> dict[str, Path]:
    found = {}
    for path in (SRC / PACKAGE).rglob("*.py"):
        name = ".".join(path.relative_to(SRC).with_suffix("").parts)
        found[name.removesuffix(".__init__")] = path
    return found


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports anywhere in its file."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    targets = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parts + ([node.module] if node.module else []))
            candidates = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in known else base for alias in node.names]
        else:
            continue
        targets.update(c for c in candidates if c in known and c != name)
    return targets


def layer_of(name: str) -> int:
    prefix = max((p for p in LAYERS if name == p or name.startswith(p + ".")), key=len)
    return LAYERS[prefix]


GRAPH = {name: imports_of(name, path, modules()) for name, path in modules().items()}


def test_every_module_has_a_layer():
    unplaced = [n for n in GRAPH if not any(n == p or n.startswith(p + ".") for p in LAYERS)]
    assert not unplaced, f"give these modules a layer in LAYERS (and ARCHITECTURE.md): {unplaced}"


def test_imports_go_only_downward():
    upward = [
        f"{a} ({LAYER_NAMES[layer_of(a)]}) imports {b} ({LAYER_NAMES[layer_of(b)]})"
        for a, targets in GRAPH.items()
        for b in targets
        if layer_of(b) > layer_of(a)
    ]
    assert not upward, "imports that run up the layers:\n" + "\n".join(sorted(upward))


def test_nothing_below_the_facade_imports_the_model():
    importers = [a for a, targets in GRAPH.items() if "adapterkit.model" in targets and layer_of(a) < LAYERS["adapterkit.model"]]
    assert not importers


def test_no_import_cycle():
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                return path[path.index(target) :] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        state[node] = 2
        path.pop()
        return None

    for start in sorted(GRAPH):
        if start not in state:
            cycle = visit(start)
            assert cycle is None, "import cycle: " + " -> ".join(cycle)


@pytest.mark.parametrize(
    "source, expected",
    [
        ("from ..model import AdapterModel", {"adapterkit.model"}),
        ("if TYPE_CHECKING:\n    from .model import AdapterModel", {"adapterkit.model"}),
        ("def f():\n    from . import context", {"adapterkit.context"}),
        ("import adapterkit.sites", {"adapterkit.sites"}),
    ],
)
def test_the_parser_sees_every_kind_of_import(tmp_path, source, expected):
    file = tmp_path / "probe.py"
    file.write_text(source + "\n")
    name = "adapterkit.inference.probe" if source.startswith("from ..") else "adapterkit.probe"
    known = {**modules(), name: file}
    assert imports_of(name, file, known) == expected
