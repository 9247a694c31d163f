"""A port of the release's input pipeline (train.py `input_fn` + image_preprocessing.py) to TF2 ops.

The baseline of ``pipeline --compare`` and, through `release_rotate`, of the ``augment`` rotation: the
release's own op calls, so that our pipeline is measured against what the release actually ran.
"""

from __future__ import annotations

import math
from collections.abc import Sequence


def release_rotate(image, transform):
    """`tf.contrib.image.rotate`'s op on one [H, W, C] image: nearest neighbour, zero fill, same size."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0]


def original_pipeline(
    files: Sequence[str], *, batch_size: int, image_size: int, num_classes: int, shuffle_buffer: int
):
    """A port of the release's input pipeline (train.py `input_fn` + image_preprocessing.py), TF2 ops.

    Sequential `flat_map` over the (shuffled) files, one `map` with 5 parallel calls that parses one record,
    decodes the WHOLE image, converts it to float and only then crops, resizes, flips, rotates and distorts
    the colours with stateful random ops; `prefetch(batch_size)`, a shuffle of decoded images, `batch`.
    Records are the reference dense layout. One change: `repeat` is on the file list rather than after the
    image shuffle, so that a benchmark-sized dataset does not refill the shuffle buffer every epoch (on
    17.6M images that refill is negligible).
    """
    import tensorflow as tf

    spec = {
        "width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "image": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "label": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "name": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def rotate(image, angle):  # tf.contrib.image.rotate: nearest neighbour, zero fill
        height, width = float(image_size), float(image_size)
        cos, sin = tf.cos(angle), tf.sin(angle)
        x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
        y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
        return release_rotate(image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]))

    def color_ordering_0(image):
        image = tf.image.random_brightness(image, max_delta=32.0 / 255.0)
        image = tf.image.random_saturation(image, lower=0.5, upper=1.5)
        image = tf.image.random_hue(image, max_delta=0.2)
        return tf.image.random_contrast(image, lower=0.5, upper=1.5)

    def color_ordering_1(image):
        image = tf.image.random_brightness(image, max_delta=32.0 / 255.0)
        image = tf.image.random_contrast(image, lower=0.5, upper=1.5)
        image = tf.image.random_saturation(image, lower=0.5, upper=1.5)
        return tf.image.random_hue(image, max_delta=0.2)

    def parse(value):
        parsed = tf.io.parse_single_example(value, spec)
        image = tf.image.decode_image(tf.reshape(parsed["image"], []), 3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        thread_id = tf.random.uniform([], minval=0, maxval=3, dtype=tf.int32)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.zeros([1, 0, 4]),
            min_object_covered=0.7,
            aspect_ratio_range=[0.75, 1.33],
            area_range=[0.7, 1.0],
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
        image = tf.compat.v1.image.resize_images(image, [image_size, image_size])
        image.set_shape([image_size, image_size, 3])
        image = tf.image.random_flip_left_right(image)
        angle = tf.random.uniform([], minval=-45 * math.pi / 180, maxval=45 * math.pi / 180)
        image = tf.cond(tf.equal(thread_id, 0), lambda: rotate(image, angle), lambda: image)
        image = tf.cond(tf.equal(thread_id, 0), lambda: color_ordering_0(image), lambda: image)
        image = tf.cond(tf.equal(thread_id, 1), lambda: color_ordering_1(image), lambda: image)
        image = tf.clip_by_value(image, 0.0, 1.0)
        image = tf.reshape((image - 0.5) * 2.0, [image_size, image_size, 3])
        label = tf.reshape(tf.io.decode_raw(parsed["label"], tf.float32), [num_classes])
        return image, label

    ds = tf.data.Dataset.from_tensor_slices(list(files)).shuffle(len(files), seed=1).repeat()
    ds = ds.flat_map(tf.data.TFRecordDataset)
    ds = ds.map(parse, num_parallel_calls=5).prefetch(batch_size)
    return ds.shuffle(shuffle_buffer).batch(batch_size)
