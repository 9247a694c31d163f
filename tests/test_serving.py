"""Part of issue #23: the SavedModel's serving signature survives what a server is sent.

The header of every image is read in the graph (tools/serving_input.py) and checked against the pixel limit
before a pixel is decoded: a decompression bomb is refused with bounded memory (measured in a fresh
process); a batch with bad images returns the good images' results, a `valid` flag and an `error` per image.
"""

import io
import json
import struct
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from models import pretrained
from tests.png_bomb import bomb_png, zeros_png
from tests.test_evaluate import tiny_model
from tools import export, serving_input

SIZE = 32
# An image the size of the test bomb decoded as RGB is 1.2 GB; refused from its header it costs nothing.
# Measured: +1145 MiB of peak RSS before the header check, +0 MiB after (tests' bound: 200 MiB).
BOMB_SIDE = 20_000
MAX_EXTRA_MIB = 200


def encode(pixels: np.ndarray, fmt: str, **options) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format=fmt, **options)
    return out.getvalue()


def gif_with_frames(*sizes: tuple[int, int]) -> bytes:
    """A GIF (2-colour table) whose frames have the descriptors' sizes (width, height), each with the LZW
    data of a single pixel: a few bytes per frame whatever size it claims."""
    header = b"GIF89a" + struct.pack("<HHBBB", 1, 1, 0x80, 0, 0) + b"\x00\x00\x00\xff\xff\xff"
    frames = b"".join(
        b"," + struct.pack("<HHHHB", 0, 0, width, height, 0) + b"\x02\x02\x44\x01\x00"
        for width, height in sizes
    )  # descriptor, LZW minimum code size 2, one sub-block (clear, pixel 0, end), terminator
    return header + frames + b";"


@pytest.fixture(scope="module")
def pictures():
    rng = np.random.default_rng(5)
    pixels = rng.integers(0, 256, (40, 60, 3), dtype=np.uint8)
    frames = [Image.fromarray(rng.integers(0, 256, (17, 20, 3), dtype=np.uint8)) for _ in range(4)]
    animated = io.BytesIO()
    frames[0].save(animated, format="GIF", save_all=True, append_images=frames[1:])
    jpeg = encode(pixels, "JPEG", quality=90)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated: an APP1 segment before the frame header
    return {
        "jpeg": jpeg,
        "progressive": encode(pixels, "JPEG", progressive=True),
        "exif": encode(pixels, "JPEG", exif=exif),
        "png": encode(pixels[:25, :31], "PNG"),
        "gif": animated.getvalue(),
        "bmp": encode(pixels[:7, :9], "BMP"),
        "truncated": jpeg[: len(jpeg) // 2],
    }


def header(data: bytes) -> dict:
    read = tf.function(serving_input.image_header, input_signature=[tf.TensorSpec([], tf.string)])
    return {key: int(value) for key, value in read(tf.constant(data)).items()}


def test_headers_read_in_the_graph(pictures):
    J, P, G, B = serving_input.JPEG, serving_input.PNG, serving_input.GIF, serving_input.BMP
    table = {  # format, readable, height, width, pixels the decoder allocates
        "jpeg": (J, 1, 40, 60, 2400),
        "progressive": (J, 1, 40, 60, 2400),
        "exif": (J, 1, 40, 60, 2400),  # the APP1 segment before the SOF is walked over
        "png": (P, 1, 25, 31, 775),
        "gif": (G, 1, 17, 20, 2 * 4 * 340),  # 4 full frames: a raster each, then a canvas each
        "bmp": (B, 1, 7, 9, 63),
        "truncated": (J, 1, 40, 60, 2400),  # the header is whole: the decode refuses it
    }
    for name, expected in table.items():
        found = header(pictures[name])
        assert (
            found["format"],
            found["readable"],
            found["height"],
            found["width"],
            found["pixels"],
        ) == expected
    assert tf.io.decode_gif(pictures["gif"]).shape == (4, 17, 20, 3)  # TF decodes all 4 frames
    tiny = gif_with_frames((1, 1), (1, 1), (1, 1))
    assert tf.io.decode_gif(tiny).shape == (3, 1, 1, 3)  # a valid GIF, as TF reads it
    assert header(tiny)["pixels"] == 3 + 3
    # TF's canvas is the largest frame width x the largest frame height, one per frame; plus the rasters.
    claims = header(gif_with_frames((4000, 10), (10, 3000)))
    assert (claims["height"], claims["width"]) == (3000, 4000)
    assert claims["pixels"] == 2 * 4000 * 3000 + 40_000 + 30_000
    assert header(bomb_png(BOMB_SIDE, 3))["pixels"] == 3 * BOMB_SIDE
    for junk in (b"", b"hello", b"\xff\xd8\xff" + b"\x00" * 10, b"\x89PNG\r\n\x1a\n", b"GIF89a", b"BM"):
        found = header(junk)
        assert not found["readable"] and found["pixels"] == 0, junk
    top_down = bytearray(pictures["bmp"])
    top_down[22:26] = struct.pack("<i", -7)
    assert header(bytes(top_down))["height"] == 7


def test_a_long_thin_image_counts_its_demo_resize():
    thin = header(encode(np.zeros((1, 4000, 3), np.uint8), "PNG"))
    assert serving_input.pixels_to_allocate(thin, transform="full", image_size=224) == 4000
    # demo: the short side becomes 256, the long side 4000 x 256: a million pixels from 4,000.
    assert serving_input.pixels_to_allocate(thin, transform="demo", image_size=224) == 256 * 4000 * 256


@pytest.fixture(scope="module")
def saved_model(tmp_path_factory):
    root = tmp_path_factory.mktemp("serving")
    model = tiny_model(7, seed=31)
    prefix = tf.train.Checkpoint(model=model).write(str(root / "ckpt" / "ckpt-1"))
    export.export(prefix, str(root / "out"), image_size=SIZE, max_pixels=1_000_000)
    return root / "out" / export.SAVED_MODEL_DIR, model


def test_a_batch_with_bad_images_serves_the_good_ones(saved_model, pictures):
    path, model = saved_model
    serve = tf.saved_model.load(str(path)).signatures["serving_default"]
    batch = [
        pictures["jpeg"],
        bomb_png(BOMB_SIDE, BOMB_SIDE),
        pictures["truncated"],
        b"not an image",
        pictures["gif"],
        gif_with_frames(*[(500, 500)] * 3),  # 3 frames claiming 250 K pixels each: 1.5 MP allocated
        encode(np.zeros((1, 4000, 3), np.uint8), "PNG"),  # 4,000 pixels, 37 x 148,000 after demo's resize
        pictures["exif"],
        b"",
    ]
    out = {key: value.numpy() for key, value in serve(image_bytes=tf.constant(batch)).items()}
    assert out["valid"].tolist() == [True, False, False, False, True, False, False, True, False]
    errors = [e.decode() for e in out["error"]]
    assert errors[0] == errors[4] == errors[7] == ""
    assert errors[1] == "needs 400000000 pixels (20000 x 20000 image), over the limit 1000000"
    assert errors[2] == "cannot be decoded (corrupt or truncated)"
    assert errors[3] == errors[8] == "not a JPEG, PNG, GIF or BMP image"
    assert errors[5] == "needs 1500000 pixels (500 x 500 image), over the limit 1000000"
    assert errors[6] == "needs 5476000 pixels (4000 x 1 image), over the limit 1000000"  # 37 x 148,000
    good = [0, 4, 7]
    alone = serve(image_bytes=tf.constant([batch[i] for i in good]))
    for key in ("probabilities", "features"):
        np.testing.assert_allclose(out[key][good], alone[key].numpy(), atol=1e-6)
        assert not out[key][[1, 2, 3, 5, 6, 8]].any()  # zeros where there is no image
    expected = model(pretrained.preprocess([batch[i] for i in good], image_size=SIZE))
    np.testing.assert_allclose(out["probabilities"][good], tf.sigmoid(expected), atol=1e-5)
    empty = serve(image_bytes=tf.constant([], tf.string))
    assert empty["probabilities"].shape == (0, 7) and empty["valid"].shape == (0,)


MEASURE = textwrap.dedent(
    """
    import json, resource, sys, time
    import tensorflow as tf
    saved_model, good_path, bomb_path = sys.argv[1:]
    good, bomb = open(good_path, "rb").read(), open(bomb_path, "rb").read()
    serve = tf.saved_model.load(saved_model).signatures["serving_default"]
    serve(image_bytes=tf.constant([good, b"warm-up"]))  # the first call builds the graph's kernels
    peak = lambda: resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # MiB (Linux: KiB)
    before, start = peak(), time.perf_counter()
    out = serve(image_bytes=tf.constant([bomb, good]))
    print(json.dumps({"extra_mib": peak() - before, "seconds": time.perf_counter() - start,
                      "valid": out["valid"].numpy().tolist(), "error": out["error"].numpy()[0].decode()}))
    """
)


def test_a_decompression_bomb_is_refused_with_bounded_memory(saved_model, pictures, tmp_path):
    """A real PNG of 20000 x 20000 zeros (389 KB; 1.2 GB as decoded RGB), served in a fresh process whose
    peak RSS is compared before and after the call (the default limit, 100 MP, is exported here too)."""
    _, model = saved_model
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt" / "ckpt-1"))
    export.export(prefix, str(tmp_path / "out"), image_size=SIZE)
    (tmp_path / "good.jpg").write_bytes(pictures["jpeg"])
    (tmp_path / "bomb.png").write_bytes(zeros_png(BOMB_SIDE, BOMB_SIDE))
    proc = subprocess.run(
        [sys.executable, "-c", MEASURE, str(tmp_path / "out" / export.SAVED_MODEL_DIR)]
        + [str(tmp_path / "good.jpg"), str(tmp_path / "bomb.png")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    measured = json.loads(proc.stdout.strip().splitlines()[-1])
    assert measured["valid"] == [False, True]
    assert measured["error"] == "needs 400000000 pixels (20000 x 20000 image), over the limit 100000000"
    assert measured["extra_mib"] < MAX_EXTRA_MIB, measured
