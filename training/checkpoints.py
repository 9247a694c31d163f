"""Checkpoints: the run state (rank 0, atomic, last K kept), per-rank input positions, and model weights.

A run directory holds:
  ckpt-N.*, checkpoint       model, optimizer slots, loss counters, step (written by rank 0 only)
  input/rank-R/ckpt-N.json    each rank's input position at step N (every rank writes its own): the
                              elements of the phase's stream it has consumed, with the number of ranks,
                              the global batch and the input seed of the run that saved it (a resume on
                              another number of ranks cannot map the positions and restarts the input)
  config.json                 the resolved configuration (written before step 0; training/run_dir.py)

TensorFlow writes a checkpoint's data files first and then renames the `checkpoint` state file into
place, so a crash (or a kill -9, or a second SIGTERM) mid-write leaves the previous checkpoint as the
latest. The state file lists the kept checkpoints; a resume takes the newest of them that is intact
(`models.checkpoint_files.checkpoint_problem`) and warns about any damaged one, whose files stay where they
are. On resume every rank restores its own input position; the run state is read by the chief and broadcast
(training/resume.py).
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import os
import re

import keras
import tensorflow as tf
from absl import logging

from data import fileio
from models import architecture, checkpoint_files, resnet, tf1_checkpoint

# Failures of the storage while writing: a full disk, a lost mount, no permission.
_WRITE_ERRORS = (
    OSError,
    tf.errors.ResourceExhaustedError,
    tf.errors.UnknownError,
    tf.errors.InternalError,
    tf.errors.PermissionDeniedError,
    tf.errors.UnavailableError,
    tf.errors.DataLossError,
    tf.errors.AbortedError,
    tf.errors.NotFoundError,
)


class CheckpointWriteError(ValueError):
    """A checkpoint could not be written (full disk, lost mount); the previous one is still the latest."""


def latest_step(model_dir: str) -> int | None:
    """Step of the newest complete run checkpoint in `model_dir`, or None."""
    path = tf.train.latest_checkpoint(model_dir)
    return step_of(path) if path else None


def step_of(path: str) -> int:
    """N of a run checkpoint prefix `.../ckpt-N`."""
    return int(re.search(r"ckpt-(\d+)$", path).group(1))


def _remove_partial(prefix: str) -> None:
    """Removes what an interrupted write of the checkpoint `prefix` left (its data, index and temp dir)."""
    for path in tf.io.gfile.glob(prefix + ".*") + tf.io.gfile.glob(prefix + "_temp*"):
        with contextlib.suppress(tf.errors.OpError, OSError):
            if tf.io.gfile.isdir(path):
                tf.io.gfile.rmtree(path)
            else:
                tf.io.gfile.remove(path)


def _write_error(what: str, model_dir: str, error: BaseException) -> CheckpointWriteError:
    latest = tf.train.latest_checkpoint(model_dir)
    reason = (
        "no space left on device"
        if getattr(error, "errno", None) == errno.ENOSPC
        else checkpoint_files.error_line(error)
    )
    return CheckpointWriteError(
        f"cannot write {what} in {model_dir}: {reason}; the latest checkpoint stays "
        f"{os.path.basename(latest) if latest else 'none'}, the partial files were removed"
    )


def save_run_state(manager: tf.train.CheckpointManager, *, model_dir: str, step: int) -> str:
    """Chief only: saves `ckpt-step` through `manager`; on a storage failure removes its partial files.

    Raises:
      CheckpointWriteError: the disk is full or the storage failed; the previous checkpoint is still the
        latest (the state file is only replaced after the data and index are complete).
    """
    prefix = os.path.join(model_dir, f"ckpt-{step}")
    try:
        return manager.save(checkpoint_number=step)
    except _WRITE_ERRORS as e:
        # Never a listed one (a step number seen before).
        if prefix not in checkpoint_files.checkpoint_paths(model_dir):
            _remove_partial(prefix)
        raise _write_error(f"ckpt-{step}", model_dir, e) from None


def input_checkpoint_prefix(model_dir: str, rank: int) -> str:
    return os.path.join(model_dir, "input", f"rank-{rank}", "ckpt")


@dataclasses.dataclass(frozen=True)
class InputMeta:
    """A rank's saved input position (input/rank-R/ckpt-N.json, a few hundred bytes): the elements of which
    stream it has consumed, and what that stream belongs to (the number of ranks, the global batch and the
    input seed of the run that saved it: a resume on another number of ranks cannot map the position and
    restarts the input instead). The stream itself is rebuilt from it (`input_pipeline.train_dataset`'s
    `start`), so nothing of the pipeline's buffers is saved."""

    step: int
    num_ranks: int
    global_batch: int
    input_seed: int
    phase: int | None = None  # the image-size phase whose stream this is
    # Elements of that stream this rank has consumed. None: saved by an earlier version, which wrote
    # tf.data's iterator state beside it (no longer read: the input restarts).
    elements: int | None = None

    @property
    def restorable(self) -> bool:
        return self.phase is not None and self.elements is not None


def _input_path(model_dir: str, rank: int, step: int) -> str:
    return f"{input_checkpoint_prefix(model_dir, rank)}-{step}"


def _parse_input_meta(content) -> InputMeta | None:
    if not isinstance(content, dict):
        return None
    fields = {f.name for f in dataclasses.fields(InputMeta)}
    try:
        meta = InputMeta(**{k: v for k, v in content.items() if k in fields})
    except TypeError:
        return None
    counts = [meta.step, meta.num_ranks, meta.global_batch, meta.phase or 0, meta.elements or 0]
    if not isinstance(meta.input_seed, int) or not all(isinstance(n, int) and n >= 0 for n in counts):
        return None
    return meta


def read_input_meta(model_dir: str, *, rank: int, step: int) -> InputMeta | None:
    """Rank `rank`'s input position at `step` (None: none, or unreadable)."""
    return _parse_input_meta(fileio.read_json(_input_path(model_dir, rank, step) + ".json"))


def save_input_position(*, model_dir: str, rank: int, step: int, keep: int, meta: InputMeta) -> None:
    """Writes this rank's input position for `step` (atomically); removes all but the newest `keep`.

    Raises:
      CheckpointWriteError: the disk is full or the storage failed (the partial files are removed).
    """
    directory = os.path.dirname(input_checkpoint_prefix(model_dir, rank))
    path = _input_path(model_dir, rank, step)
    try:
        tf.io.gfile.makedirs(directory)
        fileio.write_json(path + ".json", dataclasses.asdict(meta))
    except _WRITE_ERRORS as e:
        _remove_partial(path)
        raise _write_error(f"rank {rank}'s input position for step {step}", model_dir, e) from None
    # Newest by the time of writing, not by step: see checkpoint_paths.
    metas = tf.io.gfile.glob(os.path.join(directory, "ckpt-*.json"))
    metas.sort(
        key=lambda f: (tf.io.gfile.stat(f).mtime_nsec, int(re.search(r"ckpt-(\d+)\.json$", f).group(1)))
    )
    for old in metas[:-keep]:
        for f in tf.io.gfile.glob(old[: -len(".json")] + ".*"):  # with an earlier version's iterator files
            tf.io.gfile.remove(f)


def input_position_problem(model_dir: str, *, rank: int, step: int) -> str | None:
    """What is wrong with rank `rank`'s saved input position at `step` (None: intact or never saved)."""
    path = _input_path(model_dir, rank, step) + ".json"
    if not tf.io.gfile.exists(path):
        return None
    if read_input_meta(model_dir, rank=rank, step=step) is None:
        return f"{path} is not a readable input position ({tf.io.gfile.stat(path).length} bytes)"
    return None


def restore_input_position(*, model_dir: str, rank: int, step: int, phase: int) -> int:
    """The elements of phase `phase`'s stream this rank had consumed at `step`, where its input continues
    (`input_pipeline.train_dataset`'s `start`); 0 (and a warning) when no usable position was saved."""
    meta = read_input_meta(model_dir, rank=rank, step=step)
    if meta is None or not meta.restorable or meta.phase != phase:
        why = (
            "no saved input position"
            if meta is None
            else "an input position of an earlier version"
            if not meta.restorable
            else f"the input position of phase {meta.phase}, not {phase},"
        )
        logging.warning("%s for rank %d at step %d: the input restarts", why, rank, step)
        return 0
    return meta.elements


def _model_config(ckpt_path: str) -> dict[str, int]:
    """Depth, base width and head size of the ResNet in a checkpoint of either kind (`models.architecture`)."""
    found = architecture.checkpoint_architecture(ckpt_path)
    return {key: int(found[key]) for key in ("depth", "base_width", "num_classes")}


def model_mismatch(path: str, model: keras.Model, expected: dict[str, int]) -> str | None:
    """How the ResNet stored at `path` differs from `model` (built as `expected`), or None when it fits.

    The message names the architecture and the first differing weights by our layer names and shapes,
    so that a run directory holding another model's checkpoint is one clear refusal instead of
    TensorFlow's restore errors and a wall of "unresolved object" warnings.
    """
    try:
        found = _model_config(path)
    except ValueError as e:
        return str(e)
    if all(found[k] == expected[k] for k in found):
        return None
    there = resnet.build_resnet(found["depth"], found["num_classes"], base_width=found["base_width"])
    shapes_there = {w.path: tuple(w.shape) for w in there.weights}
    shapes_here = {w.path: tuple(w.shape) for w in model.weights}
    differ = [
        f"{name} is {shapes_there[name]} there, {shapes_here[name]} here"
        for name in shapes_here
        if name in shapes_there and shapes_there[name] != shapes_here[name]
    ]
    only_there = len(set(shapes_there) - set(shapes_here))
    only_here = len(set(shapes_here) - set(shapes_there))
    fields = ", ".join(f"{k} {found[k]} (this run: {expected[k]})" for k in found if found[k] != expected[k])
    detail = "; ".join(differ[:3]) + (f" and {len(differ) - 3} more" if len(differ) > 3 else "")
    extra = f"; {only_there} weights only there, {only_here} only here" if only_there or only_here else ""
    return f"{path} holds another model: {fields}" + (f"; {detail}" if detail else "") + extra


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
    path = checkpoint_files.resolve_checkpoint(path)
    if architecture.is_tf1_checkpoint(path):
        contents = tf1_checkpoint.load_tf1_checkpoint(model, path, skip_head=skip_head)
        logging.info("loaded TF1 checkpoint %s (head %s)", path, "skipped" if skip_head else "loaded")
        return contents
    found = _model_config(path)
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

    Raises:
      CheckpointWriteError: the disk is full or the storage failed (the partial files are removed).
    """
    directory = os.path.dirname(rank_state_prefix(model_dir, rank, step))
    tf.io.gfile.makedirs(directory)
    state = {f"v{i}": v for i, v in enumerate(variables)}
    prefix = rank_state_prefix(model_dir, rank, step)
    try:
        tf.train.Checkpoint(num_ranks=tf.Variable(num_ranks, dtype=tf.int64), **state).write(prefix)
    except _WRITE_ERRORS as e:
        _remove_partial(prefix)
        raise _write_error(f"rank {rank}'s loss state of step {step}", model_dir, e) from None
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
