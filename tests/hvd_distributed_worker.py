"""training/distributed.py on 2 Horovod ranks (part of tests/hvd_worker.py): OUT/distributed_rank{R}.json."""

import json
import pathlib

import numpy as np
import tensorflow as tf

from training import distributed


def run(dist: distributed.Distributed, out_dir: str) -> None:
    assert dist.size == 2, dist.size
    rank = dist.rank
    # Each rank starts from different values; broadcast makes them rank 0's.
    rng = np.random.default_rng(100 + rank)
    variables = [tf.Variable(rng.normal(size=(3, 4)).astype("float32")), tf.Variable(rng.normal(size=(5,)))]
    dist.broadcast_variables(variables, root_rank=0)
    # Per-rank gradients; the average must be their mean.
    grads = [tf.constant(np.full((3, 4), rank + 1.0, "float32")), tf.constant(np.arange(5.0) * (rank + 1))]
    averaged = dist.average_gradients(grads)
    metric = dist.allreduce_sum(tf.constant([rank + 1.0, 10.0 * rank]))
    mean = dist.allreduce_mean(tf.constant(2.0 * rank))
    # Two ranks on one GPU, with made-up GPU names (this machine has none): distinct ones pass, the same one
    # ("0", as CUDA_VISIBLE_DEVICES=0 exported to both would give) is an error on every rank.
    distributed.check_distinct_gpus(dist, f"GPU-fake-{rank}")
    try:
        distributed.check_distinct_gpus(dist, "0")
        shared_gpu_error = None
    except ValueError as e:
        shared_gpu_error = str(e)
    dist.barrier()
    result = {
        "shared_gpu_error": shared_gpu_error,
        "rank": rank,
        "is_chief": dist.is_chief,
        "variables": [v.numpy().tolist() for v in variables],
        "averaged": [g.numpy().tolist() for g in averaged],
        "metric": metric.numpy().tolist(),
        "mean": float(mean.numpy()),
    }
    pathlib.Path(out_dir, f"distributed_rank{rank}.json").write_text(json.dumps(result))
