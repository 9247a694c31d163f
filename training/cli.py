"""The command line shared by train.py and finetune.py: flag definitions and flags -> resolved config.

Nothing here runs at import: `define_flags` is called by an entry script before `absl.app.run`, and
`resolve_config` reads an explicit `FlagValues`. Flags that override the recipe default to None (shown as
"default: the recipe's"), so only what the user types changes the published run.

Step counts: the recipe's schedule, steps, size switches and its log, checkpoint and evaluation intervals are
defined at its reference global batch and scaled by `config.resolve` (linear LR scaling, step counts kept in
epochs: on twice the global batch a run has half the steps, and logs, saves and evaluates every half as many
steps, after the same number of images). The step flags below (--train_steps, --log_every,
--checkpoint_every, --eval_every, --image_sizes switches) are in steps AS RUN, applied after that scaling.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Sequence
from typing import Any

import keras
from absl import app, flags

from data import command_line, fileio
from data.pixels import image_files, images, preprocessing
from models import architecture, input_contract, pretrained
from training import config as config_lib
from training import recipes

_POSITIVE = {"lower_bound": 1}


class _Definer:
    """`flags.DEFINE_*` into one FlagValues (a test's own, or the global FLAGS of an entry script)."""

    def __init__(self, flag_values: flags.FlagValues):
        self._flag_values = flag_values

    def __getattr__(self, name: str):
        define = getattr(flags, name)
        return lambda *args, **kwargs: define(*args, flag_values=self._flag_values, **kwargs)


def define_flags(
    *,
    default_recipe: str,
    recipe_names: list[str],
    finetune: bool,
    flag_values: flags.FlagValues = flags.FLAGS,
) -> None:
    """Defines the flags of train.py (finetune=False) or finetune.py (finetune=True).

    They belong to this module for absl: the entry script calls `flags.adopt_module_key_flags(cli)` so that
    its `--help` lists them (absl's `--help` shows only the main module's key flags).
    """
    f = _Definer(flag_values)
    if finetune:
        f.DEFINE_enum(
            "ckpt",
            default_recipe,
            recipe_names,
            "The fine-tuning recipe (training/recipes.py, with provenance).",
        )
    else:
        f.DEFINE_enum(
            "recipe", default_recipe, recipe_names, "The pre-training recipe (training/recipes.py)."
        )
    f.DEFINE_string("model_dir", None, "Run directory: config.json, checkpoints, TensorBoard, metrics.jsonl.")
    f.DEFINE_string(
        "data_dir",
        None,
        "Folder of our TFRecords and their manifests (data/tfrecord.py), or a folder written by the original "
        "release: {data_dir}/train/*.tfrecords and {data_dir}/val/*.tfrecords (label format and class count "
        "read from the records).",
    )
    f.DEFINE_string(
        "train_prefix",
        None,
        "Prefix of the training split's files, or its sub-folder in the release's layout (default: the "
        "recipe's, train).",
    )
    f.DEFINE_string(
        "eval_prefix",
        None,
        "Prefix of the validation split's files, or its sub-folder in the release's layout (default: the "
        "recipe's, val).",
    )
    f.DEFINE_string(
        "tfds_name",
        None,
        "Read through tensorflow-datasets instead of --data_dir: imagenet2012 (single-label, finetune.py) or "
        "ml_images/full, ml_images/tiny (multi-label, the builder in data/ml_images).",
    )
    f.DEFINE_string("tfds_data_dir", None, "tensorflow-datasets data_dir (prepared datasets).")
    f.DEFINE_string(
        "tfds_manual_dir",
        None,
        "Folder with the manually downloaded files (ImageNet archives; ML-Images lists and images/).",
    )
    if finetune:
        f.DEFINE_string(
            "init_checkpoint",
            None,
            "Checkpoint to start from: ours (a run directory or prefix) or a released TF1 checkpoint "
            "(ckpt-resnet101-mlimages). Default: the recipe's (none for ckpt1).",
        )
        f.DEFINE_bool(
            "skip_head", None, "Do not load the logits layer from --init_checkpoint (default: recipe)."
        )
        f.DEFINE_integer(
            "frozen_stages", None, "Freeze the stem and stages below this (FixBlock2 = 2; -1 none)."
        )
    else:
        f.DEFINE_float("mask_thres", None, "A label >= this makes its class positive in a batch (0.7).")
        f.DEFINE_float("neg_select", None, "Probability that a negative class counts in a step (0.1).")
        f.DEFINE_enum(
            "class_status",
            None,
            list(config_lib.CLASS_STATUSES),
            "Where a class's batch status (positive or not) is decided: global = on the global batch, every "
            "rank with the same loss counters; local = on each rank's own batch with its own counters, as "
            "the release's model_fn run once per GPU would (README, Recipes). Default: the recipe's, global.",
        )
        f.DEFINE_string(
            "init_checkpoint",
            None,
            "Start from these weights (ours or TF1); the run's own "
            "checkpoints in --model_dir take precedence (resume).",
        )
    f.DEFINE_bool(
        "init_optimizer_state",
        None,
        "With a released TF1 --init_checkpoint: also take over its Momentum slots (of every trained variable) "
        "and its global_step, to continue that run; its loss counters are taken in any case. Default: off.",
    )
    f.DEFINE_integer("depth", None, "ResNet depth: 50, 101, 152 (14: test-only). Default: the recipe's.")
    f.DEFINE_integer(
        "base_width", None, "Stem width (64 in the reference; small values for tests).", **_POSITIVE
    )
    f.DEFINE_integer(
        "num_classes", None, "Head size; must match the data (default: the recipe's).", **_POSITIVE
    )
    f.DEFINE_integer(
        "per_rank_batch",
        None,
        "Images per rank per step (all micro-batches); the global batch is this x ranks (default: recipe's).",
        **_POSITIVE,
    )
    f.DEFINE_integer(
        "accum_steps",
        None,
        "Micro-batches per step (gradient accumulation): e.g. 8 GPUs x --per_rank_batch=512 "
        "--accum_steps=16 run the reference global batch 4096 with micro-batches of 32.",
        **_POSITIVE,
    )
    f.DEFINE_integer(
        "backward_segments",
        None,
        "Differentiate the model in K segments (head, stage 3, stage 2, stem..stage 1 for 4; at most 5), each "
        "one's gradients all-reduced while the earlier ones' backward runs; 1 = one all-reduce after the "
        "backward; needs --accum_steps=1. Default 0: 4 on several ranks with accum_steps 1, else 1.",
        lower_bound=0,
        upper_bound=5,
    )
    f.DEFINE_enum(
        "allreduce_dtype",
        None,
        ["fp32", "fp16"],
        "Dtype of the gradients on the wire: fp16 = Horovod's fp16 compression, half the bytes, pre-scaled "
        "by 1/ranks so the sum cannot overflow. Horovod has no bf16 all-reduce. Default fp32.",
    )
    f.DEFINE_bool(
        "scale_schedule",
        True,
        "Scale the recipe to this global batch (lr x global/reference, step counts kept in epochs); "
        "--noscale_schedule runs the recipe's numbers at any batch.",
    )
    f.DEFINE_integer(
        "train_steps", None, "Steps to run (as run, after scaling; default: the recipe's).", **_POSITIVE
    )
    f.DEFINE_list(
        "image_sizes",
        None,
        "Training image sizes as SIZE or SIZE@STEP (steps as run), e.g. 224,299@300000: 224 from step 0, "
        "299 from step 300000. Default: the recipe's.",
    )
    f.DEFINE_enum("precision", None, sorted(config_lib.PRECISIONS), "fp32, bf16 or fp16 (loss scaling).")
    f.DEFINE_enum(
        "image_transport",
        None,
        list(preprocessing.IMAGE_TRANSPORTS),
        "How training images travel from the input pipeline to the device. uint8 (default): 4x fewer bytes "
        "than float32; the augmented [0, 1] image is rounded to 8 bits (half to even), which "
        "moves each value by <= 0.5/255 (<= 1/255 in the model's [-1, 1] range), and the step maps it to "
        "[-1, 1] on the device. float32: the release's float numbers exactly. Evaluation stays float32.",
    )
    f.DEFINE_bool("xla", None, "XLA-compile the forward/backward (default: the recipe's, off).")
    f.DEFINE_bool(
        "deterministic",
        None,
        "Deterministic TensorFlow ops: a rerun, or a resume after kill -9, reproduces the run bit for bit "
        "on CPU (costs speed on GPU). Default: the recipe's, off.",
    )
    f.DEFINE_integer(
        "intra_op_threads",
        None,
        "TensorFlow's intra-op thread pool (0: the host's cores divided by its ranks, as the inter-op and "
        "tf.data pools). 1 keeps the input pipeline's XLA augmentation on its own thread (less CPU per "
        "image, docs/BENCHMARKS.md section 3) but gives the step's CPU kernels one thread: for GPU hosts, "
        "not CPU training. Default: the recipe's, 0.",
        lower_bound=0,
    )
    f.DEFINE_integer(
        "inter_op_threads",
        None,
        "TensorFlow's inter-op thread pool (0: the host's cores divided by its ranks). Default: the "
        "recipe's, 0.",
        lower_bound=0,
    )
    f.DEFINE_integer(
        "data_threads",
        None,
        "The training input's tf.data thread pool (0: the host's cores divided by its ranks, so that the "
        "ranks of a host do not each start one thread per core). Default: the recipe's, 0.",
        lower_bound=0,
    )
    f.DEFINE_integer("seed", None, "Seed of the initialisation, input order and augmentation.")
    f.DEFINE_integer(
        "shuffle_buffer",
        None,
        "Per-rank shuffle window: records are mixed in windows of this many, each in its own seeded "
        "order (an order of the position alone: the saved input position stays a few KB).",
    )
    f.DEFINE_integer(
        "log_every",
        None,
        "Log loss, lr, images/s and ETA every N steps (as run). Default: the recipe's, scaled like "
        "--checkpoint_every and --eval_every.",
        **_POSITIVE,
    )
    f.DEFINE_integer(
        "checkpoint_every",
        None,
        "Save a checkpoint every N steps (as run). Default: the recipe's, defined at its reference global "
        "batch and scaled to this run's (2 ranks of a 1-rank recipe: every half as many steps, the same "
        "images), as are --log_every and --eval_every.",
        **_POSITIVE,
    )
    f.DEFINE_integer("keep_checkpoints", None, "Keep the newest K checkpoints.", **_POSITIVE)
    f.DEFINE_integer(
        "eval_every",
        None,
        "Evaluate the validation split every N steps (as run; 0: never). Default: the recipe's, scaled like "
        "--checkpoint_every and --log_every.",
        lower_bound=0,
    )
    f.DEFINE_integer(
        "eval_steps", None, "Batches per rank per evaluation (0: the whole split).", lower_bound=0
    )
    f.DEFINE_list("topk", None, "k values of the multi-label validation metrics (default 5,10).")
    f.DEFINE_bool(
        "dry_run",
        False,
        "Print the resolved config as one JSON object, a key per line, and exit (reads no data).",
    )
    f.DEFINE_list(
        "lr_probe_steps", [], "With --dry_run: add the learning rate (and image size) at these steps."
    )
    f.DEFINE_integer(
        "simulate_workers",
        None,
        "With --dry_run: resolve the config as on this many ranks (the schedule, step counts and global batch "
        "as a run on that many ranks would use; without it, as on one process).",
        **_POSITIVE,
    )
    f.DEFINE_list(
        "profile_steps",
        [],
        "FIRST,LAST: write a TensorBoard profile (Profile tab; {model_dir}/train/plugins/profile) of the "
        "training steps FIRST to LAST (step N ends at global step N), on the chief. Default: no profile.",
    )


def define_inference_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The model, image-list and pre-processing flags of tools/image_classification.py and
    tools/extract_feature.py (which adopt them as key flags, so their --help lists them)."""
    f = _Definer(flag_values)
    f.DEFINE_string(
        "checkpoint",
        None,
        "Model: a run directory or checkpoint prefix, ours or a released TF1 checkpoint (depth, width and "
        "head size are read from it).",
    )
    f.DEFINE_integer("depth", None, "Expected ResNet depth; default: what the checkpoint holds.")
    f.DEFINE_string(
        "image_list", None, "A file listing images, one per line (first field), in addition to the arguments."
    )
    f.DEFINE_string("image_root", "", "Folder that relative names in --image_list are relative to.")
    f.DEFINE_enum(
        "transform",
        None,
        sorted(preprocessing.TRANSFORMS),
        "Pre-processing (extract_feature.py: of --crop=center); default: the network's (its run's evaluation "
        "transform; demo for a released checkpoint). demo = the release's tools' (OpenCV decode with the EXIF "
        "orientation, shorter side 256/224 x S, centre crop S); reference = its evaluation transform (central "
        "80% crop, resize); full = the whole image resized (what the demo recipe trains and evaluates with).",
    )
    f.DEFINE_integer(
        "image_size",
        None,
        "Model input side (the crop side); default: the network's (the size its checkpoint was trained at; "
        "224 for a released checkpoint). Another size is allowed, with a warning.",
        lower_bound=1,
    )
    f.DEFINE_integer("batch_size", 32, "Images per forward pass.", lower_bound=1)
    f.DEFINE_integer(
        "max_pixels",
        images.DEFAULT_MAX_PIXELS,
        "Largest image (width x height) read; a larger one is skipped with the reason in the skip list, "
        "checked from its header before any pixel is decoded (0: only Pillow's own decompression-bomb limit, "
        "about 179 MP).",
        lower_bound=0,
    )
    f.DEFINE_bool("progress", True, "Show a progress bar (images, rate, ETA) on stderr.")


def inference_inputs(
    image_args: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS
) -> tuple[list[str], keras.Model, architecture.CheckpointInfo]:
    """The image files and the model that an inference tool's arguments and `define_inference_flags` name.

    Args:
      image_args: the image files given as arguments; --image_list's (under --image_root) follow them.
      flag_values: where `define_inference_flags` defined the flags.

    Returns:
      (the files, the ResNet of --checkpoint at --depth, what the checkpoint holds).

    Raises:
      ValueError: no image, an unreadable list, or no usable checkpoint (`models.checkpoint_files.CheckpointError`).
    """
    f = flag_values
    paths = image_files.collect_image_paths(image_args, image_list=f.image_list, image_root=f.image_root)
    model, info = pretrained.load_model(f.checkpoint, depth=f.depth)  # past a damaged latest one
    return paths, model, info


def inference_settings(
    flag_values: flags.FlagValues = flags.FLAGS, contract: input_contract.InputContract | None = None
) -> dict[str, Any]:
    """The keyword arguments that `define_inference_flags` sets for the tools' batch functions.

    (`classify` of tools/image_classification.py, `extract_features` of tools/extract_feature.py): the
    pre-processing (--transform and --image_size, or where not given the network's `contract`, e.g.
    `inference_inputs`' `info.contract`, else the release's tools' input; another size than the network's
    is warned about), the batch size, the pixel limit and the progress bar.
    """
    f = flag_values
    contract = contract or input_contract.RELEASE
    transform, image_size = contract.settings(transform=f.transform, image_size=f.image_size)
    return {
        "transform": transform,
        "image_size": image_size,
        "batch_size": f.batch_size,
        "max_pixels": f.max_pixels,
        "show_progress": f.progress,
    }


# The flags that set a config field of the same name (`config.replace` finds its part), applied before
# `config.resolve`; _STEP_FIELDS are step counts as run, applied after it.
_FIELDS = (
    # model
    "depth",
    "base_width",
    "num_classes",
    "init_checkpoint",
    "skip_head",
    "init_optimizer_state",
    "frozen_stages",
    # data
    "data_dir",
    "train_prefix",
    "eval_prefix",
    "tfds_name",
    "tfds_data_dir",
    "tfds_manual_dir",
    "shuffle_buffer",
    # schedule
    "per_rank_batch",
    "keep_checkpoints",
    "eval_steps",
    # loss
    "class_status",
    "mask_thres",
    "neg_select",
    # runtime
    "model_dir",
    "deterministic",
    "intra_op_threads",
    "inter_op_threads",
    "data_threads",
    "accum_steps",
    "backward_segments",
    "allreduce_dtype",
    "precision",
    "image_transport",
    "xla",
    "seed",
)
_STEP_FIELDS = ("train_steps", "log_every", "checkpoint_every", "eval_every")  # as run: applied after scaling


def _given(flag_values: flags.FlagValues, names) -> dict[str, Any]:
    return {n: flag_values[n].value for n in names if n in flag_values and flag_values[n].value is not None}


def parse_image_sizes(values: list[str]) -> tuple[tuple[int, int], ...]:
    """["224", "299@300000"] -> ((0, 224), (300000, 299)); the first must start at step 0."""
    sizes = []
    for value in values:
        size, _, start = value.partition("@")
        try:
            sizes.append((int(start) if start else 0, int(size)))
        except ValueError:
            raise app.UsageError(f"--image_sizes: {value!r} is not SIZE or SIZE@STEP") from None
    starts = [s for s, _ in sizes]
    if not sizes or starts[0] != 0 or starts != sorted(set(starts)):
        raise app.UsageError(f"--image_sizes {values}: the first size starts at step 0, steps increase")
    small = [size for _, size in sizes if size < config_lib.MIN_IMAGE_SIZE]
    if small:
        raise app.UsageError(
            f"--image_sizes {values}: {small[0]} is too small, the minimum is {config_lib.MIN_IMAGE_SIZE} "
            "(the ResNet's total stride)"
        )
    return tuple(sizes)


def _user_paths(config: config_lib.TrainConfig) -> config_lib.TrainConfig:
    """The config's local paths as typed made absolute (`fileio.user_path`), so that a relative
    `--model_dir`, `~` or a trailing slash means the same run wherever the path is used later."""

    def absolute(path: str) -> str:
        return fileio.user_path(path) if path else path

    data = config.data
    return config_lib.replace(
        config,
        model_dir=absolute(config.runtime.model_dir),
        init_checkpoint=absolute(config.model.init_checkpoint),
        data_dir=absolute(data.data_dir),
        tfds_data_dir=absolute(data.tfds_data_dir),
        tfds_manual_dir=absolute(data.tfds_manual_dir),
    )


def resolve_config(
    flag_values: flags.FlagValues, *, recipe_name: str, num_ranks: int
) -> config_lib.TrainConfig:
    """The recipe with the given flags applied, resolved for `num_ranks` ranks."""
    config = config_lib.replace(recipes.get(recipe_name), **_given(flag_values, _FIELDS))
    config = _user_paths(config)
    if flag_values["topk"].value:
        config = config_lib.replace(config, topk=tuple(int(k) for k in flag_values["topk"].value))
    if not flag_values["scale_schedule"].value:
        config = config_lib.replace(config, reference_global_batch=config.schedule.per_rank_batch * num_ranks)
    config = config_lib.resolve(config, num_ranks=num_ranks)
    config = config_lib.replace(config, **_given(flag_values, _STEP_FIELDS))
    if flag_values["image_sizes"].value:
        config = config_lib.replace(config, image_sizes=parse_image_sizes(flag_values["image_sizes"].value))
    config_lib.validate(config)
    return config


def _json_text(value: Any, depth: int = 0) -> str:
    """JSON of `value` with one key per line (objects indented by 2) and lists kept on one line; keys in
    order, numbers as numbers (the probed steps 4399, 4400, 35200, not the string order 35200, 4399, 4400)."""
    if not isinstance(value, dict) or not value:
        return json.dumps(value)
    keys = sorted(value, key=lambda k: (not k.isdigit(), int(k) if k.isdigit() else 0, k))
    inner = "  " * (depth + 1)
    lines = [f"{inner}{json.dumps(key)}: {_json_text(value[key], depth + 1)}" for key in keys]
    return "{\n" + ",\n".join(lines) + "\n" + "  " * depth + "}"


def dry_run_report(config: config_lib.TrainConfig, probe_steps: list[str], *, with_image_size: bool) -> str:
    """The resolved config as one JSON object, a key per line, with the probed learning rates (and image
    sizes) in step order."""
    report = config_lib.to_dict(config)
    steps = [int(s) for s in probe_steps]
    if steps:
        # 12 significant digits: the same float32 learning rate the optimizer receives, without float64 noise
        # (0.01 x 1.297 prints as 0.01297, not 0.012969999999999999).
        report["lr"] = {str(s): float(f"{config.schedule.learning_rate(s):.12g}") for s in steps}
        if with_image_size:
            report["image_size"] = {str(s): config.image_size_at(s) for s in steps}
    return _json_text(report)


def parse_profile_steps(values: list[str]) -> tuple[int, int] | None:
    """--profile_steps ["A", "B"] -> (A, B) with 1 <= A <= B; [] -> None (no profile)."""
    if not values:
        return None
    try:
        first, last = (int(v) for v in values)
    except ValueError:
        raise app.UsageError(
            f"--profile_steps: {','.join(values)} is not FIRST,LAST (two step numbers)"
        ) from None
    if not 1 <= first <= last:
        raise app.UsageError(f"--profile_steps {first},{last}: the steps must satisfy 1 <= FIRST <= LAST")
    return first, last


def _resolve_or_usage_error(flag_values: flags.FlagValues, recipe_name: str, num_ranks: int):
    try:
        return resolve_config(flag_values, recipe_name=recipe_name, num_ranks=num_ranks)
    except ValueError as e:  # an invalid combination of flags: a usage error, not a traceback
        raise app.UsageError(str(e)) from None


def main(flag_values: flags.FlagValues, *, recipe_name: str, finetune: bool) -> None:
    """Runs the entry script: --dry_run prints the config; otherwise trains on this process's ranks.

    Raises:
      app.UsageError: a bad combination of flags.
      SystemExit: a refused run, with the script's one error line (`data.command_line.error`).
    """
    script = "finetune.py" if finetune else "train.py"
    if flag_values.simulate_workers and not flag_values.dry_run:
        raise app.UsageError("--simulate_workers only applies with --dry_run")
    bad = [s for s in flag_values.lr_probe_steps if not s.strip().isdigit()]
    if bad:
        raise app.UsageError(f"--lr_probe_steps must be non-negative integers, got {bad}")
    profile_steps = parse_profile_steps(flag_values.profile_steps)
    if flag_values.dry_run:
        config = _resolve_or_usage_error(flag_values, recipe_name, flag_values.simulate_workers or 1)
        print(dry_run_report(config, flag_values.lr_probe_steps, with_image_size=finetune))
        return
    from training import demo, distributed, loop  # not needed by --dry_run: no data, no model

    try:
        dist = distributed.init()
    except ValueError as e:  # e.g. more ranks than GPUs, or two ranks on one GPU: one line, not a traceback
        raise command_line.error(script, e) from None
    config = _resolve_or_usage_error(flag_values, recipe_name, dist.size)
    if profile_steps and config.recipe == "demo":
        raise app.UsageError("--profile_steps profiles train.py/finetune.py runs, not --recipe=demo")
    try:
        if config.recipe == "demo":
            result = demo.run(config, dist=dist)
        else:
            result = loop.train(config, dist=dist, profile_steps=profile_steps)
    except loop.preemption.Preempted as e:  # stopped as asked, state saved: success
        if dist.is_chief:
            print(f"preempted: {e}", file=sys.stderr)
        return
    except (ValueError, FileNotFoundError, loop.train_step.NonFiniteLossError) as e:
        raise command_line.error(script, e) from None
    if dist.is_chief:
        print(json.dumps({"final": result}, sort_keys=True, default=float))
