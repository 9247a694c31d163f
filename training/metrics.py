"""Streaming evaluation metrics whose state is a small dict of sums, so ranks can all-reduce it.

The ML-Images validation set is 88,739 images x 11,166 classes: a `[N, num_classes]` score matrix would be
4 GB, so nothing here keeps one. Each batch is reduced on the fly by a vectorised `tf.function` (one
`top_k` over `[B, C]`, no Python loop over images or classes) into per-k sums and, for the class-level mAP,
a per-class score histogram; `state()` returns those sums as numpy arrays that add element-wise, so the
per-rank states of a Horovod evaluation are combined with one all-reduce each (`all_reduce`) or, offline,
with `merge_state`. `result()` turns the sums into fractions in [0, 1].

Multi-label metrics (`MultiLabelMetrics`), instance level, as the reference reports them (docs/REFERENCE.md
section 7). For image i, Y_i = {classes j with label_ij >= label_threshold} and P_i = the k highest-scoring
classes, ties broken towards the LOWER class index (the documented order of `tf.math.top_k`):

- `precision@k` = mean over ALL images of |P_i n Y_i| / k, as the reference averages over images. Unlike
  recall, precision is defined for an image without positives: all k predictions are wrong, precision 0.
  (The ML-Images validation lists give every image at least one tag >= 0.8, so this only matters for
  other data or a higher label_threshold.)
- `recall@k` = mean of |P_i n Y_i| / |Y_i| over the images WITH at least one positive (recall is undefined
  without positives); how many were left out is `num_images_without_positives`.
- `f1@k` = 2 P R / (P + R) from the two averages above (the reference's "F1 from them").
- `instance_f1@k` = mean of the per-image 2 p_i r_i / (p_i + r_i) (0 where p_i + r_i = 0) over the same
  images as recall (per-image F1 needs the per-image recall).
- `mAP`: mean over classes WITH at least one positive of the average precision of that class's ranking of
  the images, computed from histograms (see `average_precision_from_histograms`).

Single-label metrics (`SingleLabelMetrics`): `top1`, `top5` (any `top{k}`) accuracy with the same
tie-break, so an image is only counted correct when its label is among exactly k predicted classes.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence

import numpy as np
import tensorflow as tf

IGNORE_LABEL = -1.0  # a multi-label label of -1: neither positive nor negative (see MultiLabelMetrics)

# Per-class score histograms: 1000 bins of width 0.001 over [0, 1] are 11,166 x 1000 x 2 float64 = 179 MB
# for ML-Images; on sigmoid scores skewed towards 0 like a trained model's, the AP is then within 1e-3 of the
# exact value (7e-4 in tests/test_metrics.py; the error shrinks about linearly with the bin width).
DEFAULT_NUM_BINS = 1000

StateDict = dict[str, np.ndarray]


def _check_ks(ks: Sequence[int], num_classes: int) -> tuple[int, ...]:
    ks = tuple(int(k) for k in ks)
    if not ks:
        raise ValueError("ks is empty: give at least one k")
    if len(set(ks)) != len(ks):
        raise ValueError(f"ks has duplicates: {ks}")
    bad = [k for k in ks if not 1 <= k <= num_classes]
    if bad:
        raise ValueError(f"every k must be in [1, num_classes={num_classes}]; got {bad} in {ks}")
    return ks


class _StreamingSums:
    """The shared state handling: named tf.Variables of sums, readable and replaceable as numpy arrays."""

    def __init__(self, shapes: Mapping[str, tuple[int, ...]]) -> None:
        # float64: exact integer counts up to 2**53 and no drift in the per-image sums over millions of images.
        self._sums = {
            name: tf.Variable(tf.zeros(shape, tf.float64), trainable=False, name=name)
            for name, shape in shapes.items()
        }

    def reset(self) -> None:
        """Zeroes every sum (start of a new evaluation)."""
        for variable in self._sums.values():
            variable.assign(tf.zeros_like(variable))

    def state(self) -> StateDict:
        """The sums as float64 numpy arrays; states of disjoint data add element-wise."""
        return {name: variable.numpy() for name, variable in self._sums.items()}

    def set_state(self, state: Mapping[str, np.ndarray | tf.Tensor]) -> None:
        """Replaces the sums with `state` (same keys and shapes as `state()`)."""
        if set(state) != set(self._sums):
            raise ValueError(f"state keys {sorted(state)} differ from {sorted(self._sums)}")
        for name, variable in self._sums.items():
            value = tf.cast(tf.convert_to_tensor(state[name]), tf.float64)
            if value.shape != variable.shape:
                raise ValueError(f"state[{name!r}] has shape {value.shape}, expected {variable.shape}")
            variable.assign(value)

    def merge_state(self, state: Mapping[str, np.ndarray | tf.Tensor]) -> None:
        """Adds another instance's `state()` (e.g. from another shard) to these sums."""
        current = self.state()
        self.set_state({name: current[name] + np.asarray(state[name], np.float64) for name in current})

    def all_reduce(self, sum_fn: Callable[[tf.Tensor], tf.Tensor]) -> None:
        """Replaces every sum by `sum_fn(sum)`, e.g. `Distributed.allreduce_sum`: the sum over all ranks.

        Every rank must call this (the all-reduce is collective), in the same order of keys.
        """
        self.set_state({name: sum_fn(tf.convert_to_tensor(v)) for name, v in sorted(self._sums.items())})


class MultiLabelMetrics(_StreamingSums):
    """Instance-level precision/recall/F1 at several k and class-level mAP, streamed over batches.

    Scores must be probabilities in [0, 1] (sigmoid outputs) for the mAP histogram; the top-k metrics only
    use their order. Labels are confidences in [0, 1] (soft labels allowed); class j is a positive of image
    i when label_ij >= label_threshold. A label of -1 means "ignore" (the release's loss convention): that
    class of that image is left out of the image's ranking (never one of its top k) and out of the class's
    average precision (neither a positive nor a negative).
    """

    def __init__(
        self,
        num_classes: int,
        *,
        ks: Sequence[int] = (5, 10),
        label_threshold: float = 0.5,
        num_bins: int = DEFAULT_NUM_BINS,
    ) -> None:
        """Creates zeroed sums.

        Args:
          num_classes: C, the width of scores and labels.
          ks: the k of every top-k metric, each in [1, C].
          label_threshold: labels at or above it are positives (0.5: the released lists hold 1, 0.9, 0.8).
          num_bins: bins of the per-class score histogram over [0, 1] used for mAP (more bins: closer to the
            exact AP, C x num_bins x 16 bytes of state).
        """
        if num_classes < 1:
            raise ValueError(f"num_classes must be >= 1, got {num_classes}")
        if not 0.0 < label_threshold <= 1.0:
            raise ValueError(f"label_threshold must be in (0, 1], got {label_threshold}")
        if num_bins < 1:
            raise ValueError(f"num_bins must be >= 1, got {num_bins}")
        self.num_classes = num_classes
        self.ks = _check_ks(ks, num_classes)
        self.label_threshold = float(label_threshold)
        self.num_bins = num_bins
        if num_classes * num_bins * 2 >= 2**31:
            raise ValueError(
                f"num_classes x num_bins = {num_classes} x {num_bins} is too large (int32 bin index)"
            )
        self._class_offsets = tf.range(num_classes, dtype=tf.int32)[tf.newaxis, :] * num_bins
        super().__init__(
            {
                "num_images": (),
                "num_images_with_positives": (),
                "precision_sum": (len(self.ks),),
                "recall_sum": (len(self.ks),),
                "instance_f1_sum": (len(self.ks),),
                # [class, bin, (negatives, positives)]: image counts per score bin.
                "score_histogram": (num_classes, num_bins, 2),
            }
        )
        spec = tf.TensorSpec([None, num_classes], tf.float32)
        self._update = tf.function(self._update_fn, input_signature=[spec, spec], reduce_retracing=True)

    def update(self, scores: tf.Tensor | np.ndarray, labels: tf.Tensor | np.ndarray) -> None:
        """Adds a batch.

        Args:
          scores: float[B, C] probabilities.
          labels: float[B, C] confidences.
        """
        self._update(tf.cast(scores, tf.float32), tf.cast(labels, tf.float32))

    def _update_fn(self, scores: tf.Tensor, labels: tf.Tensor) -> None:
        scores = tf.debugging.check_numerics(scores, "MultiLabelMetrics: scores")
        ignored = tf.equal(labels, IGNORE_LABEL)  # [B, C]
        positive = tf.cast(labels >= self.label_threshold, tf.float32)  # [B, C]
        num_positive = tf.cast(tf.reduce_sum(positive, axis=1, keepdims=True), tf.float64)  # [B, 1]

        # Instance level: where the top max(k) predictions hit, then hits within the first k for every k.
        ranked = tf.where(ignored, -math.inf, scores)  # an ignored class is never predicted
        _, top = tf.math.top_k(ranked, k=max(self.ks), sorted=True)  # ties: lower class index first
        hits = tf.cumsum(tf.gather(positive, top, batch_dims=1), axis=1)  # [B, max k]
        true_positives = tf.cast(tf.gather(hits, [k - 1 for k in self.ks], axis=1), tf.float64)  # [B, K]
        precision = true_positives / tf.constant(self.ks, tf.float64)
        # Images without positives have 0 true positives, so divide_no_nan gives them recall 0 and F1 0:
        # summing over all images is summing over the images with positives.
        recall = tf.math.divide_no_nan(true_positives, num_positive)
        f1 = tf.math.divide_no_nan(2.0 * precision * recall, precision + recall)
        self._sums["num_images"].assign_add(tf.cast(tf.shape(scores)[0], tf.float64))
        self._sums["num_images_with_positives"].assign_add(
            tf.reduce_sum(tf.cast(num_positive > 0, tf.float64))
        )
        self._sums["precision_sum"].assign_add(tf.reduce_sum(precision, axis=0))
        self._sums["recall_sum"].assign_add(tf.reduce_sum(recall, axis=0))
        self._sums["instance_f1_sum"].assign_add(tf.reduce_sum(f1, axis=0))

        # Class level: count every (class, bin, is_positive) cell with one bincount (int32 bincount has CPU
        # and GPU kernels; on CPU it is faster than a scatter-add), then add to the sums.
        bins = tf.cast(tf.clip_by_value(tf.floor(scores * self.num_bins), 0, self.num_bins - 1), tf.int32)
        cell = (self._class_offsets + bins) * 2 + tf.cast(positive, tf.int32)  # flat [C, num_bins, 2] index
        size = self.num_classes * self.num_bins * 2
        cell = tf.where(
            ignored, size, cell
        )  # bincount drops values >= maxlength: ignored cells count nowhere
        counts = tf.math.bincount(tf.reshape(cell, [-1]), minlength=size, maxlength=size, dtype=tf.int32)
        histogram = self._sums["score_histogram"]
        histogram.assign_add(tf.reshape(tf.cast(counts, tf.float64), histogram.shape))

    def result(self) -> dict[str, float]:
        """The metrics as fractions in [0, 1] (NaN where undefined), plus counts.

        Returns:
          `precision@k`, `recall@k`, `f1@k`, `instance_f1@k` for every k, `mAP`, and the counts
          `num_images`, `num_images_without_positives`, `num_classes_with_positives`.
        """
        state = self.state()
        num_images = float(state["num_images"])
        with_positives = float(state["num_images_with_positives"])
        results: dict[str, float] = {}
        for i, k in enumerate(self.ks):
            precision = _ratio(state["precision_sum"][i], num_images)
            recall = _ratio(state["recall_sum"][i], with_positives)
            results[f"precision@{k}"] = precision
            results[f"recall@{k}"] = recall
            results[f"f1@{k}"] = _f1(precision, recall)
            results[f"instance_f1@{k}"] = _ratio(state["instance_f1_sum"][i], with_positives)
        histogram = state["score_histogram"]
        ap = average_precision_from_histograms(positives=histogram[..., 1], negatives=histogram[..., 0])
        results["mAP"] = float(np.nanmean(ap)) if np.any(~np.isnan(ap)) else math.nan
        results["num_images"] = int(num_images)
        results["num_images_without_positives"] = int(num_images - with_positives)
        results["num_classes_with_positives"] = int(np.sum(~np.isnan(ap)))
        return results


class SingleLabelMetrics(_StreamingSums):
    """Top-k accuracy (`top1`, `top5` by default) for integer class labels, streamed over batches."""

    def __init__(self, num_classes: int, *, ks: Sequence[int] = (1, 5)) -> None:
        """Creates zeroed counts.

        Args:
          num_classes: C, the width of scores.
          ks: the k of every `top{k}` accuracy, each in [1, C].
        """
        self.num_classes = num_classes
        self.ks = _check_ks(ks, num_classes)
        super().__init__({"num_images": (), "correct": (len(self.ks),)})
        self._update = tf.function(
            self._update_fn,
            input_signature=[tf.TensorSpec([None, num_classes], tf.float32), tf.TensorSpec([None], tf.int64)],
            reduce_retracing=True,
        )

    def update(self, scores: tf.Tensor | np.ndarray, labels: tf.Tensor | np.ndarray) -> None:
        """Adds a batch.

        Args:
          scores: float[B, C] logits or probabilities (only their order matters).
          labels: int[B] class indices in [0, C).
        """
        self._update(tf.cast(scores, tf.float32), tf.cast(labels, tf.int64))

    def _update_fn(self, scores: tf.Tensor, labels: tf.Tensor) -> None:
        scores = tf.debugging.check_numerics(scores, "SingleLabelMetrics: scores")
        tf.debugging.assert_greater_equal(labels, tf.constant(0, tf.int64), "labels must be >= 0")
        tf.debugging.assert_less(
            labels, tf.constant(self.num_classes, tf.int64), "labels must be < num_classes"
        )
        _, top = tf.math.top_k(scores, k=max(self.ks), sorted=True)  # ties: lower class index first
        found = tf.cumsum(
            tf.cast(tf.equal(tf.cast(top, tf.int64), labels[:, tf.newaxis]), tf.float64), axis=1
        )  # [B, max k]
        self._sums["num_images"].assign_add(tf.cast(tf.shape(scores)[0], tf.float64))
        self._sums["correct"].assign_add(tf.reduce_sum(tf.gather(found, [k - 1 for k in self.ks], axis=1), 0))

    def result(self) -> dict[str, float]:
        """`top{k}` accuracy for every k (NaN before any update) and `num_images`."""
        state = self.state()
        num_images = float(state["num_images"])
        results = {f"top{k}": _ratio(state["correct"][i], num_images) for i, k in enumerate(self.ks)}
        results["num_images"] = int(num_images)
        return results


def average_precision_from_histograms(*, positives: np.ndarray, negatives: np.ndarray) -> np.ndarray:
    """Per-class average precision from per-class score histograms.

    The approximation: scores in one bin are treated as tied, and a tied group counts as a single
    threshold, with the precision at the end of the group for each of its positives (how
    `sklearn.metrics.average_precision_score` treats tied scores). The result is therefore the exact AP of
    the scores quantised to the bins; it differs from the AP of the raw scores only by the order of
    positives and negatives inside a bin, which vanishes as bins get finer.

    Args:
      positives: [..., num_bins] counts of positive images per score bin, bins in increasing score.
      negatives: the same for negative images.

    Returns:
      float64[...] AP per class; NaN for a class without positives.
    """
    positives = np.asarray(positives, np.float64)[..., ::-1]  # highest scores first
    total = positives + np.asarray(negatives, np.float64)[..., ::-1]
    true_positives = np.cumsum(positives, axis=-1)
    ranked = np.cumsum(total, axis=-1)
    precision = np.divide(true_positives, ranked, out=np.zeros_like(ranked), where=ranked > 0)
    num_positives = true_positives[..., -1]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(num_positives > 0, np.sum(positives * precision, axis=-1) / num_positives, np.nan)


def _f1(precision: float, recall: float) -> float:
    if math.isnan(precision) or math.isnan(recall):
        return math.nan
    return _ratio(2.0 * precision * recall, precision + recall, zero_division=0.0)


def _ratio(numerator: float, denominator: float, *, zero_division: float = math.nan) -> float:
    return float(numerator) / float(denominator) if denominator > 0 else zero_division
