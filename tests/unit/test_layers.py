"""The package's layers, as docs/architecture.md draws them: every import of a fedpeft
module, at module level or inside a function, points down (or sideways inside one layer);
an import for type hints only (under ``if TYPE_CHECKING:``) may name a layer above, but
never crosses between client and coordinator; module-level imports form no circle."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[2] / "src"
PACKAGE = SRC / "fedpeft"

#: Bottom to top. A module may import its own layer and the layers below it.
LAYERS: list[set[str]] = [
    {"errors", "cache", "tensors"},
    # plug-in families whose registries config validates against (no torch, no config)
    {"compression", "aggregation", "data"},
    {"config"},
    {"protocol"},
    {"privacy", "models", "rundir", "tensorboard"},
    {"adapters"},
    {"training", "export"},
    {"client", "coordinator"},
    {"simulation"},
    {"audit"},
    {"cli"},
]
#: Layers side by side that must not import each other: the edge never imports the server.
APART = [("client", "coordinator")]
#: Imports that run up a layer, each with the reason it is there.
UPWARD: dict[tuple[str, str], str] = {}


def unit(module: str) -> str:
    """The layer unit of a dotted module name: its first package under fedpeft."""
    return module.split(".")[1] if module.count(".") else ""


def layer_of(name: str) -> int:
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"fedpeft.{name} is in no layer: add it to LAYERS (and the docs)")


def module_name(path: Path) -> str:
    rel = path.relative_to(SRC).with_suffix("")
    parts = list(rel.parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def type_only_nodes(tree: ast.Module) -> set[int]:
    """ids of the import nodes under ``if TYPE_CHECKING:``."""
    out: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and ast.unparse(node.test).endswith("TYPE_CHECKING"):
            out.update(id(n) for stmt in node.body for n in ast.walk(stmt))
    return out


def imports(path: Path, top_level_only: bool = False, hints: bool = True) -> set[str]:
    """The fedpeft modules ``path`` imports (``from x import y`` counts as ``x`` and, when
    ``x.y`` is a module, as ``x.y``); ``hints=False`` leaves out TYPE_CHECKING imports."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if not hints:
        skip = type_only_nodes(tree)
        nodes = [n for n in nodes if id(n) not in skip]
    found: set[str] = set()
    for node in nodes:
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("fedpeft"))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("fedpeft"):
            module = str(node.module)
            found.add(module)
            for alias in node.names:
                sub = SRC / f"{module}.{alias.name}".replace(".", "/")
                if sub.with_suffix(".py").is_file() or (sub / "__init__.py").is_file():
                    found.add(f"{module}.{alias.name}")
    return found


SOURCES = sorted(p for p in PACKAGE.rglob("*.py") if "/v1/" not in p.as_posix())


@pytest.mark.parametrize("path", SOURCES, ids=lambda p: str(p.relative_to(SRC)))
def test_imports_point_down(path: Path) -> None:
    me = unit(module_name(path))
    if not me:
        return
    mine = layer_of(me)
    runtime = imports(path, hints=False)
    for target in imports(path):
        other = unit(target)
        if not other or other == me or (me, other) in UPWARD:
            continue
        if target in runtime:
            assert layer_of(other) <= mine, f"{module_name(path)} imports up: {target}"
        for a, b in APART:
            assert {me, other} != {a, b}, f"{module_name(path)} imports {target} ({a} ↮ {b})"


def test_no_import_circles() -> None:
    graph = {module_name(p): imports(p, top_level_only=True) for p in SOURCES}
    graph = {m: {t for t in ts if t in graph and t != m} for m, ts in graph.items()}
    # a package's __init__ re-exporting its modules is not a circle of those modules
    for m in list(graph):
        graph[m] = {t for t in graph[m] if not m.startswith(t + ".")}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                cycle = [*stack[stack.index(nxt) :], nxt]
                raise AssertionError("import circle: " + " -> ".join(cycle))
            if nxt not in state:
                visit(nxt)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if node not in state:
            visit(node)
