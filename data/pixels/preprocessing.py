"""Image pre-processing for training, evaluation and the inference tools, as the reference release does it.

Every transform takes ENCODED image bytes (a scalar string tensor) and returns float32[S, S, 3] in [-1, 1],
so it runs per element inside `tf.data.Dataset.map` (graph mode) and also eagerly in the inference tools.

Training (`train_transform`) reproduces `data_processing/image_preprocessing.py` of the release
(docs/REFERENCE.md section 6), read from its code where its docstrings disagree:

1. Decode RGB, to float in [0, 1] (x / 255).
2. Random crop from a sampled distorted bounding box (the whole image as the only box, aspect ratio
   [0.75, 1.33], area [area_cover, 1], `min_object_covered=object_cover`, 100 attempts; the release uses
   0.7 / 0.7 for pre-training and 0.05 / 0.0 (area / object) for fine-tuning).
3. Bilinear resize to S x S with TF1's `resize_images` convention (`align_corners=False` WITHOUT half-pixel
   centres, i.e. `ResizeBilinear(half_pixel_centers=False)`).
4. Horizontal flip with probability 1/2.
5. A uniform draw of a "thread id" in {0, 1, 2} (`tf.random_uniform([], 0, 3)` in the release) selects:
   - 0: rotation by U(-45, 45) degrees about the centre (nearest neighbour, zero fill: the default of
     `tf.contrib.image.rotate`), then colour distortion in order 0 (brightness, saturation, hue, contrast);
   - 1: colour distortion in order 1 (brightness, contrast, saturation, hue), no rotation;
   - 2: no rotation and no colour distortion.
   So rotation happens with probability 1/3 (the release's docstring says 1/4: the code draws from three
   values, not four), colour distortion with probability 2/3 (its docstring says 1/2), and each colour order
   with probability 1/3. Brightness +-32/255, saturation [0.5, 1.5], hue +-0.2, contrast [0.5, 1.5].
6. Clip to [0, 1]; x <- (x - 0.5) * 2.
   (`train_transform_uint8`, the training pipeline's default, stops before the last mapping: it returns the
   clipped image x 255 rounded to uint8, a quarter of the bytes to the device, where the train step maps it
   to [-1, 1] with `uint8_to_model_range`; within 1/255 of these numbers.)

Unlike the release, every random choice is STATELESS and derived from a per-element seed (`_augment_decisions`),
so a resumed input pipeline reproduces exactly the augmentation of an uninterrupted run.

Evaluation (`eval_transform`) is the release's `eval_image`: central crop of 80 % (the window of
`tf.image.central_crop`), then the same TF1-convention bilinear resize. The inference tools of the release
(`image_classification.py`, `extract_feature.py`) use another transform, `demo_transform`: the image read
as `cv.imread` reads it (accurate integer IDCT, EXIF orientation applied), shorter side to 256 with OpenCV's
bilinear resize into uint8, then a centre crop of 224 (within one grey level of OpenCV's own pixels).
`load_image_file` reads an image file for the tools through data/pixels/images.py (header check, --max_pixels).

Speed (docs/BENCHMARKS.md has the figures): after the decode, crop and resize, each training image goes
through the small XLA computation of its own branch (rotation and colour order 0, colour order 1, or
neither), so it pays only for what was drawn. Pixels only move or are interpolated as the release's ops
move and interpolate them: the rotation picks exactly the pixels of `tf.contrib.image.rotate`'s op, the
colour ops are the composition of the tf.image kernels' formulas (equal to float rounding, ~1e-6), and the
uint8 crop is resized before it is scaled to [0, 1] (the resize is linear). For fine-tuning crops (area
down to 5 %) only the crop window of a JPEG is decoded (`decode_and_crop_jpeg` plus a one-MCU margin,
pixel-identical to decoding everything and slicing); for the large pre-training crops a full decode and a
slice are cheaper.
"""

from __future__ import annotations

import dataclasses
import io
import math
import os
import types
from collections.abc import Callable, Mapping, Sequence
from typing import Final

import tensorflow as tf
from absl import logging

from data.pixels import images

# Crop sampling of the release's `distort_image`.
ASPECT_RATIO_RANGE: Final = (0.75, 1.33)
MAX_ATTEMPTS: Final = 100
# Colour distortion of the release's `distort_color`.
BRIGHTNESS_MAX_DELTA: Final = 32.0 / 255.0
SATURATION_RANGE: Final = (0.5, 1.5)
HUE_MAX_DELTA: Final = 0.2
CONTRAST_RANGE: Final = (0.5, 1.5)
MAX_ROTATION_DEGREES: Final = 45.0
# The "thread id" branches of the release (see the module docstring).
NUM_BRANCHES: Final = 3
BRANCH_ROTATE_COLOR_ORDER_0: Final = 0
BRANCH_COLOR_ORDER_1: Final = 1
BRANCH_NONE: Final = 2

# Pixels decoded around a JPEG crop window: one MCU of the common 4:2:0 layout (16 x 16).
_JPEG_CROP_MARGIN: Final = 16
# `train_transform` decodes only the crop window (fused decode-and-crop) when crops can be this small: for the
# large crops of pre-training (area >= 0.7) a full decode and a slice are cheaper (the whole file is entropy
# decoded either way, and the fused path parses the header twice); fine-tuning crops go down to 5 %.
_FUSED_CROP_BELOW_AREA: Final = 0.5

EVAL_CENTRAL_FRACTION: Final = 0.8
DEMO_CROP_FRACTION: Final = 224.0 / 256.0

EvalTransform = Callable[..., tf.Tensor]
# How training images leave the input pipeline: `train_transform_uint8`'s 8 bits, normalised on the device
# by `uint8_to_model_range`, or `train_transform`'s float32 [-1, 1] (the release's numbers exactly).
IMAGE_TRANSPORTS: Final = ("uint8", "float32")


# --------------------------------------------------------------------------------------------- decisions


def _augment_decisions(seed: tf.Tensor) -> dict[str, tf.Tensor]:
    """Draws every random choice of `train_transform` from one per-element seed.

    Kept separate and pure so that the probabilities can be tested by counting over many seeds, and so that
    all randomness visibly comes from `seed` (independent sub-seeds via `stateless_split`).

    Args:
      seed: int32/int64[2], the element's seed (int32 and int64 of equal value draw the same).

    Returns:
      A dict of tensors: `crop_seed` (int[2], for the distorted bounding box), `flip` (bool, horizontal flip),
      `branch` (int32 in {0, 1, 2}, the release's thread id), `rotate` (bool, branch 0), `angle` (float32
      radians in [-pi/4, pi/4], used only when `rotate`), `color_order` (int32: 0, 1, or -1 for no colour
      distortion), `color_seeds` (int[4, 2] for brightness, saturation, hue, contrast) and the float32
      values drawn from them exactly as `tf.image.stateless_random_*` draw them: `brightness_delta`,
      `saturation_factor`, `hue_delta`, `contrast_factor`.
    """
    # Sub-seeds depend on the seed's dtype; fix it so int32 and int64 seeds of equal value agree.
    seed = tf.cast(seed, tf.int64)
    subseeds = tf.random.experimental.stateless_split(seed, num=5)
    flip = tf.random.stateless_uniform([], subseeds[1]) < 0.5
    branch = tf.random.stateless_uniform([], subseeds[2], minval=0, maxval=NUM_BRANCHES, dtype=tf.int32)
    max_angle = MAX_ROTATION_DEGREES * math.pi / 180.0
    angle = tf.random.stateless_uniform([], subseeds[3], minval=-max_angle, maxval=max_angle)
    color_order = tf.gather(tf.constant([0, 1, -1], tf.int32), branch)
    color_seeds = tf.random.experimental.stateless_split(subseeds[4], num=4)

    def color_draw(index: int, minval: float, maxval: float) -> tf.Tensor:
        # The draw of tf.image.stateless_random_{brightness,saturation,hue,contrast} with the same seed.
        return tf.random.stateless_uniform([], color_seeds[index], minval=minval, maxval=maxval)

    return {
        "crop_seed": subseeds[0],
        "flip": flip,
        "branch": branch,
        "rotate": tf.equal(branch, BRANCH_ROTATE_COLOR_ORDER_0),
        "angle": angle,
        "color_order": color_order,
        "color_seeds": color_seeds,
        "brightness_delta": color_draw(0, -BRIGHTNESS_MAX_DELTA, BRIGHTNESS_MAX_DELTA),
        "saturation_factor": color_draw(1, *SATURATION_RANGE),
        "hue_delta": color_draw(2, -HUE_MAX_DELTA, HUE_MAX_DELTA),
        "contrast_factor": color_draw(3, *CONTRAST_RANGE),
    }


# ---------------------------------------------------------------------------------------- decode helpers


def _decode_full(image_bytes: tf.Tensor) -> tf.Tensor:
    """Any format TF reads (JPEG, PNG, GIF first frame, BMP) to uint8[H, W, 3]."""
    image = tf.io.decode_image(image_bytes, channels=3, expand_animations=False)
    image.set_shape([None, None, 3])
    return image


def _decode_cropped(image_bytes: tf.Tensor, window_fn: Callable[[tf.Tensor], tf.Tensor]) -> tf.Tensor:
    """uint8 pixels of the window `window_fn(shape)` of the decoded image, decoding as little as possible.

    `window_fn` maps the int32[3] shape (H, W, 3) to an int32[4] window (top, left, height, width). For JPEG
    the shape comes from the header and only the window plus a one-MCU margin is decoded (fused
    decode-and-crop; the result equals a full decode and slice); other formats are decoded once, whole, and
    sliced.
    """

    def jpeg() -> tf.Tensor:
        shape = tf.image.extract_jpeg_shape(image_bytes, output_type=tf.int32)
        window = window_fn(shape)
        # A crop edge on an MCU boundary loses the chroma upsampling context of the neighbouring block, so
        # decode a margin around the window and slice it off: the window's pixels then equal a full decode.
        start = tf.maximum(window[:2] - _JPEG_CROP_MARGIN, 0)
        stop = tf.minimum(window[:2] + window[2:] + _JPEG_CROP_MARGIN, shape[:2])
        padded = tf.image.decode_and_crop_jpeg(image_bytes, tf.concat([start, stop - start], 0), channels=3)
        offset = window[:2] - start
        return tf.slice(padded, [offset[0], offset[1], 0], [window[2], window[3], 3])

    def other() -> tf.Tensor:
        image = _decode_full(image_bytes)
        window = window_fn(tf.shape(image, out_type=tf.int32))
        return tf.slice(image, [window[0], window[1], 0], [window[2], window[3], 3])

    image = tf.cond(tf.io.is_jpeg(image_bytes), jpeg, other)
    image.set_shape([None, None, 3])
    return image


def _to_unit_float(image: tf.Tensor) -> tf.Tensor:
    """[0, 255] -> [0, 1] as the release's `convert_image_dtype` (times the float32 reciprocal of 255).

    Applied AFTER the resize: the bilinear resize is linear, so resizing the uint8 pixels and scaling the
    S x S result equals (to float rounding, < 1e-7) scaling the whole crop first, at a fraction of the work.
    """
    return tf.cast(image, tf.float32) * (1.0 / 255.0)


def _resize_tf1_bilinear(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """Bilinear resize with TF1's `resize_images` / `resize_bilinear(align_corners=False)` convention.

    TF1 sampled at `i * scale` (no half-pixel centres); TF2's `tf.image.resize` samples at
    `(i + 0.5) * scale - 0.5`. The released checkpoints were trained and evaluated with the former.
    Takes uint8 or float pixels and returns float32 (the kernel interpolates in float32 either way).
    """
    resized = tf.raw_ops.ResizeBilinear(
        images=image[tf.newaxis], size=[image_size, image_size], align_corners=False, half_pixel_centers=False
    )[0]
    return tf.ensure_shape(resized, [image_size, image_size, 3])


def _to_model_range(image: tf.Tensor, image_size: int) -> tf.Tensor:
    """[0, 1] -> [-1, 1] with a static [S, S, 3] shape."""
    image = (image - 0.5) * 2.0
    return tf.ensure_shape(image, [image_size, image_size, 3])


# -------------------------------------------------------------------------------------- train transform
#
# Per image, in two parts:
#
# - TF ops (inside `Dataset.map`): the draws, the decode, crop and resize, and the rotation's parameters;
# - one of three small XLA computations on the S x S crop, chosen by the drawn branch
#   (`tf.switch_case`): flip, rotation, colour distortion in order 0, clip and scaling (branch 0); flip,
#   colour distortion in order 1, clip and scaling (branch 1); flip and scaling (branch 2). An image
#   only pays for its own branch, and its ~600 KB stay in the core's cache across the fused loops.
#
# Against the release's op-by-op chain, the rotation picks exactly the pixels of its op
# (`ImageProjectiveTransformV3`, nearest, zero fill; see `_rotation_source`) and the colours agree to
# float rounding (~1e-6; tests/test_preprocessing.py checks each branch against the tf.image ops).


def _crop_window(
    shape: tf.Tensor, crop_seed: tf.Tensor, *, area_cover: float, object_cover: float
) -> tf.Tensor:
    """int32[4] (top, left, height, width) sampled as the release does, with a stateless seed."""
    begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
        shape,
        bounding_boxes=tf.zeros([1, 0, 4], tf.float32),
        seed=crop_seed,
        min_object_covered=object_cover,
        aspect_ratio_range=ASPECT_RATIO_RANGE,
        area_range=(area_cover, 1.0),
        max_attempts=MAX_ATTEMPTS,
        use_image_if_no_bounding_boxes=True,
    )
    return tf.stack([begin[0], begin[1], size[0], size[1]])


def _rotation_transform(image_size: int, angle: tf.Tensor) -> tf.Tensor:
    """float32[8]: the projective transform of `tf.contrib.image.rotate` for an S x S image (TF ops).

    The transform maps OUTPUT (x, y) to the INPUT point (cos x - sin y + x_offset, sin x + cos y +
    y_offset) it samples; the offsets keep the centre fixed, as the release's
    `angles_to_projective_transforms` computes them; the perspective part (the last two entries) is 0.
    Written so that Grappler's algebraic rewrites cannot change the float rounding between eager and graph
    mode: both products come out of one multiply (`cos * side - sin * side` would otherwise have its common
    factor hoisted), and each offset is formed negated and then negated (`b - a` is exactly `-(a - b)`),
    so that no add chain is left for Grappler to reorder.
    """
    side = float(image_size - 1)
    cos, sin = tf.cos(angle), tf.sin(angle)
    products = tf.stack([cos, sin]) * side
    neg_x_offset = ((products[0] - products[1]) - side) / 2.0
    neg_y_offset = ((products[1] + products[0]) - side) / 2.0
    return tf.stack([cos, -sin, -neg_x_offset, sin, cos, -neg_y_offset, 0.0, 0.0])


def _round_half_away_from_zero(x: tf.Tensor) -> tf.Tensor:
    """`std::round` (`tf.round` rounds halves to even), exactly: `x - trunc(x)` is exact in float32."""
    whole = tf.where(x < 0, tf.math.ceil(x), tf.math.floor(x))
    return whole + tf.where(tf.abs(x - whole) >= 0.5, tf.sign(x), 0.0)


def _rotation_source(transform: tf.Tensor, height: int, width: int) -> tf.Tensor:
    """int32[H, W]: the flat index (row * W + column) of the pixel each output pixel copies, H * W for fill.

    Exactly the choice of `ImageProjectiveTransformV3` (nearest, constant fill) for a transform without a
    perspective part: it computes `(t0 * x + t1 * y) + t2` in float32 (its division by the projection
    `0 * x + 0 * y + 1` is exact), rounds with `std::round` and fills what falls outside [0, H) x [0, W).
    Each float32 product is formed exactly, as the float64 product of two float32 values (exact) rounded
    once, so that the compiler cannot fuse a product and a sum into one FMA, which rounds only once.
    """

    def product(a: tf.Tensor, b: tf.Tensor) -> tf.Tensor:
        return tf.cast(tf.cast(a, tf.float64) * tf.cast(b, tf.float64), tf.float32)

    xs = tf.range(width, dtype=tf.float32)[tf.newaxis, :]
    ys = tf.range(height, dtype=tf.float32)[:, tf.newaxis]
    column = _round_half_away_from_zero(
        (product(transform[0], xs) + product(transform[1], ys)) + transform[2]
    )
    row = _round_half_away_from_zero((product(transform[3], xs) + product(transform[4], ys)) + transform[5])
    column, row = tf.cast(column, tf.int32), tf.cast(row, tf.int32)
    inside = (column >= 0) & (column < width) & (row >= 0) & (row < height)
    return tf.where(inside, row * width + column, height * width)


# Colour distortion. The release applies tf.image's brightness, saturation, hue and contrast ops one after
# the other; saturation is followed by hue in both of its orders, and each of the two is an RGB -> HSV ->
# RGB round trip, so here they are ONE step in RGB: the value V and hue H of a pixel stay, the chroma
# becomes min(k * (max - min), V) (= the new saturation clip(k S, 0, 1) times V) and the hue turns by
# delta, which is the composition of the two kernels' formulas (compared with the tf.image ops:
# ~1e-6, float rounding). The work is done on planes ([3, S, S], channels first): XLA then emits
# contiguous, vectorised loops, faster than over interleaved RGB triples. The quirks of the
# kernels are kept: a pixel whose channels are all <= 0 has saturation 0 (it becomes grey at its maximum),
# values outside [0, 1] (after the brightness shift; nothing clips before the end) go through the same
# formulas, and a hue that the AdjustSaturation kernel rounds up to exactly 1.0 (a red pixel whose green is
# below its blue by less than 2^-25 of its chroma * 6) becomes grey at the new minimum (its `default:`).


def _saturation_and_hue(planes: tf.Tensor, saturation_factor: tf.Tensor, hue_delta: tf.Tensor) -> tf.Tensor:
    """`tf.image.adjust_hue(tf.image.adjust_saturation(image, k), delta)` on planes [..., 3, H, W].

    `saturation_factor` and `hue_delta` broadcast against one plane (per-image values of a batch).
    """
    r, g, b = tf.unstack(planes, axis=-3)
    v = tf.maximum(r, tf.maximum(g, b))
    chroma = v - tf.minimum(r, tf.minimum(g, b))
    inverse = 1.0 / chroma
    red_max, green_max = tf.equal(r, v), tf.equal(g, v)
    ratio = tf.where(red_max, (g - b) * inverse, tf.where(green_max, (b - r) * inverse, (r - g) * inverse))
    # Hue in [0, 6): the kernel's sectors (red, green, blue maximum), 0 for greys.
    hue = tf.where(chroma > 0, ratio + tf.where(red_max, 0.0, tf.where(green_max, 2.0, 4.0)), 0.0)
    saturation_default_case = red_max & (ratio < 0) & (ratio >= -6.0 * 2.0**-25)
    new_chroma = tf.where(v > 0, tf.minimum(saturation_factor * chroma, v), 0.0)
    hue = hue + hue_delta * 6.0
    hue = hue - 6.0 * tf.floor(hue * (1.0 / 6.0))  # the hue kernel's wrap into [0, 6)

    def channel(offset: float) -> tf.Tensor:
        # The HSV -> RGB hexcone: V - C * clip(min(k, 4 - k), 0, 1) with k = (offset + H) mod 6.
        k = offset + hue
        k = tf.where(k >= 6.0, k - 6.0, k)
        value = v - new_chroma * tf.clip_by_value(tf.minimum(k, 4.0 - k), 0.0, 1.0)
        return tf.where(saturation_default_case, v - new_chroma, value)

    return tf.stack([channel(5.0), channel(3.0), channel(1.0)], axis=-3)


def _adjust_contrast(planes: tf.Tensor, factor: tf.Tensor) -> tf.Tensor:
    """`tf.image.adjust_contrast` on planes [..., H, W]: mean + factor * (x - mean), the mean per plane.

    The kernel sums pairwise, which is nearly exact; a plain float32 reduction here drifts by up to 2e-5 on
    a 224 x 224 image, so rows are summed first and the row sums accumulated in float64.
    """
    shape = tf.shape(planes)
    rows = tf.reduce_sum(planes, axis=-1, keepdims=True)
    total = tf.cast(tf.reduce_sum(tf.cast(rows, tf.float64), axis=-2, keepdims=True), tf.float32)
    mean = total * (1.0 / tf.cast(shape[-2] * shape[-1], tf.float32))  # the kernel's `1.0f / image_size`
    return mean + factor * (planes - mean)


def _start(crop: tf.Tensor, flip: tf.Tensor) -> tf.Tensor:
    """A [0, 255] crop to [0, 1] (`convert_image_dtype`: times the float32 reciprocal of 255), flipped if drawn."""
    image = crop * (1.0 / 255.0)
    return tf.where(flip, tf.reverse(image, axis=[1]), image)


def _finish(image: tf.Tensor, output: str) -> tf.Tensor:
    """Clip to [0, 1] (the random colour ops do not clamp; the release clips once, at the end), then to the
    model's [-1, 1] (`output` "float32") or to 8 bits (`output` "uint8": x 255, rounded half to even)."""
    unit = tf.clip_by_value(image, 0.0, 1.0)
    if output == "uint8":
        return tf.cast(tf.round(unit * 255.0), tf.uint8)
    return (unit - 0.5) * 2.0


def _planes(image: tf.Tensor) -> tf.Tensor:
    return tf.transpose(image, [2, 0, 1])


def _pixels(planes: tf.Tensor) -> tf.Tensor:
    return tf.transpose(planes, [1, 2, 0])


# The three branches' XLA computations (one compilation per image size). The rotation's source indices are
# a computation of their own: as one computation with the gather, the rotation was slower.
_rotation_source_xla = tf.function(_rotation_source, jit_compile=True)


@tf.function(jit_compile=True)
def _augment_branch_0(
    crop: tf.Tensor, flip: tf.Tensor, source: tf.Tensor, color: tf.Tensor, output: str = "float32"
) -> tf.Tensor:
    """Flip, rotation (`_rotation_source`), colour order 0: brightness, saturation, hue, contrast."""
    image = _start(crop, flip)
    pixels = tf.concat([tf.reshape(image, [-1, 3]), tf.zeros([1, 3])], axis=0)  # the last one is the fill
    planes = _planes(tf.gather(pixels, source)) + color[0]
    planes = _saturation_and_hue(planes, color[1], color[2])
    return _finish(_pixels(_adjust_contrast(planes, color[3])), output)


# Branch 1 is two XLA computations, the contrast and then the saturation and hue. As one, XLA's CPU backend
# materialises the brightened planes only for the contrast's mean, and computes the saturation and hue
# (and, apart, their max(r, g, b)) in loops over the INTERLEAVED [S, S, 3] output, each loop element
# recomputing the flip, the transpose, the brightness and the contrast of its pixel's three values from the
# crop: 3.4 - 4.3 CPU ms per 224 x 224 image on the AMD EPYC of docs/BENCHMARKS.md (AVX2), against 0.7 as
# two computations (section 3, `tools/benchmark.py augment`), the same values to 2e-6 (float rounding).
# Branch 0 does not need this: its gather output is materialised as planes before the colour steps.
@tf.function(jit_compile=True)
def _augment_branch_1_contrast(crop: tf.Tensor, flip: tf.Tensor, color: tf.Tensor) -> tf.Tensor:
    """Flip, brightness and contrast of colour order 1, as planes [3, S, S]."""
    return _adjust_contrast(_planes(_start(crop, flip)) + color[0], color[3])


@tf.function(jit_compile=True)
def _augment_branch_1_saturation_hue(planes: tf.Tensor, color: tf.Tensor, output: str) -> tf.Tensor:
    """Saturation and hue of colour order 1 on planes, then clip and scale to [S, S, 3]."""
    return _finish(_pixels(_saturation_and_hue(planes, color[1], color[2])), output)


def _augment_branch_1(
    crop: tf.Tensor, flip: tf.Tensor, color: tf.Tensor, output: str = "float32"
) -> tf.Tensor:
    """Flip, colour order 1: brightness, contrast, saturation, hue (two XLA computations, see above)."""
    return _augment_branch_1_saturation_hue(_augment_branch_1_contrast(crop, flip, color), color, output)


@tf.function(jit_compile=True)
def _augment_branch_2(crop: tf.Tensor, flip: tf.Tensor, output: str = "float32") -> tf.Tensor:
    """Flip only."""
    return _finish(_start(crop, flip), output)


def _train_crop(
    image_bytes: tf.Tensor,
    decisions: Mapping[str, tf.Tensor],
    *,
    image_size: int,
    area_cover: float,
    object_cover: float,
) -> tf.Tensor:
    """The drawn crop of the decoded image, resized to float32[S, S, 3] in [0, 255].

    Resizing the uint8 pixels and scaling the S x S result (`_start`) equals scaling the crop first, the
    resize being linear, and flips and nearest-neighbour rotations only move pixels.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)

    def window(shape: tf.Tensor) -> tf.Tensor:
        return _crop_window(shape, decisions["crop_seed"], area_cover=area_cover, object_cover=object_cover)

    if area_cover < _FUSED_CROP_BELOW_AREA:
        image = _decode_cropped(image_bytes, window)
    else:
        image = _decode_full(image_bytes)
        box = window(tf.shape(image, out_type=tf.int32))
        image = tf.slice(image, [box[0], box[1], 0], [box[2], box[3], 3])
    return _resize_tf1_bilinear(image, image_size)


def train_transform(
    image_bytes: tf.Tensor,
    seed: tf.Tensor,
    *,
    image_size: int,
    area_cover: float,
    object_cover: float,
    distort: bool = True,
    output: str = "float32",
) -> tf.Tensor:
    """The reference training augmentation of one encoded image, fully determined by `seed`.

    See the module docstring for the exact recipe and where it departs from the release's own docstrings
    (rotation with probability 1/3, not 1/4; colour distortion 2/3, not 1/2).

    Args:
      image_bytes: Scalar string tensor, encoded JPEG (fast fused path), PNG, GIF or BMP.
      seed: int32/int64[2], this element's seed; the same seed gives bit-identical output.
      image_size: Output side S.
      area_cover: Lower bound of the crop's area fraction (pre-training 0.7, fine-tuning 0.05).
      object_cover: `min_object_covered` of the crop (pre-training 0.7, fine-tuning 0.0).
      distort: False keeps only the crop and the flip (no rotation, no colour distortion), for data whose
        labels ARE colours or positions, such as the built-in demo's; True is the reference.
      output: "float32" (the reference) or "uint8" (`train_transform_uint8`).

    Returns:
      float32[S, S, 3] in [-1, 1]; uint8[S, S, 3] for `output` "uint8".
    """
    decisions = _augment_decisions(seed)
    crop = _train_crop(
        image_bytes, decisions, image_size=image_size, area_cover=area_cover, object_cover=object_cover
    )
    flip = decisions["flip"]
    if not distort:
        return _augment_branch_2(crop, flip, output)
    color = tf.stack(
        [decisions[k] for k in ("brightness_delta", "saturation_factor", "hue_delta", "contrast_factor")]
    )

    def rotated() -> tf.Tensor:
        transform = _rotation_transform(image_size, decisions["angle"])
        source = _rotation_source_xla(transform, image_size, image_size)
        return _augment_branch_0(crop, flip, source, color, output)

    branches = [
        rotated,
        lambda: _augment_branch_1(crop, flip, color, output),
        lambda: _augment_branch_2(crop, flip, output),
    ]
    image = tf.switch_case(decisions["branch"], branches)
    return tf.ensure_shape(image, [image_size, image_size, 3])


def train_transform_uint8(image_bytes: tf.Tensor, seed: tf.Tensor, **kwargs) -> tf.Tensor:
    """`train_transform`'s image in 8 bits (uint8[S, S, 3]), a quarter of the bytes on the way to the device.

    The same augmentation up to its last step: the clipped [0, 1] image is scaled by 255 and rounded (half to
    even, `tf.round`) instead of being mapped to [-1, 1]. `uint8_to_model_range` on the device then gives
    the model's input, within 1/255 of `train_transform`'s (a rounding moves each value by at most 0.5/255
    in [0, 1]). Keyword arguments as `train_transform`'s.
    """
    return train_transform(image_bytes, seed, output="uint8", **kwargs)


def uint8_to_model_range(images: tf.Tensor) -> tf.Tensor:
    """uint8 pixels (`train_transform_uint8`) -> the model's float32 [-1, 1], on the device inside the step.

    ``(x - 127.5) * (2 / 255)``: the subtraction is exact (a half-integer), so the result is one float32
    rounding of the exact value, whatever compiles it. The form ``(x * (1 / 255) - 0.5) * 2`` of
    `train_transform`'s own scaling is not: XLA contracts it into a fused multiply-add, which rounds once
    less and differs in the last bit for some grey levels, so host and device would disagree.
    """
    return (tf.cast(images, tf.float32) - 127.5) * (2.0 / 255.0)


# --------------------------------------------------------------------------------- evaluation transforms


def _central_crop_window(shape: tf.Tensor, central_fraction: float) -> tf.Tensor:
    """int32[4] (top, left, height, width): exactly the window `tf.image.central_crop` slices."""
    hw = tf.cast(shape[:2], tf.float64)
    start = tf.cast((hw - hw * central_fraction) / 2.0, tf.int32)  # truncation, as central_crop
    size = shape[:2] - 2 * start
    return tf.concat([start, size], axis=0)


def eval_transform(
    image_bytes: tf.Tensor, *, image_size: int, central_fraction: float = EVAL_CENTRAL_FRACTION
) -> tf.Tensor:
    """The release's evaluation transform: central crop of `central_fraction`, bilinear resize to S x S.

    For JPEG only the central window is decoded; the result equals decode + `tf.image.central_crop` +
    TF1-convention bilinear resize.

    Args:
      image_bytes: Scalar string tensor, encoded image.
      image_size: Output side S.
      central_fraction: Fraction of each side kept (the release: 0.8).

    Returns:
      float32[S, S, 3] in [-1, 1].
    """
    if not 0.0 < central_fraction <= 1.0:
        raise ValueError(f"central_fraction must be in (0, 1], got {central_fraction}")
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image = _decode_cropped(image_bytes, lambda shape: _central_crop_window(shape, central_fraction))
    image = _to_unit_float(_resize_tf1_bilinear(image, image_size))
    return _to_model_range(image, image_size)


def decode_like_opencv(image_bytes: tf.Tensor, orientation: tf.Tensor | int = 1) -> tf.Tensor:
    """uint8[H, W, 3] RGB pixels as the release's tools get them from `cv.imread(path)` (then BGR -> RGB).

    JPEG is decoded with the accurate integer IDCT (`dct_method="INTEGER_ACCURATE"`, libjpeg's ISLOW, the
    one OpenCV uses; TF's default fast IDCT gives other pixels, docs/REFERENCE.md section 6), with fancy
    upsampling as both do; other formats as `tf.io.decode_image`. Then the EXIF orientation is applied, as
    `cv.imread` does.

    Args:
      image_bytes: Scalar string tensor, encoded image.
      orientation: EXIF orientation 1..8 of the file (`load_image_file` reads it from the header); TF's
        decoders ignore EXIF, so it is passed in. 1 (as stored) for records.
    """
    image_bytes = tf.convert_to_tensor(image_bytes, tf.string)
    image = tf.cond(
        tf.io.is_jpeg(image_bytes),
        lambda: tf.io.decode_jpeg(image_bytes, channels=3, dct_method="INTEGER_ACCURATE"),
        lambda: _decode_full(image_bytes),
    )
    image.set_shape([None, None, 3])
    return apply_exif_orientation(image, orientation)


def apply_exif_orientation(image: tf.Tensor, orientation: tf.Tensor | int) -> tf.Tensor:
    """Turns stored pixels [H, W, C] into displayed ones for EXIF orientation 1..8 (others: unchanged).

    The eight cases of the EXIF standard (and of OpenCV's and Pillow's `exif_transpose`): 1 as stored,
    2 mirrored, 3 rotated 180, 4 flipped, 5 transposed, 6 rotated 90 clockwise, 7 transversed, 8 rotated 90
    counter-clockwise. Pure index moves: no pixel value changes.
    """
    transposed = lambda: tf.transpose(image, [1, 0, 2])  # noqa: E731
    branches = [
        lambda: image,
        lambda: tf.reverse(image, axis=[1]),
        lambda: tf.reverse(image, axis=[0, 1]),
        lambda: tf.reverse(image, axis=[0]),
        transposed,
        lambda: tf.reverse(transposed(), axis=[1]),
        lambda: tf.reverse(transposed(), axis=[0, 1]),
        lambda: tf.reverse(transposed(), axis=[0]),
    ]
    orientation = tf.convert_to_tensor(orientation, tf.int32)
    index = tf.where((orientation >= 1) & (orientation <= 8), orientation - 1, 0)
    rotated = tf.switch_case(index, branches)
    rotated.set_shape([None, None, image.shape[-1]])
    return rotated


def demo_resize(
    image_bytes: tf.Tensor,
    *,
    image_size: int,
    resize_side: int | None = None,
    orientation: tf.Tensor | int = 1,
) -> tuple[tf.Tensor, tf.Tensor]:
    """The resize of the release's demo scripts, before their crop(s): (float32[H', W', 3] in [0, 1], [H', W']).

    The shorter side becomes `resize_side` (None: the release's 256 / 224 ratio to `image_size`), the long
    side `int(long / short * resize_side)` (truncated); bilinear with half-pixel centres (`cv.resize`
    INTER_LINEAR = TF2 `tf.image.resize` without antialiasing), rounded to uint8 values (OpenCV interpolates
    in 11-bit fixed point: a pixel may differ from it by one level). The decode is `decode_like_opencv`.
    """
    if resize_side is None:
        resize_side = int(round(image_size / DEMO_CROP_FRACTION))
    if resize_side < image_size:
        raise ValueError(f"resize_side {resize_side} is smaller than image_size {image_size}")
    image = decode_like_opencv(image_bytes, orientation)
    hw = tf.cast(tf.shape(image)[:2], tf.float64)
    short = tf.reduce_min(hw)
    new_hw = tf.where(hw <= short, tf.constant(resize_side, tf.float64), hw / short * resize_side)
    new_hw = tf.cast(new_hw, tf.int32)  # truncation, as int() in the release
    resized = tf.image.resize(image, new_hw, method="bilinear", antialias=False)
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0) / 255.0, new_hw


def demo_transform(
    image_bytes: tf.Tensor,
    *,
    image_size: int = 224,
    resize_side: int | None = None,
    orientation: tf.Tensor | int = 1,
) -> tf.Tensor:
    """The release's tools' transform (`image_classification.py`, `extract_feature.py`): side 256, crop 224.

    Reproduces their OpenCV code: `cv.imread` (accurate IDCT, EXIF orientation applied; see
    `decode_like_opencv`), BGR -> RGB, the new long side `int(long / short * resize_side)` (truncated), the
    resize bilinear with half-pixel centres (`cv.resize` INTER_LINEAR = TF2 `tf.image.resize` without
    antialiasing) rounded to uint8, the crop offset `int((new - crop) / 2)`, then `(x / 255 - 0.5) * 2`.
    tests/test_preprocessing.py checks it against OpenCV itself (at most one level apart per pixel).

    Args:
      image_bytes: Scalar string tensor, encoded image.
      image_size: Crop side S (the release: 224).
      resize_side: Length of the shorter side before cropping; None keeps the release's 256 / 224 ratio
        (256 at 224, 342 at 299).
      orientation: The file's EXIF orientation (`load_image_file`); 1 for records, whose decode in the
        release's TF pipeline ignores EXIF.

    Returns:
      float32[S, S, 3] in [-1, 1].
    """
    resized, new_hw = demo_resize(
        image_bytes, image_size=image_size, resize_side=resize_side, orientation=orientation
    )
    offset = (new_hw - image_size) // 2
    crop = tf.slice(resized, [offset[0], offset[1], 0], [image_size, image_size, 3])
    return _to_model_range(crop, image_size)


def full_transform(image_bytes: tf.Tensor, *, image_size: int) -> tf.Tensor:
    """The whole image resized to S x S (no central crop), for data whose labels reach the borders."""
    return eval_transform(image_bytes, image_size=image_size, central_fraction=1.0)


TRANSFORMS: Final[Mapping[str, EvalTransform]] = types.MappingProxyType(
    {"reference": eval_transform, "demo": demo_transform, "full": full_transform}
)


def get_transform(name: str) -> EvalTransform:
    """The evaluation transform called `name` (`evaluate.py --transform`): `fn(image_bytes, *, image_size)`.

    Raises:
      ValueError: for an unknown name (the message lists the known ones).
    """
    try:
        return TRANSFORMS[name]
    except KeyError:
        raise ValueError(f"unknown transform {name!r}; choose one of {sorted(TRANSFORMS)}") from None


FileTransform = Callable[[tf.Tensor, tf.Tensor], tf.Tensor]


def file_transform(name: str, *, image_size: int) -> FileTransform:
    """The transform `name` for an image FILE of the inference tools: (encoded bytes, EXIF orientation) -> image.

    `demo` (the release's tools, which read files with `cv.imread`) applies the orientation as `cv.imread`
    does; `reference` and `full` ignore it, as the release's TF evaluation pipeline does.

    Raises:
      ValueError: for an unknown name.
    """
    transform = get_transform(name)
    if transform is demo_transform:
        return lambda image_bytes, orientation: demo_transform(
            image_bytes, image_size=image_size, orientation=orientation
        )
    return lambda image_bytes, orientation: transform(image_bytes, image_size=image_size)


# ------------------------------------------------------------------------------------------ file loading

# Passed to TF unchanged: the JPEGs TF decodes to the right RGB (`images.tensorflow_decodes_as_is`: grey,
# RGB, Adobe CMYK) and 8-bit PNG. Everything else is converted by `data.pixels.images.to_rgb8` (the pixels OpenCV's
# `imread` gives: 16-bit PNG keeps the high byte, CMYK without the Adobe marker is converted) and
# re-encoded as a lossless PNG; other formats (WebP, TIFF, ...) TF cannot read at all.
_TF_READABLE_PNG_MODES: Final = frozenset({"1", "L", "LA", "P", "PA", "RGB", "RGBA"})
_EXIF_ORIENTATION_TAG: Final = 0x0112
_EXIF_FORMATS: Final = frozenset({"JPEG", "MPO"})


@dataclasses.dataclass(frozen=True)
class ImageFile:
    """An image file as the transforms take it: encoded bytes TF decodes, and its EXIF orientation."""

    data: bytes
    orientation: int = 1  # EXIF orientation 1..8 (1: as stored); see `apply_exif_orientation`


def load_image_file(
    path: str | os.PathLike[str], *, max_pixels: int = images.DEFAULT_MAX_PIXELS
) -> ImageFile:
    """Reads and checks an image file through data/pixels/images.py (the one image check) for the inference tools.

    The header is checked first (`images.open_image`: format, size, and `max_pixels`, so a 30000 x 30000
    PNG is refused before a pixel is decoded), then the whole file is decoded once (`images.verify_decodes`,
    JPEG at 1/8 scale) so that a truncated or corrupt file fails here with a short reason rather than inside
    a batch. JPEG (grey, RGB, Adobe CMYK) and 8-bit PNG files are returned unchanged; anything else Pillow
    reads (CMYK JPEG without the Adobe marker, 16-bit PNG, WebP, TIFF, BMP, GIF, ...) becomes 8-bit RGB as
    OpenCV's `imread` would give it
    (`images.to_rgb8`), re-encoded losslessly as PNG. The EXIF orientation of a JPEG is returned, not applied:
    `demo_transform` applies it after its decode, as `cv.imread` does.

    Raises:
      images.BadImage: (a ValueError) missing, empty, not an image, too many pixels, corrupt or truncated;
        its `reason` is a short text for the tools' skip list.
    """
    return image_from_bytes(images.read_file(os.fspath(path)), max_pixels=max_pixels, name=os.fspath(path))


def image_from_bytes(
    data: bytes, *, max_pixels: int = images.DEFAULT_MAX_PIXELS, name: str = "image"
) -> ImageFile:
    """`load_image_file` for bytes already in memory (`name` only labels the log line).

    Raises:
      images.BadImage: not an image, too many pixels, corrupt or truncated.
    """
    image = images.open_image(data, max_pixels=max_pixels)
    orientation = _exif_orientation(image)
    if images.tensorflow_decodes_as_is(image) or (
        image.format == "PNG" and image.mode in _TF_READABLE_PNG_MODES
    ):
        images.verify_decodes(image)
        return ImageFile(data, orientation)
    logging.info("re-encoding %s (%s, mode %s) as RGB PNG", name, image.format, image.mode)
    out = io.BytesIO()
    images.to_rgb8(image).save(out, format="PNG")
    return ImageFile(out.getvalue(), orientation)


def _exif_orientation(image) -> int:
    """The EXIF orientation (1..8) of a JPEG from its header; 1 when absent, invalid, or not a JPEG."""
    if image.format not in _EXIF_FORMATS:
        return 1
    try:
        orientation = int(image.getexif().get(_EXIF_ORIENTATION_TAG, 1))
    except Exception:  # noqa: BLE001 -- a malformed EXIF block is ignored, as OpenCV ignores it
        return 1
    return orientation if 1 <= orientation <= 8 else 1


def preprocess(
    image_bytes: bytes | Sequence[bytes],
    *,
    transform: str = "demo",
    image_size: int = 224,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
) -> tf.Tensor:
    """Encoded image(s) -> the network's input batch float32[N, S, S, 3], as the inference tools make it.

    The same path as tools/image_classification.py for a file: the bytes are checked and, where TF cannot
    decode them as they are, converted (`image_from_bytes`), then `file_transform(transform)` runs with
    the file's EXIF orientation. The default `demo` is the release's tools' transform (shorter side to
    256 / 224 x S, centre crop S); `reference` and `full` are the evaluation transforms (TRANSFORMS).

    Args:
      image_bytes: one encoded image (JPEG, PNG, ...) or a sequence of them.
      transform: a name of TRANSFORMS.
      image_size: the crop side S.
      max_pixels: larger images are refused (0: only Pillow's own limit).

    Returns:
      float32[N, S, S, 3] in [-1, 1]; N = 1 for a single `bytes`.

    Raises:
      ValueError: an unknown transform; `images.BadImage` (a ValueError) for an unusable image.
    """
    batch = [image_bytes] if isinstance(image_bytes, bytes | bytearray) else list(image_bytes)
    fn = file_transform(transform, image_size=image_size)
    out = []
    for data in batch:
        image = image_from_bytes(bytes(data), max_pixels=max_pixels)
        out.append(fn(tf.constant(image.data), tf.constant(image.orientation, tf.int32)))
    return tf.stack(out) if out else tf.zeros([0, image_size, image_size, 3], tf.float32)
