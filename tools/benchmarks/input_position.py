"""``input_position``: bytes and save time of one rank's saved input position (`training.checkpoints.
save_input_position`) on records of the benchmark JPEGs, ours against ``--compare``'s baseline: the
pipeline as it was before #22, a `tf.data.Dataset.shuffle` buffer checkpointed with its contents.

At the reference settings (500x375 photo-like JPEGs, sparse labels, ``--shuffle_buffer=1024``, batch 32,
224 px) the baseline saves every buffered encoded JPEG and the prefetched batches; ours saves where each
stage's input stands (tf.data's symbolic checkpointing over a stateless window shuffle).
"""

from __future__ import annotations

import os
import tempfile

import numpy as np
from absl import flags

from tools.benchmarks import photos
from tools.benchmarks.common import Timer, emit, emit_machine

FLAGS_USED: tuple[str, ...] = (
    *photos.IMAGE_FLAGS,
    "workers",
    "shards",
    "compare",
    "batch_size",
    "image_size",
    "warmup",
    "rounds",
    "shuffle_buffer",
)


def buffered_pipeline(source, *, batch_size: int, image_size: int, shuffle_buffer: int):
    """The baseline: our pipeline with a `tf.data.Dataset.shuffle` buffer and tf.data's default
    (non-symbolic) checkpointing, as `train_dataset` was before #22 item 1."""
    import tensorflow as tf

    from data.pixels import preprocessing
    from training import input_pipeline

    ds = source.records(num_shards=1, shard_index=0, training=True, seed=0)
    ds = source.parse(ds.shuffle(shuffle_buffer, seed=1, reshuffle_each_iteration=True))
    stream = tf.constant([0, 0], tf.int64)

    def transform(index, element):
        seed = tf.random.experimental.stateless_fold_in(stream, index)
        image = preprocessing.train_transform(
            element[0], seed, image_size=image_size, area_cover=0.7, object_cover=0.7
        )
        return image, element[1]

    ds = ds.enumerate().map(transform, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
    options = input_pipeline._pipeline_options()
    options.experimental_symbolic_checkpoint = False
    return ds.with_options(options)


def measure(dataset, *, warmup: int, rounds: int) -> dict:
    """Bytes of one saved position (after `warmup` batches) and the median save time over `rounds`."""
    from training import checkpoints

    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    seconds, sizes = [], []
    with tempfile.TemporaryDirectory() as model_dir:
        for step in range(rounds):
            next(iterator)
            meta = checkpoints.InputMeta(step=step, num_ranks=1, global_batch=1, input_seed=0, saved=True)
            with Timer() as t:
                checkpoints.save_input_position(
                    iterator, model_dir=model_dir, rank=0, step=step, keep=1, meta=meta
                )
            seconds.append(t.wall)
            folder = os.path.dirname(checkpoints.input_checkpoint_prefix(model_dir, 0))
            sizes.append(sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder)))
    return {
        "bytes": int(np.median(sizes)),
        "megabytes": round(float(np.median(sizes)) / 1e6, 3),
        "save_seconds": round(float(np.median(seconds)), 3),
        "rounds": rounds,
    }


def run(f: flags.FlagValues) -> None:
    """One rank's input-position bytes and save time; with --compare, the shuffle-buffer baseline's too."""
    from training import input_pipeline

    emit_machine("input_position")
    list_path, _ = photos.benchmark_images(f)
    records = photos.cached_records(list_path, "sparse", f=f)
    source = input_pipeline.tfrecord_source(records, "train", num_classes=f.num_classes)
    shape = {"batch_size": f.batch_size, "image_size": f.image_size}
    emit(
        "input_position/setup",
        image=f"{f.image_width}x{f.image_height}",
        num_images=f.num_images,
        shards=f.shards,
        shuffle_buffer=f.shuffle_buffer,
        warmup=f.warmup,
        **shape,
    )
    variants = {
        "ours": lambda: input_pipeline.train_dataset(source, seed=0, shuffle_buffer=f.shuffle_buffer, **shape)
    }
    if f.compare:
        variants["shuffle_buffer_before"] = lambda: buffered_pipeline(
            source, shuffle_buffer=f.shuffle_buffer, **shape
        )
    results = {}
    for name, build in variants.items():
        results[name] = measure(build(), warmup=f.warmup, rounds=f.rounds)
        emit(f"input_position/{name}", **results[name])
    if f.compare:
        before, ours = results["shuffle_buffer_before"], results["ours"]
        emit(
            "input_position/ratio",
            bytes_before_over_ours=round(before["bytes"] / max(ours["bytes"], 1), 1),
            save_seconds_before_over_ours=round(before["save_seconds"] / max(ours["save_seconds"], 1e-9), 1),
            target={"ours_bytes_at_most": 1_000_000},
        )
