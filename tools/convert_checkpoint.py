r"""Converts a released TF1 checkpoint of the reference ResNet into this project's checkpoint format.

    python tools/convert_checkpoint.py --tf1_checkpoint ckpt-resnet101-mlimages/model.ckpt \
        --output converted/mlimages

The architecture (depth, stem width, head size) is read from the file itself
(`models.architecture.checkpoint_architecture`, from its variables' names and shapes), as every other tool
does; `--depth`, `--base_width` and `--num_classes` only assert it: a file that holds another network is
refused in one line naming the one it holds. So are a missing file, a file that is not a checkpoint, a
damaged one, and one that is already in our format (it needs no conversion).

The output is `tf.train.Checkpoint(model=model)`, the format the training and evaluation code restore
the `model` from. The conversion is strict on the model (see models/tf1_checkpoint.py): any missing, extra
or mis-shaped model variable aborts it. The file's other entries (global_step, Momentum slots, the
release's loss counters `Variable`/`Variable_1`) are reported and not converted: to continue a release run
with them, give the TF1 file itself to `train.py --init_checkpoint ... --init_optimizer_state`.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf
from absl import flags

from data import command_line, fileio
from models import architecture, checkpoint_files, resnet, tf1_checkpoint
from models.architecture import CheckpointInfo
from models.checkpoint_files import CheckpointError
from training import tf_logs

_ERROR_CHARS = 500  # a refusal is one line: a long list of variable names is cut here


def _describe(info: CheckpointInfo) -> str:
    return f"ResNet-{info.depth}, base width {info.base_width}, {info.num_classes} classes"


def source_architecture(
    path: str,
    *,
    depth: int | None = None,
    base_width: int | None = None,
    num_classes: int | None = None,
) -> CheckpointInfo:
    """Which reference ResNet the released TF1 checkpoint at `path` holds, checked against what was asked.

    Args:
      path: a TF1 checkpoint prefix (or one of its files, or a directory with a `checkpoint` file).
      depth, base_width, num_classes: the architecture the caller expects; None accepts what the file holds.

    Returns:
      The checkpoint's resolved prefix and architecture (kind "tf1").

    Raises:
      CheckpointError: nothing at `path`, not a checkpoint, a damaged one, no reference ResNet in
        it, one of our checkpoints (nothing to convert), or another architecture than asked (named).
    """
    prefix = checkpoint_files.resolve_checkpoint(path)  # missing, not a checkpoint, damaged: one-line errors
    try:
        found = architecture.checkpoint_architecture(prefix)
    except tf.errors.OpError as e:
        raise CheckpointError(f"cannot read {prefix}: {checkpoint_files.error_line(e)}") from None
    except CheckpointError:
        if architecture.is_tf1_checkpoint(prefix):
            raise  # the release's names, but not a whole reference ResNet: its message says what is missing
        raise CheckpointError(
            f"{prefix} is not a released TF1 checkpoint of the reference ResNet (no variable is named like "
            "init/init_conv/conv2d/kernel)"
        ) from None
    info = CheckpointInfo(
        path=prefix,
        kind=str(found["kind"]),
        depth=int(found["depth"]),
        base_width=int(found["base_width"]),
        num_classes=int(found["num_classes"]),
    )
    if info.kind != "tf1":
        raise CheckpointError(
            f"{prefix} is already one of this project's checkpoints ({_describe(info)}), not a released TF1 "
            "one: it needs no conversion (--init_checkpoint, evaluate.py and the tools read it as it is)"
        )
    asked = {"depth": depth, "base_width": base_width, "num_classes": num_classes}
    wrong = [f"--{name}={value}" for name, value in asked.items() if value not in (None, getattr(info, name))]
    if wrong:
        raise CheckpointError(f"{prefix} holds {_describe(info)}, not the asked {', '.join(wrong)}")
    return info


def convert(
    tf1_checkpoint_path: str,
    *,
    output: str,
    depth: int | None = None,
    base_width: int | None = None,
    num_classes: int | None = None,
) -> dict[str, int | str]:
    """Loads the TF1 checkpoint into the ResNet it holds and writes it in our format.

    Args:
      tf1_checkpoint_path: prefix of the TF1 checkpoint.
      output: prefix of the checkpoint to write.
      depth, base_width, num_classes: the expected architecture (see `source_architecture`); None: what the
        checkpoint holds.

    Returns:
      A summary: the written path, the architecture, variables, parameters (trainable and all) and what
      else the TF1 file held.

    Raises:
      CheckpointError: see `source_architecture`.
      tf1_checkpoint.TF1CheckpointMismatchError: the file's model variables do not match the ResNet its
        names and shapes describe (listing every one).
      OSError: the output cannot be written.
    """
    info = source_architecture(
        tf1_checkpoint_path, depth=depth, base_width=base_width, num_classes=num_classes
    )
    model = resnet.build_resnet(info.depth, info.num_classes, base_width=info.base_width)
    contents = tf1_checkpoint.load_tf1_checkpoint(model, info.path)
    try:
        path = tf.train.Checkpoint(model=model).write(output)
    except tf.errors.OpError as e:
        raise OSError(f"cannot write {output}: {checkpoint_files.error_line(e)}") from None
    return {
        "path": path,
        "depth": info.depth,
        "base_width": info.base_width,
        "variables": len(model.weights),
        "trainable_parameters": int(sum(np.prod(v.shape) for v in model.trainable_weights)),
        "parameters": int(sum(np.prod(v.shape) for v in model.weights)),
        "head_classes": info.num_classes,
        "source": contents.summary(),  # what the TF1 file held; only the model weights are converted
    }


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the script's flags on `flag_values` (a fresh one runs it in-process)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "tf1_checkpoint", None, "Prefix of the released TF1 checkpoint (.../model.ckpt).", **fv
    )
    flags.DEFINE_string(
        "output", None, "Prefix of the checkpoint to write (tf.train.Checkpoint(model=...)).", **fv
    )
    flags.DEFINE_integer(
        "depth",
        None,
        "Expected ResNet depth (the released checkpoints are 101); default: read from the checkpoint. "
        "Another depth is an error.",
        **fv,
    )
    flags.DEFINE_integer(
        "base_width",
        None,
        "Expected stem width (64 for the released checkpoints); default: read from the checkpoint.",
        **fv,
    )
    flags.DEFINE_integer(
        "num_classes",
        None,
        "Expected head size: 11166 (ML-Images) or 1000 (ImageNet); default: read from the checkpoint.",
        **fv,
    )
    flags.mark_flags_as_required(["tf1_checkpoint", "output"], **fv)


def _one_line(error: BaseException) -> str:
    """The error's message on one line (a strict mismatch lists its variables on several)."""
    text = (
        checkpoint_files.error_line(error)
        if isinstance(error, tf.errors.OpError)
        else " ".join(str(error).split())
    )
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 4] + " ..."


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    if len(argv) > 1:
        raise command_line.error(__file__, f"unexpected arguments {argv[1:]}; see --help")
    try:
        summary = convert(
            f.tf1_checkpoint,
            output=fileio.user_path(f.output),
            depth=f.depth,
            base_width=f.base_width,
            num_classes=f.num_classes,
        )
    except (ValueError, OSError, tf.errors.OpError) as e:  # CheckpointError is a ValueError
        raise command_line.error(__file__, _one_line(e)) from None
    print(
        f"wrote {summary['path']}: ResNet-{summary['depth']} (base width {summary['base_width']}), "
        f"{summary['variables']} variables, {summary['trainable_parameters']:,} trainable parameters "
        f"({summary['parameters']:,} with BN statistics), {summary['head_classes']}-way head; the TF1 file "
        f"held {summary['source']}"
    )


if __name__ == "__main__":
    tf_logs.quiet_tensorflow()  # TensorFlow's own INFO lines stay out of the output
    command_line.run(main, define_flags, script=__file__)
