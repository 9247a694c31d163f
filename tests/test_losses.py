"""models/losses.py against hand-computed cases of docs/REFERENCE.md section 3."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import losses


def run_steps(pos_curr_seq, selected_seq):
    """Runs adaptive_class_weights over several steps; returns the per-step (pos_count, neg_count, weights)."""
    num_classes = len(pos_curr_seq[0])
    pos_count = tf.zeros([num_classes])
    neg_count = tf.zeros([num_classes])
    history = []
    for pos_curr, selected in zip(pos_curr_seq, selected_seq, strict=True):
        pos_count, neg_count, weights = losses.adaptive_class_weights(
            pos_count, neg_count, tf.constant(pos_curr, tf.float32), tf.constant(selected, tf.float32)
        )
        history.append((pos_count.numpy(), neg_count.numpy(), weights.numpy()))
    return history


def test_positive_weight_table():
    # A class positive in t consecutive batches: pos_count = t, weight log10(10 / (0.01 + t)), floor 0.01.
    history = run_steps([[1.0]] * 10, [[0.0]] * 10)
    hand = [0.99568, 0.69681, 0.52143, 0.39686, 0.30016, 0.22112, 0.15428, 0.09637, 0.04528, 0.01]
    for t, (pos_count, neg_count, weights) in enumerate(history, start=1):
        assert pos_count[0] == t and neg_count[0] == 0
        assert weights[0] == pytest.approx(max(math.log10(10 / (0.01 + t)), 0.01), rel=1e-5)
        assert weights[0] == pytest.approx(hand[t - 1], abs=1e-5)


def test_negative_weight_table_and_the_0001_floor():
    # A class negative and selected in t consecutive batches: neg_count = t, weight log10(10 / (8 + t)),
    # replaced by 0.001 (not 0.01) once it is not > 0.01: t = 1 -> 0.045757, t >= 2 -> 0.001.
    history = run_steps([[0.0]] * 10, [[1.0]] * 10)
    for t, (pos_count, neg_count, weights) in enumerate(history, start=1):
        assert neg_count[0] == t and pos_count[0] == 0
        expected = math.log10(10 / (8 + t))
        assert weights[0] == pytest.approx(expected if expected > 0.01 else 0.001, rel=1e-5)
    assert history[0][2][0] == pytest.approx(0.045757, abs=1e-6)
    assert [h[2][0] for h in history[1:]] == pytest.approx([0.001] * 9, rel=1e-6)


def test_counter_updates_over_several_steps():
    # Classes: A positive streak then a flip to negative; B negative (selected, unselected, selected)
    # then a flip to positive; C positive / negative-unselected alternation; D never positive, never drawn.
    pos = [[1, 0, 1, 0], [1, 0, 0, 0], [1, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    sel = [[0, 1, 0, 0], [1, 0, 0, 0], [0, 1, 1, 0], [1, 1, 1, 0], [1, 1, 0, 0]]
    want_pos = [[1, 0, 1, 0], [2, 0, 0, 0], [3, 0, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    want_neg = [[0, 1, 0, 0], [0, 1, 0, 0], [0, 2, 0, 0], [1, 0, 1, 0], [2, 1, 1, 0]]
    pw = {t: math.log10(10 / (0.01 + t)) for t in (1, 2, 3)}
    nw = {1: math.log10(10 / 9), 2: 0.001}
    want_w = [
        [pw[1], nw[1], pw[1], 0.0],
        [pw[2], 0.0, 0.0, 0.0],  # B negative but not drawn: weight 0, counter kept.
        [pw[3], nw[2], pw[1], 0.0],
        [nw[1], pw[1], nw[1], 0.0],  # A flips to negative (drawn), B flips to positive.
        [nw[2], nw[1], 0.0, 0.0],
    ]
    history = run_steps(pos, sel)
    for step, (pos_count, neg_count, weights) in enumerate(history):
        np.testing.assert_array_equal(pos_count, want_pos[step], err_msg=f"step {step}")
        np.testing.assert_array_equal(neg_count, want_neg[step], err_msg=f"step {step}")
        np.testing.assert_allclose(weights, want_w[step], rtol=1e-5, err_msg=f"step {step}")


def test_element_loss_pos_weight_12():
    z = np.array([[0.0, 0.0, 1.5, -100.0, 100.0]], "float32")
    y = np.array([[1.0, 0.0, 0.8, 1.0, 0.0]], "float32")
    per_class = [losses.weighted_sigmoid_loss(y, z, np.eye(5, dtype="float32")[j]).numpy() for j in range(5)]
    sig = 1 / (1 + math.exp(-1.5))
    hand = [
        12 * math.log(2),
        math.log(2),
        -12 * 0.8 * math.log(sig) - 0.2 * math.log(1 - sig),
        12 * 100.0,  # numerically stable at large |z|: 12 * softplus(100)
        100.0,
    ]
    np.testing.assert_allclose(per_class, hand, rtol=1e-5)
    other = losses.weighted_sigmoid_loss(y[:, :1], z[:, :1], np.ones(1, "float32"), pos_weight=3.0)
    assert other.numpy() == pytest.approx(3 * math.log(2), rel=1e-6)


def test_ignore_label_is_zeroed_and_counts_in_the_mean():
    # Class 0: labels [1, -1]; the -1 entry contributes 0 but the mean is still over the 2 images.
    # Class 1: labels [0, 0] with weight 0.5.
    labels = np.array([[1.0, 0.0], [-1.0, 0.0]], "float32")
    logits = np.array([[0.0, 0.0], [5.0, math.log(3.0)]], "float32")
    weights = np.array([2.0, 0.5], "float32")
    hand = 2.0 * (12 * math.log(2) + 0.0) / 2 + 0.5 * (math.log(2) + math.log(4)) / 2
    assert losses.weighted_sigmoid_loss(labels, logits, weights).numpy() == pytest.approx(hand, rel=1e-6)
    changed = logits.copy()
    changed[1, 0] = -40.0  # the ignored entry's logit does not matter
    assert losses.weighted_sigmoid_loss(labels, changed, weights).numpy() == pytest.approx(hand, rel=1e-6)


def test_no_gradient_through_the_weights():
    loss = losses.AdaptiveMultiLabelLoss(3, neg_select=1.0, seed=0)
    labels = tf.constant([[1.0, 0.0, 0.0]])
    logits = tf.Variable([[0.3, -0.2, 0.1]])
    pos_count = tf.constant([2.0, 0.0, 1.0])
    with tf.GradientTape(persistent=True) as tape:
        tape.watch(pos_count)
        _, _, weights = losses.adaptive_class_weights(
            pos_count, tf.zeros(3), tf.constant([1.0, 0, 0]), tf.ones(3)
        )
        w = loss.class_weights(labels)
        value = loss(labels, logits, w)
    assert tape.gradient(weights, pos_count) is None
    assert tape.gradient(value, loss.pos_count) is None
    assert tape.gradient(value, loss.neg_count) is None
    grad = tape.gradient(value, logits)
    assert grad is not None and np.all(np.isfinite(grad.numpy()))


def test_loss_object_status_threshold_and_draw_extremes():
    labels = tf.constant([[0.7, 0.69, -1.0, 0.0], [0.0, 0.5, 0.0, 0.0]])
    every = losses.AdaptiveMultiLabelLoss(4, neg_select=1.0, seed=0)
    weights = every.class_weights(labels).numpy()
    np.testing.assert_array_equal(every.pos_count.numpy(), [1, 0, 0, 0])  # >= 0.7 only; -1 is not positive
    np.testing.assert_array_equal(every.neg_count.numpy(), [0, 1, 1, 1])
    np.testing.assert_allclose(weights, [math.log10(10 / 1.01)] + [math.log10(10 / 9)] * 3, rtol=1e-5)
    none = losses.AdaptiveMultiLabelLoss(4, neg_select=0.0, seed=0)
    np.testing.assert_allclose(
        none.class_weights(labels).numpy(), [math.log10(10 / 1.01), 0, 0, 0], rtol=1e-5
    )
    np.testing.assert_array_equal(none.neg_count.numpy(), [0, 0, 0, 0])
    value = every(labels, tf.zeros([2, 4]), weights)
    assert value.numpy() == pytest.approx(
        losses.weighted_sigmoid_loss(labels, tf.zeros([2, 4]), weights, pos_weight=12.0).numpy()
    )


def test_draw_is_seeded_fresh_each_step_and_at_the_rate():
    labels = tf.zeros([1, 20000])
    a = losses.AdaptiveMultiLabelLoss(20000, neg_select=0.1, seed=7)
    b = losses.AdaptiveMultiLabelLoss(20000, neg_select=0.1, seed=7)
    c = losses.AdaptiveMultiLabelLoss(20000, neg_select=0.1, seed=8)
    selected_a1 = a.class_weights(labels).numpy() > 0
    selected_b1 = b.class_weights(labels).numpy() > 0
    selected_c1 = c.class_weights(labels).numpy() > 0
    selected_a2 = a.class_weights(labels).numpy() > 0
    np.testing.assert_array_equal(selected_a1, selected_b1)
    assert not np.array_equal(selected_a1, selected_c1)
    assert not np.array_equal(selected_a1, selected_a2)
    assert selected_a1.mean() == pytest.approx(0.1, abs=0.01)
    assert selected_a2.mean() == pytest.approx(0.1, abs=0.01)


def test_state_is_checkpointed_and_resumes_the_same_sequence(tmp_path):
    rng = np.random.default_rng(0)
    batches = [tf.constant((rng.random((4, 50)) > 0.8).astype("float32")) for _ in range(6)]
    straight = losses.AdaptiveMultiLabelLoss(50, neg_select=0.3, seed=3)
    expected = [straight.class_weights(y).numpy() for y in batches]

    first = losses.AdaptiveMultiLabelLoss(50, neg_select=0.3, seed=3)
    for y in batches[:3]:
        first.class_weights(y)
    path = tf.train.Checkpoint(loss=first).write(str(tmp_path / "ckpt"))
    resumed = losses.AdaptiveMultiLabelLoss(
        50, neg_select=0.3, seed=999
    )  # the seed is overridden by the state
    tf.train.Checkpoint(loss=resumed).read(path).assert_consumed()
    np.testing.assert_array_equal(resumed.pos_count.numpy(), first.pos_count.numpy())
    for y, want in zip(batches[3:], expected[3:], strict=True):
        np.testing.assert_allclose(resumed.class_weights(y).numpy(), want)
    np.testing.assert_array_equal(resumed.neg_count.numpy(), straight.neg_count.numpy())
    assert not resumed.pos_count.trainable and not resumed.neg_count.trainable
    assert resumed.trainable_variables == ()


def test_sum_across_ranks_decides_the_class_status():
    loss = losses.AdaptiveMultiLabelLoss(3, neg_select=0.0, seed=0)
    local = tf.constant([[0.0, 1.0, 0.0]])
    other_rank = tf.constant([2.0, 0.0, 0.0])  # another rank saw class 0 positive twice
    calls = []

    def fake_allreduce(positives):
        calls.append(positives.numpy())
        return positives + other_rank

    weights = loss.class_weights(local, sum_across_ranks=fake_allreduce)
    np.testing.assert_array_equal(calls[0], [0.0, 1.0, 0.0])
    np.testing.assert_array_equal(loss.pos_count.numpy(), [1, 1, 0])
    np.testing.assert_allclose(weights.numpy(), [math.log10(10 / 1.01)] * 2 + [0.0], rtol=1e-5)


def test_class_weights_inside_tf_function():
    eager = losses.AdaptiveMultiLabelLoss(5, seed=1)
    graph = losses.AdaptiveMultiLabelLoss(5, seed=1)
    step = tf.function(lambda y: graph.class_weights(y))
    y = tf.constant([[1.0, 0.0, 0.0, 0.9, 0.0]])
    for _ in range(3):
        np.testing.assert_allclose(step(y).numpy(), eager.class_weights(y).numpy(), rtol=1e-6)
    np.testing.assert_array_equal(graph.pos_count.numpy(), [3, 0, 0, 3, 0])


def _tiny_model():
    inputs = keras.Input((6, 6, 2))
    x = keras.layers.Conv2D(3, 3, use_bias=False, name="conv")(inputs)
    x = keras.layers.BatchNormalization(name="bn")(x)
    frozen = keras.layers.Conv2D(2, 1, use_bias=True, name="frozen_conv")
    frozen.trainable = False
    x = frozen(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    inner = keras.Sequential([keras.layers.Dense(4, name="batch_normalization_dense")], name="inner")
    x = inner(x)
    outputs = keras.layers.Dense(3, name="head")(x)
    model = keras.Model(inputs, outputs)
    rng = np.random.default_rng(0)
    for v in model.weights:
        v.assign(rng.normal(size=v.shape).astype("float32"))
    return model


def test_weight_decay_selection_by_layer_type():
    model = _tiny_model()
    names = sorted(v.path for v in losses.weight_decay_variables(model))
    # The Dense named like a BN layer is still decayed; the frozen conv is not; BN gamma/beta are not.
    assert names == sorted(
        [
            "conv/kernel",
            "inner/batch_normalization_dense/kernel",
            "inner/batch_normalization_dense/bias",
            "head/kernel",
            "head/bias",
        ]
    )
    bn_names = sorted(v.path for v in losses.weight_decay_variables(model, batch_norm=True))
    assert bn_names == ["bn/beta", "bn/gamma"]


def test_weight_decay_value():
    model = _tiny_model()
    layer = {name: model.get_layer(name) for name in ("conv", "bn", "head")}
    dense = model.get_layer("inner").get_layer("batch_normalization_dense")
    decayed = [layer["conv"].kernel, dense.kernel, dense.bias, layer["head"].kernel, layer["head"].bias]
    sq = sum(float(np.sum(np.square(v.numpy()))) for v in decayed)
    bn_sq = float(np.sum(np.square(layer["bn"].gamma.numpy())) + np.sum(np.square(layer["bn"].beta.numpy())))
    pretrain = losses.weight_decay_loss(model, weight_decay=1e-4).numpy()
    finetune = losses.weight_decay_loss(model, weight_decay=1e-4, bn_scale=0.1).numpy()
    assert pretrain == pytest.approx(1e-4 * 0.5 * sq, rel=1e-5)
    assert finetune == pytest.approx(1e-4 * 0.5 * sq + 0.1 * 1e-4 * 0.5 * bn_sq, rel=1e-5)
