"""`python evaluate.py` without its model or predictions: one line naming what is missing, not the usage text.

One refusal as a shell sees it (a subprocess: what is tested is the command line's output; absl's
`UsageError` would print the whole module docstring above the message), the other in this process (the
same `sys.exit` with the one line).
"""

import re

import pytest

import evaluate
from tests.scripts import run_in_process, run_script

# TensorFlow's C++ start-up lines (`I0000 00:00:... port.cc:153] ...`, absl's pre-init notice, the CPU
# feature note), which TF_CPP_MIN_LOG_LEVEL does not silence in every TF build.
TF_NATIVE_LOG = re.compile(r"^([IWEF]\d{4} |WARNING: All log messages before absl|To enable the following)")


def test_missing_input_is_one_line(repo_root):
    proc = run_script(repo_root, "evaluate.py")
    assert proc.returncode == 1
    assert proc.stdout == ""
    ours = [line for line in proc.stderr.strip().splitlines() if not TF_NATIVE_LOG.match(line)]
    assert ours == [
        "evaluate.py: error: give --checkpoint (with --data_dir or --tfds_name) or --predictions; see --help"
    ]


def test_both_inputs_is_one_line(capsys):
    with pytest.raises(SystemExit) as info:
        run_in_process(evaluate, ["--checkpoint=x", "--predictions=y.npz"])
    assert info.value.code == "evaluate.py: error: give --checkpoint or --predictions, not both; see --help"
    assert capsys.readouterr().out == ""
