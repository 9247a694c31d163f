"""Learning-rate schedules: one TensorFlow formula each, as Keras `LearningRateSchedule` objects.

Each schedule is a frozen dataclass (its fields are what config.json stores) and a
`keras.optimizers.schedules.LearningRateSchedule` with `get_config`, so it can also be handed to any Keras
optimizer or saved with Keras objects. Its formula is written once, in float64 TensorFlow ops on an int64
step, because the same code has to serve two callers:

- the train step, inside `tf.function` (XLA included), with the `global_step` variable: the result is a
  float64 scalar tensor;
- `--dry_run --lr_probe_steps` and the tests' (step, lr) tables, with a Python or NumPy integer: the same
  ops run eagerly and the result is a Python float.

So the probed values are exactly the ones training uses.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
from typing import Any

import keras
import tensorflow as tf


class _Schedule(keras.optimizers.schedules.LearningRateSchedule):
    """`__call__`, `get_config` and `from_config` shared by the schedules; subclasses define `lr`."""

    def lr(self, step: tf.Tensor) -> tf.Tensor:
        """The learning rate at `step` (an int64 scalar tensor), as a float64 scalar tensor."""
        raise NotImplementedError

    def __call__(self, step):
        lr = self.lr(tf.cast(tf.convert_to_tensor(step, dtype_hint=tf.int64), tf.int64))
        if isinstance(step, numbers.Integral) and tf.executing_eagerly():
            return float(lr)
        return lr

    def get_config(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_config(cls, config: dict[str, Any]):
        # A JSON round trip turns the tuples into lists; the frozen dataclass needs them hashable again.
        return cls(**{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})


def _staircase(step: tf.Tensor, *, start: float, factor: float, every: int) -> tf.Tensor:
    """`start * factor ** floor(step / every)`: the release's warm-up (factor > 1) and its decay (< 1)."""
    exponent = tf.cast(step // every, tf.float64)
    return start * tf.pow(tf.constant(factor, tf.float64), exponent)


@keras.saving.register_keras_serializable(package="mlimages")
@dataclasses.dataclass(frozen=True)
class ReferencePretrainSchedule(_Schedule):
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

    def lr(self, step: tf.Tensor) -> tf.Tensor:
        warm = _staircase(step, start=self.warmup_lr, factor=self.warmup_factor, every=self.warmup_every)
        # The number of boundaries strictly below the step selects the piece.
        index = tf.reduce_sum(tf.cast(step > tf.constant(self.boundaries, tf.int64), tf.int32))
        piece = tf.gather(tf.constant(self.values, tf.float64), index)
        return tf.where(step < self.warmup_steps, warm, piece)


@keras.saving.register_keras_serializable(package="mlimages")
@dataclasses.dataclass(frozen=True)
class StaircaseSchedule(_Schedule):
    """`base_lr * decay ** floor(step / decay_every)`: the released fine-tuning example (0.1, 0.1, 150,000)."""

    base_lr: float = 0.1
    decay: float = 0.1
    decay_every: int = 150000

    def lr(self, step: tf.Tensor) -> tf.Tensor:
        return _staircase(step, start=self.base_lr, factor=self.decay, every=self.decay_every)


@keras.saving.register_keras_serializable(package="mlimages")
@dataclasses.dataclass(frozen=True)
class WarmupCosineSchedule(_Schedule):
    """Linear warm-up from 0 to `base_lr` over `warmup_steps`, then cosine decay to 0 at `total_steps`."""

    base_lr: float = 0.1
    warmup_steps: int = 5000
    total_steps: int = 600000

    def lr(self, step: tf.Tensor) -> tf.Tensor:
        s = tf.cast(step, tf.float64)
        warm = self.base_lr * s / max(1, self.warmup_steps)
        # Tensor first: a leading Python 1.0 would become float32 in a graph and not match the float64.
        progress = tf.minimum((s - self.warmup_steps) / max(1, self.total_steps - self.warmup_steps), 1.0)
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
