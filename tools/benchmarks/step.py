"""``step``: images/s of `training.train_step.TrainStep` (the project's training step) on synthetic inputs
for our ResNet; ``--compare`` runs the same step on ``keras.applications`` ResNet-V2 of the same depth.
"""

from __future__ import annotations

import dataclasses

import numpy as np
from absl import flags

from tools.benchmarks.common import Timer, emit, emit_machine, random_tags

FLAGS_USED: tuple[str, ...] = (
    "depth",
    "base_width",
    "num_classes",
    "tags",
    "batch_size",
    "image_size",
    "precision",
    "xla",
    "compare",
    "reference_model",
    "steps",
    "warmup",
)


@dataclasses.dataclass(frozen=True)
class StepSettings:
    """What a timed train step is: the model, the batch and the precision (the flags of `step`)."""

    depth: int
    base_width: int
    num_classes: int
    tags: int
    batch_size: int
    image_size: int
    precision: str
    xla: bool
    steps: int
    warmup: int

    @classmethod
    def from_flags(cls, f: flags.FlagValues) -> StepSettings:
        return cls(
            depth=int(f.depth),
            base_width=f.base_width,
            num_classes=f.num_classes,
            tags=f.tags,
            batch_size=f.batch_size,
            image_size=f.image_size,
            precision=f.precision,
            xla=f.xla,
            steps=f.steps,
            warmup=f.warmup,
        )

    def described(self) -> dict:
        """The settings printed with each measurement (and as the loss's `step_source`)."""
        return {
            "depth": self.depth,
            "batch_size": self.batch_size,
            "image_size": self.image_size,
            "precision": self.precision,
            "xla": self.xla,
        }


def synthetic_batch(*, batch_size: int, image_size: int, num_classes: int, tags: int, seed: int = 0):
    """Images in [-1, 1] and dense multi-label targets with `tags` tags of confidence 1, 0.9 or 0.8."""
    import tensorflow as tf

    rng = np.random.default_rng(seed)
    labels = np.zeros([batch_size, num_classes], np.float32)
    for row in labels:
        for index, confidence in random_tags(rng, num_classes=num_classes, tags=tags).items():
            row[index] = confidence
    images = tf.random.stateless_uniform([batch_size, image_size, image_size, 3], [seed, 1], -1.0, 1.0)
    return images, tf.constant(labels)


def reference_model_name(choice: str, depth: int) -> str:
    """The keras.applications model of `--reference_model` (auto: the V2 ResNet of `depth`, else 101)."""
    if choice != "auto":
        return choice
    return {50: "resnet50v2", 152: "resnet152v2"}.get(depth, "resnet101v2")


def build_model(kind: str, settings: StepSettings, *, reference_model: str = "auto"):
    """Our ResNet (`ours`) or a keras.applications ResNet-V2 without weights (`keras`), float32 logits."""
    import keras

    from models import resnet

    shape = (settings.image_size, settings.image_size, 3)
    if kind == "ours":
        return resnet.build_resnet(
            settings.depth, settings.num_classes, base_width=settings.base_width, input_shape=shape
        )
    constructor = {
        "resnet50v2": keras.applications.ResNet50V2,
        "resnet101v2": keras.applications.ResNet101V2,
        "resnet152v2": keras.applications.ResNet152V2,
    }[reference_model_name(reference_model, settings.depth)]
    return constructor(
        weights=None, input_shape=shape, classes=settings.num_classes, classifier_activation=None
    )


def time_train_step(kind: str, settings: StepSettings, *, reference_model: str = "auto") -> dict:
    """Images/s of `training.train_step.TrainStep` (multi-label task, adaptive loss) on one synthetic batch.

    Both models go through exactly the same step object, optimizer and loss, so the ratio isolates the
    model.
    """
    import keras

    from models import losses
    from training import train_step

    s = settings
    train_step.set_precision(s.precision)
    try:
        model = build_model(kind, s, reference_model=reference_model)
        step = train_step.TrainStep(
            model,
            train_step.make_optimizer(precision=s.precision),
            task="multilabel",
            schedule=lambda global_step: 1e-4,
            loss=losses.AdaptiveMultiLabelLoss(s.num_classes),
            xla=s.xla,
        )
        images, labels = synthetic_batch(
            batch_size=s.batch_size, image_size=s.image_size, num_classes=s.num_classes, tags=s.tags
        )
        with Timer() as first:
            float(step(images, labels)["loss"])  # tracing (and XLA compilation) happen here
        for _ in range(max(s.warmup - 1, 0)):
            float(step(images, labels)["loss"])
        with Timer() as t:
            for _ in range(s.steps):
                out = step(images, labels)
            float(out["loss"])
    finally:
        keras.mixed_precision.set_global_policy("float32")
    return {
        "model": model.name,
        "params": int(sum(np.prod(v.shape) for v in model.trainable_variables)),
        "images_per_s": round(s.steps * s.batch_size / t.wall, 2),
        "ms_per_step": round(t.wall / s.steps * 1e3, 1),
        "cpu_ms_per_step": round(t.cpu / s.steps * 1e3, 1),
        "first_step_s": round(first.wall, 1),
        "steps": s.steps,
    }


def run(f: flags.FlagValues) -> None:
    """Train-step images/s of our ResNet and, with --compare, of the Keras ResNet-V2 in the same step."""
    emit_machine("step")
    settings = StepSettings.from_flags(f)
    common = {**settings.described(), "num_classes": settings.num_classes, "base_width": settings.base_width}
    ours = time_train_step("ours", settings)
    emit("step/ours", **common, **ours)
    if f.compare:
        reference = time_train_step("keras", settings, reference_model=f.reference_model)
        emit("step/keras_reference", **common, **reference)
        emit(
            "step/ratio",
            ours_vs_keras_reference=round(ours["images_per_s"] / reference["images_per_s"], 3),
            target=0.95,
        )
