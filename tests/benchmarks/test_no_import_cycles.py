"""The benchmark scripts import one another without a cycle (each can be read, and imported, on its own)."""

from __future__ import annotations

import ast
from pathlib import Path

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def sibling_imports() -> dict[str, set[str]]:
    """script -> the other benchmark scripts it imports anywhere in it (also inside functions)."""
    names = {path.stem for path in BENCHMARKS.glob("*.py")}
    graph = {}
    for path in BENCHMARKS.glob("*.py"):
        found = set()
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                found |= {alias.name for alias in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                found.add(node.module)
        graph[path.stem] = (found & names) - {path.stem}
    return graph


def test_the_graph_sees_the_imports():
    graph = sibling_imports()
    assert "experiment" in graph["evidence"] and "evidence" in graph["experiments"]


def test_no_benchmark_script_imports_itself_back_through_another():
    graph = sibling_imports()
    cycles = []
    for start in graph:
        stack, seen = [(start, [start])], set()
        while stack:
            node, path = stack.pop()
            for nxt in graph[node]:
                if nxt == start:
                    cycles.append(" -> ".join([*path, nxt]))
                elif nxt not in seen:
                    seen.add(nxt)
                    stack.append((nxt, [*path, nxt]))
    assert not cycles, cycles
