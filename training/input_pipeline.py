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

Determinism and resume: every random choice is a stateless function of the position. Each epoch's file
order is a permutation drawn from (seed, epoch), the records are mixed in windows of `shuffle_buffer`
permuted by (seed, window) (`window_shuffle`), and each element's augmentation is drawn from (run seed,
rank, phase, element index). A rank's saved input position is therefore one number, the elements of the
phase's stream it has consumed (training/checkpoints.py, a JSON of a few hundred bytes), and
`train_dataset(start=...)` builds the stream that begins there: whole epochs and files are skipped by
arithmetic on the record counts (`RecordFiles.records`), only the files open at that point are read from
their record offsets, and the same augmentation seeds follow, so a restore continues with exactly the next
batch of an uninterrupted run. tf.data's own iterator checkpoints are not used: they hold the window and
prefetch buffers' contents (188 MB per rank at the reference settings, docs/BENCHMARKS.md).
"""

from __future__ import annotations

import abc
import contextlib
import dataclasses
import functools
import os
import re

import tensorflow as tf
from absl import logging

from data.pixels import preprocessing
from data.records import record_files, schema
from training import host_resources

AUTOTUNE = tf.data.AUTOTUNE
_CYCLE = 8  # record files a rank reads at once (the interleave's cycle length)
_PARSE_BATCH = 64  # records parsed at a time by `RecordFiles.parse`


@dataclasses.dataclass(frozen=True, kw_only=True)
class Source(abc.ABC):
    """One split of a data set behind the one interface the pipelines use (as big_vision's
    ``datasets/core.py``): the pipelines ask a source for this rank's elements (`records`) and how to turn
    them into ``(jpeg_bytes, label)`` (`parse`), never which storage it is.

    Implementations: `RecordFiles` (our TFRecord folders with a manifest and the release's folders without
    one; see `tfrecord_source`) and `TfdsSplit` (tensorflow-datasets; see `tfds_source`).
    """

    num_classes: int
    num_records: int | None = None  # the split's size where known (a manifest, TFDS's info, a count)

    @property
    @abc.abstractmethod
    def label_format(self) -> str:
        """What the labels are, for logs and reports: a `schema.LABEL_FORMATS` name, ``tfds`` or
        ``tfds_sparse``."""

    @property
    @abc.abstractmethod
    def single_label(self) -> bool:
        """True when a label is a class index (softmax), False for a confidence vector (multi-label)."""

    @property
    def files(self) -> tuple[str, ...]:
        """The record files a damaged-file error may name (none for sources that own their storage)."""
        return ()

    @abc.abstractmethod
    def records(
        self, *, num_shards: int, shard_index: int, training: bool, seed: int, start: int = 0
    ) -> tf.data.Dataset:
        """This rank's share, unparsed (training: endless, files in a seeded order per epoch).

        `start` (training only): the stream begins at its `start`-th element, exactly as the stream from 0
        continues after `start` elements.
        """

    @abc.abstractmethod
    def parse(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """`records`' elements -> ``(jpeg_bytes, label)``, in the same order (the element index seeds the
        augmentation)."""


@dataclasses.dataclass(frozen=True, kw_only=True)
class RecordFiles(Source):
    """TFRecord files in a `schema.LABEL_FORMATS` layout: our folders (manifest) and the release's (none).

    Each rank reads whole files (``files[shard_index::num_shards]``); every record travels with its origin
    (file index * `_ORIGIN_STRIDE` + index in the file) in the label slot until it is parsed, so that a bad
    record can be named by file and record.
    """

    record_files: tuple[str, ...]
    record_label_format: str  # "dense" | "sparse" | "int64"
    # Records per file, aligned with `record_files` (a manifest's counts); () when unknown (a release folder):
    # a training stream that starts later then counts them (`record_files.count_records`).
    record_counts: tuple[int, ...] = ()

    @property
    def label_format(self) -> str:
        return self.record_label_format

    @property
    def single_label(self) -> bool:
        return self.record_label_format == "int64"

    @property
    def files(self) -> tuple[str, ...]:
        return self.record_files

    def records(
        self, *, num_shards: int, shard_index: int, training: bool, seed: int, start: int = 0
    ) -> tf.data.Dataset:
        """This rank's records; no rank reads the whole split, every record is read by exactly one rank.

        With at least as many files as ranks, rank r reads files r, r + n, ... whole (the release's
        ``idx % workers == task``). When the files do not divide by the ranks, the first ``files % ranks``
        ranks have one file more: in evaluation they read more records (each still once); in training
        their epochs are longer, so their records come round less often than the others'.

        With fewer files than ranks, rank r reads only file ``r % files`` and keeps every k-th of its
        records (k: the ranks sharing that file, ``r // files`` this rank's turn). When the ranks do not
        divide by the files, some files are shared by one rank more, whose ranks then get fewer records
        per epoch (training) or per pass (evaluation); every record is still read once per pass.

        Up to `_CYCLE` files are read at once, one record of each in turn. A training stream that begins at
        `start` is built from where that reading stands after `start` records (`_interleave_position`, by
        arithmetic on this rank's record counts per file): the epochs and files before are not opened, the
        files open at that point are read from their record offsets, and the epochs go on from there.
        Without record counts (a release folder on remote storage) the first `start` records are read and
        dropped instead, never parsed.
        """
        count = len(self.files)
        if not count:
            raise ValueError("no record files to read")
        if count >= num_shards:
            ids, sharing, turn = list(range(count))[shard_index::num_shards], 1, 0
        else:
            ids = [shard_index % count]
            sharing, turn = len(range(shard_index % count, num_shards, count)), shard_index // count
        names = [self.files[i] for i in ids]
        read = functools.partial(_read_with_origin, sharing=sharing, turn=turn)
        cycle = min(_CYCLE, len(ids))
        if not training:
            files = tf.data.Dataset.from_tensor_slices((names, tf.constant(ids, tf.int64)))
            return _interleave(files.map(_unskipped), read, cycle)
        counts = self._rank_counts(ids, sharing=sharing, turn=turn) if start else None
        if start and counts is None:
            stream = _epochs_in_seeded_order((tf.constant(names), tf.constant(ids, tf.int64)), seed=seed)
            return _interleave(stream.map(_unskipped), read, cycle).skip(start)
        if counts is not None and not any(counts):
            raise ValueError(f"rank {shard_index} of {num_shards} has no training records in {names[:3]}")
        head, first = [], 0
        if start:
            head, first = _resume_files(counts, seed=seed, cycle=cycle, elements=start)
        stream = _epochs_in_seeded_order(
            (tf.constant(names), tf.constant(ids, tf.int64)), seed=seed, first=first
        ).map(_unskipped)
        if head:  # the files open at `start`, in the order the interleave visits them next
            open_files = tf.data.Dataset.from_tensor_slices(
                (
                    tf.constant([names[i] for i, _ in head]),
                    tf.constant([ids[i] for i, _ in head], tf.int64),
                    tf.constant([done for _, done in head], tf.int64),
                )
            )
            stream = open_files.concatenate(stream)
        return _interleave(stream, read, cycle)

    def _rank_counts(self, ids: list[int], *, sharing: int, turn: int) -> list[int] | None:
        """This rank's records in each of its files `ids` (every `sharing`-th from `turn`), or None when the
        files cannot be counted here (no manifest, and not on a local file system)."""
        files = [self.files[i] for i in ids]
        if self.record_counts:
            totals = [self.record_counts[i] for i in ids]
        elif all(os.path.isfile(f) for f in files):
            totals = [record_files.count_records(f) for f in files]  # headers only: one pread per record
        else:
            return None
        return [len(range(turn, total, sharing)) for total in totals]

    def parse(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        """Parsed `_PARSE_BATCH` records at a time: `schema.parse_records` is vectorised, and one
        `parse_example` and one label decode (or scatter) per block costs a fraction of one per record."""

        def decode(record, origin):
            parsed = schema.parse_records(
                record,
                label_format=self.record_label_format,
                num_classes=self.num_classes,
                describe=_describe_fn(self.files, origin),
            )
            return parsed["image"], parsed["label"]

        return ds.batch(_PARSE_BATCH).map(decode, num_parallel_calls=AUTOTUNE).unbatch()


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
        return RecordFiles(
            num_classes=num_classes,
            record_label_format=manifest.label_format,
            record_files=tuple(manifest.files),
            record_counts=tuple(manifest.counts),
            num_records=manifest.num_records,
        )
    split = schema.read_release_split(data_dir, prefix)
    folder = os.path.join(data_dir, prefix)
    if split.num_classes is not None and split.num_classes != num_classes:
        raise ValueError(
            f"{folder} has dense labels of {4 * split.num_classes} bytes = {split.num_classes} classes but "
            f"{head} has {num_classes}: {hint}"
        )
    source = RecordFiles(
        num_classes=num_classes, record_label_format=split.label_format, record_files=tuple(split.files)
    )
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


@dataclasses.dataclass(frozen=True, kw_only=True)
class TfdsSplit(Source):
    """A tensorflow-datasets split: single-label (a class index, e.g. `imagenet2012`) or, for this project's
    `ml_images` builder, sparse multi-label labels made dense here. TFDS shards by rank itself
    (`tfds.ReadConfig.input_context`)."""

    name: str
    split: str
    data_dir: str = ""
    manual_dir: str = ""
    sparse: bool = False  # the project's multi-label builders: ``{indices, confidences}`` labels

    @property
    def label_format(self) -> str:
        return "tfds_sparse" if self.sparse else "tfds"

    @property
    def single_label(self) -> bool:
        return not self.sparse

    def records(
        self, *, num_shards: int, shard_index: int, training: bool, seed: int, start: int = 0
    ) -> tf.data.Dataset:
        """TFDS's stream of this rank's examples (images still encoded); a training stream that begins at
        `start` reads and drops the first `start` examples (TFDS's order is a function of its seed, but its
        files' record counts are TFDS's own business), so a deep position costs a read of what it skips."""
        import tensorflow_datasets as tfds

        download_config = tfds.download.DownloadConfig(manual_dir=self.manual_dir or None)
        read_config = tfds.ReadConfig(
            input_context=tf.distribute.InputContext(
                num_input_pipelines=num_shards, input_pipeline_id=shard_index
            ),
            shuffle_seed=seed,
            interleave_cycle_length=8,
        )
        ds = tfds.load(
            self.name,
            split=self.split,
            data_dir=self.data_dir or None,
            shuffle_files=training,
            read_config=read_config,
            decoders={"image": tfds.decode.SkipDecoding()},
            download_and_prepare_kwargs={"download_config": download_config},
        )
        return ds.repeat().skip(start) if training else ds

    def parse(self, ds: tf.data.Dataset) -> tf.data.Dataset:
        if self.sparse:
            return ds.map(
                lambda x: (x["image"], _sparse_tfds_label(x["label"], self.num_classes)),
                num_parallel_calls=AUTOTUNE,
            )
        return ds.map(lambda x: (x["image"], tf.cast(x["label"], tf.int64)), num_parallel_calls=AUTOTUNE)


def tfds_source(
    name: str, split: str, *, num_classes: int, data_dir: str = "", manual_dir: str = ""
) -> TfdsSplit:
    """A TFDS dataset: single-label (a class index, e.g. `imagenet2012` prepared from its manual-download
    folder) or, for this project's `ml_images` builder, multi-label with sparse labels."""
    sparse = _project_tfds_label_format(name, num_classes=num_classes, data_dir=data_dir)
    return TfdsSplit(
        num_classes=num_classes,
        name=name,
        split=split,
        data_dir=data_dir,
        manual_dir=manual_dir,
        sparse=sparse is not None,
    )


def _records(
    source: Source, *, num_shards: int, shard_index: int, training: bool, seed: int
) -> tf.data.Dataset:
    """This rank's records before parsing (`Source.records`)."""
    return source.records(num_shards=num_shards, shard_index=shard_index, training=training, seed=seed)


def _epoch_order(count: int, *, seed: int, epoch) -> tf.Tensor:
    """The permutation of `count` files in epoch `epoch` (a stateless shuffle drawn from (`seed`, epoch))."""
    return tf.random.experimental.stateless_shuffle(
        tf.range(count), seed=tf.stack([tf.constant(seed, tf.int64), tf.cast(epoch, tf.int64)])
    )


def _epochs_in_seeded_order(elements: tuple[tf.Tensor, ...], *, seed: int, first: int = 0) -> tf.data.Dataset:
    """`elements` (sliced on their first axis) endlessly, each epoch in a stateless permutation drawn from
    (`seed`, epoch) (`_epoch_order`): an order that is a function of the position alone, so that a stream
    can start at its `first`-th element without the ones before (whole epochs are not built at all)."""
    count = int(elements[0].shape[0])

    def epoch(index):
        order = _epoch_order(count, seed=seed, epoch=index)
        return tf.data.Dataset.from_tensor_slices(tuple(tf.gather(e, order) for e in elements))

    return tf.data.Dataset.range(first // count, _ENDLESS).flat_map(epoch).skip(first % count)


_ENDLESS = 1 << 62  # epochs (or windows): more than any run


def _interleave(files: tf.data.Dataset, read, cycle: int) -> tf.data.Dataset:
    """The records of `files` (``(name, id, records already read)``), `cycle` files at a time, one record of
    each in turn (`_interleave_position` follows the same rule)."""
    return files.interleave(
        read,
        cycle_length=cycle,
        block_length=1,
        num_parallel_calls=AUTOTUNE if cycle > 1 else None,
        deterministic=True if cycle > 1 else None,
    )


def _interleave_position(count_at, *, cycle: int, elements: int) -> tuple[list[list[int] | None], int]:
    """Where `_interleave`, reading a stream of files of which the q-th has `count_at(q)` records, stands
    after giving `elements` records: tf.data's deterministic interleave (block length 1) visits its `cycle`
    slots in turn; a visit gives the next record of the slot's file, or, at the file's end, empties the slot
    and moves on; an empty slot takes the stream's next file when visited.

    Arithmetic only (whole rounds at once between the ends of files): nothing is read.

    Returns:
      The slots in the order they are visited next, each ``[q, records given, records]`` or None (empty),
      and the index in the stream of the next file to open.
    """
    slots: list[list[int] | None] = [None] * cycle
    at = next_file = 0
    left = elements
    while left:
        if all(s is not None for s in slots):
            rounds = min(min(s[2] - s[1] for s in slots), left // cycle)
            if rounds:  # every slot gives `rounds` records, the visits end where they began
                for s in slots:
                    s[1] += rounds
                left -= rounds * cycle
                continue
        slot = slots[at]
        if slot is None:
            slot = slots[at] = [next_file, 0, count_at(next_file)]
            next_file += 1
        if slot[1] < slot[2]:
            slot[1] += 1
            left -= 1
        else:
            slots[at] = None
        at = (at + 1) % cycle
    return slots[at:] + slots[:at], next_file


def _resume_files(
    counts: list[int], *, seed: int, cycle: int, elements: int
) -> tuple[list[tuple[int, int]], int]:
    """The files an interleaved stream of this rank's files (`counts` records each, epochs in
    `_epoch_order`) has open after `elements` records, as ``(index into counts, records read)`` in the
    order they are read next, and the position in the file stream from which the epochs continue."""
    orders: dict[int, list[int]] = {}

    def local(q: int) -> int:
        epoch = q // len(counts)
        if epoch not in orders:
            orders.clear()  # the stream goes forward: one epoch's order at a time
            orders[epoch] = _epoch_order(len(counts), seed=seed, epoch=epoch).numpy().tolist()
        return orders[epoch][q % len(counts)]

    slots, next_file = _interleave_position(lambda q: counts[local(q)], cycle=cycle, elements=elements)
    head = []
    for slot in slots:
        if slot is None:  # filled with the stream's next file when visited
            slot, next_file = [next_file, 0], next_file + 1
        head.append((local(slot[0]), slot[1]))
    return head, next_file


def window_shuffle(ds: tf.data.Dataset, window: int, *, seed: int, first_window: int = 0) -> tf.data.Dataset:
    """`ds` in consecutive windows of `window` elements, each in a stateless permutation drawn from
    (`seed`, window index); `ds` begins with window `first_window` of the stream (a restored position).

    It mixes like a shuffle buffer of the same size (an element moves at most `window` - 1 places) but holds
    no state of its own, so a position in it is a number (`tf.data.Dataset.shuffle` would have to save its
    whole buffer, 1,024 encoded JPEGs). Elements may be nested and of varying length (a sparse TFDS label):
    windows are ragged batches.
    """

    def permute(index, block):
        size = tf.shape(tf.nest.flatten(block)[0], out_type=tf.int64)[0]
        order = tf.random.experimental.stateless_shuffle(
            tf.range(size), seed=tf.stack([tf.constant(seed, tf.int64), index])
        )
        return tf.nest.map_structure(lambda t: tf.gather(t, order), block)

    ds = ds.ragged_batch(window).enumerate(start=first_window)
    return ds.map(permute, num_parallel_calls=AUTOTUNE, deterministic=True).unbatch()


_ORIGIN_STRIDE = 1 << 40  # records per file are far fewer; files up to 2^23


def _unskipped(name: tf.Tensor, file_id: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """A file of the stream, to be read from its first record."""
    return name, file_id, tf.constant(0, tf.int64)


def _read_with_origin(
    file: tf.Tensor, file_id: tf.Tensor, done: tf.Tensor, *, sharing: int, turn: int
) -> tf.data.Dataset:
    """One file's records as `(record, origin)`: every `sharing`-th from record `turn` (a file several ranks
    share, see `RecordFiles.records`), after the first `done` of those (a restored position)."""
    first = turn + tf.cast(done, tf.int64) * sharing
    records = tf.data.TFRecordDataset(file).skip(first).enumerate(start=first)
    if sharing > 1:
        records = records.shard(sharing, 0)
    return records.map(lambda index, record: (record, file_id * _ORIGIN_STRIDE + index))


def _describe_fn(files: tuple[str, ...], origins: tf.Tensor):
    """`describe(i)` for `schema.parse_records`: "file: record n" of the i-th record of a parsed block."""
    files = tf.constant(list(files))
    origins = tf.reshape(origins, [-1])

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
    threads: int = 0,
    start: int = 0,
    transport: str = "float32",
) -> tf.data.Dataset:
    """Endless training batches `(images[B, S, S, 3], labels)` for one rank.

    `transport` "float32": float32 in [-1, 1] (`preprocessing.train_transform`, the release's numbers
    exactly). "uint8" (what training runs by default, `TrainConfig.runtime.image_transport`): the images as uint8
    (`preprocessing.train_transform_uint8`), a quarter of the bytes on their way to the device, where the
    train step maps them to [-1, 1] (`train_step.model_input`, within 1/255 of the float numbers).

    `start`: the stream begins after its first `start` elements (a multiple of `batch_size`: the position a
    resume restores, `training.checkpoints.restore_input_position`), with exactly the batches, in exactly
    the augmentation, that the stream from 0 gives from there. The records are taken up at the window
    that holds element `start` (`Source.records` with that window's first record), the window is permuted
    as before and its first elements dropped unparsed, and the augmentation seeds go on from `start`.

    `distort=False` trains with the crop and the flip only (see `preprocessing.train_transform`).

    `threads` sizes the pipeline's own tf.data pool: this rank's share of its host's cores
    (`host_resources.plan_threads`; 0: every core this process may use, for one rank per host).

    `phase` (the index of the image-size phase) and `shard_index` enter the augmentation seeds, so phases
    and ranks draw different augmentations while each stays reproducible.
    """
    if start < 0 or start % batch_size:
        raise ValueError(f"an input position must be a whole number of batches of {batch_size}, got {start}")
    if transport not in preprocessing.IMAGE_TRANSPORTS:
        raise ValueError(
            f"image transport must be one of {preprocessing.IMAGE_TRANSPORTS}, got {transport!r}"
        )
    augment = preprocessing.train_transform_uint8 if transport == "uint8" else preprocessing.train_transform
    window = max(shuffle_buffer, 1)
    first_window, inside = divmod(start, window)
    ds = source.records(
        num_shards=num_shards,
        shard_index=shard_index,
        training=True,
        seed=seed + phase,
        start=first_window * window,
    )
    if shuffle_buffer > 1:
        ds = window_shuffle(ds, shuffle_buffer, seed=seed + 7919 * (phase + 1), first_window=first_window)
    if inside:
        ds = ds.skip(inside)  # records, before parsing: nothing decoded
    ds = source.parse(ds)
    stream = tf.constant([seed, shard_index * 1000 + phase], tf.int64)

    def transform(index, image_bytes, label):
        element_seed = tf.random.experimental.stateless_fold_in(stream, index)
        image = augment(
            image_bytes,
            element_seed,
            image_size=image_size,
            area_cover=area_cover,
            object_cover=object_cover,
            distort=distort,
        )
        return image, label

    ds = ds.enumerate(start=start).map(
        lambda index, element: transform(index, *element), num_parallel_calls=AUTOTUNE, deterministic=True
    )
    ds = ds.batch(batch_size, drop_remainder=True)
    return ds.prefetch(AUTOTUNE).with_options(_pipeline_options(threads))


def _parse_in_batches(ds: tf.data.Dataset, source: Source) -> tf.data.Dataset:
    """(record, origin) -> (jpeg_bytes, label) in the same order (`Source.parse`)."""
    return source.parse(ds)


def _pipeline_options(threads: int = 0) -> tf.data.Options:
    """tf.data options of the training pipeline.

    Ops inside the pipeline run single-threaded (parallelism comes from processing many elements at once,
    and intra-op sharding of small image ops only adds hand-offs), and the pipeline has its own thread pool
    so that it does not queue behind the training step's inter-op work.
    """
    options = tf.data.Options()
    options.threading.max_intra_op_parallelism = 1
    options.threading.private_threadpool_size = threads or host_resources.cpu_count()
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
    eval_fn = preprocessing.get_transform(transform)
    ds = source.records(num_shards=num_shards, shard_index=shard_index, training=False, seed=0)

    def apply(image_bytes, label):
        return eval_fn(image_bytes, image_size=image_size), label

    ds = source.parse(ds).map(apply, num_parallel_calls=AUTOTUNE, deterministic=True).batch(batch_size)
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
