"""``allreduce``: under ``horovodrun``, the gradient all-reduce of the model's real variable shapes through
`training.distributed`, and its overhead relative to ``--step_ms`` (one process: size 1, no Horovod).
"""

from __future__ import annotations

import os

import numpy as np
from absl import flags

from tools.benchmarks.common import Timer, emit, emit_machine

FLAGS_USED: tuple[str, ...] = (
    "depth",
    "base_width",
    "num_classes",
    "allreduce_dtypes",
    "steps",
    "warmup",
    "step_ms",
)


def run(f: flags.FlagValues) -> None:
    """Time of one gradient all-reduce (`Distributed.average_gradients`) with the model's variable shapes."""
    import tensorflow as tf

    from models import resnet
    from training import distributed

    dist = distributed.init()
    if dist.is_chief:
        emit_machine(
            "allreduce",
            ranks=dist.size,
            fusion_threshold_bytes=os.environ.get(
                "HOROVOD_FUSION_THRESHOLD", "default (128 MiB in Horovod 0.28.1)"
            ),
            cycle_time_ms=os.environ.get("HOROVOD_CYCLE_TIME", "default"),
        )
    model = resnet.build_resnet(int(f.depth), f.num_classes, base_width=f.base_width)
    shapes = [tuple(v.shape) for v in model.trainable_variables]
    del model
    elements = int(sum(np.prod(s) for s in shapes))
    for dtype_name in f.allreduce_dtypes:
        dtype = tf.as_dtype(dtype_name)
        gradients = [
            tf.cast(tf.random.stateless_normal(s, [dist.rank, i]), dtype) for i, s in enumerate(shapes)
        ]
        reduce = tf.function(dist.average_gradients)
        for _ in range(f.warmup + 1):
            reduce(gradients)[-1].numpy()
        dist.barrier()
        with Timer() as t:
            for _ in range(f.steps):
                out = reduce(gradients)
            out[-1].numpy()
        seconds = float(dist.allreduce_mean(tf.constant(t.wall / f.steps, tf.float64)))
        size = elements * dtype.size
        if dist.is_chief:
            bus = 2 * (dist.size - 1) / dist.size * size  # bytes each rank sends in a ring all-reduce
            result = {
                "depth": int(f.depth),
                "num_classes": f.num_classes,
                "dtype": dtype_name,
                "tensors": len(shapes),
                "elements": elements,
                "mb": round(size / 1e6, 1),
                "ranks": dist.size,
                "ms": round(seconds * 1e3, 1),
                "algorithm_gb_per_s": round(size / seconds / 1e9, 3),
                "bus_gb_per_s": round(bus / seconds / 1e9, 3),
                "steps": f.steps,
            }
            if f.step_ms:
                result.update(step_ms=f.step_ms, overhead_fraction=round(seconds * 1e3 / f.step_ms, 4))
            emit("allreduce/gradients", **result)
