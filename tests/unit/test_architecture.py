"""The packages form a tower: no package imports, directly or through others, one that imports it.

The graph is computed from the source with ``ast`` (every import counts: module-level, inside
functions, and under ``TYPE_CHECKING``), with one node per package under ``modelport`` and one per
top-level module (``errors``, ``settings``, ``services``...). A cycle fails the test with the
imports that make it, so the fix starts from the right line.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import modelport

ROOT = Path(modelport.__file__).parent
Edges = dict[str, dict[str, list[str]]]  # package -> imported package -> "file:line" of each import


def _node(module: str) -> str | None:
    """``modelport.ingest.sources.http`` -> ``ingest``; ``modelport`` itself -> ``modelport``."""
    parts = module.split(".")
    if parts[0] != "modelport":
        return None
    return parts[1] if len(parts) > 1 else "modelport"


def _imported(node: ast.AST) -> list[str]:
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
        if node.module == "modelport":  # ``from modelport import demo`` imports the module ``demo``
            return [f"modelport.{alias.name}" for alias in node.names if (ROOT / f"{alias.name}.py").exists()]
        return [node.module]
    return []


def package_graph() -> Edges:
    edges: Edges = defaultdict(lambda: defaultdict(list))
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        source = rel.parts[0].removesuffix(".py") if rel.parts[0] != "__init__.py" else "modelport"
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            for module in _imported(node):
                target = _node(module)
                if target and target != source:
                    edges[source][target].append(f"{rel}:{node.lineno}")  # type: ignore[attr-defined]
    return edges


def cycles(edges: Edges) -> list[list[str]]:
    """Strongly connected components with more than one package (Tarjan's algorithm)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, {}):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            component.append(v)
            if len(component) > 1:
                found.append(sorted(component))

    for v in list(edges):
        if v not in index:
            visit(v)
    return found


def _explain(edges: Edges, component: list[str]) -> str:
    lines = [" <-> ".join(component)]
    for a in component:
        for b in component:
            if b in edges.get(a, {}):
                lines.append(f"  {a} -> {b}: {', '.join(edges[a][b][:3])}")
    return "\n".join(lines)


def test_no_package_import_cycle() -> None:
    edges = package_graph()
    assert len(edges) > 10, "the graph is suspiciously small: did the package move?"
    found = cycles(edges)
    assert not found, "package import cycles:\n" + "\n".join(_explain(edges, c) for c in found)


def test_the_finder_finds_a_cycle() -> None:
    edges: Edges = {"a": {"b": ["a.py:1"]}, "b": {"c": ["b.py:1"]}, "c": {"a": ["c.py:1"]}, "d": {"a": ["d.py:1"]}}
    assert cycles(edges) == [["a", "b", "c"]]


EDGES = {"api", "web", "cli", "app", "services"}  # the edges and the composition root
# A replica is a process of its own whose only job is to answer HTTP: it is an edge too.
WEB_FRAMEWORK_ALLOWED = {"api", "web", "app", "endpoints/replica.py"}


def test_domain_packages_never_import_the_edges() -> None:
    """Domain packages are reached by the edges and the composition root; they never reach back up."""
    for package, targets in package_graph().items():
        if package not in EDGES:
            assert not EDGES & set(targets), f"{package} imports {sorted(EDGES & set(targets))}: {dict(targets)}"


def test_only_the_edges_import_the_web_framework() -> None:
    offenders = []
    for path in sorted(ROOT.rglob("*.py")):
        rel = path.relative_to(ROOT)
        if rel.parts[0].removesuffix(".py") in WEB_FRAMEWORK_ALLOWED or str(rel) in WEB_FRAMEWORK_ALLOWED:
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            if any(m.split(".")[0] in ("fastapi", "starlette") for m in _imported(node)):
                offenders.append(f"{rel}:{node.lineno}")  # type: ignore[attr-defined]
    assert not offenders, f"services must not import FastAPI or Starlette: {offenders}"
