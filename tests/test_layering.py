"""The import direction: data/ and models/ never import training/ (entry scripts -> training -> models, data),
and inside data/ each folder imports only the folders below it:

    scripts (data/*.py: tfrecord, download, demo, cooccurrence) -> anything in data/
    ml_images (the TFDS builder), fetch, synthetic (the demo set) -> shards -> archives -> pixels;
    shards -> records, labels, pixels
    records, labels, pixels -> nothing but themselves (and data/fileio.py, which every folder may use)

Every folder's docstring says in one sentence what it owns.

Inside models/, reading a checkpoint goes one way: checkpoint_files (where a checkpoint is, whether it is
intact) -> architecture (which ResNet it holds) -> pretrained (the loader and the public interface).
"""

import ast
import subprocess
import sys

import pytest

# What each folder of data/ may import besides itself and data.fileio.
ALLOWED = {
    "records": set(),
    "labels": set(),
    "pixels": set(),
    "synthetic": {"shards", "archives", "records", "labels", "pixels"},
    "archives": {"pixels"},
    "shards": {"archives", "records", "labels", "pixels"},
    "fetch": {"shards", "archives", "records", "labels", "pixels"},
    "ml_images": {"shards", "archives", "records", "labels", "pixels"},
}

# What each module of models/ may import from models/ (besides the package itself); a module not listed
# imports none of these three.
MODELS_ALLOWED = {
    "checkpoint_files": set(),
    "architecture": {"checkpoint_files", "input_contract", "resnet"},
    "pretrained": {"checkpoint_files", "architecture", "input_contract", "resnet", "tf1_checkpoint"},
}


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
            if node.module in (
                "data",
                "models",
            ):  # `from data import fileio, tfrecord`: the names are modules
                names += [f"{node.module}.{alias.name}" for alias in node.names]
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


def test_every_data_folder_is_listed_and_says_what_it_owns(repo_root):
    folders = {p.parent.name for p in (repo_root / "data").glob("*/__init__.py")}
    assert folders == set(ALLOWED)
    for folder in folders:
        doc = ast.get_docstring(ast.parse((repo_root / "data" / folder / "__init__.py").read_text()))
        first = doc.split("\n\n")[0] if doc else ""
        assert first.endswith(".") and ". " not in first, f"data/{folder}: {first!r} is not one sentence"


def test_data_folders_import_only_the_folders_below_them(repo_root):
    offenders = {}
    for folder, allowed in ALLOWED.items():
        for path in sorted((repo_root / "data" / folder).rglob("*.py")):
            for name in _imports(ast.parse(path.read_text(encoding="utf-8"))):
                parts = name.split(".")
                if parts[0] != "data" or len(parts) < 2 or parts[1] in (folder, "fileio"):
                    continue
                if parts[1] not in allowed:
                    offenders.setdefault(str(path.relative_to(repo_root)), []).append(name)
    assert not offenders


@pytest.mark.parametrize(
    "folder, forbidden", [("records", "data.pixels"), ("shards", "data.fetch"), ("labels", "data.records")]
)
def test_the_layering_check_sees_a_forbidden_import(repo_root, tmp_path, folder, forbidden):
    """The check above walks the sub-packages: a forbidden import planted in a copy is found."""
    copy = tmp_path / "repo"
    (copy / "data" / folder).mkdir(parents=True)
    for other in ALLOWED:
        (copy / "data" / other).mkdir(parents=True, exist_ok=True)
    (copy / "data" / folder / "planted.py").write_text(f"from {forbidden} import x\n")
    with pytest.raises(AssertionError):
        test_data_folders_import_only_the_folders_below_them(copy)


def test_importing_every_data_module_loads_no_training_module(repo_root):
    modules = sorted(
        ".".join(p.relative_to(repo_root).with_suffix("").parts).removesuffix(".__init__")
        for p in (repo_root / "data").rglob("*.py")
    )
    code = f"import importlib, sys\nfor m in {modules!r}: importlib.import_module(m)\n" + (
        "print(sorted(m for m in sys.modules if m == 'training' or m.startswith('training.')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip() == "[]"


def _models_offenders(repo_root) -> dict[str, list[str]]:
    """models/ modules importing a module of models/ that MODELS_ALLOWED does not allow them."""
    offenders = {}
    for path in sorted((repo_root / "models").glob("*.py")):
        if path.stem == "__init__":
            continue
        allowed = MODELS_ALLOWED.get(path.stem)
        for name in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            parts = name.split(".")
            if parts[0] != "models" or len(parts) < 2 or parts[1] == path.stem:
                continue
            if allowed is None:
                bad = parts[1] in MODELS_ALLOWED
            else:
                bad = parts[1] not in allowed
            if bad:
                offenders.setdefault(str(path.relative_to(repo_root)), []).append(name)
    return offenders


def test_models_read_a_checkpoint_in_one_direction(repo_root):
    assert all((repo_root / "models" / f"{name}.py").is_file() for name in MODELS_ALLOWED)
    assert not _models_offenders(repo_root)


@pytest.mark.parametrize(
    "module, planted, found",
    [
        ("checkpoint_files", "from models import architecture", "models.architecture"),
        ("architecture", "from models.pretrained import load", "models.pretrained"),
        ("losses", "from models import checkpoint_files", "models.checkpoint_files"),
    ],
)
def test_the_models_check_sees_a_backward_import(tmp_path, module, planted, found):
    """The check above finds a backward import planted in a copy (an unlisted module may import none)."""
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / f"{module}.py").write_text(f"{planted}\n")
    assert _models_offenders(tmp_path) == {f"models/{module}.py": [found]}


def _aliases(tree: ast.Module) -> list[str]:
    """Module-level `name = models_module.attribute` lines: a name of models/ re-exported under another."""
    models_modules = {
        alias.asname or alias.name
        for node in tree.body
        if isinstance(node, ast.ImportFrom) and node.module == "models"
        for alias in node.names
    }
    return [
        ast.unparse(node)
        for node in tree.body
        if isinstance(node, ast.Assign)
        and isinstance(node.value, ast.Attribute)
        and isinstance(node.value.value, ast.Name)
        and node.value.value.id in models_modules
    ]


def test_no_caller_renames_what_models_owns(repo_root):
    """training/, tools/ and the entry scripts use models/' names from the module that owns them, never
    under an alias of their own (training/checkpoints.py once re-exported the loader's under old names)."""
    paths = [
        *(repo_root / "training").glob("*.py"),
        *(repo_root / "tools").rglob("*.py"),
        *repo_root.glob("*.py"),
    ]
    found = {
        str(path.relative_to(repo_root)): aliases
        for path in sorted(paths)
        if (aliases := _aliases(ast.parse(path.read_text(encoding="utf-8"))))
    }
    assert not found
    planted = (
        "from models import checkpoint_files\nresolve_checkpoint_path = checkpoint_files.resolve_checkpoint\n"
    )
    assert _aliases(ast.parse(planted)) == ["resolve_checkpoint_path = checkpoint_files.resolve_checkpoint"]
