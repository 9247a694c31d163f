"""Tests of data/pixels/preprocessing.py: shapes and ranges, determinism, the augmentation probabilities
(statistically), crop statistics, equivalence of the fused JPEG path with decode + crop, and file loading."""

import io
import math
import struct
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image, ImageOps, features

from data.pixels import images, preprocessing

SIZE = 32
PRETRAIN = {"area_cover": 0.7, "object_cover": 0.7}
FINETUNE = {"area_cover": 0.05, "object_cover": 0.0}
NUM_SEEDS = 3000


def _encode(array: np.ndarray, fmt: str, **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, format=fmt, **kwargs)
    return out.getvalue()


def _smooth_image(height: int, width: int) -> np.ndarray:
    """A smooth colour image (JPEG reproduces it closely) that is neither symmetric nor uniform."""
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    channels = [
        128 + 100 * np.sin(x / width * 3 + 0.3),
        128 + 100 * np.cos(y / height * 2.5),
        255 * (x + y) / (height + width),
    ]
    return np.clip(np.stack(channels, axis=-1), 0, 255).astype(np.uint8)


def _noise_image(height: int, width: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)


def _seed(i: int, stream: int = 12345) -> tf.Tensor:
    return tf.constant([i, stream], tf.int64)


def _train(image_bytes: bytes, seed: tf.Tensor, size: int = SIZE, **covers) -> np.ndarray:
    covers = covers or PRETRAIN
    return preprocessing.train_transform(tf.constant(image_bytes), seed, image_size=size, **covers).numpy()


def _decisions(num: int, stream: int = 12345) -> dict[str, np.ndarray]:
    """`_augment_decisions` for seeds (0, stream) ... (num - 1, stream), computed in graph mode."""
    ds = tf.data.Dataset.range(num).map(
        lambda i: preprocessing._augment_decisions(tf.stack([i, tf.constant(stream, tf.int64)]))
    )
    return {k: v.numpy() for k, v in ds.batch(num).get_single_element().items()}


def _release_rotate(image: tf.Tensor, transform: tf.Tensor) -> np.ndarray:
    """The op behind the release's `tf.contrib.image.rotate` (nearest neighbour, zero fill)."""
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0].numpy()


def _our_rotate(image: np.ndarray, transform: tf.Tensor) -> np.ndarray:
    """`preprocessing`'s rotation: the pixels at `_rotation_source`'s indices, the last index the fill."""
    height, width, _ = image.shape
    source = preprocessing._rotation_source_xla(transform, height, width).numpy()
    return np.concatenate([image.reshape(-1, 3), np.zeros([1, 3], image.dtype)])[source]


def _tf1_reference_eval(image_bytes: bytes, size: int) -> np.ndarray:
    """The release's eval path: full decode, float, tf.image.central_crop(0.8), TF1 bilinear resize."""
    image = tf.image.convert_image_dtype(tf.io.decode_image(image_bytes, channels=3), tf.float32)
    image = tf.image.central_crop(image, central_fraction=0.8)
    image = tf.compat.v1.image.resize_bilinear(image[tf.newaxis], [size, size], align_corners=False)[0]
    return ((image - 0.5) * 2.0).numpy()


# ------------------------------------------------------------------------------------- shapes and ranges


@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
@pytest.mark.parametrize("covers", [PRETRAIN, FINETUNE])
def test_train_transform_shape_dtype_range(fmt, covers):
    image_bytes = _encode(_noise_image(45, 60), fmt)
    for i in range(8):
        out = _train(image_bytes, _seed(i), **covers)
        assert out.shape == (SIZE, SIZE, 3) and out.dtype == np.float32
        assert out.min() >= -1.0 and out.max() <= 1.0
        assert out.std() > 0.05  # not a blank image


def test_static_output_shape_in_tf_data():
    image_bytes = _encode(_noise_image(20, 30), "JPEG")
    ds = tf.data.Dataset.from_tensors(tf.constant(image_bytes)).repeat(3).enumerate()
    train = ds.map(
        lambda i, b: preprocessing.train_transform(b, tf.stack([i, i]), image_size=SIZE, **PRETRAIN)
    )
    assert train.element_spec.shape == (SIZE, SIZE, 3)
    for name in ("reference", "demo"):
        fn = preprocessing.get_transform(name)
        mapped = ds.map(lambda i, b, fn=fn: fn(b, image_size=SIZE))
        assert mapped.element_spec.shape == (SIZE, SIZE, 3)
        for image in mapped:
            assert image.shape == (SIZE, SIZE, 3)


@pytest.mark.parametrize("mode", ["L", "RGBA"])
def test_grey_and_alpha_inputs_become_rgb(mode):
    array = _smooth_image(24, 36)
    image = Image.fromarray(array).convert(mode)
    out = io.BytesIO()
    image.save(out, format="PNG" if mode == "RGBA" else "JPEG")
    result = preprocessing.eval_transform(tf.constant(out.getvalue()), image_size=SIZE).numpy()
    assert result.shape == (SIZE, SIZE, 3)
    if mode == "L":
        np.testing.assert_allclose(result[..., 0], result[..., 1], atol=1e-6)


# ------------------------------------------------------------------------------------------ determinism


def test_train_transform_is_deterministic_per_seed():
    image_bytes = _encode(_noise_image(50, 40), "JPEG")
    a = _train(image_bytes, _seed(7))
    np.testing.assert_array_equal(a, _train(image_bytes, _seed(7)))
    np.testing.assert_array_equal(a, _train(image_bytes, tf.constant([7, 12345], tf.int32)))
    others = [_train(image_bytes, _seed(i)) for i in range(8, 12)] + [_train(image_bytes, _seed(7, stream=1))]
    for other in others:
        assert not np.array_equal(a, other)


def test_parallel_tf_data_map_reproduces_eager_results():
    """A parallel, graph-mode pipeline gives the same augmentation per element index as eager calls."""
    image_bytes = _encode(_noise_image(50, 40), "PNG")
    ds = tf.data.Dataset.from_tensors(tf.constant(image_bytes)).repeat(6).enumerate()
    ds = ds.map(
        lambda i, b: preprocessing.train_transform(b, tf.stack([i, 5]), image_size=SIZE, **PRETRAIN),
        num_parallel_calls=4,
        deterministic=True,
    )
    for i, image in enumerate(ds):
        np.testing.assert_array_equal(image.numpy(), _train(image_bytes, tf.constant([i, 5], tf.int64)))


# ---------------------------------------------------------------------------- augmentation probabilities


def _assert_rate(count: int, n: int, p: float, sigmas: float = 4.0) -> None:
    tolerance = sigmas * math.sqrt(n * p * (1 - p))
    assert abs(count - n * p) <= tolerance, f"{count}/{n} vs expected rate {p} (+-{tolerance:.1f})"


def test_augmentation_probabilities():
    d = _decisions(NUM_SEEDS)
    n = NUM_SEEDS
    _assert_rate(int(d["flip"].sum()), n, 1 / 2)
    # The release's thread id: uniform over {0, 1, 2}.
    assert set(np.unique(d["branch"])) <= {0, 1, 2}
    for branch in range(3):
        _assert_rate(int((d["branch"] == branch).sum()), n, 1 / 3)
    # Rotation with probability 1/3 (not the 1/4 of the release's docstring), always with colour order 0.
    _assert_rate(int(d["rotate"].sum()), n, 1 / 3)
    np.testing.assert_array_equal(d["rotate"], d["color_order"] == 0)
    # Colour distortion with probability 2/3; given distortion, each order with probability 1/2.
    distorted = d["color_order"] >= 0
    _assert_rate(int(distorted.sum()), n, 2 / 3)
    _assert_rate(int((d["color_order"][distorted] == 1).sum()), int(distorted.sum()), 1 / 2)
    # Flip is drawn independently of the branch.
    _assert_rate(int((d["flip"] & d["rotate"]).sum()), n, 1 / 6)


def test_rotation_angle_is_uniform_within_45_degrees():
    angles = _decisions(NUM_SEEDS)["angle"]
    limit = math.pi / 4
    assert angles.min() >= -limit and angles.max() <= limit
    std = 2 * limit / math.sqrt(12)
    assert abs(angles.mean()) <= 4 * std / math.sqrt(NUM_SEEDS)
    assert abs(angles.std() - std) <= 0.05 * std
    # Both tails are reached.
    assert angles.min() < -0.95 * limit and angles.max() > 0.95 * limit


def test_subseeds_differ_between_elements_and_streams():
    d = _decisions(50)
    crop_seeds = {tuple(s) for s in d["crop_seed"]}
    assert len(crop_seeds) == 50
    other_stream = _decisions(50, stream=999)
    assert not np.array_equal(d["crop_seed"], other_stream["crop_seed"])


def test_train_transform_follows_the_decisions():
    """On a uniform grey image the output alone tells what happened: colour ops on grey only shift the
    level (brightness), and only a rotation creates non-uniform pixels (its zero-filled corners)."""
    grey = np.full((30, 40, 3), 128, np.uint8)
    image_bytes = _encode(grey, "PNG")
    num = 150
    d = _decisions(num, stream=3)
    ds = tf.data.Dataset.from_tensors(tf.constant(image_bytes)).repeat(num).enumerate()
    ds = ds.map(
        lambda i, b: preprocessing.train_transform(b, tf.stack([i, 3]), image_size=SIZE, **PRETRAIN),
        num_parallel_calls=2,
    )
    level = (128 / 255 - 0.5) * 2
    outputs = np.stack(list(ds.as_numpy_iterator()))
    spread = outputs.max(axis=(1, 2, 3)) - outputs.min(axis=(1, 2, 3))
    shift = np.abs(outputs.mean(axis=(1, 2, 3)) - level)
    visible_rotation = d["rotate"] & (np.abs(d["angle"]) > 0.1)
    assert (spread[visible_rotation] > 0.1).all()
    assert (spread[~d["rotate"]] < 1e-4).all()
    np.testing.assert_array_less(shift[d["branch"] == 2], 1e-5)
    colour_only = d["branch"] == 1
    assert (shift[colour_only] > 1e-5).all()
    assert (shift[colour_only] <= 2 * 32 / 255 + 1e-5).all()


def test_flip_and_crop_without_colour_match_a_direct_computation():
    """Branch 2 (no rotation/colour): output = TF1 resize of the sampled window, mirrored iff `flip`."""
    array = _noise_image(40, 56, seed=3)
    image_bytes = _encode(array, "PNG")
    d = _decisions(60, stream=8)
    checked = {True: 0, False: 0}
    for i in np.flatnonzero(d["branch"] == 2)[:8]:
        begin, size, _ = tf.image.stateless_sample_distorted_bounding_box(
            array.shape,
            bounding_boxes=tf.zeros([1, 0, 4]),
            seed=d["crop_seed"][i],
            min_object_covered=0.7,
            aspect_ratio_range=(0.75, 1.33),
            area_range=(0.7, 1.0),
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        crop = tf.slice(tf.constant(array, tf.float32) / 255.0, begin, size)
        expected = tf.compat.v1.image.resize_bilinear(crop[tf.newaxis], [SIZE, SIZE])[0].numpy()
        if d["flip"][i]:
            expected = expected[:, ::-1]
        out = _train(image_bytes, tf.constant([i, 8], tf.int64))
        np.testing.assert_allclose(out, (expected - 0.5) * 2, atol=1e-5)
        checked[bool(d["flip"][i])] += 1
    assert checked[True] and checked[False]


def test_colour_branches_apply_the_release_orders_with_the_drawn_seeds():
    """Branches 0 and 1 equal the release's two colour orders built from TF's stateless colour ops."""
    array = _smooth_image(SIZE, SIZE)
    image_bytes = _encode(array, "PNG")
    area_one = {"area_cover": 1.0, "object_cover": 1.0}  # the crop is the whole image: no resampling
    d = _decisions(40, stream=4)

    def brightness(x, s):
        return tf.image.stateless_random_brightness(x, 32 / 255, s)

    def saturation(x, s):
        return tf.image.stateless_random_saturation(x, 0.5, 1.5, s)

    def hue(x, s):
        return tf.image.stateless_random_hue(x, 0.2, s)

    def contrast(x, s):
        return tf.image.stateless_random_contrast(x, 0.5, 1.5, s)

    for branch in (0, 1):
        i = int(np.flatnonzero(d["branch"] == branch)[0])
        seeds = d["color_seeds"][i]
        x = tf.constant(array, tf.float32) / 255
        if d["flip"][i]:
            x = x[:, ::-1]
        if branch == 0:
            x = _release_rotate(x, preprocessing._rotation_transform(SIZE, tf.constant(d["angle"][i])))
            x = contrast(hue(saturation(brightness(x, seeds[0]), seeds[1]), seeds[2]), seeds[3])
        else:
            x = hue(saturation(contrast(brightness(x, seeds[0]), seeds[3]), seeds[1]), seeds[2])
        expected = (tf.clip_by_value(x, 0.0, 1.0).numpy() - 0.5) * 2
        out = _train(image_bytes, tf.constant([i, 4], tf.int64), **area_one)
        np.testing.assert_allclose(out, expected, atol=1e-5)


def test_rotation_is_counter_clockwise_about_the_centre():
    image = _noise_image(9, 9).astype(np.float32) / 255

    def rotate(angle: float) -> np.ndarray:
        return _our_rotate(image, preprocessing._rotation_transform(9, tf.constant(angle)))

    np.testing.assert_allclose(rotate(math.pi / 2), np.rot90(image), atol=1e-6)
    rotated = rotate(math.pi / 4)
    assert (rotated[0, 0] == 0).all() and (rotated[-1, -1] == 0).all()  # zero fill
    np.testing.assert_array_equal(rotated[4, 4], image[4, 4])  # the centre stays


@pytest.mark.parametrize("size", [224, 223, 32, 9])
def test_rotation_picks_exactly_the_pixels_of_the_release_op(size):
    """Over many angles (and the special ones: 0, +-45, 90 degrees, where coordinates land on halves),
    every output pixel is the one ImageProjectiveTransformV3 picks, including the zero-filled ones."""
    image = np.random.default_rng(size).uniform(1.0, 255.0, (size, size, 3)).astype(np.float32)
    angles = np.random.default_rng(0).uniform(-math.pi / 4, math.pi / 4, 100).astype(np.float32)
    angles = np.concatenate([angles, np.float32([0.0, math.pi / 4, -math.pi / 4, math.pi / 8, math.pi / 2])])
    for angle in angles:
        transform = preprocessing._rotation_transform(size, tf.constant(angle))
        np.testing.assert_array_equal(_our_rotate(image, transform), _release_rotate(image, transform))


def test_rotation_transform_is_the_releases():
    """`angles_to_projective_transforms` of tf.contrib.image, with the image side as a float tensor."""
    for size in (9, 224, 299):
        side = tf.constant(float(size))
        for angle in np.float32([-0.7, -0.1, 0.0, 0.3, math.pi / 4]):
            angle = tf.constant(angle)
            cos, sin = tf.cos(angle), tf.sin(angle)
            x_offset = ((side - 1) - (cos * (side - 1) - sin * (side - 1))) / 2.0
            y_offset = ((side - 1) - (sin * (side - 1) + cos * (side - 1))) / 2.0
            expected = tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0])
            np.testing.assert_allclose(preprocessing._rotation_transform(size, angle), expected, atol=1e-5)


# ------------------------------------------------------------------------------------------------- crops


@pytest.mark.parametrize("covers", [PRETRAIN, FINETUNE])
def test_crop_area_and_aspect_statistics(covers):
    height, width = 375, 500
    d = _decisions(1000)
    crop = tf.function(
        lambda s: preprocessing._crop_window(tf.constant([height, width, 3]), s, **covers), jit_compile=False
    )
    windows = np.stack([crop(s).numpy() for s in d["crop_seed"]])
    top, left, h, w = windows.T
    assert (top >= 0).all() and (left >= 0).all()
    assert (top + h <= height).all() and (left + w <= width).all()
    area = h * w / (height * width)
    # Rounding to whole pixels moves a fraction by at most about one row/column.
    slack = 1 / min(height, width) * 2
    assert area.min() >= covers["area_cover"] - slack and area.max() <= 1.0
    aspect = w / h
    assert aspect.min() >= 0.75 - 0.01 and aspect.max() <= 1.33 + 0.01
    # The whole feasible range is used, not only the fallback whole image. A crop of area a*H*W fits in
    # the image only if its aspect is at least a*W/H (its height is at most H).
    assert area.min() < covers["area_cover"] + 0.05
    assert aspect.min() < max(0.75, covers["area_cover"] * width / height) + 0.05
    assert aspect.max() > 1.33 - 0.05
    assert len({tuple(x) for x in windows}) > 500


# --------------------------------------------------------------------------------- fused JPEG decoding


def _full_decode_window(image_bytes: bytes, window) -> np.ndarray:
    top, left, height, width = window
    return tf.io.decode_image(image_bytes, channels=3).numpy()[top : top + height, left : left + width]


def _fused_decode_window(image_bytes: bytes, window) -> np.ndarray:
    return preprocessing._decode_cropped(tf.constant(image_bytes), lambda shape: tf.constant(window)).numpy()


# Windows whose edges sit on 8/16/32-pixel (MCU) boundaries are where a plain decode_and_crop_jpeg differs.
WINDOWS = [
    (16, 32, 64, 64),
    (0, 0, 48, 80),
    (8, 24, 56, 40),
    (17, 33, 50, 61),
    (32, 16, 64, 96),
    (0, 0, 96, 128),
]


@pytest.mark.parametrize("subsampling", [0, 1, 2])  # 4:4:4, 4:2:2, 4:2:0
def test_fused_jpeg_crop_equals_full_decode_and_slice(subsampling):
    image_bytes = _encode(_noise_image(96, 128), "JPEG", quality=85, subsampling=subsampling)
    for window in WINDOWS:
        np.testing.assert_array_equal(
            _fused_decode_window(image_bytes, window), _full_decode_window(image_bytes, window)
        )


def test_fused_jpeg_crop_equals_full_decode_on_the_sample_images(reference_dir):
    for path in sorted((reference_dir / "images").glob("*.jpg")):
        image_bytes = path.read_bytes()
        for window in WINDOWS + [(96, 128, 512, 640), (273, 364, 400, 300)]:
            np.testing.assert_array_equal(
                _fused_decode_window(image_bytes, window), _full_decode_window(image_bytes, window)
            )


# -------------------------------------------------------------------------------- evaluation transforms


@pytest.mark.parametrize("shape", [(48, 64), (37, 53), (101, 29), (224, 224)])
@pytest.mark.parametrize("fmt", ["JPEG", "PNG"])
def test_eval_transform_matches_decode_central_crop_resize(shape, fmt):
    image_bytes = _encode(_noise_image(*shape), fmt, **({"quality": 90} if fmt == "JPEG" else {}))
    for size in (SIZE, 24):
        result = preprocessing.eval_transform(tf.constant(image_bytes), image_size=size).numpy()
        np.testing.assert_allclose(result, _tf1_reference_eval(image_bytes, size), atol=1e-6)


def test_eval_transform_central_fraction():
    image_bytes = _encode(_noise_image(40, 40), "JPEG")
    full = preprocessing.eval_transform(tf.constant(image_bytes), image_size=40, central_fraction=1.0).numpy()
    decoded = tf.image.convert_image_dtype(tf.io.decode_jpeg(image_bytes), tf.float32).numpy()
    np.testing.assert_allclose(full, (decoded - 0.5) * 2, atol=1e-6)
    with pytest.raises(ValueError, match="central_fraction"):
        preprocessing.eval_transform(tf.constant(image_bytes), image_size=SIZE, central_fraction=0.0)


def test_demo_transform_is_a_crop_when_the_short_side_is_already_256():
    array = _noise_image(256, 300)
    out = preprocessing.demo_transform(tf.constant(_encode(array, "PNG"))).numpy()
    expected = array[16:240, 38:262].astype(np.float32) / 255
    np.testing.assert_allclose(out, (expected - 0.5) * 2, atol=1e-6)


def test_demo_transform_resize_and_crop_geometry():
    """A horizontal ramp (value = column) stays a ramp under bilinear resizing, so the output columns pin
    down the new width int(250 / 200 * 256) = 320, the half-pixel sampling and the crop offset 48."""
    height, width = 200, 250
    ramp = np.broadcast_to(np.arange(width, dtype=np.uint8)[None, :, None], (height, width, 3)).copy()
    out = preprocessing.demo_transform(tf.constant(_encode(ramp, "PNG")), image_size=224, resize_side=256)
    values = (out.numpy() / 2 + 0.5) * 255
    source_x = (np.arange(224) + 48 + 0.5) * (width / 320) - 0.5
    expected = np.round(np.clip(source_x, 0, width - 1))
    np.testing.assert_allclose(values[100, :, 0], expected, atol=1.0 + 1e-3)
    np.testing.assert_allclose(values[:, 100, 1], np.full(224, values[0, 100, 1]), atol=1e-4)


def test_demo_transform_default_side_keeps_the_256_to_224_ratio():
    image_bytes = tf.constant(_encode(_noise_image(300, 400), "PNG"))
    assert preprocessing.demo_transform(image_bytes, image_size=299).shape == (299, 299, 3)
    with pytest.raises(ValueError, match="resize_side"):
        preprocessing.demo_transform(image_bytes, image_size=224, resize_side=200)


def test_get_transform():
    assert preprocessing.get_transform("reference") is preprocessing.eval_transform
    assert preprocessing.get_transform("demo") is preprocessing.demo_transform
    with pytest.raises(ValueError, match="reference"):
        preprocessing.get_transform("inception")


# ---------------------------------------------------------------------------------- JPEG and PNG agree


def test_jpeg_and_png_paths_agree():
    array = _smooth_image(60, 80)
    jpeg, png = _encode(array, "JPEG", quality=95), _encode(array, "PNG")
    for i in range(6):
        a, b = _train(jpeg, _seed(i)), _train(png, _seed(i))
        assert np.abs(a - b).mean() < 0.02 and np.abs(a - b).max() < 0.25
    for name in ("reference", "demo"):
        fn = preprocessing.get_transform(name)
        a, b = fn(tf.constant(jpeg), image_size=SIZE).numpy(), fn(tf.constant(png), image_size=SIZE).numpy()
        assert np.abs(a - b).mean() < 0.02


# ------------------------------------------------------------------------------------------ file loading


def test_load_image_file_passes_jpeg_and_png_through(tmp_path):
    for fmt, suffix in (("JPEG", "jpg"), ("PNG", "png")):
        path = tmp_path / f"image.{suffix}"
        data = _encode(_smooth_image(20, 30), fmt)
        path.write_bytes(data)
        assert preprocessing.load_image_file(path) == preprocessing.ImageFile(data, orientation=1)
        assert preprocessing.load_image_file(str(path)).data == data


def test_load_image_file_keeps_an_adobe_cmyk_jpeg_that_tensorflow_decodes(tmp_path):
    path = tmp_path / "cmyk.jpg"
    Image.fromarray(_smooth_image(20, 30)).convert("CMYK").save(path, format="JPEG", quality=100)
    with Image.open(path) as original:
        assert "adobe" in original.info
        expected = np.asarray(original.convert("RGB"))
    data = preprocessing.load_image_file(path).data
    assert data == path.read_bytes()
    np.testing.assert_array_equal(preprocessing.decode_like_opencv(tf.constant(data)).numpy(), expected)


@pytest.mark.parametrize("kind", ["webp", "tiff", "bmp_palette"])
def test_load_image_file_converts_other_formats(tmp_path, kind):
    array = _smooth_image(20, 30)
    image = Image.fromarray(array)
    path = tmp_path / f"image.{kind}"
    if kind == "webp":
        if not features.check("webp"):
            pytest.skip("Pillow built without WebP")
        image.save(path, format="WEBP", lossless=True)
    elif kind == "tiff":
        image.save(path, format="TIFF")
    else:
        image.convert("P").save(path, format="BMP")
    data = preprocessing.load_image_file(path).data
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    decoded = tf.io.decode_image(data, channels=3).numpy()
    with Image.open(path) as original:
        expected = np.asarray(original.convert("RGB"))
    np.testing.assert_array_equal(decoded, expected)
    assert preprocessing.eval_transform(tf.constant(data), image_size=SIZE).shape == (SIZE, SIZE, 3)


def test_load_image_file_takes_the_high_byte_of_16_bit_png_as_opencv(tmp_path):
    """cv.imread keeps the high byte of a 16-bit PNG (v >> 8); TF's own 8-bit decode would round v / 257."""
    values = np.array([[0, 255, 256, 0x12FF], [0x8000, 0xFF00, 0xFF80, 0xFFFF]], np.uint16)
    path = tmp_path / "grey16.png"
    Image.fromarray(values).save(path)
    decoded = tf.io.decode_image(preprocessing.load_image_file(path).data, channels=3).numpy()
    np.testing.assert_array_equal(decoded, np.repeat((values >> 8).astype(np.uint8)[..., None], 3, axis=-1))


def test_load_image_file_gives_short_reasons_for_unusable_files(tmp_path):
    """Every refusal is a BadImage (a ValueError) whose reason names the problem, without object reprs."""
    jpeg = _encode(_noise_image(64, 64), "JPEG")
    cases = {
        "missing.jpg": (None, "missing file"),
        "empty.jpg": (b"", "empty file"),
        "text.jpg": (b"not an image at all", "not an image"),
        "header_only.jpg": (jpeg[:300], "corrupt header"),
        "truncated.jpg": (jpeg[: len(jpeg) // 2], "corrupt or truncated"),
    }
    for name, (content, reason) in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(images.BadImage) as info:
            preprocessing.load_image_file(path)
        assert reason in info.value.reason and " at 0x" not in info.value.reason, info.value.reason


def _png_header_only(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height RGB pixels, followed by a 1-byte IDAT (no pixel data)."""

    def chunk(kind: bytes, payload: bytes) -> bytes:
        return (
            struct.pack(">I", len(payload)) + kind + payload + struct.pack(">I", zlib.crc32(kind + payload))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", b"x") + chunk(b"IEND", b"")


def test_load_image_file_refuses_too_many_pixels_from_the_header(tmp_path):
    """A 30000 x 30000 PNG is refused before decoding (its data is absent: a decode would say "truncated"),
    and --max_pixels is the limit for real images too."""
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(30000, 30000))
    with pytest.raises(images.BadImage, match="too many pixels"):
        preprocessing.load_image_file(huge)
    path = tmp_path / "photo.jpg"
    path.write_bytes(_encode(_smooth_image(40, 50), "JPEG"))
    with pytest.raises(images.BadImage, match="too many pixels: 50x40"):
        preprocessing.load_image_file(path, max_pixels=1999)
    assert preprocessing.load_image_file(path, max_pixels=2000).data == path.read_bytes()
    assert preprocessing.load_image_file(path, max_pixels=0).data == path.read_bytes()  # 0: no limit


def _with_orientation(array: np.ndarray, orientation: int, fmt: str = "JPEG") -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return _encode(array, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))


def test_load_image_file_reads_the_exif_orientation_of_jpeg_only(tmp_path):
    array = _smooth_image(24, 40)
    for orientation in range(1, 9):
        path = tmp_path / f"o{orientation}.jpg"
        path.write_bytes(_with_orientation(array, orientation))
        assert preprocessing.load_image_file(path).orientation == orientation
    png = tmp_path / "o6.png"
    png.write_bytes(_with_orientation(array, 6, "PNG"))
    assert preprocessing.load_image_file(png).orientation == 1


@pytest.mark.parametrize("orientation", range(1, 9))
def test_apply_exif_orientation_matches_pillow(orientation):
    array = _noise_image(5, 7)
    exif = Image.Exif()
    exif[0x0112] = orientation
    image = Image.fromarray(array)
    image.info["exif"] = exif.tobytes()
    expected = np.asarray(ImageOps.exif_transpose(image))
    got = preprocessing.apply_exif_orientation(tf.constant(array), orientation).numpy()
    np.testing.assert_array_equal(got, expected)


# ----------------------------------------------------------------- the release's tools' input, via OpenCV


def _opencv_release_input(path, side: int = 256, crop: int = 224) -> np.ndarray:
    """The network input of the release's image_classification.py / extract_feature.py, with OpenCV:
    cv.imread, BGR -> RGB, shorter side to `side` (cv.resize, bilinear), centre crop, (x / 255 - 0.5) * 2."""
    cv2 = pytest.importorskip("cv2")
    image = cv2.cvtColor(cv2.imread(str(path)), cv2.COLOR_BGR2RGB)
    height, width = float(image.shape[0]), float(image.shape[1])
    new_h, new_w = float(side), float(side)
    if height <= width:
        new_w = width / height * new_h
    else:
        new_h = height / width * new_w
    image = cv2.resize(image, (int(new_w), int(new_h)))
    top, left = int((new_h - crop) / 2), int((new_w - crop) / 2)
    return (image[top : top + crop, left : left + crop] / 255.0 - 0.5) * 2.0


def _tool_input(path, image_size: int = 224) -> np.ndarray:
    image = preprocessing.load_image_file(path)
    transform = preprocessing.file_transform("demo", image_size=image_size)
    return transform(tf.constant(image.data), tf.constant(image.orientation)).numpy()


def _grey_levels(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a - b)) * 127.5)


def test_demo_transform_matches_opencv_on_the_reference_images(reference_dir):
    """Within one grey level per pixel of OpenCV's path (its resize interpolates in fixed point); TF's
    default fast IDCT would be off by many levels."""
    for path in sorted((reference_dir / "images").glob("*.jpg")):
        expected = _opencv_release_input(path)
        got = _tool_input(path)
        assert got.shape == expected.shape == (224, 224, 3)
        assert _grey_levels(got, expected) <= 1.0 + 1e-3, path


def test_demo_transform_matches_opencv_on_an_exif_rotated_copy(reference_dir, tmp_path):
    """A reference JPEG saved with EXIF orientation 6 (rotate 90 clockwise to display): cv.imread turns it,
    and so does the tools' transform."""
    with Image.open(reference_dir / "images" / "im_1.jpg") as image:
        array = np.asarray(image.convert("RGB"))
    path = tmp_path / "rotated.jpg"
    path.write_bytes(_with_orientation(array, 6))
    expected = _opencv_release_input(path)
    assert _grey_levels(_tool_input(path), expected) <= 1.0 + 1e-3
    unrotated = preprocessing.demo_transform(tf.constant(path.read_bytes())).numpy()
    assert _grey_levels(unrotated, expected) > 10  # without the orientation the input is another picture


@pytest.mark.parametrize("orientation", range(1, 9))
def test_demo_transform_matches_opencv_for_every_exif_orientation(tmp_path, orientation):
    path = tmp_path / f"o{orientation}.jpg"
    path.write_bytes(_with_orientation(_smooth_image(45, 60), orientation))
    expected = _opencv_release_input(path, side=37, crop=32)
    assert _grey_levels(_tool_input(path, image_size=32), expected) <= 1.0 + 1e-3


# ----------------------------------------------------------------------------- the release's sample JPEGs


def test_reference_sample_images_go_through_every_transform(reference_dir):
    paths = sorted((reference_dir / "images").glob("*.jpg"))
    assert len(paths) == 4
    for i, path in enumerate(paths):
        data = preprocessing.load_image_file(path).data
        assert data == path.read_bytes()
        image_bytes = tf.constant(data)
        outputs = [
            preprocessing.train_transform(image_bytes, _seed(i), image_size=224, **PRETRAIN),
            preprocessing.train_transform(image_bytes, _seed(i), image_size=299, **FINETUNE),
            preprocessing.eval_transform(image_bytes, image_size=224),
            preprocessing.demo_transform(image_bytes),
        ]
        for out in outputs:
            side = out.shape[0]
            assert out.shape == (side, side, 3) and side in (224, 299)
            assert -1.0 <= float(tf.reduce_min(out)) and float(tf.reduce_max(out)) <= 1.0
            assert float(tf.math.reduce_std(out)) > 0.05
        np.testing.assert_allclose(outputs[2].numpy(), _tf1_reference_eval(data, 224), atol=1e-6)
