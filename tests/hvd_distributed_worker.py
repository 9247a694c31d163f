"""Worker for tests/test_distributed.py: run under `horovodrun --gloo -np 2`; writes its results to --out."""

import json
import pathlib
import sys

import numpy as np
import tensorflow as tf

from training import distributed


def main(out_dir: str) -> None:
    dist = distributed.init()
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
    dist.barrier()
    result = {
        "rank": rank,
        "is_chief": dist.is_chief,
        "variables": [v.numpy().tolist() for v in variables],
        "averaged": [g.numpy().tolist() for g in averaged],
        "metric": metric.numpy().tolist(),
        "mean": float(mean.numpy()),
    }
    pathlib.Path(out_dir, f"rank{rank}.json").write_text(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1])
