"""One training step: forward/backward (optionally XLA), cross-rank averaging, SGD momentum, NaN guard.

The step is split because Horovod ops cannot be XLA-compiled:

- `_gradients` (jit-compilable): forward in training mode (BatchNorm uses and updates batch statistics),
  the loss (adaptive multi-label or softmax cross-entropy) and its gradients, cast to the wire format;
- `_step` (a plain `tf.function` around it): the multi-label class weights (the counters and the
  negative draw, with the class status of the global batch, or of each rank's own batch with
  class_status "local"), then the grouped all-reduces through `training/distributed.py` (sums, in fp32 or
  fp16 on the wire with `allreduce_dtype="fp16"`): the gradients, and with the last gradient group the
  BatchNorm moving statistics, the loss and the stop flag (one collective per group: K + 1 per step with
  the class status);
- `_update` (jit-compilable): everything after the all-reduce as one XLA computation with `xla`: the means
  (in float32), the weight decay's gradient (added here, in float32: every rank holds the same weights, so
  it needs no communication and never meets the fp16 wire), the learning rate of this step, the NaN guard
  and the update, applied only when the global loss is finite; otherwise the weights, optimizer slots,
  moving statistics and step stay as they were (only the loss counters have advanced). With loss scaling
  (fp16) non-finite gradients are the loss-scale optimizer's: it skips the step and lowers its scale.
  The first non-finite step is recorded on the device (`first_bad_step`, `bad_loss`) and every later step is
  discarded too (the model is frozen at its last good state), so the host need not read anything per step:
  `TrainStep.__call__(..., check_finite=False)` only dispatches, and `raise_if_non_finite()`, called by
  the loop when it logs, saves or evaluates anyway, raises `NonFiniteLossError`, so the run stops within
  `log_every` steps with its last good checkpoint intact.

Images: uint8 (the input pipeline's default transport, a quarter of float32's bytes to the device) are mapped
to the model's float32 [-1, 1] inside the first compiled function that receives them (`_gradients`, or the
first segment's forward), by `preprocessing.uint8_to_model_range`: bit-identical to mapping them on the host.
Float images pass unchanged. The model itself takes [-1, 1] (the inference tools and exports do not change).

Backward segments (`backward_segments = K > 1`): the model is cut into K chained sub-models sharing its
layers (`resnet.split_segments`: ..., stage 3, the 11,166-way head). `_step` runs their forwards one by one
(each its own XLA function) under one tape each, then differentiates them head first, passing each
segment's input gradient to the one before, and hands each segment's gradients to its own grouped
all-reduce as soon as they exist, so Horovod sends them while the earlier segments' backward still runs.
The loss, the gradients and the BN updates are those of K = 1 (bit-identical without XLA,
tests/test_segments.py).

Equivalence: with `accum_steps = k` one process splits its batch into k micro-batches, each normalised by
its own batch statistics, and averages their gradients; this is exactly what k ranks with the same
micro-batches compute. The moving statistics follow the same rule: every micro-batch (or rank) starts from
the same moving statistics and the results are averaged (the moving averages are linear, so this is the
moving average of the mean batch statistics). Hence all ranks hold identical weights, optimizer slots,
moving statistics and loss counters at every step, and a 2-rank run equals one process with
`accum_steps=2` on the concatenated batch. Gradient accumulation also lets fewer GPUs reproduce the
reference global batch of 4096 without rescaling the schedule. (With class_status "local" the loss
counters, and so the class weights, differ between ranks: this equivalence then does not hold.)
"""

from __future__ import annotations

import math

import keras
import tensorflow as tf

from data.pixels import preprocessing
from models import losses, resnet
from training import distributed
from training.config import CLASS_STATUSES, TASKS

_POLICIES = {"fp32": "float32", "bf16": "mixed_bfloat16", "fp16": "mixed_float16"}


class NonFiniteLossError(FloatingPointError):
    """The global loss of a step was NaN or Inf; the step was not applied."""


@keras.saving.register_keras_serializable(package="mlimages")
class TF1Momentum(keras.optimizers.Optimizer):
    """SGD with momentum exactly as TF1's `tf.train.MomentumOptimizer` (the release's optimizer).

    accum <- momentum * accum + gradient; variable <- variable - lr * accum. Keras' SGD instead folds the
    learning rate into the velocity (v <- momentum * v - lr * g), which differs from the release for a few
    dozen steps after every learning-rate change (the warm-up's x1.297 steps, the x0.1 decays).
    """

    def __init__(
        self, learning_rate: float = 0.01, momentum: float = 0.9, name: str = "tf1_momentum", **kwargs
    ):
        super().__init__(learning_rate=learning_rate, name=name, **kwargs)
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.momentum = momentum

    def build(self, variables):
        if self.built:
            return
        super().build(variables)
        self.momentums = self.add_optimizer_variables(variables, "momentum")

    def update_step(self, gradient, variable, learning_rate):
        learning_rate = tf.cast(learning_rate, variable.dtype)
        accum = self.momentums[self._get_variable_index(variable)]
        self.assign(accum, accum * tf.cast(self.momentum, variable.dtype) + tf.cast(gradient, variable.dtype))
        self.assign_sub(variable, learning_rate * accum)

    def get_config(self):
        return {**super().get_config(), "momentum": self.momentum}


def make_optimizer(*, momentum: float = 0.9, precision: str = "fp32") -> keras.optimizers.Optimizer:
    """The release's SGD momentum; for fp16, wrapped in dynamic loss scaling."""
    optimizer = TF1Momentum(learning_rate=0.0, momentum=momentum)
    if precision == "fp16":
        return keras.optimizers.LossScaleOptimizer(optimizer)
    return optimizer


def set_precision(precision: str) -> None:
    """Sets Keras' dtype policy; call before building the model (the logits stay float32)."""
    if precision not in _POLICIES:
        raise ValueError(f"precision must be one of {sorted(_POLICIES)}, got {precision!r}")
    keras.mixed_precision.set_global_policy(_POLICIES[precision])


def frozen_layers(model: keras.Model, frozen_stages: int) -> list[keras.Layer]:
    """The stem and stages 0 .. frozen_stages-1 of our ResNet (FixBlock2 = 2), chosen by layer name.

    Our layer names are structured (`init_conv`, `stages_{i}_block_{j}_...`), so this is a parse of the
    architecture, not a substring match on variable names.
    """
    if frozen_stages < 0:
        return []
    chosen = []
    for layer in model.layers:
        block = resnet.parse_layer_name(layer.name)
        if layer.name == resnet.STEM_LAYER or (block is not None and block.stage < frozen_stages):
            chosen.append(layer)
    return chosen


def batch_norm_statistics(model: keras.Model) -> list[keras.Variable]:
    """The moving mean and variance of every BatchNormalization layer (descending into nested models)."""
    stats = []
    for layer in losses.all_layers(model):
        if isinstance(layer, keras.layers.BatchNormalization):
            stats += [layer.moving_mean, layer.moving_variance]
    return stats


def model_input(images: tf.Tensor) -> tf.Tensor:
    """The model's float [-1, 1] input from a training batch: uint8 images (the default image transport) are
    mapped on the device (`preprocessing.uint8_to_model_range`); float images pass unchanged. A mixed
    precision model casts this float32 input to its compute dtype in its first layer, as before."""
    if images.dtype == tf.uint8:
        return preprocessing.uint8_to_model_range(images)
    return images


class TrainStep:
    """A callable training step `step(images, labels) -> dict of scalar tensors`.

    `images` are uint8 (mapped to [-1, 1] inside the compiled step, `model_input`) or float in [-1, 1].

    Owns the step counter (`global_step`); the model, optimizer and loss state are the caller's and are
    what a checkpoint saves together with `global_step`.
    """

    def __init__(
        self,
        model: keras.Model,
        optimizer: keras.optimizers.Optimizer,
        *,
        task: str,
        schedule,
        dist: distributed.Distributed | None = None,
        loss: losses.AdaptiveMultiLabelLoss | None = None,
        weight_decay: float = 1e-4,
        bn_weight_decay_scale: float = 0.0,
        frozen_stages: int = -1,
        xla: bool = False,
        accum_steps: int = 1,
        class_status: str = "global",
        backward_segments: int = 1,
        allreduce_dtype: str = "fp32",
    ) -> None:
        """Builds the step.

        Args:
          model: a Keras model mapping images to float32 logits.
          optimizer: from `make_optimizer` (a LossScaleOptimizer enables loss scaling).
          task: "multilabel" (the adaptive sigmoid loss, `loss` required) or "softmax" (cross-entropy on
            int labels).
          schedule: a pure function step -> learning rate (training/schedules.py).
          dist: the data-parallel context (None: one process).
          loss: the stateful adaptive loss for "multilabel".
          weight_decay: the L2 factor on conv/dense weights (0.5 ||w||^2 each); its gradient is added after
            the all-reduce.
          bn_weight_decay_scale: BatchNorm gamma/beta get this x weight_decay (fine-tuning: 0.1).
          frozen_stages: the stem and stages below this are not trained (their BN statistics still update,
            as in the release's FixBlock2); -1 trains everything.
          xla: compile the forward/backward with XLA.
          accum_steps: micro-batches per step (the batch must divide evenly); see the module docstring.
          class_status: "global": a class's status in the step (loss step 1) is that of the global batch
            and every rank holds the same loss counters; "local": that of this rank's own batch, with
            this rank's own counters (`rank_local_variables`), as the release's model_fn run once per GPU.
          backward_segments: K > 1 differentiates the model as K segments (`resnet.split_segments`), head
            first, each with its own grouped all-reduce issued as soon as its gradients exist, so Horovod
            sends them while the earlier segments' backward still runs. 1: one all-reduce after the whole
            backward. Needs accum_steps = 1. The results equal K = 1's up to float32 summation order.
          allreduce_dtype: "fp32", or "fp16" (half the bytes: cast, summed in float16, averaged in float32;
            see `distributed.to_wire`). Horovod has no bfloat16 all-reduce.
        """
        if task not in TASKS:
            raise ValueError(f"task must be one of {TASKS}, got {task!r}")
        if task == "multilabel" and loss is None:
            raise ValueError("the multilabel task needs its AdaptiveMultiLabelLoss")
        if accum_steps < 1:
            raise ValueError(f"accum_steps must be >= 1, got {accum_steps}")
        if class_status not in CLASS_STATUSES:
            raise ValueError(f"class_status must be one of {CLASS_STATUSES}, got {class_status!r}")
        self.model = model
        self.optimizer = optimizer
        self.task = task
        self.schedule = schedule
        self.dist = dist or distributed.Distributed()
        self.loss = loss
        self.weight_decay = weight_decay
        self.bn_weight_decay_scale = bn_weight_decay_scale
        self.accum_steps = accum_steps
        self.class_status = class_status
        if allreduce_dtype not in distributed.ALLREDUCE_DTYPES:
            raise ValueError(
                f"allreduce_dtype must be one of {distributed.ALLREDUCE_DTYPES}, got {allreduce_dtype!r}"
            )
        if backward_segments > 1 and accum_steps > 1:
            raise ValueError(
                "backward_segments > 1 needs accum_steps = 1 (the micro-batches are summed first)"
            )
        self.allreduce_dtype = allreduce_dtype
        self.segments = resnet.split_segments(model, backward_segments)
        self.loss_scaling = isinstance(optimizer, keras.optimizers.LossScaleOptimizer)
        frozen = {id(v) for layer in frozen_layers(model, frozen_stages) for v in layer.trainable_weights}
        self.train_variables = [v for v in model.trainable_variables if id(v) not in frozen]
        self.bn_statistics = batch_norm_statistics(model)
        self.global_step = tf.Variable(0, dtype=tf.int64, trainable=False, name="global_step")
        # The NaN guard's device-side record (not checkpointed: a resumed run starts clean).
        self.first_bad_step = tf.Variable(-1, dtype=tf.int64, trainable=False, name="first_bad_step")
        self.bad_loss = tf.Variable(0.0, dtype=tf.float32, trainable=False, name="bad_loss")
        # NaN/Inf label values in this rank's batch of that step: broken data, not a diverging model.
        self.bad_labels = tf.Variable(0, dtype=tf.int64, trainable=False, name="bad_labels")
        optimizer.build(self.train_variables)  # slots exist before a restore or a broadcast
        # One trace per batch shape (one per image-size phase): a resumed run builds exactly the graph of
        # an uninterrupted one (a shape-relaxed retrace would differ in the last bits).
        # Weight decay is not part of the differentiated loss: `_update` adds its gradient (factor x w) to the
        # all-reduced mean in float32. Every rank holds the same weights, so it needs no communication, and
        # it never meets the float16 wire (where 1e-4 x |w| was flushed to zero).
        factors = {id(v): weight_decay for v in losses.weight_decay_variables(model)}
        if bn_weight_decay_scale:
            factors.update(
                {
                    id(v): bn_weight_decay_scale * weight_decay
                    for v in losses.weight_decay_variables(model, batch_norm=True)
                }
            )
        self._decay_factors = [factors.get(id(v), 0.0) for v in self.train_variables]
        self._compiled_gradients = tf.function(self._gradients, jit_compile=xla)
        # Segments: each forward XLA-compiled on its own; differentiated from the plain `_step`, whose tape
        # then compiles each segment's backward too (Horovod ops stay outside XLA).
        self._segment_forward = [tf.function(self._segment_call(m), jit_compile=xla) for m in self.segments]
        self._compiled_head_loss = tf.function(self._head_loss, jit_compile=xla)
        # Everything between and after the all-reduces is compiled too, so that with `xla` the plain
        # `_step` is little more than the calls of these functions and of Horovod's ops (the host does not
        # walk hundreds of small ops per step: tools/benchmarks/xla_ops.py counts them).
        self._read_statistics = tf.function(self._statistics, jit_compile=xla)
        self._restore_statistics = tf.function(self._assign_statistics, jit_compile=xla)
        self._wire = tf.function(self._to_wire, jit_compile=xla)
        self._compiled_update = tf.function(self._update, jit_compile=xla)
        self._compiled_step = tf.function(self._step)

    # ------------------------------------------------------------------------------------------- pieces

    def _gradients(self, images, labels, class_weights):
        """This rank's gradients of the (scaled) cross-entropy in the wire format, the loss, and the moving
        statistics the forward left."""
        with tf.GradientTape() as tape:
            logits = self.model(model_input(images), training=True)
            ce = self._cross_entropy(labels, logits, class_weights)
            scaled = self.optimizer.scale_loss(ce) if self.loss_scaling else ce
        gradients = tape.gradient(scaled, self.train_variables)
        return self._to_wire(gradients), ce, self._statistics()

    def _to_wire(self, tensors):
        return [distributed.to_wire(t, self.allreduce_dtype) for t in tensors]

    def _statistics(self):
        return [tf.identity(v) for v in self.bn_statistics]

    def _assign_statistics(self, values):
        self._assign(self.bn_statistics, values)

    @staticmethod
    def _segment_call(segment: keras.Model):
        return lambda x: segment(model_input(x), training=True)  # uint8 reaches only the first segment

    def _cross_entropy(self, labels, logits, class_weights):
        if self.task == "multilabel":
            return self.loss(labels, logits, class_weights)
        return tf.reduce_mean(
            tf.nn.sparse_softmax_cross_entropy_with_logits(
                labels=tf.cast(labels, tf.int32), logits=tf.cast(logits, tf.float32)
            )
        )

    def _head_loss(self, logits, labels, class_weights):
        return self._cross_entropy(labels, logits, class_weights)

    def _segmented_gradients(self, images, labels, class_weights):
        """Segment by segment backward, head first, each segment's gradients all-reduced when they exist.

        The last segment differentiated (the earliest that trains something) is not all-reduced here: its
        gradients go with the step's scalars in one group (`_step`).

        Returns:
          The summed gradients of the other segments by variable id (wire format), the last segment's
          local gradients (wire format) and variables, and this rank's cross-entropy.
        """
        trained = {id(v) for v in self.train_variables}
        scale = self.optimizer.scale_loss(tf.constant(1.0)) if self.loss_scaling else tf.constant(1.0)
        tapes, inputs, outputs, seg_vars = [], [], [], []
        x = images
        for segment, forward in zip(self.segments, self._segment_forward, strict=True):
            with tf.GradientTape() as tape:
                # uint8 images have no gradient, and none is needed: they are the first segment's input.
                if x.dtype.is_floating:
                    tape.watch(x)
                y = forward(x)
                if len(tapes) == len(self.segments) - 1:
                    ce = self._compiled_head_loss(y, labels, class_weights)
            tapes.append(tape)
            inputs.append(x)
            outputs.append(y)
            seg_vars.append([v for v in segment.trainable_variables if id(v) in trained])
            x = y
        summed = {}
        # The earliest segment that trains something: below it no input gradient is needed.
        first = next((i for i, v in enumerate(seg_vars) if v), len(seg_vars))
        upstream = None  # d(scaled loss)/d(segment output)
        last_grads: list[tf.Tensor] = []
        for i in reversed(range(first, len(self.segments))):
            target, head = (ce, scale) if upstream is None else (outputs[i], upstream)
            sources = [*seg_vars[i], inputs[i]] if i > first else list(seg_vars[i])
            grads = tapes[i].gradient(target, sources, output_gradients=head)
            if i == first:
                last_grads = grads[: len(seg_vars[i])]  # sent by `_step`, with the scalars
            elif seg_vars[i]:
                # Horovod: this segment's own grouped all-reduce, while the earlier segments' backward runs.
                done = self.dist.sum_group(self._wire(grads[: len(seg_vars[i])]))
                summed.update({id(v): g for v, g in zip(seg_vars[i], done, strict=True)})
            if i > first:
                upstream = grads[-1]
        last_vars = seg_vars[first] if first < len(seg_vars) else []
        return summed, list(last_grads), last_vars, ce

    def _micro_batches(self, images, labels, class_weights, start_statistics):
        """Gradients (wire format), cross-entropy and moving statistics averaged over this rank's
        micro-batches."""
        if self.accum_steps == 1:
            gradients, ce, stats = self._compiled_gradients(images, labels, class_weights)
            return list(gradients), ce, list(stats)
        total_grads = total_ce = total_stats = None
        for images_k, labels_k in zip(
            tf.split(images, self.accum_steps), tf.split(labels, self.accum_steps), strict=True
        ):
            self._restore_statistics(start_statistics)
            gradients, ce, stats = self._compiled_gradients(images_k, labels_k, class_weights)
            if total_grads is None:
                total_grads, total_ce, total_stats = list(gradients), ce, list(stats)
            else:
                total_grads = [a + b for a, b in zip(total_grads, gradients, strict=True)]
                total_ce += ce
                total_stats = [a + b for a, b in zip(total_stats, stats, strict=True)]
        k = float(self.accum_steps)
        return [g / tf.cast(k, g.dtype) for g in total_grads], total_ce / k, [s / k for s in total_stats]

    @staticmethod
    def _assign(variables, values) -> None:
        for variable, value in zip(variables, values, strict=True):
            variable.assign(value)

    def _last_group_in_fp32(self, last_vars) -> bool:
        """Whether the last gradient group travels in float32 with the scalars (one collective, not two).

        With the fp16 wire that costs its values twice the bytes, so only a small group (at most 1/8 of the
        gradient values: ResNet-101's stem - stage 1 segment is 2.2 %) is sent that way; it is all-reduced
        after the whole backward, where one Horovod cycle more would cost more than its extra bytes.
        """
        if self.allreduce_dtype == "fp32":
            return True
        if not last_vars or len(self.segments) == 1:
            return False
        size = sum(math.prod(v.shape) for v in last_vars)
        return 8 * size <= sum(math.prod(v.shape) for v in self.train_variables)

    def _step(self, images, labels, stop):
        start_statistics = self._read_statistics()
        class_weights = tf.zeros([0])
        if self.task == "multilabel":
            # Horovod: with "global", the class status is that of the global batch (per-class positives summed
            # over ranks); with "local", that of this rank's batch.
            class_weights = self.loss.class_weights(
                labels, sum_across_ranks=self.dist.allreduce_sum if self.class_status == "global" else None
            )
        if len(self.segments) > 1:
            summed, last, last_vars, ce = self._segmented_gradients(images, labels, class_weights)
            stats = self._read_statistics()
            if not self._last_group_in_fp32(last_vars):
                last = self._wire(last)
        else:
            last, ce, stats = self._micro_batches(images, labels, class_weights, start_statistics)
            summed, last_vars = {}, self.train_variables
        # Horovod: the last gradients, the moving statistics, the loss and the stop flag in one group (two
        # when the gradients travel in float16: a group shares one dtype), summed; `_update` averages.
        scalars = tf.stack([tf.cast(ce, tf.float32), tf.cast(stop, tf.float32)])
        sums = self.dist.sum_group([*last, *stats, scalars])
        summed.update({id(v): g for v, g in zip(last_vars, sums[: len(last)], strict=True)})
        return self._compiled_update(
            [summed[id(v)] for v in self.train_variables],
            sums[len(last) : len(last) + len(stats)],
            sums[-1],
            start_statistics,
            labels,
        )

    def _update(self, gradient_sums, statistic_sums, scalar_sums, start_statistics, labels):
        """Everything after the all-reduce, one XLA computation with `xla`: the means, the weight decay, the
        learning rate, the NaN guard and the update (optimizer, moving statistics, step)."""
        size = self.dist.size
        gradients = [
            distributed.from_wire(g, size=size, dtype=v.dtype)
            for g, v in zip(gradient_sums, self.train_variables, strict=True)
        ]
        stats = [distributed.from_wire(s, size=size, dtype=tf.float32) for s in statistic_sums]
        ce = scalar_sums[0] / size
        # The weight decay's gradient, in float32 on the averaged gradient (with loss scaling: scaled alike,
        # by a power of two, so the optimizer's unscaling returns it exactly).
        scale = self.optimizer.scale_loss(tf.constant(1.0)) if self.loss_scaling else None
        gradients = [
            g + tf.cast(factor * (v if scale is None else v * scale), g.dtype) if factor else g
            for g, v, factor in zip(gradients, self.train_variables, self._decay_factors, strict=True)
        ]
        wd = losses.weight_decay_loss(
            self.model,
            weight_decay=self.weight_decay,
            bn_scale=self.bn_weight_decay_scale,
            variables=self.train_variables,
        )
        logged = tf.stack([ce + wd, ce, wd])
        lr = tf.cast(self.schedule(self.global_step), tf.float32)
        # The global loss is the same on every rank, so every rank takes the same branch. After a bad step
        # every later step is discarded too: nothing moves until the host notices and stops the run.
        finite = tf.reduce_all(tf.math.is_finite(logged))
        if self.allreduce_dtype == "fp16" and not self.loss_scaling:
            # A float16 overflow on the wire gives Inf gradients at a finite loss. With loss scaling the
            # optimizer sees them instead: it skips the step and lowers its scale, as for any fp16 overflow.
            finite = tf.logical_and(
                finite, tf.reduce_all([tf.reduce_all(tf.math.is_finite(g)) for g in gradients])
            )
        healthy = self.first_bad_step < 0

        def apply():
            self._assign(self.bn_statistics, stats)
            self.optimizer.learning_rate.assign(lr)
            self.optimizer.apply(gradients, self.train_variables)
            self.global_step.assign_add(1)
            return tf.constant(True)

        def discard():
            self._assign(self.bn_statistics, start_statistics)  # undo the forward's moving-average update
            self.first_bad_step.assign(tf.where(healthy, self.global_step, self.first_bad_step))
            self.bad_loss.assign(tf.where(healthy, tf.cast(logged[0], tf.float32), self.bad_loss))
            if labels.dtype.is_floating:
                bad = tf.reduce_sum(tf.cast(tf.logical_not(tf.math.is_finite(labels)), tf.int64))
                self.bad_labels.assign(tf.where(healthy, bad, self.bad_labels))
            return tf.constant(False)

        applied = tf.cond(tf.logical_and(finite, healthy), apply, discard)
        return {
            "loss": logged[0],
            "cross_entropy": logged[1],
            "weight_decay": logged[2],
            "lr": lr,
            "applied": applied,
            "stop_votes": scalar_sums[1],
        }

    # ----------------------------------------------------------------------------------------------- API

    def __call__(
        self, images, labels, *, check_finite: bool = True, stop_requested: bool | None = None
    ) -> dict[str, tf.Tensor]:
        """Runs one step on this rank's batch.

        Args:
          images: this rank's images.
          labels: this rank's labels.
          check_finite: raise NonFiniteLossError at once if this (or an earlier) step was not finite. That
            reads a device value, so the host waits for the step to finish; the training loop passes False
            (the step is only dispatched, the host runs ahead) and calls `raise_if_non_finite` when it logs.
          stop_requested: this rank's stop flag (preemption), summed over the ranks in the step's own
            all-reduce of its scalars (no collective of its own): the result is `stop_votes`. None: not
            returned.

        Returns:
          The step's loss, cross_entropy, weight_decay and lr (device tensors), and `stop_votes` (how many
          ranks asked to stop) when `stop_requested` is given.
        """
        logs = self._compiled_step(images, labels, tf.constant(float(bool(stop_requested))))
        logs.pop("applied")
        if stop_requested is None:
            logs.pop("stop_votes")
        if check_finite:
            self.raise_if_non_finite()
        return logs

    def raise_if_non_finite(self) -> None:
        """Raises NonFiniteLossError if a step since the start (or a restore) had a NaN/Inf loss.

        That step and every later one were discarded on the device, so the model, optimizer slots, moving
        statistics and `global_step` are those from before it.
        """
        bad_step = int(self.first_bad_step.numpy())
        if bad_step >= 0:
            raise NonFiniteLossError(
                f"the loss became NaN or Inf at step {bad_step} (loss {float(self.bad_loss.numpy())}); "
                "the step was not applied and the model is unchanged. "
                "Lower the learning rate, check the data, or use --precision fp32."
            )

    def state_variables(self) -> list:
        """Every variable that must be equal on all ranks (broadcast at start and after a restore)."""
        state = [*self.model.variables, *self.optimizer.variables, self.global_step]
        if self.loss is not None:
            if not self.rank_local_variables():
                state += [self.loss.pos_count, self.loss.neg_count]
            state.append(self.loss.generator.state)  # the same negative draw on every rank
        return state

    def rank_local_variables(self) -> list:
        """The state that differs between ranks: the loss counters with class_status "local", else none.

        These are saved and restored per rank (training/checkpoints.py), never broadcast.
        """
        if self.loss is None or self.class_status != "local":
            return []
        return [self.loss.pos_count, self.loss.neg_count]

    def momentum_variables(self) -> list:
        """The optimizer's momentum accumulator of each of `train_variables`, in the same order.

        Their meaning is that of TF1's MomentumOptimizer slot (`TF1Momentum`), so a release checkpoint's
        `<variable>/Momentum` can be copied into them.
        """
        optimizer = self.optimizer.inner_optimizer if self.loss_scaling else self.optimizer
        return [optimizer.momentums[optimizer._get_variable_index(v)] for v in self.train_variables]
