"""Tests for data/tfrecord.py, the writer: layouts, shard assignment, bad inputs, kill -9, tasks, TFDS, CLI."""

import collections
import errno
import functools
import glob
import io
import itertools
import json
import os
import pathlib
import re
import signal
import struct
import subprocess
import sys
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageFile

from data.pixels import images
from data.records import manifest as manifest_files
from data.records import schema
from data.shards import dataset_writer
from tests import scripts

NUM_CLASSES = 50
SIZE = (24, 16)  # (width, height) of the test images.
# tqdm's "[elapsed<remaining, rate]"; below 1 image/s (a loaded machine) the rate reads "1.52s/img".
PROGRESS_RATE_ETA = r"\[\d\d:\d\d<\d\d:\d\d, +[\d.]+(img/s|s/img)\]"


def _image_bytes(seed: int, fmt: str = "JPEG", mode: str = "RGB", size: tuple[int, int] = SIZE) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    image = Image.fromarray(pixels)
    if mode != "RGB":
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _png(width: int, height: int, *, bit_depth: int, color_type: int, rows, chunks: tuple = ()) -> bytes:
    """A PNG written chunk by chunk, for what Pillow cannot write (16-bit RGB, a lying header).

    `rows` yields each row's raw bytes (without the filter byte); `chunks` are extra (type, data) chunks
    placed before IDAT (PLTE, tRNS).
    """

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    compressor = zlib.compressobj()
    idat = b"".join(compressor.compress(b"\x00" + row) for row in rows) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + b"".join(chunk(kind, data) for kind, data in chunks)
        + chunk(b"IDAT", idat)
        + chunk(b"IEND", b"")
    )


@functools.cache
def _bomb_png(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of zeros: some 100 KB on disk, width x height bytes once Pillow decodes it."""
    return _png(
        width, height, bit_depth=1, color_type=0, rows=itertools.repeat(bytes((width + 7) // 8), height)
    )


def _without_adobe_marker(jpeg: bytes) -> bytes:
    at = jpeg.index(b"\xff\xee")  # The APP14 "Adobe" segment Pillow writes into CMYK JPEGs.
    (length,) = struct.unpack(">H", jpeg[at + 2 : at + 4])
    return jpeg[:at] + jpeg[at + 2 + length :]


def _tags(i: int) -> dict[int, float]:
    return {i % NUM_CLASSES: 1.0, (3 * i + 1) % NUM_CLASSES: 0.9} if i % 7 else {}


def _make_corpus(root: pathlib.Path, num_images: int, *, label_format: str = "sparse") -> pathlib.Path:
    """`num_images` small RGB JPEGs and the list that names them; returns the list."""
    root.mkdir(parents=True, exist_ok=True)
    lines = []
    for i in range(num_images):
        name = f"im_{i:04d}.jpg"
        (root / name).write_bytes(_image_bytes(i))
        if label_format == "int64":
            lines.append(f"{name} {i % NUM_CLASSES}")
        else:
            lines.append("\t".join([name] + [f"{k}:{v:g}" for k, v in _tags(i).items()]))
    image_list = root.parent / f"{root.name}_list.txt"
    image_list.write_text("\n".join(lines) + "\n")
    return image_list


def _write(image_list, output_dir, **kwargs) -> dict:
    args = dict(
        image_list=str(image_list),
        image_root=str(pathlib.Path(image_list).parent / "img"),  # Every test keeps its images there.
        output_dir=str(output_dir),
        label_format="sparse",
        num_classes=NUM_CLASSES,
        shards=3,
        workers=1,
        progress=False,
    )
    args.update(kwargs)
    return dataset_writer.write_dataset(**args)


def _examples(files) -> list[tf.train.Example]:
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset([str(f) for f in files])]


def _name(example: tf.train.Example) -> str:
    return example.features.feature["name"].bytes_list.value[0].decode()


def _image(example: tf.train.Example) -> bytes:
    return example.features.feature["image"].bytes_list.value[0]


def _record_multiset(output_dir, prefix: str = "train") -> collections.Counter:
    """(name, serialized record) of every record of a finished split: labels, image bytes and sizes."""
    files = schema.read_manifest(output_dir, prefix).files
    return collections.Counter(
        (_name(example), example.SerializeToString(deterministic=True)) for example in _examples(files)
    )


def _temp_files(output_dir) -> list[str]:
    """Temporary files of `fileio.atomic_write` (``.<name>.<random>.tmp``) left in `output_dir`."""
    return sorted(p.name for p in pathlib.Path(output_dir).iterdir() if p.name.endswith(".tmp"))


# ---------------------------------------------------------------------------------------------------------
# Shard assignment.
# ---------------------------------------------------------------------------------------------------------


def test_shards_are_named_and_filled_deterministically(tmp_path):
    image_list = _make_corpus(tmp_path / "img", 11)
    manifest = _write(image_list, tmp_path / "out", shards=4, prefix="val")
    names = sorted(p.name for p in (tmp_path / "out").iterdir())
    assert names == sorted(
        [f"val-{i:05d}-of-00004.tfrecord" for i in range(4)]
        + [f"val-{i:05d}-of-00004.done.json" for i in range(4)]
        + ["val-manifest.json"]
    )
    assert [s["num_records"] for s in manifest["shards"]] == [2, 3, 3, 3]
    for s, shard in enumerate(manifest["shards"]):
        first, end = s * 11 // 4, (s + 1) * 11 // 4
        assert shard["file"] == schema.shard_filename("val", s, 4)
        # Each shard's size, so that a reader can tell a truncated copy before training.
        assert shard["bytes"] == os.path.getsize(tmp_path / "out" / shard["file"]) > 0
        assert (shard["first_line"], shard["end_line"]) == (first + 1, end)
        assert [_name(e) for e in _examples([tmp_path / "out" / shard["file"]])] == [
            f"im_{i:04d}.jpg" for i in range(first, end)
        ]
    on_disk = json.loads((tmp_path / "out" / "val-manifest.json").read_text())
    assert on_disk == manifest
    assert (on_disk["label_format"], on_disk["num_classes"], on_disk["num_records"]) == (
        "sparse",
        NUM_CLASSES,
        11,
    )
    assert on_disk["complete"] and on_disk["skipped"] == [] and on_disk["num_skipped"] == 0
    read = schema.read_manifest(tmp_path / "out", "val")
    assert read.counts == (2, 3, 3, 3) and read.num_records == 11
    # The same list always gives the same files.
    _write(image_list, tmp_path / "again", shards=4, prefix="val")
    for shard in manifest["shards"]:
        assert (tmp_path / "out" / shard["file"]).read_bytes() == (
            tmp_path / "again" / shard["file"]
        ).read_bytes()


def test_more_shards_than_lines(tmp_path):
    image_list = _make_corpus(tmp_path / "img", 3)
    manifest = _write(image_list, tmp_path / "out", shards=5)
    assert [s["num_records"] for s in manifest["shards"]] == [0, 1, 0, 1, 1]
    # Line numbers in the manifest name the lines the shard really holds.
    for shard in manifest["shards"]:
        names = [_name(e) for e in _examples([tmp_path / "out" / shard["file"]])]
        expected = [f"im_{line - 1:04d}.jpg" for line in range(shard["first_line"], shard["end_line"] + 1)]
        assert names == expected
    assert schema.read_manifest(tmp_path / "out").num_records == 3


@pytest.mark.parametrize("label_format", schema.LABEL_FORMATS)
def test_label_formats_round_trip_through_parse_records(tmp_path, label_format):
    image_list = _make_corpus(tmp_path / "img", 9, label_format=label_format)
    _write(image_list, tmp_path / "out", label_format=label_format, shards=2)
    manifest = schema.read_manifest(tmp_path / "out")
    assert (manifest.label_format, manifest.num_classes) == (label_format, NUM_CLASSES)
    serialized = [r.numpy() for r in tf.data.TFRecordDataset(list(manifest.files))]
    parsed = schema.parse_records(tf.constant(serialized), label_format=label_format, num_classes=NUM_CLASSES)
    assert [n.decode() for n in parsed["name"].numpy()] == [f"im_{i:04d}.jpg" for i in range(9)]
    for i in range(9):
        if label_format == "int64":
            assert int(parsed["label"][i]) == i % NUM_CLASSES
        else:
            expected = np.zeros(NUM_CLASSES, np.float32)
            for k, v in _tags(i).items():
                expected[k] = v
            np.testing.assert_array_equal(parsed["label"][i].numpy(), expected)
        assert parsed["image"][i].numpy() == (tmp_path / "img" / f"im_{i:04d}.jpg").read_bytes()
        assert (int(parsed["height"][i]), int(parsed["width"][i])) == (SIZE[1], SIZE[0])
    keys = set(tf.train.Example.FromString(serialized[1]).features.feature)
    label_keys = {"label/indices", "label/confidences"} if label_format == "sparse" else {"label"}
    assert keys == {"image", "name", "height", "width"} | label_keys
    if label_format == "dense":
        raw = tf.train.Example.FromString(serialized[1]).features.feature["label"].bytes_list.value[0]
        assert len(raw) == 4 * NUM_CLASSES


def test_num_classes_bounds_the_labels(tmp_path):
    image_list = _make_corpus(tmp_path / "img", 4)  # Tags up to index 10.
    manifest = _write(image_list, tmp_path / "out", num_classes=5, shards=1)
    assert manifest["num_records"] + manifest["num_skipped"] == 4
    assert all(">= num_classes 5" in s["reason"] for s in manifest["skipped"]) and manifest["num_skipped"] > 0


def test_manifest_keeps_a_bounded_sample_of_skipped_images_and_sidecars_keep_all(tmp_path, monkeypatch):
    """Millions of failed downloads must not grow the writer's memory or the manifest: the manifest counts
    them and lists the first MANIFEST_SKIPPED_EXAMPLES, the shards' sidecars list every one."""
    monkeypatch.setattr(manifest_files, "MANIFEST_SKIPPED_EXAMPLES", 3)
    image_list = _make_corpus(tmp_path / "img", 6)
    with open(image_list, "a") as f:  # 7 missing images, spread over the shards
        f.writelines(f"missing_{i}.jpg\t1:1\n" for i in range(7))
    manifest = _write(image_list, tmp_path / "out", shards=4)
    assert (manifest["num_records"], manifest["num_skipped"]) == (6, 7)
    assert [s["path"] for s in manifest["skipped"]] == ["missing_0.jpg", "missing_1.jpg", "missing_2.jpg"]
    assert manifest["skipped_complete"] is False
    everything = []
    for sidecar in sorted((tmp_path / "out").glob("train-*.done.json")):
        everything += json.loads(sidecar.read_text())["skipped"]
    assert sorted(s["path"] for s in everything) == [f"missing_{i}.jpg" for i in range(7)]
    # A re-run (all shards finished) and the same with fewer than the cap agree.
    assert _write(image_list, tmp_path / "out", shards=4) == manifest
    monkeypatch.setattr(manifest_files, "MANIFEST_SKIPPED_EXAMPLES", 1000)
    full = _write(image_list, tmp_path / "out", shards=4)
    assert full["skipped_complete"] is True and len(full["skipped"]) == 7


def test_workers_1_and_2_write_identical_shards(tmp_path):
    image_list = _make_corpus(tmp_path / "img", 12)
    one = _write(image_list, tmp_path / "one", shards=3, workers=1)
    two = _write(image_list, tmp_path / "two", shards=3, workers=2)
    assert one["shards"] == two["shards"]
    for shard in one["shards"]:
        assert (tmp_path / "one" / shard["file"]).read_bytes() == (
            tmp_path / "two" / shard["file"]
        ).read_bytes()
    assert _temp_files(tmp_path / "two") == []


def test_each_shard_is_written_to_a_temp_name_then_renamed(tmp_path, monkeypatch):
    image_list = _make_corpus(tmp_path / "img", 6)
    renames = []
    real_replace = os.replace

    def recording_replace(src, dst):
        renames.append((os.fspath(src), os.fspath(dst), os.path.exists(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", recording_replace)
    _write(image_list, tmp_path / "out", shards=3)
    out = str(tmp_path / "out")
    shard_renames = [(src, dst, existed) for src, dst, existed in renames if dst.endswith(".tfrecord")]
    assert [dst for _, dst, _ in shard_renames] == [
        os.path.join(out, schema.shard_filename("train", s, 3)) for s in range(3)
    ]
    for src, dst, existed in shard_renames:
        folder, name = os.path.split(dst)  # fileio.atomic_write's hidden temp name in the same folder
        assert os.path.dirname(src) == folder and not existed
        assert os.path.basename(src).startswith(f".{name}.") and src.endswith(".tmp")
    # Sidecars and the manifest are renamed into place too.
    assert {os.path.basename(dst) for _, dst, _ in renames} >= {
        "train-00000-of-00003.done.json",
        "train-manifest.json",
    }
    assert _temp_files(out) == []


def _leave_temp_file(repo_root, final_path) -> None:
    """What `kill -9` inside `fileio.atomic_write(final_path)` leaves: its temp file, really written by it."""
    code = (
        "import os, sys\n"
        "from data import fileio\n"
        "with fileio.atomic_write(sys.argv[1], 'wb') as f:\n"
        "    f.write(b'partial'); f.flush(); os._exit(9)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code, str(final_path)], env=_cli_env(repo_root), timeout=60
    )
    assert result.returncode == 9


def test_rerun_reuses_finished_shards_and_removes_leftovers(tmp_path, repo_root):
    image_list = _make_corpus(tmp_path / "img", 9)
    out = tmp_path / "out"
    first = _write(image_list, out, shards=3)
    before = _record_multiset(out)
    inodes = {s["file"]: os.stat(out / s["file"]).st_ino for s in first["shards"]}
    # What a killed run leaves: temp files, a shard without sidecar and a shard that does not match its sidecar.
    for final in ("train-00001-of-00003.tfrecord", "train-00001-of-00003.done.json", "train-manifest.json"):
        _leave_temp_file(repo_root, out / final)
    assert len(_temp_files(out)) == 3
    os.remove(out / "train-00000-of-00003.done.json")
    with open(out / "train-00002-of-00003.tfrecord", "ab") as f:
        f.write(b"torn")
    second = _write(image_list, out, shards=3)
    assert second == first
    assert _temp_files(out) == []
    assert os.stat(out / "train-00001-of-00003.tfrecord").st_ino == inodes["train-00001-of-00003.tfrecord"]
    assert os.stat(out / "train-00000-of-00003.tfrecord").st_ino != inodes["train-00000-of-00003.tfrecord"]
    assert _record_multiset(out) == before
    # A re-run with other settings must not mix its shards with these.
    with pytest.raises(ValueError, match="other settings"):
        _write(image_list, out, shards=3, label_format="dense")


def test_bad_arguments(tmp_path):
    image_list = _make_corpus(tmp_path / "img", 2)
    for kwargs in (
        {"label_format": "png"},
        {"on_error": "ignore"},
        {"shards": 0},
        {"workers": 0},
        {"task_index": 2, "num_tasks": 2},
        {"verify": "none"},
        {"jpeg_quality": 0},
    ):
        with pytest.raises(ValueError):
            _write(image_list, tmp_path / "out", **kwargs)


# ---------------------------------------------------------------------------------------------------------
# Bad inputs.
# ---------------------------------------------------------------------------------------------------------


def _bad_corpus(root: pathlib.Path) -> tuple[pathlib.Path, dict]:
    """A folder of good and bad files and a list with bad lines; returns the list and the expected reasons."""
    root.mkdir()
    # JPEGs that TensorFlow decodes as they are, greyscale and Adobe CMYK included, are kept (the release
    # kept every JPEG); a CMYK JPEG without Adobe marker decodes to black in TensorFlow and is converted.
    good = {
        "good_0.jpg": _image_bytes(0),
        "good_1.jpg": _image_bytes(1),
        "gray.jpg": _image_bytes(5, "JPEG", "L"),
        "cmyk.jpg": _image_bytes(4, "JPEG", "CMYK"),
    }
    converted = {
        "photo.png": _image_bytes(2, "PNG"),
        "alpha.png": _image_bytes(3, "PNG", "RGBA"),
        "cmyk_no_adobe.jpg": _without_adobe_marker(_image_bytes(12, "JPEG", "CMYK")),
        "anim.gif": _image_bytes(6, "GIF", "P"),
    }
    whole = _image_bytes(7, size=(48, 48))
    bad_files = {
        "truncated.jpg": whole[: len(whole) * 2 // 3],
        "text.jpg": b"<html>404 not found</html>\n",
        "empty.jpg": b"",
        "bomb.png": _bomb_png(30000, 30000),
    }
    for name, data in {**good, **converted, **bad_files}.items():
        (root / name).write_bytes(data)
    (root / "folder.jpg").mkdir()
    (root.parent / "outside.jpg").write_bytes(_image_bytes(13))  # Readable, but not through the list.
    reasons = {
        "truncated.jpg": "truncated",
        "text.jpg": "not an image",
        "empty.jpg": "empty file",
        "missing.jpg": "missing file",
        "folder.jpg": "is a directory",
        "bad_index.jpg": "bad line: class index 50 >= num_classes 50",
        "bad_conf.jpg": "bad line: confidence 1.5 of class 3 is outside [0, 1]",
        "bad_token.jpg": "bad line: class index 'x' is not an integer",
        "bomb.png": "too many pixels",
        "../outside.jpg": "outside image_root",
    }
    lines = [
        "good_0.jpg 1:1 2:0.9",
        "truncated.jpg 1",
        "photo.png 2",
        "bad_index.jpg 50:1",
        "",
        "text.jpg 3",
        "cmyk.jpg 4:0.8",
        "missing.jpg 5",
        "gray.jpg 6",
        "bad_conf.jpg 3:1.5",
        "anim.gif\t7",
        "empty.jpg 8",
        "folder.jpg 8",
        "bad_token.jpg x:1",
        "alpha.png 9",
        "good_1.jpg 10 11:0.8",
        "cmyk_no_adobe.jpg 4",
        "bomb.png 1",
        "../outside.jpg 1",
    ]
    image_list = root.parent / "bad_list.txt"
    image_list.write_text("\n".join(lines) + "\n")
    return image_list, {"good": good, "converted": converted, "reasons": reasons, "lines": lines}


def test_full_verify_rejects_exactly_what_a_full_decode_rejects():
    """`verify="full"` decodes kept JPEGs at 1/8 scale: truncations and corrupted bytes anywhere in the
    file are rejected exactly when Pillow's full-size decode fails on them."""

    def full_decode_fails(data: bytes) -> bool:
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.load()
        except Exception:  # noqa: BLE001  (any decode failure)
            return True
        return False

    def rejected(data: bytes) -> bool:
        try:
            images.prepare_image(data, verify="full")
        except images.BadImage:
            return True
        return False

    rng = np.random.default_rng(0)
    photo = _image_bytes(11, size=(120, 90))
    samples = [photo[: int(len(photo) * f)] for f in np.linspace(0.05, 0.999, 25)]
    for _ in range(200):  # 1 - 8 random bytes overwritten past the headers
        corrupt = np.frombuffer(photo, np.uint8).copy()
        at = rng.integers(len(photo) // 4, len(photo) - 2, rng.integers(1, 9))
        corrupt[at] = rng.integers(0, 256, at.size)
        samples.append(corrupt.tobytes())
    verdicts = [(full_decode_fails(d), rejected(d)) for d in samples]
    assert [full for full, _ in verdicts] == [ours for _, ours in verdicts]
    assert sum(full for full, _ in verdicts) >= 25  # every truncation, and some corruptions, fail


@pytest.mark.parametrize("verify", images.VERIFY_MODES)
def test_bad_input_corpus(tmp_path, verify):
    image_list, expected = _bad_corpus(tmp_path / "img")
    manifest = _write(image_list, tmp_path / "out", shards=3, verify=verify)
    examples = _examples(schema.read_manifest(tmp_path / "out").files)
    names = [_name(e) for e in examples]
    assert sorted(names) == sorted([*expected["good"], *expected["converted"]])  # Each exactly once.
    by_name = {_name(e): e for e in examples}
    for name, data in expected["good"].items():
        assert _image(by_name[name]) == data  # Kept byte for byte.
    for name, data in expected["converted"].items():
        stored = _image(by_name[name])
        assert stored != data
        with Image.open(io.BytesIO(stored)) as image:
            assert (image.format, image.mode, image.size) == ("JPEG", "RGB", SIZE)
        assert tf.io.decode_jpeg(stored).shape == (SIZE[1], SIZE[0], 3)
        feature = by_name[name].features.feature
        assert (feature["height"].int64_list.value[0], feature["width"].int64_list.value[0]) == (
            SIZE[1],
            SIZE[0],
        )
    assert manifest["converted"] == {"GIF": 1, "JPEG/CMYK": 1, "PNG": 2}
    assert manifest["num_records"] == 8 and manifest["num_skipped"] == len(expected["reasons"])
    skipped = {item["path"]: item for item in manifest["skipped"]}
    assert set(skipped) == set(expected["reasons"])
    for path, reason in expected["reasons"].items():
        assert reason in skipped[path]["reason"], (path, skipped[path])
        assert expected["lines"][skipped[path]["line"] - 1].split()[0] == path  # 1-based line numbers.
    assert (
        json.loads((tmp_path / "out" / "train-manifest.json").read_text())["skipped"] == manifest["skipped"]
    )
    assert schema.read_manifest(tmp_path / "out").num_skipped == len(expected["reasons"])


def test_on_error_fail_stops_at_the_first_bad_line_or_image(tmp_path):
    image_list, _ = _bad_corpus(tmp_path / "img")
    with pytest.raises(ValueError, match=re.escape(f"{image_list}:2: truncated.jpg: corrupt or truncated")):
        _write(image_list, tmp_path / "out", shards=1, on_error="fail")
    assert not (tmp_path / "out" / "train-manifest.json").exists()
    assert _temp_files(tmp_path / "out") == []
    good = tmp_path / "good_list.txt"
    good.write_text("good_0.jpg 1\nbad_index.jpg 50:1\n")
    with pytest.raises(ValueError, match=re.escape(f"{good}:2: bad_index.jpg: bad line: class index 50")):
        _write(good, tmp_path / "out2", shards=1, on_error="fail")


def test_on_error_fail_with_workers_stops_the_pool(tmp_path):
    image_list, expected = _bad_corpus(tmp_path / "img")
    # Each worker stops at its shard's first bad entry; which worker reports first is a race.
    first_bad = "|".join(re.escape(f": {name}: ") for name in expected["reasons"])
    with pytest.raises(ValueError, match=first_bad):
        _write(image_list, tmp_path / "out", shards=2, workers=2, on_error="fail")
    assert not (tmp_path / "out" / "train-manifest.json").exists()
    assert _temp_files(tmp_path / "out") == []


# ---------------------------------------------------------------------------------------------------------
# What is stored: original JPEG bytes, or pixels as the release's tools see them (issues #11 and #12).
# ---------------------------------------------------------------------------------------------------------

BLOCK = 16  # Flat 16x16 blocks: whole JPEG MCUs, so a high-quality JPEG keeps their values within 1-2.


def _blocks(values, dtype=np.uint8) -> np.ndarray:
    """A 16-pixel-high row of flat 16x16 blocks, one per value (a scalar or a per-channel tuple)."""
    return np.concatenate([np.full((BLOCK, BLOCK, *np.shape(v)), v, dtype) for v in values], axis=1)


def _rows(pixels: np.ndarray):
    """Big-endian PNG rows of an array of uint8 or uint16 samples."""
    big_endian = pixels.astype(pixels.dtype.newbyteorder(">"))
    return (row.tobytes() for row in big_endian.reshape(pixels.shape[0], -1))


def _encode(pixels: np.ndarray | Image.Image, fmt: str) -> bytes:
    """An encoded file of an image or of an array (uint16 2-D: I;16; 4 channels: RGBA)."""
    buffer = io.BytesIO()
    (pixels if isinstance(pixels, Image.Image) else Image.fromarray(pixels)).save(buffer, format=fmt)
    return buffer.getvalue()


def _stored_pixels(output_dir) -> dict[str, np.ndarray]:
    """name -> uint8[H, W, 3] of every record, parsed with data/schema and decoded as the input pipeline does."""
    files = schema.read_manifest(output_dir).files
    serialized = tf.constant([r.numpy() for r in tf.data.TFRecordDataset(list(files))])
    parsed = schema.parse_records(serialized, label_format="sparse", num_classes=NUM_CLASSES)
    return {
        name.decode(): tf.io.decode_jpeg(image, channels=3, dct_method="INTEGER_ACCURATE").numpy()
        for name, image in zip(parsed["name"].numpy(), parsed["image"], strict=True)
    }


def _write_files(tmp_path, files: dict[str, bytes], **kwargs) -> dict:
    root = tmp_path / "img"
    root.mkdir()
    for name, data in files.items():
        (root / name).write_bytes(data)
    image_list = tmp_path / "list.txt"
    image_list.write_text("".join(f"{name} 1\n" for name in files))
    return _write(image_list, tmp_path / "out", shards=1, **kwargs)


# name -> (file bytes, the RGB value of each 16x16 block that cv.imread(IMREAD_COLOR) gives).
_CONVERTED_CASES = {
    # 16-bit grey: the high byte (v >> 8), not clipped to white.
    "grey16.png": (
        _encode(_blocks([32768, 65535, 255, 4660], np.uint16), "PNG"),
        [(128,) * 3, (255,) * 3, (0,) * 3, (18,) * 3],
    ),
    "grey16.tif": (_encode(_blocks([32768, 65535], np.uint16), "TIFF"), [(128,) * 3, (255,) * 3]),
    "rgb16.png": (
        _png(
            2 * BLOCK,
            BLOCK,
            bit_depth=16,
            color_type=2,
            rows=_rows(_blocks([(65535, 32768, 4096), (1000, 2000, 60000)], np.uint16)),
        ),
        [(255, 128, 16), (3, 7, 234)],
    ),
    # Alpha dropped: a transparent pixel keeps its stored colour.
    "rgba.png": (
        _encode(_blocks([(10, 20, 30, 0), (200, 150, 100, 128), (90, 180, 45, 255)]), "PNG"),
        [(10, 20, 30), (200, 150, 100), (90, 180, 45)],
    ),
    # Palette expanded; entry 0 is fully transparent through tRNS and still red.
    "palette.png": (
        _png(
            2 * BLOCK,
            BLOCK,
            bit_depth=8,
            color_type=3,
            rows=_rows(_blocks([0, 1])),
            chunks=((b"PLTE", bytes([255, 0, 0, 0, 255, 0])), (b"tRNS", b"\x00")),
        ),
        [(255, 0, 0), (0, 255, 0)],
    ),
}


def _block_values(pixels: np.ndarray) -> list[tuple[int, ...]]:
    """The mean RGB of the central 8x8 pixels of each 16x16 block, rounded (chroma upsampling blends the
    colours of neighbouring blocks near their edges)."""
    centres = pixels.reshape(BLOCK, -1, BLOCK, 3)[4:12, :, 4:12]
    return [tuple(int(round(c)) for c in block) for block in centres.mean(axis=(0, 2))]


def test_converted_images_are_stored_with_the_pixels_the_release_tools_see(tmp_path):
    files = {name: data for name, (data, _) in _CONVERTED_CASES.items()}
    manifest = _write_files(tmp_path, files, jpeg_quality=100)
    assert manifest["num_records"] == len(files) and manifest["num_skipped"] == 0
    assert manifest["converted"] == {"PNG": 4, "TIFF": 1}
    stored = _stored_pixels(tmp_path / "out")
    for name, (_, expected) in _CONVERTED_CASES.items():
        pixels = stored[name]
        assert pixels.shape == (BLOCK, BLOCK * len(expected), 3), name
        np.testing.assert_allclose(_block_values(pixels), expected, atol=2, err_msg=name)


def test_the_expected_values_are_what_opencv_imread_gives(tmp_path):
    """The table above is OpenCV's `imread(IMREAD_COLOR)` of each file, as the release's demo tools read them."""
    cv2 = pytest.importorskip("cv2")
    for name, (data, expected) in _CONVERTED_CASES.items():
        (tmp_path / name).write_bytes(data)
        bgr = cv2.imread(str(tmp_path / name), cv2.IMREAD_COLOR)
        assert _block_values(bgr[..., ::-1]) == [tuple(v) for v in expected], name


def test_jpegs_that_tensorflow_decodes_are_stored_byte_for_byte(tmp_path):
    """Greyscale and Adobe CMYK JPEGs are kept as the release kept them, and decode to the same RGB through
    the record parser and TensorFlow as through Pillow; only a CMYK JPEG without the Adobe marker (black in
    TensorFlow) is converted."""
    y, x = np.mgrid[0:32, 0:48]
    smooth = np.stack([4 * x, 6 * y, 200 - 2 * x - y], axis=-1).astype(np.uint8)
    photo = Image.fromarray(smooth)
    kept = {
        "grey.jpg": _encode(photo.convert("L"), "JPEG"),
        "cmyk.jpg": _encode(photo.convert("CMYK"), "JPEG"),
        "rgb.jpg": _encode(smooth, "JPEG"),
    }
    no_adobe = _without_adobe_marker(kept["cmyk.jpg"])
    # The reason for converting it: TensorFlow decodes it to black.
    assert tf.io.decode_jpeg(no_adobe, channels=3).numpy().max() == 0
    manifest = _write_files(tmp_path, {**kept, "cmyk_no_adobe.jpg": no_adobe})
    assert manifest["converted"] == {"JPEG/CMYK": 1} and manifest["num_records"] == 4
    records = {_name(e): _image(e) for e in _examples(schema.read_manifest(tmp_path / "out").files)}
    for name, data in kept.items():
        assert records[name] == data, name
    stored = _stored_pixels(tmp_path / "out")
    for name, data in kept.items():
        with Image.open(io.BytesIO(data)) as image:
            np.testing.assert_array_equal(stored[name], np.asarray(image.convert("RGB")), err_msg=name)
    assert stored["grey.jpg"].shape == (32, 48, 3)
    with Image.open(io.BytesIO(no_adobe)) as image:
        expected = np.asarray(image.convert("RGB")).astype(int)
    assert np.abs(stored["cmyk_no_adobe.jpg"].astype(int) - expected).mean() < 3


# ---------------------------------------------------------------------------------------------------------
# --max_pixels and --image_root (issue #12).
# ---------------------------------------------------------------------------------------------------------


def test_images_over_max_pixels_are_skipped_without_being_decoded(tmp_path, monkeypatch):
    """Bombs whose headers claim 900 MP (over Pillow's own limit) and 120 MP (under it, over ours): each is
    skipped with the reason, and no image over the limit is ever decoded (so no gigabytes of pixels)."""
    decoded = []
    real_load = ImageFile.ImageFile.load

    def recording_load(image):
        decoded.append(image.size)
        return real_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", recording_load)
    files = {
        "bomb_900mp.png": _bomb_png(30000, 30000),
        "bomb_120mp.png": _bomb_png(12000, 10000),
        "photo.jpg": _image_bytes(0),
        "grey.png": _encode(np.full((16, 24), 7, np.uint8), "PNG"),
    }
    assert len(files["bomb_900mp.png"]) < 200_000
    manifest = _write_files(tmp_path, files)
    assert manifest["max_pixels"] == images.DEFAULT_MAX_PIXELS == 100_000_000
    reasons = {s["path"]: s["reason"] for s in manifest["skipped"]}
    assert set(reasons) == {"bomb_900mp.png", "bomb_120mp.png"}
    assert all(reason.startswith("too many pixels") for reason in reasons.values())
    assert reasons["bomb_120mp.png"] == "too many pixels: 12000x10000 = 120.0 MP > 100.0 MP (--max_pixels)"
    assert manifest["num_records"] == 2
    assert decoded and max(w * h for w, h in decoded) <= 24 * 16  # Only the two small images.


@pytest.mark.parametrize("max_pixels, written", [(383, 0), (384, 1), (0, 1)])
def test_max_pixels_is_the_limit(tmp_path, max_pixels, written):
    manifest = _write_files(tmp_path, {"photo.jpg": _image_bytes(0)}, max_pixels=max_pixels)  # 24 x 16
    assert manifest["num_records"] == written and manifest["max_pixels"] == max_pixels


def test_names_outside_image_root_are_skipped_unless_allowed(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    outside = tmp_path / "secret.jpg"
    outside.write_bytes(_image_bytes(1))
    (root / "inside.jpg").write_bytes(_image_bytes(2))
    names = {
        "inside.jpg": True,
        "sub/../inside.jpg": True,  # Stays inside once normalised.
        "../secret.jpg": False,
        "sub/../../secret.jpg": False,
        str(outside): False,  # Absolute.
        str(root / "inside.jpg"): False,  # Absolute, even into the root: names are relative to it.
    }
    image_list = tmp_path / "list.txt"
    image_list.write_text("".join(f"{name}\t1\n" for name in names))
    manifest = _write(image_list, tmp_path / "out", shards=1)
    assert manifest["allow_outside_root"] is False
    assert {s["path"]: s["reason"] for s in manifest["skipped"]} == {
        name: "outside image_root" for name, inside in names.items() if not inside
    }
    written = {_name(e): _image(e) for e in _examples(schema.read_manifest(tmp_path / "out").files)}
    assert set(written) == {name for name, inside in names.items() if inside}
    assert written["sub/../inside.jpg"] == (root / "inside.jpg").read_bytes()

    allowed = _write(image_list, tmp_path / "allowed", shards=1, allow_outside_root=True)
    assert allowed["num_records"] == len(names) and allowed["allow_outside_root"] is True
    written = {_name(e): _image(e) for e in _examples(schema.read_manifest(tmp_path / "allowed").files)}
    assert written["../secret.jpg"] == written[str(outside)] == outside.read_bytes()

    with pytest.raises(ValueError, match=re.escape(f"{image_list}:3: ../secret.jpg: outside image_root")):
        _write(image_list, tmp_path / "fail", shards=1, on_error="fail")


def test_symlinks_are_followed_only_to_files_inside_image_root(tmp_path):
    """An image folder is untrusted like a list: a link (the file's own or a folder's) that leads out of the
    root is skipped before its target is opened (/etc/passwd, /dev/zero, a folder elsewhere); links that
    stay inside are followed, and a root that is itself a link (to another disk) works as before."""
    real_root = tmp_path / "disk2" / "images"
    (real_root / "sub").mkdir(parents=True)
    (tmp_path / "img").symlink_to(real_root)  # The root the writer is given is a link.
    (real_root / "inside.jpg").write_bytes(_image_bytes(1))
    (real_root / "sub" / "deep.jpg").write_bytes(_image_bytes(2))
    (tmp_path / "secret.jpg").write_bytes(_image_bytes(3))
    (real_root / "link_in.jpg").symlink_to("sub/deep.jpg")
    (real_root / "dir_in").symlink_to(real_root / "sub")
    (real_root / "chain.jpg").symlink_to("link_out.jpg")  # inside, then out
    (real_root / "link_out.jpg").symlink_to(tmp_path / "secret.jpg")
    (real_root / "dir_out").symlink_to(tmp_path)
    (real_root / "passwd.jpg").symlink_to("/etc/passwd")
    (real_root / "zero.jpg").symlink_to("/dev/zero")
    inside = ["inside.jpg", "sub/deep.jpg", "link_in.jpg", "dir_in/deep.jpg"]
    outside = ["chain.jpg", "link_out.jpg", "dir_out/secret.jpg", "passwd.jpg", "zero.jpg"]
    image_list = tmp_path / "list.txt"
    image_list.write_text("".join(f"{name}\t1\n" for name in inside + outside))

    manifest = _write(image_list, tmp_path / "out", shards=1)
    assert {s["path"]: s["reason"] for s in manifest["skipped"]} == dict.fromkeys(
        outside, "outside image_root (through a symlink)"
    )
    written = {_name(e): _image(e) for e in _examples(schema.read_manifest(tmp_path / "out").files)}
    assert written == {
        "inside.jpg": _image_bytes(1),
        "sub/deep.jpg": _image_bytes(2),
        "link_in.jpg": _image_bytes(2),
        "dir_in/deep.jpg": _image_bytes(2),
    }

    allowed = _write(image_list, tmp_path / "allowed", shards=1, allow_outside_root=True)
    reasons = {s["path"]: s["reason"] for s in allowed["skipped"]}
    assert reasons == {
        "passwd.jpg": "not an image (unidentified format)",
        "zero.jpg": "not a regular file (a character device)",
    }
    assert allowed["num_records"] == len(inside) + 3  # chain, link_out and dir_out: the secret image


# ---------------------------------------------------------------------------------------------------------
# Several tasks and the merge step.
# ---------------------------------------------------------------------------------------------------------


def test_two_tasks_then_merge_equal_a_single_task_run(tmp_path):
    image_list = _make_corpus(tmp_path / "img", 10)
    single = _write(image_list, tmp_path / "single", shards=5)
    shared = tmp_path / "shared"
    parts = [_write(image_list, shared, shards=5, task_index=t, num_tasks=2) for t in (1, 0)]
    assert [[s["index"] for s in p["shards"]] for p in parts] == [[1, 3], [0, 2, 4]]
    assert not any(p["complete"] for p in parts)
    with pytest.raises(FileNotFoundError, match="--merge"):
        schema.read_manifest(shared)
    merged = manifest_files.merge_manifests(str(shared), "train")
    assert merged["complete"] and merged["num_records"] == 10
    assert merged["shards"] == single["shards"] and merged["skipped"] == single["skipped"]
    merged_read, single_read = schema.read_manifest(shared), schema.read_manifest(tmp_path / "single")
    assert [os.path.basename(f) for f in merged_read.files] == [
        os.path.basename(f) for f in single_read.files
    ]
    assert (merged_read.counts, merged_read.num_records, merged_read.label_format) == (
        single_read.counts,
        single_read.num_records,
        single_read.label_format,
    )
    assert _record_multiset(shared) == _record_multiset(tmp_path / "single")
    for shard in single["shards"]:
        assert (shared / shard["file"]).read_bytes() == (tmp_path / "single" / shard["file"]).read_bytes()


def test_merge_errors(tmp_path):
    image_list = _make_corpus(tmp_path / "img", 6)
    out = tmp_path / "out"
    with pytest.raises(FileNotFoundError, match="no task manifests"):
        manifest_files.merge_manifests(str(out))
    _write(image_list, out, shards=3, task_index=0, num_tasks=2)
    with pytest.raises(FileNotFoundError, match=r"missing for tasks \[1\] of 2"):
        manifest_files.merge_manifests(str(out))
    _write(image_list, out, shards=3, task_index=1, num_tasks=2)
    manifest_files.merge_manifests(str(out))
    # A shard that changed after its task finished.
    with open(out / "train-00001-of-00003.tfrecord", "ab") as f:
        f.write(b"x")
    with pytest.raises(ValueError, match="train-00001-of-00003.tfrecord: size or record count"):
        manifest_files.merge_manifests(str(out))
    os.remove(out / "train-00001-of-00003.tfrecord")
    with pytest.raises(FileNotFoundError, match="train-00001-of-00003.tfrecord"):
        manifest_files.merge_manifests(str(out))
    # Tasks that used different settings.
    other = tmp_path / "other"
    _write(image_list, other, shards=3, task_index=0, num_tasks=2)
    _write(image_list, other, shards=3, task_index=1, num_tasks=2, jpeg_quality=80)
    with pytest.raises(ValueError, match="other settings"):
        manifest_files.merge_manifests(str(other))


def test_merge_accepts_the_list_at_another_path_on_another_machine(tmp_path):
    image_list = _make_corpus(tmp_path / "img", 6)
    copy = tmp_path / "mounted_elsewhere.txt"
    copy.write_bytes(image_list.read_bytes())
    out = tmp_path / "out"
    _write(image_list, out, shards=2, task_index=0, num_tasks=2)
    _write(copy, out, shards=2, task_index=1, num_tasks=2)
    assert manifest_files.merge_manifests(str(out))["num_records"] == 6
    # But not a different list.
    changed = tmp_path / "changed.txt"
    changed.write_text(image_list.read_text().replace("im_0005.jpg", "im_0004.jpg"))
    out2 = tmp_path / "out2"
    _write(image_list, out2, shards=2, task_index=0, num_tasks=2)
    _write(changed, out2, shards=2, task_index=1, num_tasks=2)
    with pytest.raises(ValueError, match="other settings"):
        manifest_files.merge_manifests(str(out2))


# ---------------------------------------------------------------------------------------------------------
# TFDS.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("label_format", schema.LABEL_FORMATS)
def test_tfds_builder_from_directory_reads_the_records(tmp_path, label_format):
    tfds = pytest.importorskip("tensorflow_datasets")
    train_list = _make_corpus(tmp_path / "img", 7, label_format=label_format)
    out = tmp_path / "out"
    _write(train_list, out, label_format=label_format, shards=2)
    val_list = tmp_path / "val_list.txt"
    val_list.write_text("".join(train_list.read_text().splitlines(keepends=True)[:3]))
    _write(val_list, out, label_format=label_format, shards=1, prefix="val", tfds_metadata=True)

    builder = tfds.builder_from_directory(str(out))
    assert {name: split.num_examples for name, split in builder.info.splits.items()} == {"train": 7, "val": 3}
    records = list(builder.as_dataset(split="train", shuffle_files=False).as_numpy_iterator())
    assert len(records) == 7
    assert sorted(r["name"].decode() for r in records) == [f"im_{i:04d}.jpg" for i in range(7)]
    for record in records:
        i = int(record["name"].decode()[3:7])
        assert record["image"].shape == (SIZE[1], SIZE[0], 3)
        assert (record["height"], record["width"]) == (SIZE[1], SIZE[0])
        if label_format == "int64":
            assert record["label"] == i % NUM_CLASSES
        elif label_format == "dense":
            expected = np.zeros(NUM_CLASSES, np.float32)
            for k, v in _tags(i).items():
                expected[k] = v
            np.testing.assert_array_equal(record["label"], expected)
        else:
            tags = dict(
                zip(record["label"]["indices"].tolist(), record["label"]["confidences"].tolist(), strict=True)
            )
            assert tags == pytest.approx(_tags(i))
    assert len(list(builder.as_dataset(split="val"))) == 3


def test_tfds_metadata_after_merge(tmp_path):
    tfds = pytest.importorskip("tensorflow_datasets")
    image_list = _make_corpus(tmp_path / "img", 5)
    out = tmp_path / "out"
    for t in range(2):
        _write(image_list, out, shards=2, task_index=t, num_tasks=2, tfds_metadata=True)
    assert not (out / "dataset_info.json").exists()  # Only the merge knows the whole split.
    manifest_files.merge_manifests(str(out), tfds_metadata=True)
    assert len(list(tfds.builder_from_directory(str(out)).as_dataset(split="train"))) == 5


# ---------------------------------------------------------------------------------------------------------
# The CLI: --help, progress, kill -9 and resume.
# ---------------------------------------------------------------------------------------------------------


def _cli(repo_root, *args) -> list[str]:
    return [sys.executable, str(repo_root / "data" / "tfrecord.py"), *args]


def _cli_env(repo_root) -> dict:
    return {**os.environ, "PYTHONPATH": str(repo_root), "TF_CPP_MIN_LOG_LEVEL": "2"}


def test_cli_help_lists_the_flags(repo_root):
    result = subprocess.run(
        _cli(repo_root, "--help"),
        capture_output=True,
        text=True,
        env=_cli_env(repo_root),
        timeout=120,
        cwd=repo_root,
    )
    # absl prints the help and exits with status 1 (its convention for --help).
    assert result.returncode in (0, 1) and "data/tfrecord.py:" in result.stdout, result.stderr
    for flag in (
        "image_list",
        "image_root",
        "output_dir",
        "label_format",
        "num_classes",
        "shards",
        "workers",
        "on_error",
        "prefix",
        "task_index",
        "num_tasks",
        "merge",
        "tfds_metadata",
        "progress",
        "verify",
        "jpeg_quality",
        "max_pixels",
        "allow_outside_root",
    ):
        assert f"--{flag}" in result.stdout or f"--[no]{flag}" in result.stdout, flag
    assert "<dense|sparse|int64>" in result.stdout and "<skip|fail>" in result.stdout


def test_cli_merge(tmp_path, repo_root):
    image_list = _make_corpus(tmp_path / "img", 6, label_format="int64")
    out = tmp_path / "out"
    for t in range(2):
        _write(image_list, out, label_format="int64", shards=3, task_index=t, num_tasks=2)
    merge = subprocess.run(
        _cli(repo_root, f"--output_dir={out}", "--prefix=train", "--merge"),
        capture_output=True,
        text=True,
        env=_cli_env(repo_root),
        timeout=120,
        cwd=repo_root,
    )
    assert merge.returncode == 0, merge.stderr
    assert "merged 2 task manifests: 6 records in 3 shards" in merge.stderr
    manifest = schema.read_manifest(out)
    assert (manifest.label_format, manifest.num_records, manifest.counts) == ("int64", 6, (2, 2, 2))


def test_progress_bar_shows_rate_and_eta(tmp_path, capsys):
    image_list = _make_corpus(tmp_path / "img", 40)
    _write(image_list, tmp_path / "out", shards=2, progress=True)
    err = capsys.readouterr().err
    assert re.search(rf"writing: 100%.*40/40 {PROGRESS_RATE_ETA}", err), err


@pytest.mark.slow
@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
@pytest.mark.parametrize("workers, kill, label_format", [(1, "group", "dense"), (2, "main", "sparse")])
def test_kill_9_mid_run_then_rerun_gives_the_same_records(tmp_path, repo_root, workers, kill, label_format):
    """The run blocks reading an image of shard 2 of 4 (a deterministic "mid-run"), is killed, and re-run.

    ``kill="main"`` kills only the main process: its pool workers must notice and exit by themselves,
    rather than go on writing shards that the re-run writes too.
    """
    image_list = _make_corpus(tmp_path / "img", 24)
    gate = tmp_path / "gate"
    gate.touch()
    # Reading line 14 of 24 blocks: in shard 2 of 4 (lines 13-18). (A FIFO blocked the run before; the writer
    # now refuses FIFOs without opening them for reading.)
    blocking_env = {
        **_cli_env(repo_root),
        **scripts.blocking_read_env(tmp_path / "site", repo_root, "im_0013.jpg", gate),
    }
    out = tmp_path / "out"
    command = _cli(
        repo_root,
        f"--image_list={image_list}",
        f"--image_root={tmp_path / 'img'}",
        f"--output_dir={out}",
        f"--label_format={label_format}",
        f"--num_classes={NUM_CLASSES}",
        "--shards=4",
        f"--workers={workers}",
        "--on_error=skip",
    )
    finished = ["train-00000-of-00004", "train-00001-of-00004"] + (
        ["train-00003-of-00004"] if workers == 2 else []
    )
    with open(tmp_path / "killed.log", "wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=log, env=blocking_env, cwd=repo_root, start_new_session=True
        )
    try:
        scripts.wait_for(
            lambda: (
                all((out / f"{s}.done.json").exists() for s in finished)
                and glob.glob(str(out / ".train-00002-of-00004.tfrecord.*.tmp"))
            ),
            timeout=120,
            what="the writer to block in shard 2",
        )
        time.sleep(0.3)
        if kill == "group":
            os.killpg(process.pid, signal.SIGKILL)
        else:
            os.kill(process.pid, signal.SIGKILL)
        assert process.wait(timeout=30) == -signal.SIGKILL
        scripts.wait_for(
            lambda: not scripts.process_states(process.pid), timeout=30, what="the orphaned workers to exit"
        )
    finally:
        if scripts.process_states(process.pid):
            os.killpg(process.pid, signal.SIGKILL)
    assert not (out / "train-manifest.json").exists()
    assert glob.glob(str(out / ".train-00002-of-00004.tfrecord.*.tmp"))  # Killed mid-shard.
    inodes = {s: os.stat(out / f"{s}.tfrecord").st_ino for s in finished}

    gate.unlink()
    rerun = subprocess.run(
        command, capture_output=True, text=True, env=_cli_env(repo_root), cwd=repo_root, timeout=300
    )
    assert rerun.returncode == 0, rerun.stderr
    assert {s: os.stat(out / f"{s}.tfrecord").st_ino for s in finished} == inodes  # Not rewritten.
    assert f"{len(finished)} of this task's 4 shards already finished" in rerun.stderr
    # Progress: the bar (rate and ETA) and the per-shard log lines go to stderr.
    assert re.search(PROGRESS_RATE_ETA, rerun.stderr), rerun.stderr
    assert re.search(r"shard train-00002-of-00004\.tfrecord: 6 records, 0 skipped .* lines/s", rerun.stderr)
    assert _temp_files(out) == []

    _write(image_list, tmp_path / "uninterrupted", shards=4, label_format=label_format)
    records = _record_multiset(out)
    assert records == _record_multiset(tmp_path / "uninterrupted")
    assert sum(records.values()) == len(records) == 24  # None lost, none doubled.


def test_a_list_with_a_byte_order_mark_and_crlf_loses_no_line(tmp_path):
    """Editors on Windows write a UTF-8 BOM and CRLF line ends: line 1 is still an image, no name ends in
    a carriage return."""
    image_list = _make_corpus(tmp_path / "img", 6)
    lines = image_list.read_text().splitlines()
    image_list.write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    manifest = _write(image_list, tmp_path / "out", shards=2)
    assert (manifest["num_records"], manifest["num_skipped"]) == (6, 0)
    names = {
        tf.train.Example.FromString(r.numpy()).features.feature["name"].bytes_list.value[0]
        for r in tf.data.TFRecordDataset(schema.list_record_files(tmp_path / "out"))
    }
    assert names == {f"im_{i:04d}.jpg".encode() for i in range(6)}


def test_fifos_devices_and_oversized_files_are_skipped_without_blocking(tmp_path, monkeypatch):
    """A FIFO would block `open` forever and a link to /dev/zero would grow the writer without bound: only
    regular files are read, and none past the size cap."""
    image_list = _make_corpus(tmp_path / "img", 3)
    os.mkfifo(tmp_path / "img" / "fifo.jpg")
    os.symlink("/dev/zero", tmp_path / "img" / "zero.jpg")
    (tmp_path / "img" / "huge.jpg").write_bytes(_image_bytes(0) + b"\0" * 4096)
    monkeypatch.setattr(images, "DEFAULT_MAX_FILE_BYTES", 4096)
    with image_list.open("a") as f:
        f.write("fifo.jpg\t1:1\nzero.jpg\t1:1\nhuge.jpg\t1:1\n")

    def hung(signum, frame):
        raise TimeoutError("the writer blocked")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(60)
    try:
        manifest = _write(image_list, tmp_path / "out", shards=1)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert (manifest["num_records"], manifest["num_skipped"]) == (3, 3)
    reasons = {s["reason"] for s in manifest["skipped"]}
    assert reasons == {
        "not a regular file (a fifo)",
        "outside image_root (through a symlink)",  # not opened (a device is refused after its open)
        f"too large: {len(_image_bytes(0)) + 4096} bytes (over 4096)",
    }


def test_a_full_disk_ends_the_writer_in_one_line_keeping_the_finished_shards(tmp_path, monkeypatch):
    """ENOSPC when shard 1 of 2 is renamed into place: `tfrecord.py: error: ...` (no traceback), shard 0 and
    its sidecar kept, no temporary file left; the re-run keeps shard 0 and writes shard 1."""
    from data import tfrecord

    image_list = _make_corpus(tmp_path / "img", 4)
    out = tmp_path / "out"

    args = [
        f"--image_list={image_list}",
        f"--image_root={tmp_path / 'img'}",
        f"--output_dir={out}",
        f"--num_classes={NUM_CLASSES}",
        "--shards=2",
        "--workers=1",
        "--noprogress",
    ]
    scripts.full_disk_on_rename(monkeypatch, "train-00001-of-00002.tfrecord")
    with pytest.raises(SystemExit) as info:
        scripts.run_in_process(tfrecord, args)
    monkeypatch.undo()
    message = str(info.value.code)
    assert message.startswith("tfrecord.py: error: ") and "\n" not in message
    assert message.endswith(
        f"{os.strerror(errno.ENOSPC)}; the finished shards are kept; run the same command again to write the rest"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "train-00000-of-00002.done.json",
        "train-00000-of-00002.tfrecord",
    ]
    inode = os.stat(out / "train-00000-of-00002.tfrecord").st_ino
    scripts.run_in_process(tfrecord, args)
    assert os.stat(out / "train-00000-of-00002.tfrecord").st_ino == inode  # kept, not rewritten
    assert schema.read_manifest(out, "train").num_records == 4
