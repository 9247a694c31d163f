"""``augment``: single-threaded CPU ms per image of each augmentation branch of
`data.pixels.preprocessing.train_transform` after the crop, and of the rotation alone, ours (the XLA gather) vs the
release's op (`release_pipeline.release_rotate`).
"""

from __future__ import annotations

import numpy as np
from absl import flags

from tools.benchmarks.common import Timer, emit, emit_machine
from tools.benchmarks.release_pipeline import release_rotate

FLAGS_USED: tuple[str, ...] = ("image_size", "batch_size", "steps", "warmup")


def run(f: flags.FlagValues) -> None:
    """CPU ms per image of each augmentation branch of `preprocessing.train_transform` after the crop, and
    of the rotation alone, ours (the XLA gather) vs the release's op (ImageProjectiveTransformV3); one
    thread, --batch_size random --image_size crops per timed call, --steps calls after --warmup."""
    import tensorflow as tf

    from data.pixels import preprocessing as pre

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    emit_machine("augment")
    size, batch = f.image_size, f.batch_size
    rng = np.random.default_rng(0)
    crops = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    flips = tf.constant(rng.uniform(size=batch) < 0.5)
    colors = tf.constant(
        np.stack(
            [
                rng.uniform(-pre.BRIGHTNESS_MAX_DELTA, pre.BRIGHTNESS_MAX_DELTA, batch),
                rng.uniform(*pre.SATURATION_RANGE, batch),
                rng.uniform(-pre.HUE_MAX_DELTA, pre.HUE_MAX_DELTA, batch),
                rng.uniform(*pre.CONTRAST_RANGE, batch),
            ],
            axis=1,
        ).astype(np.float32)
    )
    angle_max = pre.MAX_ROTATION_DEGREES * np.pi / 180
    transforms = tf.stack(
        [
            pre._rotation_transform(size, tf.constant(a, tf.float32))
            for a in rng.uniform(-1, 1, batch) * angle_max
        ]
    )

    @tf.function(jit_compile=True)
    def gather(image, source):  # as `_augment_branch_0` does, inside XLA
        return tf.gather(tf.concat([tf.reshape(image, [-1, 3]), tf.zeros([1, 3])], axis=0), source)

    def our_rotation(i):
        return gather(crops[i], pre._rotation_source_xla(transforms[i], size, size))

    def release_rotation(i):
        return release_rotate(crops[i], transforms[i])

    def branch_0(i):
        source = pre._rotation_source_xla(transforms[i], size, size)
        return pre._augment_branch_0(crops[i], flips[i], source, colors[i])

    variants = {
        "branch_0": branch_0,
        "branch_1": lambda i: pre._augment_branch_1(crops[i], flips[i], colors[i]),
        "branch_2": lambda i: pre._augment_branch_2(crops[i], flips[i]),
        "rotation_ours": our_rotation,
        "rotation_release_op": release_rotation,
    }
    for name, one in variants.items():
        # The images' sums feed the output, so that no image's work is pruned.
        timed = tf.function(lambda one=one: tf.add_n([tf.reduce_sum(one(i)) for i in range(batch)]))
        for _ in range(f.warmup):
            timed().numpy()
        with Timer() as t:
            for _ in range(f.steps):
                timed().numpy()
        emit(f"augment/{name}", cpu_ms_per_image=round(t.cpu / (f.steps * batch) * 1e3, 3))
