"""TrainStep on 2 Horovod ranks (part of tests/hvd_worker.py), and the same step in one process.

Every rank starts from a different initialisation, so only the broadcast can make them agree; each takes
its half of every global batch. `run` writes the full state (weights, moving statistics, optimizer slots,
loss counters, draw state, step) per rank for:
- OUT/train_rank<r>.npz (tests/test_train_distributed.py): 2 steps, compared with `train_states` in one
  process with accum_steps=2 (the whole global batch as 2 micro-batches);
- OUT/<setting>_step<n>_rank<r>.npz (tests/test_overlap_distributed.py): for each setting (K backward
  segments, all-reduce dtype) the same model from the same start on the same batches, after the first and
  the last step; and OUT/wire_rank<r>.npz, known tensors averaged through both wire formats.
"""

import pathlib

import keras
import numpy as np

from models import losses, resnet
from training import distributed, schedules, train_step

NUM_CLASSES = 7
GLOBAL_BATCH = 8
TRAIN_STEPS = 2
OVERLAP_STEPS = 3
SETTINGS = (("k1_fp32", 1, "fp32"), ("k4_fp32", 4, "fp32"), ("k1_fp16", 1, "fp16"), ("k4_fp16", 4, "fp16"))


def train_batch(step: int):
    """The global batch of the one-process comparison: sparse soft labels with an ignored entry."""
    rng = np.random.default_rng(100 + step)
    images = rng.uniform(-1, 1, (GLOBAL_BATCH, 32, 32, 3)).astype("float32")
    labels = rng.choice([0.0, 0.8, 1.0], size=(GLOBAL_BATCH, NUM_CLASSES), p=[0.9, 0.03, 0.07]).astype(
        "float32"
    )
    labels[0, 0] = -1.0  # an ignored entry
    return images, labels


def overlap_batch(step: int):
    """The global batch of the segment / wire settings."""
    rng = np.random.default_rng(100 + step)
    images = rng.uniform(-1, 1, (GLOBAL_BATCH, 32, 32, 3)).astype("float32")
    labels = rng.choice([0.0, 0.8, 1.0], size=(GLOBAL_BATCH, NUM_CLASSES), p=[0.8, 0.05, 0.15])
    return images, labels.astype("float32")


def train_states(
    dist: distributed.Distributed,
    batch,
    *,
    steps: int,
    save_after: tuple[int, ...],
    base_lr: float,
    decay_every: int,
    accum_steps: int = 1,
    segments: int = 1,
    wire: str = "fp32",
) -> dict[int, dict[str, np.ndarray]]:
    """Trains the depth-14 toy model on this rank's part of `batch(step)`; returns {step: state} at `save_after`.

    On one process (dist.size 1) the part is the whole global batch.
    """
    keras.utils.set_random_seed(dist.rank)  # different per rank: the broadcast must fix it
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
    step = train_step.TrainStep(
        model,
        train_step.make_optimizer(),
        task="multilabel",
        schedule=schedules.StaircaseSchedule(base_lr=base_lr, decay=0.5, decay_every=decay_every),
        dist=dist,
        loss=losses.AdaptiveMultiLabelLoss(NUM_CLASSES, neg_select=0.5, seed=11),
        accum_steps=accum_steps,
        backward_segments=segments,
        allreduce_dtype=wire,
    )
    dist.broadcast_variables(step.state_variables(), root_rank=0)
    part_size = GLOBAL_BATCH // dist.size
    part = slice(dist.rank * part_size, (dist.rank + 1) * part_size)
    states = {}
    for s in range(steps):
        images, labels = batch(s)
        logs = step(images[part], labels[part])
        if s + 1 in save_after:
            state = {f"v{i:04d}": np.asarray(v) for i, v in enumerate(step.state_variables())}
            state["loss"] = np.asarray(logs["loss"])
            state["step"] = np.asarray(step.global_step)
            state["pos_count"] = np.asarray(step.loss.pos_count)
            state["neg_count"] = np.asarray(step.loss.neg_count)
            states[s + 1] = state
    return states


def one_process_train_state() -> dict[str, np.ndarray]:
    """What `run` writes to train_rank<r>.npz, trained in one process on the whole batches (2 micro-batches)."""
    states = train_states(
        distributed.Distributed(),  # one process, no device pinning in the test's own process
        train_batch,
        steps=TRAIN_STEPS,
        save_after=(TRAIN_STEPS,),
        base_lr=0.02,
        decay_every=1,
        accum_steps=2,
    )
    return states[TRAIN_STEPS]


def run(dist: distributed.Distributed, out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    (state,) = train_states(
        dist, train_batch, steps=TRAIN_STEPS, save_after=(TRAIN_STEPS,), base_lr=0.02, decay_every=1
    ).values()
    np.savez(out / f"train_rank{dist.rank}.npz", **state)
    for name, segments, wire in SETTINGS:
        states = train_states(
            dist,
            overlap_batch,
            steps=OVERLAP_STEPS,
            save_after=(1, OVERLAP_STEPS),
            base_lr=0.05,
            decay_every=2,
            segments=segments,
            wire=wire,
        )
        for n, state in states.items():
            np.savez(out / f"{name}_step{n}_rank{dist.rank}.npz", **state)
    # The wire format itself: known tensors (one whose float16 sum is beyond float16) averaged both ways.
    rng = np.random.default_rng(dist.rank)
    tensors = [rng.normal(size=1000).astype("float32"), np.full(3, 40000.0 * (dist.rank + 1), "float32")]
    exact = dist.average_gradients(tensors)
    half = dist.average_gradients(tensors, wire="fp16")
    np.savez(
        out / f"wire_rank{dist.rank}.npz",
        **{f"exact{i}": np.asarray(t) for i, t in enumerate(exact)},
        **{f"half{i}": np.asarray(t) for i, t in enumerate(half)},
    )
