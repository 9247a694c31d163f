"""Every command line in README.md names a script that exists and only flags that script defines.

The train.py / finetune.py lines are also run with --dry_run (without horovodrun, in this process through
tests/entry_points.py), so their flag values must parse and resolve too. The Quickstart has exactly two
commands.
"""

import functools
import json
import pathlib
import re
import shlex
import subprocess
import sys
import tempfile

import pytest

from tests import entry_points
from tests.conftest import REPO_ROOT

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")


def code_lines(text: str) -> list[str]:
    lines = []
    for block in re.findall(r"```bash\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.strip()
            if line and not line.startswith("#"):
                lines.extend(part.strip() for part in line.split("&&"))
    return lines


def _python_commands(lines: list[str]) -> list[tuple[str, list[str]]]:
    """(script, args) of every `python script.py ...` (also after horovodrun or .venv/bin/python)."""
    commands = []
    for line in lines:
        tokens = shlex.split(line)
        for i, token in enumerate(tokens):
            if token.endswith(".py") and i > 0 and tokens[i - 1].endswith("python"):
                commands.append((token, tokens[i + 1 :]))
                break
    return commands


COMMANDS = _python_commands(code_lines(README))


# `python SCRIPT --helpfull` for every SCRIPT given, each in a process of its own forked from one that has
# imported TensorFlow and Keras once (what the scripts' --helpfull spends most of its time on); each child
# starts from that clean state, runs the script as __main__ with the path the script would have, and writes
# its help into OUT_DIR/<index>.
_HELPFULL = """
import os, runpy, sys
import keras, tensorflow
out_dir, scripts = sys.argv[1], sys.argv[2:]
for index, script in enumerate(scripts):
    pid = os.fork()
    if pid == 0:
        os.dup2(os.open(os.path.join(out_dir, str(index)), os.O_WRONLY | os.O_CREAT), 1)
        sys.argv = [script, "--helpfull"]
        sys.path[0] = os.path.dirname(os.path.abspath(script))
        try:
            runpy.run_path(script, run_name="__main__")
        finally:  # absl exits after the help
            sys.stdout.flush()
            os._exit(0)
    os.waitpid(pid, 0)
"""


@functools.cache
def _helpfull(scripts: tuple[str, ...]) -> tuple[dict[str, str], str]:
    """({script: its --helpfull output}, the stderr of them all)."""
    with tempfile.TemporaryDirectory() as out_dir:
        proc = subprocess.run(
            [sys.executable, "-c", _HELPFULL, out_dir, *scripts],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=600,
        )
        outputs = {}
        for index, script in enumerate(scripts):
            path = pathlib.Path(out_dir, str(index))
            outputs[script] = path.read_text() if path.exists() else ""
    return outputs, proc.stderr


def defined_flags(script: str) -> frozenset[str]:
    """The flags `script` defines. train.py and finetune.py define exactly those of training/cli.py (their
    --help lists them all: tests/test_cli_help.py), read here without a process; the other scripts are asked
    for their --helpfull."""
    if script in ("train.py", "finetune.py"):
        return frozenset(entry_points.parsed_flags([], finetune=script == "finetune.py"))
    others = tuple(sorted({s for s, _ in COMMANDS} - {"train.py", "finetune.py"}))
    outputs, stderr = _helpfull(others)
    names = re.findall(r"^\s+--(?:\[no\])?([A-Za-z0-9_]+)", outputs[script], flags=re.M)
    assert names, f"{script} --helpfull printed no flags:\n{outputs[script][-2000:]}\n{stderr[-3000:]}"
    return frozenset(names)


def _flag_names(args: list[str]) -> list[str]:
    return [a[2:].split("=", 1)[0] for a in args if a.startswith("--")]


def test_readme_has_the_user_commands():
    scripts = [s for s, _ in COMMANDS]
    for script in ("train.py", "finetune.py", "evaluate.py"):
        assert script in scripts
    assert any(line.startswith("horovodrun -np 128 python train.py") for line in code_lines(README))
    assert any(a[:2] == ["--ckpt", "ckpt3"] for s, a in COMMANDS if s == "finetune.py")
    assert any(a[:2] == ["--topk", "5,10"] for s, a in COMMANDS if s == "evaluate.py")


def test_quickstart_has_exactly_two_commands():
    quickstart = README.split("## Quickstart", 1)[1].split("\n## ", 1)[0]
    assert len(code_lines(quickstart)) == 3  # the first command is install && demo
    blocks = re.findall(r"```bash\n(.*?)```", quickstart, flags=re.S)
    assert len(blocks) == 1 and len([x for x in blocks[0].splitlines() if x.strip()]) == 2
    assert "DEMO_" not in README, "the demo's figures are not filled in"


@pytest.mark.parametrize(("script", "args"), COMMANDS, ids=[f"{s} {' '.join(a)[:60]}" for s, a in COMMANDS])
def test_every_flag_exists(script, args):
    assert (REPO_ROOT / script).is_file(), script
    known = defined_flags(script)
    for name in _flag_names(args):
        bare = name[2:] if name.startswith("no") and name[2:] in known else name
        assert bare in known, f"{script} has no flag --{name}"


DRY_RUNNABLE = [(s, a) for s, a in COMMANDS if s in ("train.py", "finetune.py")]


@pytest.mark.parametrize(("script", "args"), DRY_RUNNABLE, ids=[" ".join(a)[:60] for _, a in DRY_RUNNABLE])
def test_training_commands_resolve_with_dry_run(script, args):
    args = [a for a in args if a != "--dry_run"]
    report = json.loads(entry_points.run([*args, "--dry_run"], finetune=script == "finetune.py"))
    assert isinstance(report, dict)
    if "--lr_probe_steps" in " ".join(args):  # shown as the published values: resolved at the recipe's batch
        schedule = report["schedule"]
        assert schedule["global_batch"] == schedule["reference_global_batch"], "add --simulate_workers"
