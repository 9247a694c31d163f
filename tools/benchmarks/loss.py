"""``loss``: the adaptive 11,166-class loss (class weights + weighted sigmoid cross-entropy, forward and
backward w.r.t. the logits) vs plain sigmoid cross-entropy, as a fraction of the step time (measured here
by step.py, or ``--step_ms``).
"""

from __future__ import annotations

from collections.abc import Callable

from absl import flags

from tools.benchmarks.common import Timer, emit, emit_machine
from tools.benchmarks.step import StepSettings, synthetic_batch, time_train_step

FLAGS_USED: tuple[str, ...] = (
    "num_classes",
    "tags",
    "batch_size",
    "steps",
    "warmup",
    "step_ms",
    # The step that --step_ms replaces:
    "depth",
    "base_width",
    "image_size",
    "precision",
    "xla",
)


def prepared_losses(*, num_classes: int, batch_size: int, tags: int) -> dict[str, Callable[[], object]]:
    """``adaptive`` and ``plain_sigmoid``: each a call of that loss's forward and backward w.r.t. the logits
    on one synthetic batch (the gradient is returned, so that nothing is pruned)."""
    import tensorflow as tf

    from models import losses

    _, labels = synthetic_batch(batch_size=batch_size, image_size=8, num_classes=num_classes, tags=tags)
    logits = tf.random.stateless_normal([batch_size, num_classes], [0, 2])
    adaptive = losses.AdaptiveMultiLabelLoss(num_classes)

    @tf.function
    def ours(labels, logits):
        weights = adaptive.class_weights(labels)
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = adaptive(labels, logits, weights)
        return tape.gradient(value, logits)

    @tf.function
    def plain(labels, logits):
        with tf.GradientTape() as tape:
            tape.watch(logits)
            value = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=labels, logits=logits))
        return tape.gradient(value, logits)

    return {"adaptive": lambda: ours(labels, logits), "plain_sigmoid": lambda: plain(labels, logits)}


def time_calls(call: Callable[[], object], *, calls: int, warmup: int) -> Timer:
    """Wall and CPU time of `calls` calls after `warmup + 1` untimed ones (the first traces)."""
    for _ in range(warmup + 1):
        call().numpy()
    with Timer() as t:
        for _ in range(calls):
            out = call()
        out.numpy()
    return t


def run(f: flags.FlagValues) -> None:
    """The adaptive loss (class weights + weighted sigmoid CE, forward and backward w.r.t. the logits) vs
    plain sigmoid cross-entropy, and both as a fraction of the train step."""
    emit_machine("loss")
    num_classes, batch_size = f.num_classes, f.batch_size
    calls = max(f.steps * 10, 100)  # a loss call takes about a millisecond: time many
    timings = {}
    for name, call in prepared_losses(num_classes=num_classes, batch_size=batch_size, tags=f.tags).items():
        t = time_calls(call, calls=calls, warmup=f.warmup)
        timings[name] = t.wall / calls * 1e3
        emit(
            f"loss/{name}",
            ms=round(timings[name], 3),
            cpu_ms=round(t.cpu / calls * 1e3, 3),
            batch_size=batch_size,
            num_classes=num_classes,
            calls=calls,
        )
    if f.step_ms:
        step_ms, source = f.step_ms, "--step_ms"
    else:
        settings = StepSettings.from_flags(f)
        step_ms = time_train_step("ours", settings)["ms_per_step"]
        source = f"measured: {settings.described()}"
    emit(
        "loss/fraction_of_step",
        step_ms=step_ms,
        step_source=source,
        adaptive_fraction=round(timings["adaptive"] / step_ms, 5),
        extra_over_plain_fraction=round((timings["adaptive"] - timings["plain_sigmoid"]) / step_ms, 5),
        target=0.05,
    )
