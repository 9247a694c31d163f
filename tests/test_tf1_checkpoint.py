"""models/tf1_checkpoint.py and tools/convert_checkpoint.py against TF1-format checkpoints written here.

The checkpoints are written the way the release's did (graph-mode tf.compat.v1 variables under the
reference scopes, tf.compat.v1.train.Saver, plus `global_step` and Momentum slots), and the loaded model is
compared with an independent forward pass written with plain tf.nn ops from docs/REFERENCE.md section 2.
"""

import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from models import resnet, tf1_checkpoint
from tools import convert_checkpoint

BLOCKS = (1, 1, 1, 1)  # depth 14
BASE_WIDTH = 8
BN_VARS = ("gamma", "beta", "moving_mean", "moving_variance")


def reference_shapes(num_classes):
    """{TF1 name: shape} of the reference ResNet (depth 14, base width 8), from the architecture description."""
    shapes = {"init/init_conv/conv2d/kernel": (7, 7, 3, BASE_WIDTH)}
    channels = BASE_WIDTH
    for i, num_blocks in enumerate(BLOCKS):
        width = BASE_WIDTH * 2**i
        for j in range(num_blocks):
            s = f"stages_{i}_block_{j}"
            convs = {"conv1_b2": (1, 1, channels, width), "conv2_b2": (3, 3, width, width)}
            convs["conv3_b2"] = (1, 1, width, 4 * width)
            if j == 0:
                convs["conv1_b1"] = (1, 1, channels, 4 * width)
            for conv, kernel in convs.items():
                shapes[f"{s}/{conv}/conv2d/kernel"] = kernel
                shapes.update({f"{s}/{conv}_bn/batch_normalization/{v}": (kernel[2],) for v in BN_VARS})
            channels = 4 * width
    shapes.update({f"global_pool/bn/batch_normalization/{v}": (channels,) for v in BN_VARS})
    shapes["logits/dense/kernel"] = (channels, num_classes)
    shapes["logits/dense/bias"] = (num_classes,)
    return shapes


def random_values(shapes, seed):
    rng = np.random.default_rng(seed)
    values = {}
    for name, shape in shapes.items():
        leaf = name.rsplit("/", 1)[1]
        if leaf in ("gamma", "moving_variance"):
            values[name] = rng.uniform(0.5, 1.5, shape)
        elif leaf in ("beta", "moving_mean", "bias"):
            values[name] = rng.normal(0.0, 0.2, shape)
        else:  # kernels: fan-in scaled so that activations stay O(1)
            values[name] = rng.normal(0.0, 1.0, shape) / np.sqrt(np.prod(shape[:-1]))
    return {name: v.astype("float32") for name, v in values.items()}


def write_tf1_checkpoint(path, values):
    """Writes `values` as a TF1 Saver checkpoint with global_step and Momentum slots; returns the prefix."""
    with tf.Graph().as_default():
        variables = []
        for name, value in values.items():
            scope, leaf = name.rsplit("/", 1)
            with tf.compat.v1.variable_scope(scope):
                variables.append(tf.compat.v1.get_variable(leaf, initializer=value))
            if not leaf.startswith("moving_"):  # tf.train.MomentumOptimizer's slot of a trainable variable
                with tf.compat.v1.variable_scope(name):
                    variables.append(tf.compat.v1.get_variable("Momentum", initializer=np.zeros_like(value)))
        variables.append(tf.compat.v1.train.get_or_create_global_step())
        saver = tf.compat.v1.train.Saver(var_list=variables)
        with tf.compat.v1.Session() as sess:
            sess.run(tf.compat.v1.global_variables_initializer())
            return saver.save(sess, str(path), write_meta_graph=False)


def reference_forward(values, images, *, eps=1e-5):
    """The reference network in plain tf.nn ops, reading weights by TF1 name (BN in inference mode)."""

    def bn_relu(x, scope):
        v = {k: values[f"{scope}/batch_normalization/{k}"] for k in BN_VARS}
        x = tf.nn.batch_normalization(x, v["moving_mean"], v["moving_variance"], v["beta"], v["gamma"], eps)
        return tf.nn.relu(x)

    def conv(x, scope, stride):
        kernel = values[f"{scope}/conv2d/kernel"]
        if stride == 1:
            return tf.nn.conv2d(x, kernel, 1, "SAME")
        k = kernel.shape[0]
        beg, end = (k - 1) // 2, k - 1 - (k - 1) // 2
        return tf.nn.conv2d(tf.pad(x, [[0, 0], [beg, end], [beg, end], [0, 0]]), kernel, stride, "VALID")

    x = conv(tf.constant(images), "init/init_conv", 2)
    for i, num_blocks in enumerate(BLOCKS):
        for j in range(num_blocks):
            s = f"stages_{i}_block_{j}"
            stride = 2 if j == 0 else 1
            shortcut = conv(bn_relu(x, f"{s}/conv1_b1_bn"), f"{s}/conv1_b1", stride) if j == 0 else x
            r = conv(bn_relu(x, f"{s}/conv1_b2_bn"), f"{s}/conv1_b2", 1)
            r = conv(bn_relu(r, f"{s}/conv2_b2_bn"), f"{s}/conv2_b2", stride)
            r = conv(bn_relu(r, f"{s}/conv3_b2_bn"), f"{s}/conv3_b2", 1)
            x = r + shortcut
    features = tf.reduce_mean(bn_relu(x, "global_pool/bn"), axis=[1, 2])
    return (tf.matmul(features, values["logits/dense/kernel"]) + values["logits/dense/bias"]).numpy()


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory):
    """Two TF1 checkpoints, 11-way and 7-way heads (the code path of 11,166 / 1000): {classes: (prefix, values)}."""
    root = tmp_path_factory.mktemp("tf1")
    out = {}
    for num_classes, seed in ((11, 0), (7, 1)):
        values = random_values(reference_shapes(num_classes), seed)
        out[num_classes] = (write_tf1_checkpoint(root / f"head{num_classes}" / "model.ckpt", values), values)
    return out


def tiny_model(num_classes):
    return resnet.build_resnet(14, num_classes, base_width=BASE_WIDTH)


def images(seed=0):
    return np.random.default_rng(seed).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")


def test_written_checkpoint_has_the_release_layout(checkpoints):
    prefix, values = checkpoints[11]
    names = dict(tf.train.list_variables(prefix))
    assert "global_step" in names and "init/init_conv/conv2d/kernel/Momentum" in names
    assert "logits/dense/bias/Momentum" in names
    assert set(values) < set(names)


@pytest.mark.parametrize("num_classes", [11, 7])
def test_loaded_logits_match_an_independent_forward_pass(checkpoints, num_classes):
    prefix, values = checkpoints[num_classes]
    model = tiny_model(num_classes)
    tf1_checkpoint.load_tf1_checkpoint(model, prefix)
    x = images()
    want = reference_forward(values, x)
    got = model(x, training=False).numpy()
    assert got.shape == (2, num_classes)
    assert np.abs(got).max() > 0.1  # a meaningful comparison, not of two near-zero outputs
    np.testing.assert_array_less(np.abs(got - want), 1e-4)


def test_variable_map_is_one_to_one(checkpoints):
    model = tiny_model(11)
    mapping = tf1_checkpoint.tf1_variable_map(model)
    assert set(mapping) == set(reference_shapes(11))
    assert len({id(v) for v in mapping.values()}) == len(mapping) == len(model.weights)
    for name, variable in mapping.items():
        assert tuple(variable.shape) == reference_shapes(11)[name]
    headless = tf1_checkpoint.tf1_variable_map(model, skip_head=True)
    assert set(mapping) - set(headless) == {"logits/dense/kernel", "logits/dense/bias"}


def test_strict_errors_list_missing_extra_and_misshaped(checkpoints, tmp_path):
    _, values = checkpoints[11]
    broken = dict(values)
    del broken["stages_1_block_0/conv2_b2_bn/batch_normalization/moving_variance"]
    broken["stages_0_block_1/conv1_b2/conv2d/kernel"] = np.zeros((1, 1, 32, 8), "float32")
    broken["stages_2_block_0/conv3_b2/conv2d/kernel"] = np.zeros((1, 1, 32, 63), "float32")
    prefix = write_tf1_checkpoint(tmp_path / "broken" / "model.ckpt", broken)
    model = tiny_model(11)
    before = [w.numpy() for w in model.weights]
    with pytest.raises(tf1_checkpoint.TF1CheckpointMismatchError) as error:
        tf1_checkpoint.load_tf1_checkpoint(model, prefix)
    message = str(error.value)
    assert (
        "missing (1)" in message
        and "stages_1_block_0/conv2_b2_bn/batch_normalization/moving_variance" in message
    )
    assert "extra (1)" in message and "stages_0_block_1/conv1_b2/conv2d/kernel" in message
    assert (
        "mis-shaped (1)" in message
        and "stages_2_block_0/conv3_b2/conv2d/kernel: checkpoint [1, 1, 32, 63]" in message
    )
    assert "Momentum" not in message and "global_step" not in message
    for w, b in zip(model.weights, before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)  # nothing assigned on error


def test_head_of_another_size_needs_skip_head(checkpoints):
    prefix, values = checkpoints[11]
    model = tiny_model(7)
    with pytest.raises(tf1_checkpoint.TF1CheckpointMismatchError, match="logits/dense/kernel: checkpoint"):
        tf1_checkpoint.load_tf1_checkpoint(model, prefix)
    head_before = [w.numpy() for w in model.get_layer("logits").weights]
    tf1_checkpoint.load_tf1_checkpoint(model, prefix, skip_head=True)
    for w, b in zip(model.get_layer("logits").weights, head_before, strict=True):
        np.testing.assert_array_equal(w.numpy(), b)
    for name, variable in tf1_checkpoint.tf1_variable_map(model, skip_head=True).items():
        np.testing.assert_array_equal(variable.numpy(), values[name])


def test_convert_writes_our_format(checkpoints, tmp_path):
    prefix, values = checkpoints[7]
    summary = convert_checkpoint.convert(
        prefix, depth=14, num_classes=None, output=str(tmp_path / "ours"), base_width=BASE_WIDTH
    )
    assert summary["head_classes"] == 7 and summary["variables"] == len(values)
    assert summary["parameters"] == sum(v.size for v in values.values())
    restored = tiny_model(7)
    tf.train.Checkpoint(model=restored).read(summary["path"]).assert_consumed()
    for name, variable in tf1_checkpoint.tf1_variable_map(restored).items():
        np.testing.assert_array_equal(variable.numpy(), values[name])


def test_convert_cli(checkpoints, tmp_path, repo_root):
    prefix, _ = checkpoints[11]
    cmd = [
        sys.executable,
        "tools/convert_checkpoint.py",
        f"--tf1_checkpoint={prefix}",
        "--depth=14",
        "--base_width=8",
        "--num_classes=11",
        f"--output={tmp_path / 'cli'}",
    ]
    proc = subprocess.run(cmd, cwd=repo_root, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "11-way head" in proc.stdout
    assert tf.io.gfile.exists(str(tmp_path / "cli") + ".index")


def test_entries_are_sorted_by_meaning():
    model_names = ["init/init_conv/conv2d/kernel", "logits/dense/kernel", "logits/dense/bias"]
    shapes = {
        "init/init_conv/conv2d/kernel": [7, 7, 3, 8],
        "init/init_conv/conv2d/kernel/Momentum": [7, 7, 3, 8],
        "init/init_conv/conv2d/kernel/Momentum_1": [7, 7, 3, 8],  # a second optimizer instance's slot
        "logits/dense/kernel": [32, 4],
        "logits/dense/bias": [4],
        "logits/dense/bias/Momentum": [4],
        "global_step": [],
        "Variable": [4],
        "Variable_1": [4],
        "stages_0_block_1/conv1_b2/conv2d/kernel": [1, 1, 32, 8],  # a weight this model does not have
        "beta1_power": [],  # e.g. an Adam accumulator: unknown here
    }
    contents, extra = tf1_checkpoint.classify("ckpt", shapes, model_names[:1], skip_head=True)
    assert contents.model == ("init/init_conv/conv2d/kernel",)
    assert contents.head == ("logits/dense/bias", "logits/dense/kernel")
    assert contents.momentum == {
        "init/init_conv/conv2d/kernel": "init/init_conv/conv2d/kernel/Momentum",
        "logits/dense/bias": "logits/dense/bias/Momentum",
    }
    assert contents.other_optimizer == ("init/init_conv/conv2d/kernel/Momentum_1",)
    assert contents.counters == ("Variable", "Variable_1") and contents.global_step == "global_step"
    assert contents.unknown == ("beta1_power",)
    assert extra == ["stages_0_block_1/conv1_b2/conv2d/kernel"]  # an error for the loader, not a warning
    # A lone unnamed variable is not the release's pair of counters.
    lone = {k: v for k, v in shapes.items() if k != "Variable_1"}
    contents, _ = tf1_checkpoint.classify("ckpt", lone, model_names, skip_head=False)
    assert contents.counters is None and "Variable" in contents.unknown
    assert "2 unknown entries (Variable, beta1_power)" in contents.summary()


def test_restore_release_state_checks_the_counter_shape(checkpoints):
    prefix, _ = checkpoints[11]
    contents = tf1_checkpoint.classify(prefix, dict(tf.train.list_variables(prefix)), [], skip_head=False)[0]
    pos, neg = tf.Variable(tf.ones([11])), tf.Variable(tf.ones([11]))
    taken = tf1_checkpoint.restore_release_state(contents, pos_count=pos, neg_count=neg)
    assert taken == ["loss counters NOT taken: the checkpoint has none (they start at 0)"]
    step = tf.Variable(5, dtype=tf.int64)
    assert tf1_checkpoint.restore_release_state(contents, global_step=step) == ["global_step 0"]
    assert int(step.numpy()) == 0
