"""``check``: the regression guard. Each headline ratio of docs/BENCHMARKS.md, measured side by side at a small
size, against a floor; exits 1 with one line per ratio below its floor. `.ci/run` runs it.

    python tools/benchmark.py check
    python tools/benchmark.py check --check_only=record_framing_vs_tf,writer_dense_vs_naive

Every figure is a ratio of two variants timed in the same process, alternately, each side's best time over
the rounds: a ratio survives a machine shared with other jobs far better than an absolute rate does, and
taking each side's best drops the rounds that another job slowed down. Where both sides run in this
process (`CPU_TIME`), the ratio is of process CPU time, which other jobs on the cores hardly move; the
multi-process ones (the 2-worker writer, the download) are of wall time, as their headline figures are. The
floors, each with the reason for its value, are in ONE file, tools/benchmarks/floors.toml (``--floors``):
well under today's figures so that noise does not fail the check, and above what the same code made 2x
slower gives.

The ratios (`RATIOS`; higher is better for each):

- ``record_framing_vs_tf``: data/records/record_writer.py's `RecordWriter` against ``tf.io.TFRecordWriter``, 64
  records of 140 KB to /dev/null: the framing and its CRC-32C alone;
- ``writer_dense_vs_naive``, ``writer_sparse_vs_naive``: data/tfrecord.py's writer (2 workers, the default
  ``verify=full``) against the naive TensorFlow-decoding writer (one process), 600 generated JPEGs, wall;
- ``writer_one_worker_vs_naive``: the same writer with one worker (in this process), dense, CPU time: the
  per-image cost, whatever the load;
- ``pipeline_vs_original``: the training input pipeline (sparse records) against the port of the release's
  (dense records), the records the writer just wrote, batch 16 at 224;
- ``step_vs_keras``: our ResNet-50 train step against ``keras.applications.ResNet50V2`` in the same
  `TrainStep`, batch 4 at 64 px with 1,000 classes;
- ``loss_plain_vs_adaptive``: plain sigmoid cross-entropy over the adaptive 11,166-class loss (forward and
  backward, batch 32): the loss's share of a step moves only if the loss gets slower;
- ``download_one_pass_vs_two_pass``: the one pass (URLs straight into records) against download-then-write
  from a local HTTP server, 300 JPEGs, 2 workers, wall.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import sys
import tempfile
import time
import tomllib
import traceback
from collections.abc import Callable, Mapping, Sequence

from absl import flags

from tools.benchmarks import common
from tools.benchmarks.common import Timer, emit, emit_machine

FLAGS_USED: tuple[str, ...] = ("floors", "check_only", "image_cache")

# The check's sizes: small enough for about two minutes on 2 quiet cores, large enough that fixed costs
# (process pools, fsyncs, tracing) do not swamp the per-item work each ratio is about.
_WRITER_IMAGES = 600
_SHARDS = 4
_NUM_CLASSES = 11166
_TAGS = 9
_DOWNLOAD_IMAGES = 300

# The order `check` measures them in (the quick ones first). The writer's three come from one interleaved
# measurement; the pipeline reads the records it wrote.
RATIOS: tuple[str, ...] = (
    "record_framing_vs_tf",
    "loss_plain_vs_adaptive",
    "writer_dense_vs_naive",
    "writer_sparse_vs_naive",
    "writer_one_worker_vs_naive",
    "pipeline_vs_original",
    "download_one_pass_vs_two_pass",
    "step_vs_keras",
)
# Ratios of process CPU time (both sides run in this process); the others are of wall time.
CPU_TIME: frozenset[str] = frozenset(
    {
        "record_framing_vs_tf",
        "loss_plain_vs_adaptive",
        "writer_one_worker_vs_naive",
        "pipeline_vs_original",
        "step_vs_keras",
    }
)
_WRITER_RATIOS = tuple(name for name in RATIOS if name.startswith("writer_"))


@dataclasses.dataclass(frozen=True)
class Floor:
    """The lowest acceptable value of one ratio, and why it is set there."""

    floor: float
    reason: str


def load_floors(path: str) -> dict[str, Floor]:
    """The floors file: one TOML table per ratio, each with a numeric ``floor`` and a ``reason``.

    Raises:
      ValueError: a table without a numeric floor or without a reason.
    """
    with open(path, "rb") as file:
        tables = tomllib.load(file)
    floors = {}
    for name, table in tables.items():
        floor, reason = table.get("floor"), table.get("reason")
        if not isinstance(floor, int | float) or isinstance(floor, bool) or not reason:
            raise ValueError(f"{path}: [{name}] needs a numeric 'floor' and a 'reason'")
        floors[name] = Floor(float(floor), str(reason))
    return floors


def failures(ratios: Mapping[str, float | None], floors: Mapping[str, Floor]) -> list[str]:
    """One line per ratio that is below its floor, was not measured (None) or has no floor.

    Args:
      ratios: The measured ratios by name; None where the measurement failed.
      floors: The floors by ratio name (`load_floors`).
    """
    lines = []
    for name, ratio in ratios.items():
        floor = floors.get(name)
        if floor is None:
            lines.append(f"{name}: no floor in the floors file")
        elif ratio is None:
            lines.append(f"{name}: not measured (its error is printed above)")
        elif ratio < floor.floor:
            lines.append(f"{name} = {ratio:.2f} is below its floor {floor.floor:g}: {floor.reason}")
    return lines


def best_of_rounds(variants: Mapping[str, Callable[[], Timer]], rounds: int) -> dict[str, Timer]:
    """Each variant's least wall and least CPU time over `rounds` runs, the variants run alternately (in
    reverse order every other round, so that none always runs first)."""
    timers: dict[str, list[Timer]] = {name: [] for name in variants}
    for round_index in range(rounds):
        order = list(variants) if round_index % 2 == 0 else list(variants)[::-1]
        for name in order:
            timers[name].append(variants[name]())
    best = {}
    for name, runs in timers.items():
        best[name] = Timer()
        best[name].wall, best[name].cpu = min(t.wall for t in runs), min(t.cpu for t in runs)
    return best


def _timed(fn: Callable[[], object]) -> Timer:
    with Timer() as t:
        fn()
    return t


def _ratio(name: str, baseline: Timer, ours: Timer) -> float:
    """Baseline time over ours: CPU time for the ratios in `CPU_TIME`, else wall time."""
    if name in CPU_TIME:
        return baseline.cpu / ours.cpu
    return baseline.wall / ours.wall


def _rounded(timers: Mapping[str, Timer], per: float = 1.0) -> dict[str, dict[str, float]]:
    """Wall and CPU ms of each timer (divided by `per`), for the printed lines."""
    return {
        name: {"wall_ms": round(t.wall / per * 1e3, 3), "cpu_ms": round(t.cpu / per * 1e3, 3)}
        for name, t in timers.items()
    }


class _Check:
    """The measurements of one check run; what the ratios share (the JPEGs, the records) lives here."""

    def __init__(self, image_cache: str, work_dir: str) -> None:
        self.image_cache = image_cache
        self.work_dir = work_dir
        self.records: dict[str, str] = {}  # label format -> the latest folder of the writer's records
        self._runs = 0

    def _out(self, what: str) -> str:
        self._runs += 1
        return os.path.join(self.work_dir, f"{what}-{self._runs}")

    def record_framing_vs_tf(self) -> dict[str, float]:
        import numpy as np
        import tensorflow as tf

        from data.records import record_writer

        records = [np.random.default_rng(i).bytes(140_000) for i in range(64)]

        def write(writer_class) -> Callable[[], Timer]:
            def run() -> Timer:
                with Timer() as t, writer_class(os.devnull) as writer:
                    for record in records:
                        writer.write(record)
                return t

            return run

        best = best_of_rounds(
            {"ours": write(record_writer.RecordWriter), "tf": write(tf.io.TFRecordWriter)}, 5
        )
        emit(
            "check/record_framing",
            crc32c=getattr(record_writer, "IMPLEMENTATION", "not reported"),  # older trees do not say
            per_record=_rounded(best, len(records)),
        )
        return {"record_framing_vs_tf": _ratio("record_framing_vs_tf", best["tf"], best["ours"])}

    def loss_plain_vs_adaptive(self) -> dict[str, float]:
        from tools.benchmarks.loss import prepared_losses, time_calls

        calls = prepared_losses(num_classes=_NUM_CLASSES, batch_size=32, tags=_TAGS)
        for call in calls.values():
            time_calls(call, calls=1, warmup=1)  # tracing
        best = best_of_rounds(
            {name: lambda call=call: time_calls(call, calls=40, warmup=0) for name, call in calls.items()}, 3
        )
        emit("check/loss", per_call=_rounded(best, 40), batch_size=32, num_classes=_NUM_CLASSES)
        return {
            "loss_plain_vs_adaptive": _ratio(
                "loss_plain_vs_adaptive", best["plain_sigmoid"], best["adaptive"]
            )
        }

    def _images(self) -> str:
        from tools.benchmarks import photos

        return photos.ensure_images(
            self.image_cache,
            num_images=_WRITER_IMAGES,
            width=500,
            height=375,
            num_classes=_NUM_CLASSES,
            tags=_TAGS,
        )

    def _write(self, label_format: str, workers: int, verify: str = "full") -> Timer:
        """One run of data/tfrecord.py's writer; its records are kept (the pipeline reads the latest)."""
        from data.shards import dataset_writer

        out = self._out(f"records-{label_format}-w{workers}")
        timer = _timed(
            lambda: dataset_writer.write_dataset(
                image_list=self._images(),
                image_root=self.image_cache,
                output_dir=out,
                label_format=label_format,
                num_classes=_NUM_CLASSES,
                shards=_SHARDS,
                workers=workers,
                verify=verify,
                progress=False,
            )
        )
        shutil.rmtree(self.records.get(label_format, ""), ignore_errors=True)
        self.records[label_format] = out
        return timer

    def writer(self) -> dict[str, float]:
        import tensorflow as tf

        from tools.benchmarks.writer import naive_writer

        list_path = self._images()
        with open(list_path, encoding="utf-8") as listing:
            first_jpeg = os.path.join(self.image_cache, listing.readline().split("\t", 1)[0])

        def naive() -> Timer:
            out = self._out("naive") + ".tfrecord"
            timer = _timed(lambda: naive_writer(list_path, self.image_cache, out, num_classes=_NUM_CLASSES))
            os.remove(out)
            return timer

        self._write("dense", 2)  # untimed: starts the workers' forkserver, the JPEGs into the page cache
        tf.io.decode_image(tf.io.read_file(first_jpeg))  # untimed: TensorFlow's decoding runtime
        best = best_of_rounds(
            {
                "dense": lambda: self._write("dense", 2),
                "sparse": lambda: self._write("sparse", 2),
                "one_worker": lambda: self._write("dense", 1),
                "naive": naive,
            },
            2,
        )
        emit("check/writer", images=_WRITER_IMAGES, per_image=_rounded(best, _WRITER_IMAGES))
        return {
            "writer_dense_vs_naive": _ratio("writer_dense_vs_naive", best["naive"], best["dense"]),
            "writer_sparse_vs_naive": _ratio("writer_sparse_vs_naive", best["naive"], best["sparse"]),
            "writer_one_worker_vs_naive": _ratio(
                "writer_one_worker_vs_naive", best["naive"], best["one_worker"]
            ),
        }

    def pipeline_vs_original(self) -> dict[str, float]:
        from tools.benchmarks.release_pipeline import original_pipeline
        from training import input_pipeline

        for label_format in ("sparse", "dense"):  # the writer ratios' records, unless only this one runs
            if label_format not in self.records:
                self._write(label_format, 2, verify="fast")
        shape = {"batch_size": 16, "image_size": 224}
        ours = input_pipeline.tfrecord_source(self.records["sparse"], "train", num_classes=_NUM_CLASSES)
        dense = input_pipeline.tfrecord_source(self.records["dense"], "train", num_classes=_NUM_CLASSES)
        datasets = {
            "ours": input_pipeline.train_dataset(ours, seed=0, shuffle_buffer=256, **shape),
            "original": original_pipeline(dense.files, num_classes=_NUM_CLASSES, shuffle_buffer=256, **shape),
        }

        def batches(dataset, *, warmup: int, steps: int) -> Timer:
            # A fresh iterator each time, dropped after: a live one would go on filling its buffers (on the
            # cores, in this process) while the other pipeline is being timed.
            iterator = iter(dataset)
            for _ in range(warmup):
                next(iterator)
            with Timer() as t:
                for _ in range(steps):
                    next(iterator)
            return t

        for dataset in datasets.values():  # untimed: the XLA compilations, the files into the page cache
            batches(dataset, warmup=2, steps=0)
        best = best_of_rounds(
            {name: lambda ds=ds: batches(ds, warmup=3, steps=6) for name, ds in datasets.items()}, 2
        )
        emit("check/pipeline", per_image=_rounded(best, 6 * shape["batch_size"]), **shape)
        return {"pipeline_vs_original": _ratio("pipeline_vs_original", best["original"], best["ours"])}

    def download_one_pass_vs_two_pass(self) -> dict[str, float]:
        from tools import benchmark
        from tools.benchmarks import download, photos

        f = flags.FlagValues()
        common.define_flags(benchmark.subcommand_module("download").FLAGS_USED, f)
        f(
            [
                "benchmark.py",
                f"--image_cache={self.image_cache}",
                f"--num_images={_DOWNLOAD_IMAGES}",
                "--workers=2",
                "--threads=16",
                f"--shards={_SHARDS}",
            ]
        )
        list_path, names = photos.benchmark_images(f)
        server, base = download._start_server(f.image_cache)
        try:
            url_list, _ = download._url_lists(list_path, base, self.work_dir)

            def variant(fn) -> Callable[[], Timer]:
                def run() -> Timer:
                    out = self._out("download")
                    with Timer() as t:
                        count, _ = fn(url_list, out, f)
                    shutil.rmtree(out, ignore_errors=True)
                    if count != len(names):
                        raise RuntimeError(f"stored {count} of {len(names)} images")
                    return t

                return run

            variant(download._one_pass)()  # untimed: the workers' forkserver, the server's page cache
            best = best_of_rounds(
                {"one_pass": variant(download._one_pass), "two_pass": variant(download._download_then_write)},
                2,
            )
        finally:
            server.terminate()
            server.wait()
        emit("check/download", images=len(names), per_image=_rounded(best, len(names)))
        name = "download_one_pass_vs_two_pass"
        return {name: _ratio(name, best["two_pass"], best["one_pass"])}

    def step_vs_keras(self) -> dict[str, float]:
        from tools.benchmarks.step import PreparedStep, StepSettings

        settings = StepSettings(
            depth=50,
            base_width=64,
            num_classes=1000,
            tags=_TAGS,
            batch_size=4,
            image_size=64,
            precision="fp32",
            xla=False,
            steps=2,
            warmup=1,
        )
        steps = {"ours": PreparedStep("ours", settings), "keras": PreparedStep("keras", settings)}

        def timed(step: PreparedStep) -> Timer:
            return _timed(lambda: step.time())

        best = best_of_rounds({name: lambda step=step: timed(step) for name, step in steps.items()}, 3)
        emit("check/step", per_step=_rounded(best, settings.steps), **settings.described())
        return {"step_vs_keras": _ratio("step_vs_keras", best["keras"], best["ours"])}


def _measurement(name: str) -> str:
    """The `_Check` method that measures ratio `name` (the writer's three share one)."""
    return "writer" if name in _WRITER_RATIOS else name


def measure(names: Sequence[str], *, image_cache: str) -> dict[str, float | None]:
    """The named ratios, in `RATIOS` order; None for one whose measurement raised (its traceback printed)."""
    ratios: dict[str, float | None] = {}
    work_dir = tempfile.mkdtemp(prefix="mlimages_check_")
    check = _Check(image_cache, work_dir)
    try:
        for measurement in dict.fromkeys(_measurement(name) for name in RATIOS if name in names):
            started = time.perf_counter()
            wanted = [name for name in names if _measurement(name) == measurement]
            try:
                measured = getattr(check, measurement)()
            except Exception:  # a broken measurement fails the check, with its traceback
                traceback.print_exc()
                measured = {}
            ratios.update({name: measured.get(name) for name in wanted})
            emit("check/seconds", measurement=measurement, seconds=round(time.perf_counter() - started, 1))
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    return ratios


def run(f: flags.FlagValues) -> None:
    """Measures the ratios (``--check_only``: some of them), prints each with its floor, and exits 1 with
    one line per failing ratio on stderr when any is below its floor."""
    floors = load_floors(f.floors)
    names = list(f.check_only or RATIOS)
    unknown = sorted(set(names) - set(RATIOS))
    if unknown:
        raise flags.ValidationError(f"--check_only: no ratio {unknown}; the ratios are {list(RATIOS)}")
    emit_machine("check")
    started = time.perf_counter()
    ratios = measure(names, image_cache=f.image_cache)
    for name, ratio in ratios.items():
        floor = floors.get(name)
        emit(
            f"check/{name}",
            ratio=None if ratio is None else round(ratio, 3),
            of="cpu time" if name in CPU_TIME else "wall time",
            floor=None if floor is None else floor.floor,
            ok=ratio is not None and floor is not None and ratio >= floor.floor,
        )
    failed = failures(ratios, floors)
    emit("check/result", ok=not failed, failed=len(failed), seconds=round(time.perf_counter() - started, 1))
    if failed:
        for line in failed:
            print(f"check FAILED: {line}", file=sys.stderr)
        sys.exit(1)
