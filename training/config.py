"""Run configuration: frozen dataclasses, resolved for a number of ranks, written as JSON before step 0.

The named published runs live in `training/recipes.py`; variants are made with `dataclasses.replace`.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from training import schedules

TASKS = ("multilabel", "softmax")
CLASS_STATUSES = ("global", "local")
PRECISIONS = ("bf16", "fp16", "fp32")
# The smallest training image side: the ResNet's total stride (stem 2, max-pool 2, three strided stages).
# Below it the last stage sees little but padding.
MIN_IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    depth: int = 101
    base_width: int = 64
    num_classes: int = 11166
    bn_momentum: float = 0.997  # the reference's BatchNorm decay


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the records come from: our TFRecords (`data_dir`) or tensorflow-datasets (`tfds_name`)."""

    data_dir: str = ""
    train_prefix: str = "train"
    eval_prefix: str = "val"
    tfds_name: str = ""  # e.g. "imagenet2012": read through tensorflow-datasets instead of data_dir
    tfds_data_dir: str = ""
    tfds_manual_dir: str = ""
    shuffle_buffer: int = 1024  # per rank: the window of `input_pipeline.window_shuffle` (not saved)
    area_cover: float = 0.7  # lower bound of the crop's area fraction
    object_cover: float = 0.7  # min_object_covered of the sampled crop
    distort: bool = True  # the reference's rotation and colour distortion (False: crop and flip only)
    eval_transform: str = (
        "reference"  # data/pixels/preprocessing.py TRANSFORMS: reference (80 % centre), full, demo
    )


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs. Step counts are in steps at `reference_global_batch` until `resolve`."""

    recipe: str
    task: str  # "multilabel" (adaptive sigmoid loss) or "softmax" (single-label cross-entropy)
    provenance: str
    model: ModelConfig
    data: DataConfig
    schedule: schedules.Schedule
    train_steps: int
    image_sizes: tuple[tuple[int, int], ...] = ((0, 224),)  # (first step, size): the size switch
    reference_global_batch: int = 4096
    per_rank_batch: int = 32
    num_ranks: int = 1
    momentum: float = 0.9
    weight_decay: float = 1e-4
    bn_weight_decay_scale: float = 0.0  # fine-tuning: 0.1 x weight_decay on BN gamma/beta
    mask_thres: float = 0.7
    neg_select: float = 0.1
    pos_weight: float = 12.0
    # A class's status in a step (positive or not, loss step 1): "global" on the global batch (every rank the
    # same counters), "local" on each rank's own batch with per-rank counters, as the release's model_fn
    # would run once per GPU (docs/REFERENCE.md sections 3-4; README "Recipes").
    class_status: str = "global"
    frozen_stages: int = -1  # FixBlock2 = 2: stem and stages 0-1 frozen (their BN statistics still update)
    init_checkpoint: str = ""  # ours or a released TF1 checkpoint; the head is skipped when skip_head
    skip_head: bool = False
    # With a released TF1 init_checkpoint: also take over its Momentum slots and global_step (continue it).
    init_optimizer_state: bool = False
    precision: str = "fp32"  # fp32 | bf16 | fp16 (fp16 with dynamic loss scaling)
    image_transport: str = "uint8"  # uint8 (to [-1, 1] on the device) | float32 (the release's numbers)
    xla: bool = False
    deterministic: bool = False  # TF op determinism: bit-exact reruns on CPU (slower on GPU)
    # TF's intra-op thread pool (0: this rank's share of its host's cores, training/host_resources.py). 1
    # runs the input pipeline's XLA augmentation on its own thread instead of handing it to the pool
    # (docs/BENCHMARKS.md); it also gives the train step's CPU kernels one thread, so it suits GPU hosts,
    # not CPU training.
    intra_op_threads: int = 0
    # TF's inter-op pool and the training input's tf.data pool (0: this rank's share of its host's cores).
    inter_op_threads: int = 0
    data_threads: int = 0
    accum_steps: int = 1  # micro-batches per step: k ranks' worth of batches on one (training/train_step.py)
    # Backward in K segments, each all-reduced while the earlier ones' backward runs (0: 4 on several ranks
    # with accum_steps 1, else 1); and the all-reduce's wire dtype, fp32 or fp16 (no bf16 in Horovod).
    backward_segments: int = 0
    allreduce_dtype: str = "fp32"
    seed: int = 0
    log_every: int = 100
    checkpoint_every: int = 4400
    keep_checkpoints: int = 5
    eval_every: int = 0  # 0 = no periodic validation
    eval_steps: int = 0  # 0 = the whole validation set
    topk: tuple[int, ...] = (5, 10)
    model_dir: str = "runs/default"

    @property
    def global_batch(self) -> int:
        return self.per_rank_batch * self.num_ranks

    def image_size_at(self, step: int) -> int:
        """The training image size at `step` (the last switch at or before it)."""
        return [size for start, size in self.image_sizes if start <= step][-1]

    def phase_at(self, step: int) -> int:
        """Index of the image-size phase that contains `step`."""
        return sum(start <= step for start, _ in self.image_sizes) - 1

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=True)


def to_dict(config: TrainConfig) -> dict[str, Any]:
    d = dataclasses.asdict(config)
    d["schedule"] = {"kind": type(config.schedule).__name__, **d["schedule"]}
    d["global_batch"] = config.global_batch
    return d


def resolve(config: TrainConfig, *, num_ranks: int) -> TrainConfig:
    """The recipe as it runs on `num_ranks` ranks of `per_rank_batch` images.

    A recipe is defined at its reference global batch. On another global batch the learning rates scale
    linearly (lr x global / reference) and every step count scales inversely, so the run covers the same
    number of epochs with the same schedule shape: train_steps, the schedule's boundaries, the image-size
    switches, and the log, snapshot and evaluation intervals (logging, saving and evaluating after as many
    images as the recipe does; no periodic evaluation stays none). At the reference global batch nothing
    changes.
    """
    if num_ranks < 1:
        raise ValueError(f"num_ranks must be >= 1, got {num_ranks}")
    global_batch = config.per_rank_batch * num_ranks
    lr_factor = global_batch / config.reference_global_batch
    step_factor = config.reference_global_batch / global_batch

    def steps(n: int) -> int:
        return n if step_factor == 1.0 else max(1, round(n * step_factor))

    return dataclasses.replace(
        config,
        num_ranks=num_ranks,
        schedule=schedules.scale(config.schedule, lr_factor=lr_factor, step_factor=step_factor),
        train_steps=steps(config.train_steps),
        image_sizes=tuple((0 if start == 0 else steps(start), size) for start, size in config.image_sizes),
        log_every=steps(config.log_every),
        checkpoint_every=steps(config.checkpoint_every),
        eval_every=steps(config.eval_every) if config.eval_every else 0,
        reference_global_batch=global_batch,
    )


def validate(config: TrainConfig) -> None:
    """Raises ValueError naming the field for a configuration that cannot run."""
    problems = []
    if config.task not in TASKS:
        problems.append(f"task must be one of {TASKS}, got {config.task!r}")
    if config.precision not in PRECISIONS:
        problems.append(f"precision must be one of {PRECISIONS}, got {config.precision!r}")
    if config.per_rank_batch % config.accum_steps:
        problems.append(
            f"per_rank_batch {config.per_rank_batch} is not a multiple of accum_steps {config.accum_steps}"
        )
    if config.image_sizes[0][0] != 0:
        problems.append(f"the first image size must start at step 0, got {config.image_sizes}")
    if any(size < MIN_IMAGE_SIZE for _, size in config.image_sizes):
        problems.append(
            f"image sizes must be >= {MIN_IMAGE_SIZE} (the ResNet's total stride), got {config.image_sizes}"
        )
    if not 0.0 <= config.neg_select <= 1.0 or not 0.0 < config.mask_thres <= 1.0:
        problems.append("neg_select must be in [0, 1] and mask_thres in (0, 1]")
    if config.class_status not in CLASS_STATUSES:
        problems.append(f"class_status must be one of {CLASS_STATUSES}, got {config.class_status!r}")
    elif config.class_status == "local" and config.accum_steps > 1:
        problems.append(
            "class_status=local needs accum_steps=1: the status would be that of the rank's whole batch, not of "
            "each micro-batch (use more ranks, or class_status=global)"
        )
    if config.allreduce_dtype not in ("fp32", "fp16"):
        problems.append(
            f"allreduce_dtype must be fp32 or fp16 (Horovod has no bf16), got {config.allreduce_dtype!r}"
        )
    if not 0 <= config.backward_segments <= 5 or (config.backward_segments > 1 and config.accum_steps > 1):
        problems.append(
            f"backward_segments must be in [0, 5] and <= 1 with accum_steps > 1, got {config.backward_segments}"
        )
    if config.init_optimizer_state and not config.init_checkpoint:
        problems.append("init_optimizer_state needs an init_checkpoint (a released TF1 checkpoint)")
    for name in ("intra_op_threads", "inter_op_threads", "data_threads"):
        if getattr(config, name) < 0:
            problems.append(f"{name} must be >= 0, got {getattr(config, name)}")
    if not -1 <= config.frozen_stages <= 4:
        problems.append(f"frozen_stages must be in [-1, 4], got {config.frozen_stages}")
    for name in ("train_steps", "checkpoint_every", "log_every", "keep_checkpoints", "per_rank_batch"):
        if getattr(config, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(config, name)}")
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))
