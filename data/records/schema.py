"""The one definition of the ML-Images TFRecord schema, its label codecs and the dataset manifest.

One ``tf.train.Example`` per image (docs/REFERENCE.md section 1):

| key | type | content |
|---|---|---|
| ``image`` | bytes | the encoded JPEG |
| ``height``, ``width`` | int64 | original size in pixels |
| ``name`` | bytes | the image's path as written in the image list |
| ``label`` (``dense``) | bytes | little-endian float32[num_classes]: the reference layout, 44,664 bytes at 11,166 classes |
| ``label/indices``, ``label/confidences`` (``sparse``) | int64 list, float list | this project's compact layout |
| ``label`` (``int64``) | int64 | the class index, single-label (ImageNet fine-tuning) |

``dense`` is byte-compatible with the original writer (its records parse here and ours parse there), but
stores ~9 tags in 44.6 KB, 3x the JPEG. ``sparse`` stores just the tags (docs/BENCHMARKS.md section 1) and
`parse_records` decodes both into the identical float32 tensor, so nothing downstream knows which was used.

A dataset written by ``data/tfrecord.py`` is a folder of ``{prefix}-{i:05d}-of-{n:05d}.tfrecord`` shards next to
``{prefix}-manifest.json``; `read_manifest` is how readers find the shards and the label format.

A folder written by the original release has no manifest: ``{data_dir}/{prefix}/0.tfrecords``,
``1.tfrecords``... with dense (or int64) labels. `read_release_split` finds its files and reads the label
format and (dense) class count from the records themselves.
"""

from __future__ import annotations

import dataclasses
import glob
import json
import os
import re
from collections.abc import Mapping
from typing import TYPE_CHECKING

import numpy as np

from data.records import record_files

if TYPE_CHECKING:  # TensorFlow is imported where records are parsed: writing them does not need it.
    import tensorflow as tf

IMAGE_KEY = "image"
HEIGHT_KEY = "height"
WIDTH_KEY = "width"
NAME_KEY = "name"
LABEL_KEY = "label"
LABEL_INDICES_KEY = "label/indices"
LABEL_CONFIDENCES_KEY = "label/confidences"

LABEL_FORMATS: tuple[str, ...] = ("dense", "sparse", "int64")
MULTI_LABEL_FORMATS: tuple[str, ...] = ("dense", "sparse")

# Bumped whenever the manifest's JSON layout changes incompatibly.
MANIFEST_VERSION = 1
RECORD_SUFFIX = ".tfrecord"
RELEASE_SUFFIX = ".tfrecords"  # the original release's `<N>.tfrecords` files
_SHARD_RE = re.compile(r"-(\d{5})-of-(\d{5})\.tfrecord$")


def check_label_format(label_format: str) -> None:
    """Raises ValueError unless `label_format` is one of `LABEL_FORMATS`."""
    if label_format not in LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {LABEL_FORMATS}, got {label_format!r}")


def shard_filename(prefix: str, index: int, num_shards: int) -> str:
    """``{prefix}-{index:05d}-of-{num_shards:05d}.tfrecord``, the name of one shard."""
    if not 0 <= index < num_shards:
        raise ValueError(f"shard index {index} is outside [0, {num_shards})")
    return f"{prefix}-{index:05d}-of-{num_shards:05d}{RECORD_SUFFIX}"


def manifest_filename(prefix: str) -> str:
    """``{prefix}-manifest.json``, the manifest of one split."""
    return f"{prefix}-manifest.json"


# ---------------------------------------------------------------------------------------------------------
# Encoding (writer side; plain numpy, no TensorFlow).
# ---------------------------------------------------------------------------------------------------------


def _tag_arrays(label: Mapping[int, float], num_classes: int) -> tuple[np.ndarray, np.ndarray]:
    """Sorted class indices and their float32 confidences, range-checked.

    Sorted in Python: a line has ~9 tags, for which numpy's per-call overhead (fromiter, min, max, argsort:
    ~9 us) was a tenth of a record's encoding.
    """
    items = sorted(label.items())  # the keys are distinct: sorted by index
    if items and (items[0][0] < 0 or items[-1][0] >= num_classes):
        raise ValueError(f"class indices must be in [0, {num_classes}), got {sorted(label)}")
    indices = np.array([index for index, _ in items], dtype=np.int64)
    return indices, np.array([confidence for _, confidence in items], dtype=np.float32)


def dense_label_bytes(label: Mapping[int, float], *, num_classes: int) -> bytes:
    """The reference ``label`` field: float32[num_classes] little-endian, confidence at each tag, else 0."""
    indices, confidences = _tag_arrays(label, num_classes)
    dense = np.zeros(num_classes, dtype="<f4")
    dense[indices] = confidences
    return dense.tobytes()


# A tf.train.Example written by hand (example.proto, feature.proto): the writers run without TensorFlow, whose
# import costs 10-30 s of start-up per process (data/records/record_writer.py). Deterministic protobuf encoding:
# map entries sorted by key, each with its key (field 1) and value (field 2); repeated numbers packed.
# tests/test_schema.py checks the bytes against tf.train.Example.SerializeToString(deterministic=True).
# A feature is a list of byte strings whose concatenation is its encoding, and the Example is joined once
# at the end: the nested length prefixes are computed from the lengths, so the image (~100 KB) and the dense
# label (44 KB) are copied once, not once per level of nesting (6 copies, ~0.1 ms per record; issue 24).

_ONE_BYTE_VARINTS = tuple(bytes((value,)) for value in range(0x80))


def _varint(value: int) -> bytes:
    """Protobuf base-128 varint; a negative int64 as its 64-bit two's complement (10 bytes)."""
    if 0 <= value < 0x80:
        return _ONE_BYTE_VARINTS[value]
    value &= 0xFFFFFFFFFFFFFFFF
    out = bytearray()
    while value > 0x7F:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _header(number: int, length: int) -> bytes:
    """The tag (wire type 2) and length that start a length-delimited field of `length` bytes."""
    return _varint(number << 3 | 2) + _varint(length)


def _field(number: int, payload: bytes) -> bytes:
    """A length-delimited field (wire type 2)."""
    return _header(number, len(payload)) + payload


def _bytes_feature(value: bytes) -> list[bytes]:
    inner = _header(1, len(value))  # BytesList { value: [value] }
    return [_header(1, len(inner) + len(value)), inner, value]  # Feature.bytes_list


def _int64_feature(values) -> list[bytes]:
    packed = b"".join(_varint(int(v)) for v in values)
    return [_field(3, _field(1, packed) if packed else b"")]  # Feature.int64_list { packed value }


def _float_feature(values: np.ndarray) -> list[bytes]:
    packed = np.asarray(values, dtype="<f4").tobytes()
    return [_field(2, _field(1, packed) if packed else b"")]  # Feature.float_list { packed value }


def encode_example(
    *,
    image: bytes,
    name: str,
    height: int,
    width: int,
    label: Mapping[int, float] | int,
    label_format: str,
    num_classes: int,
) -> bytes:
    """Serializes one image as a ``tf.train.Example``.

    Serialization is deterministic (map keys sorted), so the same inputs always give the same bytes: the
    writer relies on that for reproducible shards. The bytes are those of ``tf.train.Example``'s
    ``SerializeToString(deterministic=True)``, written without importing TensorFlow.

    Args:
      image: The encoded JPEG, stored as is.
      name: The image's path in the list.
      height: Original height in pixels.
      width: Original width in pixels.
      label: ``{class_index: confidence}`` for ``dense``/``sparse``; the class index for ``int64``.
      label_format: One of `LABEL_FORMATS`.
      num_classes: Number of classes (11,166 for ML-Images); sets the dense length and bounds indices.

    Returns:
      The serialized Example.

    Raises:
      ValueError: Unknown format, a label of the wrong kind or a class index outside [0, num_classes).
    """
    check_label_format(label_format)
    feature = {
        IMAGE_KEY: _bytes_feature(image),
        NAME_KEY: _bytes_feature(name.encode("utf-8")),
        HEIGHT_KEY: _int64_feature([height]),
        WIDTH_KEY: _int64_feature([width]),
    }
    if label_format == "int64":
        if isinstance(label, Mapping) or not 0 <= int(label) < num_classes:
            raise ValueError(f"int64 labels must be an int in [0, {num_classes}), got {label!r}")
        feature[LABEL_KEY] = _int64_feature([int(label)])
    else:
        if not isinstance(label, Mapping):
            raise ValueError(f"{label_format} labels must be a {{index: confidence}} mapping, got {label!r}")
        if label_format == "dense":
            feature[LABEL_KEY] = _bytes_feature(dense_label_bytes(label, num_classes=num_classes))
        else:
            indices, confidences = _tag_arrays(label, num_classes)
            feature[LABEL_INDICES_KEY] = _int64_feature(indices.tolist())
            feature[LABEL_CONFIDENCES_KEY] = _float_feature(confidences)
    parts: list[bytes] = []
    for key, value in sorted(feature.items()):  # Features.feature map entries: key (1), Feature (2)
        key_field = _field(1, key.encode("utf-8"))
        value_length = sum(map(len, value))
        value_header = _header(2, value_length)
        parts += (_header(1, len(key_field) + len(value_header) + value_length), key_field, value_header)
        parts += value
    return b"".join([_header(1, sum(map(len, parts))), *parts])  # Example.features


# ---------------------------------------------------------------------------------------------------------
# Parsing (reader side; vectorised TensorFlow ops, usable inside tf.data).
# ---------------------------------------------------------------------------------------------------------


def feature_spec(label_format: str) -> dict[str, tf.io.FixedLenFeature | tf.io.VarLenFeature]:
    """The ``tf.io.parse_example`` spec of one label format."""
    import tensorflow as tf

    check_label_format(label_format)
    spec = {
        IMAGE_KEY: tf.io.FixedLenFeature([], tf.string),
        NAME_KEY: tf.io.FixedLenFeature([], tf.string),
        HEIGHT_KEY: tf.io.FixedLenFeature([], tf.int64),
        WIDTH_KEY: tf.io.FixedLenFeature([], tf.int64),
    }
    if label_format == "dense":
        spec[LABEL_KEY] = tf.io.FixedLenFeature([], tf.string)
    elif label_format == "int64":
        spec[LABEL_KEY] = tf.io.FixedLenFeature([], tf.int64)
    else:
        spec[LABEL_INDICES_KEY] = tf.io.VarLenFeature(tf.int64)
        spec[LABEL_CONFIDENCES_KEY] = tf.io.VarLenFeature(tf.float32)
    return spec


# Run-time record errors carry this mark, so that the input pipeline can tell them from other failures
# and report them as one line (training/input_pipeline.py).
RECORD_ERROR_MARK = "bad record: "


def _check_records(bad: tf.Tensor, describe, problem) -> tf.Tensor:
    """An op that fails naming the first record where `bad` [B] is true; the message is built only then.

    `describe(i)` is a scalar string naming record i of the batch (its file and index in the file);
    `problem(i)` a scalar string saying what is wrong with it.
    """
    import tensorflow as tf

    def fail():
        first = tf.argmax(tf.cast(bad, tf.int32), output_type=tf.int32)
        message = tf.strings.join([RECORD_ERROR_MARK, describe(first), ": ", problem(first)])
        with tf.control_dependencies([tf.debugging.Assert(False, [message])]):
            return tf.constant(False)

    return tf.cond(tf.reduce_any(bad), fail, lambda: tf.constant(True))


def _default_describe(index: tf.Tensor) -> tf.Tensor:
    import tensorflow as tf

    return tf.strings.join(["record ", tf.strings.as_string(index), " of the batch"])


def _decode_dense(raw: tf.Tensor, num_classes: int, describe) -> tf.Tensor:
    """[B] strings of float32[num_classes] bytes -> float32[B, num_classes], length checked first."""
    import tensorflow as tf

    expected = 4 * num_classes
    lengths = tf.strings.length(raw)
    check = _check_records(
        tf.not_equal(lengths, expected),
        describe,
        lambda i: tf.strings.join(
            [
                "the dense label is ",
                tf.strings.as_string(lengths[i]),
                f" bytes, not {expected} (float32[{num_classes}]): wrong --num_classes, "
                "or a record of another dataset",
            ]
        ),
    )
    with tf.control_dependencies([check]):
        raw = tf.identity(raw)
    return tf.reshape(tf.io.decode_raw(raw, tf.float32, little_endian=True), [-1, num_classes])


def _check_int64(labels: tf.Tensor, num_classes: int, describe) -> tf.Tensor:
    """int64 class indices, checked to lie in [0, num_classes)."""
    import tensorflow as tf

    check = _check_records(
        tf.logical_or(labels < 0, labels >= num_classes),
        describe,
        lambda i: tf.strings.join(
            ["class index ", tf.strings.as_string(labels[i]), f" is outside [0, {num_classes})"]
        ),
    )
    with tf.control_dependencies([check]):
        return tf.identity(labels)


def _decode_sparse(indices: tf.SparseTensor, confidences: tf.SparseTensor, num_classes: int) -> tf.Tensor:
    """Ragged per-example (index, confidence) lists -> float32[B, num_classes], by one scatter."""
    import tensorflow as tf

    batch = tf.cast(indices.dense_shape[0], tf.int32)
    rows = tf.cast(indices.indices[:, 0], tf.int32)
    checks = [
        tf.debugging.assert_equal(
            tf.math.bincount(rows, minlength=batch, maxlength=batch),
            tf.math.bincount(tf.cast(confidences.indices[:, 0], tf.int32), minlength=batch, maxlength=batch),
            message=f"{LABEL_INDICES_KEY} and {LABEL_CONFIDENCES_KEY} differ in length",
        ),
        tf.debugging.assert_non_negative(indices.values, message="negative class index in a sparse label"),
        tf.debugging.assert_less(
            indices.values,
            tf.constant(num_classes, tf.int64),
            message=f"class index >= num_classes ({num_classes}) in a sparse label",
        ),
    ]
    with tf.control_dependencies(checks):
        scatter_at = tf.stack([rows, tf.cast(indices.values, tf.int32)], axis=1)
    # max, not add, so that a (malformed) repeated index cannot sum above its confidence.
    return tf.tensor_scatter_nd_max(
        tf.zeros([batch, num_classes], tf.float32), scatter_at, confidences.values
    )


def parse_records(
    serialized: tf.Tensor, *, label_format: str, num_classes: int, describe=None
) -> dict[str, tf.Tensor]:
    """Parses serialized Examples of any label format into one common set of tensors.

    Works on a scalar string (``dataset.map`` before batching) or a 1-D batch (``dataset.batch(...).map``,
    the faster order); everything is vectorised (one ``parse_example``, one ``decode_raw`` or one scatter).

    Args:
      serialized: string tensor of shape [] or [B].
      label_format: How the labels were written: ``dense`` (reference), ``sparse`` or ``int64``.
      num_classes: Number of classes; for ``dense`` the label field must be exactly 4 * num_classes bytes,
        ``int64`` labels must lie in [0, num_classes).
      describe: ``describe(i)`` -> scalar string naming record ``i`` of the batch in an error (e.g. its file
        and index there; the input pipeline passes one); called only when a record is bad.

    Returns:
      ``image`` (string, the JPEG), ``label`` (float32[..., num_classes] for ``dense`` and ``sparse``,
      identical for the same tags; int64[...] for ``int64``), ``name`` (string), ``height``, ``width``
      (int64), each with the leading shape of `serialized`.

    Raises:
      tf.errors.InvalidArgumentError: At run time, for a dense label of the wrong byte length, an int64
        label out of range (both messages name the record after `RECORD_ERROR_MARK`) or a sparse label
        with mismatched lists or out-of-range indices.
    """
    import tensorflow as tf

    check_label_format(label_format)
    describe = describe or _default_describe
    serialized = tf.convert_to_tensor(serialized, tf.string)
    if serialized.shape.rank not in (0, 1):
        raise ValueError(f"serialized must be a scalar or a 1-D batch, got shape {serialized.shape}")
    is_scalar = serialized.shape.rank == 0
    batch = tf.reshape(serialized, [-1])
    parsed = tf.io.parse_example(batch, feature_spec(label_format))
    if label_format == "dense":
        label = _decode_dense(parsed[LABEL_KEY], num_classes, describe)
    elif label_format == "sparse":
        label = _decode_sparse(parsed[LABEL_INDICES_KEY], parsed[LABEL_CONFIDENCES_KEY], num_classes)
    else:
        label = _check_int64(parsed[LABEL_KEY], num_classes, describe)
    out = {
        IMAGE_KEY: parsed[IMAGE_KEY],
        LABEL_KEY: label,
        NAME_KEY: parsed[NAME_KEY],
        HEIGHT_KEY: parsed[HEIGHT_KEY],
        WIDTH_KEY: parsed[WIDTH_KEY],
    }
    if is_scalar:
        out = {key: value[0] for key, value in out.items()}
    return out


# ---------------------------------------------------------------------------------------------------------
# The manifest.
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class Manifest:
    """What a reader needs to know about a written split.

    Attributes:
      label_format: One of `LABEL_FORMATS`.
      num_classes: Number of classes the labels were written with.
      files: Absolute paths of the shards, in shard order.
      counts: Records per shard, aligned with `files`.
      num_records: Total records (the sum of `counts`).
      num_skipped: Images of the list that were not written (bad line or bad image).
      sizes: Bytes per shard as written, aligned with `files` (empty for a manifest that does not record
        them); `read_manifest` checks the files against them.
    """

    label_format: str
    num_classes: int
    files: tuple[str, ...]
    counts: tuple[int, ...]
    num_records: int
    num_skipped: int = 0
    sizes: tuple[int, ...] = ()


def read_manifest(data_dir: str | os.PathLike, prefix: str = "train") -> Manifest:
    """Reads ``{prefix}-manifest.json`` and checks that it describes a complete split.

    Every shard must exist with the size the manifest records (one ``stat`` per shard), so a shard cut
    short by an interrupted copy is named here, before training starts, instead of failing mid-run as a
    ``DataLossError`` that names no file.

    Args:
      data_dir: The writer's output folder.
      prefix: The split's prefix (``train``, ``val``...).

    Returns:
      The `Manifest`, with absolute shard paths.

    Raises:
      FileNotFoundError: No manifest, or a shard it lists is missing.
      ValueError: The manifest is incomplete or inconsistent (unknown format, counts that do not add up),
        or a shard's size differs from the recorded one (truncated or rewritten).
    """
    data_dir = os.path.abspath(os.fspath(data_dir))
    path = os.path.join(data_dir, manifest_filename(prefix))
    if not os.path.exists(path):
        partial = glob.glob(
            os.path.join(glob.escape(data_dir), f"{glob.escape(prefix)}-manifest.task-*.json")
        )
        hint = (
            " Per-task manifests exist: run the merge step (python data/tfrecord.py --merge ...)."
            if partial
            else " Was data/tfrecord.py run to completion with this --output_dir and --prefix?"
        )
        raise FileNotFoundError(f"no manifest {path}.{hint}")
    with open(path, encoding="utf-8") as f:
        try:
            raw = json.load(f)
        except json.JSONDecodeError as e:
            raise ValueError(f"manifest {path} is not valid JSON: {e}") from e
    try:
        if raw.get("format_version") != MANIFEST_VERSION:
            raise ValueError(f"format_version {raw.get('format_version')!r} != {MANIFEST_VERSION}")
        if not raw.get("complete", False):
            raise ValueError("the manifest is marked incomplete")
        label_format = raw["label_format"]
        check_label_format(label_format)
        shards = raw["shards"]
        files = tuple(os.path.join(data_dir, shard["file"]) for shard in shards)
        counts = tuple(int(shard["num_records"]) for shard in shards)
        sizes = tuple(int(shard["bytes"]) for shard in shards) if all("bytes" in x for x in shards) else ()
        manifest = Manifest(
            label_format=label_format,
            num_classes=int(raw["num_classes"]),
            files=files,
            counts=counts,
            num_records=int(raw["num_records"]),
            num_skipped=int(raw.get("num_skipped", 0)),
            sizes=sizes,
        )
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"manifest {path} is incomplete or malformed: {e!r}") from e
    if sum(manifest.counts) != manifest.num_records:
        raise ValueError(f"manifest {path}: shard counts sum to {sum(counts)}, not {manifest.num_records}")
    missing = [file for file in files if not os.path.exists(file)]
    if missing:
        raise FileNotFoundError(f"manifest {path} lists {len(missing)} missing shard(s), e.g. {missing[0]}")
    for file, size in zip(files, manifest.sizes, strict=False):  # no sizes: nothing to check
        actual = os.path.getsize(file)
        if actual != size:
            raise ValueError(
                f"{file} is {actual} bytes but its manifest recorded {size}: the shard is "
                f"{'truncated' if actual < size else 'not the one written'}; copy it again or rewrite it"
            )
    return manifest


def list_record_files(data_dir: str | os.PathLike, prefix: str = "train") -> list[str]:
    """The shards ``{prefix}-?????-of-?????.tfrecord`` of a folder without a manifest, checked complete.

    A fallback for folders written by other tools with our naming; prefer `read_manifest`, which also
    gives the label format.

    Raises:
      FileNotFoundError: No shard with that prefix.
      ValueError: Shards of different totals, or some of the n shards are missing.
    """
    data_dir = os.path.abspath(os.fspath(data_dir))
    pattern = os.path.join(glob.escape(data_dir), f"{glob.escape(prefix)}-?????-of-?????{RECORD_SUFFIX}")
    files = sorted(glob.glob(pattern))
    if not files:
        raise FileNotFoundError(f"no files match {pattern}")
    matches = [_SHARD_RE.search(file) for file in files]
    indices = [int(m.group(1)) for m in matches]
    totals = [int(m.group(2)) for m in matches]
    if len(set(totals)) != 1:
        raise ValueError(f"shards in {data_dir} disagree on the number of shards: {sorted(set(totals))}")
    if sorted(indices) != list(range(totals[0])):
        missing = sorted(set(range(totals[0])) - set(indices))
        raise ValueError(
            f"{len(missing)} of {totals[0]} shards missing in {data_dir}, e.g. index {missing[0]}"
        )
    return files


# ---------------------------------------------------------------------------------------------------------
# Folders written by the original release (no manifest).
# ---------------------------------------------------------------------------------------------------------


def label_layout(serialized: bytes, *, where: str = "the record") -> tuple[str, int | None]:
    """(label format, class count or None) of one serialized Example, read from its ``label`` field.

    A dense label's byte length gives the class count; an int64 or sparse label does not say it.

    Raises:
      ValueError: not an Example, no label, or a dense label whose length is not a multiple of 4.
    """
    import tensorflow as tf

    try:
        example = tf.train.Example.FromString(serialized)
    except Exception as e:  # protobuf's DecodeError
        raise ValueError(f"{where} is not a tf.train.Example: {e}") from None
    feature = example.features.feature
    if LABEL_INDICES_KEY in feature:
        return "sparse", None
    if LABEL_KEY not in feature:
        raise ValueError(f"{where} has no {LABEL_KEY!r} feature (keys: {sorted(feature)})")
    kind = feature[LABEL_KEY].WhichOneof("kind")
    if kind == "int64_list":
        return "int64", None
    if kind == "bytes_list" and len(feature[LABEL_KEY].bytes_list.value) == 1:
        length = len(feature[LABEL_KEY].bytes_list.value[0])
        if length % 4 == 0 and length:
            return "dense", length // 4
        raise ValueError(f"{where}: the dense label is {length} bytes, not a float32 vector")
    raise ValueError(f"{where}: the {LABEL_KEY!r} feature is a {kind}, not dense bytes or an int64")


@dataclasses.dataclass(frozen=True)
class ReleaseSplit:
    """A split in the original release's layout: ``{data_dir}/{prefix}/*.tfrecords``, no manifest.

    Attributes:
      label_format: ``dense`` or ``int64`` (``sparse`` if our own records were copied there).
      num_classes: The class count of dense labels (their byte length / 4); None for the other formats.
      files: Absolute paths, in numeric order of their names (0, 1, 2, ..., 10, ...).
    """

    label_format: str
    num_classes: int | None
    files: tuple[str, ...]


def list_release_files(data_dir: str | os.PathLike, prefix: str = "train") -> list[str]:
    """The ``*.tfrecords`` files of ``{data_dir}/{prefix}``, numbered names in numeric order (empty: none)."""
    folder = os.path.join(os.path.abspath(os.fspath(data_dir)), prefix)
    files = glob.glob(os.path.join(glob.escape(folder), f"*{RELEASE_SUFFIX}"))

    def order(path: str) -> tuple[int, int, str]:
        stem = os.path.basename(path).removesuffix(RELEASE_SUFFIX)
        return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)

    return sorted((f for f in files if os.path.isfile(f)), key=order)


def read_release_split(data_dir: str | os.PathLike, prefix: str = "train") -> ReleaseSplit:
    """Finds a release-layout split and reads its label format and class count from its records.

    Reads the LAST record of every file (`record_files.read_last_record`: about one record per file, from
    its end): that checks that no file is cut short — before the first step instead of as a mid-run
    ``DataLossError`` that names no file — and that every file has the same label format and length.

    Raises:
      FileNotFoundError: no ``*.tfrecords`` in ``{data_dir}/{prefix}``, or every file is empty.
      ValueError: a truncated file, an unreadable record, or files with different label layouts (one line
        naming the file).
    """
    files = list_release_files(data_dir, prefix)
    if not files:
        raise FileNotFoundError(f"no *{RELEASE_SUFFIX} files in {os.path.join(os.fspath(data_dir), prefix)}")
    layouts: dict[tuple[str, int | None], str] = {}
    for file in files:
        record = record_files.read_last_record(file)
        if record is not None:
            layout = label_layout(record, where=f"{file}: the last record")
            layouts.setdefault(layout, file)
    if not layouts:
        raise FileNotFoundError(
            f"every *{RELEASE_SUFFIX} file in {os.path.join(os.fspath(data_dir), prefix)} is empty"
        )
    if len(layouts) > 1:
        (a, file_a), (b, file_b) = list(layouts.items())[:2]
        raise ValueError(
            f"{file_a} has {_describe_layout(*a)} labels but {file_b} has {_describe_layout(*b)}: "
            "one split must use one label layout"
        )
    ((label_format, num_classes),) = layouts
    return ReleaseSplit(label_format=label_format, num_classes=num_classes, files=tuple(files))


def _describe_layout(label_format: str, num_classes: int | None) -> str:
    return f"dense float32[{num_classes}]" if label_format == "dense" else label_format
