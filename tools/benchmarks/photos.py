"""The writer's and the pipeline's input: photo-like JPEGs with an image list, and our writer's records of them.

Generated once into ``--image_cache`` and reused across runs (and across the two subcommands), so that a
pipeline run reads the very bytes a writer run wrote. Two kinds: `photo_like_jpeg`, the ~500 x 375 images
of the release's ImageNet-sized photos (``writer``, ``pipeline``), and `camera_photo_jpeg`, 4:3 camera
originals of a given number of megapixels (`photo_size`) like the Open Images ``_o.jpg`` files of the URL
lists (``photo_sizes``).
"""

from __future__ import annotations

import io
import os

import numpy as np
from absl import flags

from tools.benchmarks.common import random_tags

# The flags `benchmark_images` reads: part of the FLAGS_USED of every subcommand that uses the images.
IMAGE_FLAGS: tuple[str, ...] = (
    "image_cache",
    "num_images",
    "image_width",
    "image_height",
    "num_classes",
    "tags",
)


def photo_like_jpeg(rng: np.random.Generator, *, width: int, height: int) -> bytes:
    """A JPEG whose size is like a photo's (~100 KB at 500x375): smooth structure plus sensor-like noise."""
    from PIL import Image

    coarse = rng.integers(0, 256, (max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = base + rng.normal(0.0, 12.0, base.shape).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


# Sensor-like noise of `camera_photo_jpeg` (standard deviation, grey levels): at quality 90 it gives about
# 2.1 - 2.3 bits per pixel, so 0.5 / 2 / 8 MP files of ~140 KB / ~520 KB / ~2 MB, like camera originals.
_CAMERA_NOISE = 8.0


def photo_size(megapixels: float) -> tuple[int, int]:
    """(width, height) of a 4:3 photo of about `megapixels` MP, the width a multiple of 16 (8 MP: 3264 x 2448)."""
    if megapixels <= 0:
        raise ValueError(f"megapixels must be > 0, got {megapixels}")
    width = max(16, 16 * round((megapixels * 1e6 * 4 / 3) ** 0.5 / 16))
    return width, width * 3 // 4


def camera_photo_jpeg(rng: np.random.Generator, *, width: int, height: int, quality: int = 90) -> bytes:
    """A JPEG like a camera original of this size: structure at every scale (octaves of smooth random
    colour, each twice as fine and 0.6x as strong, from ~6 cells across down to 8 pixels), sensor-like noise,
    quality 90. Its bytes per pixel stay about the same at every size, as camera files' do."""
    from PIL import Image

    small = (max(width // 4, 1), max(height // 4, 1))
    structure = np.zeros((small[1], small[0], 3), np.float32)
    cells, amplitude = 6, 90.0
    while cells <= max(small[0] // 2, 1):
        coarse = rng.integers(0, 256, (max(round(cells * height / width), 1), cells, 3), dtype=np.uint8)
        octave = np.asarray(Image.fromarray(coarse).resize(small, Image.BICUBIC), np.float32) - 128.0
        structure += octave * (amplitude / 128.0)
        cells, amplitude = cells * 2, amplitude * 0.6
    base = Image.fromarray(np.clip(structure + 128.0, 0, 255).astype(np.uint8)).resize(
        (width, height), Image.BICUBIC
    )
    noise = rng.standard_normal((height, width, 3), dtype=np.float32) * _CAMERA_NOISE
    out = io.BytesIO()
    pixels = np.clip(np.asarray(base, np.float32) + noise, 0, 255).astype(np.uint8)
    Image.fromarray(pixels).save(out, format="JPEG", quality=quality)
    return out.getvalue()


def ensure_images(
    cache: str,
    *,
    num_images: int,
    width: int,
    height: int,
    num_classes: int,
    tags: int,
    camera: bool = False,
) -> str:
    """Generates the JPEGs (`camera_photo_jpeg` if `camera`, else `photo_like_jpeg`) and an image list once;
    returns the list's path."""
    from data import fileio
    from data.labels import annotations

    kind = "camera-" if camera else ""
    list_path = os.path.join(cache, f"list-{kind}{num_images}-{width}x{height}-{num_classes}-{tags}.txt")
    if os.path.exists(list_path):
        return list_path
    os.makedirs(cache, exist_ok=True)
    rng = np.random.default_rng(0)
    make_jpeg = camera_photo_jpeg if camera else photo_like_jpeg
    entries = []
    for i in range(num_images):
        name = f"{kind}{width}x{height}-{i:06d}.jpg"
        path = os.path.join(cache, name)
        if not os.path.exists(path):
            fileio.write_bytes(path, make_jpeg(rng, width=width, height=height), fsync=False)
        labels = tuple(sorted(random_tags(rng, num_classes=num_classes, tags=tags).items()))
        entries.append(annotations.Entry(name, labels, i + 1))
    annotations.write_entries(list_path, entries)
    return list_path


def benchmark_images(f: flags.FlagValues) -> tuple[str, list[str]]:
    """The flags' benchmark JPEGs (generated once into --image_cache): their list's path and file names."""
    list_path = ensure_images(
        f.image_cache,
        num_images=f.num_images,
        width=f.image_width,
        height=f.image_height,
        num_classes=f.num_classes,
        tags=f.tags,
    )
    return list_path, list_names(list_path)


def list_names(list_path: str) -> list[str]:
    """The file names of an image list written by `ensure_images`."""
    with open(list_path, encoding="utf-8") as file:
        return [line.split("\t", 1)[0] for line in file]


def read_jpegs(image_root: str, names: list[str]) -> list[bytes]:
    """The bytes of the named JPEGs."""
    jpegs = []
    for name in names:
        with open(os.path.join(image_root, name), "rb") as file:
            jpegs.append(file.read())
    return jpegs


def our_writer(
    list_path: str, out_dir: str, *, f: flags.FlagValues, label_format: str, workers: int, verify: str
) -> dict:
    """`data.shards.dataset_writer.write_dataset` of the benchmark images into `out_dir` (resumes what is there)."""
    from data.shards import dataset_writer

    return dataset_writer.write_dataset(
        image_list=list_path,
        image_root=f.image_cache,
        output_dir=out_dir,
        label_format=label_format,
        num_classes=f.num_classes,
        shards=f.shards,
        workers=workers,
        verify=verify,
        progress=False,
    )


def cached_records(list_path: str, label_format: str, *, f: flags.FlagValues) -> str:
    """Our writer's records of the benchmark images (written once into the image cache; resumable)."""
    name = os.path.basename(list_path).removeprefix("list-").removesuffix(".txt")
    out_dir = os.path.join(f.image_cache, f"records-{name}-{label_format}-{f.shards}")
    our_writer(list_path, out_dir, f=f, label_format=label_format, workers=f.workers, verify="fast")
    return out_dir
