"""`python evaluate.py` without its model or predictions: one line naming what is missing, not the usage text.

A subprocess, because what is tested is the command line's output (absl's `UsageError` would print the
whole module docstring above the message).
"""

import re
import subprocess
import sys

import pytest

# TensorFlow's C++ start-up lines (`I0000 00:00:... port.cc:153] ...`, absl's pre-init notice, the CPU
# feature note), which TF_CPP_MIN_LOG_LEVEL does not silence in every TF build.
TF_NATIVE_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following)")


def run(repo_root, *args):
    return subprocess.run(
        [sys.executable, str(repo_root / "evaluate.py"), *args],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.parametrize(
    "args, message",
    [
        (
            [],
            "evaluate.py: error: give --checkpoint (with --data_dir or --tfds_name) or --predictions; "
            "see --help",
        ),
        (
            ["--checkpoint=x", "--predictions=y.npz"],
            "evaluate.py: error: give --checkpoint or --predictions, not both; see --help",
        ),
    ],
)
def test_missing_input_is_one_line(repo_root, args, message):
    proc = run(repo_root, *args)
    assert proc.returncode == 1
    assert proc.stdout == ""
    ours = [line for line in proc.stderr.strip().splitlines() if not TF_NATIVE_LOG.match(line)]
    assert ours == [message]
