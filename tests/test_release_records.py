"""Folders written by the original release (`{dir}/train/*.tfrecords`, no manifest), TFRecord framing checks
and bad records: read as they are, damage named by file (and record) in one line before or at the failure.

The release-layout records are written here the way the release's data/tfrecord.py writes them:
`tf.io.TFRecordWriter` + `tf.train.Example` with `image`, `height`, `width`, `name` and `label` (raw
float32 bytes, or an int64 in its single-label mode), one `N.tfrecords` file per list chunk.
"""

import dataclasses
import io
import json
import os
import signal

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import evaluate
from data.records import record_files, schema
from models import resnet
from tests import datasets, entry_points
from tests.scripts import run_in_process
from training import config as config_lib
from training import evaluation, input_pipeline, loop, recipes, run_dir

NUM_CLASSES = 7
TINY = ["--depth=14", "--base_width=4", "--per_rank_batch=4", "--log_every=1", "--shuffle_buffer=8"]


def _jpeg(value: int, size: int = 16) -> bytes:
    out = io.BytesIO()
    Image.fromarray(np.full((size, size, 3), value, np.uint8)).save(out, "JPEG", quality=90)
    return out.getvalue()


def _bytes(value: bytes) -> tf.train.Feature:
    return tf.train.Feature(bytes_list=tf.train.BytesList(value=[value]))


def _int64(value: int) -> tf.train.Feature:
    return tf.train.Feature(int64_list=tf.train.Int64List(value=[value]))


def release_example(
    name: str, label, *, num_classes: int = NUM_CLASSES, label_bytes: bytes | None = None, grey: int = 0
):
    """One record as the release writes it: the dense label is `label.tostring()` of a float32 vector."""
    if isinstance(label, int):
        label_feature = _int64(label)
    else:
        dense = np.zeros(num_classes, np.float32)
        for index, confidence in label.items():
            dense[index] = confidence
        label_feature = _bytes(dense.tobytes() if label_bytes is None else label_bytes)
    image = _jpeg(grey)
    feature = {
        "width": _int64(16),
        "height": _int64(16),
        "image": _bytes(image),
        "label": label_feature,
        "name": _bytes(name.encode()),
    }
    return tf.train.Example(features=tf.train.Features(feature=feature)).SerializeToString()


def write_release_split(folder, records_per_file, *, single_label=False, bad=None, num_classes=NUM_CLASSES):
    """`folder/0.tfrecords`, `1.tfrecords`...; returns {(file index, record index): (name, label)}.

    `bad` = (file index, record index) gets a dense label 8 bytes short.
    """
    os.makedirs(folder, exist_ok=True)
    written = {}
    for f, count in enumerate(records_per_file):
        with tf.io.TFRecordWriter(os.path.join(folder, f"{f}.tfrecords")) as writer:
            for r in range(count):
                name = f"im_{f}_{r}.jpg"
                label = (f * 3 + r) % num_classes if single_label else {(f + r) % num_classes: 1.0, 0: 0.8}
                short = None
                if (f, r) == bad:
                    short = np.zeros(num_classes - 2, np.float32).tobytes()
                writer.write(
                    release_example(
                        name, label, num_classes=num_classes, label_bytes=short, grey=30 * ((f + r) % 8)
                    )
                )
                written[(f, r)] = (name, label)
    return written


@pytest.fixture(scope="module")
def release_dir(tmp_path_factory):
    """A dense (multi-label) release folder: train/ with 3 files, val/ with 2."""
    root = tmp_path_factory.mktemp("release")
    write_release_split(root / "train", [5, 4, 3])
    write_release_split(root / "val", [3, 2])
    return root


@pytest.fixture(scope="module")
def release_int64_dir(tmp_path_factory):
    root = tmp_path_factory.mktemp("release_int64")
    write_release_split(root / "train", [6, 6], single_label=True)
    write_release_split(root / "val", [4, 4], single_label=True)
    return root


def _tf_records(path) -> list[bytes]:
    return [r.numpy() for r in tf.data.TFRecordDataset(str(path))]


# ---------------------------------------------------------------------------------------------------------
# data/records/record_files.py: the framing.
# ---------------------------------------------------------------------------------------------------------


def test_last_record_and_count_match_tensorflow(tmp_path):
    path = tmp_path / "0.tfrecords"
    rng = np.random.default_rng(0)
    # The last record is larger than the first tail read (128 KiB), so the read has to grow.
    payloads = [rng.bytes(n) for n in (0, 1, 17, 5000, 300_000)]
    with tf.io.TFRecordWriter(str(path)) as writer:
        for payload in payloads:
            writer.write(payload)
    assert _tf_records(path) == payloads
    assert record_files.count_records(path) == 5
    assert record_files.read_last_record(path) == payloads[-1]
    empty = tmp_path / "1.tfrecords"
    with tf.io.TFRecordWriter(str(empty)):
        pass
    assert record_files.count_records(empty) == 0 and record_files.read_last_record(empty) is None
    # The CRC is TFRecord's: TensorFlow's own writer framed these headers.
    header = path.read_bytes()[:12]
    assert int.from_bytes(header[8:], "little") == record_files.masked_crc32c(header[:8])


@pytest.mark.parametrize("cut", [1, 3, 4, 5, 16, 600])
def test_a_file_cut_short_is_named_with_the_record_index(tmp_path, cut):
    path, healthy = tmp_path / "7.tfrecords", tmp_path / "8.tfrecords"
    for file in (path, healthy):
        with tf.io.TFRecordWriter(str(file)) as writer:
            for i in range(4):
                writer.write(bytes([i]) * 1000)
    data = path.read_bytes()
    path.write_bytes(data[:-cut])
    with pytest.raises(record_files.DamagedRecordFile) as info:
        record_files.read_last_record(path)
    message = str(info.value)
    assert message.startswith(f"{path}: record 3 (at byte 3048) is cut short") and "\n" not in message
    # TensorFlow itself only notices at the end of the file, without naming it.
    with pytest.raises(tf.errors.DataLossError) as tf_error:
        _tf_records(path)
    assert str(path) not in tf_error.value.message
    # Mapped back to the file by the pipeline's error translation.
    assert input_pipeline.record_error_line(tf_error.value, (str(healthy), str(path))) == message


def test_cut_at_a_record_boundary_is_a_shorter_valid_file_and_a_bad_header_is_named(tmp_path):
    path = tmp_path / "0.tfrecords"
    with tf.io.TFRecordWriter(str(path)) as writer:
        for i in range(3):
            writer.write(bytes([i]) * 100)
    data = path.read_bytes()
    path.write_bytes(data[:232])  # exactly two records: nothing in the framing can tell (a manifest can)
    assert record_files.count_records(path) == 2 and record_files.read_last_record(path) == b"\x01" * 100
    broken = bytearray(data)
    broken[116] ^= 0xFF  # the length of record 1
    path.write_bytes(bytes(broken))
    with pytest.raises(
        record_files.DamagedRecordFile, match=r"record 1 \(at byte 116\) has a corrupt header"
    ):
        record_files.count_records(path)


# ---------------------------------------------------------------------------------------------------------
# data/records/schema.py: the release's layout.
# ---------------------------------------------------------------------------------------------------------


def test_release_split_layout_order_and_formats(tmp_path):
    write_release_split(tmp_path / "train", [1] * 11)  # 0 ... 10: numeric, not lexical, order
    (tmp_path / "train" / "notes.txt").write_text("not a record file")
    split = schema.read_release_split(tmp_path, "train")
    assert split.label_format == "dense" and split.num_classes == NUM_CLASSES
    assert [os.path.basename(f) for f in split.files] == [f"{i}.tfrecords" for i in range(11)]
    write_release_split(tmp_path / "ints", [2, 2], single_label=True)
    assert schema.read_release_split(tmp_path, "ints").label_format == "int64"
    assert schema.read_release_split(tmp_path, "ints").num_classes is None
    with pytest.raises(FileNotFoundError, match="no \\*.tfrecords files"):
        schema.read_release_split(tmp_path, "val")


def test_release_split_with_mixed_label_layouts_is_one_error(tmp_path):
    write_release_split(tmp_path / "train", [2, 2])
    write_release_split(tmp_path / "other", [1], num_classes=9)
    os.replace(tmp_path / "other" / "0.tfrecords", tmp_path / "train" / "2.tfrecords")
    with pytest.raises(
        ValueError, match=r"0.tfrecords has dense float32\[7\] labels but .*2.tfrecords has dense "
    ):
        schema.read_release_split(tmp_path, "train")
    with pytest.raises(ValueError, match="no 'label' feature"):
        schema.label_layout(tf.train.Example().SerializeToString())
    with pytest.raises(ValueError, match="the dense label is 6 bytes, not a float32 vector"):
        schema.label_layout(release_example("a", {}, label_bytes=b"\0" * 6))
    ours = dict(image=b"x", name="a", height=1, width=1, num_classes=NUM_CLASSES)
    assert schema.label_layout(schema.encode_example(label={1: 1.0}, label_format="sparse", **ours)) == (
        "sparse",
        None,
    )
    assert schema.label_layout(schema.encode_example(label={1: 1.0}, label_format="dense", **ours)) == (
        "dense",
        NUM_CLASSES,
    )


# ---------------------------------------------------------------------------------------------------------
# training/input_pipeline.py: sources, sharding, bad records.
# ---------------------------------------------------------------------------------------------------------


def test_release_source_detects_classes_and_counts_on_request(release_dir):
    source = input_pipeline.tfrecord_source(str(release_dir), "train", num_classes=NUM_CLASSES)
    assert source.label_format == "dense" and not source.single_label and source.num_records is None
    assert [os.path.basename(f) for f in source.files] == ["0.tfrecords", "1.tfrecords", "2.tfrecords"]
    counted = input_pipeline.tfrecord_source(
        str(release_dir), "val", num_classes=NUM_CLASSES, count_records=True
    )
    assert counted.num_records == 5
    with pytest.raises(ValueError) as info:
        input_pipeline.tfrecord_source(str(release_dir), "train", num_classes=11166)
    assert str(info.value).startswith(
        f"{release_dir / 'train'} has dense labels of 28 bytes = 7 classes but the model has 11166"
    )
    with pytest.raises(FileNotFoundError, match="no manifest .* Nor is it a folder in the release's layout"):
        input_pipeline.tfrecord_source(str(release_dir), "test", num_classes=NUM_CLASSES)
    # The split folder itself given as --data_dir: the error says to give its parent.
    with pytest.raises(FileNotFoundError, match="train itself holds \\*.tfrecords: give its parent folder"):
        input_pipeline.tfrecord_source(str(release_dir / "train"), "train", num_classes=NUM_CLASSES)


def test_release_labels_and_images_reach_the_batches(release_dir):
    written = {}
    for f, counts in enumerate([5, 4, 3]):
        for r in range(counts):
            written[f"im_{f}_{r}.jpg"] = {(f + r) % NUM_CLASSES: 1.0, 0: 0.8}
    source = input_pipeline.tfrecord_source(str(release_dir), "train", num_classes=NUM_CLASSES)
    records = input_pipeline._records(source, num_shards=1, shard_index=0, training=False, seed=0)
    seen = 0
    for record, _ in records:
        parsed = schema.parse_records(record, label_format="dense", num_classes=NUM_CLASSES)
        expected = np.zeros(NUM_CLASSES, np.float32)
        for index, confidence in written[parsed["name"].numpy().decode()].items():
            expected[index] = confidence
        np.testing.assert_array_equal(parsed["label"].numpy(), expected)
        seen += 1
    assert seen == 12
    images, labels = next(iter(input_pipeline.eval_dataset(source, batch_size=12, image_size=24)))
    assert images.shape == (12, 24, 24, 3) and labels.shape == (12, NUM_CLASSES)


def _origins(source, *, num_shards, shard_index, training, n=None):
    ds = input_pipeline._records(
        source, num_shards=num_shards, shard_index=shard_index, training=training, seed=3
    )
    if n:
        ds = ds.take(n)
    stride = input_pipeline._ORIGIN_STRIDE
    return [(int(o) // stride, int(o) % stride) for _, o in ds]


def test_release_files_are_sharded_by_file_and_fewer_files_than_ranks(release_dir):
    source = input_pipeline.tfrecord_source(str(release_dir), "train", num_classes=NUM_CLASSES)
    # Training: rank r reads files r, r + n, ... (the release's own `idx % workers == task` split).
    assert {f for f, _ in _origins(source, num_shards=2, shard_index=0, training=True, n=40)} == {0, 2}
    assert {f for f, _ in _origins(source, num_shards=2, shard_index=1, training=True, n=40)} == {1}
    # Fewer files than ranks (3 files of 5, 4 and 3 records, 4 ranks): rank r reads file r % 3 alone and
    # every k-th of its records (ranks 0 and 3 share file 0); no rank reads the whole split, and one pass
    # (evaluation) or one epoch of each rank (training) holds every record exactly once.
    everything = sorted((f, r) for f, n in enumerate([5, 4, 3]) for r in range(n))
    for training in (False, True):
        seen = []
        for rank, per_epoch in enumerate([3, 4, 3, 2]):
            origins = _origins(source, num_shards=4, shard_index=rank, training=training, n=per_epoch)
            assert {f for f, _ in origins} == {rank % 3} and len(origins) == per_epoch
            seen += origins
        assert sorted(seen) == everything


def test_a_bad_dense_record_is_one_line_naming_file_and_index(tmp_path):
    write_release_split(tmp_path / "train", [4, 4, 4], bad=(1, 2))
    source = input_pipeline.tfrecord_source(str(tmp_path), "train", num_classes=NUM_CLASSES)
    iterator = iter(
        input_pipeline.train_dataset(source, batch_size=4, image_size=16, seed=0, shuffle_buffer=4)
    )
    with pytest.raises(input_pipeline.BadRecordError) as info:
        for _ in range(5):
            input_pipeline.next_batch(iterator, source)
    assert str(info.value) == (
        f"{tmp_path / 'train' / '1.tfrecords'}: record 2: the dense label is 20 bytes, not 28 (float32[7]): "
        "wrong --num_classes, or a record of another dataset"
    )
    # Evaluation reads the same origins.
    with pytest.raises(tf.errors.InvalidArgumentError) as info:
        list(input_pipeline.eval_dataset(source, batch_size=4, image_size=16))
    assert input_pipeline.record_error_line(info.value).startswith(
        f"{tmp_path / 'train' / '1.tfrecords'}: record 2:"
    )


def test_a_bad_record_ends_an_evaluation_in_one_line(tmp_path):
    write_release_split(tmp_path / "val", [3, 3], bad=(1, 1))
    source = evaluation.eval_source(num_classes=NUM_CLASSES, data_dir=str(tmp_path), split_prefix="val")
    assert source.num_records == 6  # counted for the progress bar: a release folder has no manifest
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
    dataset = input_pipeline.eval_dataset(source, batch_size=2, image_size=16)
    with pytest.raises(input_pipeline.BadRecordError) as info:
        evaluation.evaluate_model(
            model,
            dataset,
            task=evaluation.MULTILABEL,
            num_classes=NUM_CLASSES,
            settings=evaluation.EvalSettings(topk=(1,)),
            show_progress=False,
            source=source,
        )
    assert str(info.value).startswith(f"{tmp_path / 'val' / '1.tfrecords'}: record 1: the dense label")
    assert "\n" not in str(info.value)


def test_reference_sample_records_read_as_a_release_folder(reference_dir, tmp_path):
    """The release's own two files (2 records each, 11,166 dense classes) as train/ and val/."""
    for split in ("train", "val"):
        os.symlink(reference_dir / "tfrecords", tmp_path / split)
    source = input_pipeline.tfrecord_source(str(tmp_path), "val", num_classes=11166, count_records=True)
    assert source.label_format == "dense" and source.num_records == 4
    assert [os.path.basename(f) for f in source.files] == ["0.tfrecords", "1.tfrecords"]
    expected = [
        np.frombuffer(tf.train.Example.FromString(r).features.feature["label"].bytes_list.value[0], "<f4")
        for f in source.files
        for r in _tf_records(f)
    ]
    ((_, labels),) = list(input_pipeline.eval_dataset(source, batch_size=4, image_size=32))
    # The files are interleaved: compare the rows in a fixed order.
    np.testing.assert_array_equal(
        np.array(sorted(map(tuple, labels.numpy()))), np.array(sorted(map(tuple, expected)))
    )
    with pytest.raises(ValueError, match="44664 bytes = 11166 classes but the model has 1000"):
        input_pipeline.tfrecord_source(str(tmp_path), "train", num_classes=1000)


# ---------------------------------------------------------------------------------------------------------
# The training loop: damage is an error before (or at) the first step, one line.
# ---------------------------------------------------------------------------------------------------------


def _tiny_config(data_dir, model_dir, **changes):
    return config_lib.replace(
        recipes.PRETRAIN,
        model=config_lib.ModelConfig(
            depth=14, base_width=4, num_classes=changes.pop("num_classes", NUM_CLASSES)
        ),
        data=dataclasses.replace(recipes.PRETRAIN.data, data_dir=str(data_dir), shuffle_buffer=8),
        train_steps=2,
        per_rank_batch=4,
        reference_global_batch=4,
        image_sizes=((0, 16),),
        eval_every=0,
        log_every=1,
        model_dir=str(model_dir),
        **changes,
    )


def test_truncated_manifest_shard_stops_before_any_step(tmp_path):
    data = datasets.multilabel(tmp_path / "data", num_train=16, num_val=4, size=16)
    shard = os.path.join(data.data_dir, schema.shard_filename("train", 1, 2))
    size = os.path.getsize(shard)
    with open(shard, "r+b") as f:
        f.truncate(size - 3)
    config = _tiny_config(data.data_dir, tmp_path / "run", num_classes=data.num_classes)
    with pytest.raises(ValueError) as info:
        loop.train(config)
    assert str(info.value) == (
        f"{shard} is {size - 3} bytes but its manifest recorded {size}: the shard is truncated; "
        "copy it again or rewrite it"
    )
    assert not (tmp_path / "run" / "metrics.jsonl").exists() and not list((tmp_path / "run").glob("ckpt-*"))


def test_bad_release_record_stops_training_with_its_file_and_index(tmp_path):
    write_release_split(tmp_path / "data" / "train", [4, 4], bad=(0, 2))
    with pytest.raises(
        input_pipeline.BadRecordError, match=r"/data/train/0.tfrecords: record 2: the dense label"
    ):
        loop.train(_tiny_config(tmp_path / "data", tmp_path / "run"))
    assert not (tmp_path / "run" / "metrics.jsonl").exists()


# ---------------------------------------------------------------------------------------------------------
# The entry scripts on release folders, end to end.
# ---------------------------------------------------------------------------------------------------------


def _train(data_dir, model_dir, *args, finetune=False):
    """train.py (or finetune.py --ckpt=ckpt2 from scratch) in this process on `data_dir` at 32 px, 2 steps of
    the tiny model with an evaluation at step 2; returns the lines of its metrics.jsonl."""
    recipe = ["--ckpt=ckpt2", "--init_checkpoint="] if finetune else []
    handlers = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    entry_points.run(
        [
            *recipe,
            f"--data_dir={data_dir}",
            f"--num_classes={NUM_CLASSES}",
            f"--model_dir={model_dir}",
            "--image_sizes=32",
            "--noscale_schedule",
            "--train_steps=2",
            "--eval_every=2",
            *args,
            *TINY,
        ],
        finetune=finetune,
    )
    # In this process, the run leaves nothing behind: its signal handlers are gone, its lock is released.
    assert {s: signal.getsignal(s) for s in handlers} == handlers
    run_dir.RunLock(str(model_dir)).acquire().release()
    return [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_train_py_then_evaluate_py_on_a_release_folder(tmp_path, release_dir):
    model_dir = tmp_path / "run"
    lines = _train(release_dir, model_dir, "--eval_steps=1", "--topk=1,3")
    assert [x["step"] for x in lines if x["kind"] == "train"] == [1, 2]
    assert 0.0 <= next(x for x in lines if x["kind"] == "eval")["f1@3"] <= 1.0
    report_path = tmp_path / "report.json"
    run_in_process(
        evaluate,
        [
            f"--checkpoint={model_dir}",
            f"--data_dir={release_dir}",
            "--split_prefix=val",
            "--image_size=32",
            "--topk=1,3",
            "--batch_size=2",
            f"--output_json={report_path}",
        ],
    )
    report = json.loads(report_path.read_text())
    assert report["num_images"] == 5 and report["settings"]["label_format"] == "dense"


@pytest.mark.slow
def test_finetune_py_on_int64_release_records(tmp_path, release_int64_dir):
    lines = _train(release_int64_dir, tmp_path / "ft", "--eval_steps=2", finetune=True)
    assert [x["step"] for x in lines if x["kind"] == "train"] == [1, 2]
    assert 0.0 <= next(x for x in lines if x["kind"] == "eval")["top1"] <= 1.0


def test_train_py_names_a_truncated_release_file_in_one_line(tmp_path):
    write_release_split(tmp_path / "data" / "train", [3, 3])
    path = tmp_path / "data" / "train" / "1.tfrecords"
    path.write_bytes(path.read_bytes()[:-2])
    with pytest.raises(SystemExit) as info:  # what train.py exits with: the one line on stderr, status 1
        entry_points.run(
            [
                f"--data_dir={tmp_path / 'data'}",
                f"--num_classes={NUM_CLASSES}",
                f"--model_dir={tmp_path / 'run'}",
                "--image_sizes=32",
                "--noscale_schedule",
                "--train_steps=1",
                "--eval_every=0",
                *TINY,
            ]
        )
    line = info.value.code
    assert isinstance(line, str) and "\n" not in line
    assert line.startswith(f"train.py: error: {path}: record 2 (at byte ") and "is cut short" in line
