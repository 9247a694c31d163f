"""A repository script run as a shell runs it: `python <script> args...` in a fresh interpreter from the
repository root, its exit status, stdout and stderr captured. For the tests that check what a real command
line shows (a usage error's one line, --help); the rest call the scripts in-process."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path


def run_script(repo_root: Path, script: str, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
    """Runs `python repo_root/script *args` with cwd `repo_root`; returns the finished process (text)."""
    return subprocess.run(
        [sys.executable, str(repo_root / script), *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
