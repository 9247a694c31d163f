"""The reference ResNet of Tencent ML-Images as a functional Keras 3 model.

The architecture is the release's modified pre-activation ResNet (docs/REFERENCE.md section 2), not the Keras
`applications` one:

- stem `init/init_conv`: 7x7 conv, stride 2, with NO BN/ReLU after it and NO max-pool;
- four stages of bottleneck blocks; the FIRST block of EVERY stage (stage 0 included) has stride 2 (on its
  3x3 conv and on the projection shortcut), so the total stride is 2 * 2^4 = 32;
- a block is BN-ReLU-conv1x1 / BN-ReLU-conv3x3 / BN-ReLU-conv1x1 (pre-activation); the first block of a
  stage projects the shortcut through its OWN BN-ReLU-conv1x1, the other blocks add the raw input;
  nothing follows the sum;
- strided convs pad symmetrically first (pad_beg = (k-1)//2, pad_end = k-1-pad_beg) and use VALID, stride
  1 convs use SAME (the release does this to match Caffe's padding);
- head: BN-ReLU-global average pool (the 2048-d feature, layer `global_pool`), then a dense `logits` with
  bias.

Every layer has an explicit name from which its TF1 variable scope follows (`tf1_variable_name`), so the
released checkpoints map one-to-one onto the model (see `models/tf1_checkpoint.py`). Keras 3 layer names
cannot contain '/', so a TF1 scope `stages_0_block_0/conv1_b2` becomes the layer `stages_0_block_0_conv1_b2`.
"""

from __future__ import annotations

import re
from typing import NamedTuple

import keras

# Blocks per stage. 14 is a test-only variant (one block per stage) that keeps every code path.
BLOCKS_PER_STAGE: dict[int, tuple[int, int, int, int]] = {
    14: (1, 1, 1, 1),
    50: (3, 4, 6, 3),
    101: (3, 4, 23, 3),
    152: (3, 8, 36, 3),
}

STEM_LAYER = "init_conv"
HEAD_BN_LAYER = "global_pool_bn"
FEATURE_LAYER = "global_pool"
LOGITS_LAYER = "logits"

# Weight-owning parts of a block (`stages_{i}_block_{j}_{part}`): convs and their BatchNorms. The block's
# other layers (`..._relu`, `..._pad`, `_add`) own no weights.
BLOCK_CONV_PARTS: tuple[str, ...] = ("conv1_b1", "conv1_b2", "conv2_b2", "conv3_b2")
BLOCK_BN_PARTS: tuple[str, ...] = tuple(f"{part}_bn" for part in BLOCK_CONV_PARTS)
# TF1 scopes of the layers outside the blocks; a TF1 scope is followed by the variable's own name (kernel,
# bias, gamma, beta, moving_mean, moving_variance).
_FIXED_TF1_SCOPES = {
    STEM_LAYER: "init/init_conv/conv2d",
    HEAD_BN_LAYER: "global_pool/bn/batch_normalization",
    LOGITS_LAYER: "logits/dense",
}
_LAYER_OF_FIXED_SCOPE = {scope: layer for layer, scope in _FIXED_TF1_SCOPES.items()}
_BLOCK_LAYER = re.compile(r"stages_(\d+)_block_(\d+)_(\w+)")
_WEIGHT_NAMES = frozenset({"kernel", "bias", "gamma", "beta", "moving_mean", "moving_variance"})


class BlockLayer(NamedTuple):
    """Where a layer sits in the ResNet: `stages_{stage}_block_{block}_{part}`."""

    stage: int
    block: int
    part: str  # e.g. conv2_b2, conv2_b2_bn, conv2_b2_bn_relu, conv2_b2_pad, add


def parse_layer_name(name: str) -> BlockLayer | None:
    """The (stage, block, part) of one of our block layers, None for the stem, the head or other names.

    The one parser of our layer names: the TF1 name mapping, the TF1 architecture inference
    (models/architecture.py) and the frozen stages of fine-tuning (training/train_step.py) all use it.
    """
    match = _BLOCK_LAYER.fullmatch(name)
    if match is None:
        return None
    return BlockLayer(int(match.group(1)), int(match.group(2)), match.group(3))


def tf1_variable_name(layer_name: str, weight_name: str) -> str:
    """The TF1 checkpoint name of weight `weight_name` of our layer `layer_name`.

    For example (`stages_2_block_7_conv2_b2_bn`, `moving_mean`) ->
    `stages_2_block_7/conv2_b2_bn/batch_normalization/moving_mean`.

    Raises:
      ValueError: for a layer or weight name that has no TF1 counterpart.
    """
    if weight_name not in _WEIGHT_NAMES:
        raise ValueError(f"weight {weight_name!r} of layer {layer_name!r} has no TF1 counterpart")
    if layer_name in _FIXED_TF1_SCOPES:
        return f"{_FIXED_TF1_SCOPES[layer_name]}/{weight_name}"
    parsed = parse_layer_name(layer_name)
    if parsed is not None and parsed.part in BLOCK_CONV_PARTS + BLOCK_BN_PARTS:
        kind = "conv2d" if parsed.part in BLOCK_CONV_PARTS else "batch_normalization"
        return f"stages_{parsed.stage}_block_{parsed.block}/{parsed.part}/{kind}/{weight_name}"
    raise ValueError(f"layer {layer_name!r} has no TF1 counterpart")


def keras_weight_name(tf1_name: str) -> tuple[str, str]:
    """The inverse of `tf1_variable_name`: a TF1 variable name -> (our layer name, weight name).

    Raises:
      ValueError: for a name that is not a model variable of the reference ResNet (e.g. `global_step`,
        a `<variable>/Momentum` slot, the release's unnamed loss counters `Variable`, `Variable_1`).
    """
    scope, _, weight_name = tf1_name.rpartition("/")
    layer_name = _LAYER_OF_FIXED_SCOPE.get(scope)
    if layer_name is None:
        block_scope, _, part_scope = scope.partition("/")
        layer_name = f"{block_scope}_{part_scope.partition('/')[0]}"
    try:
        if tf1_variable_name(layer_name, weight_name) == tf1_name:  # the mapping is a bijection
            return layer_name, weight_name
    except ValueError:
        pass
    raise ValueError(f"{tf1_name!r} is not a variable of the reference ResNet")


def onednn_enabled() -> bool:
    """Whether this process's TensorFlow runs its oneDNN CPU kernels.

    TensorFlow reads ``TF_ENABLE_ONEDNN_OPTS`` once, when it is imported; unset, it turns oneDNN on only on
    CPUs with AVX-512 VNNI/BF16, AVX-VNNI or AMX (recent Xeons), so two x86 machines running the same code
    can run different kernels (docs/BENCHMARKS.md records the state with every figure). Asked of
    TensorFlow itself where it can say (a private binding), else read from the variable.
    """
    import os

    import tensorflow as tf  # noqa: F401  (the binding below needs TensorFlow loaded)

    try:
        from tensorflow.python.util import _pywrap_util_port

        return bool(_pywrap_util_port.IsMklEnabled())
    except (ImportError, AttributeError):
        return os.environ.get("TF_ENABLE_ONEDNN_OPTS", "").strip().lower() in ("1", "true")


def channels_first_problem() -> str | None:
    """Why this process cannot run a channels_first model (one line naming the fix), or None if it can.

    TensorFlow's own CPU convolution and pooling kernels take NHWC only: on a CPU, NCHW runs only through
    its oneDNN kernels, or on a GPU. Without either, the model builds and its first call fails deep inside
    with "The Conv2D op currently only supports the NHWC tensor format on the CPU"; `build_resnet` raises
    this message instead.
    """
    import tensorflow as tf

    if tf.config.list_physical_devices("GPU") or onednn_enabled():
        return None
    return (
        "data_format='channels_first' cannot run here: TensorFlow's CPU kernels take NHWC only and its oneDNN "
        "kernels (which take NCHW) are off on this CPU; set TF_ENABLE_ONEDNN_OPTS=1 before Python starts, "
        "or use data_format='channels_last' (the same weights)"
    )


def build_resnet(
    depth: int,
    num_classes: int,
    *,
    base_width: int = 64,
    data_format: str = "channels_last",
    bn_momentum: float = 0.997,
    bn_epsilon: float = 1e-5,
    input_shape: tuple[int | None, int | None, int] = (None, None, 3),
    name: str | None = None,
) -> keras.Model:
    """Builds the reference ResNet mapping NHWC images in [-1, 1] to float32 logits [N, num_classes].

    Args:
      depth: 50, 101 or 152 (the reference sizes), or 14 (one block per stage, for tests only).
      num_classes: size of the dense head (11,166 for ML-Images pre-training, 1000 for ImageNet).
      base_width: stem filters; stage i outputs 4 * base_width * 2^i channels with bottleneck width
        base_width * 2^i. 64 is the reference; tests use small values to stay fast.
      data_format: internal layout. The input is always NHWC (as the release's); with "channels_first"
        the model transposes it once, as the release does for NCHW. Weights are layout independent.
        "channels_first" needs a GPU or TensorFlow's oneDNN CPU kernels (`channels_first_problem`).
      bn_momentum: BatchNorm moving-average decay (the reference 0.997).
      bn_epsilon: BatchNorm epsilon (the reference 1e-5).
      input_shape: NHWC input shape without the batch dimension.
      name: model name (default `resnet{depth}`).

    Returns:
      A functional model whose layer `global_pool` outputs the pooled feature and `logits` the logits.
      The logits (and the pooled feature) are float32 under a mixed-precision policy.

    Raises:
      ValueError: an unknown depth or data format, or "channels_first" in a process that cannot run it
        (one line naming the fix, instead of an op error deep inside the first call).
    """
    if depth not in BLOCKS_PER_STAGE:
        raise ValueError(f"depth must be one of {sorted(BLOCKS_PER_STAGE)}, got {depth}")
    if data_format not in ("channels_last", "channels_first"):
        raise ValueError(f"data_format must be channels_last or channels_first, got {data_format!r}")
    if data_format == "channels_first" and (problem := channels_first_problem()) is not None:
        raise ValueError(problem)
    ops = _Ops(data_format=data_format, bn_momentum=bn_momentum, bn_epsilon=bn_epsilon)

    images = keras.Input(shape=input_shape, name="images")
    x = images
    if data_format == "channels_first":
        x = keras.layers.Permute((3, 1, 2), name="to_channels_first")(x)
    x = ops.conv(x, filters=base_width, kernel_size=7, strides=2, name=STEM_LAYER)
    for stage, num_blocks in enumerate(BLOCKS_PER_STAGE[depth]):
        width = base_width * 2**stage
        for block in range(num_blocks):
            x = _bottleneck_block(
                ops,
                x,
                width=width,
                out_channels=4 * width,
                first=block == 0,
                name=f"stages_{stage}_block_{block}",
            )
    x = ops.bn_relu(x, name=HEAD_BN_LAYER)
    # float32 from here on: the mean over the spatial positions and the head run in full precision.
    features = keras.layers.GlobalAveragePooling2D(
        data_format=data_format, name=FEATURE_LAYER, dtype="float32"
    )(x)
    logits = keras.layers.Dense(num_classes, name=LOGITS_LAYER, dtype="float32")(features)
    return keras.Model(images, logits, name=name or f"resnet{depth}")


def with_features(model: keras.Model) -> keras.Model:
    """A view of `model` returning {"features": pooled feature [N, C], "logits": [N, num_classes]}.

    The returned model shares `model`'s layers and weights (no second definition), so feature extraction
    and classification always use the same parameters.
    """
    return keras.Model(
        model.input,
        {"features": model.get_layer(FEATURE_LAYER).output, "logits": model.get_layer(LOGITS_LAYER).output},
        name=f"{model.name}_with_features",
    )


@keras.saving.register_keras_serializable(package="mlimages")
class FusedBatchNormalization(keras.layers.BatchNormalization):
    """Keras' BatchNormalization whose float32 NHWC training pass is TensorFlow's fused kernel.

    It adds no constructor argument, so `BatchNormalization.get_config` is its complete config; it is
    registered so that `keras.saving.load_model` reads `.keras` files of our models.

    TF1's `tf.layers.batch_normalization` (the release's) picks this same kernel by default (`fused=None`),
    so training also matches the release in one detail Keras does not: the moving variance is updated with
    the UNBIASED batch variance (x n / (n - 1), n = N x H x W), as TF1's fused kernel does. The batch
    normalisation itself, the moving mean and inference are the same as Keras'. On 2 CPU cores the fused
    forward and backward of a 32 x 112 x 112 x 64 BN-ReLU take a third of Keras' time. Other cases
    (inference, NCHW, half precision, a frozen layer) are Keras' own code path.
    """

    def call(self, inputs, training=None, mask=None):
        if not (
            training is True
            and self.trainable
            and self.axis in (-1, 3)
            and len(inputs.shape) == 4
            and inputs.dtype == "float32"
            and self.center
            and self.scale
        ):
            return super().call(inputs, training=training, mask=mask)
        import tensorflow as tf  # the fused kernel is TensorFlow's; Keras' backend is TensorFlow here

        outputs, mean, variance = tf.compat.v1.nn.fused_batch_norm(
            inputs,
            tf.convert_to_tensor(self.gamma),
            tf.convert_to_tensor(self.beta),
            mean=tf.convert_to_tensor(self.moving_mean),
            variance=tf.convert_to_tensor(self.moving_variance),
            epsilon=self.epsilon,
            is_training=True,
            exponential_avg_factor=1.0 - self.momentum,
        )
        self.moving_mean.assign(mean)
        self.moving_variance.assign(variance)
        return outputs


class _Ops:
    """The reference's conv / BN-ReLU building blocks for one data format."""

    def __init__(self, *, data_format: str, bn_momentum: float, bn_epsilon: float) -> None:
        self.data_format = data_format
        self.bn_momentum = bn_momentum
        self.bn_epsilon = bn_epsilon

    def conv(self, x, *, filters: int, kernel_size: int, strides: int, name: str):
        """Conv without bias; strided convs pre-pad symmetrically and use VALID, others use SAME."""
        if strides > 1 and kernel_size > 1:  # a 1x1 kernel needs no padding (pad_beg = pad_end = 0).
            pad_beg = (kernel_size - 1) // 2
            pad_end = kernel_size - 1 - pad_beg
            x = keras.layers.ZeroPadding2D(
                ((pad_beg, pad_end), (pad_beg, pad_end)), data_format=self.data_format, name=f"{name}_pad"
            )(x)
        return keras.layers.Conv2D(
            filters,
            kernel_size,
            strides=strides,
            padding="same" if strides == 1 else "valid",
            data_format=self.data_format,
            use_bias=False,
            # tf.variance_scaling_initializer() of TF1: scale 1, fan_in, truncated normal.
            kernel_initializer=keras.initializers.VarianceScaling(
                scale=1.0, mode="fan_in", distribution="truncated_normal"
            ),
            name=name,
        )(x)

    def bn_relu(self, x, *, name: str):
        """BatchNorm (center and scale) followed by ReLU; the ReLU is named `{name}_relu`."""
        x = FusedBatchNormalization(
            axis=-1 if self.data_format == "channels_last" else 1,
            momentum=self.bn_momentum,
            epsilon=self.bn_epsilon,
            name=name,
        )(x)
        return keras.layers.ReLU(name=f"{name}_relu")(x)


def _bottleneck_block(ops: _Ops, x, *, width: int, out_channels: int, first: bool, name: str):
    """One pre-activation bottleneck block; the first block of a stage has stride 2 and a projection."""
    strides = 2 if first else 1
    shortcut = x
    if first:
        shortcut = ops.bn_relu(x, name=f"{name}_conv1_b1_bn")
        shortcut = ops.conv(
            shortcut, filters=out_channels, kernel_size=1, strides=strides, name=f"{name}_conv1_b1"
        )
    x = ops.bn_relu(x, name=f"{name}_conv1_b2_bn")
    x = ops.conv(x, filters=width, kernel_size=1, strides=1, name=f"{name}_conv1_b2")
    x = ops.bn_relu(x, name=f"{name}_conv2_b2_bn")
    x = ops.conv(x, filters=width, kernel_size=3, strides=strides, name=f"{name}_conv2_b2")
    x = ops.bn_relu(x, name=f"{name}_conv3_b2_bn")
    x = ops.conv(x, filters=out_channels, kernel_size=1, strides=1, name=f"{name}_conv3_b2")
    return keras.layers.Add(name=f"{name}_add")([x, shortcut])


MAX_SEGMENTS = 5  # stem + stage 0, stages 1, 2, 3, the head


def split_segments(model: keras.Model, num_segments: int) -> list[keras.Model]:
    """`model` (from `build_resnet`) as `num_segments` chained sub-models sharing its layers and weights.

    The cuts are at the end of stages (the last block's `_add` output); the last segment is always the head
    (final BN-ReLU, pooling, logits: with 11,166 classes a third of the weights), the others cover the
    deepest stages first: 2 = trunk | head, 3 = stem..stage 2 | stage 3 | head, 4 = stem..stage 1 | stage 2
    | stage 3 | head, 5 = stem..stage 0 | stage 1 | stage 2 | stage 3 | head. Chaining the segments computes
    exactly the model; a training step differentiates them one by one, head first, so each segment's
    gradients exist (and can be all-reduced) while the earlier segments' backward still runs.

    Raises:
      ValueError: `num_segments` is not in [1, MAX_SEGMENTS].
    """
    if not 1 <= num_segments <= MAX_SEGMENTS:
        raise ValueError(f"backward segments must be in [1, {MAX_SEGMENTS}], got {num_segments}")
    if num_segments == 1:
        return [model]
    stage_ends = []
    for stage in range(4):
        blocks = [
            b.block for layer in model.layers if (b := parse_layer_name(layer.name)) and b.stage == stage
        ]
        stage_ends.append(model.get_layer(f"stages_{stage}_block_{max(blocks)}_add").output)
    cuts = [model.input, *stage_ends[4 - (num_segments - 1) :], model.output]
    return [keras.Model(cuts[i], cuts[i + 1], name=f"{model.name}_segment_{i}") for i in range(num_segments)]
