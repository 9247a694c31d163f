"""Tests of the writer's --max_side (issue 25, item 3): only images whose longer side exceeds it are re-encoded,
at its size with the aspect ratio kept; the default keeps the records byte for byte; a run with another
--max_side never reuses the shards of this one."""

import io
import json
import os

import numpy as np
import pytest
from absl import flags
from PIL import Image

from data import tfrecord
from data.pixels import images
from data.records import schema
from data.shards import dataset_writer

NUM_CLASSES = 10


def _jpeg(width: int, height: int, *, seed: int = 0, fmt: str = "JPEG") -> bytes:
    """A smooth colour gradient with a little noise (so that a resize has something to average)."""
    y, x = np.mgrid[0:height, 0:width]
    pixels = np.stack([x * 255 // max(width - 1, 1), y * 255 // max(height - 1, 1), (x + y) % 256], axis=-1)
    noise = np.random.default_rng(seed).integers(-8, 9, pixels.shape)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels + noise, 0, 255).astype(np.uint8)).save(out, format=fmt)
    return out.getvalue()


# name -> (width, height): two over the limit of 32 used below (landscape, portrait), one at it, one under it.
SIZES = {"wide.jpg": (48, 30), "tall.jpg": (20, 40), "at_limit.jpg": (32, 24), "small.jpg": (16, 12)}


@pytest.fixture
def corpus(tmp_path):
    root = tmp_path / "img"
    root.mkdir()
    files = {name: _jpeg(*size, seed=i) for i, (name, size) in enumerate(SIZES.items())}
    for name, data in files.items():
        (root / name).write_bytes(data)
    image_list = tmp_path / "list.txt"
    image_list.write_text("".join(f"{name} {i % NUM_CLASSES}:1\n" for i, name in enumerate(files)))
    return image_list, root, files


def _write(corpus, output_dir, **kwargs) -> dict:
    image_list, root, _ = corpus
    return dataset_writer.write_dataset(
        image_list=str(image_list),
        image_root=str(root),
        output_dir=str(output_dir),
        label_format="sparse",
        num_classes=NUM_CLASSES,
        shards=2,
        workers=1,
        progress=False,
        **kwargs,
    )


def _records(output_dir) -> dict[str, tuple[bytes, int, int]]:
    """name -> (stored image bytes, height field, width field) of every record."""
    import tensorflow as tf

    records = {}
    for path in sorted(output_dir.glob("*.tfrecord")):
        for raw in tf.data.TFRecordDataset(str(path)):
            feature = tf.train.Example.FromString(raw.numpy()).features.feature
            name = feature[schema.NAME_KEY].bytes_list.value[0].decode()
            records[name] = (
                feature[schema.IMAGE_KEY].bytes_list.value[0],
                feature[schema.HEIGHT_KEY].int64_list.value[0],
                feature[schema.WIDTH_KEY].int64_list.value[0],
            )
    return records


def _size(data: bytes) -> tuple[int, int]:
    with Image.open(io.BytesIO(data)) as image:
        return image.size


@pytest.mark.parametrize(
    "size, max_side, expected",
    [
        ((48, 30), 32, (32, 20)),  # landscape: the longer side to 32, 30 * 32 / 48 = 20
        ((20, 40), 32, (16, 32)),  # portrait
        ((300, 7), 100, (100, 2)),  # 2.33 rounds to 2
        ((1000, 1), 10, (10, 1)),  # never below one pixel
    ],
)
def test_prepare_image_scales_the_longer_side_to_max_side_keeping_the_aspect_ratio(size, max_side, expected):
    prepared = images.prepare_image(_jpeg(*size), max_side=max_side)
    assert (prepared.width, prepared.height) == expected == _size(prepared.jpeg)
    assert prepared.converted_from == "resized JPEG"


def test_prepare_image_resize_keeps_the_stored_orientation():
    """No EXIF rotation: the resized pixels are in the order TensorFlow decodes the original file in (the
    writer keeps an original's bytes, EXIF and all, and TensorFlow ignores EXIF)."""
    exif = Image.Exif()
    exif[0x0112] = 6  # Orientation: rotate 90 degrees clockwise to display.
    out = io.BytesIO()
    with Image.open(io.BytesIO(_jpeg(48, 30))) as image:
        image.save(out, format="JPEG", exif=exif)
    prepared = images.prepare_image(out.getvalue(), max_side=32)
    assert (prepared.width, prepared.height) == (32, 20) == _size(prepared.jpeg)


def test_prepare_image_keeps_images_within_max_side_as_they_are():
    for size in ((32, 24), (24, 32), (16, 12)):
        data = _jpeg(*size)
        prepared = images.prepare_image(data, max_side=32)
        assert prepared.jpeg is data and prepared.converted_from is None
        assert (prepared.width, prepared.height) == size


def test_prepare_image_resizes_other_formats_and_keeps_the_pixels_close():
    """A PNG over the limit becomes an RGB JPEG of the new size ("resized PNG"); its pixels are the
    image's, scaled down (compared with a plain Lanczos resize of the decoded original)."""
    data = _jpeg(64, 40, fmt="PNG")
    prepared = images.prepare_image(data, max_side=32, jpeg_quality=95)
    assert prepared.converted_from == "resized PNG" and (prepared.width, prepared.height) == (32, 20)
    with Image.open(io.BytesIO(data)) as original, Image.open(io.BytesIO(prepared.jpeg)) as stored:
        assert stored.format == "JPEG" and stored.mode == "RGB"
        expected = np.asarray(original.convert("RGB").resize((32, 20), Image.Resampling.LANCZOS), np.float32)
        assert np.abs(np.asarray(stored, np.float32) - expected).mean() < 4


def test_prepare_image_resize_still_refuses_a_truncated_jpeg():
    data = _jpeg(256, 192)
    with pytest.raises(images.BadImage, match="corrupt or truncated"):
        images.prepare_image(data[: len(data) * 3 // 4], max_side=32)


def test_the_default_keeps_every_record_byte_for_byte(tmp_path, corpus):
    """Off by default: the shard files equal those of a limit no image reaches, and each record holds the
    file's own bytes and size."""
    default = _write(corpus, tmp_path / "default")
    unreached = _write(corpus, tmp_path / "unreached", max_side=10_000)
    assert default["converted"] == unreached["converted"] == {}
    for shard in default["shards"]:
        assert (tmp_path / "default" / shard["file"]).read_bytes() == (
            tmp_path / "unreached" / shard["file"]
        ).read_bytes()
    files = corpus[2]
    records = _records(tmp_path / "default")
    assert {name: data for name, (data, _, _) in records.items()} == files
    assert {name: (w, h) for name, (_, h, w) in records.items()} == SIZES


def test_max_side_re_encodes_only_the_larger_images_and_counts_them(tmp_path, corpus):
    out = tmp_path / "out"
    written = _write(corpus, out, max_side=32)
    assert written["num_records"] == 4 and written["converted"] == {"resized JPEG": 2}
    records = _records(out)
    files = corpus[2]
    for name in ("at_limit.jpg", "small.jpg"):
        assert records[name] == (files[name], SIZES[name][1], SIZES[name][0])
    for name, (width, height) in {"wide.jpg": (32, 20), "tall.jpg": (16, 32)}.items():
        data, stored_height, stored_width = records[name]
        assert (stored_width, stored_height) == (width, height) == _size(data)
    sidecars = [json.loads(path.read_text()) for path in sorted(out.glob("*.done.json"))]
    assert all(sidecar["max_side"] == 32 for sidecar in sidecars)
    assert sum(sidecar["converted"].get("resized JPEG", 0) for sidecar in sidecars) == 2


def test_a_run_with_another_max_side_does_not_reuse_the_shards(tmp_path, corpus):
    out = tmp_path / "out"
    _write(corpus, out)
    with pytest.raises(ValueError, match="other settings"):
        _write(corpus, out, max_side=32)
    resized = tmp_path / "resized"
    _write(corpus, resized, max_side=32)
    with pytest.raises(ValueError, match="other settings"):
        _write(corpus, resized, max_side=40)
    with pytest.raises(ValueError, match="other settings"):
        _write(corpus, resized)


def test_shards_written_before_max_side_existed_are_reused_without_it(tmp_path, corpus):
    """A sidecar without the key (written before the flag existed, when nothing was resized) counts as off."""
    out = tmp_path / "out"
    _write(corpus, out)
    inodes = {}
    for path in out.glob("*.done.json"):
        sidecar = json.loads(path.read_text())
        del sidecar["max_side"]
        path.write_text(json.dumps(sidecar))
    for path in out.glob("*.tfrecord"):
        inodes[path.name] = os.stat(path).st_ino
    _write(corpus, out)
    assert {path.name: os.stat(path).st_ino for path in out.glob("*.tfrecord")} == inodes
    with pytest.raises(ValueError, match="other settings"):
        _write(corpus, out, max_side=32)


def test_the_command_line_flag(tmp_path, corpus):
    image_list, root, _ = corpus
    flag_values = flags.FlagValues()
    tfrecord.define_flags(flag_values)
    out = tmp_path / "out"
    argv = flag_values(
        [
            "tfrecord.py",
            f"--image_list={image_list}",
            f"--image_root={root}",
            f"--output_dir={out}",
            f"--num_classes={NUM_CLASSES}",
            "--shards=1",
            "--workers=1",
            "--noprogress",
            "--max_side=32",
        ]
    )
    tfrecord.main(argv, flag_values)
    manifest = json.loads((out / "train-manifest.json").read_text())
    assert manifest["converted"] == {"resized JPEG": 2}
    assert "evaluation" in flag_values["max_side"].help and flag_values["max_side"].default == 0
    with pytest.raises(flags.IllegalFlagValueError):
        flag_values(["tfrecord.py", "--max_side=-1"])
