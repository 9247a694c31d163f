"""training/train_step.py: the optimizer, micro-batches, FixBlock2, the NaN guard, precisions."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from models import losses, resnet
from training import schedules, train_step

NUM_CLASSES = 6
SIZE = 32


def _batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, SIZE, SIZE, 3)).astype("float32")
    multi = (rng.uniform(size=(n, NUM_CLASSES)) > 0.6).astype("float32")
    single = rng.integers(0, NUM_CLASSES, n)
    return images, multi, single


def _step(
    task="multilabel", *, accum_steps=1, frozen_stages=-1, precision="fp32", xla=False, seed=0, lr=0.05
):
    train_step.set_precision(precision)
    try:
        keras.utils.set_random_seed(seed)
        model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
        loss = losses.AdaptiveMultiLabelLoss(NUM_CLASSES, seed=3) if task == "multilabel" else None
        step = train_step.TrainStep(
            model,
            train_step.make_optimizer(precision=precision),
            task=task,
            schedule=schedules.StaircaseSchedule(base_lr=lr, decay=0.5, decay_every=2),
            loss=loss,
            frozen_stages=frozen_stages,
            accum_steps=accum_steps,
            xla=xla,
        )
    finally:
        train_step.set_precision("fp32")
    return model, step


def _values(variables):
    return [np.array(v) for v in variables]


def test_tf1_momentum_matches_the_release_formula():
    var = tf.Variable([1.0, -2.0])
    opt = train_step.TF1Momentum(learning_rate=0.5, momentum=0.9)
    accum = np.zeros(2)
    w = np.array([1.0, -2.0])
    for lr, g in [(0.5, [1.0, 2.0]), (0.05, [0.5, -1.0]), (0.05, [0.0, 3.0])]:
        opt.learning_rate.assign(lr)
        opt.apply([tf.constant(g)], [var])
        accum = 0.9 * accum + np.array(g)
        w = w - lr * accum  # TF1 MomentumOptimizer: the lr multiplies the whole accumulator
        np.testing.assert_allclose(var.numpy(), w, rtol=1e-6)


@pytest.mark.parametrize("task", ["multilabel", "softmax"])
def test_steps_follow_the_schedule_and_change_the_weights(task):
    images, multi, single = _batch()
    model, step = _step(task)
    before = _values(model.trainable_variables)
    lrs = [float(step(images, multi if task == "multilabel" else single)["lr"]) for _ in range(3)]
    assert lrs == pytest.approx([0.05, 0.05, 0.025])
    assert int(step.global_step.numpy()) == 3
    assert all(
        not np.array_equal(a, b) for a, b in zip(before, _values(model.trainable_variables), strict=True)
    )


def test_loss_is_cross_entropy_plus_weight_decay_of_the_release():
    images, multi, _ = _batch()
    model, step = _step("multilabel")
    probe = losses.AdaptiveMultiLabelLoss(NUM_CLASSES, seed=3)  # the same draw as the step's loss
    weights = probe.class_weights(multi)
    logits = model(images, training=True)
    expected_ce = float(losses.weighted_sigmoid_loss(multi, logits, weights))
    expected_wd = float(losses.weight_decay_loss(model, weight_decay=1e-4))
    logs = step(images, multi)
    assert float(logs["cross_entropy"]) == pytest.approx(expected_ce, rel=1e-5)
    assert float(logs["weight_decay"]) == pytest.approx(expected_wd, rel=1e-5)
    assert float(logs["loss"]) == pytest.approx(expected_ce + expected_wd, rel=1e-5)
    np.testing.assert_array_equal(step.loss.pos_count.numpy(), probe.pos_count.numpy())


def test_two_micro_batches_equal_the_mean_of_their_gradients():
    """accum_steps=2 = two ranks: gradients and moving statistics averaged over the halves."""
    images, multi, _ = _batch(n=8)
    model, step = _step("multilabel", accum_steps=2, lr=0.1)
    ref_model, ref_step = _step("multilabel", lr=0.1)  # same init; used to compute per-half gradients
    weights = ref_step.loss.class_weights(multi)  # the class status of the WHOLE batch
    stats0 = _values(ref_step.bn_statistics)
    grads, stats = [], []
    for half in (slice(0, 4), slice(4, 8)):
        for v, s in zip(ref_step.bn_statistics, stats0, strict=True):
            v.assign(s)
        g, _, _ = ref_step._gradients(images[half], multi[half], weights)  # of the cross-entropy
        grads.append(_values(g))
        stats.append(_values(ref_step.bn_statistics))
    step(images, multi)
    # One TF1 momentum step from zero slots: w <- w - lr * (mean(g) + decay x w), the decay added after.
    for w0, v, g0, g1, decay in zip(
        _values(ref_step.train_variables),
        step.train_variables,
        grads[0],
        grads[1],
        ref_step._decay_factors,
        strict=True,
    ):
        np.testing.assert_allclose(v.numpy(), w0 - 0.1 * ((g0 + g1) / 2 + decay * w0), rtol=1e-4, atol=1e-6)
    for v, s0, s1 in zip(step.bn_statistics, stats[0], stats[1], strict=True):
        np.testing.assert_allclose(v.numpy(), (s0 + s1) / 2, rtol=1e-5, atol=1e-7)


def test_fixblock2_freezes_stem_and_stages_0_1_but_updates_their_statistics():
    images, _, single = _batch()
    model, step = _step("softmax", frozen_stages=2)
    frozen = train_step.frozen_layers(model, 2)
    names = {layer.name for layer in frozen}
    assert resnet.STEM_LAYER in names and "stages_1_block_0_conv3_b2" in names
    assert not any(n.startswith(("stages_2", "stages_3", "global_pool", "logits")) for n in names)
    frozen_weights = [v for layer in frozen for v in layer.trainable_weights]
    frozen_stats = [
        v
        for layer in frozen
        if isinstance(layer, keras.layers.BatchNormalization)
        for v in (layer.moving_mean, layer.moving_variance)
    ]
    before, stats_before = _values(frozen_weights), _values(frozen_stats)
    trained_before = _values(step.train_variables)
    step(images, single)
    for a, v in zip(before, frozen_weights, strict=True):
        np.testing.assert_array_equal(a, v.numpy())
    assert all(not np.array_equal(a, v.numpy()) for a, v in zip(stats_before, frozen_stats, strict=True))
    assert all(
        not np.array_equal(a, v.numpy()) for a, v in zip(trained_before, step.train_variables, strict=True)
    )
    assert len(step.optimizer.variables) < 2 * len(model.trainable_variables)  # no slots for frozen weights


def test_non_finite_loss_raises_and_changes_nothing():
    images, multi, _ = _batch()
    model, step = _step("multilabel")
    step(images, multi)
    before = _values([*model.variables, *step.optimizer.variables])
    bad = multi.copy()
    bad[2, 1] = np.nan
    with pytest.raises(train_step.NonFiniteLossError, match="step 1"):
        step(images, bad)
    after = _values([*model.variables, *step.optimizer.variables])
    for a, b in zip(before, after, strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(step.global_step.numpy()) == 1


def test_unchecked_steps_halt_at_the_first_non_finite_one_until_the_host_looks():
    """check_finite=False never waits on the device; the bad step and every later one are discarded."""
    images, multi, _ = _batch()
    model, step = _step("multilabel")
    step(images, multi, check_finite=False)
    before = _values([*model.variables, *step.optimizer.variables])
    bad = multi.copy()
    bad[2, 1] = np.nan
    step(images, bad, check_finite=False)  # no exception: nothing was read back
    step(images, multi, check_finite=False)  # finite, but after a bad step: discarded as well
    for a, b in zip(before, _values([*model.variables, *step.optimizer.variables]), strict=True):
        np.testing.assert_array_equal(a, b)
    assert int(step.global_step.numpy()) == 1
    with pytest.raises(train_step.NonFiniteLossError, match=r"at step 1 \(loss nan\)"):
        step.raise_if_non_finite()


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_keeps_float32_logits_and_trains(precision):
    images, multi, _ = _batch()
    model, step = _step("multilabel", precision=precision)
    assert model.get_layer(resnet.LOGITS_LAYER).compute_dtype == "float32"
    assert model.get_layer("stages_0_block_0_conv1_b2").compute_dtype == (
        "bfloat16" if precision == "bf16" else "float16"
    )
    assert isinstance(step.optimizer, keras.optimizers.LossScaleOptimizer) == (precision == "fp16")
    losses_ = [float(step(images, multi)["loss"]) for _ in range(2)]
    assert all(np.isfinite(losses_))


def test_xla_step_matches_the_plain_step():
    images, _, single = _batch()
    plain_model, plain = _step("softmax")
    xla_model, xla = _step("softmax", xla=True)
    for _ in range(2):
        plain(images, single)
        xla(images, single)
    for a, b in zip(plain_model.trainable_variables, xla_model.trainable_variables, strict=True):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-3, atol=1e-4)
