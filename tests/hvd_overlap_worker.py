"""Worker for tests/test_overlap_distributed.py: TrainStep on 2 Horovod ranks with backward segments and
the fp16 all-reduce.

Run as `horovodrun --gloo -np 2 python tests/hvd_overlap_worker.py OUT`. For each setting (K segments,
all-reduce dtype) it trains the same model from the same start on the same batches and writes the full
state per rank after the first and the last step (OUT/<setting>_step<n>_rank<r>.npz), and
the average of known tensors through both wire formats (OUT/wire_rank<r>.npz).
"""

import pathlib
import sys

import keras
import numpy as np

from models import losses, resnet
from training import distributed, schedules, train_step

NUM_CLASSES = 7
GLOBAL_BATCH = 8
STEPS = 3
SETTINGS = (("k1_fp32", 1, "fp32"), ("k4_fp32", 4, "fp32"), ("k1_fp16", 1, "fp16"), ("k4_fp16", 4, "fp16"))


def global_batch(step: int):
    rng = np.random.default_rng(100 + step)
    images = rng.uniform(-1, 1, (GLOBAL_BATCH, 32, 32, 3)).astype("float32")
    labels = rng.choice([0.0, 0.8, 1.0], size=(GLOBAL_BATCH, NUM_CLASSES), p=[0.8, 0.05, 0.15])
    return images, labels.astype("float32")


def main(out_dir: str) -> None:
    dist = distributed.init()
    for name, segments, wire in SETTINGS:
        keras.utils.set_random_seed(dist.rank)  # different per rank: the broadcast must fix it
        model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
        step = train_step.TrainStep(
            model,
            train_step.make_optimizer(),
            task="multilabel",
            schedule=schedules.StaircaseSchedule(base_lr=0.05, decay=0.5, decay_every=2),
            dist=dist,
            loss=losses.AdaptiveMultiLabelLoss(NUM_CLASSES, neg_select=0.5, seed=11),
            backward_segments=segments,
            allreduce_dtype=wire,
        )
        dist.broadcast_variables(step.state_variables(), root_rank=0)
        half = GLOBAL_BATCH // dist.size
        for s in range(STEPS):
            images, labels = global_batch(s)
            part = slice(dist.rank * half, (dist.rank + 1) * half)
            logs = step(images[part], labels[part])
            if s in (0, STEPS - 1):
                state = {f"v{i:04d}": np.asarray(v) for i, v in enumerate(step.state_variables())}
                state["loss"] = np.asarray(logs["loss"])
                state["step"] = np.asarray(step.global_step)
                np.savez(pathlib.Path(out_dir, f"{name}_step{s + 1}_rank{dist.rank}.npz"), **state)
    # The wire format itself: known tensors (one whose plain sum, not its average, is beyond float16) averaged both ways.
    rng = np.random.default_rng(dist.rank)
    tensors = [rng.normal(size=1000).astype("float32"), np.full(3, 40000.0 * (dist.rank + 1), "float32")]
    exact = dist.average_gradients(tensors)
    half = dist.average_gradients(tensors, wire="fp16")
    np.savez(
        pathlib.Path(out_dir, f"wire_rank{dist.rank}.npz"),
        **{f"exact{i}": np.asarray(t) for i, t in enumerate(exact)},
        **{f"half{i}": np.asarray(t) for i, t in enumerate(half)},
    )


if __name__ == "__main__":
    main(sys.argv[1])
