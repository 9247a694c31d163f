"""The command lines explain themselves: --help lists the shared flags; the output is ours, not TensorFlow's."""

import logging
import os
import re
import subprocess
import sys

import pytest
from absl import app, flags

from tests import datasets
from tests.conftest import REPO_ROOT
from training import cli, recipes, tf_logs


def _train_flags(*, finetune: bool) -> flags.FlagValues:
    flag_values = flags.FlagValues()
    names = sorted(recipes.FINETUNE) if finetune else recipes.PRETRAIN_RECIPES
    cli.define_flags(default_recipe=names[0], recipe_names=names, finetune=finetune, flag_values=flag_values)
    return flag_values


def _inference_flags() -> flags.FlagValues:
    flag_values = flags.FlagValues()
    cli.define_inference_flags(flag_values)
    return flag_values


@pytest.mark.parametrize(
    "make", [lambda: _train_flags(finetune=False), lambda: _train_flags(finetune=True), _inference_flags]
)
def test_every_shared_flag_has_help(make):
    flag_values = make()
    assert len(list(flag_values)) > 5
    for name in flag_values:
        assert len(flag_values[name].help) > 10, name


def test_profile_steps_parse_or_are_one_usage_error():
    assert cli.parse_profile_steps([]) is None
    assert cli.parse_profile_steps(["3", "5"]) == (3, 5)
    assert cli.parse_profile_steps(["4", "4"]) == (4, 4)
    for bad in (["5", "3"], ["0", "2"], ["3"], ["a", "b"], ["1", "2", "3"]):
        with pytest.raises(app.UsageError, match="--profile_steps"):
            cli.parse_profile_steps(bad)


HELP = [
    ("train.py", lambda: _train_flags(finetune=False)),
    ("finetune.py", lambda: _train_flags(finetune=True)),
    ("tools/image_classification.py", _inference_flags),
    ("tools/extract_feature.py", _inference_flags),
]


@pytest.fixture(scope="module")
def help_outputs() -> dict[str, tuple[str, str]]:
    """`python <script> --help` of each script, run as a shell runs it: fresh interpreters, started together
    (each spends most of its time importing TensorFlow: two cores do two at once). {script: (stdout, stderr)}"""
    procs = {
        script: subprocess.Popen(
            [sys.executable, str(REPO_ROOT / script), "--help"],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for script, _ in HELP
    }
    try:
        return {script: proc.communicate(timeout=300) for script, proc in procs.items()}
    finally:
        for proc in procs.values():
            if proc.poll() is None:
                proc.kill()
                proc.wait()


@pytest.mark.parametrize(("script", "expected"), HELP, ids=[s for s, _ in HELP])
def test_help_lists_the_flags_defined_in_training_cli(help_outputs, script, expected):
    stdout, stderr = help_outputs[script]
    assert "Traceback" not in stderr, stderr[-3000:]  # absl's --help exits with status 1
    listed = set(re.findall(r"^\s+--(?:\[no\])?([A-Za-z0-9_]+)", stdout, flags=re.M))
    missing = set(expected()) - listed
    assert not missing, f"{script} --help does not list {sorted(missing)}\n{stderr[-2000:]}"


def _record(pathname: str, level: int) -> logging.LogRecord:
    return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_the_filter_drops_only_tensorflow_info():
    drop = tf_logs._DropTensorFlowInfo()
    tf_file = os.path.join(os.sep, "venv", "site-packages", "tensorflow", "python", "checkpoint", "saver.py")
    ours = os.path.join(os.sep, "work", "training", "loop.py")
    assert not drop.filter(_record(tf_file, logging.INFO))
    assert drop.filter(_record(tf_file, logging.WARNING))
    assert drop.filter(_record(ours, logging.INFO))


CPP_INFO = "I0000 00:00:1796201091.667906    8785 port.cc:153] oneDNN custom operations are on.\n"


def test_quiet_import_drops_cpp_info_lines_and_keeps_the_rest(capfd, monkeypatch):
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "1")
    with tf_logs.quiet_import():
        os.write(2, f"WARNING: All log messages before absl::InitializeLog()\n{CPP_INFO}a warning\n".encode())
    with pytest.raises(ImportError), tf_logs.quiet_import():
        os.write(2, f"{CPP_INFO}E0000 00:00:1.2 8 x.cc:1] an error\n".encode())
        raise ImportError("no tensorflow")
    assert capfd.readouterr().err == "a warning\nE0000 00:00:1.2 8 x.cc:1] an error\n"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")  # asks for TensorFlow's INFO lines
    with tf_logs.quiet_import():
        os.write(2, CPP_INFO.encode())
    assert capfd.readouterr().err == CPP_INFO


def test_train_py_prints_our_lines_not_tensorflow_info_and_profiles(repo_root, tmp_path):
    data = datasets.multilabel(tmp_path / "data", num_train=16, num_val=8)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    proc = subprocess.run(
        [
            sys.executable,
            str(repo_root / "train.py"),
            f"--data_dir={data.data_dir}",
            f"--num_classes={data.num_classes}",
            f"--model_dir={tmp_path / 'run'}",
            "--image_sizes=32",
            "--noscale_schedule",
            "--depth=14",
            "--base_width=4",
            "--per_rank_batch=8",
            "--shuffle_buffer=16",
            "--train_steps=2",
            "--checkpoint_every=1",
            "--profile_steps=2,2",
        ],
        cwd=repo_root,
        env=dict(env, OMP_NUM_THREADS="1"),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert re.search(r"loop\.py:\d+\] saved .*ckpt-1", proc.stderr), proc.stderr[-3000:]
    assert re.search(r"loop\.py:\d+\] step 2/2 loss", proc.stderr)
    assert list(
        (tmp_path / "run" / "train" / "plugins" / "profile").glob("*/*.xplane.pb")
    )  # the flag reaches it
    noises = (
        "Sharding callback duration",
        "Compiled cluster using XLA",
        "XLA service",
        "oneDNN",
        "InitializeLog",
    )
    for noise in noises:
        assert noise not in proc.stderr, noise
