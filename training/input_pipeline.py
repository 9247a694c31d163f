"""The input pipeline: file-level sharding by rank, interleaved reads, seeded augmentation, batching.

Sources are our TFRecords (any label format of `data/records/schema.py`, described by the writer's manifest), a
folder written by the original release (``{data_dir}/{prefix}/*.tfrecords``, no manifest: the label format
and class count are read from the records) or tensorflow-datasets (ImageNet; ML-Images built by
data/ml_images, whose sparse labels are made dense here). All become a stream of `(jpeg_bytes, label)`
where `label` is a dense float32[num_classes] vector (multi-label) or an int64 class index (single-label).

Damaged data is one line naming the file, not a traceback: a shard cut short is found before the first
step (the manifest's recorded sizes; for release folders the last record of every file), and a record
that fails at run time (a dense label of the wrong length, an int64 label out of range) is named by file
and record index: every record carries its origin through the pipeline, and `next_batch` turns the
failure into `BadRecordError`.

Determinism and resume: every random choice is reproducible. File order and the shuffle buffer use fixed
seeds, and each element's augmentation is drawn with stateless ops from (run seed, rank, phase, element
index), so restoring the iterator with `tf.train.Checkpoint(iterator=...)` continues with exactly the next
batch and exactly the same augmentation as an uninterrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
import re

import tensorflow as tf
from absl import logging

from data.pixels import preprocessing
from data.records import record_files, schema

AUTOTUNE = tf.data.AUTOTUNE
_TFDS_FORMATS = ("tfds", "tfds_sparse")


@dataclasses.dataclass(frozen=True)
class Source:
    """Where the records of one split come from."""

    num_classes: int
    label_format: str  # "dense" | "sparse" | "int64" | "tfds" (class index) | "tfds_sparse" (ml_images)
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
    count_records: bool = False,
) -> Source:
    """TFRecords of one split; raises when the dataset's classes differ from the model's.

    Two layouts are read as they are:

    - ours: ``{data_dir}/{prefix}-manifest.json`` and its shards (label format, class count, record
      counts and shard sizes from the manifest; a shard of another size is an error here);
    - the original release's: ``{data_dir}/{prefix}/*.tfrecords`` with no manifest. The last record of
      every file is read (about one record per file, from its end), which finds a file cut short and gives
      the label format and, for dense labels, the class count (label bytes / 4). `num_records` stays None
      unless `count_records`, because counting walks every record header: see `count_release_records`.

    `prefix` (``train``, ``val``) names the manifest's split or the release's sub-folder. `head` names
    what has `num_classes` classes and `hint` says what to do, in the mismatch error.

    Raises:
      FileNotFoundError: neither layout is there.
      ValueError: a class count other than `num_classes`, a truncated file, mixed label layouts.
    """
    manifest_path = os.path.join(data_dir, schema.manifest_filename(prefix))
    if os.path.exists(manifest_path) or not schema.list_release_files(data_dir, prefix):
        try:
            manifest = schema.read_manifest(data_dir, prefix)
        except FileNotFoundError as e:
            if os.path.exists(manifest_path):
                raise
            parent = ""
            if schema.list_release_files(
                os.path.dirname(os.path.abspath(data_dir)), os.path.basename(data_dir)
            ):
                parent = f" ({data_dir} itself holds *{schema.RELEASE_SUFFIX}: give its parent folder as --data_dir)"
            raise FileNotFoundError(
                f"{e} Nor is it a folder in the release's layout: no "
                f"{os.path.join(data_dir, prefix, '*' + schema.RELEASE_SUFFIX)}{parent}"
            ) from None
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
    split = schema.read_release_split(data_dir, prefix)
    folder = os.path.join(data_dir, prefix)
    if split.num_classes is not None and split.num_classes != num_classes:
        raise ValueError(
            f"{folder} has dense labels of {4 * split.num_classes} bytes = {split.num_classes} classes but "
            f"{head} has {num_classes}: {hint}"
        )
    source = Source(num_classes=num_classes, label_format=split.label_format, files=split.files)
    if count_records:
        source = dataclasses.replace(source, num_records=count_release_records(source))
    logging.info(
        "%s: %d release-layout files, %s labels%s",
        folder,
        len(split.files),
        split.label_format,
        f", {source.num_records} records" if source.num_records is not None else "",
    )
    return source


def count_release_records(source: Source) -> int:
    """Records in `source.files`, by walking the record headers of every file (no manifest to ask).

    Cost: one 12-byte ``pread`` per record (`record_files.count_records`), so it grows with the number of
    records, not bytes; see docs/BENCHMARKS.md for the measured rate. Training never needs it.
    """
    return sum(record_files.count_records(file) for file in source.files)


# --- TFDS datasets with sparse multi-label labels (the `ml_images` builder, data/ml_images/) -------------
# This project's own TFDS builders: importing the module registers the name with TFDS (a dataset built
# elsewhere is found in `data_dir` either way; the import lets TFDS also build it from `manual_dir`).
_PROJECT_TFDS_BUILDERS = {"ml_images": "data.ml_images.ml_images_dataset_builder"}


def _tfds_base_name(name: str) -> str:
    """``ml_images/tiny:1.0.0`` -> ``ml_images``."""
    return name.split("/", 1)[0].split(":", 1)[0]


def _project_tfds_label_format(name: str, *, num_classes: int, data_dir: str) -> str | None:
    """``tfds_sparse`` for this project's multi-label builders (checking their class count), else None."""
    module = _PROJECT_TFDS_BUILDERS.get(_tfds_base_name(name))
    if module is None:
        return None
    import importlib

    import tensorflow_datasets as tfds

    importlib.import_module(module)
    builder = tfds.builder(name, data_dir=data_dir or None)
    dataset_classes = (builder.info.metadata or {}).get("num_classes")
    if dataset_classes is not None and dataset_classes != num_classes:
        raise ValueError(
            f"TFDS {name} has {dataset_classes} classes but the model has {num_classes}: "
            "pass the matching --num_classes"
        )
    return "tfds_sparse"


def _sparse_tfds_label(label: dict, num_classes: int) -> tf.Tensor:
    """``{indices, confidences}`` of one example -> float32[num_classes], the confidence at each tag."""
    indices = label["indices"]
    check = tf.debugging.assert_less(
        indices,
        tf.constant(num_classes, indices.dtype),
        message="class index >= num_classes in a sparse label",
    )
    with tf.control_dependencies([check]):
        at = tf.expand_dims(tf.cast(indices, tf.int32), 1)
    return tf.tensor_scatter_nd_max(tf.zeros([num_classes], tf.float32), at, label["confidences"])


# -----------------------------------------------------------------------------------------------------------


def tfds_source(
    name: str, split: str, *, num_classes: int, data_dir: str = "", manual_dir: str = ""
) -> Source:
    """A TFDS dataset: single-label (a class index, e.g. `imagenet2012` prepared from its manual-download
    folder) or, for this project's `ml_images` builder, multi-label with sparse labels."""
    sparse = _project_tfds_label_format(name, num_classes=num_classes, data_dir=data_dir)
    return Source(
        num_classes=num_classes,
        label_format=sparse or "tfds",
        tfds_name=name,
        tfds_split=split,
        tfds_data_dir=data_dir,
        tfds_manual_dir=manual_dir,
    )


def _records(
    source: Source, *, num_shards: int, shard_index: int, training: bool, seed: int
) -> tf.data.Dataset:
    """This rank's records as `(encoded, label)` before decoding: disjoint files per rank."""
    if source.label_format in _TFDS_FORMATS:
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
        if source.label_format == "tfds_sparse":
            ds = ds.map(
                lambda x: (x["image"], _sparse_tfds_label(x["label"], source.num_classes)),
                num_parallel_calls=AUTOTUNE,
            )
        else:
            ds = ds.map(lambda x: (x["image"], x["label"]), num_parallel_calls=AUTOTUNE)
        return ds.repeat() if training else ds

    files = source.files[shard_index::num_shards]
    record_shard = False
    if len(source.files) < num_shards and not training:
        # Evaluation must see every record once: with fewer files than ranks, EVERY rank reads all files
        # and keeps every num_shards-th record (if only the ranks left without a file did, the records of
        # the other ranks' files would be counted twice).
        files, record_shard = source.files, True
    if not files:
        raise ValueError(
            f"{len(source.files)} record files cannot be shared by {num_shards} ranks: write at least as many "
            "shards as ranks (data/tfrecord.py --shards)"
        )
    # Each record travels with its origin (file index * _ORIGIN_STRIDE + index in the file) in the label slot,
    # so that a bad record can be named (see `_describe_fn`); it is replaced by the parsed label later.
    ids = range(len(source.files)) if record_shard else range(len(source.files))[shard_index::num_shards]
    ds = tf.data.Dataset.from_tensor_slices((list(files), tf.constant(list(ids), tf.int64)))
    if training:
        ds = ds.shuffle(len(files), seed=seed, reshuffle_each_iteration=True).repeat()
    ds = ds.interleave(
        _read_with_origin,
        cycle_length=min(8, len(files)),
        block_length=1,
        num_parallel_calls=AUTOTUNE if len(files) > 1 else None,
        deterministic=True if len(files) > 1 else None,
    )
    if record_shard:
        ds = ds.shard(num_shards, shard_index)
    return ds  # parsed after the shuffle buffer


_ORIGIN_STRIDE = 1 << 40  # records per file are far fewer; files up to 2^23


def _read_with_origin(file: tf.Tensor, file_id: tf.Tensor) -> tf.data.Dataset:
    """One file's records as `(record, origin)`."""
    records = tf.data.TFRecordDataset(file).enumerate()
    return records.map(lambda index, record: (record, file_id * _ORIGIN_STRIDE + index))


def _describe_fn(source: Source, origins: tf.Tensor):
    """`describe(i)` for `schema.parse_records`: "file: record n" of the i-th record of a parsed block."""
    files = tf.constant(list(source.files))

    def describe(i):
        origin = origins[i]
        return tf.strings.join(
            [
                tf.gather(files, origin // _ORIGIN_STRIDE),
                ": record ",
                tf.strings.as_string(origin % _ORIGIN_STRIDE),
            ]
        )

    return describe


def _decode_fn(source: Source):
    """(record, label) -> (jpeg_bytes, label) for the source's format."""
    if source.label_format == "tfds":
        return lambda image, label: (image, tf.cast(label, tf.int64))
    if source.label_format == "tfds_sparse":
        return lambda image, label: (image, label)  # made dense in `_records`

    def decode(record, origin):
        parsed = schema.parse_records(
            record,
            label_format=source.label_format,
            num_classes=source.num_classes,
            describe=_describe_fn(source, tf.reshape(origin, [-1])),
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
    """(record, origin) -> (jpeg_bytes, label), parsed `_PARSE_BATCH` records at a time.

    `schema.parse_records` is vectorised: one `parse_example` and one label decode (or scatter) per block
    costs a fraction of doing it per record. The order of the elements is unchanged, so the element index
    that seeds each augmentation is the same as with a per-record parse.
    """
    decode = _decode_fn(source)
    if source.label_format in _TFDS_FORMATS:
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


class BadRecordError(ValueError):
    """A record or record file that cannot be read; the message is one line naming the file."""


_DATA_LOSS_RE = re.compile(r"(truncated|corrupted) record at (\d+)")


def record_error_line(error: tf.errors.OpError, files: tuple[str, ...] = ()) -> str | None:
    """One line for a record failure raised by the pipeline, or None for any other error.

    A bad label (`schema.RECORD_ERROR_MARK`) already names its file and record. A ``DataLossError`` names
    only a byte offset, so the framing of `files` is walked (once, at failure time) to find the file that
    breaks there.
    """
    message = error.message
    if schema.RECORD_ERROR_MARK in message:
        line = message.split(schema.RECORD_ERROR_MARK, 1)[1].split("\n", 1)[0]
        return line.removesuffix("]")
    if isinstance(error, tf.errors.DataLossError):
        match = _DATA_LOSS_RE.search(message)
        offset = int(match.group(2)) if match else None
        found = record_files.find_damaged_file(files, offset)
        if found is None and offset is not None:
            found = record_files.find_damaged_file(files)
        what = match.group(0) if match else message.split("\n", 1)[0]
        return found or f"a record file of this split is damaged ({what}), but its framing looks intact"
    return None


@contextlib.contextmanager
def record_errors(source: Source):
    """Raises a bad record or a damaged file met inside the block as a one-line `BadRecordError`.

    For code that iterates a pipeline of `source` (e.g. an evaluation loop); other errors pass unchanged.
    """
    try:
        yield
    except (tf.errors.InvalidArgumentError, tf.errors.DataLossError) as e:
        line = record_error_line(e, source.files)
        if line is None:
            raise
        raise BadRecordError(line) from None


def next_batch(iterator, source: Source):
    """`next(iterator)` of a pipeline of `source`, with a bad record raised as a one-line `BadRecordError`."""
    with record_errors(source):
        return next(iterator)
