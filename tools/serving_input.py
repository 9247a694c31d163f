"""What the exported SavedModel does with the bytes it is sent, in TensorFlow ops only: it must not fall over.

A server takes whatever clients send. TensorFlow's decoders allocate what an image's header claims before
they look at the data (a 389 KB PNG of 20000 x 20000 zeros is 400 MB decoded, 1.2 GB as RGB), and one
undecodable image fails the whole batch. So, per image of a batch (`decode_batch`):

1. `image_header` reads the format and the size from the header with string ops (`tf.strings.substr`,
   `tf.io.decode_raw`, a bounded `tf.while_loop` over a JPEG's segments or a GIF's blocks): never an
   error, whatever the bytes. JPEG (the first SOF segment), PNG (IHDR), GIF (every frame's descriptor: TF
   decodes all frames, on a canvas of the largest frame's size) and BMP (TF's own reading of its header)
   are known; anything else is refused, as is a header that cannot be read.
2. `pixels_to_allocate` bounds what the decode and the transform will hold (the decoded pixels; for the
   `demo` transform also its resized image, which a long thin image makes large); over `max_pixels`, the
   image is refused before a pixel is decoded: the same limit as the Python tools' (`data/pixels/images.py`,
   100 MP by default), checked in the graph instead of by Pillow.
3. The others are decoded and transformed in a `tf.data` pipeline with `ignore_errors`, so a corrupt or
   truncated image drops out alone; the indices of the survivors say which.

The result is the batch of the valid images' network inputs, a `valid` flag per image and an `error`
string per image (empty for valid ones), e.g. `needs 400000000 pixels (20000 x 20000 image), over the
limit 100000000`. tools/export.py puts this in front of the network (its docstring states the contract).

`exif_orientation` reads a JPEG's EXIF orientation the same way, for the `demo` transform.
"""

from __future__ import annotations

import tensorflow as tf

from data.pixels import preprocessing

# Formats, in `image_header`'s `format` output.
UNKNOWN, JPEG, PNG, GIF, BMP = 0, 1, 2, 3, 4
# Loop bounds of the header walks: a JPEG's segments before its SOF (a few dozen in practice), a GIF's
# steps over blocks and runs of full sub-blocks (a 10 MB GIF of 100 frames takes about 1,000). A file that
# needs more is refused rather than walked for seconds.
MAX_JPEG_SEGMENTS = 4096
MAX_GIF_BLOCKS = 20_000
_GIF_SKIP = 64  # full sub-blocks skipped in one step of the GIF walk
# JPEG start-of-frame markers (C0-CF but DHT C4, JPG C8 and DAC CC); their segment holds the image size.
_SOF_MARKERS = (0xC0, 0xC1, 0xC2, 0xC3, 0xC5, 0xC6, 0xC7, 0xC9, 0xCA, 0xCB, 0xCD, 0xCE, 0xCF)
# Markers without a length field: TEM, RST0-7, SOI.
_STANDALONE_MARKERS = (0x01, *range(0xD0, 0xD9))
_zero, _one, _two = (tf.constant(value, tf.int64) for value in (0, 1, 2))
_ERROR_FORMAT = "not a JPEG, PNG, GIF or BMP image"
_ERROR_HEADER = "unreadable header"
_ERROR_DECODE = "cannot be decoded (corrupt or truncated)"

_EXIF_MARK = "Exif\x00\x00"  # the APP1 payload's start; the TIFF header follows it
_EXIF_SEARCH_BYTES = 65536  # APP1 (at most 64 KB) comes before the image data
_ORIENTATION_TAG = 0x0112


def _bytes_at(data: tf.Tensor, pos: tf.Tensor, count: int) -> tf.Tensor:
    """int64[count]: the bytes of `data` from `pos` on, zeros past its end (never an error)."""
    pos = tf.clip_by_value(tf.cast(pos, tf.int64), 0, tf.cast(tf.strings.length(data), tf.int64))
    window = tf.strings.substr(data, pos, count) + b"\x00" * count
    return tf.ensure_shape(tf.cast(tf.io.decode_raw(window, tf.uint8)[:count], tf.int64), [count])


def _colour_table_bytes(flags: tf.Tensor) -> tf.Tensor:
    """The size of a GIF colour table from its packed flags byte: 3 x 2^(n+1) bytes when bit 7 is set."""
    return tf.where(flags >= 128, 3 * tf.bitwise.left_shift(_two, flags % 8), _zero)


def _big_endian(values: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(values * 256 ** tf.range(values.shape[0] - 1, -1, -1, dtype=tf.int64))


def _little_endian(values: tf.Tensor) -> tf.Tensor:
    return tf.reduce_sum(values * 256 ** tf.range(values.shape[0], dtype=tf.int64))


def _jpeg_size(data: tf.Tensor, length: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """(found, height, width) from the first SOF segment, walking the segments after SOI."""

    def body(pos, height, width, found, stop, steps):
        b = _bytes_at(data, pos, 9)
        marker = b[1]
        is_sof = tf.reduce_any(tf.equal(marker, _SOF_MARKERS))
        standalone = tf.reduce_any(tf.equal(marker, _STANDALONE_MARKERS))
        bad = tf.logical_or(tf.not_equal(b[0], 0xFF), tf.reduce_any(tf.equal(marker, [0xD9, 0xDA])))
        step = tf.where(tf.equal(marker, 0xFF), _one, tf.where(standalone, _two, 2 + _big_endian(b[2:4])))
        found = tf.logical_and(tf.logical_not(bad), is_sof)
        height = tf.where(found, _big_endian(b[5:7]), height)
        width = tf.where(found, _big_endian(b[7:9]), width)
        pos = pos + step
        stop = tf.logical_or(tf.logical_or(bad, found), pos + 4 > length)
        return pos, height, width, found, stop, steps + 1

    zero = tf.constant(0, tf.int64)
    start = (tf.constant(2, tf.int64), zero, zero, tf.constant(False), tf.constant(False), zero)
    _, height, width, found, _, _ = tf.while_loop(
        lambda pos, height, width, found, stop, steps: tf.logical_and(
            tf.logical_not(stop), steps < MAX_JPEG_SEGMENTS
        ),
        body,
        start,
    )
    return found, height, width


def _gif_size(data: tf.Tensor, length: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor, tf.Tensor]:
    """(readable, height, width, pixels TF's decoder allocates) of a GIF, from its frames' descriptors.

    TF's decoder (tensorflow/core/lib/gif/gif_io.cc) has giflib read every frame's raster (w x h bytes
    each), then allocates its output, frames x the largest frame width x the largest frame height (the
    logical screen size is not used), before it checks that the first frame fills it. So the blocks after
    the header and the global colour table are walked: an image descriptor (`,`) counts a frame and its
    size, an extension (`!`) is skipped, each followed by its chain of sub-blocks; the trailer (`;`),
    another byte or the end of the data ends the walk, as it ends giflib's.
    """
    flags = _bytes_at(data, 10, 1)[0]

    def body(pos, in_blocks, frames, height, width, frame_pixels, stop, steps):
        b = _bytes_at(data, pos, 10)
        image = tf.logical_and(tf.logical_not(in_blocks), tf.equal(b[0], 0x2C))
        extension = tf.logical_and(tf.logical_not(in_blocks), tf.equal(b[0], 0x21))
        # Image data comes in full 255-byte sub-blocks: skip a run of up to _GIF_SKIP of them at once.
        firsts = _bytes_at(data, pos, _GIF_SKIP * 256)[::256]
        full = tf.reduce_sum(tf.math.cumprod(tf.cast(tf.equal(firsts, 255), tf.int64)))
        step = tf.where(
            in_blocks,
            tf.where(full > 0, 256 * full, b[0] + 1),  # a sub-block of b[0] bytes; 0 ends the chain
            tf.where(image, 10 + _colour_table_bytes(b[9]) + 1, tf.where(extension, _two, _zero)),
        )
        frame_width = tf.where(image, _little_endian(b[5:7]), _zero)
        frame_height = tf.where(image, _little_endian(b[7:9]), _zero)
        stop = tf.logical_or(tf.logical_and(tf.logical_not(in_blocks), step == 0), pos + step >= length)
        in_blocks = tf.logical_or(tf.logical_or(image, extension), tf.logical_and(in_blocks, b[0] > 0))
        return (
            pos + step,
            in_blocks,
            frames + tf.cast(image, tf.int64),
            tf.maximum(height, frame_height),
            tf.maximum(width, frame_width),
            frame_pixels + frame_width * frame_height,
            stop,
            steps + 1,
        )

    start = (13 + _colour_table_bytes(flags), tf.constant(False), _zero, _zero, _zero, _zero)
    _, _, frames, height, width, frame_pixels, stop, _ = tf.while_loop(
        lambda *state: tf.logical_and(tf.logical_not(state[-2]), state[-1] < MAX_GIF_BLOCKS),
        body,
        (*start, tf.constant(False), _zero),
    )
    # Not cut off by the bound on the walk; without a frame TF refuses the file.
    readable = tf.logical_and(stop, frames > 0)
    return readable, height, width, frames * height * width + frame_pixels


def image_header(data: tf.Tensor) -> dict[str, tf.Tensor]:
    """The format and size of one encoded image from its header alone; never raises, whatever `data` is.

    Returns:
      {`format`: int64 (UNKNOWN, JPEG, PNG, GIF, BMP), `readable`: bool (the header could be read),
      `height`, `width`: int64, the decoded size (0 when not readable), `pixels`: int64, what TF's decoder
      allocates in pixels (height x width; for a GIF every frame's raster and a canvas per frame)}.
    """
    data = tf.convert_to_tensor(data, tf.string)
    length = tf.cast(tf.strings.length(data), tf.int64)
    head = _bytes_at(data, 0, 26)
    magic = tf.strings.substr(data, 0, 8)
    kind = tf.case(
        [
            (tf.equal(tf.strings.substr(magic, 0, 3), b"\xff\xd8\xff"), lambda: tf.constant(JPEG, tf.int64)),
            (tf.equal(magic, b"\x89PNG\r\n\x1a\n"), lambda: tf.constant(PNG, tf.int64)),
            (tf.equal(tf.strings.substr(magic, 0, 4), b"GIF8"), lambda: tf.constant(GIF, tf.int64)),
            (tf.equal(tf.strings.substr(magic, 0, 2), b"BM"), lambda: tf.constant(BMP, tf.int64)),
        ],
        default=lambda: tf.constant(UNKNOWN, tf.int64),
    )
    zero = tf.constant(0, tf.int64)

    def unknown():
        return tf.constant(False), zero, zero, zero

    def jpeg():
        found, height, width = _jpeg_size(data, length)
        return found, height, width, height * width

    def png():
        ihdr = tf.reduce_all(tf.equal(head[12:16], tf.constant(list(b"IHDR"), tf.int64)))
        readable = tf.logical_and(length >= 24, ihdr)
        height, width = _big_endian(head[20:24]), _big_endian(head[16:20])
        return readable, height, width, height * width

    def gif():
        return _gif_size(data, length)

    def bmp():  # as TF's decoder reads it: int32 width at 18, int32 height at 22 (negative: top-down)
        width = tf.abs(tf.cast(tf.cast(_little_endian(head[18:22]), tf.uint32), tf.int32))
        height = tf.abs(tf.cast(tf.cast(_little_endian(head[22:26]), tf.uint32), tf.int32))
        width, height = tf.cast(width, tf.int64), tf.cast(height, tf.int64)
        return length >= 26, height, width, height * width

    readable, height, width, pixels = tf.switch_case(tf.cast(kind, tf.int32), [unknown, jpeg, png, gif, bmp])
    readable = tf.logical_and(readable, tf.logical_and(height > 0, width > 0))
    height, width, pixels = (tf.where(readable, value, _zero) for value in (height, width, pixels))
    return {"format": kind, "readable": readable, "height": height, "width": width, "pixels": pixels}


def pixels_to_allocate(header: dict[str, tf.Tensor], *, transform: str, image_size: int) -> tf.Tensor:
    """int64: the largest image `transform` holds for an image with this header, in pixels.

    The decoded image (`header["pixels"]`); for `demo` also its resized image before the crop, whose
    short side is 256/224 x `image_size` and whose long side grows with the aspect ratio (a 1 x 100,000
    image becomes 256 x 25,600,000). `reference` and `full` crop before they resize to S x S.
    """
    pixels = header["pixels"]
    if preprocessing.get_transform(transform) is not preprocessing.demo_transform:
        return pixels
    side = int(round(image_size / preprocessing.DEMO_CROP_FRACTION))
    short = tf.maximum(tf.minimum(header["height"], header["width"]), 1)
    long = tf.maximum(header["height"], header["width"])
    return tf.maximum(pixels, side * (long * side // short))


def exif_orientation(image_bytes: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32 1..8) of an encoded JPEG, in TF ops; 1 when absent, invalid or not a JPEG.

    What `data.pixels.preprocessing.load_image_file` reads with Pillow for the tools, so that the SavedModel
    applies the orientation as they (and `cv.imread`) do. Reads the TIFF header after the first
    `Exif\0\0` in the first 64 KB (byte order `II` or `MM`), the IFD0 offset, and the entries of IFD0,
    all as vectorised gathers (no loop); any read past the end yields 1.
    """
    head = tf.strings.substr(image_bytes, 0, _EXIF_SEARCH_BYTES)
    parts = tf.strings.split(head, sep=_EXIF_MARK, maxsplit=1)
    found = tf.logical_and(tf.io.is_jpeg(image_bytes), tf.size(parts) == 2)
    tiff = tf.cond(found, lambda: parts[-1], lambda: tf.constant(b"")) + b"\x00" * 16  # room for reads
    data = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int32)
    little = tf.equal(tf.strings.substr(tiff, 0, 2), "II")

    def uint(at: tf.Tensor, size: int) -> tf.Tensor:  # an unsigned integer of `size` bytes at `at`
        values = tf.gather(data, at[..., tf.newaxis] + tf.range(size))
        order = tf.where(little, 256 ** tf.range(size), 256 ** tf.range(size - 1, -1, -1))
        return tf.reduce_sum(values * order, axis=-1)

    length = tf.shape(data)[0] - 16
    ifd = uint(tf.constant(4), 4)
    valid = tf.logical_and(ifd >= 8, ifd + 2 <= length)
    ifd = tf.where(valid, ifd, 0)
    count = tf.clip_by_value(tf.where(valid, uint(ifd, 2), 0), 0, tf.maximum(length - ifd - 2, 0) // 12)
    entries = ifd + 2 + 12 * tf.range(count)
    values = tf.where(tf.equal(uint(entries, 2), _ORIENTATION_TAG), uint(entries + 8, 2), 0)
    value = tf.reduce_max(tf.concat([values, [0]], axis=0))
    return tf.where(tf.logical_and(value >= 1, value <= 8), value, 1)


def decode_batch(
    image_bytes: tf.Tensor, *, transform: str, image_size: int, max_pixels: int
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """The network inputs of the valid images of a batch, which they are, and why the others are not.

    Args:
      image_bytes: string[N], encoded images.
      transform: a name of `data.pixels.preprocessing.TRANSFORMS` (`demo` applies the EXIF orientation).
      image_size: the network's input side S.
      max_pixels: images whose decode or transform would hold more pixels are refused (0: no limit).

    Returns:
      (int64[M] indices of the valid images in increasing order, float32[M, S, S, 3] their inputs,
      string[N] the reason each image was refused, empty for the valid ones).
    """
    transform_fn = preprocessing.file_transform(transform, image_size=image_size)
    num_images = tf.shape(image_bytes, out_type=tf.int64)[0]
    headers = tf.map_fn(
        image_header,
        image_bytes,
        fn_output_signature={
            "format": tf.int64,
            "readable": tf.bool,
            "height": tf.int64,
            "width": tf.int64,
            "pixels": tf.int64,
        },
    )
    pixels = pixels_to_allocate(headers, transform=transform, image_size=image_size)
    fits = tf.logical_and(headers["readable"], pixels <= max_pixels) if max_pixels else headers["readable"]
    candidates = tf.where(fits)[:, 0]

    def prepare(index: tf.Tensor, data: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor]:
        return index, tf.ensure_shape(transform_fn(data, exif_orientation(data)), [image_size, image_size, 3])

    dataset = (
        tf.data.Dataset.from_tensor_slices((candidates, tf.gather(image_bytes, candidates)))
        .map(prepare, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
        .ignore_errors()  # a corrupt or truncated image drops out alone
        .batch(64)
    )
    start = (tf.zeros([0], tf.int64), tf.zeros([0, image_size, image_size, 3], tf.float32))
    indices, images = dataset.reduce(
        start, lambda done, batch: (tf.concat([done[0], batch[0]], 0), tf.concat([done[1], batch[1]], 0))
    )
    decoded = tf.scatter_nd(indices[:, tf.newaxis], tf.ones_like(indices, tf.bool), [num_images])
    too_large = tf.strings.join(
        [
            "needs ",
            tf.strings.as_string(pixels),
            " pixels (",
            tf.strings.as_string(headers["width"]),
            " x ",
            tf.strings.as_string(headers["height"]),
            f" image), over the limit {max_pixels}",
        ]
    )
    errors = tf.where(
        tf.equal(headers["format"], UNKNOWN),
        _ERROR_FORMAT,
        tf.where(
            tf.logical_not(headers["readable"]),
            _ERROR_HEADER,
            tf.where(tf.logical_not(fits), too_large, tf.where(decoded, "", _ERROR_DECODE)),
        ),
    )
    return indices, images, errors
