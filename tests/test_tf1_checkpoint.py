"""models/tf1_checkpoint.py and tools/convert_checkpoint.py against TF1-format checkpoints written here.

The checkpoints are written the way the release's did (graph-mode tf.compat.v1 variables under the
reference scopes, tf.compat.v1.train.Saver, plus `global_step` and Momentum slots), and the loaded model is
compared with an independent forward pass written with plain tf.nn ops from docs/REFERENCE.md section 2.
"""

import contextlib
import io

import numpy as np
import pytest
import tensorflow as tf

from models import resnet, tf1_checkpoint
from tests.scripts import run_in_process, run_script
from tests.test_evaluate_usage import TF_NATIVE_LOG
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
    summary = convert_checkpoint.convert(prefix, output=str(tmp_path / "ours"))  # the architecture read
    assert (summary["depth"], summary["base_width"], summary["head_classes"]) == (14, BASE_WIDTH, 7)
    assert summary["variables"] == len(values)
    assert summary["parameters"] == sum(v.size for v in values.values())
    restored = tiny_model(7)
    tf.train.Checkpoint(model=restored).read(summary["path"]).assert_consumed()
    for name, variable in tf1_checkpoint.tf1_variable_map(restored).items():
        np.testing.assert_array_equal(variable.numpy(), values[name])


def _convert_cli(*args):
    """`python tools/convert_checkpoint.py *args` in this process: (stdout, the refusal or None)."""
    out = io.StringIO()
    try:
        with contextlib.redirect_stdout(out):
            run_in_process(convert_checkpoint, args)
    except SystemExit as e:
        return out.getvalue(), str(e.code)
    return out.getvalue(), None


def test_convert_cli_reads_the_architecture_and_asserts_the_given_one(checkpoints, tmp_path):
    prefix, _ = checkpoints[11]
    stdout, error = _convert_cli(f"--tf1_checkpoint={prefix}", f"--output={tmp_path / 'inferred'}")
    assert error is None and "ResNet-14 (base width 8)" in stdout and "11-way head" in stdout
    assert tf.io.gfile.exists(str(tmp_path / "inferred") + ".index")
    asserted = ["--depth=14", "--base_width=8", "--num_classes=11"]
    stdout, error = _convert_cli(f"--tf1_checkpoint={prefix}", f"--output={tmp_path / 'asserted'}", *asserted)
    assert error is None and "11-way head" in stdout


@pytest.mark.parametrize(
    ("flag", "wrong"),
    [
        ("--depth=101", "--depth=101"),
        ("--base_width=64", "--base_width=64"),
        ("--num_classes=7", "--num_classes=7"),
    ],
)
def test_convert_cli_refuses_another_architecture_in_one_line(checkpoints, tmp_path, flag, wrong):
    prefix, _ = checkpoints[11]
    stdout, error = _convert_cli(f"--tf1_checkpoint={prefix}", f"--output={tmp_path / 'out'}", flag)
    assert error == (
        f"convert_checkpoint.py: error: {prefix} holds ResNet-14, base width 8, 11 classes, not the asked {wrong}"
    )
    assert not stdout and not list(tmp_path.iterdir())  # nothing written


def test_convert_cli_refuses_what_is_not_a_release_checkpoint(checkpoints, tmp_path):
    ours = convert_checkpoint.convert(checkpoints[7][0], output=str(tmp_path / "ours"))["path"]
    (tmp_path / "random.bin").write_bytes(np.random.default_rng(0).bytes(1000))
    (tmp_path / "garbage.index").write_bytes(np.random.default_rng(1).bytes(1000))
    (tmp_path / "garbage.data-00000-of-00001").write_bytes(b"")
    other = tf.train.Checkpoint(v=tf.Variable(tf.ones([3]))).write(str(tmp_path / "other"))
    expected = {
        ours: "is already one of this project's checkpoints (ResNet-14, base width 8, 7 classes)",
        str(tmp_path / "random.bin"): "is not a checkpoint",
        str(tmp_path / "missing" / "model.ckpt"): "not found",
        str(tmp_path / "garbage"): "is not a readable checkpoint",
        other: "is not a released TF1 checkpoint of the reference ResNet",
    }
    for path, message in expected.items():
        _, error = _convert_cli(f"--tf1_checkpoint={path}", f"--output={tmp_path / 'out'}")
        assert error is not None and error.startswith("convert_checkpoint.py: error: "), path
        assert message in error and "\n" not in error, error
    assert not list(tmp_path.glob("out*"))


def test_convert_refusal_is_one_line_in_the_shell(checkpoints, tmp_path, repo_root):
    """What a shell shows for another architecture than asked: one line, exit status 1, no traceback."""
    prefix, _ = checkpoints[11]
    proc = run_script(
        repo_root,
        "tools/convert_checkpoint.py",
        f"--tf1_checkpoint={prefix}",
        "--depth=101",
        f"--output={tmp_path / 'cli'}",
        timeout=120,
    )
    assert proc.returncode == 1 and not proc.stdout
    ours = [line for line in proc.stderr.strip().splitlines() if not TF_NATIVE_LOG.match(line)]
    assert ours == [
        f"convert_checkpoint.py: error: {prefix} holds ResNet-14, base width 8, 11 classes, not the asked "
        "--depth=101"
    ], proc.stderr


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
