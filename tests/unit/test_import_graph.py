"""The product's modules (plugin/, loader/, bpf/) import each other without a cycle.

The graph is built from the sources with ast, not by importing them: every import that runs
counts, at module level or inside a function (a lazy import only moves a cycle to the first
call), and so does the package __init__ that importing a submodule runs first. Imports under
`if TYPE_CHECKING:` never run and do not count.

`python tests/unit/test_import_graph.py` prints the cycles.
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("plugin", "loader", "bpf")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def product_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _runtime_nodes(tree: ast.AST) -> Iterator[ast.Import | ast.ImportFrom]:
    """Every import statement except those under `if TYPE_CHECKING:`."""
    stack: list[ast.AST] = [tree]
    while stack:
        node = stack.pop()
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            stack.extend(node.orelse)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node
        stack.extend(ast.iter_child_nodes(node))


def _packages(name: str) -> list[str]:
    """a.b.c -> [a, a.b]: importing a.b.c runs a/__init__ and a/b/__init__ first."""
    parts = name.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The product modules that importing `name` runs: each module named, and the packages
    above it that are not `name`'s own (those ran before `name` did)."""
    is_package = path.name == "__init__.py"
    own = {*_packages(name), name}
    out: set[str] = set()
    for node in _runtime_nodes(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            named = [alias.name for alias in node.names]
        else:
            base = node.module or ""
            if node.level:
                anchor = name.split(".")
                anchor = anchor[:len(anchor) - node.level + is_package]
                base = ".".join([*anchor, *([base] if base else [])])
            submodules = [f"{base}.{alias.name}" for alias in node.names
                          if f"{base}.{alias.name}" in modules]
            # `from a import b` runs a.b when b is a module, and needs a's own code when b is
            # a name defined there (a then counts even if it is the importer's package).
            named = submodules if len(submodules) == len(node.names) else [base, *submodules]
        for target in named:
            out.update(p for p in _packages(target) if p not in own)
            out.add(target)
    return {m for m in out if m in modules and m != name}


def import_graph() -> dict[str, set[str]]:
    modules = product_modules()
    return {name: imports_of(name, path, modules) for name, path in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted: every
    one holds at least one cycle, and breaking them all leaves the graph acyclic."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(graph)))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def one_cycle(graph: dict[str, set[str]], component: list[str]) -> list[str]:
    """A shortest path from the component's first module back to itself, for the message."""
    members, start = set(component), component[0]
    paths = {start: [start]}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & members):
                if w == start:
                    return [*paths[v], start]
                if w not in paths:
                    paths[w] = [*paths[v], w]
                    nxt.append(w)
        frontier = nxt
    return component


def describe(graph: dict[str, set[str]]) -> list[str]:
    return [" -> ".join(one_cycle(graph, c)) + f"   ({len(c)} modules: {', '.join(c)})"
            for c in cycles(graph)]


def test_the_graph_sees_imports_of_every_kind() -> None:
    """The checker itself: lazy imports, `from package import module`, relative imports and
    package __init__s are edges; TYPE_CHECKING imports are not."""
    graph = import_graph()
    assert "plugin.relay" in graph["plugin.cli"]  # `from plugin import relay`: a module
    assert "plugin" in graph["plugin.agent.daemon"]  # `from plugin import VERSION`: a name
    assert "plugin.cluster" in graph["plugin.ipam"]  # a package __init__'s own imports
    # dataplane.mode imports the eBPF dataplane lazily (in choose()): still an edge.
    assert "plugin.dataplane.ebpf" in graph["plugin.dataplane.mode"]
    assert "loader" in graph["plugin.dataplane.ebpf"]  # the package above loader.pins
    # `from plugin.datastore import etcd_rpc_pb2`: a module; the package already ran.
    assert "plugin.datastore" not in graph["plugin.datastore.etcd_rpc_pb2_grpc"]
    assert "plugin.agent.daemon" not in graph["plugin.agent.metrics"]  # TYPE_CHECKING only
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}, "e": {"e"}}
    assert cycles(toy) == [["a", "b", "c"]]
    assert one_cycle(toy, ["a", "b", "c"]) == ["a", "b", "c", "a"]


def test_no_import_cycle_among_the_product_modules() -> None:
    found = describe(import_graph())
    assert not found, f"{len(found)} import cycle(s):\n" + "\n".join(found)


if __name__ == "__main__":
    found = describe(import_graph())
    print(f"{len(found)} import cycle(s)")
    print("\n".join(found))
