"""Backward segments (`TrainStep(backward_segments=K)`, `resnet.split_segments`): same step as K = 1."""

import functools

import keras
import numpy as np
import pytest

from models import losses, resnet
from training import schedules, train_step

NUM_CLASSES = 6


def _batch(seed=0, n=8):
    rng = np.random.default_rng(seed)
    images = rng.uniform(-1, 1, (n, 32, 32, 3)).astype("float32")
    labels = (rng.uniform(size=(n, NUM_CLASSES)) > 0.6).astype("float32")
    return images, labels


def _step(segments, *, frozen_stages=-1, xla=False, task="multilabel", precision="fp32"):
    train_step.set_precision(precision)
    try:
        keras.utils.set_random_seed(0)
        model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
        return train_step.TrainStep(
            model,
            train_step.make_optimizer(precision=precision),
            task=task,
            schedule=schedules.StaircaseSchedule(base_lr=0.05, decay=0.5, decay_every=2),
            loss=losses.AdaptiveMultiLabelLoss(NUM_CLASSES, seed=3) if task == "multilabel" else None,
            bn_weight_decay_scale=0.1,  # BN gamma/beta decayed too: every segment's share of the decay counts
            frozen_stages=frozen_stages,
            backward_segments=segments,
            xla=xla,
        )
    finally:
        train_step.set_precision("fp32")


def _state(step):
    return [
        np.array(v)
        for v in [*step.model.variables, *step.optimizer.variables, step.loss.pos_count, step.loss.neg_count]
    ]


def test_split_segments_chain_to_the_model_and_share_its_weights():
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
    images, _ = _batch()
    for k in range(1, resnet.MAX_SEGMENTS + 1):
        segments = resnet.split_segments(model, k)
        assert len(segments) == k
        x = images
        for segment in segments:
            x = segment(x, training=False)
        np.testing.assert_array_equal(np.asarray(x), np.asarray(model(images, training=False)))
        ids = [id(v) for s in segments for v in s.trainable_variables]
        assert sorted(ids) == sorted(id(v) for v in model.trainable_variables)  # each weight in one segment
    assert [layer.name for layer in resnet.split_segments(model, 4)[-1].layers][-1] == resnet.LOGITS_LAYER
    with pytest.raises(ValueError, match="backward segments"):
        resnet.split_segments(model, resnet.MAX_SEGMENTS + 1)


@functools.cache
def _three_steps(segments, frozen_stages, xla):
    """(per-step logs, final step, final state) of 3 steps; cached: the K = 1 runs serve several K."""
    step = _step(segments, frozen_stages=frozen_stages, xla=xla)
    logs = []
    for s in range(3):
        out = step(*_batch(seed=s))
        logs.append({key: float(out[key]) for key in ("loss", "cross_entropy", "weight_decay", "lr")})
    return logs, int(step.global_step.numpy()), _state(step)


@pytest.mark.parametrize(
    ("segments", "frozen_stages", "xla"),
    [(4, -1, False), (5, -1, False), (2, -1, False), (4, 2, False), (4, -1, True)],
)
def test_k_segments_equal_one_segment(segments, frozen_stages, xla):
    logs_one, _, state_one = _three_steps(1, frozen_stages, xla)
    logs_many, final_step, state_many = _three_steps(segments, frozen_stages, xla)
    for step_one, step_many in zip(logs_one, logs_many, strict=True):
        for key, value in step_one.items():
            assert step_many[key] == pytest.approx(value, rel=1e-5), key
    assert final_step == 3
    # Measured after 3 steps over weights, slots, BN statistics and loss counters: without XLA bit-identical
    # (gap 0); with XLA 2.7e-5 of a tensor's scale (XLA fuses each segment differently from the whole model).
    # Without XLA even a missing decay share (5e-6 of a weight per step here) exceeds the tolerance.
    tolerance = 1e-4 if xla else 1e-6
    for a, b in zip(state_one, state_many, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=tolerance * max(1.0, float(np.abs(a).max())))


def test_segments_need_one_micro_batch():
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
    with pytest.raises(ValueError, match="accum_steps"):
        train_step.TrainStep(
            model,
            train_step.make_optimizer(),
            task="softmax",
            schedule=schedules.StaircaseSchedule(base_lr=0.05, decay=0.5, decay_every=2),
            backward_segments=4,
            accum_steps=2,
        )


def test_config_rejects_bf16_wire_and_segments_with_micro_batches():

    from training import config as config_lib
    from training import recipes

    with pytest.raises(ValueError, match="no bf16"):
        config_lib.validate(config_lib.replace(recipes.DEMO, allreduce_dtype="bf16"))
    with pytest.raises(ValueError, match="backward_segments"):
        config_lib.validate(config_lib.replace(recipes.DEMO, backward_segments=4, accum_steps=2))
    config_lib.validate(config_lib.replace(recipes.DEMO, backward_segments=4, allreduce_dtype="fp16"))


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
def test_segments_with_mixed_precision_and_loss_scaling_equal_one_segment(precision):
    """Half-precision boundary tensors, and with fp16 the loss scale on every segment's output gradient."""
    weights = []
    for segments in (1, 4):
        step = _step(segments, precision=precision)
        assert step.loss_scaling == (precision == "fp16")
        for s in range(2):
            step(*_batch(seed=s))
        weights.append([np.array(v) for v in step.train_variables])
    # Measured: bit-identical for both precisions.
    for a, b in zip(*weights, strict=True):
        np.testing.assert_allclose(b, a, rtol=0, atol=1e-6 * max(1.0, float(np.abs(a).max())))
