"""Converts a released TF1 checkpoint of the reference ResNet into this project's checkpoint format.

    python tools/convert_checkpoint.py --tf1_checkpoint ckpt-resnet101-mlimages/model.ckpt \\
        --depth 101 --num_classes 11166 --output converted/mlimages

The output is `tf.train.Checkpoint(model=model)`, the format the training and evaluation code restore
the `model` from. The conversion is strict on the model (see models/tf1_checkpoint.py): any missing, extra
or mis-shaped model variable aborts it. The file's other entries (global_step, Momentum slots, the
release's loss counters `Variable`/`Variable_1`) are reported and not converted: to continue a release run
with them, give the TF1 file itself to `train.py --init_checkpoint ... --init_optimizer_state`.
"""

from __future__ import annotations

import numpy as np
import tensorflow as tf
from absl import app, flags

from models import resnet, tf1_checkpoint


def convert(
    tf1_checkpoint_path: str,
    *,
    depth: int,
    num_classes: int | None,
    output: str,
    base_width: int = 64,
) -> dict[str, int | str]:
    """Loads the TF1 checkpoint into `build_resnet(depth, num_classes)` and writes it as ours.

    Args:
      tf1_checkpoint_path: prefix of the TF1 checkpoint.
      depth: ResNet depth (101 for the released checkpoints).
      num_classes: head size; None reads it from the checkpoint's `logits/dense/bias`.
      output: prefix of the checkpoint to write.
      base_width: stem width (64 for the released checkpoints).

    Returns:
      A summary: the written path, variables, parameters (trainable and all) and head size.
    """
    if num_classes is None:
        num_classes = int(
            tf.train.load_checkpoint(tf1_checkpoint_path).get_tensor("logits/dense/bias").shape[0]
        )
    model = resnet.build_resnet(depth, num_classes, base_width=base_width)
    contents = tf1_checkpoint.load_tf1_checkpoint(model, tf1_checkpoint_path)
    path = tf.train.Checkpoint(model=model).write(output)
    return {
        "path": path,
        "depth": depth,
        "variables": len(model.weights),
        "trainable_parameters": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        "parameters": int(sum(np.prod(v.shape) for v in model.weights)),
        "head_classes": num_classes,
        "source": contents.summary(),  # what the TF1 file held; only the model weights are converted
    }


FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("tf1_checkpoint", None, "Prefix of the released TF1 checkpoint (.../model.ckpt).")
    flags.DEFINE_integer(
        "depth",
        101,
        "ResNet depth: 50, 101 or 152 (the released checkpoints are 101); 14 is a test-only variant.",
    )
    flags.DEFINE_integer(
        "num_classes",
        None,
        "Head size: 11166 (ML-Images) or 1000 (ImageNet); default: read from the checkpoint.",
    )
    flags.DEFINE_integer("base_width", 64, "Stem width; 64 for the released checkpoints (smaller for tests).")
    flags.DEFINE_string("output", None, "Prefix of the checkpoint to write (tf.train.Checkpoint(model=...)).")
    flags.mark_flags_as_required(["tf1_checkpoint", "output"])


def main(argv: list[str]) -> None:
    del argv
    summary = convert(
        FLAGS.tf1_checkpoint,
        depth=FLAGS.depth,
        num_classes=FLAGS.num_classes,
        output=FLAGS.output,
        base_width=FLAGS.base_width,
    )
    print(
        f"wrote {summary['path']}: ResNet-{summary['depth']}, {summary['variables']} variables, "
        f"{summary['trainable_parameters']:,} trainable parameters ({summary['parameters']:,} with BN "
        f"statistics), {summary['head_classes']}-way head; the TF1 file held {summary['source']}"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
