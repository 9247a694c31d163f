"""Training on 2 Horovod (Gloo) ranks: identical ranks, equal to one process on the global batch; train.py
under horovodrun checkpoints, evaluates and resumes on both ranks, with class_status=local per-rank counters
that differ and survive a resume exactly."""

import json

import numpy as np
import pytest
import tensorflow as tf

from tests import datasets, hvd, hvd_train_worker
from training import checkpoints

pytestmark = pytest.mark.horovod


def _load(path):
    with np.load(path) as f:
        return {k: f[k] for k in f.files}


def test_two_ranks_equal_one_process_on_the_global_batch(tmp_path_factory):
    out = hvd.worker_outputs(tmp_path_factory)  # tests/hvd_train_worker.py ran on 2 ranks
    r0, r1 = (_load(out / f"train_rank{r}.npz") for r in (0, 1))
    one = hvd_train_worker.one_process_train_state()  # this process, the whole batch as 2 micro-batches
    assert r0.keys() == r1.keys() == one.keys()
    for name in r0:  # every variable, bit for bit equal on both ranks
        np.testing.assert_array_equal(r0[name], r1[name], err_msg=name)
    # And equal, up to fp32 summation order, to one process with two micro-batches. Measured (fused BN over
    # 4 images): the largest gap is 8e-6 of a tensor's scale after one step and 1.2e-4 after two (momentum
    # and tiny-batch BN amplify it). A semantic difference fails by far: one process normalising over all 8
    # images (no micro-batches) put 133 state tensors beyond 1e-3 of their scale, the worst 4x off.
    for name in r0:
        scale = max(1.0, float(np.abs(one[name]).max()))
        np.testing.assert_allclose(r0[name], one[name], rtol=0, atol=1e-3 * scale, err_msg=name)
    assert int(r0["step"]) == 2
    for name in ("pos_count", "neg_count"):  # run lengths: small integers, exactly equal
        np.testing.assert_array_equal(r0[name], one[name])
        assert r0[name].max() >= 1


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Four `horovodrun ... train.py` launches with class_status=local, shared by the tests below.

    "parts": 3 steps (a checkpoint at 2, the final one at 3, an evaluation at 3), resumed to 5, then
    launched again when already finished; "whole": the same 5 steps uninterrupted. Returns the model dirs
    and each launch's output (stdout + stderr).
    """
    data = datasets.multilabel(tmp_path_factory.mktemp("hvd_data"))
    root = tmp_path_factory.mktemp("runs")
    args = [
        "train.py",
        f"--data_dir={data.data_dir}",
        f"--num_classes={data.num_classes}",
        "--depth=14",
        "--base_width=4",
        "--per_rank_batch=4",
        "--image_sizes=32",
        "--shuffle_buffer=8",
        "--log_every=1",
        "--checkpoint_every=2",
        "--eval_every=3",
        "--eval_steps=1",
        "--class_status=local",
    ]
    cwd = hvd.REPO_ROOT
    logs = {}
    for name, model_dir, steps in (
        ("first", "parts", 3),
        ("resumed", "parts", 5),
        ("finished", "parts", 5),
        ("whole", "whole", 5),
    ):
        proc = hvd.run_two_ranks(
            [*args, f"--model_dir={root / model_dir}", f"--train_steps={steps}"], cwd=cwd
        )
        logs[name] = proc.stdout + proc.stderr
        if name == "first":  # the state the first launch left, before the resume changes it
            logs["first_checkpoint"] = tf.train.latest_checkpoint(str(root / "parts"))
    return root / "parts", root / "whole", logs


def test_horovodrun_train_py_checkpoints_and_resumes_on_both_ranks(runs):
    parts, _, logs = runs
    config = json.loads((parts / "config.json").read_text())
    assert (config["schedule"]["num_ranks"], config["schedule"]["global_batch"]) == (2, 8)
    assert logs["first_checkpoint"].endswith(
        "ckpt-3"
    )  # the final step is saved, off the checkpoint_every grid
    assert {p.name for p in (parts / "input").iterdir()} == {"rank-0", "rank-1"}
    assert "eval at step 3" in logs["first"]
    # Resumed on both ranks and continued; then a run that is already finished ends on both ranks (no hang).
    assert "from step 3 to 5" in logs["resumed"]
    assert tf.train.latest_checkpoint(str(parts)).endswith("ckpt-5")
    assert logs["finished"].count("already finished") >= 2


def _counters(model_dir, rank, step):
    reader = tf.train.load_checkpoint(checkpoints.rank_state_prefix(str(model_dir), rank, step))
    return [reader.get_tensor(f"v{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in (0, 1)]  # pos_count, neg_count


def test_local_counters_differ_between_ranks_and_survive_a_resume(runs):
    parts, whole, logs = runs
    assert "restart from 0" not in logs["resumed"]
    # The ranks' batches differ, so do their counters (with class_status=global they are equal).
    for step in (2, 4, 5):
        pos0, _ = _counters(whole, 0, step)
        pos1, _ = _counters(whole, 1, step)
        assert not np.array_equal(pos0, pos1), step
    # The chief's run checkpoint holds rank 0's counters.
    run = tf.train.load_checkpoint(str(whole / "ckpt-5"))
    np.testing.assert_array_equal(
        run.get_tensor("loss/pos_count/.ATTRIBUTES/VARIABLE_VALUE"), _counters(whole, 0, 5)[0]
    )
    # Resumed at step 3 on each rank, steps 4-5 give exactly the uninterrupted run's counters. Had rank 1
    # taken the chief's counters (or zeros) at the resume, its run lengths would differ.
    for rank in (0, 1):
        for got, want in zip(_counters(parts, rank, 5), _counters(whole, rank, 5), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"rank {rank}")
