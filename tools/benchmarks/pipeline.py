"""``pipeline``: training images/s of `training.input_pipeline.train_dataset` on records written by our
writer from the benchmark JPEGs; ``--compare`` adds the port of the original input pipeline
(release_pipeline.py) and the decode-only limit (parallel ``decode_jpeg`` of the same bytes and nothing
else); ``--stages`` cuts our pipeline after each stage to show where its time goes; ``--image_transport``
times our pipeline handing over uint8 and/or float32 images (training's ``--image_transport``) and reports
each one's bytes per image and per batch to the device.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
from absl import app, flags

from tools.benchmarks import photos
from tools.benchmarks.common import Timer, emit, emit_machine
from tools.benchmarks.release_pipeline import original_pipeline

FLAGS_USED: tuple[str, ...] = (
    *photos.IMAGE_FLAGS,
    "workers",
    "shards",
    "compare",
    "batch_size",
    "image_size",
    "steps",
    "warmup",
    "rounds",
    "label_format",
    "shuffle_buffer",
    "stages",
    "image_transport",
)

PIPELINE_STAGES: Final = ("parse", "draws", "decode", "crop")


def decode_only(jpegs: Sequence[bytes], *, batch_size: int):
    """The decode-only limit: parallel `decode_jpeg` of the same bytes from memory and nothing else."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(list(jpegs)).repeat()
    # The shape depends on the decoded tensor, so the decode cannot be pruned.
    ds = ds.map(lambda b: tf.shape(tf.io.decode_jpeg(b, channels=3)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


def pipeline_prefix(source, stage: str, *, batch_size: int, image_size: int, shuffle_buffer: int):
    """Our training pipeline (`input_pipeline.train_dataset`'s records, shuffle, parse, element seeds and
    batching) with the per-image work cut after `stage`: "parse" (nothing per image), "draws" (+ the
    augmentation draws), "decode" (+ the JPEG decode) or "crop" (+ the draws, crop and resize)."""
    import tensorflow as tf

    from data.pixels import preprocessing
    from training import input_pipeline

    ds = input_pipeline._records(source, num_shards=1, shard_index=0, training=True, seed=0)
    ds = input_pipeline._parse_in_batches(ds.shuffle(shuffle_buffer, seed=1), source)
    stream = tf.constant([0, 0], tf.int64)
    pretraining = {"area_cover": 0.7, "object_cover": 0.7}

    def per_image(index, element):
        image_bytes = element[0]
        if stage == "parse":
            return tf.strings.length(image_bytes)
        if stage == "decode":
            return tf.shape(preprocessing._decode_full(image_bytes))
        decisions = preprocessing._augment_decisions(tf.random.experimental.stateless_fold_in(stream, index))
        if stage == "draws":  # every draw feeds the output, so that none is pruned
            draws = [tf.reduce_sum(tf.cast(value, tf.float32)) for value in decisions.values()]
            return tf.strings.length(image_bytes) + tf.cast(tf.add_n(draws), tf.int32)
        return preprocessing._train_crop(image_bytes, decisions, image_size=image_size, **pretraining)

    ds = ds.enumerate().map(per_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(input_pipeline._pipeline_options())


def batch_bytes(dataset) -> dict:
    """What one batch of `dataset` moves to the device: its images' dtype, bytes per image and per batch
    (from the dataset's element spec), and the labels' bytes per batch."""
    images, labels = dataset.element_spec
    image_bytes = images.shape[1:].num_elements() * images.dtype.size
    label_values = labels.shape.num_elements()
    return {
        "image_dtype": images.dtype.name,
        "image_shape": images.shape.as_list(),
        "bytes_per_image": image_bytes,
        "image_bytes_per_batch": image_bytes * images.shape[0],
        "label_bytes_per_batch": None if label_values is None else label_values * labels.dtype.size,
    }


def time_batches(dataset, *, batch_size: int, warmup: int, steps: int) -> dict:
    """Images/s (wall) and CPU ms per image of `steps` batches after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    with Timer() as t:
        for _ in range(steps):
            next(iterator)
    images = steps * batch_size
    return {
        "images_per_s": round(images / t.wall, 1),
        "cpu_ms_per_image": round(t.cpu / images * 1e3, 3),
        "seconds": round(t.wall, 2),
        "images": images,
    }


def run(f: flags.FlagValues) -> None:
    """Training images/s of our input pipeline and, with --compare, of the original one and of decoding."""
    from data.pixels import preprocessing
    from training import input_pipeline

    emit_machine("pipeline")
    list_path, names = photos.benchmark_images(f)
    jpegs = photos.read_jpegs(f.image_cache, names)
    common = {"batch_size": f.batch_size, "image_size": f.image_size}
    emit(
        "pipeline/setup",
        num_images=len(jpegs),
        mean_jpeg_kb=round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1),
        image=f"{f.image_width}x{f.image_height}",
        shards=f.shards,
        shuffle_buffer=f.shuffle_buffer,
        **common,
    )

    def source_of(label_format: str):
        records = photos.cached_records(list_path, label_format, f=f)
        return input_pipeline.tfrecord_source(records, "train", num_classes=f.num_classes)

    transports = list(dict.fromkeys(f.image_transport))
    unknown = [t for t in transports if t not in preprocessing.IMAGE_TRANSPORTS]
    if unknown or not transports:
        raise app.UsageError(
            f"--image_transport: {unknown or transports} is not a list of {preprocessing.IMAGE_TRANSPORTS}"
        )

    def ours(label_format: str, transport: str = transports[0]):
        return input_pipeline.train_dataset(
            source_of(label_format), seed=0, shuffle_buffer=f.shuffle_buffer, transport=transport, **common
        )

    variants: dict[str, Callable[[], object]] = {f"ours_{f.label_format}": lambda: ours(f.label_format)}
    for transport in transports[1:]:
        variants[f"ours_{f.label_format}_{transport}"] = lambda t=transport: ours(f.label_format, t)
    if f.stages:
        stage_source = source_of(f.label_format)
        for stage in PIPELINE_STAGES:
            variants[f"stage_{stage}"] = lambda stage=stage: pipeline_prefix(
                stage_source, stage, shuffle_buffer=f.shuffle_buffer, **common
            )
        variants["stage_flip_only"] = lambda: input_pipeline.train_dataset(
            stage_source, seed=0, shuffle_buffer=f.shuffle_buffer, distort=False, **common
        )
    if f.compare:
        other = "dense" if f.label_format == "sparse" else "sparse"
        variants[f"ours_{other}"] = lambda: ours(other)
        dense_files = source_of("dense").files
        variants["original_dense"] = lambda: original_pipeline(
            dense_files, num_classes=f.num_classes, shuffle_buffer=f.shuffle_buffer, **common
        )
        variants["decode_only"] = lambda: decode_only(jpegs, batch_size=f.batch_size)
    datasets = {name: build() for name, build in variants.items()}  # all records written before timing
    for name in [f"ours_{f.label_format}", *(f"ours_{f.label_format}_{t}" for t in transports[1:])]:
        emit(f"pipeline/transfer/{name}", **batch_bytes(datasets[name]))
    results: dict[str, list[dict]] = {name: [] for name in datasets}
    for round_index in range(f.rounds):
        order = list(datasets) if round_index % 2 == 0 else list(datasets)[::-1]
        for name in order:
            result = time_batches(datasets[name], batch_size=f.batch_size, warmup=f.warmup, steps=f.steps)
            results[name].append(result)
            emit(f"pipeline/{name}", round=round_index, **result)
    if f.compare:
        rate = {name: float(np.median([r["images_per_s"] for r in rs])) for name, rs in results.items()}
        cpu = {name: float(np.median([r["cpu_ms_per_image"] for r in rs])) for name, rs in results.items()}
        main = f"ours_{f.label_format}"
        emit(
            "pipeline/speedup",
            ours_vs_original=round(rate[main] / rate["original_dense"], 2),
            ours_fraction_of_decode_only=round(rate[main] / rate["decode_only"], 2),
            ours_dense_vs_original=round(rate["ours_dense"] / rate["original_dense"], 2),
            cpu_ms_per_image=cpu,
            targets={"ours_vs_original": 1.5, "ours_fraction_of_decode_only": 0.7},
        )
