"""class_status=local on 2 Horovod (Gloo) ranks: per-rank counters that differ and survive a resume exactly."""

import numpy as np
import pytest
import tensorflow as tf

from tests import datasets, hvd
from training import checkpoints

pytestmark = [pytest.mark.horovod, pytest.mark.slow]


def _counters(model_dir, rank, step):
    reader = tf.train.load_checkpoint(checkpoints.rank_state_prefix(str(model_dir), rank, step))
    return [reader.get_tensor(f"v{i}/.ATTRIBUTES/VARIABLE_VALUE") for i in (0, 1)]  # pos_count, neg_count


def test_local_counters_differ_between_ranks_and_survive_a_resume(tmp_path, repo_root):
    data = datasets.multilabel(tmp_path / "data")
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
        "--noscale_schedule",
        "--class_status=local",
    ]
    whole, parts = tmp_path / "whole", tmp_path / "parts"
    hvd.run_two_ranks([*args, f"--model_dir={whole}", "--train_steps=4"], cwd=repo_root)
    hvd.run_two_ranks([*args, f"--model_dir={parts}", "--train_steps=2"], cwd=repo_root)
    resumed = hvd.run_two_ranks([*args, f"--model_dir={parts}", "--train_steps=4"], cwd=repo_root)
    assert "restart from 0" not in resumed.stdout + resumed.stderr
    # The ranks' batches differ, so do their counters (with class_status=global they are equal).
    for step in (2, 4):
        pos0, _ = _counters(whole, 0, step)
        pos1, _ = _counters(whole, 1, step)
        assert not np.array_equal(pos0, pos1), step
    # The chief's run checkpoint holds rank 0's counters.
    run = tf.train.load_checkpoint(str(whole / "ckpt-4"))
    np.testing.assert_array_equal(
        run.get_tensor("loss/pos_count/.ATTRIBUTES/VARIABLE_VALUE"), _counters(whole, 0, 4)[0]
    )
    # Resumed at step 2 on each rank, steps 3-4 give exactly the uninterrupted run's counters. Had rank 1
    # taken the chief's counters (or zeros) at the resume, its run lengths would differ.
    for rank in (0, 1):
        for got, want in zip(_counters(parts, rank, 4), _counters(whole, rank, 4), strict=True):
            np.testing.assert_array_equal(got, want, err_msg=f"rank {rank}")
