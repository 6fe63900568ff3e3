"""The project's module graph, read from the source with `ast` (nothing is imported).

Every `import` / `from … import` statement of a project module is an edge, wherever it stands:
at module level or inside a function (`Edge.lazy`). Relative imports are resolved against the
importing module's package. `python -m tests.module_graph` prints the counts and the cycles.
"""

from __future__ import annotations

import ast
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("artifact", "train", "analysis")


@dataclass(frozen=True)
class Edge:
    source: str
    target: str
    line: int
    lazy: bool  # inside a function body (a function-level import)
    names: tuple[str, ...]  # the names a `from … import` takes


def project_modules(root: Path = ROOT) -> dict[str, Path]:
    """Dotted module name -> file of every module of the project's packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((root / pkg).rglob("*.py")):
            parts = path.relative_to(root).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            out[name] = path
    return out


def _resolve(module: str, is_package: bool, node: ast.ImportFrom) -> str:
    if not node.level:
        return node.module or ""
    base = module.split(".") if is_package else module.split(".")[:-1]
    base = base[: len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def _target(name: str, modules: dict) -> str | None:
    """The project module an imported dotted name refers to (its longest known prefix)."""
    parts = name.split(".")
    for i in range(len(parts), 0, -1):
        cand = ".".join(parts[:i])
        if cand in modules:
            return cand
    return None


def module_edges(modules: dict[str, Path] | None = None) -> list[Edge]:
    """Every import edge between project modules (self-edges dropped)."""
    modules = modules if modules is not None else project_modules()
    edges = []
    for name, path in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        is_package = path.name == "__init__.py"
        for node, lazy in _imports(tree):
            if isinstance(node, ast.Import):
                found = [(a.name, ()) for a in node.names]
            else:
                base = _resolve(name, is_package, node)
                # `from pkg import mod` imports the submodule pkg.mod when there is one
                found = [(f"{base}.{a.name}" if f"{base}.{a.name}" in modules else base, (a.name,))
                         for a in node.names]
            for dotted, names in found:
                target = _target(dotted, modules)
                if target and target != name:
                    edges.append(Edge(name, target, node.lineno, lazy, names))
    return edges


def _imports(tree: ast.AST):
    """(import node, inside a function?) for every import statement of a module."""
    def walk(node, lazy):
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                yield child, lazy
            else:
                inner = lazy or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                yield from walk(child, inner)
    yield from walk(tree, False)


def find_cycles(edges: list[Edge]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each sorted."""
    graph: dict[str, set[str]] = {}
    for e in edges:
        graph.setdefault(e.source, set()).add(e.target)
        graph.setdefault(e.target, set())
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
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
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    sys.setrecursionlimit(max(10_000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out)


def summary(root: Path = ROOT) -> dict:
    modules = project_modules(root)
    edges = module_edges(modules)
    pairs = {(e.source, e.target) for e in edges}
    return {"modules": len(modules), "edges": len(pairs), "import_statements": len(edges),
            "function_level_imports": sum(e.lazy for e in edges), "cycles": find_cycles(edges)}


if __name__ == "__main__":
    root = Path(sys.argv[1]).resolve() if len(sys.argv) > 1 else ROOT
    s = summary(root)
    print(f"modules {s['modules']}, edges {s['edges']} ({s['import_statements']} import statements), "
          f"function-level project imports {s['function_level_imports']}, cycles {len(s['cycles'])}")
    for c in s["cycles"]:
        print("  cycle:", " <-> ".join(c))
