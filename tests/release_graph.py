"""Writes checkpoints the way the release's TF1 graphs do, for tests/test_release_checkpoint.py.

    TF_USE_LEGACY_KERAS=1 python tests/release_graph.py OUT_DIR

Run in its own process: `tf.compat.v1.layers` needs tf-keras (TF_USE_LEGACY_KERAS=1), which must not leak
into the Keras 3 test process. The network is written from docs/REFERENCE.md section 2 in graph mode with the
release's building blocks (`tf.compat.v1.layers.conv2d`, `batch_normalization(fused=True)`, `dense`) and
variable scopes, at depth 14 (one block per stage) and a small width; the pre-training graph carries the
release train.py's extras: `global_step`, `tf.compat.v1.train.MomentumOptimizer` (a `<var>/Momentum` slot
per trainable variable) and the two unnamed loss counters (`Variable`, `Variable_1`), updated with the
release's adaptive loss. Outputs in OUT_DIR:

  pretrain/model.ckpt-2        after 2 steps of the multi-label graph (the checkpoint under test)
  pretrain/model.ckpt-3        after one more step on `batch3` (what a continued run must reproduce)
  pretrain/eval.npz           the eval-mode graph (training=False BN) restored from model.ckpt-2: `images`,
                              `logits`, `features`
  pretrain/batch3.npz         the images and labels of the third step
  finetune/model.ckpt-2       a FixBlock2 fine-tuning run from model.ckpt-2 with a new head: Momentum slots
                              only for the trained variables (stages 2-3, global_pool, logits), no counters
  finetune/eval.npz           its eval-mode outputs
  meta.json                   the constants used (classes, width, learning rate, ...)
"""

from __future__ import annotations

import json
import pathlib
import sys

import numpy as np
import tensorflow as tf

v1 = tf.compat.v1

NUM_CLASSES = 30  # the demo data set's class count, so that train.py's own data can follow this checkpoint
FINETUNE_CLASSES = 5
BASE_WIDTH = 8  # the release's 64, scaled down: stage outputs 32, 64, 128, 256
BLOCKS = (1, 1, 1, 1)  # depth 14
BATCH = 4
TRAIN_SIZE = 32
EVAL_SIZE = 64
LEARNING_RATE = 0.002
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
MASK_THRES = 0.7
NEG_SELECT = 1.0  # every negative class counts: the draw is then deterministic, so a continuation can match
POS_WEIGHT = 12.0
BN_MOMENTUM = 0.997
BN_EPSILON = 1e-5


def _bn_relu(x, scope: str, training: bool):
    # Random BN parameters and statistics (the release starts from 1/0): two steps of decay 0.997 would
    # leave the statistics near their start, and a comparison would not see how they are used.
    with v1.variable_scope(scope):
        x = v1.layers.batch_normalization(
            x,
            axis=3,
            momentum=BN_MOMENTUM,
            epsilon=BN_EPSILON,
            center=True,
            scale=True,
            training=training,
            fused=True,
            gamma_initializer=v1.random_uniform_initializer(0.5, 1.5),
            beta_initializer=v1.random_normal_initializer(0.0, 0.2),
            moving_mean_initializer=v1.random_normal_initializer(0.0, 0.2),
            moving_variance_initializer=v1.random_uniform_initializer(0.5, 1.5),
        )
    return tf.nn.relu(x)


def _conv(x, scope: str, *, filters: int, kernel_size: int, strides: int):
    """No bias; a strided conv pads (k-1)//2 before and the rest after, then VALID; stride 1 is SAME."""
    if strides > 1:
        total = kernel_size - 1
        x = tf.pad(x, [[0, 0], [total // 2, total - total // 2], [total // 2, total - total // 2], [0, 0]])
    with v1.variable_scope(scope):
        return v1.layers.conv2d(
            x,
            filters,
            kernel_size,
            strides=strides,
            padding="SAME" if strides == 1 else "VALID",
            use_bias=False,
            kernel_initializer=v1.variance_scaling_initializer(),
        )


def network(images, *, num_classes: int, training: bool):
    """The reference ResNet (docs/REFERENCE.md section 2): returns (logits, pooled features)."""
    with v1.variable_scope("init"):
        x = _conv(images, "init_conv", filters=BASE_WIDTH, kernel_size=7, strides=2)
    for i, num_blocks in enumerate(BLOCKS):
        out = 4 * BASE_WIDTH * 2**i
        for j in range(num_blocks):
            stride = 2 if j == 0 else 1
            with v1.variable_scope(f"stages_{i}_block_{j}"):
                shortcut = x
                if j == 0:
                    shortcut = _bn_relu(x, "conv1_b1_bn", training)
                    shortcut = _conv(shortcut, "conv1_b1", filters=out, kernel_size=1, strides=stride)
                r = _conv(
                    _bn_relu(x, "conv1_b2_bn", training),
                    "conv1_b2",
                    filters=out // 4,
                    kernel_size=1,
                    strides=1,
                )
                r = _conv(
                    _bn_relu(r, "conv2_b2_bn", training),
                    "conv2_b2",
                    filters=out // 4,
                    kernel_size=3,
                    strides=stride,
                )
                r = _conv(
                    _bn_relu(r, "conv3_b2_bn", training), "conv3_b2", filters=out, kernel_size=1, strides=1
                )
                x = r + shortcut
    with v1.variable_scope("global_pool"):
        features = tf.reduce_mean(_bn_relu(x, "bn", training), [1, 2])
    with v1.variable_scope("logits"):
        logits = v1.layers.dense(features, num_classes)
    return logits, features


def _weight_decay():
    """The release's decay: every trainable variable whose name does not contain batch_normalization."""
    return WEIGHT_DECAY * tf.add_n(
        [tf.nn.l2_loss(v) for v in v1.trainable_variables() if "batch_normalization" not in v.name]
    )


def _adaptive_loss(labels, logits):
    """The release train.py's multi-label loss with its two unnamed counter variables."""
    positives = tf.reduce_sum(tf.cast(labels >= MASK_THRES, tf.float32), 0)
    pos_curr = tf.cast(positives > 0, tf.float32)
    neg_curr = tf.cast(positives <= 0, tf.float32)
    pos_count = tf.Variable(tf.zeros([NUM_CLASSES]), trainable=False)  # saved as `Variable`
    neg_count = tf.Variable(tf.zeros([NUM_CLASSES]), trainable=False)  # saved as `Variable_1`
    selected = tf.cast(v1.random_uniform([NUM_CLASSES], seed=3) <= NEG_SELECT, tf.float32)
    with tf.control_dependencies([pos_curr, neg_curr, selected]):
        new_pos = v1.assign_sub(v1.assign_add(pos_count, pos_curr), pos_count * neg_curr)
        new_neg = v1.assign_sub(v1.assign_add(neg_count, neg_curr * selected), neg_count * pos_curr)
    pos_w = -tf.math.log((0.01 + new_pos) / 10) / tf.math.log(10.0)
    pos_w = tf.where(pos_w > 0.01, pos_w, tf.fill(tf.shape(pos_w), 0.01)) * pos_curr
    neg_w = -tf.math.log((8 + new_neg) / 10) / tf.math.log(10.0)
    neg_w = tf.where(neg_w > 0.01, neg_w, tf.fill(tf.shape(neg_w), 0.001)) * neg_curr * selected
    element = tf.nn.weighted_cross_entropy_with_logits(labels=labels, logits=logits, pos_weight=POS_WEIGHT)
    mask = tf.cast(tf.not_equal(labels, -1.0), tf.float32)
    return tf.reduce_sum(tf.reduce_mean(element * mask, 0) * (pos_w + neg_w))


def _batch(rng, size: int, *, classes: int | None = None):
    images = rng.uniform(-1, 1, (BATCH, size, size, 3)).astype("float32")
    if classes is None:  # multi-label soft labels with ignored entries
        labels = rng.choice(
            [0.0, 0.8, 1.0, -1.0], p=[0.8, 0.05, 0.08, 0.07], size=(BATCH, NUM_CLASSES)
        ).astype("float32")
    else:
        labels = rng.integers(classes, size=BATCH).astype("int32")
    return images, labels


def _eval_outputs(ckpt: str, images: np.ndarray, num_classes: int, out: pathlib.Path) -> None:
    """The eval-mode graph, restored from `ckpt` by a Saver of the model variables only (as the tools do)."""
    with tf.Graph().as_default():
        x = v1.placeholder(tf.float32, [None, None, None, 3])
        logits, features = network(x, num_classes=num_classes, training=False)
        saver = v1.train.Saver()
        with v1.Session() as sess:
            saver.restore(sess, ckpt)
            got_logits, got_features = sess.run([logits, features], {x: images})
    np.savez(out / "eval.npz", images=images, logits=got_logits, features=got_features)


def pretrain(out: pathlib.Path, rng) -> str:
    out.mkdir(parents=True, exist_ok=True)
    batches = [_batch(rng, TRAIN_SIZE) for _ in range(3)]
    with tf.Graph().as_default():
        v1.set_random_seed(1)
        images = v1.placeholder(tf.float32, [BATCH, TRAIN_SIZE, TRAIN_SIZE, 3])
        labels = v1.placeholder(tf.float32, [BATCH, NUM_CLASSES])
        global_step = v1.train.get_or_create_global_step()
        logits, _ = network(images, num_classes=NUM_CLASSES, training=True)
        loss = _adaptive_loss(labels, logits) + _weight_decay()
        optimizer = v1.train.MomentumOptimizer(LEARNING_RATE, MOMENTUM)
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = optimizer.minimize(loss, global_step)
        saver = v1.train.Saver(max_to_keep=5)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            for step, (x, y) in enumerate(batches):
                sess.run(train_op, {images: x, labels: y})
                if step >= 1:
                    saver.save(sess, str(out / "model.ckpt"), global_step=step + 1, write_meta_graph=False)
    np.savez(out / "batch3.npz", images=batches[2][0], labels=batches[2][1])
    ckpt = str(out / "model.ckpt-2")
    _eval_outputs(ckpt, rng.uniform(-1, 1, (3, EVAL_SIZE, EVAL_SIZE, 3)).astype("float32"), NUM_CLASSES, out)
    return ckpt


def finetune(pretrained: str, out: pathlib.Path, rng) -> None:
    """FixBlock2 from `pretrained` with a new head, as the release's finetune.py restores and trains."""
    out.mkdir(parents=True, exist_ok=True)
    with tf.Graph().as_default():
        v1.set_random_seed(2)
        images = v1.placeholder(tf.float32, [BATCH, TRAIN_SIZE, TRAIN_SIZE, 3])
        labels = v1.placeholder(tf.int32, [BATCH])
        global_step = v1.train.get_or_create_global_step()
        logits, _ = network(images, num_classes=FINETUNE_CLASSES, training=True)
        restored = [
            v for v in v1.global_variables() if v.op.name != "global_step" and "logits" not in v.op.name
        ]
        trained = [
            v
            for v in v1.trainable_variables()
            if v.op.name.startswith(("stages_2", "stages_3", "global_pool", "logits"))
        ]
        loss = tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=labels, logits=logits))
        optimizer = v1.train.MomentumOptimizer(LEARNING_RATE, MOMENTUM)
        with tf.control_dependencies(v1.get_collection(v1.GraphKeys.UPDATE_OPS)):
            train_op = optimizer.minimize(loss + _weight_decay(), global_step, var_list=trained)
        with v1.Session() as sess:
            sess.run(v1.global_variables_initializer())
            v1.train.Saver(var_list=restored).restore(sess, pretrained)
            for _ in range(2):
                x, y = _batch(rng, TRAIN_SIZE, classes=FINETUNE_CLASSES)
                sess.run(train_op, {images: x, labels: y})
            v1.train.Saver().save(sess, str(out / "model.ckpt"), global_step=2, write_meta_graph=False)
    _eval_outputs(
        str(out / "model.ckpt-2"),
        rng.uniform(-1, 1, (3, EVAL_SIZE, EVAL_SIZE, 3)).astype("float32"),
        FINETUNE_CLASSES,
        out,
    )


def main(out_dir: str) -> None:
    out = pathlib.Path(out_dir)
    rng = np.random.default_rng(0)
    pretrained = pretrain(out / "pretrain", rng)
    finetune(pretrained, out / "finetune", rng)
    meta = {
        "num_classes": NUM_CLASSES,
        "finetune_classes": FINETUNE_CLASSES,
        "depth": 14,
        "base_width": BASE_WIDTH,
        "learning_rate": LEARNING_RATE,
        "momentum": MOMENTUM,
        "weight_decay": WEIGHT_DECAY,
        "mask_thres": MASK_THRES,
        "neg_select": NEG_SELECT,
        "pos_weight": POS_WEIGHT,
    }
    (out / "meta.json").write_text(json.dumps(meta, indent=2))


if __name__ == "__main__":
    v1.disable_eager_execution()
    main(sys.argv[1])
