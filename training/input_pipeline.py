"""The input pipeline: file-level sharding by rank, interleaved reads, seeded augmentation, batching.

Sources are our TFRecords (any label format of `data/schema.py`, described by the writer's manifest) or
ImageNet through tensorflow-datasets. Both become a stream of `(jpeg_bytes, label)` where `label` is a dense
float32[num_classes] vector (multi-label) or an int64 class index (single-label).

Determinism and resume: every random choice is reproducible. File order and the shuffle buffer use fixed
seeds, and each element's augmentation is drawn with stateless ops from (run seed, rank, phase, element
index), so restoring the iterator with `tf.train.Checkpoint(iterator=...)` continues with exactly the next
batch and exactly the same augmentation as an uninterrupted run.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from data import preprocessing, schema

AUTOTUNE = tf.data.AUTOTUNE


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the records of one split come from."""

    num_classes: int
    label_format: str  # "dense" | "sparse" | "int64" | "tfds"
    files: tuple[str, ...] = ()
    tfds_name: str = ""
    tfds_split: str = ""
    tfds_data_dir: str = ""
    tfds_manual_dir: str = ""
    num_records: int | None = None

    @property
    def single_label(self) -> bool:
        return self.label_format in ("int64", "tfds")


def tfrecord_source(
    data_dir: str,
    prefix: str,
    *,
    num_classes: int,
    head: str = "the model",
    hint: str = "pass the matching --num_classes (or a dataset written for this model)",
) -> Source:
    """Our TFRecords from the writer's manifest; raises when the dataset's classes differ from the model's.

    `head` names what has `num_classes` classes and `hint` says what to do, in the mismatch error.
    """
    manifest = schema.read_manifest(data_dir, prefix)
    if manifest.num_classes != num_classes:
        raise ValueError(
            f"{data_dir} ({prefix}) has {manifest.num_classes} classes but {head} has {num_classes}: {hint}"
        )
    return Source(
        num_classes=num_classes,
        label_format=manifest.label_format,
        files=tuple(manifest.files),
        num_records=manifest.num_records,
    )


def tfds_source(
    name: str, split: str, *, num_classes: int, data_dir: str = "", manual_dir: str = ""
) -> Source:
    """A single-label TFDS dataset (e.g. `imagenet2012` prepared from its manual-download folder)."""
    return Source(
        num_classes=num_classes,
        label_format="tfds",
        tfds_name=name,
        tfds_split=split,
        tfds_data_dir=data_dir,
        tfds_manual_dir=manual_dir,
    )


def _records(
    source: Source, *, num_shards: int, shard_index: int, training: bool, seed: int
) -> tf.data.Dataset:
    """This rank's records as `(encoded, label)` before decoding: disjoint files per rank."""
    if source.label_format == "tfds":
        import tensorflow_datasets as tfds

        download_config = tfds.download.DownloadConfig(manual_dir=source.tfds_manual_dir or None)
        read_config = tfds.ReadConfig(
            input_context=tf.distribute.InputContext(
                num_input_pipelines=num_shards, input_pipeline_id=shard_index
            ),
            shuffle_seed=seed,
            interleave_cycle_length=8,
        )
        ds = tfds.load(
            source.tfds_name,
            split=source.tfds_split,
            data_dir=source.tfds_data_dir or None,
            shuffle_files=training,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
            download_and_prepare_kwargs={"download_config": download_config},
        )
        ds = ds.map(lambda x: (x["image"], x["label"]), num_parallel_calls=AUTOTUNE)
        return ds.repeat() if training else ds

    files = source.files[shard_index::num_shards]
    record_shard = False
    if not files and not training:
        # Evaluation must see every record once: with fewer files than ranks, shard the records instead.
        files, record_shard = source.files, True
    if not files:
        raise ValueError(
            f"{len(source.files)} record files cannot be shared by {num_shards} ranks: write at least as many "
            "shards as ranks (data/tfrecord.py --shards)"
        )
    ds = tf.data.Dataset.from_tensor_slices(list(files))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(
        tf.data.TFRecordDataset,
        cycle_length=min(8, len(files)),
        block_length=1,
        num_parallel_calls=AUTOTUNE if len(files) > 1 else None,
        deterministic=True,
    )
    if record_shard:
        ds = ds.shard(num_shards, shard_index)
    return ds.map(lambda r: (r, tf.constant(0, tf.int64)))  # parsed after the shuffle buffer


def _decode_fn(source: Source):
    """(record, label) -> (jpeg_bytes, label) for the source's format."""
    if source.label_format == "tfds":
        return lambda image, label: (image, tf.cast(label, tf.int64))

    def decode(record, unused_label):
        parsed = schema.parse_records(
            record, label_format=source.label_format, num_classes=source.num_classes
        )
        return parsed["image"], parsed["label"]

    return decode


def train_dataset(
    source: Source,
    *,
    batch_size: int,
    image_size: int,
    seed: int,
    num_shards: int = 1,
    shard_index: int = 0,
    phase: int = 0,
    area_cover: float = 0.7,
    object_cover: float = 0.7,
    shuffle_buffer: int = 1024,
    distort: bool = True,
) -> tf.data.Dataset:
    """Endless training batches `(images[B, S, S, 3] in [-1, 1], labels)` for one rank.

    `distort=False` trains with the crop and the flip only (see `preprocessing.train_transform`).

    `phase` (the index of the image-size phase) and `shard_index` enter the augmentation seeds, so phases
    and ranks draw different augmentations while each stays reproducible.
    """
    ds = _records(source, num_shards=num_shards, shard_index=shard_index, training=True, seed=seed + phase)
    if shuffle_buffer > 1:
        ds = ds.shuffle(shuffle_buffer, seed=seed + 7919 * (phase + 1), reshuffle_each_iteration=True)
    ds = _parse_in_batches(ds, source)
    stream = tf.constant([seed, shard_index * 1000 + phase], tf.int64)

    def transform(index, image_bytes, label):
        element_seed = tf.random.experimental.stateless_fold_in(stream, index)
        image = preprocessing.train_transform(
            image_bytes,
            element_seed,
            image_size=image_size,
            area_cover=area_cover,
            object_cover=object_cover,
            distort=distort,
        )
        return image, label

    ds = ds.enumerate().map(
        lambda index, element: transform(index, *element), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(AUTOTUNE).with_options(_pipeline_options())


_PARSE_BATCH = 64


def _parse_in_batches(ds: tf.data.Dataset, source: Source) -> tf.data.Dataset:
    """(record, unused) -> (jpeg_bytes, label), parsed `_PARSE_BATCH` records at a time.

    `schema.parse_records` is vectorised: one `parse_example` and one label decode (or scatter) per block
    costs a fraction of doing it per record. The order of the elements is unchanged, so the element index
    that seeds each augmentation is the same as with a per-record parse.
    """
    decode = _decode_fn(source)
    if source.label_format == "tfds":
        return ds.map(decode, num_parallel_calls=AUTOTUNE)
    ds = ds.batch(_PARSE_BATCH).map(decode, num_parallel_calls=AUTOTUNE)
    return ds.unbatch()


def _pipeline_options() -> tf.data.Options:
    """tf.data options of the training pipeline.

    Ops inside the pipeline run single-threaded (parallelism comes from processing many elements at once,
    and intra-op sharding of small image ops only adds hand-offs), and the pipeline has its own thread pool
    so that it does not queue behind the training step's inter-op work.
    """
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    options.threading.private_threadpool_size = max(len(os.sched_getaffinity(0)), 1)
    return options


def eval_dataset(
    source: Source,
    *,
    batch_size: int,
    image_size: int,
    num_shards: int = 1,
    shard_index: int = 0,
    transform: str = "reference",
    max_batches: int = 0,
) -> tf.data.Dataset:
    """One pass over this rank's share of an evaluation split: `(images, labels)`, last batch partial."""
    decode = _decode_fn(source)
    eval_fn = preprocessing.get_transform(transform)
    ds = _records(source, num_shards=num_shards, shard_index=shard_index, training=False, seed=0)

    def apply(*element):
        image_bytes, label = decode(*element)
        return eval_fn(image_bytes, image_size=image_size), label

    ds = ds.map(apply, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size)
    if max_batches:
        ds = ds.take(max_batches)
    return ds.prefetch(AUTOTUNE)
