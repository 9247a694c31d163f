"""The loop's NaN stop without a per-step host read: it stops at the next log/save with nothing written."""

import pytest
import tensorflow as tf

from tests import datasets, tiny_runs
from training import loop, train_step


def test_nan_between_logs_stops_at_the_next_log_or_save_with_the_last_good_checkpoint(tmp_path):
    data = datasets.multilabel(tmp_path / "data", num_train=16, num_val=8)
    config = tiny_runs.nan_at_step_5_config(
        data,
        tmp_path / "run",
        checkpoint_every=4,
        log_every=7,  # the host first looks after the 7th step: the NaN step 5 and step 6 were dispatched unread
    )
    with pytest.raises(train_step.NonFiniteLossError, match=r"at step 5 .*last good checkpoint is .*ckpt-4"):
        loop.train(config)
    latest = tf.train.latest_checkpoint(config.runtime.model_dir)
    assert latest.endswith("ckpt-4")  # step 8's save never happened
    tiny_runs.assert_all_finite(latest)
