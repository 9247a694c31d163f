"""A repository script run as a shell runs it: `python <script> args...` in a fresh interpreter from the
repository root, its exit status, stdout and stderr captured, for the tests that check what a real command
line shows (a usage error's one line, --help); or the same command line in this process (`run_in_process`),
for the rest."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

from absl import flags


def run_script(repo_root: Path, script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `python repo_root/script *args` with cwd `repo_root`; returns the finished process (text)."""
    return subprocess.run(
        [sys.executable, str(repo_root / script), *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def run_in_process(script: ModuleType, args: Sequence[str]) -> None:
    """The command line `python <script> *args` in this process: the script module's
    `define_flags(flag_values)` on a fresh `FlagValues`, then its `main(argv, flag_values)`.

    It prints as the script does; a bad flag raises absl's `flags.Error`, a refused run the script's
    `SystemExit` (its one-line message) or `app.UsageError`.
    """
    flag_values = flags.FlagValues()
    script.define_flags(flag_values)
    script.main(flag_values([os.path.basename(script.__file__), *args]), flag_values)
