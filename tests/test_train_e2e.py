"""train.py and finetune.py end to end on tiny data: runs, resume after kill -9, the NaN stop, init checkpoints."""

import json
import logging
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf

from models import resnet
from tests import datasets, entry_points, tiny_runs
from training import checkpoints, loop, train_step

TINY = tiny_runs.FLAGS
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def multilabel_data(tmp_path_factory):
    return datasets.multilabel(tmp_path_factory.mktemp("multilabel"))


@pytest.fixture(scope="module")
def single_label_data(tmp_path_factory):
    return datasets.single_label(tmp_path_factory.mktemp("single"))


def _cmd(repo_root, script, *args):
    return [sys.executable, str(repo_root / script), *args]


def _run(repo_root, script, *args, timeout=600):
    proc = subprocess.run(
        _cmd(repo_root, script, *args),
        cwd=repo_root,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    return proc


def _run_here(script, *args):
    """`python script args` (train.py or finetune.py) in this process; returns its stdout."""
    return entry_points.run(list(args), finetune=script == "finetune.py")


def test_train_py_runs_logs_checkpoints_and_finishes(repo_root, tmp_path, multilabel_data, caplog):
    """The real script in a fresh process (the op pools' flags apply only before TensorFlow starts)."""
    model_dir = tmp_path / "run"
    proc = _run(
        repo_root,
        "train.py",
        *tiny_runs.train_args(
            multilabel_data,
            model_dir,
            "--train_steps=4",
            "--checkpoint_every=2",
            "--eval_every=4",
            "--eval_steps=1",
            "--intra_op_threads=1",
            "--inter_op_threads=2",
            "--data_threads=3",
        ),
    )
    config = json.loads((model_dir / "config.json").read_text())
    assert config["recipe"] == "pretrain_mlimages" and config["model"]["num_classes"] == 30
    runtime = config["runtime"]
    assert (runtime["intra_op_threads"], runtime["inter_op_threads"], runtime["data_threads"]) == (1, 2, 3)
    assert "thread pools of this rank: ThreadPlan(data=3, intra_op=1, inter_op=2)" in proc.stderr
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train] == [1, 2, 3, 4]
    assert all(np.isfinite(x["loss"]) and x["images_per_s"] > 0 for x in train)
    assert train[0]["lr"] == pytest.approx(0.01)
    evals = [x for x in lines if x["kind"] == "eval"]
    assert len(evals) == 1 and 0.0 <= evals[0]["f1@5"] <= 1.0
    assert tf.train.latest_checkpoint(str(model_dir)).endswith("ckpt-4")
    assert json.loads((model_dir / "input" / "rank-0" / "ckpt-4.json").read_text())["elements"] == 4 * 8
    assert any(p.name.startswith("events") for p in (model_dir / "train").iterdir())
    assert json.loads(proc.stdout.strip().splitlines()[-1])["final"]["step"] == 4
    # Running it again finds it finished, on the same state.
    with caplog.at_level(logging.INFO, logger="absl"):
        again = _run_here("train.py", *tiny_runs.train_args(multilabel_data, model_dir, "--train_steps=4"))
    assert "already finished" in caplog.text
    assert json.loads(again.strip().splitlines()[-1])["final"]["step"] == 4


def test_num_classes_mismatch_is_a_clear_error(tmp_path, multilabel_data):
    args = tiny_runs.train_args(multilabel_data, tmp_path / "run", "--train_steps=1")
    args[1] = "--num_classes=31"
    with pytest.raises(SystemExit, match="^train.py: error: .*30 classes but the model has 31") as info:
        _run_here("train.py", *args)
    assert "\n" not in str(info.value.code)


def _kill_and_resume(repo_root, script, args, model_dir, *, kill_after_step):
    """Starts the run as a process, kill -9s it once ckpt-`kill_after_step` exists (mid-run), then re-runs it
    to the end (in this process)."""
    proc = subprocess.Popen(
        _cmd(repo_root, script, *args),
        cwd=repo_root,
        env=ENV,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    marker = model_dir / f"ckpt-{kill_after_step}.index"
    deadline = time.time() + 300
    while not marker.exists():
        assert proc.poll() is None, "the run ended before it could be killed"
        assert time.time() < deadline
        time.sleep(0.05)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    # Killed at any point after ckpt-N's data appeared (possibly before its index was renamed into place),
    # but before the end.
    assert not (model_dir / f"ckpt-{args_steps(args)}.index").exists(), "killed too late"
    _run_here(script, *args)


def args_steps(args):
    return next(int(a.split("=")[1]) for a in args if a.startswith("--train_steps="))


@pytest.mark.slow
def test_kill9_resume_equals_an_uninterrupted_run(repo_root, tmp_path, multilabel_data):
    common = ["--train_steps=60", "--checkpoint_every=20", "--log_every=20", "--deterministic"]
    _run_here("train.py", *tiny_runs.train_args(multilabel_data, tmp_path / "straight", *common))
    args = tiny_runs.train_args(multilabel_data, tmp_path / "killed", *common)
    _kill_and_resume(repo_root, "train.py", args, tmp_path / "killed", kill_after_step=20)
    straight = tiny_runs.state(tmp_path / "straight" / "ckpt-60")
    resumed = tiny_runs.state(tmp_path / "killed" / "ckpt-60")
    assert any("pos_count" in n for n in straight) and any(
        n.startswith("optimizer/_variables/") for n in straight
    )
    tiny_runs.assert_same_state(straight, resumed)


@pytest.mark.slow
def test_ckpt3_kill9_resume_across_the_size_switch(repo_root, tmp_path, single_label_data):
    common = [
        f"--data_dir={single_label_data}",
        "--num_classes=10",
        "--image_sizes=32,40@40",
        "--train_steps=60",
        "--checkpoint_every=20",
        "--deterministic",
        "--init_checkpoint=",
        "--noscale_schedule",
        *TINY,
        "--log_every=20",
    ]
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    _run_here("finetune.py", "--ckpt=ckpt3", f"--model_dir={straight}", *common)
    args = ["--ckpt=ckpt3", f"--model_dir={killed}", *common]
    _kill_and_resume(repo_root, "finetune.py", args, killed, kill_after_step=20)
    tiny_runs.assert_same_state(tiny_runs.state(straight / "ckpt-60"), tiny_runs.state(killed / "ckpt-60"))
    # Resuming exactly at the switch (ckpt-40) also lands on the same state.
    for f in straight.glob("ckpt-60.*"):
        f.unlink()
    (straight / "checkpoint").write_text('model_checkpoint_path: "ckpt-40"\n')
    _run_here("finetune.py", "--ckpt=ckpt3", f"--model_dir={straight}", *common)
    tiny_runs.assert_same_state(tiny_runs.state(straight / "ckpt-60"), tiny_runs.state(killed / "ckpt-60"))


def test_finetune_from_a_pretraining_run_with_a_new_head(
    tmp_path, multilabel_data, single_label_data, caplog
):
    pre = tmp_path / "pre"
    _run_here("train.py", *tiny_runs.train_args(multilabel_data, pre, "--train_steps=2"))
    ft = tmp_path / "ft"
    with caplog.at_level(logging.INFO, logger="absl"):
        _run_here(
            "finetune.py",
            "--ckpt=ckpt3",
            f"--init_checkpoint={pre}",
            f"--data_dir={single_label_data}",
            "--num_classes=10",
            f"--model_dir={ft}",
            "--image_sizes=32,40@2",
            "--train_steps=3",
            "--eval_every=3",
            "--eval_steps=2",
            "--noscale_schedule",
            *TINY,
        )
    assert "loaded" in caplog.text and "head skipped" in caplog.text
    config = json.loads((ft / "config.json").read_text())
    assert (config["recipe"], config["model"]["frozen_stages"], config["task"]) == ("ckpt3", 2, "softmax")
    pre_model, ft_model = resnet.build_resnet(14, 30, base_width=4), resnet.build_resnet(14, 10, base_width=4)
    checkpoints.load_model_weights(pre_model, str(pre))
    checkpoints.load_model_weights(ft_model, str(ft))
    for layer in ("init_conv", "stages_1_block_0_conv2_b2"):  # loaded, then frozen (FixBlock2)
        np.testing.assert_array_equal(pre_model.get_layer(layer).kernel, ft_model.get_layer(layer).kernel)
    # Trained after loading: stage 2 moved away from the pre-trained weights.
    name = "stages_2_block_0_conv2_b2"
    assert not np.array_equal(pre_model.get_layer(name).kernel, ft_model.get_layer(name).kernel)
    evals = [json.loads(x) for x in (ft / "metrics.jsonl").read_text().splitlines() if '"eval"' in x]
    assert 0.0 <= evals[-1]["top1"] <= 1.0


def test_nan_loss_stops_and_keeps_the_last_good_checkpoint(tmp_path, multilabel_data):
    config = tiny_runs.nan_at_step_5_config(multilabel_data, tmp_path / "run")
    with pytest.raises(train_step.NonFiniteLossError, match="last good checkpoint is .*ckpt-4"):
        loop.train(config)
    assert tf.train.latest_checkpoint(config.runtime.model_dir).endswith("ckpt-4")
    tiny_runs.assert_all_finite(tf.train.latest_checkpoint(config.runtime.model_dir))


def test_finetune_py_on_imagenet_through_tfds(tmp_path, caplog):
    """finetune.py --tfds_name=imagenet2012 inside `tfds.testing.mock_data` (offline random JPEGs)."""
    tfds = pytest.importorskip("tensorflow_datasets")
    model_dir = tmp_path / "ft"
    args = [
        "--ckpt=ckpt2",
        "--tfds_name=imagenet2012",
        "--init_checkpoint=",
        "--train_steps=2",
        "--eval_every=2",
        "--eval_steps=1",
        "--image_sizes=32",
        "--noscale_schedule",
        f"--model_dir={model_dir}",
        *TINY,
    ]
    with tfds.testing.mock_data(num_examples=24), caplog.at_level(logging.INFO, logger="absl"):
        _run_here("finetune.py", *args)
    config = json.loads((model_dir / "config.json").read_text())
    assert config["data"]["tfds_name"] == "imagenet2012" and config["model"]["num_classes"] == 1000
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == [1, 2]
    assert 0.0 <= next(x for x in lines if x["kind"] == "eval")["top5"] <= 1.0
    # The position of a TFDS stream is a count like any other (the mock's Python generator included).
    position = json.loads((model_dir / "input" / "rank-0" / "ckpt-2.json").read_text())
    assert (position["phase"], position["elements"]) == (0, 2 * config["schedule"]["per_rank_batch"])
