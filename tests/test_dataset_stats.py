"""Tests for tools/dataset_stats.py: hand-computed list statistics, TFRecords agree with lists, plots, CLI."""

import json
import subprocess
import sys

import numpy as np
import pytest

from tools import dataset_stats

LINES = [
    "a.jpg\t0:1\t1:0.9\t2:0.8",
    "b.jpg\t0:1",
    "c.jpg\t0:1\t3:0.9",
    "d.jpg",  # an image without tags
    "e.jpg\t4:0\t1:1",  # a confidence-0 tag does not count
]
LABELS = [{0: 1.0, 1: 0.9, 2: 0.8}, {0: 1.0}, {0: 1.0, 3: 0.9}, {}, {4: 0.0, 1: 1.0}]


@pytest.fixture
def small_list(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("\n".join(LINES) + "\n")
    return path


def test_list_statistics_by_hand(small_list):
    stats = dataset_stats.stats_from_list(small_list, num_classes=6, trainable_min=1)
    assert stats["num_images"] == 5 and stats["num_classes"] == 6
    assert stats["num_tags"] == 7
    assert stats["avg_tags_per_image"] == pytest.approx(7 / 5)
    assert stats["tags_per_image"] == {"min": 0, "median": 1.0, "max": 3, "histogram": [1, 2, 1, 1]}
    assert stats["images_per_class"] == [3, 2, 1, 1, 0, 0]
    assert stats["classes_with_images"] == 4
    assert stats["trainable_classes"] == 2  # strictly more than 1 image: classes 0 and 1
    assert stats["avg_images_per_class"] == pytest.approx(7 / 4)
    assert stats["avg_images_per_class_all"] == pytest.approx(7 / 6)
    assert stats["median_images_per_class"] == 1.5
    assert stats["confidence_histogram"] == {"0.8": 1, "0.9": 2, "1": 4}
    assert stats["malformed_lines"] == 0


def test_min_confidence_and_small_blocks(small_list):
    filtered = dataset_stats.stats_from_list(small_list, num_classes=6, min_confidence=0.9)
    assert filtered["images_per_class"] == [3, 2, 0, 1, 0, 0]
    assert filtered["tags_per_image"]["histogram"] == [1, 2, 2]
    whole = dataset_stats.stats_from_list(small_list, num_classes=6)
    blocks = dataset_stats.stats_from_list(small_list, num_classes=6, block_tags=1)
    assert blocks == whole


def test_unknown_num_classes_grows_and_bad_lines_are_counted(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.jpg\t7:1\nbad\t1:2.5\nb.jpg\t2:1\n")
    stats = dataset_stats.stats_from_list(path)
    assert stats["num_classes"] == 8 and stats["images_per_class"][7] == 1
    assert stats["malformed_lines"] == 1 and stats["num_images"] == 2


def test_single_label_list(tmp_path):
    path = tmp_path / "single.txt"
    path.write_text("a.jpg 2\nb.jpg 2\nc.jpg 0\n")
    stats = dataset_stats.stats_from_list(path, kind="single", num_classes=3)
    assert stats["images_per_class"] == [1, 0, 2] and stats["avg_tags_per_image"] == 1.0


@pytest.mark.parametrize("label_format", ["dense", "sparse"])
def test_tfrecords_agree_with_the_list(small_list, tmp_path, label_format):
    tf = pytest.importorskip("tensorflow")
    from data.records import schema

    path = str(tmp_path / "records.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for k, label in enumerate(LABELS):
            label = {i: c for i, c in label.items() if c > 0}  # a dense label cannot carry a 0-confidence tag
            writer.write(
                schema.encode_example(
                    image=b"jpeg",
                    name=f"{k}.jpg",
                    height=1,
                    width=1,
                    label=label,
                    label_format=label_format,
                    num_classes=6,
                )
            )
    from_records = dataset_stats.stats_from_tfrecords(
        [path], label_format=label_format, num_classes=6, batch_size=2
    )
    from_list = dataset_stats.stats_from_list(small_list, num_classes=6)
    for key in ("source", "malformed_lines", "label_format"):
        from_records.pop(key, None)
        from_list.pop(key, None)
    assert from_records == from_list


def test_data_dir_written_by_the_writer(small_list, tmp_path):
    pytest.importorskip("tensorflow")
    from PIL import Image

    from data.shards import dataset_writer

    for line in LINES:
        Image.new("RGB", (8, 8), (200, 10, 10)).save(tmp_path / line.split()[0], format="JPEG")
    dataset_writer.write_dataset(
        image_list=str(small_list),
        image_root=str(tmp_path),
        output_dir=str(tmp_path / "records"),
        label_format="sparse",
        num_classes=6,
        shards=2,
        progress=False,
    )
    from_dir = dataset_stats.stats_from_data_dir(tmp_path / "records", "train")
    from_list = dataset_stats.stats_from_list(small_list, num_classes=6)
    assert from_dir["num_images"] == 5
    assert from_dir["images_per_class"] == from_list["images_per_class"]
    assert from_dir["tags_per_image"] == from_list["tags_per_image"]


def test_int64_tfrecords(tmp_path):
    tf = pytest.importorskip("tensorflow")
    from data.records import schema

    path = str(tmp_path / "records.tfrecord")
    with tf.io.TFRecordWriter(path) as writer:
        for label in (2, 2, 0):
            writer.write(
                schema.encode_example(
                    image=b"x", name="n", height=1, width=1, label=label, label_format="int64", num_classes=3
                )
            )
    stats = dataset_stats.stats_from_tfrecords([path], label_format="int64", num_classes=3)
    assert stats["images_per_class"] == [1, 0, 2] and stats["tags_per_image"]["histogram"] == [0, 3]


def test_reference_tfrecords(reference_dir):
    tf = pytest.importorskip("tensorflow")
    files = sorted(str(p) for p in (reference_dir / "tfrecords").glob("*.tfrecords"))
    stats = dataset_stats.stats_from_tfrecords(files, label_format="dense", num_classes=11166)
    # Oracle: decode each Example with protobuf + numpy, independently of data.records.schema.
    per_class = np.zeros(11166, dtype=np.int64)
    tags = []
    for file in files:
        for record in tf.data.TFRecordDataset(file).as_numpy_iterator():
            example = tf.train.Example.FromString(record)
            label = np.frombuffer(example.features.feature["label"].bytes_list.value[0], dtype="<f4")
            per_class += label > 0
            tags.append(int(np.count_nonzero(label)))
    assert stats["num_images"] == len(tags) > 0
    assert stats["images_per_class"] == per_class.tolist()
    assert stats["num_tags"] == sum(tags)


def test_plots(small_list, tmp_path):
    pytest.importorskip("matplotlib")
    from PIL import Image

    stats = dataset_stats.stats_from_list(small_list, num_classes=6)
    paths = dataset_stats.write_plots(stats, tmp_path / "plots")
    assert [p.rsplit("/", 1)[-1] for p in paths] == ["images_per_class.png", "tags_per_image.png"]
    for p in paths:
        with Image.open(p) as image:
            assert image.format == "PNG" and image.size[0] > 100


def test_the_summary_reports_skipped_lines(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("a.jpg\t7:1\nbad\t1:2.5\nb.jpg\t2:1\n")
    summary = dataset_stats.format_summary(dataset_stats.stats_from_list(path)).splitlines()
    assert summary[0] == "images            2" and summary[-1] == "malformed lines   1 (skipped)"


def test_cli(small_list, tmp_path, repo_root):
    cmd = [sys.executable, str(repo_root / "tools" / "dataset_stats.py")]
    args = ["--list", str(small_list), "--num_classes=6", f"--output_json={tmp_path / 's.json'}"]
    proc = subprocess.run(
        cmd + [*args, "--trainable_min=1"], check=True, capture_output=True, text=True, timeout=120
    )
    assert proc.stdout.splitlines() == [  # the figures of test_list_statistics_by_hand
        "images            5",
        "classes           6 (4 with images, 2 trainable: with more than 1 images)",
        "tags per image    1.40 mean, 1 median, 0-3",
        "images per class  1.8 mean over the classes with images (1.2 over all), 1.5 median, 3 max",
    ]
    stats = json.loads((tmp_path / "s.json").read_text())
    assert stats["num_images"] == 5 and stats["images_per_class"] == [3, 2, 1, 1, 0, 0]
    helptext = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120).stdout
    for flag in ("--list", "--data_dir", "--tfrecords", "--output_json", "--plot_dir", "--trainable_min"):
        assert flag in helptext
