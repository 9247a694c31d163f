"""``step``: images/s of `training.train_step.TrainStep` (the project's training step) on synthetic inputs
for our ResNet; ``--compare`` runs the same step on ``keras.applications`` ResNet-V2 of the same depth, and
``--rounds`` times both that many times, interleaved.
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
    "rounds",
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


class PreparedStep:
    """One model in `training.train_step.TrainStep` on one synthetic batch, traced, ready to be timed.

    Building and tracing happen once (`__init__`); `time` can then be called in rounds interleaved with
    another model's, so that both see the same machine state (``--rounds``). Both models go through exactly
    the same step object, optimizer and loss, so the ratio isolates the model.
    """

    def __init__(self, kind: str, settings: StepSettings, *, reference_model: str = "auto") -> None:
        import keras

        from models import losses
        from training import train_step

        s = self.settings = settings
        train_step.set_precision(s.precision)
        try:
            self.model = build_model(kind, s, reference_model=reference_model)
            self._step = train_step.TrainStep(
                self.model,
                train_step.make_optimizer(precision=s.precision),
                task="multilabel",
                schedule=lambda global_step: 1e-4,
                loss=losses.AdaptiveMultiLabelLoss(s.num_classes),
                xla=s.xla,
            )
            self._batch = synthetic_batch(
                batch_size=s.batch_size, image_size=s.image_size, num_classes=s.num_classes, tags=s.tags
            )
            with Timer() as first:
                self._run(1)  # tracing (and XLA compilation) happen here
            self.first_step_s = first.wall
            self._run(max(s.warmup - 1, 0))
        finally:
            keras.mixed_precision.set_global_policy("float32")

    def _run(self, steps: int) -> None:
        out = None
        for _ in range(steps):
            out = self._step(*self._batch)
        if out is not None:
            float(out["loss"])  # waits for the last step

    def time(self) -> dict:
        """Images/s (wall) and CPU ms per step of `settings.steps` steps."""
        s = self.settings
        with Timer() as t:
            self._run(s.steps)
        return {
            "model": self.model.name,
            "params": int(sum(np.prod(v.shape) for v in self.model.trainable_variables)),
            "images_per_s": round(s.steps * s.batch_size / t.wall, 2),
            "ms_per_step": round(t.wall / s.steps * 1e3, 1),
            "cpu_ms_per_step": round(t.cpu / s.steps * 1e3, 1),
            "first_step_s": round(self.first_step_s, 1),
            "steps": s.steps,
        }


def time_train_step(kind: str, settings: StepSettings, *, reference_model: str = "auto") -> dict:
    """Images/s of `training.train_step.TrainStep` (multi-label task, adaptive loss) on one synthetic batch."""
    return PreparedStep(kind, settings, reference_model=reference_model).time()


def run(f: flags.FlagValues) -> None:
    """Train-step images/s of our ResNet and, with --compare, of the Keras ResNet-V2 in the same step.

    With --compare and --rounds=R, both models are built and traced first, then timed R times alternately
    (ours, Keras, Keras, ours, ...); the ratio is the median of the per-round ratios.
    """
    emit_machine("step")
    settings = StepSettings.from_flags(f)
    common = {**settings.described(), "num_classes": settings.num_classes, "base_width": settings.base_width}
    steps = {"ours": PreparedStep("ours", settings)}
    if f.compare:
        steps["keras_reference"] = PreparedStep("keras", settings, reference_model=f.reference_model)
    results: dict[str, list[dict]] = {name: [] for name in steps}
    for round_index in range(f.rounds):
        order = list(steps) if round_index % 2 == 0 else list(steps)[::-1]
        for name in order:
            result = steps[name].time()
            results[name].append(result)
            emit(f"step/{name}", round=round_index, **common, **result)
    if f.compare:
        ratios = [
            ours["images_per_s"] / reference["images_per_s"]
            for ours, reference in zip(results["ours"], results["keras_reference"], strict=True)
        ]
        cpu_ratios = [
            reference["cpu_ms_per_step"] / ours["cpu_ms_per_step"]
            for ours, reference in zip(results["ours"], results["keras_reference"], strict=True)
        ]
        emit(
            "step/ratio",
            ours_vs_keras_reference=round(float(np.median(ratios)), 3),
            per_round=[round(r, 3) for r in ratios],
            cpu_time_ours_vs_keras_reference=round(float(np.median(cpu_ratios)), 3),
            target=0.95,
        )
