"""``writer``: images/s and MB/s of data/tfrecord.py's writer (cold and warm, dense and sparse, verify full
and fast) on the benchmark JPEGs and, with ``--compare``, of a naive single-process writer that decodes every
image with TensorFlow and writes the dense reference layout (what the original writer does); ``--rounds``
repeats every variant, interleaved, and the speed-ups are medians of the ratios within each round. Also the size
of the label field, dense vs sparse, and the CPU cost per JPEG of ``verify=full`` against a full-size decode.
"""

from __future__ import annotations

import io
import os
import shutil
import tempfile
import time
from collections.abc import Sequence

import numpy as np
from absl import flags

from tools.benchmarks import photos
from tools.benchmarks.common import Timer, emit, emit_machine, random_tags

FLAGS_USED: tuple[str, ...] = (
    *photos.IMAGE_FLAGS,
    "workers",
    "shards",
    "compare",
    "output_dir",
    "rounds",
)


def naive_writer(list_path: str, image_root: str, output_path: str, *, num_classes: int) -> int:
    """What the original writer does: decode every image with TensorFlow, write the dense label layout."""
    import tensorflow as tf

    from data.labels import annotations
    from data.records import schema

    count = 0
    with tf.io.TFRecordWriter(output_path) as writer:
        for entry in annotations.iter_entries(list_path, num_classes=num_classes):
            data = tf.io.gfile.GFile(os.path.join(image_root, entry.path), "rb").read()
            height, width = tf.io.decode_image(data, channels=3).shape[:2]
            writer.write(
                schema.encode_example(
                    image=data,
                    name=entry.path,
                    height=height,
                    width=width,
                    label=dict(entry.labels),
                    label_format="dense",
                    num_classes=num_classes,
                )
            )
            count += 1
    return count


def label_field_bytes(label_format: str, *, num_classes: int, tags: int) -> int:
    """Bytes the label takes in a serialized record: the record minus the same record without a label."""
    import tensorflow as tf

    from data.records import schema

    label = random_tags(np.random.default_rng(1), num_classes=num_classes, tags=tags)
    record = schema.encode_example(
        image=b"",
        name="x",
        height=1,
        width=1,
        label=label,
        label_format=label_format,
        num_classes=num_classes,
    )
    example = tf.train.Example.FromString(record)
    for key in (schema.LABEL_KEY, schema.LABEL_INDICES_KEY, schema.LABEL_CONFIDENCES_KEY):
        if key in example.features.feature:
            del example.features.feature[key]
    return len(record) - len(example.SerializeToString(deterministic=True))


def _folder_bytes(path: str, suffix: str) -> int:
    return sum(os.path.getsize(os.path.join(path, f)) for f in os.listdir(path) if f.endswith(suffix))


def verify_cost(image_root: str, names: Sequence[str]) -> None:
    """The `writer/verify_cost` line: CPU ms per JPEG of `verify=full` (`prepare_image`, a 1/8-scale decode
    of a kept JPEG) and of a full-size Pillow decode, the check it replaced."""
    from PIL import Image

    from data.pixels import images

    jpegs = photos.read_jpegs(image_root, list(names))

    def full_size_decode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    cost = {}
    for key, check in (
        ("verify_full_ms", lambda data: images.prepare_image(data, verify="full")),
        ("full_size_decode_ms", full_size_decode),
    ):
        with Timer() as t:
            for data in jpegs:
                check(data)
        cost[key] = round(t.cpu / len(jpegs) * 1e3, 3)
    emit("writer/verify_cost", images=len(jpegs), **cost)


def run(f: flags.FlagValues) -> None:
    """Images/s and MB/s of our writer (cold and warm) and, with --compare, of the naive writer."""
    from data.records import record_writer

    emit_machine("writer", crc32c=record_writer.IMPLEMENTATION)
    for label_format in ("dense", "sparse"):
        emit(
            "writer/label_field_bytes",
            label_format=label_format,
            num_classes=f.num_classes,
            tags=f.tags,
            bytes=label_field_bytes(label_format, num_classes=f.num_classes, tags=f.tags),
        )

    started = time.perf_counter()
    list_path, names = photos.benchmark_images(f)
    input_bytes = sum(os.path.getsize(os.path.join(f.image_cache, n)) for n in names)
    emit(
        "writer/images",
        num_images=len(names),
        mean_jpeg_kb=round(input_bytes / len(names) / 1024, 1),
        ready_s=round(time.perf_counter() - started, 2),
    )

    verify_cost(f.image_cache, names[:500])

    output_root = f.output_dir or tempfile.mkdtemp(prefix="mlimages_benchmark_")
    try:

        def report(name: str, seconds: float, out_dir: str, **extra) -> float:
            rate = len(names) / seconds
            emit(
                f"writer/{name}",
                seconds=round(seconds, 2),
                images_per_s=round(rate, 1),
                input_mb_per_s=round(input_bytes / seconds / 1e6, 1),
                output_mb=round(_folder_bytes(out_dir, ".tfrecord") / 1e6, 1),
                **extra,
            )
            return rate

        def ours(label_format: str, workers: int, verify: str, run_kind: str, round_index: int) -> float:
            out_dir = os.path.join(output_root, f"ours-{label_format}-{workers}-{verify}-{run_kind}")
            shutil.rmtree(out_dir, ignore_errors=True)
            t0 = time.perf_counter()
            manifest = photos.our_writer(
                list_path, out_dir, f=f, label_format=label_format, workers=workers, verify=verify
            )
            seconds = time.perf_counter() - t0
            assert manifest["num_records"] == len(names), manifest["num_records"]
            key = f"ours_{label_format}_w{workers}_{verify}_{run_kind}"
            extra = {"label_format": label_format, "workers": workers, "verify": verify, "run": run_kind}
            rate = report(key, seconds, out_dir, **extra, round=round_index)
            shutil.rmtree(out_dir, ignore_errors=True)  # the next run writes ~400 MB again
            return rate

        def naive(round_index: int) -> float:
            out_dir = os.path.join(output_root, "naive")
            os.makedirs(out_dir, exist_ok=True)
            t0 = time.perf_counter()
            count = naive_writer(
                list_path, f.image_cache, os.path.join(out_dir, "naive.tfrecord"), num_classes=f.num_classes
            )
            seconds = time.perf_counter() - t0
            assert count == len(names)
            rate = report(
                "naive_tf_decode_dense", seconds, out_dir, label_format="dense", workers=1, round=round_index
            )
            shutil.rmtree(out_dir, ignore_errors=True)
            return rate

        if f.compare:
            import tensorflow as tf

            tf.io.decode_image(tf.io.read_file(os.path.join(f.image_cache, names[0])))  # Runtime start-up.
        # Cold: includes starting the worker processes (the forkserver). Warm: the forkserver is up, as for
        # every later shard of a long run. Each round runs every variant, the naive writer first in every
        # other round; each speed-up is the median over the rounds of the ratio within a round.
        warm = [
            ("dense", f.workers, "full"),
            ("dense", f.workers, "fast"),
            ("sparse", f.workers, "full"),
            ("sparse", f.workers, "fast"),
            ("dense", 1, "full"),
        ]
        ratios: dict[str, list[float]] = {}
        for round_index in range(f.rounds):
            rates = {}
            if round_index == 0:
                rates[f"ours_dense_w{f.workers}_full_cold"] = ours("dense", f.workers, "full", "cold", 0)
            naive_rate = naive(round_index) if f.compare and round_index % 2 else None
            for label_format, workers, verify in warm:
                rates[f"ours_{label_format}_w{workers}_{verify}_warm"] = ours(
                    label_format, workers, verify, "warm", round_index
                )
            if f.compare and naive_rate is None:
                naive_rate = naive(round_index)
            if naive_rate is not None:
                for key, rate in rates.items():
                    ratios.setdefault(f"{key}_vs_naive", []).append(rate / naive_rate)
        if ratios:
            emit(
                "writer/speedup",
                **{key: round(float(np.median(values)), 2) for key, values in ratios.items()},
                per_round={key: [round(v, 2) for v in values] for key, values in ratios.items()},
                load_average=[round(x, 2) for x in os.getloadavg()],
            )
    finally:
        if f.output_dir is None:
            shutil.rmtree(output_root, ignore_errors=True)
