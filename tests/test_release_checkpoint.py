"""Checkpoints written by the release's own kind of TF1 graph code load through every entry point.

tests/release_graph.py (run once, in a subprocess with tf-keras) builds the reference network in
tf.compat.v1 graph mode with tf.compat.v1.layers, trains it 2 steps with the release train.py's loss
counters, global_step and MomentumOptimizer, saves it with tf.compat.v1.train.Saver, and records the
graph's own eval-mode logits and pooled features on fixed inputs; it also writes a FixBlock2 fine-tuning
checkpoint (Momentum slots only for the trained variables, no counters) and the state after a third
pre-training step. Here each entry point loads those files and must reproduce the graph's outputs
(max abs diff <= 1e-4) and take over the counters, slots and step exactly.
"""

import dataclasses
import json
import logging
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from models import pretrained, resnet, tf1_checkpoint
from tests import datasets
from tests.conftest import REPO_ROOT
from tools import convert_checkpoint
from training import checkpoints, loop, recipes, schedules, train_step
from training import config as config_lib

TOLERANCE = 1e-4


@pytest.fixture(scope="module")
def release(tmp_path_factory):
    """Runs tests/release_graph.py once; returns its output folder and constants."""
    pytest.importorskip("tf_keras", reason="tf-keras (the dev extra) runs the TF1 graph code")
    out = tmp_path_factory.mktemp("release")
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "release_graph.py"), str(out)],
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    meta = json.loads((out / "meta.json").read_text())
    return out, meta


def _pretrain(release):
    out, _ = release
    return str(out / "pretrain" / "model.ckpt-2")


def _finetune(release):
    out, _ = release
    return str(out / "finetune" / "model.ckpt-2")


def _eval(release, kind):
    out, _ = release
    with np.load(out / kind / "eval.npz") as f:
        return {k: f[k] for k in f.files}


def _assert_outputs_match(model, expected):
    got = resnet.with_features(model)(expected["images"], training=False)
    for key in ("logits", "features"):
        assert np.abs(expected[key]).max() > 0.1  # a meaningful comparison, not of near-zero outputs
        diff = np.abs(got[key].numpy() - expected[key]).max()
        assert diff <= TOLERANCE, f"{key}: max abs diff {diff}"


def test_the_graph_wrote_the_release_layout(release):
    _, meta = release
    names = dict(tf.train.list_variables(_pretrain(release)))
    assert names["Variable"] == names["Variable_1"] == [meta["num_classes"]]
    assert names["global_step"] == []
    model = resnet.build_resnet(14, meta["num_classes"], base_width=meta["base_width"])
    trainable = {
        resnet.tf1_variable_name(layer.name, v.name)
        for layer in model.layers
        for v in layer.trainable_weights
    }
    assert {n for n in names if n.endswith("/Momentum")} == {f"{n}/Momentum" for n in trainable}
    finetune = dict(tf.train.list_variables(_finetune(release)))
    assert "Variable" not in finetune and "init/init_conv/conv2d/kernel/Momentum" not in finetune
    assert "stages_3_block_0/conv2_b2/conv2d/kernel/Momentum" in finetune


def test_load_tf1_checkpoint_reproduces_the_graph_and_sorts_the_entries(release, caplog):
    _, meta = release
    model = resnet.build_resnet(14, meta["num_classes"], base_width=meta["base_width"])
    with caplog.at_level(logging.INFO, logger="absl"):
        contents = tf1_checkpoint.load_tf1_checkpoint(model, _pretrain(release))
    _assert_outputs_match(model, _eval(release, "pretrain"))
    assert len(contents.model) == len(model.weights)
    assert contents.counters == ("Variable", "Variable_1") and contents.global_step == "global_step"
    assert len(contents.momentum) == len(model.trainable_weights)
    assert not contents.unknown and not contents.other_optimizer
    reports = [r.getMessage() for r in caplog.records if "loaded TF1 checkpoint" in r.getMessage()]
    assert len(reports) == 1 and f"{len(model.trainable_weights)} Momentum slots" in reports[0]
    assert not [r for r in caplog.records if r.levelno >= logging.WARNING]
    # Counters of another head size are other classes: left alone, and said so.
    pos, neg = tf.Variable(tf.ones([5])), tf.Variable(tf.ones([5]))
    taken = tf1_checkpoint.restore_release_state(contents, pos_count=pos, neg_count=neg)
    assert taken == [f"loss counters NOT taken: shape [{meta['num_classes']}] in the checkpoint, [5] here"]
    assert pos.numpy().tolist() == [1.0] * 5


def _convert(release, output):
    """tools/convert_checkpoint.py's conversion of the graph's pretraining checkpoint to ours at `output`
    (the architecture read from the file, as the command line does by default)."""
    return convert_checkpoint.convert(_pretrain(release), output=str(output))


def test_convert_tool(release, tmp_path):
    _, meta = release
    summary = _convert(release, tmp_path / "ours")
    assert (summary["depth"], summary["base_width"]) == (14, meta["base_width"])
    assert summary["head_classes"] == meta["num_classes"]
    assert "Momentum slots" in summary["source"] and "loss counters" in summary["source"]
    model, info = pretrained.load_model(summary["path"])  # ours now: what evaluate.py reads back
    assert info.kind == "ours"
    _assert_outputs_match(model, _eval(release, "pretrain"))


@pytest.mark.parametrize("kind", ["pretrain", "finetune"])
def test_the_evaluate_and_tools_loader(release, kind):
    # pretrained.load_model is what evaluate.py --checkpoint, tools/image_classification.py and
    # tools/extract_feature.py call; the fine-tuning run is given as its directory (its latest checkpoint).
    out, meta = release
    model, info = pretrained.load_model(_pretrain(release) if kind == "pretrain" else str(out / kind))
    assert info.kind == "tf1" and info.path.endswith("model.ckpt-2")
    assert (info.depth, info.base_width) == (14, meta["base_width"])
    assert info.num_classes == meta["num_classes" if kind == "pretrain" else "finetune_classes"]
    _assert_outputs_match(model, _eval(release, kind))


def test_finetune_init_path_skips_the_head(release):
    # finetune.py --init_checkpoint goes through checkpoints.load_model_weights with skip_head.
    _, meta = release
    model = resnet.build_resnet(14, meta["finetune_classes"], base_width=meta["base_width"])
    head = [w.numpy() for w in model.get_layer("logits").weights]
    contents = checkpoints.load_model_weights(model, _pretrain(release), skip_head=True)
    assert contents.head == ("logits/dense/bias", "logits/dense/kernel")
    for w, before in zip(model.get_layer("logits").weights, head, strict=True):
        np.testing.assert_array_equal(w.numpy(), before)
    expected = _eval(release, "pretrain")
    features = resnet.with_features(model)(expected["images"], training=False)["features"].numpy()
    assert np.abs(features - expected["features"]).max() <= TOLERANCE


def test_unknown_entry_is_a_warning_and_loads(release, tmp_path, caplog):
    _, meta = release
    reader = tf.train.load_checkpoint(_pretrain(release))
    values = {n: reader.get_tensor(n) for n, _ in tf.train.list_variables(_pretrain(release))}
    values["ExponentialMovingAverage/some_metric"] = np.ones([3], "float32")
    with tf.Graph().as_default():
        variables = [tf.compat.v1.get_variable(n, initializer=v) for n, v in values.items()]
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "model.ckpt"), write_meta_graph=False)
    model = resnet.build_resnet(14, meta["num_classes"], base_width=meta["base_width"])
    with caplog.at_level(logging.INFO, logger="absl"):
        contents = tf1_checkpoint.load_tf1_checkpoint(model, prefix)
    assert contents.unknown == ("ExponentialMovingAverage/some_metric",)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "ExponentialMovingAverage/some_metric" in warnings[0]
    _assert_outputs_match(model, _eval(release, "pretrain"))


def test_a_missing_model_variable_still_fails_listing_all(release, tmp_path):
    _, meta = release
    reader = tf.train.load_checkpoint(_pretrain(release))
    dropped = {"stages_1_block_0/conv2_b2/conv2d/kernel", "global_pool/bn/batch_normalization/moving_mean"}
    values = {
        n: reader.get_tensor(n) for n, _ in tf.train.list_variables(_pretrain(release)) if n not in dropped
    }
    with tf.Graph().as_default():
        variables = [tf.compat.v1.get_variable(n, initializer=v) for n, v in values.items()]
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            prefix = saver.save(sess, str(tmp_path / "model.ckpt"), write_meta_graph=False)
    model = resnet.build_resnet(14, meta["num_classes"], base_width=meta["base_width"])
    with pytest.raises(tf1_checkpoint.TF1CheckpointMismatchError, match=r"missing \(2\)") as error:
        tf1_checkpoint.load_tf1_checkpoint(model, prefix)
    assert all(name in str(error.value) for name in dropped)


# ------------------------------------------------------------------------------ train.py --init_checkpoint


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return datasets.multilabel(tmp_path_factory.mktemp("demo"))


def _config(release, demo_data, model_dir, **overrides):
    _, meta = release
    assert demo_data.num_classes == meta["num_classes"]  # release_graph.py uses the demo's class count
    fields = dict(
        model=config_lib.ModelConfig(
            depth=14, base_width=meta["base_width"], num_classes=meta["num_classes"]
        ),
        data=dataclasses.replace(recipes.PRETRAIN.data, data_dir=demo_data.data_dir, shuffle_buffer=8),
        learning_rate=schedules.StaircaseSchedule(base_lr=meta["learning_rate"], decay=1.0, decay_every=1000),
        train_steps=3,
        per_rank_batch=4,
        reference_global_batch=4,
        image_sizes=((0, 32),),
        log_every=1,
        checkpoint_every=1000,
        mask_thres=meta["mask_thres"],
        neg_select=meta["neg_select"],
        pos_weight=meta["pos_weight"],
        weight_decay=meta["weight_decay"],
        momentum=meta["momentum"],
        model_dir=str(model_dir),
        init_checkpoint=_pretrain(release),
    )
    config = config_lib.replace(recipes.PRETRAIN, **{**fields, **overrides})
    config_lib.validate(config)
    return config


def _initialised(config):
    run = loop._build(config, loop.distributed.Distributed())
    return run, loop._initialise(run)


def test_train_init_takes_weights_and_counters_but_not_the_optimizer_by_default(release, demo_data, tmp_path):
    reader = tf.train.load_checkpoint(_pretrain(release))
    run, step = _initialised(_config(release, demo_data, tmp_path))
    assert step == 0
    np.testing.assert_array_equal(run.step.loss.pos_count.numpy(), reader.get_tensor("Variable"))
    np.testing.assert_array_equal(run.step.loss.neg_count.numpy(), reader.get_tensor("Variable_1"))
    assert reader.get_tensor("Variable").max() >= 1 and reader.get_tensor("Variable_1").max() >= 1
    assert all(not np.any(m.numpy()) for m in run.step.momentum_variables())
    _assert_outputs_match(run.model, _eval(release, "pretrain"))


def test_train_init_with_optimizer_state_continues_the_release_run(release, demo_data, tmp_path, caplog):
    out, _ = release
    reader = tf.train.load_checkpoint(_pretrain(release))
    config = _config(release, demo_data, tmp_path, init_optimizer_state=True)
    with caplog.at_level(logging.INFO, logger="absl"):
        run, step = _initialised(config)
    assert step == 2
    names = {id(v): n for n, v in tf1_checkpoint.tf1_variable_map(run.model).items()}
    slots = run.step.momentum_variables()
    assert len(slots) == len(run.model.trainable_weights)
    for variable, slot in zip(run.step.train_variables, slots, strict=True):
        np.testing.assert_array_equal(slot.numpy(), reader.get_tensor(names[id(variable)] + "/Momentum"))
    np.testing.assert_array_equal(run.step.loss.pos_count.numpy(), reader.get_tensor("Variable"))
    log = "\n".join(r.getMessage() for r in caplog.records)
    assert "loss counters (Variable -> pos_count, Variable_1 -> neg_count)" in log
    assert f"Momentum slots of {len(slots)} trained variables" in log and "global_step 2" in log

    # One more step on the graph's third batch reproduces the graph's third step: the same loss, counters,
    # weight decay, fused BatchNorm update and MomentumOptimizer accumulator (neg_select 1: no random draw).
    with np.load(out / "pretrain" / "batch3.npz") as f:
        run.step(f["images"], f["labels"])
    after = tf.train.load_checkpoint(str(out / "pretrain" / "model.ckpt-3"))
    np.testing.assert_array_equal(run.step.loss.pos_count.numpy(), after.get_tensor("Variable"))
    np.testing.assert_array_equal(run.step.loss.neg_count.numpy(), after.get_tensor("Variable_1"))
    assert int(run.step.global_step.numpy()) == int(after.get_tensor("global_step")) == 3
    worst = {}
    for name, variable in tf1_checkpoint.tf1_variable_map(run.model).items():
        want = after.get_tensor(name)
        worst[name] = np.abs(variable.numpy() - want).max() / max(1.0, np.abs(want).max())
    for variable, slot in zip(run.step.train_variables, slots, strict=True):
        want = after.get_tensor(names[id(variable)] + "/Momentum")
        worst[names[id(variable)] + "/Momentum"] = np.abs(slot.numpy() - want).max() / max(
            1.0, np.abs(want).max()
        )
    assert max(worst.values()) <= 1e-4, sorted(worst.items(), key=lambda kv: -kv[1])[:5]


@pytest.mark.slow
def test_train_py_continues_from_the_release_step(release, demo_data, tmp_path, caplog):
    config = _config(release, demo_data, tmp_path, init_optimizer_state=True)
    with caplog.at_level(logging.INFO, logger="absl"):
        result = loop.train(config)
    assert result["step"] == 3  # steps 2 -> 3: one step run, after the release's two
    assert checkpoints.latest_step(config.runtime.model_dir) == 3
    assert "initialised from TF1 checkpoint" in "\n".join(r.getMessage() for r in caplog.records)


def test_finetune_checkpoint_slots_cover_only_its_trained_variables(release):
    # FixBlock2 trains exactly the variables that have slots in the fine-tuning file: all are taken over.
    _, meta = release
    schedule = schedules.StaircaseSchedule(base_lr=0.1, decay=1.0, decay_every=1000)
    model = resnet.build_resnet(14, meta["finetune_classes"], base_width=meta["base_width"])
    contents = checkpoints.load_model_weights(model, _finetune(release))
    step = train_step.TrainStep(
        model, train_step.make_optimizer(), task="softmax", schedule=schedule, frozen_stages=2
    )
    names = {id(v): n for n, v in tf1_checkpoint.tf1_variable_map(model).items()}
    slots = dict(zip((names[id(v)] for v in step.train_variables), step.momentum_variables(), strict=True))
    taken = tf1_checkpoint.restore_release_state(contents, momentum=slots, global_step=step.global_step)
    assert int(step.global_step.numpy()) == 2 and any("Momentum slots" in line for line in taken)
    reader = tf.train.load_checkpoint(_finetune(release))
    for name, slot in slots.items():
        np.testing.assert_array_equal(slot.numpy(), reader.get_tensor(name + "/Momentum"))
    # Training everything would need slots the file does not have: a clear error naming them.
    all_step = train_step.TrainStep(model, train_step.make_optimizer(), task="softmax", schedule=schedule)
    all_slots = dict(
        zip((names[id(v)] for v in all_step.train_variables), all_step.momentum_variables(), strict=True)
    )
    with pytest.raises(ValueError, match="no Momentum slot for init/init_conv/conv2d/kernel"):
        tf1_checkpoint.restore_release_state(contents, momentum=all_slots)
    assert not np.any(all_step.momentum_variables()[-1].numpy())  # nothing assigned on error


def test_init_optimizer_state_needs_a_tf1_checkpoint(release, demo_data, tmp_path):
    ours = _convert(release, tmp_path / "ours")
    config = _config(
        release, demo_data, tmp_path / "run", init_checkpoint=ours["path"], init_optimizer_state=True
    )
    with pytest.raises(ValueError, match="use its --model_dir"):
        _initialised(config)


def test_momentum_variables_under_loss_scaling():
    # fp16 wraps TF1Momentum in a LossScaleOptimizer: the slots are the inner optimizer's accumulators.
    model = resnet.build_resnet(14, 3, base_width=4)
    optimizer = train_step.make_optimizer(precision="fp16")
    step = train_step.TrainStep(
        model, optimizer, task="softmax", schedule=schedules.StaircaseSchedule(), frozen_stages=2
    )
    slots = step.momentum_variables()
    assert len(slots) == len(step.train_variables) < len(model.trainable_weights)
    inner = {id(v) for v in optimizer.inner_optimizer.momentums}
    assert all(id(s) in inner for s in slots)
    for variable, slot in zip(step.train_variables, slots, strict=True):
        assert tuple(slot.shape) == tuple(variable.shape)
