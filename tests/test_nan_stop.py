"""The loop's NaN stop without a per-step host read: it stops at the next log/save with nothing written."""

import dataclasses

import numpy as np
import pytest
import tensorflow as tf

from tests import datasets
from training import config as config_lib
from training import loop, recipes, schedules, train_step


def test_nan_between_logs_stops_at_the_next_log_or_save_with_the_last_good_checkpoint(tmp_path):
    data = datasets.multilabel(tmp_path / "data")
    config = dataclasses.replace(
        recipes.PRETRAIN,
        model=config_lib.ModelConfig(depth=14, base_width=4, num_classes=data.num_classes),
        data=dataclasses.replace(recipes.PRETRAIN.data, data_dir=data.data_dir, shuffle_buffer=16),
        # 0.01 for steps 0-3; step 4 applies an infinite rate, so the loss of step 5 is NaN.
        schedule=schedules.ReferencePretrainSchedule(
            warmup_steps=0, boundaries=(3,), values=(0.01, float("inf"))
        ),
        train_steps=50,
        per_rank_batch=8,
        reference_global_batch=8,
        image_sizes=((0, 32),),
        checkpoint_every=4,
        log_every=7,  # the host first looks after the 7th step: the NaN step 5 and step 6 were dispatched unread
        model_dir=str(tmp_path / "run"),
    )
    with pytest.raises(train_step.NonFiniteLossError, match=r"at step 5 .*last good checkpoint is .*ckpt-4"):
        loop.train(config)
    latest = tf.train.latest_checkpoint(config.model_dir)
    assert latest.endswith("ckpt-4")  # step 8's save never happened
    reader = tf.train.load_checkpoint(latest)
    for name, _ in tf.train.list_variables(latest):
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), name
