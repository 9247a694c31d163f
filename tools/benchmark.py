r"""Benchmarks, one subcommand each; every measurement is printed as one JSON line on stdout.

    python tools/benchmark.py writer --num_images=3000 --workers=2 --compare
    python tools/benchmark.py pipeline --num_images=3000 --compare --rounds=3
    python tools/benchmark.py augment --steps=20
    python tools/benchmark.py step --depth=101 --batch_size=32 --compare
    python tools/benchmark.py step --depth=101 --batch_size=128 --precision=bf16 --xla --compare  # on a GPU
    python tools/benchmark.py loss
    horovodrun --gloo -np 2 -H localhost:2 python tools/benchmark.py allreduce --step_ms=...
    python tools/benchmark.py memory

Subcommands are functions registered in `SUBCOMMANDS`, each taking no arguments, reading its flags and
calling `emit`. With ``--compare`` each also measures its baseline in the same run, so that the ratios
printed (``.../speedup``, ``.../ratio``) compare runs that shared the machine's state. docs/BENCHMARKS.md
records the figures with the commands that produced them.

- ``writer``: generates (once, cached in ``--image_cache``) real-size JPEGs with photo-like file sizes, then
  times ``data/tfrecord.py``'s writer and, with ``--compare``, a naive single-process writer that decodes
  every image with TensorFlow and writes the dense reference layout (what the original writer does). It also
  reports the size of the label field for ``dense`` vs ``sparse`` at ``--num_classes`` with ``--tags`` tags,
  and the cost per JPEG of ``verify=full`` against a full-size decode.
- ``pipeline``: training images/s of `training.input_pipeline.train_dataset` on records written by our
  writer from the same JPEGs; ``--compare`` adds a port of the original input pipeline and the decode-only
  limit (parallel ``decode_jpeg`` of the same bytes and nothing else).
- ``augment``: single-threaded CPU ms per image of each augmentation branch after the crop, and of the
  rotation alone, ours vs the release's op.
- ``step``: images/s of `training.train_step.TrainStep` (the project's training step) on synthetic inputs
  for our ResNet; ``--compare`` runs the same step on ``keras.applications`` ResNet-V2 of the same depth.
- ``loss``: the adaptive 11,166-class loss (forward and backward w.r.t. the logits) vs plain sigmoid
  cross-entropy, as a fraction of the step time (measured here, or ``--step_ms``).
- ``allreduce``: under ``horovodrun``, the gradient all-reduce of the model's real variable shapes through
  `training.distributed`, and its overhead relative to ``--step_ms``.
- ``memory``: peak RSS of the list tools (tools/subset.py, tools/dataset_stats.py, the writer's list pass)
  on generated image lists of ``--memory_lines`` lines, each run in a fresh process.

Every subcommand starts with a ``<name>/machine`` line (CPU count and model, TensorFlow version).
"""

from __future__ import annotations

import io
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Final

import numpy as np
from absl import app, flags

FLAGS = flags.FLAGS

_CACHE = os.path.join(tempfile.gettempdir(), "mlimages_benchmark_jpegs")
flags.DEFINE_string(
    "image_cache",
    _CACHE,
    "writer, pipeline: folder of generated JPEGs (and lists, records), reused across runs.",
)
flags.DEFINE_integer(
    "num_images", 2000, "writer, pipeline: number of JPEGs to generate and write.", lower_bound=1
)
flags.DEFINE_integer(
    "image_width", 500, "writer, pipeline: width of the generated JPEGs (ML-Images photos are ~500x375)."
)
flags.DEFINE_integer("image_height", 375, "writer, pipeline: height of the generated JPEGs.")
flags.DEFINE_integer("workers", 2, "writer, pipeline: worker processes of our writer.", lower_bound=1)
flags.DEFINE_integer("shards", 16, "writer, pipeline: shards written by our writer.", lower_bound=1)
flags.DEFINE_bool("compare", False, "Also measure the subcommand's baseline in the same run.")
flags.DEFINE_integer(
    "num_classes", 11166, "Classes of the labels and of the model head (11,166 in ML-Images).", lower_bound=1
)
flags.DEFINE_integer("tags", 9, "Tags per image (ML-Images averages 8.72).", lower_bound=0)
flags.DEFINE_string("output_dir", None, "writer: where records go (a temporary folder, deleted, by default).")
flags.DEFINE_integer("batch_size", 32, "pipeline, step, loss: images per batch (per rank).", lower_bound=1)
flags.DEFINE_integer("image_size", 224, "pipeline, step, loss: training image side.", lower_bound=8)
flags.DEFINE_integer(
    "steps", 20, "Timed iterations (batches, train steps, loss calls, all-reduces).", lower_bound=1
)
flags.DEFINE_integer(
    "warmup", 3, "Untimed iterations before timing (tracing, compilation, buffers).", lower_bound=0
)
flags.DEFINE_integer(
    "rounds", 1, "pipeline: measure every variant this many times, interleaved.", lower_bound=1
)
flags.DEFINE_enum("label_format", "sparse", ["dense", "sparse"], "pipeline: label layout of our records.")
flags.DEFINE_integer("shuffle_buffer", 256, "pipeline: shuffle buffer of both pipelines.", lower_bound=1)
flags.DEFINE_bool(
    "stages",
    False,
    "pipeline: also time our pipeline cut after each stage (parse, draws, decode, crop and resize, flip "
    "only), to show where its time goes.",
)
flags.DEFINE_integer(
    "intra_op_threads",
    0,
    "TensorFlow's intra-op thread pool size for the whole process (0: TensorFlow's default, one per core).",
    lower_bound=0,
)
flags.DEFINE_enum(
    "depth", "101", ["14", "50", "101", "152"], "step, loss, allreduce: ResNet depth (14: tests)."
)
flags.DEFINE_integer("base_width", 64, "step, loss, allreduce: ResNet stem width (64; small for tests).")
flags.DEFINE_enum("precision", "fp32", ["fp32", "bf16", "fp16"], "step, loss: training precision.")
flags.DEFINE_bool("xla", False, "step, loss: XLA-compile the forward/backward.")
flags.DEFINE_enum(
    "reference_model",
    "auto",
    ["auto", "resnet50v2", "resnet101v2", "resnet152v2"],
    "step --compare: the keras.applications model (auto: the V2 ResNet of --depth, 101 for depth 14).",
)
flags.DEFINE_float(
    "step_ms", None, "loss, allreduce: a step time measured by `step`, instead of measuring it."
)
flags.DEFINE_list(
    "allreduce_dtypes", ["float32"], "allreduce: gradient dtypes to reduce (float32, float16, ...)."
)
flags.DEFINE_list("memory_lines", ["10000", "1000000"], "memory: sizes of the generated image lists.")
flags.DEFINE_list(
    "memory_tools",
    ["baseline", "subset", "dataset_stats", "writer_index", "writer_missing_images"],
    "memory: what to measure (baseline: the imports only).",
)
flags.DEFINE_string(
    "memory_dir", os.path.join(tempfile.gettempdir(), "mlimages_benchmark_lists"), "memory: generated lists."
)
flags.DEFINE_string("memory_child", None, "memory (internal): run one measurement TOOL:LIST in this process.")


def emit(benchmark: str, **measurement) -> None:
    """Prints one measurement as a JSON line (the tool's output format)."""
    print(json.dumps({"benchmark": benchmark, **measurement}), flush=True)


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _tensorflow_version() -> str:
    from importlib import metadata

    for distribution in ("tensorflow", "tensorflow-cpu", "tf-nightly"):
        try:
            return metadata.version(distribution)
        except metadata.PackageNotFoundError:
            continue
    return "not installed"


def emit_machine(benchmark: str, *, load_tensorflow: bool = True, **extra) -> None:
    """The `<benchmark>/machine` line: where the figures that follow were measured.

    `load_tensorflow=False` reads TensorFlow's version from the package metadata without importing it
    (the memory benchmark keeps its own process small).
    """
    machine = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": _cpu_model(),
        "tensorflow": _tensorflow_version(),
        "python": sys.version.split()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
    }
    if load_tensorflow:
        import tensorflow as tf

        machine["gpus"] = len(tf.config.list_physical_devices("GPU"))
        machine["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()  # 0: default
    emit(f"{benchmark}/machine", **machine, **extra)


class _Timer:
    """Wall and process CPU time of a block (CPU time is robust to other processes sharing the machine)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


# ---------------------------------------------------------------------------------------------------------
# writer
# ---------------------------------------------------------------------------------------------------------


def _random_tags(rng: np.random.Generator, *, num_classes: int, tags: int) -> dict[int, float]:
    indices = rng.choice(num_classes, size=min(tags, num_classes), replace=False)
    return {
        int(i): float(c) for i, c in zip(indices, rng.choice([1.0, 0.9, 0.8], size=indices.size), strict=True)
    }


def _photo_like_jpeg(rng: np.random.Generator, *, width: int, height: int) -> bytes:
    """A JPEG whose size is like a photo's (~100 KB at 500x375): smooth structure plus sensor-like noise."""
    from PIL import Image

    coarse = rng.integers(0, 256, (max(height // 8, 1), max(width // 8, 1), 3), dtype=np.uint8)
    base = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BICUBIC), dtype=np.int16)
    noisy = base + rng.normal(0.0, 12.0, base.shape).astype(np.int16)
    out = io.BytesIO()
    Image.fromarray(np.clip(noisy, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
    return out.getvalue()


def _ensure_images(
    cache: str, *, num_images: int, width: int, height: int, num_classes: int, tags: int
) -> str:
    """Generates the JPEGs and an image list once; returns the list's path."""
    from data import annotations

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
            with open(path, "wb") as f:
                f.write(_photo_like_jpeg(rng, width=width, height=height))
        labels = tuple(sorted(_random_tags(rng, num_classes=num_classes, tags=tags).items()))
        entries.append(annotations.Entry(name, labels, i + 1))
    annotations.write_entries(list_path, entries)
    return list_path


def _naive_writer(list_path: str, image_root: str, output_path: str, *, num_classes: int) -> int:
    """What the original writer does: decode every image with TensorFlow, write the dense label layout."""
    import tensorflow as tf

    from data import annotations, schema

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


def _label_field_bytes(label_format: str, *, num_classes: int, tags: int) -> int:
    """Bytes the label takes in a serialized record: the record minus the same record without a label."""
    import tensorflow as tf

    from data import schema

    label = _random_tags(np.random.default_rng(1), num_classes=num_classes, tags=tags)
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


def _benchmark_images() -> tuple[str, list[str]]:
    """The flags' benchmark JPEGs (generated once into --image_cache): their list's path and file names."""
    list_path = _ensure_images(
        FLAGS.image_cache,
        num_images=FLAGS.num_images,
        width=FLAGS.image_width,
        height=FLAGS.image_height,
        num_classes=FLAGS.num_classes,
        tags=FLAGS.tags,
    )
    with open(list_path, encoding="utf-8") as f:
        return list_path, [line.split("\t", 1)[0] for line in f]


def benchmark_writer() -> None:
    """Images/s and MB/s of our writer (cold and warm) and, with --compare, of the naive writer."""
    emit_machine("writer")
    for label_format in ("dense", "sparse"):
        emit(
            "writer/label_field_bytes",
            label_format=label_format,
            num_classes=FLAGS.num_classes,
            tags=FLAGS.tags,
            bytes=_label_field_bytes(label_format, num_classes=FLAGS.num_classes, tags=FLAGS.tags),
        )

    started = time.perf_counter()
    list_path, names = _benchmark_images()
    input_bytes = sum(os.path.getsize(os.path.join(FLAGS.image_cache, n)) for n in names)
    emit(
        "writer/images",
        num_images=len(names),
        mean_jpeg_kb=round(input_bytes / len(names) / 1024, 1),
        ready_s=round(time.perf_counter() - started, 2),
    )

    _verify_cost(names[:500])

    output_root = FLAGS.output_dir or tempfile.mkdtemp(prefix="mlimages_benchmark_")
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

        # Cold: includes starting the worker processes (one TensorFlow import in the forkserver). Warm: the
        # forkserver is up, as for every later shard of a long run.
        rates = {}
        for label_format, workers, verify, run in (
            ("dense", FLAGS.workers, "full", "cold"),
            ("dense", FLAGS.workers, "full", "warm"),
            ("dense", FLAGS.workers, "fast", "warm"),
            ("sparse", FLAGS.workers, "full", "warm"),
            ("sparse", FLAGS.workers, "fast", "warm"),
            ("dense", 1, "full", "warm"),
        ):
            out_dir = os.path.join(output_root, f"ours-{label_format}-{workers}-{verify}-{run}")
            shutil.rmtree(out_dir, ignore_errors=True)
            t0 = time.perf_counter()
            manifest = _our_writer(
                list_path, out_dir, label_format=label_format, workers=workers, verify=verify
            )
            seconds = time.perf_counter() - t0
            assert manifest["num_records"] == len(names), manifest["num_records"]
            key = f"ours_{label_format}_w{workers}_{verify}_{run}"
            rates[key] = report(
                key, seconds, out_dir, label_format=label_format, workers=workers, verify=verify, run=run
            )

        if FLAGS.compare:
            out_dir = os.path.join(output_root, "naive")
            os.makedirs(out_dir, exist_ok=True)
            import tensorflow as tf

            tf.io.decode_image(
                tf.io.read_file(os.path.join(FLAGS.image_cache, names[0]))
            )  # Runtime start-up.
            t0 = time.perf_counter()
            count = _naive_writer(
                list_path,
                FLAGS.image_cache,
                os.path.join(out_dir, "naive.tfrecord"),
                num_classes=FLAGS.num_classes,
            )
            seconds = time.perf_counter() - t0
            assert count == len(names)
            naive = report("naive_tf_decode_dense", seconds, out_dir, label_format="dense", workers=1)
            emit(
                "writer/speedup", **{f"{key}_vs_naive": round(rate / naive, 2) for key, rate in rates.items()}
            )
    finally:
        if FLAGS.output_dir is None:
            shutil.rmtree(output_root, ignore_errors=True)


# ---------------------------------------------------------------------------------------------------------
# pipeline
# ---------------------------------------------------------------------------------------------------------


def _verify_cost(names: Sequence[str]) -> None:
    """The `writer/verify_cost` line: CPU ms per JPEG of `verify=full` (`prepare_image`, a 1/8-scale decode
    of a kept JPEG) and of a full-size Pillow decode, the check it replaced."""
    from PIL import Image

    from data import tfrecord

    jpegs = []
    for name in names:
        with open(os.path.join(FLAGS.image_cache, name), "rb") as f:
            jpegs.append(f.read())

    def full_size_decode(data: bytes) -> None:
        with Image.open(io.BytesIO(data)) as image:
            image.load()

    cost = {}
    for key, check in (
        ("verify_full_ms", lambda data: tfrecord.prepare_image(data, verify="full")),
        ("full_size_decode_ms", full_size_decode),
    ):
        with _Timer() as t:
            for data in jpegs:
                check(data)
        cost[key] = round(t.cpu / len(jpegs) * 1e3, 3)
    emit("writer/verify_cost", images=len(jpegs), **cost)


def _our_writer(list_path: str, out_dir: str, *, label_format: str, workers: int, verify: str) -> dict:
    """`data.tfrecord.write_dataset` of the benchmark images into `out_dir` (resumes what is there)."""
    from data import tfrecord

    return tfrecord.write_dataset(
        image_list=list_path,
        image_root=FLAGS.image_cache,
        output_dir=out_dir,
        label_format=label_format,
        num_classes=FLAGS.num_classes,
        shards=FLAGS.shards,
        workers=workers,
        verify=verify,
        progress=False,
    )


def _cached_records(list_path: str, label_format: str) -> str:
    """Our writer's records of the benchmark images (written once into the image cache; resumable)."""
    name = os.path.basename(list_path).removeprefix("list-").removesuffix(".txt")
    out_dir = os.path.join(FLAGS.image_cache, f"records-{name}-{label_format}-{FLAGS.shards}")
    _our_writer(list_path, out_dir, label_format=label_format, workers=FLAGS.workers, verify="fast")
    return out_dir


def release_rotate(image, transform):
    """`tf.contrib.image.rotate`'s op on one [H, W, C] image: nearest neighbour, zero fill, same size."""
    import tensorflow as tf

    return tf.raw_ops.ImageProjectiveTransformV3(
        images=image[tf.newaxis],
        transforms=transform[tf.newaxis],
        output_shape=tf.shape(image)[:2],
        fill_value=0.0,
        interpolation="NEAREST",
        fill_mode="CONSTANT",
    )[0]


def original_pipeline(
    files: Sequence[str], *, batch_size: int, image_size: int, num_classes: int, shuffle_buffer: int
):
    """A port of the release's input pipeline (train.py `input_fn` + image_preprocessing.py), TF2 ops.

    Sequential `flat_map` over the (shuffled) files, one `map` with 5 parallel calls that parses one record,
    decodes the WHOLE image, converts it to float and only then crops, resizes, flips, rotates and distorts
    the colours with stateful random ops; `prefetch(batch_size)`, a shuffle of decoded images, `batch`.
    Records are the reference dense layout. One change: `repeat` is on the file list rather than after the
    image shuffle, so that a benchmark-sized dataset does not refill the shuffle buffer every epoch (on
    17.6M images that refill is negligible).
    """
    import math

    import tensorflow as tf

    spec = {
        "width": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "height": tf.io.FixedLenFeature([], tf.int64, default_value=0),
        "image": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "label": tf.io.FixedLenFeature([], tf.string, default_value=""),
        "name": tf.io.FixedLenFeature([], tf.string, default_value=""),
    }

    def rotate(image, angle):  # tf.contrib.image.rotate: nearest neighbour, zero fill
        height, width = float(image_size), float(image_size)
        cos, sin = tf.cos(angle), tf.sin(angle)
        x_offset = ((width - 1) - (cos * (width - 1) - sin * (height - 1))) / 2.0
        y_offset = ((height - 1) - (sin * (width - 1) + cos * (height - 1))) / 2.0
        return release_rotate(image, tf.stack([cos, -sin, x_offset, sin, cos, y_offset, 0.0, 0.0]))

    def color_ordering_0(image):
        image = tf.image.random_brightness(image, max_delta=32.0 / 255.0)
        image = tf.image.random_saturation(image, lower=0.5, upper=1.5)
        image = tf.image.random_hue(image, max_delta=0.2)
        return tf.image.random_contrast(image, lower=0.5, upper=1.5)

    def color_ordering_1(image):
        image = tf.image.random_brightness(image, max_delta=32.0 / 255.0)
        image = tf.image.random_contrast(image, lower=0.5, upper=1.5)
        image = tf.image.random_saturation(image, lower=0.5, upper=1.5)
        return tf.image.random_hue(image, max_delta=0.2)

    def parse(value):
        parsed = tf.io.parse_single_example(value, spec)
        image = tf.image.decode_image(tf.reshape(parsed["image"], []), 3, expand_animations=False)
        image = tf.image.convert_image_dtype(image, tf.float32)
        thread_id = tf.random.uniform([], minval=0, maxval=3, dtype=tf.int32)
        begin, size, _ = tf.image.sample_distorted_bounding_box(
            tf.shape(image),
            bounding_boxes=tf.zeros([1, 0, 4]),
            min_object_covered=0.7,
            aspect_ratio_range=[0.75, 1.33],
            area_range=[0.7, 1.0],
            max_attempts=100,
            use_image_if_no_bounding_boxes=True,
        )
        image = tf.slice(image, begin, size)
        image = tf.compat.v1.image.resize_images(image, [image_size, image_size])
        image.set_shape([image_size, image_size, 3])
        image = tf.image.random_flip_left_right(image)
        angle = tf.random.uniform([], minval=-45 * math.pi / 180, maxval=45 * math.pi / 180)
        image = tf.cond(tf.equal(thread_id, 0), lambda: rotate(image, angle), lambda: image)
        image = tf.cond(tf.equal(thread_id, 0), lambda: color_ordering_0(image), lambda: image)
        image = tf.cond(tf.equal(thread_id, 1), lambda: color_ordering_1(image), lambda: image)
        image = tf.clip_by_value(image, 0.0, 1.0)
        image = tf.reshape((image - 0.5) * 2.0, [image_size, image_size, 3])
        label = tf.reshape(tf.io.decode_raw(parsed["label"], tf.float32), [num_classes])
        return image, label

    ds = tf.data.Dataset.from_tensor_slices(list(files)).shuffle(len(files), seed=1).repeat()
    ds = ds.flat_map(tf.data.TFRecordDataset)
    ds = ds.map(parse, num_parallel_calls=5).prefetch(batch_size)
    return ds.shuffle(shuffle_buffer).batch(batch_size)


def decode_only(jpegs: Sequence[bytes], *, batch_size: int):
    """The decode-only limit: parallel `decode_jpeg` of the same bytes from memory and nothing else."""
    import tensorflow as tf

    ds = tf.data.Dataset.from_tensor_slices(list(jpegs)).repeat()
    # The shape depends on the decoded tensor, so the decode cannot be pruned.
    ds = ds.map(lambda b: tf.shape(tf.io.decode_jpeg(b, channels=3)), num_parallel_calls=tf.data.AUTOTUNE)
    return ds.batch(batch_size).prefetch(tf.data.AUTOTUNE)


PIPELINE_STAGES: Final = ("parse", "draws", "decode", "crop")


def _pipeline_prefix(source, stage: str):
    """Our training pipeline (`input_pipeline.train_dataset`'s records, shuffle, parse, element seeds and
    batching) with the per-image work cut after `stage`: "parse" (nothing per image), "draws" (+ the
    augmentation draws), "decode" (+ the JPEG decode) or "crop" (+ the draws, crop and resize)."""
    import tensorflow as tf

    from data import preprocessing
    from training import input_pipeline

    ds = input_pipeline._records(source, num_shards=1, shard_index=0, training=True, seed=0)
    ds = input_pipeline._parse_in_batches(ds.shuffle(FLAGS.shuffle_buffer, seed=1), source)
    stream = tf.constant([0, 0], tf.int64)
    pretraining = {"area_cover": 0.7, "object_cover": 0.7}

    def per_image(index, element):
        image_bytes = element[0]
        if stage == "parse":
            return tf.strings.length(image_bytes)
        if stage == "decode":
            return tf.shape(preprocessing._decode_full(image_bytes))
        decisions = preprocessing._augment_decisions(tf.random.experimental.stateless_fold_in(stream, index))
        if stage == "draws":  # every draw feeds the output, so that none is pruned
            draws = [tf.reduce_sum(tf.cast(value, tf.float32)) for value in decisions.values()]
            return tf.strings.length(image_bytes) + tf.cast(tf.add_n(draws), tf.int32)
        return preprocessing._train_crop(image_bytes, decisions, image_size=FLAGS.image_size, **pretraining)

    ds = ds.enumerate().map(per_image, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    ds = ds.batch(FLAGS.batch_size, drop_remainder=True)
    return ds.prefetch(tf.data.AUTOTUNE).with_options(input_pipeline._pipeline_options())


def _time_batches(dataset, *, batch_size: int, warmup: int, steps: int) -> dict:
    """Images/s (wall) and CPU ms per image of `steps` batches after `warmup` batches."""
    iterator = iter(dataset)
    for _ in range(warmup):
        next(iterator)
    with _Timer() as t:
        for _ in range(steps):
            next(iterator)
    images = steps * batch_size
    return {
        "images_per_s": round(images / t.wall, 1),
        "cpu_ms_per_image": round(t.cpu / images * 1e3, 3),
        "seconds": round(t.wall, 2),
        "images": images,
    }


def benchmark_pipeline() -> None:
    """Training images/s of our input pipeline and, with --compare, of the original one and of decoding."""
    from training import input_pipeline

    emit_machine("pipeline")
    list_path, names = _benchmark_images()
    jpegs = []
    for name in names:
        with open(os.path.join(FLAGS.image_cache, name), "rb") as f:
            jpegs.append(f.read())
    common = {"batch_size": FLAGS.batch_size, "image_size": FLAGS.image_size}
    emit(
        "pipeline/setup",
        num_images=len(jpegs),
        mean_jpeg_kb=round(sum(map(len, jpegs)) / len(jpegs) / 1024, 1),
        image=f"{FLAGS.image_width}x{FLAGS.image_height}",
        shards=FLAGS.shards,
        shuffle_buffer=FLAGS.shuffle_buffer,
        **common,
    )

    def ours(label_format: str):
        source = input_pipeline.tfrecord_source(
            _cached_records(list_path, label_format), "train", num_classes=FLAGS.num_classes
        )
        return input_pipeline.train_dataset(source, seed=0, shuffle_buffer=FLAGS.shuffle_buffer, **common)

    variants: dict[str, Callable[[], object]] = {
        f"ours_{FLAGS.label_format}": lambda: ours(FLAGS.label_format)
    }
    if FLAGS.stages:
        stage_source = input_pipeline.tfrecord_source(
            _cached_records(list_path, FLAGS.label_format), "train", num_classes=FLAGS.num_classes
        )
        for stage in PIPELINE_STAGES:
            variants[f"stage_{stage}"] = lambda stage=stage: _pipeline_prefix(stage_source, stage)
        variants["stage_flip_only"] = lambda: input_pipeline.train_dataset(
            stage_source, seed=0, shuffle_buffer=FLAGS.shuffle_buffer, distort=False, **common
        )
    if FLAGS.compare:
        other = "dense" if FLAGS.label_format == "sparse" else "sparse"
        variants[f"ours_{other}"] = lambda: ours(other)
        dense_files = input_pipeline.tfrecord_source(
            _cached_records(list_path, "dense"), "train", num_classes=FLAGS.num_classes
        ).files
        variants["original_dense"] = lambda: original_pipeline(
            dense_files, num_classes=FLAGS.num_classes, shuffle_buffer=FLAGS.shuffle_buffer, **common
        )
        variants["decode_only"] = lambda: decode_only(jpegs, batch_size=FLAGS.batch_size)
    datasets = {name: build() for name, build in variants.items()}  # all records written before timing
    results: dict[str, list[dict]] = {name: [] for name in datasets}
    for round_index in range(FLAGS.rounds):
        order = list(datasets) if round_index % 2 == 0 else list(datasets)[::-1]
        for name in order:
            result = _time_batches(
                datasets[name], batch_size=FLAGS.batch_size, warmup=FLAGS.warmup, steps=FLAGS.steps
            )
            results[name].append(result)
            emit(f"pipeline/{name}", round=round_index, **result)
    if FLAGS.compare:
        rate = {name: float(np.median([r["images_per_s"] for r in rs])) for name, rs in results.items()}
        cpu = {name: float(np.median([r["cpu_ms_per_image"] for r in rs])) for name, rs in results.items()}
        main = f"ours_{FLAGS.label_format}"
        emit(
            "pipeline/speedup",
            ours_vs_original=round(rate[main] / rate["original_dense"], 2),
            ours_fraction_of_decode_only=round(rate[main] / rate["decode_only"], 2),
            ours_dense_vs_original=round(rate["ours_dense"] / rate["original_dense"], 2),
            cpu_ms_per_image=cpu,
            targets={"ours_vs_original": 1.5, "ours_fraction_of_decode_only": 0.7},
        )


def benchmark_augment() -> None:
    """CPU ms per image of each augmentation branch of `preprocessing.train_transform` after the crop, and
    of the rotation alone, ours (the XLA gather) vs the release's op (ImageProjectiveTransformV3); one
    thread, --batch_size random --image_size crops per timed call, --steps calls after --warmup."""
    import tensorflow as tf

    from data import preprocessing as pre

    tf.config.threading.set_intra_op_parallelism_threads(1)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    emit_machine("augment")
    size, batch = FLAGS.image_size, FLAGS.batch_size
    rng = np.random.default_rng(0)
    crops = tf.constant(rng.uniform(0, 255, (batch, size, size, 3)).astype(np.float32))
    flips = tf.constant(rng.uniform(size=batch) < 0.5)
    colors = tf.constant(
        np.stack(
            [
                rng.uniform(-pre.BRIGHTNESS_MAX_DELTA, pre.BRIGHTNESS_MAX_DELTA, batch),
                rng.uniform(*pre.SATURATION_RANGE, batch),
                rng.uniform(-pre.HUE_MAX_DELTA, pre.HUE_MAX_DELTA, batch),
                rng.uniform(*pre.CONTRAST_RANGE, batch),
            ],
            axis=1,
        ).astype(np.float32)
    )
    angle_max = pre.MAX_ROTATION_DEGREES * np.pi / 180
    transforms = tf.stack(
        [
            pre._rotation_transform(size, tf.constant(a, tf.float32))
            for a in rng.uniform(-1, 1, batch) * angle_max
        ]
    )

    @tf.function(jit_compile=True)
    def gather(image, source):  # as `_augment_branch_0` does, inside XLA
        return tf.gather(tf.concat([tf.reshape(image, [-1, 3]), tf.zeros([1, 3])], axis=0), source)

    def our_rotation(i):
        return gather(crops[i], pre._rotation_source_xla(transforms[i], size, size))

    def release_rotation(i):
        return release_rotate(crops[i], transforms[i])

    def branch_0(i):
        source = pre._rotation_source_xla(transforms[i], size, size)
        return pre._augment_branch_0(crops[i], flips[i], source, colors[i])

    variants = {
        "branch_0": branch_0,
        "branch_1": lambda i: pre._augment_branch_1(crops[i], flips[i], colors[i]),
        "branch_2": lambda i: pre._augment_branch_2(crops[i], flips[i]),
        "rotation_ours": our_rotation,
        "rotation_release_op": release_rotation,
    }
    for name, one in variants.items():
        # The images' sums feed the output, so that no image's work is pruned.
        run = tf.function(lambda one=one: tf.add_n([tf.reduce_sum(one(i)) for i in range(batch)]))
        for _ in range(FLAGS.warmup):
            run().numpy()
        with _Timer() as t:
            for _ in range(FLAGS.steps):
                run().numpy()
        emit(f"augment/{name}", cpu_ms_per_image=round(t.cpu / (FLAGS.steps * batch) * 1e3, 3))


# ---------------------------------------------------------------------------------------------------------
# step and loss
# ---------------------------------------------------------------------------------------------------------


def synthetic_batch(*, batch_size: int, image_size: int, num_classes: int, tags: int, seed: int = 0):
    """Images in [-1, 1] and dense multi-label targets with `tags` tags of confidence 1, 0.9 or 0.8."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    labels = np.zeros([batch_size, num_classes], np.float32)
    for row in labels:
        for index, confidence in _random_tags(rng, num_classes=num_classes, tags=tags).items():
            row[index] = confidence
    images = tf.random.stateless_uniform([batch_size, image_size, image_size, 3], [seed, 1], -1.0, 1.0)
    return images, tf.constant(labels)


def _reference_model_name(depth: int) -> str:
    if FLAGS.reference_model != "auto":
        return FLAGS.reference_model
    return {50: "resnet50v2", 152: "resnet152v2"}.get(depth, "resnet101v2")


def build_model(kind: str, *, depth: int, num_classes: int, image_size: int):
    """Our ResNet (`ours`) or a keras.applications ResNet-V2 without weights (`keras`), float32 logits."""
    import keras

    from models import resnet

    shape = (image_size, image_size, 3)
    if kind == "ours":
        return resnet.build_resnet(depth, num_classes, base_width=FLAGS.base_width, input_shape=shape)
    constructor = {
        "resnet50v2": keras.applications.ResNet50V2,
        "resnet101v2": keras.applications.ResNet101V2,
        "resnet152v2": keras.applications.ResNet152V2,
    }[_reference_model_name(depth)]
    return constructor(weights=None, input_shape=shape, classes=num_classes, classifier_activation=None)


def time_train_step(
    kind: str, *, depth: int, batch_size: int, image_size: int, precision: str, xla: bool
) -> dict:
    """Images/s of `training.train_step.TrainStep` (multi-label task, adaptive loss) on one synthetic batch.

    Both models go through exactly the same step object, optimizer and loss, so the ratio isolates the
    model.
    """
    import keras

    from models import losses
    from training import train_step

    train_step.set_precision(precision)
    try:
        model = build_model(kind, depth=depth, num_classes=FLAGS.num_classes, image_size=image_size)
        step = train_step.TrainStep(
            model,
            train_step.make_optimizer(precision=precision),
            task="multilabel",
            schedule=lambda global_step: 1e-4,
            loss=losses.AdaptiveMultiLabelLoss(FLAGS.num_classes),
            xla=xla,
        )
        images, labels = synthetic_batch(
            batch_size=batch_size, image_size=image_size, num_classes=FLAGS.num_classes, tags=FLAGS.tags
        )
        with _Timer() as first:
            float(step(images, labels)["loss"])  # tracing (and XLA compilation) happen here
        for _ in range(max(FLAGS.warmup - 1, 0)):
            float(step(images, labels)["loss"])
        with _Timer() as t:
            for _ in range(FLAGS.steps):
                out = step(images, labels)
            float(out["loss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {
        "model": model.name,
        "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "images_per_s": round(FLAGS.steps * batch_size / t.wall, 2),
        "ms_per_step": round(t.wall / FLAGS.steps * 1e3, 1),
        "cpu_ms_per_step": round(t.cpu / FLAGS.steps * 1e3, 1),
        "first_step_s": round(first.wall, 1),
        "steps": FLAGS.steps,
    }


def _step_settings() -> dict:
    return {
        "depth": int(FLAGS.depth),
        "batch_size": FLAGS.batch_size,
        "image_size": FLAGS.image_size,
        "precision": FLAGS.precision,
        "xla": FLAGS.xla,
    }


def benchmark_step() -> None:
    """Train-step images/s of our ResNet and, with --compare, of the Keras ResNet-V2 in the same step."""
    emit_machine("step")
    settings = _step_settings()
    common = {**settings, "num_classes": FLAGS.num_classes, "base_width": FLAGS.base_width}
    ours = time_train_step("ours", **settings)
    emit("step/ours", **common, **ours)
    if FLAGS.compare:
        reference = time_train_step("keras", **settings)
        emit("step/keras_reference", **common, **reference)
        emit(
            "step/ratio",
            ours_vs_keras_reference=round(ours["images_per_s"] / reference["images_per_s"], 3),
            target=0.95,
        )


def benchmark_loss() -> None:
    """The adaptive loss (class weights + weighted sigmoid CE, forward and backward w.r.t. the logits) vs
    plain sigmoid cross-entropy, and both as a fraction of the train step."""
    import tensorflow as tf

    from models import losses

    emit_machine("loss")
    num_classes, batch_size = FLAGS.num_classes, FLAGS.batch_size
    _, labels = synthetic_batch(batch_size=batch_size, image_size=8, num_classes=num_classes, tags=FLAGS.tags)
    logits = tf.random.stateless_normal([batch_size, num_classes], [0, 2])
    adaptive = losses.AdaptiveMultiLabelLoss(num_classes)

    @tf.function
    def ours(labels, logits):
        weights = adaptive.class_weights(labels)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = adaptive(labels, logits, weights)
        return value, tape.gradient(value, logits)

    @tf.function
    def plain(labels, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        return value, tape.gradient(value, logits)

    calls = max(FLAGS.steps * 10, 100)  # a loss call takes about a millisecond: time many
    timings = {}
    for name, fn in (("adaptive", ours), ("plain_sigmoid", plain)):
        for _ in range(FLAGS.warmup + 1):
            fn(labels, logits)[1].numpy()
        with _Timer() as t:
            for _ in range(calls):
                out = fn(labels, logits)
            out[1].numpy()
        timings[name] = t.wall / calls * 1e3
        emit(
            f"loss/{name}",
            ms=round(timings[name], 3),
            cpu_ms=round(t.cpu / calls * 1e3, 3),
            batch_size=batch_size,
            num_classes=num_classes,
            calls=calls,
        )
    if FLAGS.step_ms:
        step_ms, source = FLAGS.step_ms, "--step_ms"
    else:
        settings = _step_settings()
        step_ms, source = time_train_step("ours", **settings)["ms_per_step"], f"measured: {settings}"
    emit(
        "loss/fraction_of_step",
        step_ms=step_ms,
        step_source=source,
        adaptive_fraction=round(timings["adaptive"] / step_ms, 5),
        extra_over_plain_fraction=round((timings["adaptive"] - timings["plain_sigmoid"]) / step_ms, 5),
        target=0.05,
    )


# ---------------------------------------------------------------------------------------------------------
# allreduce
# ---------------------------------------------------------------------------------------------------------


def benchmark_allreduce() -> None:
    """Time of one gradient all-reduce (`Distributed.average_gradients`) with the model's variable shapes."""
    import tensorflow as tf

    from models import resnet
    from training import distributed

    dist = distributed.init()
    if dist.is_chief:
        emit_machine(
            "allreduce",
            ranks=dist.size,
            fusion_threshold_bytes=os.environ.get("HOROVOD_FUSION_THRESHOLD", "default (64 MiB)"),
            cycle_time_ms=os.environ.get("HOROVOD_CYCLE_TIME", "default"),
        )
    model = resnet.build_resnet(int(FLAGS.depth), FLAGS.num_classes, base_width=FLAGS.base_width)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    del model
    elements = int(sum(np.prod(s) for s in shapes))
    for dtype_name in FLAGS.allreduce_dtypes:
        dtype = tf.as_dtype(dtype_name)
        gradients = [
            tf.cast(tf.random.stateless_normal(s, [dist.rank, i]), dtype) for i, s in enumerate(shapes)
        ]
        reduce = tf.function(dist.average_gradients)
        for _ in range(FLAGS.warmup + 1):
            reduce(gradients)[-1].numpy()
        dist.barrier()
        with _Timer() as t:
            for _ in range(FLAGS.steps):
                out = reduce(gradients)
            out[-1].numpy()
        seconds = float(dist.allreduce_mean(tf.constant(t.wall / FLAGS.steps, tf.float64)))
        size = elements * dtype.size
        if dist.is_chief:
            bus = 2 * (dist.size - 1) / dist.size * size  # bytes each rank sends in a ring all-reduce
            result = {
                "depth": int(FLAGS.depth),
                "num_classes": FLAGS.num_classes,
                "dtype": dtype_name,
                "tensors": len(shapes),
                "elements": elements,
                "mb": round(size / 1e6, 1),
                "ranks": dist.size,
                "ms": round(seconds * 1e3, 1),
                "algorithm_gb_per_s": round(size / seconds / 1e9, 3),
                "bus_gb_per_s": round(bus / seconds / 1e9, 3),
                "steps": FLAGS.steps,
            }
            if FLAGS.step_ms:
                result.update(
                    step_ms=FLAGS.step_ms, overhead_fraction=round(seconds * 1e3 / FLAGS.step_ms, 4)
                )
            emit("allreduce/gradients", **result)


# ---------------------------------------------------------------------------------------------------------
# memory
# ---------------------------------------------------------------------------------------------------------

_REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def synthetic_image_list(path: str, *, num_lines: int, num_classes: int, tags: float, seed: int = 0) -> str:
    """Writes (once) an image list like the release's: `name idx:conf ...`, 1 + Poisson(tags - 1) distinct
    sorted tags per line, confidences 1 (80 %), 0.9 or 0.8."""
    if os.path.exists(path):
        return path
    os.makedirs(os.path.dirname(path), exist_ok=True)
    rng = np.random.default_rng(seed)
    tmp = f"{path}.tmp-{os.getpid()}"
    block = 100_000
    with open(tmp, "w", encoding="utf-8") as f:
        for start in range(0, num_lines, block):
            n = min(block, num_lines - start)
            counts = np.minimum(1 + rng.poisson(max(tags - 1.0, 0.0), n), num_classes)
            lines = [""] * n
            for k in np.unique(counts):
                rows = np.flatnonzero(counts == k)
                # k distinct sorted indices: sorted draws from [0, C - k] plus 0, 1, ..., k - 1.
                indices = np.sort(rng.integers(0, num_classes - k + 1, (rows.size, k)), axis=1) + np.arange(k)
                confidences = rng.choice(["1", "0.9", "0.8"], size=(rows.size, k), p=[0.8, 0.1, 0.1])
                for row, idx, conf in zip(rows, indices.tolist(), confidences.tolist(), strict=True):
                    tag_text = "\t".join(f"{i}:{c}" for i, c in zip(idx, conf, strict=True))
                    lines[row] = f"train/{start + row:08d}.jpg\t{tag_text}\n"
            f.write("".join(lines))
    os.replace(tmp, path)
    return path


def _max_rss_mb(usage) -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    return usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM on Linux (ru_maxrss also counts the parent's RSS at the fork that
    spawned the process, which exec does not reset), ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _max_rss_mb(resource.getrusage(resource.RUSAGE_SELF))


def _memory_child(tool: str, list_path: str) -> None:
    """Runs one list tool on `list_path` in this (fresh) process and prints its RSS before and after."""
    sys.path.insert(0, _REPO_ROOT)  # tools/ is not an installed package
    # Each tool imports what it imports when run on its own: the list tools do not load TensorFlow, the
    # writer does.
    if tool == "subset":
        from tools import subset
    elif tool == "dataset_stats":
        from tools import dataset_stats
    elif tool.startswith("writer"):
        from data import tfrecord
    else:
        from data import annotations  # noqa: F401  (the common import of the list tools)

    after_imports = _peak_rss_mb()
    work_dir = tempfile.mkdtemp(prefix="mlimages_memory_")
    started = time.perf_counter()
    try:
        if tool == "subset":
            result = subset.subset_list(
                list_path,
                os.path.join(work_dir, "subset.txt"),
                config=subset.SubsetConfig(fraction=0.5, max_per_class=100, seed=0),
                num_classes=FLAGS.num_classes,
            )
            detail = {"kept": result.kept}
        elif tool == "dataset_stats":
            stats = dataset_stats.stats_from_list(list_path, num_classes=FLAGS.num_classes)
            detail = {"avg_tags_per_image": round(stats["avg_tags_per_image"], 3)}
        elif tool == "writer_index":
            index = tfrecord.index_list(list_path, 1024)
            detail = {"shards": 1024, "lines_indexed": index.num_lines}
        elif tool == "writer_missing_images":
            # The whole writer on a list whose images are all missing: every line is a skipped entry, which
            # the sidecars and the manifest list (with its reason).
            manifest = tfrecord.write_dataset(
                image_list=list_path,
                image_root=os.path.join(work_dir, "no-images"),
                output_dir=os.path.join(work_dir, "records"),
                label_format="sparse",
                num_classes=FLAGS.num_classes,
                shards=16,
                workers=1,
                progress=False,
            )
            detail = {"num_skipped": manifest["num_skipped"]}
        elif tool == "baseline":
            detail = {}
        else:
            raise app.UsageError(f"unknown memory tool {tool!r}")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(
        json.dumps(
            {
                "after_imports_mb": round(after_imports, 1),
                "peak_self_mb": round(_peak_rss_mb(), 1),
                "seconds": round(time.perf_counter() - started, 2),
                **detail,
            }
        ),
        flush=True,
    )


def benchmark_memory() -> None:
    """Peak RSS of each list tool on each generated list, every measurement in a fresh process."""
    emit_machine("memory", load_tensorflow=False)
    sizes = [int(n) for n in FLAGS.memory_lines]
    peaks: dict[str, dict[int, float]] = {tool: {} for tool in FLAGS.memory_tools}
    for num_lines in sizes:
        path = synthetic_image_list(
            os.path.join(FLAGS.memory_dir, f"list-{num_lines}-{FLAGS.num_classes}-{FLAGS.tags}.txt"),
            num_lines=num_lines,
            num_classes=FLAGS.num_classes,
            tags=FLAGS.tags,
        )
        emit("memory/list", num_lines=num_lines, mb=round(os.path.getsize(path) / 1e6, 1), path=path)
        for tool in FLAGS.memory_tools:
            cmd = [
                sys.executable,
                os.path.abspath(__file__),
                "memory",
                f"--memory_child={tool}:{path}",
                f"--num_classes={FLAGS.num_classes}",
            ]
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
            with tempfile.TemporaryFile("w+") as stderr:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
                stdout = proc.stdout.read()
                proc.stdout.close()
                # wait4: this child's own rusage. Its ru_maxrss includes this process's RSS when the child
                # was spawned, so the child reports its VmHWM as the peak.
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                if proc.returncode != 0:
                    stderr.seek(0)
                    raise RuntimeError(
                        f"{tool} on {path} failed ({proc.returncode}):\n{stderr.read()[-3000:]}"
                    )
            child = json.loads(stdout.strip().splitlines()[-1])
            peak = child["peak_self_mb"]
            peaks[tool][num_lines] = peak
            emit(
                f"memory/{tool}",
                num_lines=num_lines,
                peak_rss_mb=peak,
                rss_after_imports_mb=child["after_imports_mb"],
                working_mb=round(peak - child["after_imports_mb"], 1),
                wait4_max_rss_mb=round(_max_rss_mb(usage), 1),
                **{k: v for k, v in child.items() if k not in ("peak_self_mb", "after_imports_mb")},
            )
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        emit(
            "memory/ratio",
            lines_ratio=large // small,
            **{tool: round(p[large] / p[small], 2) for tool, p in peaks.items() if small in p and large in p},
        )


# ---------------------------------------------------------------------------------------------------------

SUBCOMMANDS: dict[str, Callable[[], None]] = {
    "writer": benchmark_writer,
    "pipeline": benchmark_pipeline,
    "augment": benchmark_augment,
    "step": benchmark_step,
    "loss": benchmark_loss,
    "allreduce": benchmark_allreduce,
    "memory": benchmark_memory,
}


def main(argv: Sequence[str]) -> None:
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        raise app.UsageError(f"usage: benchmark.py {{{'|'.join(SUBCOMMANDS)}}} [--flags]")
    if FLAGS.intra_op_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(FLAGS.intra_op_threads)
    if argv[1] == "memory" and FLAGS.memory_child:
        tool, _, path = FLAGS.memory_child.partition(":")
        _memory_child(tool, path)
        return
    SUBCOMMANDS[argv[1]]()


if __name__ == "__main__":
    app.run(main)
