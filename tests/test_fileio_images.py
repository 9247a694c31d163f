"""The project's one atomic write (data/fileio.py) and one image check (data/pixels/images.py)."""

import io
import os

import numpy as np
import pytest
from PIL import Image

from data import fileio
from data.pixels import images
from tests.png_bomb import bomb_png


def test_atomic_write_replaces_and_leaves_no_temp(tmp_path):
    path = tmp_path / "sub" / "a.json"
    fileio.write_json(path, {"x": 1})
    fileio.write_json(path, {"x": 2})
    assert fileio.read_json(path) == {"x": 2}
    assert os.listdir(path.parent) == ["a.json"]


def test_atomic_write_keeps_the_old_file_on_error(tmp_path):
    path = tmp_path / "a.txt"
    fileio.write_text(path, "old")
    with pytest.raises(OSError, match="disk full"), fileio.atomic_write(path) as f:
        f.write("half")
        raise OSError(28, "disk full")
    assert path.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_read_json_of_missing_or_foreign_file(tmp_path):
    assert fileio.read_json(tmp_path / "none.json") is None
    (tmp_path / "bad.json").write_bytes(b"\xff\x00not json")
    assert fileio.read_json(tmp_path / "bad.json") is None


def _png_bytes(array: np.ndarray, mode: str | None = None) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array, mode=mode).save(out, format="PNG")
    return out.getvalue()


def test_open_image_refuses_too_many_pixels_from_the_header():
    with pytest.raises(images.BadImage) as e:
        images.open_image(bomb_png(30000, 30000), max_pixels=100_000_000)
    assert e.value.reason.startswith("too many pixels: 900.0 MP > 100.0 MP")
    with pytest.raises(images.BadImage) as e:
        images.open_image(bomb_png(12000, 10000), max_pixels=100_000_000)
    assert e.value.reason.startswith("too many pixels: 12000x10000 = 120.0 MP > 100.0 MP")
    assert images.open_image(bomb_png(100, 100), max_pixels=100_000_000).size == (100, 100)


@pytest.mark.parametrize(
    ("data", "reason"),
    [(b"", "empty file"), (b"hello, not an image", "not an image (unidentified format)")],
)
def test_open_image_reasons(data, reason):
    with pytest.raises(images.BadImage) as e:
        images.open_image(data)
    assert e.value.reason == reason


def test_truncated_jpeg_fails_the_decode_check():
    pixels = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="JPEG", quality=90)
    data = out.getvalue()
    images.verify_decodes(images.open_image(data))
    with pytest.raises(images.BadImage) as e:
        images.verify_decodes(images.open_image(data[: len(data) // 2]))
    assert e.value.reason.startswith("corrupt or truncated")
    assert "object at 0x" not in e.value.reason


def test_sixteen_bit_grey_is_scaled_not_clipped():
    values = np.array([[0, 255, 256, 32768, 65535]], dtype=np.uint16)
    rgb = images.decode_rgb8(_png_bytes(values))
    np.testing.assert_array_equal(rgb[..., 0], [[0, 0, 1, 128, 255]])
    np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])


def test_alpha_is_dropped_and_palette_expanded():
    rgba = np.array([[[10, 20, 30, 0], [200, 100, 50, 128]]], dtype=np.uint8)
    np.testing.assert_array_equal(images.decode_rgb8(_png_bytes(rgba)), rgba[..., :3])
    palette = Image.new("P", (2, 1))
    palette.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    palette.putdata([0, 1])
    out = io.BytesIO()
    palette.save(out, format="PNG", transparency=0)
    np.testing.assert_array_equal(images.decode_rgb8(out.getvalue()), [[[255, 0, 0], [0, 0, 255]]])


def test_read_file_reasons(tmp_path):
    with pytest.raises(images.BadImage, match="missing file"):
        images.read_file(str(tmp_path / "none.jpg"))
    with pytest.raises(images.BadImage, match="is a directory"):
        images.read_file(str(tmp_path))
