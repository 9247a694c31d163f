"""A repository script run as a shell runs it: `python <script> args...` in a fresh interpreter from the
repository root, its exit status, stdout and stderr captured, for the tests that check what a real command
line shows (a usage error's one line, --help); or the same command line in this process (`run_in_process`),
for the rest."""

from __future__ import annotations

import errno
import glob
import os
import subprocess
import sys
import time
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


# Loaded by every interpreter of a run (main process and pool workers) through PYTHONPATH: reading the file
# whose name ends in MLIMAGES_TEST_BLOCK_READ's first part blocks while its second part exists.
_BLOCK_ON_READ = """
import os, time
name, _, gate = os.environ.get("MLIMAGES_TEST_BLOCK_READ", "").partition("::")
if name:
    from data.pixels import images

    read_file = images.read_file

    def blocking(path, **kwargs):
        while path.endswith(name) and os.path.exists(gate):
            time.sleep(0.05)
        return read_file(path, **kwargs)

    images.read_file = blocking
"""


def blocking_read_env(site: Path, repo_root: Path, name: str, gate: Path) -> dict[str, str]:
    """Environment entries for a script run whose every process blocks reading the image file named `name`
    while the file `gate` exists (a deterministic "mid-run" to kill or signal): a `sitecustomize.py` in the
    new folder `site`, put first on PYTHONPATH."""
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK_ON_READ)
    return {"PYTHONPATH": f"{site}{os.pathsep}{repo_root}", "MLIMAGES_TEST_BLOCK_READ": f"{name}::{gate}"}


def full_disk_on_rename(monkeypatch, name_end: str) -> None:
    """`os.replace` onto a path ending in `name_end` fails with ENOSPC (a disk that fills as a shard is put
    in place); every other rename works. Undone by `monkeypatch.undo()`."""
    real_replace = os.replace

    def full_disk(src, dst, **kwargs):
        if os.fspath(dst).endswith(name_end):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(src))
        return real_replace(src, dst, **kwargs)

    monkeypatch.setattr(os, "replace", full_disk)


def process_states(pgid: int) -> list[str]:
    """States of the live (non-zombie) processes of a process group, from /proc."""
    states = []
    for stat in glob.glob("/proc/[0-9]*/stat"):
        try:
            fields = Path(stat).read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            states.append(fields[0])
    return states


def wait_for(condition, timeout: float, what: str) -> None:
    """Polls `condition()` until it is true; AssertionError naming `what` after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)
