"""models/resnet.py: parameter counts, shapes and strides, TF1 names, mixed precision, data formats."""

import json
import os
import pathlib
import subprocess
import sys

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import resnet

BLOCKS = {50: (3, 4, 6, 3), 101: (3, 4, 23, 3), 152: (3, 8, 36, 3)}
# docs/REFERENCE.md section 2 gives the ResNet-101 figures; 50 and 152 follow from the closed form below.
BACKBONE_PARAMS = {50: 23_504_064, 101: 42_496_192, 152: 58_139_840}
WITH_1000 = {50: 25_553_064, 101: 44_545_192, 152: 60_188_840}
WITH_11166 = {101: 65_375_326}


def closed_form_params(blocks, *, base_width=64, num_classes=0):
    """Trainable parameters counted from the architecture description, independently of the model code."""
    bn = 2  # gamma, beta (the moving statistics are not trainable)
    total = 7 * 7 * 3 * base_width
    channels = base_width
    for stage, num_blocks in enumerate(blocks):
        width = base_width * 2**stage
        out = 4 * width
        for block in range(num_blocks):
            total += bn * channels + channels * width  # conv1_b2_bn, conv1_b2
            total += bn * width + 9 * width * width  # conv2_b2_bn, conv2_b2
            total += bn * width + width * out  # conv3_b2_bn, conv3_b2
            if block == 0:
                total += bn * channels + channels * out  # conv1_b1_bn, conv1_b1
            channels = out
    total += bn * channels  # global_pool/bn
    if num_classes:
        total += channels * num_classes + num_classes
    return total


def trainable_params(model):
    return sum(int(np.prod(v.shape)) for v in model.trainable_weights)


def reference_tf1_names(blocks, *, with_head=True):
    """The TF1 variable names of the released checkpoints (docs/REFERENCE.md section 2), written out independently."""
    bn_vars = ("gamma", "beta", "moving_mean", "moving_variance")
    names = {"init/init_conv/conv2d/kernel"}
    for i, num_blocks in enumerate(blocks):
        for j in range(num_blocks):
            convs = (
                ("conv1_b1", "conv1_b2", "conv2_b2", "conv3_b2")
                if j == 0
                else ("conv1_b2", "conv2_b2", "conv3_b2")
            )
            for conv in convs:
                names.add(f"stages_{i}_block_{j}/{conv}/conv2d/kernel")
                names.update(f"stages_{i}_block_{j}/{conv}_bn/batch_normalization/{v}" for v in bn_vars)
    names.update(f"global_pool/bn/batch_normalization/{v}" for v in bn_vars)
    if with_head:
        names.update({"logits/dense/kernel", "logits/dense/bias"})
    return names


@pytest.fixture(scope="module")
def resnet101():
    return resnet.build_resnet(101, 11166)


def test_closed_form_reproduces_the_reference_figures():
    assert closed_form_params(BLOCKS[101]) == 42_496_192
    assert closed_form_params(BLOCKS[101], num_classes=1000) == 44_545_192
    assert closed_form_params(BLOCKS[101], num_classes=11166) == 65_375_326
    for depth, blocks in BLOCKS.items():
        assert closed_form_params(blocks) == BACKBONE_PARAMS[depth]
        assert closed_form_params(blocks, num_classes=1000) == WITH_1000[depth]


@pytest.mark.parametrize("depth", [50, 152])
def test_parameter_count_table(depth):
    model = resnet.build_resnet(depth, 1000)
    head = trainable_params(model.get_layer("logits"))
    assert trainable_params(model) == WITH_1000[depth]
    assert trainable_params(model) - head == BACKBONE_PARAMS[depth]


def test_parameter_count_resnet101(resnet101):
    head = trainable_params(resnet101.get_layer("logits"))
    assert head == 2048 * 11166 + 11166
    assert trainable_params(resnet101) == WITH_11166[101]
    assert trainable_params(resnet101) - head == BACKBONE_PARAMS[101]
    assert BACKBONE_PARAMS[101] + 2048 * 1000 + 1000 == WITH_1000[101]


def test_tiny_model_matches_closed_form():
    model = resnet.build_resnet(14, 11, base_width=8)
    assert trainable_params(model) == closed_form_params((1, 1, 1, 1), base_width=8, num_classes=11)


def test_tf1_names_are_the_reference_names(resnet101):
    names = [
        resnet.tf1_variable_name(layer.name, v.name) for layer in resnet101.layers for v in layer.weights
    ]
    assert len(names) == len(set(names)) == len(resnet101.weights)
    assert set(names) == reference_tf1_names(BLOCKS[101])


def test_tf1_name_mapping_is_a_bijection(resnet101):
    for layer in resnet101.layers:
        for variable in layer.weights:
            tf1 = resnet.tf1_variable_name(layer.name, variable.name)
            assert resnet.keras_weight_name(tf1) == (layer.name, variable.name)
    for tf1 in reference_tf1_names(BLOCKS[101]):
        assert resnet.tf1_variable_name(*resnet.keras_weight_name(tf1)) == tf1


def test_tf1_name_examples():
    assert resnet.tf1_variable_name("init_conv", "kernel") == "init/init_conv/conv2d/kernel"
    assert (
        resnet.tf1_variable_name("stages_2_block_17_conv2_b2_bn", "moving_mean")
        == "stages_2_block_17/conv2_b2_bn/batch_normalization/moving_mean"
    )
    assert resnet.tf1_variable_name("global_pool_bn", "gamma") == "global_pool/bn/batch_normalization/gamma"
    assert resnet.tf1_variable_name("logits", "bias") == "logits/dense/bias"
    for bad_layer, weight in [
        ("stages_0_block_0_add", "kernel"),
        ("init_conv", "Momentum"),
        ("dense", "bias"),
    ]:
        with pytest.raises(ValueError):
            resnet.tf1_variable_name(bad_layer, weight)
    for bad in ["global_step", "logits/dense/kernel/Momentum", "stages_0_block_0/conv4_b2/conv2d/kernel"]:
        with pytest.raises(ValueError):
            resnet.keras_weight_name(bad)


def test_every_weighted_layer_is_a_conv_bn_or_dense(resnet101):
    kinds = {type(layer) for layer in resnet101.layers if layer.weights}
    assert kinds == {keras.layers.Conv2D, resnet.FusedBatchNormalization, keras.layers.Dense}
    assert issubclass(resnet.FusedBatchNormalization, keras.layers.BatchNormalization)
    assert not any(isinstance(layer, keras.layers.MaxPooling2D) for layer in resnet101.layers)
    for layer in resnet101.layers:
        if isinstance(layer, keras.layers.Conv2D):
            assert not layer.use_bias
        if isinstance(layer, keras.layers.BatchNormalization):
            assert (layer.momentum, layer.epsilon, layer.center, layer.scale) == (0.997, 1e-5, True, True)


def test_shapes_and_total_stride_32():
    model = resnet.build_resnet(14, 11, base_width=8, input_shape=(96, 64, 3))
    # Stride 2 at the stem and in the first block of EVERY stage (incl. stage 0), no max-pool.
    spatial = {name: model.get_layer(name).output.shape[1:3] for name in ["init_conv"]}
    spatial.update(
        {f"stage{i}": model.get_layer(f"stages_{i}_block_0_add").output.shape[1:3] for i in range(4)}
    )
    assert spatial == {
        "init_conv": (48, 32),
        "stage0": (24, 16),
        "stage1": (12, 8),
        "stage2": (6, 4),
        "stage3": (3, 2),
    }
    channels = [model.get_layer(f"stages_{i}_block_0_add").output.shape[-1] for i in range(4)]
    assert channels == [32, 64, 128, 256]
    outputs = resnet.with_features(model)(np.zeros((2, 96, 64, 3), "float32"))
    assert outputs["features"].shape == (2, 256)
    assert outputs["logits"].shape == (2, 11)


def test_strided_convs_pad_symmetrically_then_valid():
    model = resnet.build_resnet(14, 3, base_width=8)
    for name, kernel, pad in [
        ("init_conv", 7, ((3, 3), (3, 3))),
        ("stages_1_block_0_conv2_b2", 3, ((1, 1), (1, 1))),
    ]:
        assert model.get_layer(f"{name}_pad").padding == pad
        conv = model.get_layer(name)
        assert (conv.kernel_size, conv.strides, conv.padding) == ((kernel, kernel), (2, 2), "valid")
    assert model.get_layer("stages_1_block_0_conv1_b1").strides == (2, 2)
    assert model.get_layer("stages_1_block_0_conv1_b1").padding == "valid"
    assert model.get_layer("stages_1_block_0_conv1_b2").padding == "same"


def test_with_features_shares_the_weights():
    model = resnet.build_resnet(14, 5, base_width=8)
    both = resnet.with_features(model)
    assert both.get_layer("logits") is model.get_layer("logits")
    x = np.random.default_rng(0).uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(both(x)["logits"], model(x), atol=1e-6)
    kernel = model.get_layer("logits").kernel
    kernel.assign(kernel.numpy() * 2.0)
    np.testing.assert_allclose(both(x)["logits"], model(x), atol=1e-6)


def test_variance_scaling_init(resnet101):
    kernel = resnet101.get_layer("stages_3_block_1_conv2_b2").kernel.numpy()
    fan_in = 3 * 3 * 512
    assert kernel.std() == pytest.approx(np.sqrt(1.0 / fan_in), rel=0.05)
    assert (
        np.abs(kernel).max() <= 2 * np.sqrt(1.0 / fan_in) / 0.87962566103423978 + 1e-6
    )  # truncated at 2 sigma


def test_mixed_precision_logits_are_float32():
    previous = keras.config.dtype_policy()
    keras.mixed_precision.set_global_policy("mixed_bfloat16")
    try:
        model = resnet.build_resnet(14, 5, base_width=8)
    finally:
        keras.mixed_precision.set_global_policy(previous)
    assert model.get_layer("stages_0_block_0_conv2_b2").compute_dtype == "bfloat16"
    assert model.get_layer("init_conv").kernel.dtype == "float32"
    outputs = resnet.with_features(model)(np.zeros((1, 64, 64, 3), "float32"))
    assert outputs["logits"].dtype == "float32"
    assert outputs["features"].dtype == "float32"


def channels_first_outcome() -> str:
    """The depth-14 model built channels_last and channels_first with the same weights, called on the same
    images: "same logits", or "error: <message>" when `build_resnet` refuses channels_first here."""
    rng = np.random.default_rng(1)
    last = resnet.build_resnet(14, 5, base_width=8)
    try:
        first = resnet.build_resnet(14, 5, base_width=8, data_format="channels_first")
    except ValueError as e:
        return f"error: {e}"
    assert [tuple(w.shape) for w in first.weights] == [tuple(w.shape) for w in last.weights]
    weights = [rng.normal(size=w.shape).astype("float32") for w in last.weights]
    weights = [
        np.abs(w) + 0.5 if "variance" in v.name else w for w, v in zip(weights, last.weights, strict=True)
    ]
    last.set_weights(weights)
    first.set_weights(weights)
    x = rng.uniform(-1, 1, (2, 64, 64, 3)).astype("float32")
    np.testing.assert_allclose(first(x, training=False), last(x, training=False), rtol=1e-4, atol=1e-4)
    return "same logits"


def _check_channels_first_outcome(outcome: str, *, can_run: bool) -> None:
    if can_run:
        assert outcome == "same logits"
        return
    message = outcome.removeprefix("error: ")
    assert outcome.startswith("error: ") and "\n" not in message, outcome
    for fix in ("TF_ENABLE_ONEDNN_OPTS=1", "data_format='channels_last'"):
        assert fix in message, message


def test_channels_first_gives_the_same_logits_where_it_runs_else_a_one_line_error():
    """In this process: the same logits where channels_first can run (a GPU, or oneDNN on: CPUs with
    AVX-512 VNNI/BF16 or AMX by default), else the build refuses it in one line naming both fixes (on an
    AVX2 CPU, where TensorFlow leaves oneDNN off, the model used to fail inside its first call)."""
    can_run = resnet.channels_first_problem() is None
    assert can_run == (bool(tf.config.list_physical_devices("GPU")) or resnet.onednn_enabled())
    _check_channels_first_outcome(channels_first_outcome(), can_run=can_run)


def test_channels_first_with_the_other_onednn_setting():
    """The other case of the test above, in a CPU-only process with TF_ENABLE_ONEDNN_OPTS flipped: oneDNN on
    gives the same logits (the fix the error names works), oneDNN off gives the error."""
    flipped = "0" if resnet.onednn_enabled() else "1"
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {
        **os.environ,
        "TF_ENABLE_ONEDNN_OPTS": flipped,
        "CUDA_VISIBLE_DEVICES": "",
        "TF_CPP_MIN_LOG_LEVEL": "2",
        "PYTHONPATH": str(root),
    }
    code = (
        "import json\n"
        "from models import resnet\n"
        "from tests.test_resnet import channels_first_outcome\n"
        "print(json.dumps([resnet.onednn_enabled(), channels_first_outcome()]))\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], env=env, cwd=root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    enabled, outcome = json.loads(proc.stdout.strip().splitlines()[-1])
    assert enabled == (flipped == "1")
    _check_channels_first_outcome(outcome, can_run=enabled)


def test_rejects_unknown_depth_and_format():
    with pytest.raises(ValueError, match="depth"):
        resnet.build_resnet(34, 10)
    with pytest.raises(ValueError, match="data_format"):
        resnet.build_resnet(14, 10, data_format="NCHW")


def test_fused_batch_norm_trains_like_keras_with_the_release_moving_variance():
    """The fused training pass: Keras' outputs, gradients and moving mean; TF1's unbiased moving variance."""
    x = tf.random.stateless_normal([8, 10, 10, 6], [0, 1]) * 3.0 + 1.0
    plain = keras.layers.BatchNormalization(momentum=0.9, epsilon=1e-5)
    fused = resnet.FusedBatchNormalization(momentum=0.9, epsilon=1e-5)
    for layer in (plain, fused):
        layer.build(x.shape)
        layer.gamma.assign(tf.random.stateless_uniform([6], [1, 2], 0.5, 1.5))
        layer.beta.assign(tf.random.stateless_normal([6], [3, 4]))
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(x)
        outputs = [layer(x, training=True) for layer in (plain, fused)]
        losses = [tf.reduce_sum(tf.sin(y)) for y in outputs]
    np.testing.assert_allclose(outputs[1], outputs[0], atol=1e-5)
    for layer_grads in zip(
        *(
            tape.gradient(loss, [x, layer.gamma, layer.beta])
            for loss, layer in zip(losses, (plain, fused), strict=True)
        ),
        strict=True,
    ):
        np.testing.assert_allclose(layer_grads[1], layer_grads[0], rtol=1e-4, atol=1e-3)
    np.testing.assert_allclose(fused.moving_mean, plain.moving_mean, atol=1e-6)
    n = 8 * 10 * 10
    batch_var = tf.math.reduce_variance(x, axis=[0, 1, 2]).numpy()
    np.testing.assert_allclose(fused.moving_variance, 0.9 + 0.1 * batch_var * n / (n - 1), rtol=1e-5)
    np.testing.assert_allclose(plain.moving_variance, 0.9 + 0.1 * batch_var, rtol=1e-5)
