"""Tests for data/records/schema.py: the original writer's records, the three label layouts, batch parsing, manifests."""

import json
import os
import pathlib

import numpy as np
import pytest
import tensorflow as tf

from data.records import schema

REFERENCE_CLASSES = 11166

# What the original writer put into reference/tfrecords, in file order: (name, height, width, tags). Read
# off the raw bytes once (tf.train.Example + numpy.frombuffer); the confidences are written as in the
# release's lists (0.9 means float32(0.9)).
REFERENCE_RECORDS = {
    "0.tfrecords": [
        ("im_2.jpeg", 374, 500, {3: 1.0, 5193: 0.9, 5851: 0.9, 9413: 1.0, 9416: 1.0}),
        ("im_3.jpeg", 374, 500, {1053: 0.8, 1193: 0.8, 1379: 0.8}),
    ],
    "1.tfrecords": [
        ("im_0.jpeg", 600, 800, {5170: 0.9, 5177: 0.9}),
        ("im_1.jpeg", 374, 500, {1053: 0.8, 1193: 0.8}),
    ],
}

# Label tables for the codec tests: empty, the first and last class, soft and hard tags, unsorted keys.
LABEL_CASES = [
    {},
    {0: 1.0},
    {9: 0.8},
    {7: 0.9, 2: 1.0, 5: 0.8},
    {0: 1.0, 3: 0.0, 9: 0.25},
    {i: 1.0 for i in range(10)},
]
NUM_CLASSES = 10


def _reference_serialized(reference_dir: pathlib.Path, file: str) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(str(reference_dir / "tfrecords" / file))]


def _raw_fields(serialized: bytes) -> dict:
    """The independent oracle: protobuf + numpy, no code from data/records/schema.py."""
    feature = tf.train.Example.FromString(serialized).features.feature
    (label_bytes,) = feature["label"].bytes_list.value
    (image,) = feature["image"].bytes_list.value
    (name,) = feature["name"].bytes_list.value
    (height,) = feature["height"].int64_list.value
    (width,) = feature["width"].int64_list.value
    return {
        "label_bytes": label_bytes,
        "label": np.frombuffer(label_bytes, dtype="<f4"),
        "image": image,
        "name": name,
        "height": height,
        "width": width,
        "keys": set(feature),
    }


def _example(
    label, *, label_format: str = "dense", num_classes: int = NUM_CLASSES, name: str = "a.jpg"
) -> bytes:
    return schema.encode_example(
        image=b"\xff\xd8jpeg-bytes-" + name.encode(),
        name=name,
        height=3,
        width=4,
        label=label,
        label_format=label_format,
        num_classes=num_classes,
    )


def _dense_oracle(label: dict, num_classes: int = NUM_CLASSES) -> np.ndarray:
    out = np.zeros(num_classes, np.float32)
    for index, confidence in label.items():
        out[index] = confidence
    return out


# ---------------------------------------------------------------------------------------------------------
# The original writer's records.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("file", sorted(REFERENCE_RECORDS))
def test_reference_records_raw_bytes_match_the_table(reference_dir, file):
    """Pins down what the files hold, independently of the module under test."""
    serialized = _reference_serialized(reference_dir, file)
    assert len(serialized) == len(REFERENCE_RECORDS[file])
    for raw, (name, height, width, tags) in zip(serialized, REFERENCE_RECORDS[file], strict=True):
        fields = _raw_fields(raw)
        assert fields["keys"] == {"image", "height", "width", "name", "label"}
        assert (fields["name"], fields["height"], fields["width"]) == (name.encode(), height, width)
        assert len(fields["label_bytes"]) == REFERENCE_CLASSES * 4 == 44664
        assert np.flatnonzero(fields["label"]).tolist() == sorted(tags)
        np.testing.assert_array_equal(
            fields["label"][sorted(tags)], np.float32([tags[i] for i in sorted(tags)])
        )
        assert fields["image"][:2] == b"\xff\xd8"
        if file == "0.tfrecords":  # docs/REFERENCE.md section 1: a label field 3x the JPEG.
            assert round(len(fields["label_bytes"]) / len(fields["image"])) == 3


@pytest.mark.parametrize("file", sorted(REFERENCE_RECORDS))
def test_reference_records_parse_exactly_per_record_and_batched(reference_dir, file):
    serialized = _reference_serialized(reference_dir, file)
    batch = schema.parse_records(tf.constant(serialized), label_format="dense", num_classes=REFERENCE_CLASSES)
    assert batch["label"].shape == (len(serialized), REFERENCE_CLASSES)
    assert batch["label"].dtype == tf.float32
    for i, raw in enumerate(serialized):
        fields = _raw_fields(raw)
        one = schema.parse_records(tf.constant(raw), label_format="dense", num_classes=REFERENCE_CLASSES)
        assert one["label"].shape == (REFERENCE_CLASSES,)
        for parsed in (one, {key: value[i] for key, value in batch.items()}):
            np.testing.assert_array_equal(parsed["label"].numpy(), fields["label"])
            assert parsed["image"].numpy() == fields["image"]
            assert parsed["name"].numpy() == fields["name"]
            assert (int(parsed["height"]), int(parsed["width"])) == (fields["height"], fields["width"])
        # The stored JPEG decodes to the recorded size.
        assert tf.io.decode_jpeg(one["image"]).shape[:2] == (fields["height"], fields["width"])


@pytest.mark.parametrize("file", sorted(REFERENCE_RECORDS))
def test_reference_records_reencode_byte_identically(reference_dir, file):
    for raw, (name, height, width, tags) in zip(
        _reference_serialized(reference_dir, file), REFERENCE_RECORDS[file], strict=True
    ):
        fields = _raw_fields(raw)
        ours = schema.encode_example(
            image=fields["image"],
            name=name,
            height=height,
            width=width,
            label=tags,
            label_format="dense",
            num_classes=REFERENCE_CLASSES,
        )
        assert schema.dense_label_bytes(tags, num_classes=REFERENCE_CLASSES) == fields["label_bytes"]
        assert _raw_fields(ours)["label_bytes"] == fields["label_bytes"]
        # The whole Example is the same message; only the map order on the wire differs (the original
        # writer serialized the feature map in Python 2 dict order, ours is sorted).
        assert tf.train.Example.FromString(ours) == tf.train.Example.FromString(raw)
        assert ours == tf.train.Example.FromString(raw).SerializeToString(deterministic=True)


def test_reference_records_with_wrong_num_classes_fail_clearly(reference_dir):
    (raw, _) = _reference_serialized(reference_dir, "0.tfrecords")
    with pytest.raises(
        tf.errors.InvalidArgumentError,
        match=r"bad record: record 0 of the batch: the dense label is 44664 bytes, not 44660 \(float32\[11165\]\)",
    ):
        schema.parse_records(tf.constant(raw), label_format="dense", num_classes=REFERENCE_CLASSES - 1)
    # int64 labels are range-checked too, naming the record.
    int64 = schema.encode_example(
        image=b"x", name="a", height=1, width=1, label=9, label_format="int64", num_classes=10
    )
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="bad record: record 0 of the batch: class index 9 is outside"
    ):
        schema.parse_records(tf.constant([int64]), label_format="int64", num_classes=9)
    assert schema.parse_records(tf.constant([int64]), label_format="int64", num_classes=10)[
        "label"
    ].numpy() == [9]
    # The dense records are not sparse ones: no label/indices, so the sparse label comes out empty rather
    # than wrong, and the int64 spec refuses the bytes field.
    sparse = schema.parse_records(tf.constant(raw), label_format="sparse", num_classes=REFERENCE_CLASSES)
    assert float(tf.reduce_sum(sparse["label"])) == 0.0
    with pytest.raises(tf.errors.InvalidArgumentError):
        schema.parse_records(tf.constant(raw), label_format="int64", num_classes=REFERENCE_CLASSES)


def test_reference_records_through_tf_data_batched_equal_per_record(reference_dir):
    files = [str(reference_dir / "tfrecords" / f) for f in sorted(REFERENCE_RECORDS)]

    def parse(x):
        return schema.parse_records(x, label_format="dense", num_classes=REFERENCE_CLASSES)

    per_record = list(tf.data.TFRecordDataset(files).map(parse).as_numpy_iterator())
    batched = list(tf.data.TFRecordDataset(files).batch(3).map(parse).as_numpy_iterator())
    assert [b["label"].shape[0] for b in batched] == [3, 1]
    flat = {key: np.concatenate([b[key] for b in batched]) for key in batched[0]}
    assert (
        [r["name"] for r in per_record]
        == flat["name"].tolist()
        == [b"im_2.jpeg", b"im_3.jpeg", b"im_0.jpeg", b"im_1.jpeg"]
    )
    for i, record in enumerate(per_record):
        for key, value in record.items():
            np.testing.assert_array_equal(value, flat[key][i])


# ---------------------------------------------------------------------------------------------------------
# The three layouts.
# ---------------------------------------------------------------------------------------------------------


def test_dense_layout_is_little_endian_float32_at_the_class_index():
    raw = schema.dense_label_bytes({2: 1.0, 7: 0.9}, num_classes=NUM_CLASSES)
    assert len(raw) == 4 * NUM_CLASSES
    assert raw[8:12] == np.float32(1.0).astype("<f4").tobytes() == b"\x00\x00\x80\x3f"
    assert raw[28:32] == np.float32(0.9).astype("<f4").tobytes()
    assert raw[:8] + raw[12:28] + raw[32:] == b"\x00" * (4 * NUM_CLASSES - 8)
    assert schema.dense_label_bytes({}, num_classes=3) == b"\x00" * 12


def test_sparse_and_int64_layouts_on_the_wire():
    sparse = tf.train.Example.FromString(_example({7: 0.9, 2: 1.0}, label_format="sparse")).features.feature
    assert set(sparse) == {"image", "name", "height", "width", "label/indices", "label/confidences"}
    assert list(sparse["label/indices"].int64_list.value) == [2, 7]  # Sorted by class index.
    np.testing.assert_array_equal(sparse["label/confidences"].float_list.value, np.float32([1.0, 0.9]))
    single = tf.train.Example.FromString(_example(4, label_format="int64")).features.feature
    assert set(single) == {"image", "name", "height", "width", "label"}
    assert list(single["label"].int64_list.value) == [4]
    dense = tf.train.Example.FromString(_example({1: 1.0})).features.feature
    assert len(dense["label"].bytes_list.value[0]) == 4 * NUM_CLASSES


def test_sparse_is_much_smaller_than_dense_at_full_size():
    tags = {i: 1.0 for i in range(0, 11166, 1241)}  # 9 tags, the dataset's average.
    dense = _example(tags, num_classes=REFERENCE_CLASSES)
    sparse = _example(tags, label_format="sparse", num_classes=REFERENCE_CLASSES)
    assert len(dense) > 44664 and len(sparse) < 200


def test_encoding_is_deterministic():
    for label_format, label in (("dense", {3: 0.8, 1: 1.0}), ("sparse", {3: 0.8, 1: 1.0}), ("int64", 3)):
        assert _example(label, label_format=label_format) == _example(label, label_format=label_format)
    # Key order of the mapping does not matter.
    assert _example({3: 0.8, 1: 1.0}, label_format="sparse") == _example(
        {1: 1.0, 3: 0.8}, label_format="sparse"
    )


@pytest.mark.parametrize(
    "label_format, label",
    [
        ("dense", {NUM_CLASSES: 1.0}),
        ("dense", {-1: 1.0}),
        ("sparse", {NUM_CLASSES: 1.0}),
        ("sparse", 3),
        ("dense", 3),
        ("int64", {3: 1.0}),
        ("int64", NUM_CLASSES),
        ("int64", -1),
        ("png", {3: 1.0}),
    ],
)
def test_encode_rejects_bad_labels(label_format, label):
    with pytest.raises(ValueError):
        _example(label, label_format=label_format)


@pytest.mark.parametrize("label", LABEL_CASES, ids=range(len(LABEL_CASES)))
def test_dense_and_sparse_decode_to_identical_tensors(label):
    dense = schema.parse_records(tf.constant(_example(label)), label_format="dense", num_classes=NUM_CLASSES)
    sparse = schema.parse_records(
        tf.constant(_example(label, label_format="sparse")), label_format="sparse", num_classes=NUM_CLASSES
    )
    assert dense["label"].dtype == sparse["label"].dtype == tf.float32
    assert dense["label"].shape == sparse["label"].shape == (NUM_CLASSES,)
    np.testing.assert_array_equal(dense["label"].numpy(), sparse["label"].numpy())
    np.testing.assert_array_equal(dense["label"].numpy(), _dense_oracle(label))
    for key in ("image", "name", "height", "width"):
        assert dense[key].numpy() == sparse[key].numpy()


@pytest.mark.parametrize("label_format", schema.LABEL_FORMATS)
def test_batch_parsing_equals_per_record_parsing(label_format):
    if label_format == "int64":
        labels = [0, 9, 4, 4, 1, 7]
    else:
        labels = LABEL_CASES
    serialized = [
        _example(label, label_format=label_format, name=f"im_{i}.jpg") for i, label in enumerate(labels)
    ]
    batch = schema.parse_records(tf.constant(serialized), label_format=label_format, num_classes=NUM_CLASSES)
    expected_shape = (len(labels),) if label_format == "int64" else (len(labels), NUM_CLASSES)
    assert batch["label"].shape == expected_shape
    assert batch["label"].dtype == (tf.int64 if label_format == "int64" else tf.float32)
    for i, raw in enumerate(serialized):
        one = schema.parse_records(tf.constant(raw), label_format=label_format, num_classes=NUM_CLASSES)
        assert set(one) == set(batch) == {"image", "label", "name", "height", "width"}
        for key in one:
            assert one[key].shape == batch[key].shape[1:]
            np.testing.assert_array_equal(one[key].numpy(), batch[key][i].numpy())
        expected = labels[i] if label_format == "int64" else _dense_oracle(labels[i])
        np.testing.assert_array_equal(one["label"].numpy(), expected)
        assert one["name"].numpy() == f"im_{i}.jpg".encode()


@pytest.mark.parametrize("label_format", schema.LABEL_FORMATS)
def test_parsing_inside_tf_data_batched_and_unbatched(label_format):
    labels = [3, 1, 0, 2, 9] if label_format == "int64" else LABEL_CASES[1:]
    serialized = [_example(label, label_format=label_format) for label in labels]

    def parse(x):
        return schema.parse_records(x, label_format=label_format, num_classes=NUM_CLASSES)["label"]

    data = tf.data.Dataset.from_tensor_slices(serialized)
    unbatched = np.stack(list(data.map(parse).as_numpy_iterator()))
    batched = np.concatenate(list(data.batch(2).map(parse).as_numpy_iterator()))
    np.testing.assert_array_equal(unbatched, batched)


def test_parse_rejects_malformed_sparse_labels():
    def sparse_record(indices, confidences) -> bytes:
        feature = tf.train.Example.FromString(_example({}, label_format="sparse")).features.feature
        feature["label/indices"].int64_list.value[:] = indices
        feature["label/confidences"].float_list.value[:] = confidences
        example = tf.train.Example(features=tf.train.Features(feature=feature))
        return example.SerializeToString()

    good = sparse_record([1], [1.0])
    for bad, message in (
        (sparse_record([1, 2], [1.0]), "differ in length"),
        (sparse_record([NUM_CLASSES], [1.0]), "num_classes"),
        (sparse_record([-1], [1.0]), "negative"),
    ):
        with pytest.raises(tf.errors.InvalidArgumentError, match=message):
            schema.parse_records(tf.constant([good, bad]), label_format="sparse", num_classes=NUM_CLASSES)


def test_parse_rejects_dense_label_of_wrong_length_and_bad_arguments():
    with pytest.raises(tf.errors.InvalidArgumentError, match=r"44 bytes, not 40 \(float32\[10\]\)"):
        schema.parse_records(
            tf.constant(_example({1: 1.0}, num_classes=11)), label_format="dense", num_classes=10
        )
    # `describe` names the FIRST bad record of a batch (here the second of three).
    batch = tf.constant([_example({1: 1.0}, num_classes=10), _example({}, num_classes=11), _example({})])
    with pytest.raises(
        tf.errors.InvalidArgumentError, match="bad record: item 1 of mine: the dense label is 44"
    ):
        schema.parse_records(
            batch,
            label_format="dense",
            num_classes=10,
            describe=lambda i: tf.strings.join(["item ", tf.strings.as_string(i), " of mine"]),
        )
    with pytest.raises(ValueError, match="scalar or a 1-D batch"):
        schema.parse_records(tf.constant([[_example({})]]), label_format="dense", num_classes=NUM_CLASSES)
    with pytest.raises(ValueError, match="label_format"):
        schema.parse_records(tf.constant(_example({})), label_format="png", num_classes=NUM_CLASSES)


# ---------------------------------------------------------------------------------------------------------
# File names and the manifest.
# ---------------------------------------------------------------------------------------------------------


def test_shard_and_manifest_file_names():
    assert schema.shard_filename("train", 0, 1024) == "train-00000-of-01024.tfrecord"
    assert schema.shard_filename("val", 12, 13) == "val-00012-of-00013.tfrecord"
    assert schema.manifest_filename("val") == "val-manifest.json"
    for bad in (-1, 13):
        with pytest.raises(ValueError):
            schema.shard_filename("val", bad, 13)


def _write_split(data_dir: pathlib.Path, counts=(2, 3), prefix="train", **overrides) -> pathlib.Path:
    """A minimal manifest in the writer's layout, with empty shard files."""
    shards = []
    for i, count in enumerate(counts):
        file = schema.shard_filename(prefix, i, len(counts))
        (data_dir / file).write_bytes(b"")
        shards.append({"file": file, "index": i, "num_records": count})
    manifest = {
        "format_version": schema.MANIFEST_VERSION,
        "complete": True,
        "label_format": "sparse",
        "num_classes": 11166,
        "num_records": sum(counts),
        "num_skipped": 1,
        "shards": shards,
    }
    manifest.update(overrides)
    path = data_dir / schema.manifest_filename(prefix)
    path.write_text(json.dumps(manifest))
    return path


def test_read_manifest(tmp_path):
    _write_split(tmp_path, counts=(2, 3), prefix="val")
    manifest = schema.read_manifest(tmp_path, "val")
    assert manifest == schema.Manifest(
        label_format="sparse",
        num_classes=11166,
        files=(str(tmp_path / "val-00000-of-00002.tfrecord"), str(tmp_path / "val-00001-of-00002.tfrecord")),
        counts=(2, 3),
        num_records=5,
        num_skipped=1,
    )
    assert all(os.path.isabs(f) for f in manifest.files)


def test_read_manifest_missing(tmp_path):
    with pytest.raises(FileNotFoundError, match="run to completion"):
        schema.read_manifest(tmp_path, "train")
    # A multi-task run that was not merged yet says so.
    (tmp_path / "train-manifest.task-00000-of-00002.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="--merge"):
        schema.read_manifest(tmp_path, "train")
    _write_split(tmp_path, prefix="val")
    with pytest.raises(FileNotFoundError):  # Another split's manifest is not this one.
        schema.read_manifest(tmp_path, "test")


@pytest.mark.parametrize(
    "overrides, message",
    [
        ({"complete": False}, "incomplete"),
        ({"format_version": 99}, "format_version"),
        ({"label_format": "png"}, "label_format"),
        ({"num_records": 6}, "sum to 5"),
        ({"shards": [{"file": "train-00000-of-00002.tfrecord"}]}, "num_records"),
        ({"num_classes": None}, "malformed"),
    ],
)
def test_read_manifest_incomplete_or_inconsistent(tmp_path, overrides, message):
    _write_split(tmp_path, **overrides)
    with pytest.raises(ValueError, match=message):
        schema.read_manifest(tmp_path)


def test_read_manifest_missing_key_or_bad_json(tmp_path):
    path = _write_split(tmp_path)
    raw = json.loads(path.read_text())
    del raw["label_format"]
    path.write_text(json.dumps(raw))
    with pytest.raises(ValueError, match="label_format"):
        schema.read_manifest(tmp_path)
    path.write_text('{"format_version": 1, "comp')  # A torn write.
    with pytest.raises(ValueError, match="not valid JSON"):
        schema.read_manifest(tmp_path)


def test_read_manifest_checks_recorded_shard_sizes(tmp_path):
    path = _write_split(tmp_path, counts=(1, 1))
    for i in range(2):
        (tmp_path / schema.shard_filename("train", i, 2)).write_bytes(b"x" * 100)
    raw = json.loads(path.read_text())
    for shard in raw["shards"]:
        shard["bytes"] = 100
    path.write_text(json.dumps(raw))
    assert schema.read_manifest(tmp_path).sizes == (100, 100)
    (tmp_path / schema.shard_filename("train", 1, 2)).write_bytes(b"x" * 97)  # cut short by 3 bytes
    with pytest.raises(
        ValueError, match=r"train-00001-of-00002.tfrecord is 97 bytes but its manifest recorded 100"
    ):
        schema.read_manifest(tmp_path)
    (tmp_path / schema.shard_filename("train", 1, 2)).write_bytes(b"x" * 101)
    with pytest.raises(ValueError, match="not the one written"):
        schema.read_manifest(tmp_path)


def test_read_manifest_missing_shard(tmp_path):
    _write_split(tmp_path, counts=(1, 1, 1))
    os.remove(tmp_path / "train-00001-of-00003.tfrecord")
    with pytest.raises(FileNotFoundError, match="1 missing shard.*train-00001-of-00003"):
        schema.read_manifest(tmp_path)


def test_list_record_files(tmp_path):
    with pytest.raises(FileNotFoundError):
        schema.list_record_files(tmp_path)
    for i in range(3):
        (tmp_path / schema.shard_filename("train", i, 3)).write_bytes(b"")
    (tmp_path / schema.shard_filename("val", 0, 1)).write_bytes(b"")
    assert schema.list_record_files(tmp_path) == [
        str(tmp_path / schema.shard_filename("train", i, 3)) for i in range(3)
    ]
    os.remove(tmp_path / schema.shard_filename("train", 1, 3))
    with pytest.raises(ValueError, match="1 of 3 shards missing.*index 1"):
        schema.list_record_files(tmp_path)
    (tmp_path / schema.shard_filename("train", 1, 4)).write_bytes(b"")
    with pytest.raises(ValueError, match="disagree"):
        schema.list_record_files(tmp_path)


# ---------------------------------------------------------------------------------------------------------
# Writing without TensorFlow: the hand-written Example encoder and data/records/record_writer.py, checked byte for
# byte against TensorFlow's own serializer and writer.
# ---------------------------------------------------------------------------------------------------------


def _tf_example(*, image, name, height, width, label, label_format, num_classes) -> bytes:
    """The oracle: the Example as tf.train.Example builds and serializes it (the writer's former code)."""

    def bytes_feature(value):
        return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))

    def int64_feature(values):
        return tf.train.Feature(int64_list=tf.train.Int64List(value=values))

    feature = {
        "image": bytes_feature(image),
        "name": bytes_feature(name.encode("utf-8")),
        "height": int64_feature([height]),
        "width": int64_feature([width]),
    }
    if label_format == "int64":
        feature["label"] = int64_feature([label])
    elif label_format == "dense":
        dense = np.zeros(num_classes, dtype="<f4")
        for index, confidence in label.items():
            dense[index] = confidence
        feature["label"] = bytes_feature(dense.tobytes())
    else:
        indices = sorted(label)
        feature["label/indices"] = int64_feature(indices)
        feature["label/confidences"] = tf.train.Feature(
            float_list=tf.train.FloatList(value=[np.float32(label[i]) for i in indices])
        )
    example = tf.train.Example(features=tf.train.Features(feature=feature))
    return example.SerializeToString(deterministic=True)


@pytest.mark.parametrize("label_format", schema.LABEL_FORMATS)
def test_encode_example_is_byte_identical_to_tf_train_example(label_format):
    rng = np.random.default_rng(0)
    num_classes = 11166
    labels = [{}, {0: 1.0}, {11165: 0.9, 3: 0.8, 200: 0.123456789}, {i: 1.0 for i in range(0, 11166, 97)}]
    if label_format == "int64":
        labels = [0, 1, 127, 128, 16383, 16384, 2**21 - 1]  # varints of 1 to 3 bytes
        num_classes = 2**21
    sizes = [(0, 0), (1, 1), (127, 128), (16384, 300), (2**31, 2**40)]  # varints of 1 to 6 bytes
    images_ = [b"", b"\xff\xd8", rng.integers(0, 256, 127, dtype=np.uint8).tobytes(), rng.bytes(70_000)]
    names = ["a.jpg", "", "dir/ünïcødé 名前.jpeg", "x" * 300]
    for i, label in enumerate(labels):
        fields = dict(
            image=images_[i % len(images_)],
            name=names[i % len(names)],
            height=sizes[i % len(sizes)][0],
            width=sizes[i % len(sizes)][1],
            label=label,
            label_format=label_format,
            num_classes=num_classes,
        )
        assert schema.encode_example(**fields) == _tf_example(**fields), (label_format, i)


@pytest.mark.parametrize(
    "lengths",
    [
        [0],
        [1, 3, 4, 5, 63, 64, 65],
        [1023, 1024, 1025, 4095, 4096, 4097],
        [64 * 1023, 64 * 1024 + 1, 250_001],
    ],
    ids=["empty", "short", "threshold", "long"],
)
def test_record_writer_is_byte_identical_to_tf_record_writer(tmp_path, lengths):
    from data.records import record_writer

    rng = np.random.default_rng(len(lengths))
    records = [rng.bytes(n) for n in lengths] + [bytes(5000), b"\xff" * 3000]
    with record_writer.RecordWriter(tmp_path / "ours.tfrecord") as writer:
        for record in records:
            writer.write(record)
    with tf.io.TFRecordWriter(str(tmp_path / "tf.tfrecord")) as writer:
        for record in records:
            writer.write(record)
    assert (tmp_path / "ours.tfrecord").read_bytes() == (tmp_path / "tf.tfrecord").read_bytes()
    read_back = [r.numpy() for r in tf.data.TFRecordDataset(str(tmp_path / "ours.tfrecord"))]
    assert read_back == records


def _bitwise_crc32c(data: bytes) -> int:
    """CRC-32C one bit at a time from its definition (reflected polynomial 0x82F63B78, all-ones initial
    register and final inversion): no table, nothing shared with data/records/record_writer.py."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def test_crc32c_known_value_and_both_paths_agree():
    from data.records import record_writer

    assert _bitwise_crc32c(b"123456789") == 0xE3069283  # the oracle gives the CRC-32C check value
    assert record_writer.crc32c(b"123456789") == 0xE3069283
    rng = np.random.default_rng(1)
    # Below 1024 bytes the byte-table loop, from 1024 the vectorised lanes (odd lane counts included).
    for n in (0, 4, 1023, 1024, 1025, 64 * 17 + 3, 100_003):
        data = rng.bytes(n)
        crc = _bitwise_crc32c(data)
        assert record_writer.crc32c(data) == crc, n
        # TFRecord's mask: rotated right by 15 bits, plus 0xA282EAD8.
        assert record_writer.masked_crc32c(data) == (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF, n


def test_writing_records_does_not_import_tensorflow():
    """The writers' code (encode + frame) runs in a process that never imports TensorFlow."""
    import subprocess
    import sys

    code = (
        "import sys\n"
        "from data.records import record_writer, schema\n"
        "record = schema.encode_example(image=b'x', name='a', height=1, width=2, label={1: 0.5},"
        " label_format='sparse', num_classes=3)\n"
        "with record_writer.RecordWriter(sys.argv[1]) as w:\n"
        "    w.write(record)\n"
        "print(sorted(m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')))\n"
    )
    root = pathlib.Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root)}
    out = subprocess.run(
        [sys.executable, "-c", code, "/dev/null"],
        env=env,
        cwd=root,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"
