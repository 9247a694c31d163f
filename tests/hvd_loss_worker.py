"""AdaptiveMultiLabelLoss on 2 Horovod ranks (part of tests/hvd_worker.py) for tests/test_losses_distributed.py.

Each rank trains a tiny dense model for a few SGD steps on ITS half of fixed random batches, with the class
status summed across ranks and averaged gradients, and writes what it saw to OUT/loss_rank{R}.json. The
test runs `run_steps` in one process on the whole batches and compares.
"""

import json
import pathlib

import numpy as np
import tensorflow as tf

from models import losses
from training import distributed

BATCH = 8  # global batch; each of the 2 ranks takes 4 rows
FEATURES = 5
CLASSES = 24
STEPS = 4
LEARNING_RATE = 0.5
SEED = 11


def batch(step: int) -> tuple[np.ndarray, np.ndarray]:
    """The global batch of `step`: inputs [BATCH, FEATURES] and soft labels with ignored (-1) entries."""
    rng = np.random.default_rng(1000 + step)
    x = rng.normal(size=(BATCH, FEATURES)).astype("float32")
    labels = rng.choice([0.0, 0.0, 0.0, 0.0, 0.5, 0.8, 1.0, -1.0], size=(BATCH, CLASSES)).astype("float32")
    return x, labels


def run_steps(rows: slice, *, sum_across_ranks=None, average_gradients=None, mean_across_ranks=None) -> dict:
    """Runs STEPS training steps on `rows` of each batch; the callables reduce across ranks (None: identity)."""
    rng = np.random.default_rng(SEED)
    kernel = tf.Variable(rng.normal(size=(FEATURES, CLASSES)).astype("float32"))
    bias = tf.Variable(np.zeros(CLASSES, "float32"))
    loss = losses.AdaptiveMultiLabelLoss(CLASSES, neg_select=0.3, seed=SEED)
    record = {key: [] for key in ("loss", "weights", "pos_count", "neg_count", "grads")}
    for step in range(STEPS):
        x, labels = (t[rows] for t in batch(step))
        weights = loss.class_weights(labels, sum_across_ranks=sum_across_ranks)
        with tf.GradientTape() as tape:
            value = loss(labels, tf.matmul(x, kernel) + bias, weights)
        grads = tape.gradient(value, [kernel, bias])
        if average_gradients is not None:
            grads = average_gradients(grads)  # Horovod: mean over ranks.
            value = mean_across_ranks(value)
        for variable, grad in zip([kernel, bias], grads, strict=True):
            variable.assign_sub(LEARNING_RATE * grad)
        record["loss"].append(float(value))
        record["weights"].append(weights.numpy().tolist())
        record["pos_count"].append(loss.pos_count.numpy().tolist())
        record["neg_count"].append(loss.neg_count.numpy().tolist())
        record["grads"].append([g.numpy().tolist() for g in grads])
    return record


def run(dist: distributed.Distributed, out_dir: str) -> None:
    assert dist.size == 2, dist.size
    per_rank = BATCH // dist.size
    record = run_steps(
        slice(dist.rank * per_rank, (dist.rank + 1) * per_rank),
        sum_across_ranks=dist.allreduce_sum,
        average_gradients=dist.average_gradients,
        mean_across_ranks=dist.allreduce_mean,
    )
    pathlib.Path(out_dir, f"loss_rank{dist.rank}.json").write_text(json.dumps(record))
