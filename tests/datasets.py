"""Tiny data sets for end-to-end tests, written by the project's own writers into a test folder."""

import pathlib

import numpy as np
from PIL import Image

from data.labels import annotations
from data.shards import dataset_writer
from data.synthetic import demo_set


def multilabel(
    root: pathlib.Path, *, num_train: int = 64, num_val: int = 16, size: int = 32
) -> demo_set.DemoDataset:
    """The demo's procedural multi-label set (30 classes), 2 shards per split so that 2 ranks can share it."""
    return demo_set.make_demo_dataset(root, num_train=num_train, num_val=num_val, image_size=size, shards=2)


def single_label(root: pathlib.Path, *, num_images: int = 48, num_classes: int = 10, size: int = 32) -> str:
    """Random-colour JPEGs with int64 labels (train and val splits, 2 shards each); returns the data dir."""
    rng = np.random.default_rng(0)
    images = root / "images"
    images.mkdir(parents=True, exist_ok=True)
    out = root / "records"
    for prefix in ("train", "val"):
        entries = []
        for i in range(num_images):
            label = int(rng.integers(num_classes))
            pixels = np.clip(rng.normal(25 * label, 30, (size, size, 3)), 0, 255).astype(np.uint8)
            name = f"{prefix}-{i:04d}.jpg"
            Image.fromarray(pixels).save(images / name, quality=90)
            entries.append(annotations.Entry(name, label, i + 1))
        list_path = root / f"{prefix}.txt"
        annotations.write_entries(list_path, entries, kind="single")
        dataset_writer.write_dataset(
            image_list=str(list_path),
            image_root=str(images),
            output_dir=str(out),
            label_format="int64",
            num_classes=num_classes,
            shards=2,
            prefix=prefix,
            progress=False,
        )
    return str(out)
