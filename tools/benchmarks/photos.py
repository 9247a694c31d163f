"""The writer's and the pipeline's input: photo-like JPEGs with an image list, and our writer's records of them.

Generated once into ``--image_cache`` and reused across runs (and across the two subcommands), so that a
pipeline run reads the very bytes a writer run wrote.
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


def ensure_images(
    cache: str, *, num_images: int, width: int, height: int, num_classes: int, tags: int
) -> str:
    """Generates the JPEGs and an image list once; returns the list's path."""
    from data import fileio
    from data.labels import annotations

    list_path = os.path.join(cache, f"list-{num_images}-{width}x{height}-{num_classes}-{tags}.txt")
    if os.path.exists(list_path):
        return list_path
    os.makedirs(cache, exist_ok=True)
    rng = np.random.default_rng(0)
    entries = []
    for i in range(num_images):
        name = f"{width}x{height}-{i:06d}.jpg"
        path = os.path.join(cache, name)
        if not os.path.exists(path):
            fileio.write_bytes(path, photo_like_jpeg(rng, width=width, height=height), fsync=False)
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
    with open(list_path, encoding="utf-8") as file:
        return list_path, [line.split("\t", 1)[0] for line in file]


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
