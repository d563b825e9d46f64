"""The import graph of treesynth/, training/ and evaluation/ has no cycle (docs/ARCHITECTURE.md, "Import
graph"): run.py -> pipeline -> stages -> library -> io, each layer importing only the ones below it.

The graph is read from the code with `ast`, so it sees what runs, not only what runs first:
- every import statement, at module level or inside a function (a function-local import still ties the
  two modules together; hiding an edge in a function does not untangle it);
- `from pkg import name` is an edge to `pkg.name` when that is a module, else to `pkg` itself;
- importing `a.b.c` also runs the `__init__` of `a` and `a.b`: edges to those packages, except the
  importer's own ancestors (they are initialised before the importer runs);
- lazy references: registry entries ("module:attribute" strings naming one of our modules) and
  `importlib.import_module("module")` calls, which import at run time what the registry names.
Imports under `if TYPE_CHECKING:` never run and are left out.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
ROOTS = ("treesynth", "training", "evaluation")
LAZY_REF = re.compile(r"^([A-Za-z_][\w.]*):[A-Za-z_]\w*$")


def project_modules() -> dict[str, Path]:
    """Dotted module name -> file, for every .py under the roots (a package is its __init__.py)."""
    out = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            parts = list(path.relative_to(REPO).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _nodes(tree: ast.AST):
    """Every node except those under `if TYPE_CHECKING:`."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imported(module: str, path: Path, tree: ast.AST, modules: dict[str, Path]) -> set[str]:
    """The project modules `module` names, before adding the packages they sit in."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    names: set[str] = set()
    for node in _nodes(tree):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: from the importer's package, `level - 1` packages up
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                names.add(sub if sub in modules else base)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str):
            if (m := LAZY_REF.match(node.value)) and m.group(1) in modules:
                names.add(m.group(1))
        elif (isinstance(node, ast.Call) and node.args and isinstance(node.args[0], ast.Constant)
              and isinstance(node.args[0].value, str)
              and getattr(node.func, "attr", getattr(node.func, "id", None)) == "import_module"):
            names.add(node.args[0].value)
    return names


def import_graph() -> dict[str, set[str]]:
    modules = project_modules()
    graph: dict[str, set[str]] = {}
    for module, path in modules.items():
        own_ancestors = {".".join(module.split(".")[:i]) for i in range(1, module.count(".") + 1)}
        if path.name == "__init__.py":
            own_ancestors.add(module)
        edges: set[str] = set()
        for name in _imported(module, path, ast.parse(path.read_text(), str(path)), modules):
            parts = name.split(".")
            for i in range(1, len(parts) + 1):  # the module and every package on its way
                target = ".".join(parts[:i])
                if target in modules and target not in own_ancestors and target != module:
                    edges.add(target)
        graph[module] = edges
    return graph


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The cycles of the strongly connected components of more than one module (Tarjan): a shortest one
    through each of their modules, as paths a -> ... -> a."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[set[str]] = []

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
            comp = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.add(w)
                if w == v:
                    break
            if len(comp) > 1:
                components.append(comp)

    for v in sorted(graph):
        if v not in index:
            visit(v)
    cycles: list[list[str]] = []
    for comp in components:  # a shortest cycle through each module, each cycle once
        seen: set[frozenset[tuple[str, str]]] = set()
        for start in sorted(comp):
            cycle = _cycle_through(start, comp, graph)
            edges = frozenset(zip(cycle, cycle[1:], strict=False))
            if edges not in seen:
                seen.add(edges)
                cycles.append(cycle)
    return cycles


def _cycle_through(start: str, comp: set[str], graph: dict[str, set[str]]) -> list[str]:
    """A shortest cycle from `start` back to it inside its component (breadth-first)."""
    parent: dict[str, str] = {}
    frontier = [start]
    while frontier:
        nxt = []
        for v in frontier:
            for w in sorted(graph[v] & comp):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parent[path[-1]])
                    return [*reversed(path), start]
                if w not in parent:
                    parent[w] = v
                    nxt.append(w)
        frontier = nxt
    raise AssertionError(f"{start} is on no cycle of {comp}")


def test_the_import_graph_has_no_cycle():
    cycles = find_cycles(import_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_the_bottom_layer_imports_nothing_above_it():
    """io, the registry and the stage contract sit under everything: they import only the error type."""
    graph = import_graph()
    for module in ("treesynth.io", "treesynth.registry", "treesynth.stage_context", "treesynth.errors"):
        assert graph[module] <= {"treesynth.errors"}, (module, graph[module])


def test_the_graph_sees_function_local_lazy_and_package_imports():
    """The reader itself: a cycle hidden in a function, a registry string or a package __init__ is found."""
    graph = import_graph()
    assert "treesynth.io" in graph["treesynth.pipeline"]  # module level
    assert "treesynth.synthesize" in graph["treesynth.pipeline"]  # a stage table entry ("module:function")
    assert "treesynth.errors" in graph["treesynth.registry"]
    assert "treesynth" in graph["training.stage"]  # treesynth/__init__ runs before treesynth.errors
    assert "treesynth.methods" not in graph["treesynth.methods.base"]  # its own package: already initialised
    toy = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert find_cycles(toy) == [["a", "b", "c", "a"]]
    assert find_cycles({"p": {"s", "t"}, "s": {"p"}, "t": {"p"}}) == [["p", "s", "p"], ["t", "p", "t"]]
    assert find_cycles({"a": {"b"}, "b": set()}) == []
