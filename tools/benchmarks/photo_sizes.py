"""``photo_sizes``: what camera-size originals cost the writer and the training input, with and without the
writer's ``--max_side``.

The Open Images part of ML-Images is downloaded as the ``_o.jpg`` originals, often several megapixels, where
the other benchmarks use ~0.19 MP images. For each ``--megapixels`` size, 4:3 camera-like JPEGs at quality 90
(`photos.camera_photo_jpeg`, generated once into ``--image_cache``) are written with each ``--max_sides``
value (0: off, the original bytes) and the benchmark prints, per size and value (``photo_sizes/result``):

- ``writer_cpu_ms_per_image``: process CPU of data/tfrecord.py's writer (`write_dataset`, one worker, so in
  this process; ``verify=full``) per image, and the records' size (``records_kb_per_image``);
- ``train_cpu_ms_per_image``: process CPU per image of the training input
  (`training.input_pipeline.train_dataset`: read, parse, decode, the reference augmentation at
  ``--image_size``) on those records, all its threads counted;
- ``cores_per_gpu``: the CPU cores that input needs to feed one GPU at ``--gpu_images_per_s``
  (1,300 images/s by default): ``gpu_images_per_s * train_cpu_ms_per_image / 1000``;
- ``eval_pixel_change``: how much a smaller stored image changes what the model sees: the mean absolute
  difference, in grey levels (0 - 255), between the release's evaluation transform (central crop, bilinear
  resize to ``--image_size``) of an original and of what the writer stores for it, over the first
  `PIXEL_SAMPLE` images (0 when nothing is resized).

Each size then gets a ``photo_sizes/max_side_effect`` line: every ``--max_side`` against off, as ratios of
the records' bytes and of the training input's CPU. Both are process CPU time, which other jobs on the
cores hardly move; the wall-clock rates are printed too.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import numpy as np
from absl import app, flags

from tools.benchmarks import photos
from tools.benchmarks.common import Timer, emit, emit_machine

FLAGS_USED: tuple[str, ...] = (
    "image_cache",
    "megapixels",
    "photos_per_size",
    "max_sides",
    "gpu_images_per_s",
    "num_classes",
    "tags",
    "shards",
    "label_format",
    "batch_size",
    "image_size",
    "steps",
    "warmup",
    "shuffle_buffer",
)


# Images per size and --max_sides value whose evaluation-transform pixels are compared.
PIXEL_SAMPLE = 16


def _numbers(values: list[str], kind: type, name: str, *, positive: bool) -> list:
    """`--name` (a comma-separated flag) as numbers; a usage error in one line for a bad one."""
    try:
        parsed = [kind(value) for value in values]
    except ValueError:
        parsed = []
    if not parsed or any(value < 0 or (positive and value == 0) for value in parsed):
        bound = "> 0" if positive else ">= 0"
        raise app.UsageError(f"--{name} must be one or more numbers {bound}, got {','.join(values)!r}")
    return parsed


def _folder_bytes(path: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(".tfrecord"))


def write_records(list_path: str, out_dir: str, *, f: flags.FlagValues, max_side: int) -> tuple[dict, float]:
    """Our writer (one worker: in this process) of the listed JPEGs with `max_side`: its manifest and CPU s."""
    from data.shards import dataset_writer

    with Timer() as t:
        manifest = dataset_writer.write_dataset(
            image_list=list_path,
            image_root=f.image_cache,
            output_dir=out_dir,
            label_format=f.label_format,
            num_classes=f.num_classes,
            shards=f.shards,
            workers=1,
            verify="full",
            progress=False,
            max_side=max_side,
        )
    return manifest, t.cpu


def train_input_cost(records: str, *, f: flags.FlagValues) -> dict:
    """`pipeline.time_batches` of the training input on `records` (its CPU ms per image and images/s)."""
    from tools.benchmarks.pipeline import time_batches
    from training import input_pipeline

    source = input_pipeline.tfrecord_source(records, "train", num_classes=f.num_classes)
    dataset = input_pipeline.train_dataset(
        source, batch_size=f.batch_size, image_size=f.image_size, seed=0, shuffle_buffer=f.shuffle_buffer
    )
    return time_batches(dataset, batch_size=f.batch_size, warmup=f.warmup, steps=f.steps)


def eval_pixel_change(jpegs: list[bytes], *, max_side: int, image_size: int) -> float:
    """Mean absolute difference (grey levels) between `eval_transform` of each JPEG and of its stored form."""
    from data.pixels import images, preprocessing

    differences = []
    for data in jpegs:
        stored = images.prepare_image(data, max_side=max_side).jpeg
        original = preprocessing.eval_transform(data, image_size=image_size).numpy()
        smaller = preprocessing.eval_transform(stored, image_size=image_size).numpy()
        differences.append(float(np.abs(original - smaller).mean()) * 127.5)  # [-1, 1] -> grey levels
    return round(float(np.mean(differences)), 2)


def run(f: flags.FlagValues) -> None:
    """Per size and --max_sides value: the writer's and the training input's CPU ms per image, the cores per GPU."""
    sizes = _numbers(f.megapixels, float, "megapixels", positive=True)
    max_sides = _numbers(f.max_sides, int, "max_sides", positive=False)
    emit_machine("photo_sizes")
    output_root = tempfile.mkdtemp(prefix="mlimages_photo_sizes_")
    try:
        for megapixels in sizes:
            width, height = photos.photo_size(megapixels)
            list_path = photos.ensure_images(
                f.image_cache,
                num_images=f.photos_per_size,
                width=width,
                height=height,
                num_classes=f.num_classes,
                tags=f.tags,
                camera=True,
            )
            names = photos.list_names(list_path)
            jpeg_bytes = sum(os.path.getsize(os.path.join(f.image_cache, name)) for name in names)
            emit(
                "photo_sizes/images",
                megapixels=megapixels,
                width=width,
                height=height,
                num_images=len(names),
                mean_jpeg_kb=round(jpeg_bytes / len(names) / 1024, 1),
            )
            sample = photos.read_jpegs(f.image_cache, names[:PIXEL_SAMPLE])
            results = {}
            for max_side in max_sides:
                out_dir = os.path.join(output_root, f"{megapixels}mp-max_side{max_side}")
                manifest, writer_cpu = write_records(list_path, out_dir, f=f, max_side=max_side)
                assert manifest["num_records"] == len(names), manifest
                train = train_input_cost(out_dir, f=f)
                records_bytes = _folder_bytes(out_dir)
                shutil.rmtree(out_dir)
                results[max_side] = result = {
                    "megapixels": megapixels,
                    "max_side": max_side,
                    "resized": sum(
                        n for kind, n in manifest["converted"].items() if kind.startswith("resized ")
                    ),
                    "writer_cpu_ms_per_image": round(writer_cpu / len(names) * 1e3, 2),
                    "records_kb_per_image": round(records_bytes / len(names) / 1024, 1),
                    "train_cpu_ms_per_image": train["cpu_ms_per_image"],
                    "train_images_per_s": train["images_per_s"],
                    "cores_per_gpu": round(f.gpu_images_per_s * train["cpu_ms_per_image"] / 1e3, 1),
                    "eval_pixel_change": eval_pixel_change(sample, max_side=max_side, image_size=f.image_size)
                    if max_side
                    else 0.0,
                    "gpu_images_per_s": f.gpu_images_per_s,
                    "batches": f"{f.steps} x {f.batch_size} at {f.image_size}",
                    "load_average": [round(x, 2) for x in os.getloadavg()],
                }
                emit("photo_sizes/result", **result)
            off = results.get(0)
            if off is not None and len(results) > 1:
                emit(
                    "photo_sizes/max_side_effect",
                    megapixels=megapixels,
                    **{
                        f"max_side_{max_side}": {
                            "records_bytes_vs_off": round(
                                r["records_kb_per_image"] / off["records_kb_per_image"], 3
                            ),
                            "train_cpu_vs_off": round(
                                r["train_cpu_ms_per_image"] / off["train_cpu_ms_per_image"], 3
                            ),
                            "writer_cpu_vs_off": round(
                                r["writer_cpu_ms_per_image"] / off["writer_cpu_ms_per_image"], 3
                            ),
                        }
                        for max_side, r in results.items()
                        if max_side != 0
                    },
                    load_average=[round(x, 2) for x in os.getloadavg()],
                )
    finally:
        shutil.rmtree(output_root, ignore_errors=True)
