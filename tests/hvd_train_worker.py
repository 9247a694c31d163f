"""Worker for tests/test_train_distributed.py: TrainStep on 2 Horovod ranks, or on 1 process with accum_steps=2.

Run as `horovodrun --gloo -np 2 python tests/hvd_train_worker.py OUT` (each rank takes its half of every
global batch) or `python tests/hvd_train_worker.py OUT --single` (the whole batch as 2 micro-batches).
Every rank starts from a different initialisation, so only the broadcast can make them agree. Writes the
full state (weights, moving statistics, optimizer slots, loss counters, draw state, step) per rank.
"""

import pathlib
import sys

import keras
import numpy as np

from models import losses, resnet
from training import distributed, schedules, train_step

NUM_CLASSES = 7
GLOBAL_BATCH = 8
STEPS = 2


def global_batch(step: int):
    rng = np.random.default_rng(100 + step)
    images = rng.uniform(-1, 1, (GLOBAL_BATCH, 32, 32, 3)).astype("float32")
    labels = rng.choice([0.0, 0.8, 1.0], size=(GLOBAL_BATCH, NUM_CLASSES), p=[0.9, 0.03, 0.07]).astype(
        "float32"
    )
    labels[0, 0] = -1.0  # an ignored entry
    return images, labels


def main(out_dir: str, single: bool) -> None:
    dist = distributed.init()
    keras.utils.set_random_seed(dist.rank)  # different per rank: the broadcast must fix it
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
    step = train_step.TrainStep(
        model,
        train_step.make_optimizer(),
        task="multilabel",
        schedule=schedules.StaircaseSchedule(base_lr=0.02, decay=0.5, decay_every=1),
        dist=dist,
        loss=losses.AdaptiveMultiLabelLoss(NUM_CLASSES, neg_select=0.5, seed=11),
        accum_steps=2 if single else 1,
    )
    dist.broadcast_variables(step.state_variables(), root_rank=0)
    half = GLOBAL_BATCH // dist.size
    for s in range(STEPS):
        images, labels = global_batch(s)
        part = slice(dist.rank * half, (dist.rank + 1) * half)
        logs = step(images[part], labels[part])
    state = {f"v{i:04d}": np.asarray(v) for i, v in enumerate(step.state_variables())}
    state["loss"] = np.asarray(logs["loss"])
    state["step"] = np.asarray(step.global_step)
    state["pos_count"], state["neg_count"] = np.asarray(step.loss.pos_count), np.asarray(step.loss.neg_count)
    np.savez(pathlib.Path(out_dir, f"{'single' if single else 'rank'}{dist.rank}.npz"), **state)


if __name__ == "__main__":
    main(sys.argv[1], "--single" in sys.argv[2:])
