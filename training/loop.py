"""The training orchestration shared by train.py and finetune.py: state, resume, phases, logs, checkpoints.

`train(config, dist=...)` runs a resolved `TrainConfig` to `config.schedule.train_steps`:

1. the chief locks the run directory (one run at a time) and checks the configuration against the saved
   `config.json` before writing anything: a change the checkpoint cannot take is refused on every rank,
   a change it can take is recorded once the run starts (training/run_dir.py);
2. the model, optimizer, loss state and step are created, then restored — on EVERY rank, from the newest
   checkpoint that is intact on every rank (state and input positions; damaged ones are set aside with a
   warning), whose step the chief announces to all ranks so no rank can disagree about it — or
   initialised (`init_checkpoint`: ours or a released TF1 checkpoint, head skipped when asked), and
   finally broadcast from rank 0 so all ranks start identical. A checkpoint saved on another global batch
   has its step re-counted in this one (the schedule follows the images seen). Only then, with the data
   opened and the state in place, is the run known to start: the chief writes `config.json` and opens
   TensorBoard's event files. A run refused before (a class count the data does not have, an unreadable
   `init_checkpoint`) leaves the run directory as it was, so the next run has no stale configuration
   to compare with;
3. the steps run phase by phase (one phase per training image size); each phase builds its own input
   pipeline, and a resumed run builds this rank's pipeline from its saved position (a count of elements) to
   give the exact next batch (or, when the saved positions belong to another number of ranks, restarts
   the input with a new permutation and says so);
4. every `log_every` steps the chief logs loss, lr, global images/s and ETA, to absl logging, to
   TensorBoard (`train/`, with a few input images at each phase's first logged step, and the resolved
   config as hparams: training/summaries.py) and to `metrics.jsonl`; every `checkpoint_every` steps each
   rank saves its input position and then the chief saves the run state (atomic: TensorFlow renames the state file into place
   last; the last `keep_checkpoints` are kept; a full disk is one error and leaves the previous one the
   latest); every `eval_every` steps the validation split is evaluated, sharded across ranks and
   all-reduced (TensorBoard `eval/`, `metrics.jsonl`);
5. a SIGTERM or SIGINT saves the current step on every rank and raises `preemption.Preempted`
   (training/preemption.py); the ranks agree on the step to stop at;
6. a NaN/Inf loss stops the run with `NonFiniteLossError` (naming the labels when they are the cause);
   nothing is saved after it, so the last good checkpoint stays the latest;
7. at the end the chief draws `training_curves.png` from `metrics.jsonl` (training/plots.py).

A run that is already finished returns at once on every rank (the step is agreed on first), instead of
leaving the other ranks waiting for a rank that exited.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from typing import Any

import keras
import tensorflow as tf
from absl import logging

from models import checkpoint_files, losses, resnet, tf1_checkpoint
from training import (
    checkpoints,
    distributed,
    evaluation,
    host_resources,
    input_pipeline,
    plots,
    preemption,
    run_dir,
    train_step,
)
from training import resume as resume_lib
from training import summaries as summaries_lib
from training.config import TrainConfig


@dataclasses.dataclass
class _Run:
    """What one training run holds."""

    config: TrainConfig
    dist: distributed.Distributed
    model: keras.Model
    step: train_step.TrainStep
    checkpoint: tf.train.Checkpoint
    manager: tf.train.CheckpointManager | None  # chief only
    train_source: input_pipeline.Source
    eval_source: input_pipeline.Source | None
    summaries: summaries_lib.Writers | None  # chief only, from the start (`_start`): TensorBoard
    # The input: its seed (the config's, or a new one where saved positions could not be used), and
    # whether this rank's position at the resumed step is restored (False: the input restarts, `input_note`
    # says why).
    input_seed: int = 0
    restore_input: bool = True
    input_note: str = ""
    data_threads: int = 0  # tf.data's pool of the training input: this rank's share of the host's cores

    @property
    def global_step(self) -> int:
        return int(self.step.global_step.numpy())


def _sources(config: TrainConfig) -> tuple[input_pipeline.Source, input_pipeline.Source | None]:
    """The training source and (with periodic validation) the validation source."""
    data, num_classes = config.data, config.model.num_classes
    want_eval = config.schedule.eval_every > 0
    if data.tfds_name:
        kwargs = dict(num_classes=num_classes, data_dir=data.tfds_data_dir, manual_dir=data.tfds_manual_dir)
        train = input_pipeline.tfds_source(data.tfds_name, "train", **kwargs)
        val = input_pipeline.tfds_source(data.tfds_name, "validation", **kwargs) if want_eval else None
    else:
        if not data.data_dir:
            raise ValueError("no training data: give --data_dir (our TFRecords) or --tfds_name")
        train = input_pipeline.tfrecord_source(data.data_dir, data.train_prefix, num_classes=num_classes)
        val = None
        if want_eval:
            val = input_pipeline.tfrecord_source(data.data_dir, data.eval_prefix, num_classes=num_classes)
    for source in (train, val):
        if source is not None and source.single_label != (config.task == "softmax"):
            kind = "single-label" if source.single_label else "multi-label"
            raise ValueError(f"the {config.task} task cannot train on {kind} data ({source.label_format})")
    return train, val


def _build(config: TrainConfig, dist: distributed.Distributed) -> _Run:
    train_step.set_precision(config.runtime.precision)
    if config.runtime.deterministic:
        tf.config.experimental.enable_op_determinism()  # bit-exact reruns (and resumes) on CPU
    keras.utils.set_random_seed(config.runtime.seed)  # the initial weights (rank 0's are broadcast)
    model = resnet.build_resnet(
        config.model.depth,
        config.model.num_classes,
        base_width=config.model.base_width,
        bn_momentum=config.model.bn_momentum,
    )
    optimizer = train_step.make_optimizer(
        momentum=config.schedule.momentum, precision=config.runtime.precision
    )
    loss = None
    if config.task == "multilabel":
        loss = losses.AdaptiveMultiLabelLoss(
            config.model.num_classes,
            mask_thres=config.loss.mask_thres,
            neg_select=config.loss.neg_select,
            pos_weight=config.loss.pos_weight,
            seed=config.runtime.seed,  # Horovod: the same seed on every rank, so the same negative draw.
        )
    step = train_step.TrainStep(
        model,
        optimizer,
        task=config.task,
        schedule=config.schedule.learning_rate,
        dist=dist,
        loss=loss,
        weight_decay=config.loss.weight_decay,
        bn_weight_decay_scale=config.loss.bn_weight_decay_scale,
        frozen_stages=config.model.frozen_stages,
        xla=config.runtime.xla,
        accum_steps=config.runtime.accum_steps,
        class_status=config.loss.class_status,
        backward_segments=config.runtime.backward_segments
        or (4 if dist.size > 1 and config.runtime.accum_steps == 1 else 1),
        allreduce_dtype=config.runtime.allreduce_dtype,
    )
    state = {"model": model, "optimizer": optimizer, "global_step": step.global_step}
    if loss is not None:
        state["loss"] = loss
    checkpoint = tf.train.Checkpoint(**state)
    train_source, eval_source = _sources(config)
    # The manager (chief) is made after the resume is agreed: see _set_aside.
    return _Run(
        config,
        dist,
        model,
        step,
        checkpoint,
        None,
        train_source,
        eval_source,
        None,
        input_seed=config.runtime.seed,
    )


def _init_from_checkpoint(run: _Run) -> None:
    """Loads `init_checkpoint`; from a released TF1 one, also what continues the release's run.

    That is its loss counters (`Variable` -> pos_count, `Variable_1` -> neg_count) when they fit the head
    and, with `init_optimizer_state`, the Momentum slots of every trained variable and its global_step.
    The log says what was taken over.
    """
    config = run.config
    contents = checkpoints.load_model_weights(
        run.model, config.model.init_checkpoint, skip_head=config.model.skip_head
    )
    if contents is None:
        if config.model.init_optimizer_state:
            raise ValueError(
                "--init_optimizer_state takes the optimizer state of a released TF1 checkpoint; to continue "
                f"one of this project's runs ({config.model.init_checkpoint}), use its --model_dir (resume)"
            )
        return
    taken = [
        f"weights ({len(contents.model)} variables, head {'skipped' if config.model.skip_head else 'loaded'})"
    ]
    state: dict[str, Any] = {}
    if run.step.loss is not None and config.model.skip_head:
        taken.append("loss counters NOT taken: the head is new (skip_head)")
    elif run.step.loss is not None:
        state.update(pos_count=run.step.loss.pos_count, neg_count=run.step.loss.neg_count)
    if config.model.init_optimizer_state:
        names = {id(v): n for n, v in tf1_checkpoint.tf1_variable_map(run.model).items()}
        state["momentum"] = {
            names[id(v)]: m
            for v, m in zip(run.step.train_variables, run.step.momentum_variables(), strict=True)
            if not (config.model.skip_head and names[id(v)].startswith(tf1_checkpoint.HEAD_PREFIX))
        }
        state["global_step"] = run.step.global_step
    taken += tf1_checkpoint.restore_release_state(contents, **state)
    if not config.model.init_optimizer_state:
        taken.append("NOT the Momentum slots and step (--init_optimizer_state)")
    logging.info("initialised from TF1 checkpoint %s: %s", contents.path, "; ".join(taken))


def _initialise(run: _Run) -> int:
    """Restores or initialises the state on every rank; returns the step to continue from."""
    config, dist = run.config, run.dist
    resume = resume_lib.agreed_resume(config, dist)
    if resume is not None:
        plan = resume_lib.restore(
            resume,
            checkpoint=run.checkpoint,
            model=run.model,
            global_step=run.step.global_step,
            config=config,
            dist=dist,
        )
        run.input_seed, run.restore_input, run.input_note = plan.seed, plan.restore, plan.note
        if run.step.rank_local_variables():  # class_status=local: this rank's own loss counters
            checkpoints.restore_rank_state(
                run.step.rank_local_variables(),
                model_dir=config.runtime.model_dir,
                rank=dist.rank,
                num_ranks=dist.size,
                step=resume.step,
            )
    elif config.model.init_checkpoint:
        _init_from_checkpoint(run)
    # Horovod: every rank starts from rank 0's state (identical after a restore; rank 0's random init else).
    dist.broadcast_variables(run.step.state_variables(), root_rank=0)
    return run.global_step


def _write(run: _Run, writer: str, step: int, values: dict[str, float]) -> None:
    """Chief only: scalars to TensorBoard and a JSON line to metrics.jsonl."""
    run.summaries.scalars(writer, step, values)
    with open(os.path.join(run.config.runtime.model_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
        f.write(json.dumps({"kind": writer, "step": step, **values}) + "\n")


def _save(run: _Run, step: int, *, phase: int, elements: int) -> None:
    """Each rank's input position first (`elements` of phase `phase`'s stream consumed), then (chief) the run
    state that makes `step` the latest.

    Raises:
      CheckpointWriteError: a rank could not write (a full disk); the previous checkpoint stays the latest.
    """
    config, dist = run.config, run.dist
    meta = checkpoints.InputMeta(
        step=step,
        num_ranks=dist.size,
        global_batch=config.global_batch,
        input_seed=run.input_seed,
        phase=phase,
        elements=elements,
    )
    failure = None
    try:
        checkpoints.save_input_position(
            model_dir=config.runtime.model_dir,
            rank=dist.rank,
            step=step,
            keep=config.schedule.keep_checkpoints + 1,
            meta=meta,
        )
        if run.step.rank_local_variables():  # class_status=local: each rank's own loss counters
            checkpoints.save_rank_state(
                run.step.rank_local_variables(),
                model_dir=config.runtime.model_dir,
                rank=dist.rank,
                num_ranks=dist.size,
                step=step,
                keep=config.schedule.keep_checkpoints + 1,
            )
    except checkpoints.CheckpointWriteError as e:
        failure = e
    # Horovod: every position is on disk before the state points at it (this sum is also the barrier).
    _agree_saved(dist, failure, f"an input position of step {step}")
    if run.manager is not None:
        try:
            path = checkpoints.save_run_state(run.manager, model_dir=config.runtime.model_dir, step=step)
            logging.info("saved %s", path)
        except checkpoints.CheckpointWriteError as e:
            failure = e
    _agree_saved(dist, failure, f"ckpt-{step}")


def _agree_saved(dist: distributed.Distributed, failure: Exception | None, what: str) -> None:
    """Raises on every rank when any rank failed to write `what` (its own message on that rank)."""
    failed = int(dist.allreduce_sum(tf.constant(int(failure is not None), tf.int64)).numpy())
    if failure is not None:
        raise failure
    if failed:
        raise checkpoints.CheckpointWriteError(f"another rank could not write {what} (see its error)")


def evaluate(run: _Run, step: int) -> dict[str, float]:
    """The validation metrics at the current training image size (all ranks; the chief writes them)."""
    config = run.config
    size = config.image_size_at(max(step - 1, 0))
    dataset = input_pipeline.eval_dataset(
        run.eval_source,
        batch_size=config.schedule.per_rank_batch,
        image_size=size,
        num_shards=run.dist.size,
        shard_index=run.dist.rank,
        transform=config.data.eval_transform,
        max_batches=config.schedule.eval_steps,
    )
    task = evaluation.SINGLE_LABEL if run.eval_source.single_label else evaluation.MULTILABEL
    results = evaluation.evaluate_model(
        run.model,
        dataset,
        task=task,
        num_classes=config.model.num_classes,
        settings=evaluation.EvalSettings(topk=config.schedule.topk),
        dist=run.dist,
        show_progress=False,
        source=run.eval_source,
    )
    if run.dist.is_chief:
        logging.info("eval at step %d (size %d): %s", step, size, json.dumps(results, sort_keys=True))
        _write(run, "eval", step, {k: v for k, v in results.items() if isinstance(v, int | float)})
    return results


def _phase_dataset(run: _Run, phase: int, start: int = 0) -> tf.data.Dataset:
    """This rank's batches of phase `phase`, from element `start` of its stream (a restored position)."""
    config = run.config
    size = config.schedule.image_sizes[phase][1]
    return input_pipeline.train_dataset(
        run.train_source,
        batch_size=config.schedule.per_rank_batch,
        image_size=size,
        seed=run.input_seed,
        num_shards=run.dist.size,
        shard_index=run.dist.rank,
        phase=phase,
        area_cover=config.data.area_cover,
        object_cover=config.data.object_cover,
        shuffle_buffer=config.data.shuffle_buffer,
        distort=config.data.distort,
        threads=run.data_threads,
        start=start,
        transport=config.runtime.image_transport,
    )


def _format_eta(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def _prepare_run_dir(
    config: TrainConfig, dist: distributed.Distributed
) -> tuple[run_dir.RunLock | None, run_dir.ConfigRecord | None]:
    """Chief: locks the run directory and checks the configuration; agreed by every rank.

    Returns:
      The chief's lock and the configuration record that `_start` writes (None on the other ranks).

    Raises:
      RunDirError: (on every rank) the directory is unwritable or busy, or the configuration cannot resume
        its checkpoint; nothing in the directory was changed.
    """
    lock, record, refusal = None, None, None
    if dist.is_chief:
        try:
            lock = run_dir.RunLock(config.runtime.model_dir).acquire()
            resuming = bool(checkpoint_files.checkpoint_paths(config.runtime.model_dir))
            record = run_dir.check_config(config, resuming=resuming)
        except run_dir.RunDirError as e:
            if lock is not None:
                lock.release(discard=True)
            refusal = e
    # Horovod: the other ranks learn the chief's refusal instead of waiting for it in the first collective.
    refused = resume_lib.announce(dist, [int(refusal is not None)])[0]
    if refusal is not None:
        raise refusal
    if refused:
        raise run_dir.RunDirError(f"the chief refused to start in {config.runtime.model_dir} (see its error)")
    return lock, record


def _start(run: _Run, record: run_dir.ConfigRecord | None) -> None:
    """The run is known to start (data opened, state restored or initialised): the chief writes its
    configuration and opens TensorBoard's writers, the run directory's first files of this run."""
    if record is not None:
        record.write()
    if run.dist.is_chief:
        run.summaries = summaries_lib.Writers(run.config.runtime.model_dir)


def train(
    config: TrainConfig,
    *,
    dist: distributed.Distributed | None = None,
    profile_steps: tuple[int, int] | None = None,
) -> dict[str, Any]:
    """Runs (or resumes) `config` to its last step; returns the last logged values and evaluation.

    `profile_steps=(first, last)` writes a TensorBoard profile of those steps (chief only; not part of the
    config: it does not change the run).

    Raises:
      preemption.Preempted: a SIGTERM or SIGINT stopped the run after it saved its current step.
      ValueError: a one-line refusal (run directory busy or unwritable, a configuration or model that cannot
        resume, a full disk, bad labels ...); train_step.NonFiniteLossError: the loss diverged.
    """
    dist = dist or distributed.Distributed()
    # Horovod: the ranks of a host share its cores (training/host_resources.py).
    threads = host_resources.plan_threads(
        host_resources.cpu_count(),
        dist.local_size,
        intra_op_threads=config.runtime.intra_op_threads,
        inter_op_threads=config.runtime.inter_op_threads,
        data_threads=config.runtime.data_threads,
    )
    given = tuple(name for name in ("intra_op", "inter_op") if getattr(config.runtime, f"{name}_threads"))
    host_resources.apply_op_pools(threads, given=given)
    lock, record = _prepare_run_dir(config, dist)
    profiler = None
    if profile_steps is not None and dist.is_chief:
        profiler = summaries_lib.StepProfiler(
            *profile_steps, logdir=os.path.join(config.runtime.model_dir, "train")
        )
    try:
        with preemption.StopRequest() as stop:
            result = _train(config, dist, stop, profiler, record)
        if dist.is_chief:
            _draw_training_curves(config.runtime.model_dir)
        return result
    finally:
        if profiler is not None:
            profiler.close()  # a run that stopped inside the profiled steps
        if lock is not None:  # a run refused before it started leaves the directory as it found it
            lock.release(discard=record is not None and not record.written)


def _draw_training_curves(model_dir: str) -> None:
    """Chief, at the end of a run: `training_curves.png` from metrics.jsonl (training/plots.py). A figure
    that cannot be drawn (no matplotlib, nothing logged) is a warning: the run itself succeeded."""
    try:
        path = plots.training_curves(model_dir)
    except (plots.PlotsUnavailable, OSError, ValueError) as e:
        logging.warning("no training curves: %s", e)
        return
    logging.info("training curves: %s", path)


def _stop_requested(
    dist: distributed.Distributed, stop: preemption.StopRequest, *, step: int, saved: bool, votes: tf.Tensor
) -> bool:
    """Whether to stop after `step`: this process's flag, or under Horovod any rank's, read every
    `preemption.HOROVOD_CHECK_EVERY` steps and at checkpoint steps from `votes`, the step's sum of the flags
    (summed in the step's own all-reduce of its scalars: no collective of its own)."""
    if dist.size == 1:
        return stop.requested
    if not saved and step % preemption.HOROVOD_CHECK_EVERY:
        return False
    return float(votes) > 0  # Horovod: the same sum on every rank


def _raise_if_non_finite(run: _Run) -> None:
    """Stops the run if a step since the last look had a NaN/Inf loss (it and later ones were discarded)."""
    try:
        run.step.raise_if_non_finite()
    except train_step.NonFiniteLossError as e:
        raise _non_finite(run, e) from None


def _non_finite(run: _Run, error: train_step.NonFiniteLossError) -> Exception:
    """The error for a NaN/Inf loss: the labels' fault when the bad step's batch held non-finite labels."""
    config = run.config
    latest = checkpoints.latest_step(config.runtime.model_dir)
    last_good = (
        f"The last good checkpoint is {config.runtime.model_dir}/ckpt-{latest}."
        if latest is not None
        else "The last good checkpoint is none (no step saved)."
    )
    bad = int(run.step.bad_labels.numpy())
    if bad:
        return train_step.NonFiniteLossError(
            f"the labels of the batch of step {int(run.step.first_bad_step.numpy())} on rank {run.dist.rank} "
            f"hold {bad} NaN/Inf "
            f"values: the data is broken, not the learning rate; check the label confidences of the records "
            f"in {config.data.data_dir or config.data.tfds_name}. {last_good}"
        )
    return train_step.NonFiniteLossError(f"{error} {last_good}")


def _train(
    config: TrainConfig,
    dist: distributed.Distributed,
    stop: preemption.StopRequest,
    profiler: summaries_lib.StepProfiler | None,
    record: run_dir.ConfigRecord | None,
) -> dict[str, Any]:
    run = _build(config, dist)
    run.data_threads = host_resources.plan_threads(
        host_resources.cpu_count(), dist.local_size, data_threads=config.runtime.data_threads
    ).data
    step = _initialise(run)
    if dist.is_chief:
        run.manager = tf.train.CheckpointManager(
            run.checkpoint,
            config.runtime.model_dir,
            max_to_keep=config.schedule.keep_checkpoints,
            checkpoint_name="ckpt",
        )
    _start(run, record)
    result: dict[str, Any] = {"step": step}
    if step >= config.schedule.train_steps:
        logging.info(
            "training already finished at step %d (train_steps %d)", step, config.schedule.train_steps
        )
        if run.eval_source is not None:
            result["eval"] = evaluate(run, step)
        return result
    logging.info(
        "training %s from step %d to %d on %d rank(s), global batch %d",
        config.recipe,
        step,
        config.schedule.train_steps,
        dist.size,
        config.global_batch,
    )
    if run.summaries is not None:
        run.summaries.hparams(config)
    iterator = None
    last_log_time, last_log_step = time.perf_counter(), step
    while step < config.schedule.train_steps:
        phase = config.phase_at(step)
        phase_start = config.schedule.image_sizes[phase][0]
        phase_end = (
            config.schedule.image_sizes[phase + 1][0]
            if phase + 1 < len(config.schedule.image_sizes)
            else config.schedule.train_steps
        )
        if step > phase_start and not run.restore_input:  # resuming inside a phase without its position
            run.input_seed = config.runtime.seed + step
            logging.warning(
                "rank %d: the input restarts at step %d with a new permutation (seed %d): %s",
                dist.rank,
                step,
                run.input_seed,
                run.input_note,
            )
        consumed = 0  # elements of this phase's stream taken by this rank: its input position
        if step > phase_start and run.restore_input:  # resuming inside this phase: continue its input exactly
            consumed = checkpoints.restore_input_position(
                model_dir=config.runtime.model_dir, rank=dist.rank, step=step, phase=phase
            )
        iterator = iter(_phase_dataset(run, phase, consumed))
        run.restore_input = True  # a later phase starts afresh
        images_shown = False  # a few of this phase's inputs go to TensorBoard at its first logged step
        logging.info(
            "phase %d: image size %d, steps %d-%d",
            phase,
            config.schedule.image_sizes[phase][1],
            step,
            phase_end,
        )
        while step < min(phase_end, config.schedule.train_steps):
            if profiler is not None:
                profiler.before(step + 1)
            images, labels = input_pipeline.next_batch(iterator, run.train_source)  # bad record: one line
            consumed += config.schedule.per_rank_batch
            # Dispatched: no per-step host wait. The stop flag rides in the step's own all-reduce.
            logs = run.step(images, labels, check_finite=False, stop_requested=stop.requested)
            stop_votes = logs.pop("stop_votes")
            step += 1
            # A NaN/Inf step (and every one after it) was discarded on the device; look before anything is
            # logged, saved or evaluated, so the run stops within log_every steps with nothing written.
            every = (config.schedule.log_every, config.schedule.checkpoint_every, config.schedule.eval_every)
            if step == config.schedule.train_steps or any(n and step % n == 0 for n in every):
                _raise_if_non_finite(run)
            if step % config.schedule.log_every == 0 or step == config.schedule.train_steps:
                now = time.perf_counter()
                rate = config.global_batch * (step - last_log_step) / max(now - last_log_time, 1e-9)
                values = {k: float(v) for k, v in logs.items()}
                values["images_per_s"] = rate
                result.update(values, step=step)
                if dist.is_chief:
                    logging.info(
                        "step %d/%d loss %.4f lr %.6g %.1f images/s eta %s",
                        step,
                        config.schedule.train_steps,
                        values["loss"],
                        values["lr"],
                        rate,
                        _format_eta((config.schedule.train_steps - step) * config.global_batch / rate),
                    )
                    _write(run, "train", step, values)
                    if not images_shown:
                        run.summaries.input_images(
                            images, phase=phase, size=config.schedule.image_sizes[phase][1], step=step
                        )
                        images_shown = True
                last_log_time, last_log_step = now, step
            paused = time.perf_counter()  # saving and evaluating do not count against images/s
            if profiler is not None:
                profiler.after(step)
            saved = step % config.schedule.checkpoint_every == 0 or step == config.schedule.train_steps
            if saved:
                _save(run, step, phase=phase, elements=consumed)
            if _stop_requested(dist, stop, step=step, saved=saved, votes=stop_votes):
                if not saved:
                    _raise_if_non_finite(run)  # never save the state of a discarded step as step `step`
                    _save(run, step, phase=phase, elements=consumed)
                raise preemption.Preempted(
                    signal_name=stop.signal_name or "a signal on another rank",
                    step=step,
                    model_dir=config.runtime.model_dir,
                )
            if run.eval_source is not None and (
                step % config.schedule.eval_every == 0 or step == config.schedule.train_steps
            ):
                result["eval"] = evaluate(run, step)
            last_log_time += time.perf_counter() - paused
    return result
