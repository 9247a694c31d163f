"""The import direction: data/ and models/ never import training/ (entry scripts -> training -> models, data)."""

import ast
import pathlib
import subprocess
import sys


def _imports(tree: ast.Module) -> list[str]:
    """Modules imported anywhere in the file, its `__main__` block and function bodies included."""
    names: list[str] = []
    stack = list(tree.body)
    while stack:
        node = stack.pop()
        if isinstance(node, ast.Import):
            names += [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.append(node.module)
        stack.extend(ast.iter_child_nodes(node))
    return names


def test_no_data_or_models_module_imports_training(repo_root):
    offenders = {}
    for path in sorted([*(repo_root / "data").rglob("*.py"), *(repo_root / "models").rglob("*.py")]):
        imports = _imports(ast.parse(path.read_text(encoding="utf-8")))
        bad = [name for name in imports if name == "training" or name.startswith("training.")]
        if bad:
            offenders[str(path.relative_to(repo_root))] = bad
    assert not offenders


def test_importing_every_data_module_loads_no_training_module(repo_root):
    modules = sorted(
        f"data.{p.stem}" for p in pathlib.Path(repo_root / "data").glob("*.py") if p.stem != "__init__"
    )
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n" + (
        "print(sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"
