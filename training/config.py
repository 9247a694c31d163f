"""Run configuration: frozen dataclasses, resolved for a number of ranks, written as JSON before step 0.

A run's `TrainConfig` has five parts, as config.json and `--dry_run` show them: `model` (the network and its
initial weights), `data` (the records and the augmentation), `schedule` (what happens at which step),
`loss` (the adaptive sigmoid loss's weighting and the weight decay) and `runtime` (numerics, threads, the
all-reduce, the seed, the run directory). The named published runs live in `training/recipes.py`; variants
are made with `replace`, which takes any field by its name.
"""

from __future__ import annotations

import dataclasses
import json
import types
from collections.abc import Mapping
from typing import Any, Final

from data.pixels import preprocessing
from training import schedules

TASKS = ("multilabel", "softmax")
CLASS_STATUSES = ("global", "local")
PRECISIONS = ("bf16", "fp16", "fp32")
# The smallest training image side: the ResNet's total stride (stem 2, max-pool 2, three strided stages).
# Below it the last stage sees little but padding.
MIN_IMAGE_SIZE = 32


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The network and where its weights start."""

    depth: int = 101
    base_width: int = 64
    num_classes: int = 11166
    bn_momentum: float = 0.997  # the reference's BatchNorm decay
    frozen_stages: int = -1  # FixBlock2 = 2: stem and stages 0-1 frozen (their BN statistics still update)
    init_checkpoint: str = ""  # ours or a released TF1 checkpoint; the head is skipped when skip_head
    skip_head: bool = False
    # With a released TF1 init_checkpoint: also take over its Momentum slots and global_step (continue it).
    init_optimizer_state: bool = False


@dataclasses.dataclass(frozen=True)
class DataConfig:
    """Where the records come from (our TFRecords in `data_dir`, or tensorflow-datasets) and how each image
    is augmented."""

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
class ScheduleConfig:
    """What happens at which step: the learning rate, the batch, the image-size switches, the optimizer's
    momentum, and the log, checkpoint and evaluation intervals. Step counts are in steps at
    `reference_global_batch` until `resolve` (which scales every one of them)."""

    learning_rate: schedules.Schedule
    train_steps: int
    image_sizes: tuple[tuple[int, int], ...] = ((0, 224),)  # (first step, size): the size switch
    reference_global_batch: int = 4096
    per_rank_batch: int = 32
    num_ranks: int = 1
    momentum: float = 0.9
    log_every: int = 100
    checkpoint_every: int = 4400
    keep_checkpoints: int = 5
    eval_every: int = 0  # 0 = no periodic validation
    eval_steps: int = 0  # 0 = the whole validation set
    topk: tuple[int, ...] = (5, 10)

    @property
    def global_batch(self) -> int:
        return self.per_rank_batch * self.num_ranks


@dataclasses.dataclass(frozen=True)
class LossConfig:
    """What is minimised besides the task's cross-entropy: the adaptive sigmoid loss's weighting (multilabel)
    and the weight decay (docs/REFERENCE.md section 3)."""

    mask_thres: float = 0.7
    neg_select: float = 0.1
    pos_weight: float = 12.0
    # A class's status in a step (positive or not, loss step 1): "global" on the global batch (every rank the
    # same counters), "local" on each rank's own batch with per-rank counters, as the release's model_fn
    # would run once per GPU (docs/REFERENCE.md sections 3-4; README "Recipes").
    class_status: str = "global"
    weight_decay: float = 1e-4
    bn_weight_decay_scale: float = 0.0  # fine-tuning: 0.1 x weight_decay on BN gamma/beta


@dataclasses.dataclass(frozen=True)
class RuntimeConfig:
    """How the run executes, none of it changing what is learned beyond rounding (float rounding, and the 8-bit
    images of `image_transport`): numerics, compiling, threads, micro-batches, the all-reduce, the seed and
    the run directory."""

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
    model_dir: str = "runs/default"


GROUPS = ("model", "data", "schedule", "loss", "runtime")
_GROUP_TYPES = (ModelConfig, DataConfig, ScheduleConfig, LossConfig, RuntimeConfig)
# Each group's field names, which are unique across the groups: `replace` finds a field's group by its name.
GROUP_OF: Final[Mapping[str, str]] = types.MappingProxyType(
    {f.name: group for group, cls in zip(GROUPS, _GROUP_TYPES, strict=True) for f in dataclasses.fields(cls)}
)


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """Everything a run needs: what it is (recipe, task, provenance) and its five parts."""

    recipe: str
    task: str  # "multilabel" (adaptive sigmoid loss) or "softmax" (single-label cross-entropy)
    provenance: str
    schedule: ScheduleConfig
    model: ModelConfig = ModelConfig()
    data: DataConfig = DataConfig()
    loss: LossConfig = LossConfig()
    runtime: RuntimeConfig = RuntimeConfig()

    @property
    def global_batch(self) -> int:
        return self.schedule.global_batch

    def image_size_at(self, step: int) -> int:
        """The training image size at `step` (the last switch at or before it)."""
        return [size for start, size in self.schedule.image_sizes if start <= step][-1]

    def phase_at(self, step: int) -> int:
        """Index of the image-size phase that contains `step`."""
        return sum(start <= step for start, _ in self.schedule.image_sizes) - 1

    def to_json(self) -> str:
        return json.dumps(to_dict(self), indent=2, sort_keys=True)


def replace(config: TrainConfig, **changes: Any) -> TrainConfig:
    """`dataclasses.replace` by field name across the parts: `replace(c, precision="bf16", train_steps=5)`.

    Each name is a field of TrainConfig (a whole part included) or of one of its parts.

    Raises:
      TypeError: a name that is neither, or a part given as something else.
    """
    top: dict[str, Any] = {}
    parts: dict[str, dict[str, Any]] = {}
    for name, value in changes.items():
        if name in _TOP_FIELDS:
            top[name] = value
        elif name in GROUP_OF:
            parts.setdefault(GROUP_OF[name], {})[name] = value
        else:
            raise TypeError(f"TrainConfig has no field {name!r}")
    for group, cls in zip(GROUPS, _GROUP_TYPES, strict=True):
        if group in top and not isinstance(top[group], cls):
            raise TypeError(f"{group} must be a {cls.__name__}, got {type(top[group]).__name__}")
    for group, fields in parts.items():
        top[group] = dataclasses.replace(top.get(group, getattr(config, group)), **fields)
    return dataclasses.replace(config, **top)


_TOP_FIELDS = frozenset(f.name for f in dataclasses.fields(TrainConfig))


def to_dict(config: TrainConfig) -> dict[str, Any]:
    """The config as config.json stores it: one object per part, the learning-rate schedule with its kind."""
    d = dataclasses.asdict(config)
    d["schedule"]["learning_rate"] = {
        "kind": type(config.schedule.learning_rate).__name__,
        **d["schedule"]["learning_rate"],
    }
    d["schedule"]["global_batch"] = config.global_batch
    return d


# Fields added after runs were saved, with the value such runs ran with (not today's default).
_VALUES_BEFORE_THE_FIELD: Final[Mapping[str, Mapping[str, Any]]] = types.MappingProxyType(
    {"runtime": {"image_transport": "float32"}}
)


def upgrade_dict(saved: dict[str, Any]) -> dict[str, Any]:
    """A saved config.json in today's layout: one written before the fields were grouped (every field but
    model and data at the top) regrouped, and fields it predates set to what that run used."""
    if "runtime" not in saved and "train_steps" in saved:
        grouped: dict[str, Any] = {group: {} for group in GROUPS}
        for key, value in saved.items():
            if key in ("model", "data") and isinstance(value, dict):
                grouped[key].update(value)
            elif key == "schedule":
                grouped["schedule"]["learning_rate"] = value
            elif key == "global_batch":
                grouped["schedule"]["global_batch"] = value
            elif key in GROUP_OF:
                grouped[GROUP_OF[key]][key] = value
            else:
                grouped[key] = value
        saved = grouped
    if not isinstance(saved.get("runtime"), dict):
        return saved
    for group, values in _VALUES_BEFORE_THE_FIELD.items():
        saved = {**saved, group: {**values, **saved[group]}}
    return saved


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
    s = config.schedule
    global_batch = s.per_rank_batch * num_ranks
    lr_factor = global_batch / s.reference_global_batch
    step_factor = s.reference_global_batch / global_batch

    def steps(n: int) -> int:
        return n if step_factor == 1.0 else max(1, round(n * step_factor))

    schedule = dataclasses.replace(
        s,
        num_ranks=num_ranks,
        learning_rate=schedules.scale(s.learning_rate, lr_factor=lr_factor, step_factor=step_factor),
        train_steps=steps(s.train_steps),
        image_sizes=tuple((0 if start == 0 else steps(start), size) for start, size in s.image_sizes),
        log_every=steps(s.log_every),
        checkpoint_every=steps(s.checkpoint_every),
        eval_every=steps(s.eval_every) if s.eval_every else 0,
        reference_global_batch=global_batch,
    )
    return dataclasses.replace(config, schedule=schedule)


def validate(config: TrainConfig) -> None:
    """Raises ValueError naming the field for a configuration that cannot run."""
    problems = []
    model, schedule, loss, runtime = config.model, config.schedule, config.loss, config.runtime
    if config.task not in TASKS:
        problems.append(f"task must be one of {TASKS}, got {config.task!r}")
    if runtime.precision not in PRECISIONS:
        problems.append(f"precision must be one of {PRECISIONS}, got {runtime.precision!r}")
    if runtime.image_transport not in preprocessing.IMAGE_TRANSPORTS:
        problems.append(
            f"image_transport must be one of {preprocessing.IMAGE_TRANSPORTS}, got {runtime.image_transport!r}"
        )
    if schedule.per_rank_batch % runtime.accum_steps:
        problems.append(
            f"per_rank_batch {schedule.per_rank_batch} is not a multiple of accum_steps {runtime.accum_steps}"
        )
    if schedule.image_sizes[0][0] != 0:
        problems.append(f"the first image size must start at step 0, got {schedule.image_sizes}")
    if any(size < MIN_IMAGE_SIZE for _, size in schedule.image_sizes):
        problems.append(
            f"image sizes must be >= {MIN_IMAGE_SIZE} (the ResNet's total stride), got {schedule.image_sizes}"
        )
    if not 0.0 <= loss.neg_select <= 1.0 or not 0.0 < loss.mask_thres <= 1.0:
        problems.append("neg_select must be in [0, 1] and mask_thres in (0, 1]")
    if loss.class_status not in CLASS_STATUSES:
        problems.append(f"class_status must be one of {CLASS_STATUSES}, got {loss.class_status!r}")
    elif loss.class_status == "local" and runtime.accum_steps > 1:
        problems.append(
            "class_status=local needs accum_steps=1: the status would be that of the rank's whole batch, not of "
            "each micro-batch (use more ranks, or class_status=global)"
        )
    if runtime.allreduce_dtype not in ("fp32", "fp16"):
        problems.append(
            f"allreduce_dtype must be fp32 or fp16 (Horovod has no bf16), got {runtime.allreduce_dtype!r}"
        )
    if not 0 <= runtime.backward_segments <= 5 or (runtime.backward_segments > 1 and runtime.accum_steps > 1):
        problems.append(
            f"backward_segments must be in [0, 5] and <= 1 with accum_steps > 1, got {runtime.backward_segments}"
        )
    if model.init_optimizer_state and not model.init_checkpoint:
        problems.append("init_optimizer_state needs an init_checkpoint (a released TF1 checkpoint)")
    for name in ("intra_op_threads", "inter_op_threads", "data_threads"):
        if getattr(runtime, name) < 0:
            problems.append(f"{name} must be >= 0, got {getattr(runtime, name)}")
    if not -1 <= model.frozen_stages <= 4:
        problems.append(f"frozen_stages must be in [-1, 4], got {model.frozen_stages}")
    for name in ("train_steps", "checkpoint_every", "log_every", "keep_checkpoints", "per_rank_batch"):
        if getattr(schedule, name) < 1:
            problems.append(f"{name} must be >= 1, got {getattr(schedule, name)}")
    if problems:
        raise ValueError("invalid configuration: " + "; ".join(problems))
