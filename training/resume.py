"""Resuming a run: which checkpoint every rank resumes from, and restoring it on this rank.

The chief walks the checkpoints its state file lists, newest first; every rank checks its own input
position at the candidate step, and all agree (one all-reduce per candidate) on the newest checkpoint that
is intact everywhere. Damaged checkpoints are named in a warning and moved to `{model_dir}/damaged/`,
never deleted. A checkpoint saved on another number of ranks restores the model, optimizer, loss state and
step (re-counted in the new global batch, so the schedule follows the images seen); its input positions
belong to the old sharding, so the input restarts with a new permutation (`InputPlan`).
"""

from __future__ import annotations

import dataclasses
import os

import keras
import tensorflow as tf
from absl import logging

from models.checkpoint_files import checkpoint_paths, checkpoint_problem
from training import checkpoints, distributed
from training.config import TrainConfig


@dataclasses.dataclass(frozen=True)
class Resume:
    """The checkpoint every rank resumes from, and what its input positions belong to."""

    path: str
    step: int  # as saved (in the saving run's global batch)
    num_ranks: int  # of the run that saved it; 0: not recorded (a run directory from before the record)
    global_batch: int  # idem
    input_seed: int
    input_saved: bool  # the positions can be restored (False: saved by an earlier version)


def announce(dist: distributed.Distributed, values: list[int]) -> list[int]:
    """The chief's `values` on every rank (the others contribute zeros to a sum)."""
    mine = values if dist.is_chief else [0] * len(values)
    return [int(v) for v in dist.allreduce_sum(tf.constant(mine, tf.int64)).numpy()]  # Horovod: one sum


def _set_aside(model_dir: str, step: int, num_ranks: int) -> None:
    """Chief: moves the files of a damaged checkpoint (and its input positions) to `damaged/`, never deleting
    them, so that neither the checkpoint manager's rotation nor a new save of the same step removes them."""
    target = os.path.join(model_dir, "damaged")
    moved = []
    for rank in range(num_ranks):
        prefix = checkpoints.input_checkpoint_prefix(model_dir, rank)
        for f in tf.io.gfile.glob(f"{prefix}-{step}.*"):
            dest = os.path.join(target, os.path.relpath(f, model_dir))
            tf.io.gfile.makedirs(os.path.dirname(dest))
            tf.io.gfile.rename(f, dest, overwrite=True)
            moved.append(dest)
    for f in tf.io.gfile.glob(os.path.join(model_dir, f"ckpt-{step}.*")):
        tf.io.gfile.makedirs(target)
        dest = os.path.join(target, os.path.basename(f))
        tf.io.gfile.rename(f, dest, overwrite=True)
        moved.append(dest)
    logging.warning("moved the damaged checkpoint ckpt-%d to %s (%d files kept)", step, target, len(moved))


def _forget(model_dir: str, bad: list[str], good: str) -> None:
    """Chief: the state file without the damaged checkpoints, `good` as the latest."""
    kept = [p for p in reversed(checkpoint_paths(model_dir)) if p not in bad]
    tf.compat.v1.train.update_checkpoint_state(model_dir, good, all_model_checkpoint_paths=kept)


def agreed_resume(config: TrainConfig, dist: distributed.Distributed) -> Resume | None:
    """The newest checkpoint that is intact on every rank (state and input positions), agreed by all ranks.

    The chief walks the state file newest first and skips damaged run states; every rank then checks its own
    input position at that step (when it belongs to this number of ranks), and one all-reduce says whether
    any rank found it damaged, in which case all fall back to the next older one. Damaged checkpoints are
    named in a warning and moved to `damaged/`, never deleted.

    Raises:
      ValueError: the directory has checkpoints and every one is damaged.
    """
    candidates = checkpoint_paths(config.runtime.model_dir) if dist.is_chief else []
    bad: list[str] = []
    index = 0
    while True:
        announced = [-1, 0, 0, 0, 0]
        if dist.is_chief:
            while index < len(candidates) and (problem := checkpoint_problem(candidates[index])):
                logging.warning(
                    "the checkpoint %s is damaged: %s; trying an older one", candidates[index], problem
                )
                bad.append(candidates[index])
                index += 1
            if index < len(candidates):
                step = checkpoints.step_of(candidates[index])
                meta = checkpoints.read_input_meta(config.runtime.model_dir, rank=0, step=step)
                announced = [step, 0, 0, config.runtime.seed, 1]
                if meta is not None:
                    announced = [
                        step,
                        meta.num_ranks,
                        meta.global_batch,
                        meta.input_seed,
                        int(meta.restorable),
                    ]
            elif candidates:
                announced[0] = -2
        step, num_ranks, global_batch, input_seed, saved = announce(dist, announced)
        if step == -2:
            raise ValueError(
                f"every checkpoint in {config.runtime.model_dir} is damaged (see the warnings; the files are kept): "
                "move them away to start afresh"
            )
        if step < 0:
            return None
        problem = None
        if num_ranks in (0, dist.size) and saved:
            prefix = f"{checkpoints.input_checkpoint_prefix(config.runtime.model_dir, dist.rank)}-{step}"
            problem = checkpoints.input_position_problem(config.runtime.model_dir, rank=dist.rank, step=step)
            if problem is None and num_ranks:
                if checkpoints.read_input_meta(config.runtime.model_dir, rank=dist.rank, step=step) is None:
                    problem = f"{prefix}.json is missing"
            if problem:
                logging.warning("rank %d: the input position %s is damaged: %s", dist.rank, prefix, problem)
        # Horovod: every rank learns whether any rank's input position at this step is damaged.
        if int(dist.allreduce_sum(tf.constant(int(problem is not None), tf.int64)).numpy()) == 0:
            path = os.path.join(config.runtime.model_dir, f"ckpt-{step}")
            if dist.is_chief and bad:
                _forget(config.runtime.model_dir, bad, path)
                for b in bad:
                    _set_aside(config.runtime.model_dir, checkpoints.step_of(b), max(num_ranks, dist.size))
                logging.warning("resuming from the older intact checkpoint %s", path)
            return Resume(path, step, num_ranks, global_batch, input_seed, bool(saved))
        if dist.is_chief:
            logging.warning(
                "an input position of %s is damaged; trying an older checkpoint", candidates[index]
            )
            bad.append(candidates[index])
            index += 1


@dataclasses.dataclass(frozen=True)
class InputPlan:
    """How this rank's input continues after a restore."""

    seed: int  # the input seed (the saved one; a new one when the input restarts)
    restore: bool  # restore the saved position (False: the input restarts with a new permutation)
    note: str = ""  # why it restarts


def read_run_state(
    checkpoint: tf.train.Checkpoint, model: keras.Model, *, path: str, config: TrainConfig
) -> str | None:
    """Chief: reads the run state at `path` into `checkpoint`; returns why it cannot (None: restored).

    The reasons are one line: the file is missing, it holds another model (named by layer and shape) or
    another run's state.
    """
    if not tf.io.gfile.exists(path + ".index"):
        return f"cannot read the checkpoint {path}: it is gone (was it moved during the start?)"
    expected = {
        "depth": config.model.depth,
        "base_width": config.model.base_width,
        "num_classes": config.model.num_classes,
    }
    mismatch = checkpoints.model_mismatch(path, model, expected)
    if mismatch:
        return f"cannot resume in {config.runtime.model_dir}: {mismatch}"
    try:
        checkpoint.read(path).assert_existing_objects_matched()
    except (AssertionError, ValueError, tf.errors.OpError) as e:
        return (
            f"cannot resume from {path}: it does not hold this run's state "
            f"({str(e).strip().splitlines()[0][:200]})"
        )
    return None


def restore(
    resume: Resume,
    *,
    checkpoint: tf.train.Checkpoint,
    model: keras.Model,
    global_step: tf.Variable,
    config: TrainConfig,
    dist: distributed.Distributed,
) -> InputPlan:
    """Restores the run state (read by the chief alone: `read_run_state`, the other ranks receive it by the
    broadcast after this) and plans this rank's input; re-counts the step when the global batch changed.

    Raises:
      ValueError: the checkpoint holds another model (named by layer and shape) or another run's state.
    """
    path = resume.path
    problem = read_run_state(checkpoint, model, path=path, config=config) if dist.is_chief else None
    # Horovod: the chief alone reads the run state; the others learn whether it could, and receive its values
    # by the broadcast that follows the restore (training/loop.py), so a resume on 128 ranks reads it once.
    refused = announce(dist, [int(problem is not None)])[0]
    if problem is not None:
        raise ValueError(problem)
    if refused:
        raise ValueError(f"cannot resume from {path}: the chief could not read it (see its error)")
    logging.info("rank %d resumed from %s", dist.rank, path)
    plan = InputPlan(seed=resume.input_seed, restore=True)
    if resume.num_ranks not in (0, dist.size):
        note = f"its input positions were saved by {resume.num_ranks} rank(s) and cannot be mapped onto {dist.size}"
        plan = InputPlan(seed=config.runtime.seed + resume.step, restore=False, note=note)
    elif not resume.input_saved:
        note = "its input positions were saved by an earlier version, as tf.data iterator states that are no longer read"
        plan = InputPlan(seed=config.runtime.seed + resume.step, restore=False, note=note)
    if resume.global_batch and resume.global_batch != config.global_batch:
        # The schedule is in images seen: the step is re-counted in the new global batch.
        step = round(resume.step * resume.global_batch / config.global_batch)
        global_step.assign(step)
        if dist.is_chief:
            logging.warning(
                "%s was saved at global batch %d (%d ranks); this run's global batch is %d (%d ranks): its "
                "step %d is step %d here (the same %d images seen), against this configuration's schedule",
                path,
                resume.global_batch,
                resume.num_ranks,
                config.global_batch,
                dist.size,
                resume.step,
                step,
                resume.step * resume.global_batch,
            )
    return plan
