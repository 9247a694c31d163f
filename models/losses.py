"""The adaptive multi-label loss of the ML-Images pre-training, exactly as the released code computes it.

docs/REFERENCE.md section 3. For a batch with logits z and soft labels y (-1 = ignore):

1. a class is positive in the batch when any label of it is >= mask_thres (0.7), negative otherwise;
2. each step draws the negative classes that count: s_j = 1[U(0, 1) <= neg_select];
3. run-length counters, updated BEFORE the weights: a positive class adds 1 to `pos_count` and clears
   `neg_count`; a negative class clears `pos_count` and adds s_j to `neg_count`;
4. weights (log base 10) pos_w = log10(10 / (0.01 + pos_count)), floored at 0.01, and
   neg_w = log10(10 / (8 + neg_count)), replaced by 0.001 when not > 0.01 (the release's asymmetric
   floor), r = pos_w * pos + neg_w * neg * s, with no gradient through r: a class that has been positive
   for many consecutive batches weighs less, which damps the frequent classes of the imbalanced data;
5. element loss: sigmoid cross-entropy with pos_weight 12;
6. CE = sum_j r_j * mean_i(l_ij * 1[y_ij != -1]).

Weight decay (step 7) is `weight_decay_loss`, chosen by layer type.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import keras
import tensorflow as tf

_POS_FLOOR = 0.01
_NEG_THRESHOLD = 0.01
_NEG_FLOOR = 0.001


def adaptive_class_weights(
    pos_count: tf.Tensor, neg_count: tf.Tensor, pos_curr: tf.Tensor, selected: tf.Tensor
) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
    """One step of the run-length counters and the class weights computed from the UPDATED counters.

    Args:
      pos_count: float [num_classes], consecutive batches in which each class was positive.
      neg_count: float [num_classes], consecutive selected negative batches of each class.
      pos_curr: float [num_classes], 1.0 for classes positive in this batch (a label >= mask_thres), else 0.
      selected: float [num_classes], this step's negative-class draw (1.0 = selected).

    Returns:
      (new_pos_count, new_neg_count, weights), float [num_classes]; `weights` is under stop_gradient.
    """
    pos_count, neg_count, pos_curr, selected = (
        tf.cast(t, tf.float32) for t in (pos_count, neg_count, pos_curr, selected)
    )
    neg_curr = 1.0 - pos_curr
    new_pos_count = pos_count + pos_curr - pos_count * neg_curr
    new_neg_count = neg_count + neg_curr * selected - neg_count * pos_curr
    log10 = tf.math.log(10.0)
    pos_w = -tf.math.log((0.01 + new_pos_count) / 10.0) / log10
    pos_w = tf.where(pos_w > _POS_FLOOR, pos_w, _POS_FLOOR)
    neg_w = -tf.math.log((8.0 + new_neg_count) / 10.0) / log10
    # The release compares with 0.01 but substitutes 0.001: reproduced as is.
    neg_w = tf.where(neg_w > _NEG_THRESHOLD, neg_w, _NEG_FLOOR)
    weights = pos_w * pos_curr + neg_w * neg_curr * selected
    return new_pos_count, new_neg_count, tf.stop_gradient(weights)


def weighted_sigmoid_loss(
    labels: tf.Tensor, logits: tf.Tensor, class_weights: tf.Tensor, *, pos_weight: float = 12.0
) -> tf.Tensor:
    """The class-weighted sigmoid cross-entropy of the release (a scalar).

    For each class: the mean over the WHOLE batch (ignored entries count in the denominator, as in the
    release) of the element losses with ignored (-1) labels set to zero, times the class weight; summed
    over classes. The element loss -pos_weight y log(sigmoid z) - (1 - y) log(1 - sigmoid z) is computed
    in the numerically stable form of tf.nn.weighted_cross_entropy_with_logits.

    Args:
      labels: float [N, C] soft labels in [0, 1], -1 = ignore.
      logits: [N, C] (computed in float32).
      class_weights: float [C] from `adaptive_class_weights`.
      pos_weight: weight of the positive term (12 in the release).

    Returns:
      The scalar float32 loss.
    """
    labels = tf.cast(labels, tf.float32)
    logits = tf.cast(logits, tf.float32)
    element = tf.nn.weighted_cross_entropy_with_logits(labels=labels, logits=logits, pos_weight=pos_weight)
    element = tf.where(tf.not_equal(labels, -1.0), element, 0.0)
    return tf.reduce_sum(tf.reduce_mean(element, axis=0) * tf.cast(class_weights, tf.float32))


class AdaptiveMultiLabelLoss(tf.Module):
    """The release's adaptive multi-label loss with its state: counters and the negative-class draw.

    The counters `pos_count`/`neg_count` are non-trainable variables and the draw comes from a seeded
    `tf.random.Generator`; all three are saved and restored by a `tf.train.Checkpoint` holding this object,
    so a resumed run continues the same sequence.

    The training step is an XLA-compiled forward/backward with the cross-rank reductions outside it, so the
    API is split in two: `class_weights(labels)` (state update; outside XLA) and `__call__` (the loss; pure,
    may be inside XLA).

    Data parallelism: `class_weights` sums the per-class positive counts of the local batch across ranks
    (`sum_across_ranks`, e.g. `Distributed.allreduce_sum`), so the class status is that of the GLOBAL batch;
    the draw comes from a generator seeded identically on every rank and advanced once per step everywhere,
    so it is the same on every rank. Hence the counters and weights stay identical across ranks, and since
    the loss is a per-class MEAN over the batch, averaging the per-rank losses and gradients of an N-rank
    run with equal per-rank batches gives exactly the loss and gradient of one process on the concatenated
    batch. Without `sum_across_ranks` each rank decides the status on its own batch and keeps its own
    counters: the release's model_fn run once per GPU (docs/REFERENCE.md section 4 leaves open which of the two the
    reference run did; `TrainConfig.loss.class_status` chooses).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        mask_thres: float = 0.7,
        neg_select: float = 0.1,
        pos_weight: float = 12.0,
        seed: int = 0,
        name: str | None = None,
    ) -> None:
        """Creates the state.

        Args:
          num_classes: number of classes C.
          mask_thres: a label >= this makes its class positive in the batch (0.7 in the release).
          neg_select: probability that a negative class is selected in a step (0.1 in the reference run;
            the release's flag default is 0.3).
          pos_weight: weight of the positive term of the element loss (12 in the release).
          seed: seed of the negative-class draw; must be the same on every rank.
          name: module name.
        """
        super().__init__(name=name)
        self.num_classes = num_classes
        self.mask_thres = mask_thres
        self.neg_select = neg_select
        self.pos_weight = pos_weight
        self.pos_count = tf.Variable(tf.zeros([num_classes]), trainable=False, name="pos_count")
        self.neg_count = tf.Variable(tf.zeros([num_classes]), trainable=False, name="neg_count")
        self.generator = tf.random.Generator.from_seed(seed)

    def class_weights(
        self, labels: tf.Tensor, *, sum_across_ranks: Callable[[tf.Tensor], tf.Tensor] | None = None
    ) -> tf.Tensor:
        """Updates the counters from this step's (global) batch and returns the class weights [C].

        Call exactly once per training step on every rank (it advances the counters and the draw).

        Args:
          labels: float [N, C], this rank's labels.
          sum_across_ranks: sums a [C] tensor over the ranks (the status of the global batch); None: the
            status of this rank's batch alone (one process, or class_status "local").

        Returns:
          float32 [C] class weights, without gradient.
        """
        positives = tf.reduce_sum(tf.cast(tf.cast(labels, tf.float32) >= self.mask_thres, tf.float32), axis=0)
        if sum_across_ranks is not None:
            positives = sum_across_ranks(positives)
        pos_curr = tf.cast(positives > 0, tf.float32)
        selected = tf.cast(self.generator.uniform([self.num_classes]) <= self.neg_select, tf.float32)
        pos_count, neg_count, weights = adaptive_class_weights(
            self.pos_count, self.neg_count, pos_curr, selected
        )
        self.pos_count.assign(pos_count)
        self.neg_count.assign(neg_count)
        return weights

    def __call__(self, labels: tf.Tensor, logits: tf.Tensor, weights: tf.Tensor) -> tf.Tensor:
        """The scalar weighted sigmoid cross-entropy of this rank's batch (see `weighted_sigmoid_loss`)."""
        return weighted_sigmoid_loss(labels, logits, weights, pos_weight=self.pos_weight)


def all_layers(model: keras.Layer) -> list[keras.Layer]:
    """`model`'s layers, descending into nested models (a backbone inside a classifier)."""
    layers = []
    for layer in getattr(model, "layers", []):
        layers.append(layer)
        if isinstance(layer, keras.Model):
            layers.extend(all_layers(layer))
    return layers


def weight_decay_variables(model: keras.Model, *, batch_norm: bool = False) -> list[keras.Variable]:
    """The trainable variables that weight decay covers, chosen by layer type (never by name).

    Args:
      model: the model.
      batch_norm: False: the Conv2D and Dense kernels and the Dense biases (the reference's
        "all trainable weights except BatchNorm"; our convs have no bias); True: the BatchNormalization
        gamma and beta instead.

    Returns:
      The variables, each once; variables of frozen (non-trainable) layers are excluded.
    """
    selected, seen = [], set()
    for layer in all_layers(model):
        if batch_norm:
            candidates = (
                [layer.gamma, layer.beta] if isinstance(layer, keras.layers.BatchNormalization) else []
            )
        elif isinstance(layer, keras.layers.Conv2D):
            candidates = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
        elif isinstance(layer, keras.layers.Dense):
            candidates = [layer.kernel] + ([layer.bias] if layer.use_bias else [])
        else:
            candidates = []
        trainable = {id(v) for v in layer.trainable_weights}
        for variable in candidates:
            if variable is not None and id(variable) in trainable and id(variable) not in seen:
                seen.add(id(variable))
                selected.append(variable)
    return selected


def weight_decay_loss(
    model: keras.Model,
    *,
    weight_decay: float = 1e-4,
    bn_scale: float = 0.0,
    variables: Sequence[keras.Variable] | None = None,
) -> tf.Tensor:
    """weight_decay * sum 0.5 ||w||^2 over conv/dense weights + bn_scale * weight_decay * the same on BN.

    Pre-training (the release's train.py) uses bn_scale 0: BatchNorm gamma/beta are not decayed.
    Fine-tuning (finetune.py) decays them with 0.1 x weight_decay (bn_scale=0.1). Only trainable
    variables count, so frozen stages are not decayed.

    Args:
      model: the model.
      weight_decay: the L2 factor.
      bn_scale: the factor of weight_decay on BatchNorm gamma/beta.
      variables: if given, only these of the chosen variables count (the ones a step trains, e.g. without
        the frozen stages of FixBlock2; their decay would not change any update).

    Returns:
      The scalar float32 penalty.
    """
    decayed = [(v, weight_decay) for v in weight_decay_variables(model)]
    if bn_scale:
        decayed += [(v, bn_scale * weight_decay) for v in weight_decay_variables(model, batch_norm=True)]
    if variables is not None:
        keep = {id(v) for v in variables}
        decayed = [(v, factor) for v, factor in decayed if id(v) in keep]
    terms = [factor * tf.nn.l2_loss(tf.cast(v, tf.float32)) for v, factor in decayed]
    return tf.add_n(terms) if terms else tf.constant(0.0)
