"""Learning-rate schedules as pure functions of the step (Python ints or scalar tensors).

Each schedule is a frozen dataclass with `__call__(step) -> lr`. The same code serves the train step
(inside `tf.function`, with a tensor step) and `--dry_run --lr_probe_steps` / the tests (Python ints), so the
probed values are exactly the ones used in training.
"""

from __future__ import annotations

import dataclasses
import math

import tensorflow as tf


def _as_float(x):
    return float(x) if isinstance(x, int | float) else tf.cast(x, tf.float64)


@dataclasses.dataclass(frozen=True)
class ReferencePretrainSchedule:
    """The released pre-training schedule (docs/REFERENCE.md section 4).

    Warm-up: `warmup_lr * warmup_factor ** floor(step / warmup_every)` while `step < warmup_steps` (staircase,
    0.01 x 1.297 every 4,400 steps for 35,200 steps, reaching ~0.0617, then a jump to 0.08 at step 35,200 —
    a quirk of the release, kept). Then piecewise constant `values` with `boundaries`; as in
    `tf.compat.v1.train.piecewise_constant`, the value switches AFTER a boundary step (step 110,000 still has
    0.08, step 110,001 has 0.008).
    """

    warmup_lr: float = 0.01
    warmup_factor: float = 1.297
    warmup_every: int = 4400
    warmup_steps: int = 35200
    boundaries: tuple[int, ...] = (110000, 220000, 330000, 440000)
    values: tuple[float, ...] = (0.08, 0.008, 0.0008, 8e-5, 8e-6)

    def __call__(self, step):
        if isinstance(step, int):
            if step < self.warmup_steps:
                return self.warmup_lr * self.warmup_factor ** (step // self.warmup_every)
            return self.values[sum(step > b for b in self.boundaries)]
        step = tf.cast(step, tf.int64)
        warm = self.warmup_lr * tf.pow(
            tf.constant(self.warmup_factor, tf.float64), tf.cast(step // self.warmup_every, tf.float64)
        )
        index = tf.reduce_sum(tf.cast(step > tf.constant(self.boundaries, tf.int64), tf.int32))
        piece = tf.gather(tf.constant(self.values, tf.float64), index)
        return tf.where(step < self.warmup_steps, warm, piece)


@dataclasses.dataclass(frozen=True)
class StaircaseSchedule:
    """`base_lr * decay ** floor(step / decay_every)`: the released fine-tuning example (0.1, 0.1, 150,000)."""

    base_lr: float = 0.1
    decay: float = 0.1
    decay_every: int = 150000

    def __call__(self, step):
        if isinstance(step, int):
            return self.base_lr * self.decay ** (step // self.decay_every)
        exponent = tf.cast(tf.cast(step, tf.int64) // self.decay_every, tf.float64)
        return self.base_lr * tf.pow(tf.constant(self.decay, tf.float64), exponent)


@dataclasses.dataclass(frozen=True)
class WarmupCosineSchedule:
    """Linear warm-up from 0 to `base_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""

    base_lr: float = 0.1
    warmup_steps: int = 5000
    total_steps: int = 600000

    def __call__(self, step):
        if isinstance(step, int):
            if step < self.warmup_steps:
                return self.base_lr * step / self.warmup_steps
            progress = min(1.0, (step - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
            return 0.5 * self.base_lr * (1.0 + math.cos(math.pi * progress))
        s = tf.cast(step, tf.float64)
        warm = self.base_lr * s / max(1, self.warmup_steps)
        progress = tf.minimum(1.0, (s - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps))
        cosine = 0.5 * self.base_lr * (1.0 + tf.cos(math.pi * progress))
        return tf.where(s < self.warmup_steps, warm, cosine)


Schedule = ReferencePretrainSchedule | StaircaseSchedule | WarmupCosineSchedule


def scale(schedule: Schedule, *, lr_factor: float, step_factor: float) -> Schedule:
    """The same schedule for another global batch: learning rates x lr_factor, step counts x step_factor.

    Used for linear LR scaling (lr_factor = global_batch / reference_batch) with step counts kept in epochs
    (step_factor = reference_batch / global_batch). Factors of exactly 1 return the schedule unchanged, so
    the reference configuration reproduces the released numbers bit for bit.
    """
    if lr_factor == 1.0 and step_factor == 1.0:
        return schedule

    def steps(n: int) -> int:
        return max(1, round(n * step_factor))

    if isinstance(schedule, ReferencePretrainSchedule):
        return dataclasses.replace(
            schedule,
            warmup_lr=schedule.warmup_lr * lr_factor,
            warmup_every=steps(schedule.warmup_every),
            warmup_steps=steps(schedule.warmup_steps),
            boundaries=tuple(steps(b) for b in schedule.boundaries),
            values=tuple(v * lr_factor for v in schedule.values),
        )
    if isinstance(schedule, StaircaseSchedule):
        return dataclasses.replace(
            schedule, base_lr=schedule.base_lr * lr_factor, decay_every=steps(schedule.decay_every)
        )
    return dataclasses.replace(
        schedule,
        base_lr=schedule.base_lr * lr_factor,
        warmup_steps=steps(schedule.warmup_steps),
        total_steps=steps(schedule.total_steps),
    )
