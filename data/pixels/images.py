"""Image-file validation: the one check used by the downloader, the TFRecord writer and the inference tools.

Every path that accepts an image file from the outside world goes through `open_image` (header only: format,
mode, size, and the pixel limit, before a single pixel is decoded), then `verify_decodes` (the whole
entropy-coded stream, which is where truncation and corruption show) and, where pixels are needed in
8-bit RGB, `to_rgb8`. Problems are `BadImage` with a short `reason` meant for a manifest or a skip list,
never a Python object's repr.

Pixel conventions follow what the release's tools see through OpenCV's `cv.imread(path, IMREAD_COLOR)`:
- 16-bit images (PNG/TIFF, grey or colour) are scaled to 8 bits by keeping the high byte (v >> 8, as
  libpng's strip-16 does), not clipped: 65535 -> 255, 32768 -> 128, 255 -> 0.
- Alpha is dropped: a transparent pixel keeps its stored colour (no compositing on a background), and a
  palette image is expanded through its palette (its transparency entry dropped likewise).

`prepare_image` is what the TFRecord writer stores for a file: the original bytes of a JPEG that
TensorFlow decodes to the right RGB (as the release kept every JPEG), otherwise an RGB JPEG of `to_rgb8`;
with a `max_side`, an image whose longer side exceeds it is stored as an RGB JPEG of that size instead.
"""

from __future__ import annotations

import dataclasses
import io
import os
import re
import stat

import numpy as np
from PIL import Image

# One limit for every tool (--max_pixels): 100 MP is a 10,000 x 10,000 image, far above any photo in the
# lists, and about 300 MB as 8-bit RGB; beyond it a single image could exhaust a worker's memory.
DEFAULT_MAX_PIXELS = 100_000_000
# No image file is read past this (the downloader's limit for a body): the Flickr `_o` originals are a few MB.
DEFAULT_MAX_FILE_BYTES = 64 << 20

# Quality of the JPEG written for an image that cannot be stored as it is (the release used 100 for PNGs).
DEFAULT_JPEG_QUALITY = 95
# How a JPEG stored as it is gets checked (`prepare_image`).
VERIFY_MODES: tuple[str, ...] = ("full", "fast")
# Formats whose bytes are stored as they are when TensorFlow decodes them. MPO is the multi-picture JPEG some
# cameras write; its first frame is a baseline JPEG that TensorFlow decodes.
_JPEG_FORMATS = ("JPEG", "MPO")
_JPEG_END = b"\xff\xd9"

# Pillow refuses images over 2 x Image.MAX_IMAGE_PIXELS (about 179 MP) on open with its own error, which is
# reported with the same reason; Pillow's global is not changed here, so a --max_pixels above that stays
# capped by Pillow.
_SIXTEEN_BIT_MODES = frozenset({"I;16", "I;16L", "I;16B", "I;16N", "I"})


class BadImage(ValueError):
    """An image that cannot be used; `reason` says why in a few words (for manifests and skip lists)."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class ImageHeader:
    """What the header says, before any pixel is decoded."""

    format: str
    mode: str
    width: int
    height: int

    @property
    def pixels(self) -> int:
        return self.width * self.height


def _kind_of(mode: int) -> str:
    for test, kind in (
        (stat.S_ISFIFO, "a fifo"),
        (stat.S_ISCHR, "a character device"),
        (stat.S_ISBLK, "a block device"),
        (stat.S_ISSOCK, "a socket"),
        (stat.S_ISDIR, "a directory"),
    ):
        if test(mode):
            return kind
    return "not a regular file"


def read_file(path: str, *, max_bytes: int | None = None) -> bytes:
    """The bytes of the regular file `path` (a symlink is followed to it), or `BadImage` with the reason.

    An image folder is untrusted input like a URL list: a FIFO must not hang the run (it is opened
    non-blocking and refused), a link to `/dev/zero` or another device must not fill the memory (only a
    regular file is read), and no file is read past `max_bytes` (default `DEFAULT_MAX_FILE_BYTES`, the
    downloader's limit for a body; 0: no limit).
    """
    max_bytes = DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except FileNotFoundError:
        raise BadImage("missing file") from None
    except IsADirectoryError:
        raise BadImage("is a directory") from None
    except OSError as e:
        raise BadImage(f"unreadable: {e.strerror or type(e).__name__}") from None
    info = os.fstat(fd)
    if not stat.S_ISREG(info.st_mode):  # before fdopen, which refuses a directory with its own error
        os.close(fd)
        kind = _kind_of(info.st_mode)
        raise BadImage("is a directory" if kind == "a directory" else f"not a regular file ({kind})")
    with os.fdopen(fd, "rb") as f:
        if max_bytes > 0 and info.st_size > max_bytes:
            raise BadImage(f"too large: {info.st_size} bytes (over {max_bytes})")
        try:
            data = f.read(max_bytes + 1 if max_bytes > 0 else -1)
        except OSError as e:
            raise BadImage(f"unreadable: {e.strerror or type(e).__name__}") from None
    if max_bytes > 0 and len(data) > max_bytes:  # it grew while being read
        raise BadImage(f"too large: over {max_bytes} bytes")
    return data


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> Image.Image:
    """Parses the header of an encoded image and enforces the pixel limit; decodes no pixels.

    Args:
      data: The encoded file.
      max_pixels: Largest width x height accepted (0 or negative: no limit).

    Returns:
      The opened (lazy) Pillow image.

    Raises:
      BadImage: empty, not an image, or over `max_pixels` ("too many pixels: 30000x30000 = 900.0 MP > 100.0 MP").
    """
    if not data:
        raise BadImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
    except Image.UnidentifiedImageError:
        raise BadImage("not an image (unidentified format)") from None
    except Image.DecompressionBombError as e:
        # Pillow refuses images over twice its own limit (about 179 MP) before returning the size.
        found = re.search(r"\((\d+) pixels\)", str(e))
        size = f"{int(found.group(1)) / 1e6:.1f} MP" if found else "over Pillow's decompression-bomb limit"
        raise BadImage(f"too many pixels: {size} > {max_pixels / 1e6:.1f} MP (--max_pixels)") from None
    except Exception as e:  # noqa: BLE001 -- a malformed header raises many types; it is a reason, not a crash
        raise BadImage(f"corrupt header ({type(e).__name__})") from None
    width, height = image.size
    if width <= 0 or height <= 0:
        raise BadImage(f"empty image ({width}x{height})")
    if max_pixels > 0 and width * height > max_pixels:
        raise BadImage(
            f"too many pixels: {width}x{height} = {width * height / 1e6:.1f} MP > {max_pixels / 1e6:.1f} MP "
            "(--max_pixels)"
        )
    return image


def header(image: Image.Image) -> ImageHeader:
    return ImageHeader(format=image.format or "", mode=image.mode, width=image.size[0], height=image.size[1])


def verify_decodes(image: Image.Image, *, reduced: bool = True) -> None:
    """Decodes the whole image once so that truncated and corrupt files fail here.

    Args:
      image: From `open_image` (not yet loaded).
      reduced: For JPEG, decode at 1/8 scale (`draft`): libjpeg still reads the whole entropy-coded stream,
        where every decode error arises, and skips the inverse DCT and colour conversion, which cannot fail.

    Raises:
      BadImage: corrupt or truncated.
    """
    try:
        if reduced and image.format in ("JPEG", "MPO"):
            width, height = image.size
            image.draft(image.mode, (max(1, width // 8), max(1, height // 8)))
        image.load()
    except Image.DecompressionBombError:
        raise BadImage("too many pixels (over Pillow's decompression-bomb limit)") from None
    # Pillow's decoders raise many types on corrupt data (OSError, SyntaxError, ValueError, struct.error,
    # EOFError, ...); one bad file among millions must become a reason, not a crash.
    except Exception as e:  # noqa: BLE001
        raise BadImage(f"corrupt or truncated ({type(e).__name__}: {_short(e)})") from None


def to_rgb8(image: Image.Image) -> Image.Image:
    """An 8-bit RGB image with the pixels OpenCV's `imread(IMREAD_COLOR)` would give (module docstring).

    Raises:
      BadImage: corrupt or truncated (the image is decoded here if it was not yet).
    """
    try:
        image.load()
        mode = image.mode
        if mode in _SIXTEEN_BIT_MODES:
            values = np.asarray(image, dtype=np.int64)
            grey = (np.clip(values, 0, 65535) >> 8).astype(np.uint8)
            return Image.fromarray(grey, mode="L").convert("RGB")
        if mode == "F":
            grey = np.clip(np.asarray(image, dtype=np.float64), 0, 255).round().astype(np.uint8)
            return Image.fromarray(grey, mode="L").convert("RGB")
        if mode == "RGB":
            return image
        return image.convert("RGB")  # P/PA via the palette, RGBA/LA by dropping alpha, CMYK, YCbCr, 1, L
    except BadImage:
        raise
    except Exception as e:  # noqa: BLE001
        raise BadImage(f"corrupt or truncated ({type(e).__name__}: {_short(e)})") from None


def decode_rgb8(data: bytes, *, max_pixels: int = DEFAULT_MAX_PIXELS) -> np.ndarray:
    """uint8[H, W, 3] pixels of an encoded image, checked and converted as above."""
    return np.asarray(to_rgb8(open_image(data, max_pixels=max_pixels)))


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """What goes into a record for one image.

    Attributes:
      jpeg: The JPEG bytes to store (the original file when TensorFlow decodes it as it is).
      height: Height in pixels of the stored image (the original's unless resized).
      width: Width in pixels of the stored image.
      converted_from: None when the bytes are the original file, else what was converted
        (``"PNG"``, ``"JPEG/CMYK"``, ...; ``"resized JPEG"``, ``"resized PNG"``, ... for an image made
        smaller by `prepare_image`'s `max_side`).
    """

    jpeg: bytes
    height: int
    width: int
    converted_from: str | None


def tensorflow_decodes_as_is(image: Image.Image) -> bool:
    """Whether `tf.io.decode_jpeg(data, channels=3)` gives this file's RGB pixels, so its bytes can be kept.

    True for RGB (YCbCr) and greyscale JPEGs, and for CMYK/YCCK JPEGs with an Adobe marker: TensorFlow
    converts those to RGB itself, equal to Pillow's and OpenCV's pixels (the release kept all of them
    byte for byte). A CMYK JPEG without the Adobe marker decodes to black in TensorFlow, so it is
    converted, as is every other format.
    """
    if image.format not in _JPEG_FORMATS:
        return False
    return image.mode in ("RGB", "L") or (image.mode == "CMYK" and "adobe" in image.info)


def prepare_image(
    data: bytes,
    *,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    verify: str = "full",
    max_pixels: int = DEFAULT_MAX_PIXELS,
    max_side: int = 0,
) -> PreparedImage:
    """Checks one image file and returns the JPEG to store in a record.

    Keeping a JPEG's original bytes avoids a lossy and slow re-encode and keeps what the release kept.
    Everything else (PNG, GIF, BMP, WebP, TIFF, 16-bit, CMYK without Adobe marker) becomes an RGB JPEG
    of `to_rgb8`'s pixels at `jpeg_quality`. How a kept JPEG is checked:

    - ``verify="full"``: `verify_decodes` at 1/8 scale, which reads the whole entropy-coded stream and so
      catches every truncated and corrupt file (docs/BENCHMARKS.md section 1, `writer/verify_cost`, measures
      what the reduced scale saves).
    - ``verify="fast"``: the header is parsed and the file must end with the JPEG end-of-image marker
      (FF D9), which a truncated download lacks; a file that does not end so gets the full check.
      Mid-stream corruption with an intact end is not caught (libjpeg, and so TensorFlow, decode most of
      it with a warning anyway).

    Args:
      data: The file's bytes.
      jpeg_quality: Quality of the JPEG written for converted images.
      verify: ``full`` or ``fast``, see above.
      max_pixels: Largest width x height accepted, checked on the header before any pixel is decoded
        (0: no limit).
      max_side: When > 0, an image whose longer side exceeds it (read from the header) is stored as an RGB
        JPEG scaled down to that longer side (`resized_jpeg`); every other image is stored as above. 0:
        nothing is resized.

    Returns:
      A `PreparedImage`.

    Raises:
      BadImage: Empty, not an image, too many pixels, truncated or corrupt.
    """
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    image = open_image(data, max_pixels=max_pixels)
    width, height = image.size
    if max_side > 0 and max(width, height) > max_side:
        return resized_jpeg(image, max_side=max_side, jpeg_quality=jpeg_quality)
    if tensorflow_decodes_as_is(image):
        if not (verify == "fast" and data.endswith(_JPEG_END)):
            verify_decodes(image)
        return PreparedImage(data, height, width, None)
    return PreparedImage(_encode_jpeg(to_rgb8(image), jpeg_quality), height, width, _converted_source(image))


def resized_jpeg(image: Image.Image, *, max_side: int, jpeg_quality: int) -> PreparedImage:
    """`image` (from `open_image`) scaled down so that its longer side is `max_side`, as an RGB JPEG.

    The aspect ratio is kept (the shorter side rounded, at least 1 pixel). A JPEG is first decoded at the
    strongest DCT reduction (1/2, 1/4 or 1/8) that still leaves twice the new size (`Image.draft`, as
    Pillow's `thumbnail` does), which reads the whole entropy-coded stream (so it checks the file as
    `verify_decodes` does) at a fraction of a full decode's cost; then `to_rgb8` and a Lanczos resize.
    The pixels keep their stored order: no EXIF rotation, as TensorFlow decodes the original file; the
    EXIF and ICC data are dropped, as for every converted image.

    Raises:
      BadImage: corrupt or truncated.
    """
    width, height = image.size
    scale = max_side / max(width, height)
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    source = image.format if tensorflow_decodes_as_is(image) else _converted_source(image)
    if image.format in _JPEG_FORMATS:
        image.draft(None, (2 * size[0], 2 * size[1]))
    rgb = to_rgb8(image)
    try:
        small = rgb.resize(size, Image.Resampling.LANCZOS)
    except Exception as e:  # noqa: BLE001 -- a lazily decoded frame can still fail here
        raise BadImage(f"corrupt or truncated ({type(e).__name__}: {_short(e)})") from None
    return PreparedImage(_encode_jpeg(small, jpeg_quality), size[1], size[0], f"resized {source}")


def _converted_source(image: Image.Image) -> str:
    """What `prepare_image` reports converting: ``"PNG"``, ``"JPEG/CMYK"`` (a JPEG TensorFlow misreads), ..."""
    return f"JPEG/{image.mode}" if image.format in _JPEG_FORMATS else (image.format or "unknown")


def _encode_jpeg(rgb: Image.Image, quality: int) -> bytes:
    """`rgb` as a JPEG of `quality`; `BadImage` if its pixels cannot be decoded after all."""
    out = io.BytesIO()
    try:
        rgb.save(out, format="JPEG", quality=quality)
    except Exception as e:  # noqa: BLE001 -- a lazily decoded frame can still fail here
        raise BadImage(f"corrupt or truncated ({type(e).__name__}: {_short(e)})") from None
    return out.getvalue()


def _short(error: Exception, limit: int = 120) -> str:
    text = str(error).splitlines()[0] if str(error) else ""
    return text[:limit]
