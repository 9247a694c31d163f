"""What every benchmark shares: the JSON-line output, the machine line, a timer, random tags, the flags.

Every flag is defined here once (`FLAG_DEFINITIONS`) and each subcommand module lists the ones it reads
(`FLAGS_USED`), so that tools/benchmark.py defines only the chosen subcommand's flags: a flag that the
subcommand ignores is an error instead of being silently dropped, and ``<subcommand> --help`` lists what
matters.
"""

from __future__ import annotations

import json
import os
import platform
import sys
import tempfile
import time
from collections.abc import Callable, Iterable

import numpy as np
from absl import flags

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SCRIPT = os.path.join(REPO_ROOT, "tools", "benchmark.py")


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


# The CPU flags that decide which kernels TensorFlow runs (oneDNN's default, AVX-512, AMX for bf16) and
# how fast the CRC of the records is (sse4_2): printed with every figure, since two "x86" machines differ.
_CPU_FLAGS_SHOWN = (
    "sse4_2",
    "avx",
    "avx2",
    "fma",
    "avx512f",
    "avx512_vnni",
    "avx512_bf16",
    "avx_vnni",
    "amx_tile",
    "amx_bf16",
)


def _cpu_flags() -> list[str]:
    """The flags of `_CPU_FLAGS_SHOWN` that /proc/cpuinfo lists (empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith(("flags", "Features")):
                    present = set(line.split(":", 1)[1].split())
                    return [flag for flag in _CPU_FLAGS_SHOWN if flag in present]
    except OSError:
        pass
    return []


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

    Besides the CPU model and count, it gives the CPU flags that matter here and whether TensorFlow runs its
    oneDNN kernels (``onednn``): TensorFlow turns them on by default only on some CPUs, and they alone cut
    the CPU time of a ResNet step 1.4 - 1.5x on the AMD EPYC of docs/BENCHMARKS.md (section 0). `load_tensorflow=False` reads
    TensorFlow's version from the package metadata without importing it (the memory benchmark keeps its
    own process small); ``onednn`` is then only what ``TF_ENABLE_ONEDNN_OPTS`` asks for.
    """
    machine = {
        "nproc": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
        "cpu": _cpu_model(),
        "cpu_flags": _cpu_flags(),
        "tensorflow": _tensorflow_version(),
        "python": sys.version.split()[0],
        "load_average": [round(x, 2) for x in os.getloadavg()],
        "onednn": {"TF_ENABLE_ONEDNN_OPTS": os.environ.get("TF_ENABLE_ONEDNN_OPTS")},
    }
    if load_tensorflow:
        import tensorflow as tf

        from models.resnet import onednn_enabled

        machine["onednn"]["enabled"] = onednn_enabled()
        machine["gpus"] = len(tf.config.list_physical_devices("GPU"))
        machine["intra_op_threads"] = tf.config.threading.get_intra_op_parallelism_threads()  # 0: default
    emit(f"{benchmark}/machine", **machine, **extra)


class Timer:
    """Wall and process CPU time of a block (CPU time is robust to other processes sharing the machine)."""

    def __enter__(self):
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc):
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def multilabel_train_step(f: flags.FlagValues, dist, *, segments: int, wire: str, precision: str = "fp32"):
    """The `TrainStep` of the Horovod benchmarks (`overlap`, `xla_ops`): our ResNet of ``--depth`` with the
    adaptive multi-label loss, `segments` backward segments and `wire` on the all-reduce, seeded."""
    import keras

    from models import losses, resnet
    from training import schedules, train_step

    keras.utils.set_random_seed(0)
    train_step.set_precision(precision)
    model = resnet.build_resnet(int(f.depth), f.num_classes, base_width=f.base_width)
    return train_step.TrainStep(
        model,
        train_step.make_optimizer(precision=precision),
        task="multilabel",
        schedule=schedules.StaircaseSchedule(base_lr=1e-3, decay=1.0, decay_every=1000),
        dist=dist,
        loss=losses.AdaptiveMultiLabelLoss(f.num_classes, seed=1),
        backward_segments=segments,
        allreduce_dtype=wire,
        xla=f.xla,
    )


def random_tags(rng: np.random.Generator, *, num_classes: int, tags: int) -> dict[int, float]:
    """`tags` distinct classes with confidences 1, 0.9 or 0.8, like a line of the release's lists."""
    indices = rng.choice(num_classes, size=min(tags, num_classes), replace=False)
    return {
        int(i): float(c) for i, c in zip(indices, rng.choice([1.0, 0.9, 0.8], size=indices.size), strict=True)
    }


# ---------------------------------------------------------------------------------------------------------
# The flags: each defined once, by name; a subcommand defines the ones it lists.
# ---------------------------------------------------------------------------------------------------------

_IMAGE_CACHE = os.path.join(tempfile.gettempdir(), "mlimages_benchmark_jpegs")
_MEMORY_DIR = os.path.join(tempfile.gettempdir(), "mlimages_benchmark_lists")
# `check`'s floors: one file, each ratio's floor with its reason.
FLOORS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "floors.toml")

FLAG_DEFINITIONS: dict[str, Callable[[flags.FlagValues], object]] = {
    "image_cache": lambda fv: flags.DEFINE_string(
        "image_cache",
        _IMAGE_CACHE,
        "writer, pipeline, download, check, photo_sizes: folder of generated JPEGs (and lists, records), "
        "reused across runs.",
        flag_values=fv,
    ),
    "num_images": lambda fv: flags.DEFINE_integer(
        "num_images",
        2000,
        "writer, pipeline, download: number of JPEGs to generate and write.",
        lower_bound=1,
        flag_values=fv,
    ),
    "image_width": lambda fv: flags.DEFINE_integer(
        "image_width",
        500,
        "writer, pipeline: width of the generated JPEGs (ML-Images photos are ~500x375).",
        flag_values=fv,
    ),
    "image_height": lambda fv: flags.DEFINE_integer(
        "image_height", 375, "writer, pipeline: height of the generated JPEGs.", flag_values=fv
    ),
    "megapixels": lambda fv: flags.DEFINE_list(
        "megapixels",
        ["0.5", "2", "8"],
        "photo_sizes: sizes of the generated 4:3 camera-like JPEGs (quality 90; 8 MP is 3264 x 2448).",
        flag_values=fv,
    ),
    "photos_per_size": lambda fv: flags.DEFINE_integer(
        "photos_per_size",
        120,
        "photo_sizes: JPEGs generated (once, into --image_cache) and written per size.",
        lower_bound=1,
        flag_values=fv,
    ),
    "max_sides": lambda fv: flags.DEFINE_list(
        "max_sides",
        ["0"],
        "photo_sizes: the writer's --max_side values to write each size with (0: off, the original bytes).",
        flag_values=fv,
    ),
    "gpu_images_per_s": lambda fv: flags.DEFINE_float(
        "gpu_images_per_s",
        1300.0,
        "photo_sizes: training images/s one GPU consumes, for the CPU cores per GPU the input needs.",
        lower_bound=0.0,
        flag_values=fv,
    ),
    "workers": lambda fv: flags.DEFINE_integer(
        "workers",
        2,
        "writer, pipeline, download: worker processes of our writer (and of the one pass, img2dataset).",
        lower_bound=1,
        flag_values=fv,
    ),
    "threads": lambda fv: flags.DEFINE_integer(
        "threads",
        16,
        "download: download threads per worker process (the one pass, img2dataset); the downloader of "
        "download-then-write gets workers x threads.",
        lower_bound=1,
        flag_values=fv,
    ),
    "img2dataset_venv": lambda fv: flags.DEFINE_string(
        "img2dataset_venv",
        "/tmp/i2d-venv",
        "download --compare: virtualenv with img2dataset installed (`python3 -m venv DIR && DIR/bin/pip "
        "install img2dataset`); skipped with a message when absent.",
        flag_values=fv,
    ),
    "shards": lambda fv: flags.DEFINE_integer(
        "shards",
        16,
        "writer, pipeline, download, photo_sizes: shards written.",
        lower_bound=1,
        flag_values=fv,
    ),
    "compare": lambda fv: flags.DEFINE_bool(
        "compare", False, "Also measure the subcommand's baseline in the same run.", flag_values=fv
    ),
    "num_classes": lambda fv: flags.DEFINE_integer(
        "num_classes",
        11166,
        "Classes of the labels and of the model head (11,166 in ML-Images).",
        lower_bound=1,
        flag_values=fv,
    ),
    "tags": lambda fv: flags.DEFINE_integer(
        "tags", 9, "Tags per image (ML-Images averages 8.72).", lower_bound=0, flag_values=fv
    ),
    "output_dir": lambda fv: flags.DEFINE_string(
        "output_dir",
        None,
        "writer: where records go (a temporary folder, deleted, by default).",
        flag_values=fv,
    ),
    "batch_size": lambda fv: flags.DEFINE_integer(
        "batch_size",
        32,
        "pipeline, step, loss, photo_sizes: images per batch (per rank).",
        lower_bound=1,
        flag_values=fv,
    ),
    "image_size": lambda fv: flags.DEFINE_integer(
        "image_size",
        224,
        "pipeline, step, loss, photo_sizes: training image side.",
        lower_bound=8,
        flag_values=fv,
    ),
    "steps": lambda fv: flags.DEFINE_integer(
        "steps",
        20,
        "Timed iterations (batches, train steps, loss calls, all-reduces).",
        lower_bound=1,
        flag_values=fv,
    ),
    "warmup": lambda fv: flags.DEFINE_integer(
        "warmup",
        3,
        "Untimed iterations before timing (tracing, compilation, buffers).",
        lower_bound=0,
        flag_values=fv,
    ),
    "rounds": lambda fv: flags.DEFINE_integer(
        "rounds",
        1,
        "writer, pipeline, download, step: measure every variant this many times, interleaved.",
        lower_bound=1,
        flag_values=fv,
    ),
    "label_format": lambda fv: flags.DEFINE_enum(
        "label_format",
        "sparse",
        ["dense", "sparse"],
        "pipeline, photo_sizes: label layout of our records.",
        flag_values=fv,
    ),
    "shuffle_buffer": lambda fv: flags.DEFINE_integer(
        "shuffle_buffer",
        256,
        "pipeline, photo_sizes: shuffle buffer of the pipelines.",
        lower_bound=1,
        flag_values=fv,
    ),
    "stages": lambda fv: flags.DEFINE_bool(
        "stages",
        False,
        "pipeline: also time our pipeline cut after each stage (parse, draws, decode, crop and resize, flip "
        "only), to show where its time goes.",
        flag_values=fv,
    ),
    "image_transport": lambda fv: flags.DEFINE_list(
        "image_transport",
        ["float32"],
        "pipeline: how our pipeline hands over its images (training's --image_transport): uint8 and/or "
        "float32, each a variant timed in the same interleaved rounds, with its bytes per image and per "
        "batch to the device. The first is `ours_<label_format>` (float32 by default, as the original "
        "pipeline's); further ones are `ours_<label_format>_<transport>`.",
        flag_values=fv,
    ),
    "intra_op_threads": lambda fv: flags.DEFINE_integer(
        "intra_op_threads",
        0,
        "TensorFlow's intra-op thread pool size for the whole process (0: TensorFlow's default, one per core).",
        lower_bound=0,
        flag_values=fv,
    ),
    "depth": lambda fv: flags.DEFINE_enum(
        "depth",
        "101",
        ["14", "50", "101", "152"],
        "step, loss, allreduce: ResNet depth (14: tests).",
        flag_values=fv,
    ),
    "base_width": lambda fv: flags.DEFINE_integer(
        "base_width", 64, "step, loss, allreduce: ResNet stem width (64; small for tests).", flag_values=fv
    ),
    "precision": lambda fv: flags.DEFINE_enum(
        "precision", "fp32", ["fp32", "bf16", "fp16"], "step, loss: training precision.", flag_values=fv
    ),
    "xla": lambda fv: flags.DEFINE_bool(
        "xla", False, "step, loss: XLA-compile the forward/backward.", flag_values=fv
    ),
    "reference_model": lambda fv: flags.DEFINE_enum(
        "reference_model",
        "auto",
        ["auto", "resnet50v2", "resnet101v2", "resnet152v2"],
        "step --compare: the keras.applications model (auto: the V2 ResNet of --depth, 101 for depth 14).",
        flag_values=fv,
    ),
    "step_ms": lambda fv: flags.DEFINE_float(
        "step_ms",
        None,
        "loss, allreduce: a step time measured by `step`, instead of measuring it.",
        flag_values=fv,
    ),
    "allreduce_dtypes": lambda fv: flags.DEFINE_list(
        "allreduce_dtypes",
        ["float32"],
        "allreduce: gradient dtypes to reduce (float32, float16, ...).",
        flag_values=fv,
    ),
    "link_gbits": lambda fv: flags.DEFINE_float(
        "link_gbits",
        0.0,
        "overlap: pace every TCP socket of each rank (Gloo's connections) to this many Gbit/s with the "
        "kernel's SO_MAX_PACING_RATE, a slower link than loopback on which sending costs little CPU "
        "(0: not paced).",
        lower_bound=0.0,
        upper_bound=34.0,
        flag_values=fv,
    ),
    "memory_lines": lambda fv: flags.DEFINE_list(
        "memory_lines", ["10000", "1000000"], "memory: sizes of the generated image lists.", flag_values=fv
    ),
    "memory_tools": lambda fv: flags.DEFINE_list(
        "memory_tools",
        ["baseline", "subset", "dataset_stats", "writer_index", "writer_missing_images"],
        "memory: what to measure (baseline: the imports only).",
        flag_values=fv,
    ),
    "memory_dir": lambda fv: flags.DEFINE_string(
        "memory_dir", _MEMORY_DIR, "memory: generated lists.", flag_values=fv
    ),
    "floors": lambda fv: flags.DEFINE_string(
        "floors",
        FLOORS_FILE,
        "check: the file of the ratios' floors, each with its reason.",
        flag_values=fv,
    ),
    "check_only": lambda fv: flags.DEFINE_list(
        "check_only",
        [],
        "check: measure only these ratios (default: all; names as in tools/benchmarks/check.py RATIOS).",
        flag_values=fv,
    ),
    "memory_child": lambda fv: flags.DEFINE_string(
        "memory_child",
        None,
        "memory (internal): run one measurement TOOL:LIST in this process.",
        flag_values=fv,
    ),
}

# Read by tools/benchmark.py itself, whatever the subcommand.
GLOBAL_FLAGS: tuple[str, ...] = ("intra_op_threads",)


def define_flags(names: Iterable[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the named flags (each once, in `FLAG_DEFINITIONS` order) on `flag_values`."""
    wanted = set(names)
    unknown = wanted - FLAG_DEFINITIONS.keys()
    if unknown:
        raise KeyError(f"no such benchmark flag: {sorted(unknown)}")
    for name, define in FLAG_DEFINITIONS.items():
        if name in wanted and name not in flag_values:
            define(flag_values)
