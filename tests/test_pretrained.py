"""models/architecture.py (which ResNet a checkpoint holds), models/pretrained.py (load_model) and models/resnet.parse_layer_name."""

import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import architecture, checkpoint_files, pretrained, resnet, tf1_checkpoint

NUM_CLASSES = 7
BASE_WIDTH = 2


@pytest.mark.parametrize(
    "name, expected",
    [
        ("stages_2_block_17_conv2_b2_bn", (2, 17, "conv2_b2_bn")),
        ("stages_0_block_0_conv1_b1", (0, 0, "conv1_b1")),
        ("stages_3_block_2_conv3_b2_bn_relu", (3, 2, "conv3_b2_bn_relu")),
        ("stages_1_block_0_add", (1, 0, "add")),
        ("stages_10_block_35_conv2_b2_pad", (10, 35, "conv2_b2_pad")),
        ("init_conv", None),
        ("global_pool_bn", None),
        ("logits", None),
        ("stages_x_block_0_conv1_b2", None),
        ("stages_0_block_0", None),
    ],
)
def test_parse_layer_name_table(name, expected):
    assert resnet.parse_layer_name(name) == expected


@pytest.mark.parametrize("depth", [14, 50])
def test_parse_layer_name_finds_every_block_of_the_model(depth):
    model = resnet.build_resnet(depth, NUM_CLASSES, base_width=BASE_WIDTH)
    blocks: dict[int, set[int]] = {}
    for layer in model.layers:
        parsed = resnet.parse_layer_name(layer.name)
        if layer.weights and parsed is None:
            assert layer.name in (resnet.STEM_LAYER, resnet.HEAD_BN_LAYER, resnet.LOGITS_LAYER)
        elif layer.weights:
            assert parsed.part in resnet.BLOCK_CONV_PARTS + resnet.BLOCK_BN_PARTS
            blocks.setdefault(parsed.stage, set()).add(parsed.block)
    assert tuple(len(blocks[stage]) for stage in sorted(blocks)) == resnet.BLOCKS_PER_STAGE[depth]


def write_release_checkpoint(path, values, *, num_classes):
    """A TF1 checkpoint as the release's train.py saves it: the model, global_step, a Momentum slot per
    trainable variable (same shape) and the unnamed loss counters `Variable` and `Variable_1`."""
    with tf.Graph().as_default():
        variables = []
        for name, value in values.items():
            scope, leaf = name.rsplit("/", 1)
            with tf.compat.v1.variable_scope(scope):
                variables.append(tf.compat.v1.get_variable(leaf, initializer=value))
            if not leaf.startswith("moving_"):
                with tf.compat.v1.variable_scope(name):
                    variables.append(tf.compat.v1.get_variable("Momentum", initializer=np.ones_like(value)))
        variables.append(tf.compat.v1.train.get_or_create_global_step())
        variables.append(tf.compat.v1.Variable(np.zeros(num_classes, np.float32), trainable=False))
        variables.append(tf.compat.v1.Variable(np.zeros(num_classes, np.float32), trainable=False))
        assert [v.op.name for v in variables[-2:]] == ["Variable", "Variable_1"]
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, str(path), write_meta_graph=False)


def test_tf1_architecture_ignores_step_slots_and_loss_counters(tmp_path):
    model = resnet.build_resnet(50, NUM_CLASSES, base_width=BASE_WIDTH)
    values = {name: v.numpy() for name, v in tf1_checkpoint.tf1_variable_map(model).items()}
    prefix = write_release_checkpoint(tmp_path / "model.ckpt", values, num_classes=NUM_CLASSES)
    names = {name for name, _ in tf.train.list_variables(prefix)}
    assert {"global_step", "Variable", "Variable_1", "logits/dense/kernel/Momentum"} <= names
    expected = {"depth": 50, "base_width": BASE_WIDTH, "num_classes": NUM_CLASSES, "kind": "tf1"}
    assert architecture.checkpoint_architecture(prefix) == expected
    assert architecture.checkpoint_architecture(str(tmp_path)) == expected  # a directory: its latest
    assert architecture.is_tf1_checkpoint(prefix)


def test_tf1_architecture_rejects_blocks_of_no_known_depth(tmp_path):
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=BASE_WIDTH)
    values = {name: v.numpy() for name, v in tf1_checkpoint.tf1_variable_map(model).items()}
    values = {n: v for n, v in values.items() if not n.startswith("stages_3_block_0/")}  # stage 3 gone
    prefix = write_release_checkpoint(tmp_path / "model.ckpt", values, num_classes=NUM_CLASSES)
    with pytest.raises(
        checkpoint_files.CheckpointError, match=r"blocks per stage \(1, 1, 1\) match no ResNet"
    ):
        architecture.checkpoint_architecture(prefix)


def test_our_run_checkpoint_architecture_and_strict_load(tmp_path):
    """A run checkpoint (model + optimizer slots + step): the architecture from shapes, the same outputs."""
    keras.utils.set_random_seed(1)
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=BASE_WIDTH)
    optimizer = keras.optimizers.SGD(0.1, momentum=0.9)
    optimizer.build(model.trainable_variables)
    step = tf.Variable(5, dtype=tf.int64)
    prefix = tf.train.Checkpoint(model=model, optimizer=optimizer, step=step).write(str(tmp_path / "ckpt-5"))
    expected = {"depth": 14, "base_width": BASE_WIDTH, "num_classes": NUM_CLASSES, "kind": "ours"}
    assert architecture.checkpoint_architecture(prefix) == expected
    assert not architecture.is_tf1_checkpoint(prefix)
    loaded, info = pretrained.load_model(prefix)
    assert (info.kind, info.depth, info.base_width, info.num_classes, info.path) == ("ours", 14, 2, 7, prefix)
    images = np.random.default_rng(0).uniform(-1, 1, (2, 32, 32, 3)).astype(np.float32)
    np.testing.assert_allclose(loaded(images, training=False), model(images, training=False), rtol=1e-6)
    with pytest.raises(checkpoint_files.CheckpointError, match="depth 50 was asked for"):
        pretrained.load_model(prefix, depth=50)


def test_checkpoint_errors_are_checkpoint_errors(tmp_path):
    with pytest.raises(checkpoint_files.CheckpointError, match="not found"):
        pretrained.load_model(str(tmp_path / "absent"))
    with pytest.raises(checkpoint_files.CheckpointError, match="no checkpoint in directory"):
        architecture.checkpoint_architecture(str(tmp_path))
    prefix = tf.train.Checkpoint(x=tf.Variable([1.0, 2.0])).write(str(tmp_path / "other"))
    with pytest.raises(checkpoint_files.CheckpointError, match="does not hold one of our ResNet checkpoints"):
        pretrained.load_model(prefix)


def test_the_loader_imports_no_training_module(repo_root):
    """models/pretrained.py is the public loader: importing it must not pull in the training package."""
    code = "import sys\nimport models.pretrained\nprint([m for m in sys.modules if m.split('.')[0] == 'training'])"
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "[]"
