"""class_status: the loss's batch status decided on the global batch (default) or on each rank's own batch.

One process here; tests/test_train_distributed.py runs train.py on 2 Horovod ranks with class_status=local.
"""

import dataclasses
import functools
import json
import logging

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import losses, resnet
from tests import datasets, entry_points
from training import checkpoints, distributed, loop, recipes, schedules, train_step
from training import config as config_lib

NUM_CLASSES = 8


def _batches(steps=3, n=4, seed=0):
    rng = np.random.default_rng(seed)
    for _ in range(steps):
        images = rng.uniform(-1, 1, (n, 32, 32, 3)).astype("float32")
        labels = rng.choice([0.0, 0.8, 1.0, -1.0], p=[0.75, 0.05, 0.15, 0.05], size=(n, NUM_CLASSES))
        yield images, labels.astype("float32")


class _OtherRankPositives(distributed.Distributed):
    """One process that pretends another rank's batch made every class positive (its sum adds 1 each)."""

    def allreduce_sum(self, tensor):
        return tf.convert_to_tensor(tensor) + 1.0


@functools.cache
def _run(class_status, *, other_rank=False):
    """(per-step loss and counters, final weights) of 3 steps; other_rank: with `_OtherRankPositives`."""
    dist = _OtherRankPositives() if other_rank else None
    keras.utils.set_random_seed(0)
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
    step = train_step.TrainStep(
        model,
        train_step.make_optimizer(),
        task="multilabel",
        schedule=schedules.StaircaseSchedule(base_lr=0.01, decay=1.0, decay_every=100),
        dist=dist,
        loss=losses.AdaptiveMultiLabelLoss(NUM_CLASSES, neg_select=0.5, seed=3),
        class_status=class_status,
    )
    record = []
    for images, labels in _batches():
        logs = step(images, labels)
        record.append((float(logs["loss"]), step.loss.pos_count.numpy(), step.loss.neg_count.numpy()))
    return record, [v.numpy() for v in model.weights]


def test_one_process_local_equals_global_exactly():
    (local, local_weights), (glob, global_weights) = _run("local"), _run("global")
    for (loss_l, pos_l, neg_l), (loss_g, pos_g, neg_g) in zip(local, glob, strict=True):
        assert loss_l == loss_g
        np.testing.assert_array_equal(pos_l, pos_g)
        np.testing.assert_array_equal(neg_l, neg_g)
    for a, b in zip(local_weights, global_weights, strict=True):
        np.testing.assert_array_equal(a, b)
    assert local[-1][1].max() >= 1 and local[-1][2].max() >= 1  # the counters did run


def test_local_ignores_the_other_ranks_and_global_does_not():
    # With another rank's positives in the sum, "global" sees every class positive; "local" sees its own.
    alone, _ = _run("local")
    local, _ = _run("local", other_rank=True)
    glob, _ = _run("global", other_rank=True)
    for (_, pos_a, _), (_, pos_l, _) in zip(alone, local, strict=True):
        np.testing.assert_array_equal(pos_a, pos_l)
    np.testing.assert_array_equal(glob[-1][1], np.full(NUM_CLASSES, 3.0))  # positive in all 3 steps
    assert not np.array_equal(local[-1][1], glob[-1][1])


def test_local_counters_are_rank_state_not_broadcast():
    _, step = _step_for("local")
    state = {id(v) for v in step.state_variables()}
    assert [id(v) for v in step.rank_local_variables()] == [id(step.loss.pos_count), id(step.loss.neg_count)]
    assert id(step.loss.pos_count) not in state and id(step.loss.generator.state) in state
    _, glob = _step_for("global")
    assert glob.rank_local_variables() == [] and id(glob.loss.pos_count) in {
        id(v) for v in glob.state_variables()
    }


def _step_for(class_status):
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
    return model, train_step.TrainStep(
        model,
        train_step.make_optimizer(),
        task="multilabel",
        schedule=schedules.StaircaseSchedule(),
        loss=losses.AdaptiveMultiLabelLoss(NUM_CLASSES),
        class_status=class_status,
    )


def test_config_validation():
    base = config_lib.replace(recipes.PRETRAIN, class_status="local")
    config_lib.validate(base)
    with pytest.raises(ValueError, match="class_status must be one of"):
        config_lib.validate(config_lib.replace(base, class_status="per_gpu"))
    with pytest.raises(ValueError, match="class_status=local needs accum_steps=1"):
        config_lib.validate(config_lib.replace(base, accum_steps=2))


def test_train_py_flag():
    report = json.loads(entry_points.run(["--dry_run", "--class_status=local"]))
    assert report["loss"]["class_status"] == "local"
    assert recipes.PRETRAIN.loss.class_status == "global"  # the default: today's behaviour


def test_rank_state_round_trip_and_reset(tmp_path, caplog):
    pos, neg = tf.Variable([1.0, 2.0, 0.0]), tf.Variable([0.0, 0.0, 5.0])
    kwargs = dict(model_dir=str(tmp_path), rank=1)
    checkpoints.save_rank_state([pos, neg], num_ranks=2, step=4, keep=2, **kwargs)
    for step in (6, 8):
        checkpoints.save_rank_state([pos, neg], num_ranks=2, step=step, keep=2, **kwargs)
    kept = sorted(p.name for p in (tmp_path / "input" / "rank-1").glob("loss-*.index"))
    assert kept == ["loss-6.index", "loss-8.index"]
    pos.assign([9.0, 9.0, 9.0])
    neg.assign([9.0, 9.0, 9.0])
    assert checkpoints.restore_rank_state([pos, neg], num_ranks=2, step=8, **kwargs)
    np.testing.assert_array_equal(pos.numpy(), [1.0, 2.0, 0.0])
    np.testing.assert_array_equal(neg.numpy(), [0.0, 0.0, 5.0])
    with caplog.at_level(logging.WARNING):
        assert not checkpoints.restore_rank_state([pos, neg], num_ranks=3, step=8, **kwargs)
    assert "saved on 2 ranks, this run has 3" in caplog.text
    np.testing.assert_array_equal(pos.numpy(), [0.0, 0.0, 0.0])
    neg.assign([1.0, 1.0, 1.0])
    with caplog.at_level(logging.WARNING):
        assert not checkpoints.restore_rank_state([pos, neg], num_ranks=2, step=10, **kwargs)
    assert "were not saved at step 10" in caplog.text
    np.testing.assert_array_equal(neg.numpy(), [0.0, 0.0, 0.0])


@pytest.mark.slow
def test_local_resume_restores_the_counters_in_one_process(tmp_path_factory):
    data = datasets.multilabel(tmp_path_factory.mktemp("data"))

    def config(model_dir, train_steps):
        return config_lib.replace(
            recipes.PRETRAIN,
            model=config_lib.ModelConfig(depth=14, base_width=4, num_classes=data.num_classes),
            data=dataclasses.replace(recipes.PRETRAIN.data, data_dir=data.data_dir, shuffle_buffer=8),
            learning_rate=schedules.StaircaseSchedule(base_lr=0.01, decay=1.0, decay_every=100),
            train_steps=train_steps,
            per_rank_batch=4,
            reference_global_batch=4,
            image_sizes=((0, 32),),
            checkpoint_every=2,
            log_every=1,
            class_status="local",
            model_dir=str(model_dir),
        )

    whole, parts = tmp_path_factory.mktemp("whole"), tmp_path_factory.mktemp("parts")
    loop.train(config(whole, 4))
    loop.train(config(parts, 2))
    loop.train(config(parts, 4))
    for step in (2, 4):
        a = tf.train.load_checkpoint(checkpoints.rank_state_prefix(str(whole), 0, step))
        b = tf.train.load_checkpoint(checkpoints.rank_state_prefix(str(parts), 0, step))
        for name in ("v0", "v1"):
            key = f"{name}/.ATTRIBUTES/VARIABLE_VALUE"
            np.testing.assert_array_equal(a.get_tensor(key), b.get_tensor(key))
    # One rank: its own file holds what the chief's run checkpoint holds.
    run = tf.train.load_checkpoint(str(whole / "ckpt-4"))
    own = tf.train.load_checkpoint(checkpoints.rank_state_prefix(str(whole), 0, 4))
    np.testing.assert_array_equal(
        run.get_tensor("loss/pos_count/.ATTRIBUTES/VARIABLE_VALUE"),
        own.get_tensor("v0/.ATTRIBUTES/VARIABLE_VALUE"),
    )
