"""Streaming metrics: hand-computed cases, streaming == direct numpy computation, state merging, AP accuracy.

The numpy references here (`reference_multilabel`, `reference_single_label`, `exact_average_precision`)
are written independently of TensorFlow (stable argsort for the lower-index tie-break) and are also used
by test_evaluate.py.
"""

import math

import numpy as np
import pytest
import tensorflow as tf

from training import metrics


def reference_multilabel(scores: np.ndarray, labels: np.ndarray, *, ks, threshold: float = 0.5) -> dict:
    """The instance-level metrics computed directly on the whole set, per image, in numpy."""
    positive = labels >= threshold
    order = np.argsort(-scores, axis=1, kind="stable")  # equal scores: lower class index first
    num_positive = positive.sum(axis=1)
    has_positive = num_positive > 0
    out = {}
    for k in ks:
        hits = np.take_along_axis(positive, order[:, :k], axis=1).sum(axis=1)
        precision = hits / k
        recall = hits[has_positive] / num_positive[has_positive]
        p_pos = precision[has_positive]
        f1 = np.divide(
            2 * p_pos * recall, p_pos + recall, out=np.zeros_like(recall), where=p_pos + recall > 0
        )
        out[f"precision@{k}"] = precision.mean()
        out[f"recall@{k}"] = recall.mean()
        out[f"f1@{k}"] = 2 * precision.mean() * recall.mean() / (precision.mean() + recall.mean())
        out[f"instance_f1@{k}"] = f1.mean()
    aps = [exact_average_precision(scores[:, j], positive[:, j]) for j in range(scores.shape[1])]
    aps = [ap for ap in aps if not math.isnan(ap)]
    out["mAP"] = float(np.mean(aps))
    out["num_images"] = len(scores)
    out["num_images_without_positives"] = int((~has_positive).sum())
    out["num_classes_with_positives"] = len(aps)
    return out


def reference_single_label(scores: np.ndarray, labels: np.ndarray, *, ks=(1, 5)) -> dict:
    order = np.argsort(-scores, axis=1, kind="stable")
    out = {f"top{k}": float(np.mean(np.any(order[:, :k] == labels[:, None], axis=1))) for k in ks}
    out["num_images"] = len(scores)
    return out


def exact_average_precision(scores: np.ndarray, positive: np.ndarray) -> float:
    """AP of one class over the raw scores; tied scores form one threshold (sklearn's convention)."""
    num_positive = positive.sum()
    if num_positive == 0:
        return math.nan
    order = np.argsort(-scores, kind="stable")
    ranked_scores, true_positives = scores[order], np.cumsum(positive[order])
    group_end = np.flatnonzero(np.append(ranked_scores[1:] != ranked_scores[:-1], True))  # last of each tie
    tp_at_end = true_positives[group_end]
    positives_in_group = np.diff(tp_at_end, prepend=0)
    return float(np.sum(positives_in_group * tp_at_end / (group_end + 1)) / num_positive)


def random_multilabel(rng: np.random.Generator, num_images: int, num_classes: int, *, num_bins: int):
    """Soft labels around the threshold, some images without positives, scores on bin centres (ties)."""
    confidences = np.array([0.0, 0.2, 0.49, 0.5, 0.8, 0.9, 1.0], np.float32)
    labels = rng.choice(
        confidences, size=(num_images, num_classes), p=[0.6, 0.05, 0.1, 0.05, 0.1, 0.05, 0.05]
    )
    labels[: num_images // 10] = np.minimum(labels[: num_images // 10], 0.49)  # no positives
    bins = np.clip(
        rng.integers(0, num_bins, size=labels.shape) + (labels >= 0.5) * num_bins // 4, 0, num_bins - 1
    )
    scores = ((bins + 0.5) / num_bins).astype(np.float32)
    return scores, labels


def assert_results_close(actual: dict, expected: dict, *, rtol: float = 1e-9) -> None:
    assert set(actual) == set(expected)
    for name, value in expected.items():
        assert actual[name] == pytest.approx(value, rel=rtol, abs=1e-12), name


# Hand-computed: 4 images, 5 classes, ks (1, 2, 3).
HAND_SCORES = np.array(
    [
        [0.9, 0.1, 0.5, 0.5, 0.2],  # classes 2 and 3 tie: top-3 is 0, 2, 3
        [0.3, 0.3, 0.3, 0.3, 0.3],  # all tied: top-3 is 0, 1, 2
        [0.2, 0.9, 0.1, 0.3, 0.4],
        [0.6, 0.1, 0.1, 0.1, 0.1],
    ],
    np.float32,
)
HAND_LABELS = np.array(
    [
        [1.0, 0.0, 0.49, 0.8, 0.0],  # positives {0, 3}; 0.49 is below the threshold
        [0.0, 0.0, 0.0, 0.0, 0.5],  # positive {4}; 0.5 is at the threshold
        [0.0, 0.9, 0.0, 0.0, 0.0],  # positive {1}: k > |Y|
        [0.49, 0.0, 0.0, 0.0, 0.2],  # no positives
    ],
    np.float32,
)
# Per image (precision @1,2,3 | recall @1,2,3 | F1 @1,2,3):
#   0: 1, 1/2, 2/3 | 1/2, 1/2, 1 | 2/3, 1/2, 4/5   (class 2 wins the tie at k=2 but is not a positive)
#   1: 0, 0, 0     | 0, 0, 0     | 0, 0, 0         (the tie picks classes 0, 1, 2; the positive is 4)
#   2: 1, 1/2, 1/3 | 1, 1, 1     | 1, 2/3, 1/2
#   3: 0, 0, 0     | excluded    | excluded
# Class APs: class 0: 1; class 1: 1; class 3: 1 (0.5 beats 0.3, 0.3, 0.1); class 4: 1/2 (0.3 behind 0.4);
# class 2: no positives (0.49), excluded.
HAND_EXPECTED = {
    "precision@1": 2 / 4,
    "precision@2": 1 / 4,
    "precision@3": 1 / 4,
    "recall@1": 1.5 / 3,
    "recall@2": 1.5 / 3,
    "recall@3": 2 / 3,
    "f1@1": 0.5,
    "f1@2": 2 * 0.25 * 0.5 / 0.75,
    "f1@3": 2 * 0.25 * (2 / 3) / (0.25 + 2 / 3),
    "instance_f1@1": (2 / 3 + 0 + 1) / 3,
    "instance_f1@2": (1 / 2 + 0 + 2 / 3) / 3,
    "instance_f1@3": (4 / 5 + 0 + 1 / 2) / 3,
    "mAP": (1 + 1 + 1 + 0.5) / 4,
    "num_images": 4,
    "num_images_without_positives": 1,
    "num_classes_with_positives": 4,
}


def test_top_k_breaks_ties_towards_lower_class_index():
    _, indices = tf.math.top_k(tf.constant([[0.2, 0.7, 0.2, 0.7, 0.2]]), k=4)
    np.testing.assert_array_equal(indices.numpy(), [[1, 3, 0, 2]])


def test_multilabel_hand_computed():
    m = metrics.MultiLabelMetrics(5, ks=(1, 2, 3))
    m.update(HAND_SCORES[:3], HAND_LABELS[:3])
    m.update(HAND_SCORES[3:], HAND_LABELS[3:])
    assert_results_close(m.result(), HAND_EXPECTED)


def test_multilabel_hand_case_matches_numpy_reference():
    assert_results_close(reference_multilabel(HAND_SCORES, HAND_LABELS, ks=(1, 2, 3)), HAND_EXPECTED)


def test_multilabel_label_threshold_moves_positives():
    m = metrics.MultiLabelMetrics(5, ks=(1,), label_threshold=0.45)
    m.update(HAND_SCORES, HAND_LABELS)
    # At 0.45, image 3's 0.49 on class 0 (its top score) becomes a positive: precision@1 3/4, recall 3/4.
    result = m.result()
    assert result["num_images_without_positives"] == 0
    assert result["precision@1"] == pytest.approx(3 / 4)
    # image 0 now has positives {0, 2, 3}: recall@1 1/3; images 1, 2, 3: 0, 1, 1.
    assert result["recall@1"] == pytest.approx((1 / 3 + 0 + 1 + 1) / 4)


def test_single_label_hand_computed():
    scores = np.array(
        [
            [0.1, 0.5, 0.5, 0.2, 0.0, 0.3],  # label 2 ties with class 1 and loses top-1
            [0.0, 0.0, 0.0, 0.0, 0.0, 0.0],  # all tied: top-5 is 0..4, label 5 is out
            [0.9, 0.1, 0.1, 0.1, 0.1, 0.1],
            [0.6, 0.5, 0.4, 0.3, 0.2, 0.1],  # label 4 is 5th
        ],
        np.float32,
    )
    m = metrics.SingleLabelMetrics(6)
    m.update(scores, np.array([2, 5, 0, 4]))
    assert m.result() == {"top1": 1 / 4, "top5": 3 / 4, "num_images": 4}


def test_streaming_equals_direct_computation_on_random_set():
    rng = np.random.default_rng(0)
    num_bins = 64
    scores, labels = random_multilabel(rng, 537, 23, num_bins=num_bins)
    m = metrics.MultiLabelMetrics(23, ks=(1, 5, 10, 23), num_bins=num_bins)
    for start in range(0, len(scores), 50):  # the last batch is smaller
        m.update(scores[start : start + 50], labels[start : start + 50])
    expected = reference_multilabel(scores, labels, ks=(1, 5, 10, 23))
    assert expected["num_images_without_positives"] >= 53
    # Scores on bin centres: the histogram AP is exact (ties handled as one threshold on both sides).
    assert_results_close(m.result(), expected)


def test_single_label_streaming_equals_direct_computation():
    rng = np.random.default_rng(1)
    scores = rng.integers(0, 4, size=(301, 12)).astype(np.float32)  # many ties
    labels = rng.integers(0, 12, size=301)
    m = metrics.SingleLabelMetrics(12, ks=(1, 2, 5))
    for start in range(0, 301, 64):
        m.update(scores[start : start + 64], labels[start : start + 64])
    assert_results_close(m.result(), reference_single_label(scores, labels, ks=(1, 2, 5)))


def test_histogram_map_is_close_to_exact_ap_on_continuous_scores():
    rng = np.random.default_rng(2)
    num_images, num_classes = 4000, 6
    positive = rng.random((num_images, num_classes)) < np.linspace(0.01, 0.3, num_classes)
    # Sigmoid scores skewed towards 0 as a trained model's: negatives crowd the low bins.
    logits = rng.normal(np.where(positive, 0.5, -3.0), 1.5)
    scores = (1 / (1 + np.exp(-logits))).astype(np.float32)
    m = metrics.MultiLabelMetrics(num_classes, ks=(1,), num_bins=1000)
    m.update(scores, positive.astype(np.float32))
    exact = [exact_average_precision(scores[:, j], positive[:, j]) for j in range(num_classes)]
    ap = metrics.average_precision_from_histograms(
        positives=m.state()["score_histogram"][..., 1], negatives=m.state()["score_histogram"][..., 0]
    )
    np.testing.assert_allclose(ap, exact, atol=1e-3)
    assert m.result()["mAP"] == pytest.approx(np.mean(exact), abs=1e-3)
    assert abs(m.result()["mAP"] - np.mean(exact)) > 0  # quantisation is a real approximation here


def test_average_precision_from_histograms_hand_computed():
    ap = metrics.average_precision_from_histograms(
        positives=np.array([[0, 1, 0, 1], [0, 1, 0, 0], [0, 0, 0, 0]]),
        negatives=np.array([[0, 0, 1, 0], [0, 1, 0, 0], [3, 0, 0, 1]]),
    )
    # Class 0 from the top bin: +, -, + -> (1 + 2/3) / 2. Class 1: one tied bin of + and - -> 1/2.
    np.testing.assert_allclose(ap[:2], [(1 + 2 / 3) / 2, 1 / 2])
    assert math.isnan(ap[2])


def test_merged_shard_states_equal_one_pass():
    rng = np.random.default_rng(3)
    scores, labels = random_multilabel(rng, 200, 9, num_bins=16)
    whole = metrics.MultiLabelMetrics(9, ks=(2, 4), num_bins=16)
    whole.update(scores, labels)
    shards = [metrics.MultiLabelMetrics(9, ks=(2, 4), num_bins=16) for _ in range(2)]
    shards[0].update(scores[:70], labels[:70])
    shards[1].update(scores[70:], labels[70:])
    shards[0].merge_state(shards[1].state())
    assert_results_close(shards[0].result(), whole.result())


def test_all_reduce_applies_the_sum_to_every_state_array():
    m = metrics.SingleLabelMetrics(6, ks=(1, 5))
    m.update(np.eye(6, dtype=np.float32)[:3], np.array([0, 2, 2]))
    before = m.result()
    m.all_reduce(lambda t: t * 2)  # two identical ranks
    after = m.result()
    assert after["num_images"] == 2 * before["num_images"] == 6
    assert after["top1"] == before["top1"] == pytest.approx(2 / 3)


def test_reset_and_set_state():
    m = metrics.MultiLabelMetrics(5, ks=(1, 2, 3))
    m.update(HAND_SCORES, HAND_LABELS)
    state = m.state()
    m.reset()
    assert m.result()["num_images"] == 0
    assert math.isnan(m.result()["precision@1"]) and math.isnan(m.result()["mAP"])
    m.set_state(state)
    assert_results_close(m.result(), HAND_EXPECTED)
    with pytest.raises(ValueError, match="keys"):
        m.set_state({"num_images": np.array(1.0)})
    with pytest.raises(ValueError, match="shape"):
        m.set_state({**state, "precision_sum": np.zeros(2)})


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"ks": (6,)}, r"\[1, num_classes=5\]"),
        ({"ks": (0, 1)}, r"\[1, num_classes=5\]"),
        ({"ks": (1, 1)}, "duplicates"),
        ({"ks": ()}, "empty"),
        ({"label_threshold": 0.0}, "label_threshold"),
        ({"num_bins": 0}, "num_bins"),
    ],
)
def test_multilabel_rejects_bad_settings(kwargs, match):
    with pytest.raises(ValueError, match=match):
        metrics.MultiLabelMetrics(5, **kwargs)


def test_single_label_rejects_k_above_classes_and_labels_out_of_range():
    with pytest.raises(ValueError, match="num_classes=3"):
        metrics.SingleLabelMetrics(3)  # top-5 of 3 classes
    m = metrics.SingleLabelMetrics(3, ks=(1,))
    with pytest.raises(tf.errors.InvalidArgumentError, match="num_classes"):
        m.update(np.zeros((1, 3), np.float32), np.array([3]))


def test_multilabel_rejects_nan_scores():
    m = metrics.MultiLabelMetrics(5, ks=(1,))
    with pytest.raises(tf.errors.InvalidArgumentError, match="scores"):
        m.update(np.full((1, 5), np.nan, np.float32), np.zeros((1, 5), np.float32))
