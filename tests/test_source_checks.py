"""Checks over the package's source: every file is written through senslora.utils.io, and nothing is loaded
unsafely (no pickle-like import, torch.load only with weights_only=True, no eval/exec, only
yaml.safe_load (and safe_dump), no hard-coded trust_remote_code=True)."""

from __future__ import annotations

import ast
from pathlib import Path

SOURCE = Path(__file__).resolve().parents[1] / "src" / "senslora"


def module_trees() -> list[tuple[Path, ast.Module]]:
    return [(path, ast.parse(path.read_text(), filename=str(path))) for path in sorted(SOURCE.rglob("*.py"))]


def call_name(node: ast.Call) -> str:
    function = node.func
    if isinstance(function, ast.Name):
        return function.id
    if isinstance(function, ast.Attribute):
        owner = function.value.id if isinstance(function.value, ast.Name) else ""
        return f"{owner}.{function.attr}" if owner else f".{function.attr}"
    return ""


WRITER_METHODS = {"write_text", "write_bytes", "save_pretrained", "to_csv", "to_json", "savefig"}
WRITER_FUNCTIONS = {"torch.save", "save_file", "json.dump", "np.save", "shutil.copy", "shutil.copyfile"}


def is_write_open(node: ast.Call) -> bool:
    """open(path, mode), gzip/bz2.open(path, mode) or path.open(mode) with a writing mode."""
    name = call_name(node)
    if name in ("open", "gzip.open", "bz2.open", "lzma.open", "io.open"):
        modes = node.args[1:2]
    elif name.endswith(".open"):
        modes = node.args[:1]
    else:
        return False
    modes = [*modes, *[k.value for k in node.keywords if k.arg == "mode"]]
    return any(isinstance(m, ast.Constant) and isinstance(m.value, str) and set(m.value) & set("wax+") for m in modes)


def unguarded_writes(path: Path, tree: ast.Module) -> list[str]:
    """Calls that write a file outside a callback handed to atomic_directory (which fills a temporary dir)."""
    callbacks = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and call_name(node).endswith("atomic_directory"):
            for argument in [*node.args[1:], *[k.value for k in node.keywords if k.arg == "write"]]:
                if isinstance(argument, ast.Name):
                    callbacks.add(argument.id)
    found = []

    def visit(node: ast.AST, enclosing: list[str]) -> None:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            enclosing = [*enclosing, node.name]
        writes = isinstance(node, ast.Call) and (
            call_name(node) in WRITER_FUNCTIONS
            or call_name(node).rsplit(".", 1)[-1] in WRITER_METHODS
            or is_write_open(node)
        )
        if writes and not set(enclosing) & callbacks:
            found.append(f"{path.name}:{node.lineno} {call_name(node)}")
        for child in ast.iter_child_nodes(node):
            visit(child, enclosing)

    visit(tree, [])
    return found


def test_every_writer_goes_through_senslora_io():
    """Outside io.py a file is written only inside a callback that fills an atomic_directory."""
    offenders = [item for path, tree in module_trees() if path.name != "io.py" for item in unguarded_writes(path, tree)]
    assert not offenders, offenders
    # The check itself sees plain writes, and lets a write into an atomic_directory callback pass.
    sample = [
        "def f(p):",
        "    p.write_text('x')",
        "    open(p, 'w')",
        "    p.open('a')",
        "    torch.save(x, p)",
        "    p.open('r')",
        "def g(d):",
        "    save_file(x, d)",
        "atomic_directory(t, g)",
    ]
    found = unguarded_writes(Path("x.py"), ast.parse("\n".join(sample)))
    assert found == ["x.py:2 p.write_text", "x.py:3 open", "x.py:4 p.open", "x.py:5 torch.save"]


PICKLE_MODULES = {"pickle", "dill", "cloudpickle", "marshal", "shelve", "joblib"}


def unsafe_loads(where: str, tree: ast.Module) -> list[str]:
    """Pickle-like imports, torch.load without weights_only=True, eval/exec, unsafe YAML, trust_remote_code=True."""
    problems = []
    for node in ast.walk(tree):
        at = f"{where}:{getattr(node, 'lineno', 0)}"
        if isinstance(node, ast.Import | ast.ImportFrom):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) else [])
            if PICKLE_MODULES & {str(n).split(".")[0] for n in names}:
                problems.append(f"{at} imports a pickle-like module")
        if not isinstance(node, ast.Call):
            continue
        name = call_name(node)
        keywords = {k.arg: k.value for k in node.keywords}
        constant = {k: v.value for k, v in keywords.items() if isinstance(v, ast.Constant)}
        if name == "torch.load" and constant.get("weights_only") is not True:
            problems.append(f"{at} torch.load without weights_only=True")
        if name in ("eval", "exec", "compile", "__import__"):
            problems.append(f"{at} calls {name}")
        if name.startswith("yaml.") and name not in ("yaml.safe_load", "yaml.safe_dump"):
            problems.append(f"{at} uses {name} (only yaml.safe_load and yaml.safe_dump are safe)")
        if constant.get("trust_remote_code"):
            problems.append(f"{at} hard-codes trust_remote_code=True")
    return problems


def test_source_loads_nothing_unsafely():
    problems = [item for path, tree in module_trees() for item in unsafe_loads(path.name, tree)]
    assert not problems, problems
    # The check itself sees each unsafe form.
    unsafe = ["import pickle", "torch.load(f)", "eval(x)", "yaml.load(t)", "f(trust_remote_code=True)"]
    unsafe.append("torch.load(f, weights_only=False)")
    assert len(unsafe_loads("x.py", ast.parse("\n".join(unsafe)))) == 6
