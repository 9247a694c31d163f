"""Checkpoints: the run state (rank 0, atomic, last K kept), per-rank input positions, and model weights.

A run directory holds:
  ckpt-N.*, checkpoint       model, optimizer slots, loss counters, step (written by rank 0 only)
  input/rank-R/ckpt-N.*       each rank's input-pipeline position at step N (every rank writes its own)
  config.json                 the resolved configuration (written before step 0)

TensorFlow writes a checkpoint's data files first and then renames the `checkpoint` index into place, so a
crash mid-write leaves the previous checkpoint as the latest. On resume every rank restores the same state
from the chief's files (never only rank 0), and its own input position for that step.
"""

from __future__ import annotations

import os
import re

import keras
import tensorflow as tf
from absl import logging

from models import pretrained, resnet, tf1_checkpoint


def latest_step(model_dir: str) -> int | None:
    """Step of the newest complete run checkpoint in `model_dir`, or None."""
    path = tf.train.latest_checkpoint(model_dir)
    return int(re.search(r"ckpt-(\d+)$", path).group(1)) if path else None


def input_checkpoint_prefix(model_dir: str, rank: int) -> str:
    return os.path.join(model_dir, "input", f"rank-{rank}", "ckpt")


def save_input_position(iterator, *, model_dir: str, rank: int, step: int, keep: int) -> bool:
    """Writes this rank's iterator state for `step` and removes all but the newest `keep`.

    Returns False (with a warning) for a pipeline that tf.data cannot serialize (one fed by a Python
    generator, such as TFDS's mock data): the run goes on, and a resume restarts that rank's input.
    """
    directory = os.path.dirname(input_checkpoint_prefix(model_dir, rank))
    tf.io.gfile.makedirs(directory)
    try:
        tf.train.Checkpoint(iterator=iterator).write(os.path.join(directory, f"ckpt-{step}"))
    except tf.errors.FailedPreconditionError as e:
        logging.warning(
            "rank %d: the input position cannot be saved (%s); a resume restarts the input",
            rank,
            e.message.splitlines()[-1][:200],
        )
        return False
    steps = sorted(
        int(m.group(1)) for f in tf.io.gfile.listdir(directory) if (m := re.match(r"ckpt-(\d+)\.index$", f))
    )
    for old in steps[:-keep]:
        for f in tf.io.gfile.glob(os.path.join(directory, f"ckpt-{old}.*")):
            tf.io.gfile.remove(f)
    return True


def restore_input_position(iterator, *, model_dir: str, rank: int, step: int) -> bool:
    """Restores this rank's iterator to `step`; False (and a warning) when no position was saved for it."""
    path = os.path.join(os.path.dirname(input_checkpoint_prefix(model_dir, rank)), f"ckpt-{step}")
    if not tf.io.gfile.exists(path + ".index"):
        logging.warning("no saved input position for rank %d at step %d: the input restarts", rank, step)
        return False
    tf.train.Checkpoint(iterator=iterator).read(path).assert_consumed()
    return True


def infer_model_config(ckpt_path: str) -> dict[str, int]:
    """Depth, base width and head size of the ResNet in a checkpoint of either kind (`models.pretrained`)."""
    found = pretrained.checkpoint_architecture(ckpt_path)
    return {key: int(found[key]) for key in ("depth", "base_width", "num_classes")}


def is_tf1_checkpoint(ckpt_path: str) -> bool:
    """True for the released TF1 checkpoints (`models.pretrained.is_tf1_checkpoint`)."""
    return pretrained.is_tf1_checkpoint(ckpt_path)


def resolve_checkpoint_path(path: str) -> str:
    """A checkpoint prefix from a prefix or a directory (its latest checkpoint)."""
    if tf.io.gfile.isdir(path):
        latest = tf.train.latest_checkpoint(path)
        if latest is None:
            raise FileNotFoundError(f"no checkpoint in directory {path}")
        return latest
    if not tf.io.gfile.exists(path + ".index"):
        raise FileNotFoundError(f"checkpoint {path} not found (no {path}.index)")
    return path


def load_model_weights(
    model: keras.Model, path: str, *, skip_head: bool = False
) -> tf1_checkpoint.TF1Contents | None:
    """Loads model weights from ours (a run or converted checkpoint) or a released TF1 checkpoint.

    Strict on the model: any difference in architecture raises; the head (`logits`) is left as it is only
    when `skip_head` (fine-tuning a new head). A TF1 checkpoint's other entries (step, Momentum slots, the
    release's loss counters, anything unknown) are reported and ignored here.

    Returns:
      For a TF1 checkpoint, its entries sorted by meaning (to take over its training state with
      `tf1_checkpoint.restore_release_state`); None for ours.
    """
    path = resolve_checkpoint_path(path)
    if is_tf1_checkpoint(path):
        contents = tf1_checkpoint.load_tf1_checkpoint(model, path, skip_head=skip_head)
        logging.info("loaded TF1 checkpoint %s (head %s)", path, "skipped" if skip_head else "loaded")
        return contents
    found = infer_model_config(path)
    source = resnet.build_resnet(found["depth"], found["num_classes"], base_width=found["base_width"])
    tf.train.Checkpoint(model=source).read(path).expect_partial().assert_existing_objects_matched()
    source_layers = {layer.name: layer for layer in source.layers if layer.weights}
    target_layers = {layer.name: layer for layer in model.layers if layer.weights}
    if set(source_layers) != set(target_layers):
        raise ValueError(
            f"{path} holds a different architecture ({found}); layers only there: "
            f"{sorted(set(source_layers) - set(target_layers))[:5]}, only in the model: "
            f"{sorted(set(target_layers) - set(source_layers))[:5]}"
        )
    for name, layer in target_layers.items():
        if skip_head and name == "logits":
            continue
        values = source_layers[name].get_weights()
        for target, value in zip(layer.weights, values, strict=True):
            if tuple(target.shape) != value.shape:
                raise ValueError(
                    f"{path}: {target.path} has shape {value.shape}, the model {tuple(target.shape)}"
                )
        layer.set_weights(values)
    logging.info("loaded %s (%s; head %s)", path, found, "skipped" if skip_head else "loaded")
    return None


def rank_state_prefix(model_dir: str, rank: int, step: int) -> str:
    """Where rank `rank` keeps its own state at `step` (the loss counters of class_status=local)."""
    return os.path.join(os.path.dirname(input_checkpoint_prefix(model_dir, rank)), f"loss-{step}")


def save_rank_state(
    variables: list[tf.Variable], *, model_dir: str, rank: int, num_ranks: int, step: int, keep: int
) -> None:
    """Writes this rank's own state (variables that differ between ranks) for `step`, beside its input position.

    The chief's run checkpoint holds only the chief's values of such variables; each rank writes its own
    here, with the number of ranks, so that a resume gives every rank its own values back (or knows that
    they do not apply). All but the newest `keep` are removed.
    """
    directory = os.path.dirname(rank_state_prefix(model_dir, rank, step))
    tf.io.gfile.makedirs(directory)
    state = {f"v{i}": v for i, v in enumerate(variables)}
    tf.train.Checkpoint(num_ranks=tf.Variable(num_ranks, dtype=tf.int64), **state).write(
        rank_state_prefix(model_dir, rank, step)
    )
    steps = sorted(
        int(m.group(1)) for f in tf.io.gfile.listdir(directory) if (m := re.match(r"loss-(\d+)\.index$", f))
    )
    for old in steps[:-keep]:
        for f in tf.io.gfile.glob(os.path.join(directory, f"loss-{old}.*")):
            tf.io.gfile.remove(f)


def restore_rank_state(
    variables: list[tf.Variable], *, model_dir: str, rank: int, num_ranks: int, step: int
) -> bool:
    """Restores this rank's own state at `step`; resets it to zeros (with a warning) where it cannot.

    It cannot when this rank saved nothing at `step` (e.g. the run used class_status=global, or had fewer
    ranks) or when the run was saved on another number of ranks (rank R's batches were then other images).

    Returns:
      True when this rank's saved values were restored.
    """
    path = rank_state_prefix(model_dir, rank, step)
    saved_ranks = None
    if tf.io.gfile.exists(path + ".index"):
        saved_ranks = int(tf.train.load_checkpoint(path).get_tensor("num_ranks/.ATTRIBUTES/VARIABLE_VALUE"))
    if saved_ranks == num_ranks:
        state = {f"v{i}": v for i, v in enumerate(variables)}
        tf.train.Checkpoint(num_ranks=tf.Variable(0, dtype=tf.int64), **state).read(path).assert_consumed()
        return True
    logging.warning(
        "rank %d: the per-rank loss counters %s (class_status=local); they restart from 0",
        rank,
        f"were saved on {saved_ranks} ranks, this run has {num_ranks}"
        if saved_ranks is not None
        else f"were not saved at step {step}",
    )
    for variable in variables:
        variable.assign(tf.zeros_like(variable))
    return False
