"""``input_position``: one rank's saved input position (`training.checkpoints.save_input_position`) on records
of the benchmark JPEGs: its bytes, the time to save it and the time to restore it (to the first batch),
ours against ``--compare``'s baseline, the same pipeline saved as tf.data's iterator state
(``tf.train.Checkpoint(iterator=...)``, what `save_input_position` wrote before #22 item 1).

At the reference settings (500x375 photo-like JPEGs, sparse labels, ``--shuffle_buffer=1024``, batch 32,
224 px) the baseline saves the window and prefetch buffers' contents; ours saves a count of elements in a
JSON of a few hundred bytes, from which the pipeline is rebuilt (`input_pipeline.train_dataset`'s
``start``). Ours is restored at a deep position (10 epochs and a third in, where skipping by reading would
cost 10 epochs of records) and compared with a fresh pipeline's first batch, which fills the same window.
"""

from __future__ import annotations

import os
import statistics
import tempfile

from absl import flags

from tools.benchmarks import photos
from tools.benchmarks.common import Timer, emit, emit_machine

FLAGS_USED: tuple[str, ...] = (
    *photos.IMAGE_FLAGS,
    "workers",
    "shards",
    "compare",
    "batch_size",
    "image_size",
    "warmup",
    "rounds",
    "shuffle_buffer",
)


def _folder_bytes(folder: str) -> int:
    return sum(os.path.getsize(os.path.join(folder, name)) for name in os.listdir(folder))


def measure_ours(make, *, batch_size: int, warmup: int, rounds: int, deep: int) -> dict:
    """Bytes and save time of our position after `warmup` batches (median over `rounds`), and the time from
    building the pipeline at element `deep` to its first batch, against a fresh pipeline's first batch."""
    from training import checkpoints

    iterator = iter(make(0))
    for _ in range(warmup):
        next(iterator)
    seconds, sizes = [], []
    with tempfile.TemporaryDirectory() as model_dir:
        folder = os.path.dirname(checkpoints.input_checkpoint_prefix(model_dir, 0))
        for step in range(warmup, warmup + rounds):
            next(iterator)
            meta = checkpoints.InputMeta(
                step=step,
                num_ranks=1,
                global_batch=batch_size,
                input_seed=0,
                phase=0,
                elements=step * batch_size,
            )
            with Timer() as t:
                checkpoints.save_input_position(model_dir=model_dir, rank=0, step=step, keep=1, meta=meta)
            seconds.append(t.wall)
            sizes.append(_folder_bytes(folder))
    del iterator
    restore, fresh = [], []
    for _ in range(rounds):
        with Timer() as t:
            next(iter(make(deep)))
        restore.append(t.wall)
        with Timer() as t:
            next(iter(make(0)))
        fresh.append(t.wall)
    return {
        "bytes": int(statistics.median(sizes)),
        "save_seconds": round(statistics.median(seconds), 4),
        "restore_deep_seconds": round(statistics.median(restore), 3),
        "fresh_first_batch_seconds": round(statistics.median(fresh), 3),
        "deep_elements": deep,
        "rounds": rounds,
    }


def measure_iterator_state(make, *, warmup: int, rounds: int) -> dict:
    """The baseline: bytes and save time of the iterator state after `warmup` batches (median over `rounds`),
    and the time to read it into a new iterator and take its first batch."""
    import tensorflow as tf

    iterator = iter(make(0))
    for _ in range(warmup):
        next(iterator)
    seconds, sizes, restore = [], [], []
    with tempfile.TemporaryDirectory() as model_dir:
        for step in range(rounds):
            next(iterator)
            path = os.path.join(model_dir, f"step-{step}", "ckpt")
            with Timer() as t:
                tf.train.Checkpoint(iterator=iterator).write(path)
            seconds.append(t.wall)
            sizes.append(_folder_bytes(os.path.dirname(path)))
        for step in range(rounds):
            with Timer() as t:
                restored = iter(make(0))
                tf.train.Checkpoint(iterator=restored).read(os.path.join(model_dir, f"step-{step}", "ckpt"))
                next(restored)
            restore.append(t.wall)
            del restored
    return {
        "bytes": int(statistics.median(sizes)),
        "save_seconds": round(statistics.median(seconds), 4),
        "restore_seconds": round(statistics.median(restore), 3),
        "rounds": rounds,
    }


def run(f: flags.FlagValues) -> None:
    """One rank's input-position bytes, save and restore time; with --compare, the iterator state's too."""
    from training import input_pipeline

    emit_machine("input_position")
    list_path, _ = photos.benchmark_images(f)
    records = photos.cached_records(list_path, "sparse", f=f)
    source = input_pipeline.tfrecord_source(records, "train", num_classes=f.num_classes)
    deep = (10 * f.num_images + f.num_images // 3) // f.batch_size * f.batch_size
    emit(
        "input_position/setup",
        image=f"{f.image_width}x{f.image_height}",
        num_images=f.num_images,
        shards=f.shards,
        shuffle_buffer=f.shuffle_buffer,
        warmup=f.warmup,
        batch_size=f.batch_size,
        image_size=f.image_size,
    )

    def make(start):
        return input_pipeline.train_dataset(
            source,
            seed=0,
            shuffle_buffer=f.shuffle_buffer,
            batch_size=f.batch_size,
            image_size=f.image_size,
            start=start,
        )

    ours = measure_ours(make, batch_size=f.batch_size, warmup=f.warmup, rounds=f.rounds, deep=deep)
    emit("input_position/ours", **ours)
    if f.compare:
        before = measure_iterator_state(make, warmup=f.warmup, rounds=f.rounds)
        emit("input_position/iterator_state_before", **before)
        emit(
            "input_position/ratio",
            bytes_before_over_ours=round(before["bytes"] / max(ours["bytes"], 1), 1),
            save_seconds_before_over_ours=round(before["save_seconds"] / max(ours["save_seconds"], 1e-9), 1),
            target={"ours_bytes_at_most": 1_000_000},
        )
