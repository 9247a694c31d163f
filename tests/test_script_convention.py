"""One convention for every script (data/command_line.py): `define_flags(flag_values)` and
`main(argv, flag_values)`, a `__main__` block that is `command_line.run(...)`, a refused run ending in one
`<script>: error: ...` line, and no `sys.path` patching (the project is installed, tools/ included).

The scripts are found by their `if __name__ == "__main__":` block, so a new one is checked too; the table
says which exist, so one that loses its block is noticed.
"""

import ast
import os
import pathlib
import subprocess
import sys
import textwrap

import pytest

from data import command_line

SCRIPTS = {
    "train.py",
    "finetune.py",
    "evaluate.py",
    "data/tfrecord.py",
    "data/download.py",
    "data/demo.py",
    "data/cooccurrence.py",
    "tools/benchmark.py",
    "tools/convert_checkpoint.py",
    "tools/cuda_paths.py",
    "tools/dataset_stats.py",
    "tools/export.py",
    "tools/extract_feature.py",
    "tools/image_classification.py",
    "tools/plot_run.py",
    "tools/subset.py",
}


def _is_main_guard(node: ast.stmt) -> bool:
    return (
        isinstance(node, ast.If)
        and "__name__" in ast.unparse(node.test)
        and "__main__" in ast.unparse(node.test)
    )


def _scripts(repo_root: pathlib.Path) -> set[str]:
    """Every .py file of the project (tests and the virtual environment aside) with a `__main__` block."""
    found = set()
    for path in repo_root.rglob("*.py"):
        relative = path.relative_to(repo_root)
        if relative.parts[0] in ("tests", ".venv") or relative.parts[0].startswith("."):
            continue
        if any(_is_main_guard(node) for node in ast.parse(path.read_text(encoding="utf-8")).body):
            found.add(relative.as_posix())
    return found


def _params(function: ast.FunctionDef) -> list[str]:
    return [a.arg for a in function.args.posonlyargs + function.args.args]


def convention_problems(source: str) -> list[str]:
    """What in a script's source breaks the convention (empty: none)."""
    tree = ast.parse(source)
    functions = {n.name: n for n in tree.body if isinstance(n, ast.FunctionDef)}
    problems = []
    if "define_flags" not in functions or _params(functions["define_flags"])[:1] != ["flag_values"]:
        problems.append("no define_flags(flag_values)")
    if "main" not in functions or _params(functions["main"]) != ["argv", "flag_values"]:
        problems.append("no main(argv, flag_values)")
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr == "path" and ast.unparse(node.value) == "sys":
            problems.append(f"line {node.lineno}: sys.path")
        if isinstance(node, ast.Call) and ast.unparse(node.func) in ("sys.exit", "exit"):
            problems.append(f"line {node.lineno}: {ast.unparse(node.func)}() instead of command_line.error")
    guards = [node for node in tree.body if _is_main_guard(node)]
    if not guards or "command_line.run(" not in ast.unparse(guards[-1]):
        problems.append("the __main__ block does not end in command_line.run")
    return problems


def test_the_scripts_are_the_known_ones(repo_root):
    assert _scripts(repo_root) == SCRIPTS


@pytest.mark.parametrize("script", sorted(SCRIPTS))
def test_every_script_follows_the_convention(repo_root, script):
    assert convention_problems((repo_root / script).read_text(encoding="utf-8")) == []


GOOD = """
    from absl import flags
    from data import command_line

    def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
        flags.DEFINE_string("x", None, "x", flag_values=flag_values)

    def main(argv, flag_values=flags.FLAGS) -> None:
        print(flag_values.x)

    if __name__ == "__main__":
        command_line.run(main, define_flags, script=__file__)
"""


@pytest.mark.parametrize(
    "old, new, problem",
    [
        (
            "def define_flags(flag_values: flags.FlagValues = flags.FLAGS)",
            "def _define_flags()",
            "define_flags",
        ),
        ("def main(argv, flag_values=flags.FLAGS)", "def main(argv)", "main(argv, flag_values)"),
        ("    print(flag_values.x)", "    import sys; sys.path.insert(0, '..')", "sys.path"),
        ("    print(flag_values.x)", "    import sys; sys.exit('x.py: failed')", "sys.exit()"),
        ("command_line.run(main, define_flags, script=__file__)", "app.run(main)", "command_line.run"),
    ],
)
def test_the_check_sees_a_script_off_the_convention(old, new, problem):
    assert convention_problems(textwrap.dedent(GOOD)) == []
    bad = textwrap.dedent(GOOD).replace(old, new)
    assert bad != textwrap.dedent(GOOD)
    assert any(problem in p for p in convention_problems(bad)), convention_problems(bad)


def test_error_line_is_one_line():
    assert command_line.error_line("/x/tools/export.py", "bad\n  thing") == "export.py: error: bad thing"
    assert command_line.error(__file__, "no").code == "test_script_convention.py: error: no"


RUN = """
import sys
from absl import app, flags
from data import command_line

def define_flags(flag_values):
    flags.DEFINE_string("fail", "", "usage, value or os", flag_values=flag_values)

def main(argv, flag_values):
    if flag_values.fail == "usage":
        raise app.UsageError("--fail=usage is not allowed")
    if flag_values.fail == "value":
        raise ValueError("a bad\\nlist line")
    if flag_values.fail == "os":
        raise OSError("disk gone")
    print("ran")

if __name__ == "__main__":
    command_line.run(main, define_flags, script=__file__, refusals=(ValueError,))
"""


@pytest.mark.parametrize(
    "fail, status, last_line",
    [
        ("", 0, None),
        ("usage", 1, "tiny.py: error: --fail=usage is not allowed (see --help)"),
        ("value", 1, "tiny.py: error: a bad list line"),
        ("os", 1, "OSError: disk gone"),  # not a refusal of this script: a traceback, as any bug
    ],
)
def test_a_refused_run_ends_in_one_line(repo_root, tmp_path, fail, status, last_line):
    """`command_line.run` as a shell sees it: a usage error and a declared refusal are one line on stderr
    (not absl's usage text, not a traceback); any other exception stays a traceback."""
    (tmp_path / "tiny.py").write_text(RUN)
    proc = subprocess.run(
        [sys.executable, str(tmp_path / "tiny.py"), f"--fail={fail}"],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(repo_root)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == status, proc.stderr
    if last_line is None:
        assert proc.stdout == "ran\n"
    elif last_line.startswith("tiny.py: error:"):
        assert proc.stderr == last_line + "\n"
    else:
        assert proc.stderr.strip().splitlines()[-1] == last_line and "Traceback" in proc.stderr
