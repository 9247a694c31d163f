"""Tests for data/demo.py and data/synthetic/demo_scenes.py (and the baseline in training/demo.py): hierarchy, closed
label sets, records vs lists, determinism, reuse, refusing foreign folders, baseline, CLI."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data.labels import annotations
from data.labels.hierarchy import load_hierarchy
from data.records import schema
from data.synthetic import demo_scenes, demo_set
from training import demo as demo_training

SMALL = dict(num_train=60, num_val=20, image_size=32, shards=2)


@pytest.fixture(scope="module")
def dataset(tmp_path_factory) -> demo_set.DemoDataset:
    return demo_set.make_demo_dataset(tmp_path_factory.mktemp("demo") / "set", seed=0, **SMALL)


def _record_files(data_dir) -> list[str]:
    return [file for prefix in demo_scenes.SPLITS for file in schema.read_manifest(data_dir, prefix).files]


def _read_bytes(files) -> list[bytes]:
    out = []
    for file in files:
        with open(file, "rb") as f:
            out.append(f.read())
    return out


def _list_labels(path) -> tuple[list[str], np.ndarray]:
    """Names and the dense [N, C] confidences of an image list."""
    entries = list(annotations.iter_entries(path, num_classes=demo_scenes.NUM_CLASSES, on_error="fail"))
    dense = np.zeros((len(entries), demo_scenes.NUM_CLASSES), np.float32)
    for row, entry in enumerate(entries):
        for index, confidence in entry.labels:
            dense[row, index] = confidence
    return [entry.path for entry in entries], dense


def _parse_split(data_dir, prefix) -> dict[str, np.ndarray]:
    manifest = schema.read_manifest(data_dir, prefix)
    batch = next(iter(tf.data.TFRecordDataset(list(manifest.files)).batch(10_000)))
    parsed = schema.parse_records(batch, label_format=manifest.label_format, num_classes=manifest.num_classes)
    return {key: value.numpy() for key, value in parsed.items()}


def test_hierarchy_file_loads_with_the_designed_depth(dataset):
    hierarchy = load_hierarchy(dataset.hierarchy_path)
    assert hierarchy.names == demo_scenes.CLASS_NAMES == dataset.class_names
    assert 20 <= hierarchy.num_classes == dataset.num_classes <= 40
    assert int(hierarchy.depth.max()) == demo_scenes.MAX_DEPTH >= 3
    np.testing.assert_array_equal(hierarchy.parents, demo_scenes.demo_hierarchy().parents)
    assert [hierarchy.names[i] for i in hierarchy.roots] == [
        "thing",
        "colour",
        "one object",
        "several objects",
    ]
    blue_square = demo_scenes.CLASS_INDEX["blue square"]
    assert [hierarchy.names[i] for i in hierarchy.ancestors(blue_square)] == [
        "square",
        "quadrilateral",
        "polygon",
        "shape",
        "thing",
    ]


def test_every_label_set_is_closed_under_ancestors_with_soft_tags_present(dataset):
    hierarchy = load_hierarchy(dataset.hierarchy_path)
    confidences = set()
    for path in (dataset.train_list, dataset.val_list):
        for entry in annotations.iter_entries(path, num_classes=dataset.num_classes, on_error="fail"):
            labels = dict(entry.labels)
            confidences.update(labels.values())
            for index, confidence in labels.items():
                for ancestor in hierarchy.ancestors(index).tolist():
                    assert labels.get(ancestor, 0.0) >= confidence, (entry.path, index, ancestor)
    assert confidences <= {1.0, 0.9, 0.8} and 1.0 in confidences and len(confidences) > 1


def test_records_decode_to_images_and_labels_of_the_lists(dataset):
    for prefix, list_path, count in (
        ("train", dataset.train_list, dataset.num_train),
        ("val", dataset.val_list, dataset.num_val),
    ):
        manifest = schema.read_manifest(dataset.data_dir, prefix)
        assert (manifest.num_records, manifest.label_format, manifest.num_classes) == (
            count,
            "sparse",
            demo_scenes.NUM_CLASSES,
        )
        assert len(manifest.files) == SMALL["shards"]
        parsed = _parse_split(dataset.data_dir, prefix)
        names, labels = _list_labels(list_path)
        assert [name.decode() for name in parsed["name"]] == names  # list order, shards in order
        np.testing.assert_array_equal(parsed["label"], labels)
        assert set(parsed["height"]) == set(parsed["width"]) == {dataset.image_size}
        for jpeg in parsed["image"][:5]:
            assert tf.io.decode_jpeg(jpeg).shape == (dataset.image_size, dataset.image_size, 3)
        # The list is what the drawing implies: regenerate two images from their seeds.
        hierarchy = demo_scenes.demo_hierarchy()
        for index in (0, count - 1):
            jpeg, _, tags = demo_scenes.make_example(
                seed=dataset.seed, prefix=prefix, index=index, image_size=dataset.image_size
            )
            assert jpeg == parsed["image"][index]
            expected = np.zeros(demo_scenes.NUM_CLASSES, np.float32)
            for tag, confidence in hierarchy.propagate(tags).items():
                expected[tag] = confidence
            np.testing.assert_array_equal(labels[index], expected)
    counts = np.sum(_list_labels(dataset.train_list)[1] >= 0.5, axis=0)
    assert tuple(counts.tolist()) == dataset.train_class_counts


def test_same_seed_gives_the_same_bytes_another_seed_differs_and_dense_parses_the_same(dataset, tmp_path):
    again = demo_set.make_demo_dataset(tmp_path / "again", seed=0, workers=2, **SMALL)
    assert not again.reused
    assert _read_bytes(_record_files(again.data_dir)) == _read_bytes(_record_files(dataset.data_dir))
    assert _read_bytes([again.train_list, again.hierarchy_path]) == _read_bytes(
        [dataset.train_list, dataset.hierarchy_path]
    )

    other = demo_set.make_demo_dataset(tmp_path / "other", seed=1, **SMALL)
    assert _read_bytes(_record_files(other.data_dir)) != _read_bytes(_record_files(dataset.data_dir))
    assert _read_bytes([other.train_list]) != _read_bytes([dataset.train_list])

    dense = demo_set.make_demo_dataset(tmp_path / "dense", seed=0, label_format="dense", **SMALL)
    assert schema.read_manifest(dense.data_dir, "val").label_format == "dense"
    ours, theirs = _parse_split(dataset.data_dir, "val"), _parse_split(dense.data_dir, "val")
    np.testing.assert_array_equal(ours["label"], theirs["label"])
    assert list(ours["image"]) == list(theirs["image"])


def test_a_complete_set_with_the_same_parameters_is_reused_without_writing(dataset):
    paths = [os.path.join(root, name) for root, _, names in os.walk(dataset.data_dir) for name in names]
    before = {path: os.stat(path).st_mtime_ns for path in paths}
    again = demo_set.make_demo_dataset(dataset.data_dir, seed=0, workers=3, **SMALL)
    assert again.reused and again == dataset
    after = {
        os.path.join(root, name): os.stat(os.path.join(root, name)).st_mtime_ns
        for root, _, names in os.walk(dataset.data_dir)
        for name in names
    }
    assert after == before


def test_an_interrupted_set_is_finished_with_the_same_bytes(tmp_path):
    out = tmp_path / "set"
    first = demo_set.make_demo_dataset(out, num_train=6, num_val=3, image_size=32, shards=2)
    records = _read_bytes(_record_files(out))
    (out / "val-manifest.json").unlink()  # as if killed while writing val
    os.remove(schema.read_manifest(out, "train").files[1])
    again = demo_set.make_demo_dataset(out, num_train=6, num_val=3, image_size=32, shards=2)
    assert not again.reused and again == first
    assert _read_bytes(_record_files(out)) == records


def test_other_parameters_need_overwrite_which_replaces_only_demo_files(tmp_path):
    out = tmp_path / "set"
    demo_set.make_demo_dataset(out, num_train=6, num_val=3, image_size=32, shards=2)
    (out / "notes.txt").write_text("mine")
    with pytest.raises(ValueError, match="other parameters"):
        demo_set.make_demo_dataset(out, num_train=5, num_val=3, image_size=32, shards=1)
    replaced = demo_set.make_demo_dataset(
        out, num_train=5, num_val=3, image_size=32, shards=1, overwrite=True
    )
    assert (replaced.num_train, schema.read_manifest(out, "train").num_records) == (5, 5)
    assert sorted(os.listdir(out / "images" / "train")) == [f"{i:06d}.jpg" for i in range(5)]
    assert not list(out.glob("train-*-of-00002*"))
    assert (out / "notes.txt").read_text() == "mine"


def test_refuses_a_folder_of_other_records_and_bad_arguments(tmp_path):
    (tmp_path / "train-manifest.json").write_text("{}")
    with pytest.raises(ValueError, match="not a demo set"):
        demo_set.make_demo_dataset(tmp_path, num_train=2, num_val=2)
    for bad in (dict(label_format="int64"), dict(num_train=0), dict(image_size=8)):
        with pytest.raises(ValueError):
            demo_set.make_demo_dataset(tmp_path / "x", **bad)


def test_most_frequent_baseline_equals_a_direct_numpy_computation(dataset):
    ks = (1, 3, 5, 7)
    got = demo_training.most_frequent_baseline(dataset.data_dir, topk=ks)
    _, train = _list_labels(dataset.train_list)
    _, val = _list_labels(dataset.val_list)
    frequency = np.mean(train >= 0.5, axis=0)
    np.testing.assert_allclose(demo_training.class_frequencies(dataset.data_dir, "train"), frequency)
    ranking = np.argsort(-frequency, kind="stable")  # ties: lower class index first, as tf.math.top_k
    positive = val >= 0.5
    for k in ks:
        hits = positive[:, ranking[:k]].sum(axis=1)
        precision = np.mean(hits / k)
        recall = np.mean(hits / positive.sum(axis=1))
        assert got[f"precision@{k}"] == pytest.approx(precision, abs=1e-9)
        assert got[f"recall@{k}"] == pytest.approx(recall, abs=1e-9)
        assert got[f"f1@{k}"] == pytest.approx(2 * precision * recall / (precision + recall), abs=1e-9)
    assert got["num_images"] == dataset.num_val
    assert got["precision@1"] == 1.0  # `thing` is on every image


def test_colour_tags_are_the_colours_in_the_pixels(dataset):
    """Learnable in principle: a confidence-1 colour tag covers pixels; an absent colour has none."""
    palette = np.asarray([demo_scenes.PALETTE[name] for name in demo_scenes.COLOUR_NAMES], np.float64)
    parsed = _parse_split(dataset.data_dir, "val")
    for jpeg, labels in zip(parsed["image"], parsed["label"], strict=True):
        pixels = tf.io.decode_jpeg(jpeg).numpy().reshape(-1, 3).astype(np.float64)
        distance = np.linalg.norm(pixels[:, None, :] - palette[None], axis=-1)
        nearest = np.where(distance.min(axis=1) < 45.0, distance.argmin(axis=1), -1)
        for c, name in enumerate(demo_scenes.COLOUR_NAMES):
            covered = np.mean(nearest == c)
            confidence = labels[demo_scenes.CLASS_INDEX[name]]
            if confidence == 1.0:
                assert covered >= 0.005, (name, covered)
            elif confidence == 0.0:
                assert covered <= 2 / len(pixels), (name, covered)


def test_class_frequencies_are_long_tailed_but_not_degenerate():
    hierarchy = demo_scenes.demo_hierarchy()
    counts = np.zeros(demo_scenes.NUM_CLASSES)
    num = 2000
    for index in range(num):
        shapes = demo_scenes.draw_scene(np.random.default_rng([0, 0, index]))
        counts[list(hierarchy.propagate(demo_scenes.scene_tags(shapes)))] += 1
    frequency = counts / num
    assert np.sum(frequency == 1.0) == 3  # thing, shape, colour
    assert frequency.min() >= 0.005  # the rarest class (yellow star, ~1.7%) is still there
    assert np.sum(frequency < 0.15) >= 6 and frequency.min() < 0.03  # a tail, 50x below the roots


def test_cli_writes_the_summary_and_help_lists_the_flags(tmp_path, repo_root):
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
    script = str(repo_root / "data" / "demo.py")
    out = tmp_path / "cli"
    run = subprocess.run(
        [
            sys.executable,
            script,
            f"--output_dir={out}",
            "--num_train=12",
            "--num_val=6",
            "--image_size=32",
            "--shards=1",
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo_root,
        timeout=300,
    )
    assert run.returncode == 0, run.stderr[-3000:]
    assert "most frequent classes (the baseline's ranking): thing, shape, colour" in run.stdout
    summary = json.loads((out / "summary.json").read_text())
    assert summary["images"] == {"train": 12, "val": 6}
    assert summary["num_classes"] == demo_scenes.NUM_CLASSES and summary["max_depth"] == demo_scenes.MAX_DEPTH
    assert summary["baseline_ranking"][:3] == ["thing", "shape", "colour"]

    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("x")
    refused = subprocess.run(
        [sys.executable, script, f"--output_dir={foreign}"],
        capture_output=True,
        text=True,
        env=env,
        cwd=repo_root,
    )
    assert refused.returncode != 0 and "Traceback" not in refused.stderr
    assert (
        refused.stderr.strip().splitlines()[-1].startswith("demo.py: error: ")
        and "not a demo set" in refused.stderr
    )
    assert os.listdir(foreign) == ["mine.txt"]

    help_text = subprocess.run(
        [sys.executable, script, "--help"], capture_output=True, text=True, env=env, cwd=repo_root
    ).stdout
    for flag in (
        "output_dir",
        "num_train",
        "num_val",
        "image_size",
        "seed",
        "shards",
        "workers",
        "label_format",
    ):
        assert f"--{flag}" in help_text


def test_refuses_a_non_empty_folder_without_its_record_and_writes_nothing_there(tmp_path):
    mine = tmp_path / "my_photos"
    mine.mkdir()
    (mine / "holiday.jpg").write_bytes(b"not the demo's")
    with pytest.raises(ValueError, match="not empty and is not a demo set"):
        demo_set.make_demo_dataset(mine, num_train=2, num_val=2, image_size=16, shards=1)
    with pytest.raises(ValueError, match="not empty and is not a demo set"):
        demo_set.check_output_dir(mine, num_train=2, num_val=2, image_size=16, shards=1)
    assert sorted(os.listdir(mine)) == ["holiday.jpg"]
    assert (mine / "holiday.jpg").read_bytes() == b"not the demo's"


def test_writes_into_a_new_or_empty_folder_and_reuses_its_own(tmp_path, dataset):
    empty = tmp_path / "empty"
    empty.mkdir()
    demo_set.check_output_dir(empty, num_train=2, num_val=2, image_size=16, shards=1)
    demo_set.check_output_dir(tmp_path / "new" / "deeper", num_train=2, num_val=2, image_size=16, shards=1)
    written = demo_set.make_demo_dataset(empty, num_train=2, num_val=2, image_size=16, shards=1)
    assert (empty / demo_set.PARAMS_FILENAME).is_file() and written.num_train == 2
    # The demo's own folder: same parameters are reused, other ones need `overwrite` (checked without writing).
    demo_set.check_output_dir(dataset.data_dir, seed=0, **SMALL)
    with pytest.raises(ValueError, match="other parameters"):
        demo_set.check_output_dir(dataset.data_dir, seed=1, **SMALL)
    demo_set.check_output_dir(dataset.data_dir, seed=1, overwrite=True, **SMALL)
    assert demo_set.make_demo_dataset(dataset.data_dir, seed=0, **SMALL).reused


def test_a_json_that_is_not_the_demos_record_is_no_marker(tmp_path):
    (tmp_path / demo_set.PARAMS_FILENAME).write_text('["someone else\'s demo.json"]')
    with pytest.raises(ValueError, match="not empty and is not a demo set"):
        demo_set.make_demo_dataset(tmp_path, num_train=2, num_val=2, image_size=16, shards=1)
