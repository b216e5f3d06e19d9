"""The package's layers hold: every module imports only from its own layer or the layers below, and no cycle.

Layers (src/senslora/<layer>/), lowest first:

    utils      imports nothing else of senslora
    core       utils
    finetune   core, utils                     (side by side with reporting: neither imports the other)
    reporting  core, utils
    cli        finetune, reporting, core, utils

The package root (`senslora/__init__.py`) re-exports the core; finetune, reporting and cli may import it
(`__version__`), the core may not. Every import counts, also one inside a function: a deferred import is
still a dependency.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Mapping
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "senslora"
PACKAGE = "senslora"
ROOT_LAYER = "<root>"
ALLOWED = {
    "utils": {"utils"},
    "core": {"core", "utils"},
    "finetune": {"finetune", "core", "utils", ROOT_LAYER},
    "reporting": {"reporting", "core", "utils", ROOT_LAYER},
    "cli": {"cli", "finetune", "reporting", "core", "utils", ROOT_LAYER},
    ROOT_LAYER: {"core", "utils"},
}


def module_name(path: Path, source: Path = SOURCE) -> str:
    """src/senslora/core/metrics.py -> senslora.core.metrics; a package's __init__.py -> the package."""
    parts = path.relative_to(source).with_suffix("").parts
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join((PACKAGE, *parts))


def layer_of(module: str) -> str:
    """senslora.core.metrics -> core; the package root itself -> ROOT_LAYER."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ROOT_LAYER


def imported_modules(tree: ast.Module, module: str, is_package: bool, known: set[str]) -> set[str]:
    """senslora modules one file imports anywhere in it (top level, functions, `__import__("...")`).

    `from a.b import c` counts as an import of module `a.b.c` when that is a module, else of `a.b`.
    """
    found: set[str] = set()
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: `from . import x` / `from ..core import y`
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.add(submodule if submodule in known else base)
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Name | ast.Attribute)
            and (node.func.id if isinstance(node.func, ast.Name) else node.func.attr) in ("__import__", "import_module")
            and node.args
            and isinstance(node.args[0], ast.Constant)
            and isinstance(node.args[0].value, str)
        ):
            found.add(node.args[0].value)
    return {name for name in found if name == PACKAGE or name.startswith(PACKAGE + ".")}


def import_graph(source: Path = SOURCE) -> dict[str, set[str]]:
    """module -> the senslora modules it imports, for every .py file under `source`."""
    paths = sorted(source.rglob("*.py"))
    known = {module_name(path, source) for path in paths}
    graph = {}
    for path in paths:
        module = module_name(path, source)
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        graph[module] = imported_modules(tree, module, path.name == "__init__.py", known) - {module}
    return graph


def upward_imports(graph: Mapping[str, Iterable[str]]) -> list[str]:
    """'importer -> imported (layer -> layer)' for each import its layer may not make."""
    offenders = []
    for module, imports in sorted(graph.items()):
        layer = layer_of(module)
        if layer not in ALLOWED:
            offenders.append(f"{module}: not in a layer (expected one of {sorted(set(ALLOWED) - {ROOT_LAYER})})")
            continue
        for imported in sorted(imports):
            if layer_of(imported) not in ALLOWED[layer]:
                offenders.append(f"{module} -> {imported} ({layer} -> {layer_of(imported)})")
    return offenders


def import_cycles(graph: Mapping[str, Iterable[str]]) -> list[list[str]]:
    """Each strongly connected group of more than one module (Tarjan), as a sorted list of names."""
    index: dict[str, int] = {}
    lowlink: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(module: str) -> None:
        index[module] = lowlink[module] = len(index)
        stack.append(module)
        on_stack.add(module)
        for imported in graph.get(module, ()):
            if imported not in index:
                visit(imported)
                lowlink[module] = min(lowlink[module], lowlink[imported])
            elif imported in on_stack:
                lowlink[module] = min(lowlink[module], index[imported])
        if lowlink[module] == index[module]:
            group = []
            while True:
                member = stack.pop()
                on_stack.discard(member)
                group.append(member)
                if member == module:
                    break
            if len(group) > 1:
                cycles.append(sorted(group))

    for module in sorted(graph):
        if module not in index:
            visit(module)
    return sorted(cycles)


def test_the_graph_sees_the_imports():
    """A check over an empty graph passes vacuously: the parser must find imports we know are there."""
    graph = import_graph()
    assert {"senslora.core.allocation", "senslora.finetune.pipeline", "senslora.cli.commands"} <= set(graph)
    assert "senslora.core.artifacts" in graph["senslora.finetune.pipeline"]  # a top-level import
    assert "senslora.finetune.pipeline" in graph["senslora.cli.commands"]  # an import inside a function
    # `from senslora.finetune import training`:
    assert "senslora.finetune.training.settings" in graph["senslora.finetune.training.numeric_health"]


def test_no_layer_imports_from_a_layer_above_it():
    assert upward_imports(import_graph()) == []


def test_no_import_cycle_between_modules():
    assert import_cycles(import_graph()) == []


def test_the_checks_catch_an_upward_import_and_a_cycle(tmp_path: Path):
    """Hand-written sources with one upward import (inside a function) and one cycle are caught."""
    files = {
        "__init__.py": "from senslora.core.a import x\n",
        "utils/__init__.py": "",
        "utils/u.py": "",
        "core/__init__.py": "",
        "core/a.py": "from senslora.utils import u\ndef f():\n    from senslora.finetune.b import y\n",
        "finetune/__init__.py": "",
        "finetune/b.py": "from . import c\n",
        "finetune/c.py": "import senslora.finetune.b\n",
        "reporting/__init__.py": "",
        "reporting/r.py": "__import__('senslora.finetune.b')\n",
        "extra.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    graph = import_graph(tmp_path)
    assert graph["senslora.core.a"] == {"senslora.utils.u", "senslora.finetune.b"}
    assert upward_imports(graph) == [
        "senslora.core.a -> senslora.finetune.b (core -> finetune)",
        "senslora.extra: not in a layer (expected one of ['cli', 'core', 'finetune', 'reporting', 'utils'])",
        "senslora.reporting.r -> senslora.finetune.b (reporting -> finetune)",
    ]
    assert import_cycles(graph) == [["senslora.finetune.b", "senslora.finetune.c"]]
