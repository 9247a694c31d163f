"""Launching multi-rank Horovod runs from tests (skips cleanly where Horovod is not installed)."""

import functools
import os
import pathlib
import shutil
import subprocess
import sys

import pytest

from training import distributed

REPO_ROOT = pathlib.Path(__file__).parents[1]


def require_horovodrun() -> str:
    """Returns the horovodrun executable, or skips the test with the reason."""
    if not distributed.horovod_available():
        pytest.skip("Horovod is not installed (bash tools/install.sh builds it)")
    exe = shutil.which("horovodrun") or os.path.join(os.path.dirname(sys.executable), "horovodrun")
    if not os.path.exists(exe):
        pytest.skip("horovodrun is not on PATH")
    return exe


def run_two_ranks(args: list[str], *, cwd=None, timeout: int = 600) -> subprocess.CompletedProcess:
    """Runs `args` (a command after `python`) on 2 local Gloo ranks; fails the test with the output on error."""
    cmd = [require_horovodrun(), "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, *args]
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        pytest.fail(f"horovodrun failed ({proc.returncode}):\n{proc.stdout[-5000:]}\n{proc.stderr[-5000:]}")
    return proc


def worker_outputs(tmp_path_factory: pytest.TempPathFactory) -> pathlib.Path:
    """The directory tests/hvd_worker.py wrote on 2 ranks: launched once per session, shared by the test files.

    A failed launch fails every test that reads it, with the launch's output, without launching again.
    """
    result = _launch_worker(tmp_path_factory.getbasetemp())
    if isinstance(result, str):
        pytest.fail(result, pytrace=False)
    return result


@functools.cache
def _launch_worker(base: pathlib.Path) -> pathlib.Path | str:
    out = base / "hvd_worker"
    out.mkdir(exist_ok=True)
    try:
        run_two_ranks(["-m", "tests.hvd_worker", str(out)], cwd=REPO_ROOT)
    except pytest.fail.Exception as e:
        return str(e)
    return out
