"""Loading a trained ResNet from a checkpoint: ours (a run or a converted one) or a released TF1 one.

`load_model(path)` is the public loader: it finds which ResNet the checkpoint holds
(`checkpoint_architecture`, from the variables' names and shapes alone), builds it and loads its weights
strictly. evaluate.py and the inference tools use it, so all of them accept the same checkpoints; the
training code (training/checkpoints.py) uses `checkpoint_architecture` for the same question.

Two kinds of checkpoint are recognised:
- "ours": `tf.train.Checkpoint(model=...)` (a run directory's `ckpt-N`, or tools/convert_checkpoint.py's
  output); the names are object-graph paths, so the architecture is read from the shapes.
- "tf1": the release's files (`init/init_conv/conv2d/kernel`, `stages_{i}_block_{j}/...`); the
  architecture is read from the model variables' names (`models.resnet.keras_weight_name`). Entries that
  are not model weights are ignored here: `global_step`, the Momentum slots `<variable>/Momentum` (which
  have the variables' shapes), and the release's unnamed loss counters `Variable` and `Variable_1`.

For use from Python (README "Use the pretrained network in Python"): `load(path, head=...)` returns a
plain `keras.Model` from any of these checkpoints or from an exported `.keras` file (tools/export.py), with
the network's input contract attached (`model.input_contract`: image size, transform, class names;
models/input_contract.py); `preprocess(image_bytes, model)` makes its input as that contract says (without
a model: as the release's tools do); `decode_predictions` names the top classes (e.g.
`model.input_contract.class_names`, or the `class_names.txt` tools/export.py writes).
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
from collections.abc import Callable, Sequence
from typing import TypeVar

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from data import fileio
from data.pixels import images, preprocessing
from models import input_contract, resnet, tf1_checkpoint
from models.input_contract import InputContract

__all__ = [
    "ACTIVATIONS",
    "CheckpointError",
    "CheckpointInfo",
    "InputContract",
    "NoCheckpointError",
    "UnusableCheckpointError",
    "checkpoint_problem",
    "checkpoint_architecture",
    "checkpoint_contract",
    "decode_predictions",
    "default_activation",
    "inspect_checkpoint",
    "load",
    "load_model",
    "preprocess",
    "read_class_names",
    "read_newest",
    "resolve_checkpoint",
    "rotated_away",
]

KINDS = ("ours", "tf1")
T = TypeVar("T")
_TF1_STEM = "init/init_conv/conv2d/kernel"
_TF1_HEAD = "logits/dense/kernel"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, not a reference ResNet, or not the asked one."""


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, found from its variables' names and shapes alone."""

    path: str  # the resolved checkpoint prefix
    kind: str  # "ours" or "tf1" (see the module docstring)
    depth: int
    base_width: int
    num_classes: int
    # What the network expects as input (`checkpoint_contract`); the release's tools' input by default.
    contract: InputContract = input_contract.RELEASE


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint where a path points: nothing there, or a file that is not a checkpoint.

    Also a FileNotFoundError, so that callers catching a missing file report it the same way.
    """


def checkpoint_paths(model_dir: str) -> list[str]:
    """The checkpoints the `checkpoint` state file of `model_dir` lists, newest (the latest) first.

    The order is the order of saving, not of step numbers: after a resume on another number of ranks the
    step is re-counted in the new global batch and can be lower than an older checkpoint's. TensorFlow
    already prefixes the file's relative entries with `model_dir` (as given: relative stays relative), so
    the paths are used as they come.
    """
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if state.model_checkpoint_path in paths:  # the latest first, then the others newest to oldest
        paths.remove(state.model_checkpoint_path)
    paths = [state.model_checkpoint_path, *reversed(paths)]
    return paths


def checkpoint_candidates(path: str) -> list[str]:
    """The checkpoint prefixes `path` means, the one to use first: the one place that reads a checkpoint path.

    A directory means the checkpoints its state file lists (`checkpoint_paths`: the latest first; the
    training code falls back to older ones past damaged ones); one of a checkpoint's own files (`.index`,
    `.data-*-of-*`) means that checkpoint; anything else is a prefix.

    `path` is taken as a user types it (`fileio.user_path`: `~`, relative to the working directory, a
    trailing slash or a symlink all name the same checkpoint); the prefixes returned are absolute.

    Raises:
      NoCheckpointError: nothing at `path`, no checkpoint in the directory, or a file that is not a
        checkpoint.
    """
    path = fileio.user_path(path)
    if tf.io.gfile.isdir(path):
        candidates = checkpoint_paths(path)
        if not candidates:
            raise NoCheckpointError(f"no checkpoint in directory {path}")
        return candidates
    match = re.fullmatch(r"(.+)\.(index|data-\d+-of-\d+)", path)
    if match and tf.io.gfile.exists(match.group(1) + ".index"):
        path = match.group(1)  # one of a checkpoint's files: its prefix is meant
    if not tf.io.gfile.exists(path + ".index"):
        if tf.io.gfile.exists(path):
            raise NoCheckpointError(
                f"{path} is not a checkpoint: give a checkpoint prefix (the path without .index/.data-*) or "
                "a directory holding a `checkpoint` file"
            )
        raise NoCheckpointError(f"checkpoint {path} not found (no {path}.index)")
    return [path]


class UnusableCheckpointError(NoCheckpointError):
    """A checkpoint that is there but damaged; "nothing there" and "not a checkpoint" are its base class.

    Both a FileNotFoundError (no usable checkpoint is found there: the callers that catch a missing one
    report it the same way) and a ValueError (the entry scripts' one-line usage errors).
    """


def error_line(error: BaseException) -> str:
    """The last line of an error's message (TensorFlow's hold a C++ trace before it), at most 300 chars."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[-1][:300] if text.strip() else type(error).__name__


def checkpoint_problem(prefix: str) -> str | None:
    """What is wrong with the checkpoint at `prefix` (None: intact), cheaply but for real.

    Opens the index (a truncated or foreign index fails to parse), checks that the data files it names are
    all there and together hold at least the bytes of every fixed-size tensor (a truncated data file is
    short), and reads the variable-size tensors (the object graph, a serialized iterator) through
    RestoreV2, which checks their CRC. Fixed-size tensors are not read: a load or resume reads them next
    anyway, and reading a ResNet-101 state twice would double its time.
    """
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{prefix}.index is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        return f"{prefix}.index cannot be read ({error_line(e)})"
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    data = tf.io.gfile.glob(prefix + ".data-*-of-*")
    shards = {int(m.group(1)) for f in data if (m := re.search(r"-of-(\d+)$", f))}
    if not data or len(shards) != 1 or len(data) != shards.pop():
        return f"the data files of {prefix} are missing or incomplete ({len(data)} found)"
    try:
        have = sum(tf.io.gfile.stat(f).length for f in data)
    except tf.errors.NotFoundError:  # deleted since the glob (a run's rotation)
        return f"the data files of {prefix} were deleted while checked"
    fixed = {n: d for n, d in dtypes.items() if d not in (tf.string, tf.variant, tf.resource)}
    need = sum(math.prod(shapes[n]) * d.size for n, d in fixed.items())
    if have < need:
        return f"{prefix}.data-* is truncated ({have} bytes, the index needs at least {need})"
    variable = sorted(n for n in dtypes if n not in fixed)
    if variable:
        try:
            tf.raw_ops.RestoreV2(
                prefix=prefix,
                tensor_names=variable,
                shape_and_slices=[""] * len(variable),
                dtypes=[dtypes[n] for n in variable],
            )
        except tf.errors.OpError as e:
            return f"{prefix} cannot be read ({error_line(e)})"
    return None


# How often a reader of a run directory takes the newest checkpoint again after the one it took was deleted
# by the run's rotation (`keep_checkpoints`) while it read it; a run saving faster than a checkpoint can be
# read would otherwise keep it busy for ever.
MAX_ROTATIONS = 20


def rotated_away(prefix: str) -> bool:
    """Whether the checkpoint `prefix` is gone: its index or every data file deleted (a run's rotation)."""
    try:
        return not tf.io.gfile.exists(prefix + ".index") or not tf.io.gfile.glob(prefix + ".data-*")
    except tf.errors.OpError:
        return True


def resolve_checkpoint(path: str) -> str:
    """The intact checkpoint prefix `path` (a run directory, a prefix, or one of its files) means.

    A directory's damaged checkpoints (`checkpoint_problem`: cut short by a crash during a save or a full
    disk) are skipped with a warning naming them, and left on disk, for its newest intact one; a damaged
    prefix is refused. A directory's checkpoint that the run deletes while it is checked (its rotation keeps
    only the newest `keep_checkpoints`) is not damaged: the state file is read again for the newest.
    Training's resume, evaluate.py, the tools and `load` all go through here.

    Raises:
      NoCheckpointError: nothing at `path`, or not a checkpoint (see `checkpoint_candidates`).
      UnusableCheckpointError: `path` is damaged (for a directory: all of its checkpoints).
    """
    for _ in range(MAX_ROTATIONS):
        rotated = False
        for prefix in checkpoint_candidates(path):
            problem = checkpoint_problem(prefix)
            if problem is None:
                return prefix
            if not tf.io.gfile.isdir(path):
                raise UnusableCheckpointError(f"{prefix} is not a readable checkpoint: {problem}")
            if rotated_away(prefix):  # deleted by the run since its state file was read
                rotated = True
                break
            logging.warning("skipping the damaged checkpoint %s: %s (its files are kept)", prefix, problem)
        if not rotated:
            raise UnusableCheckpointError(
                f"every checkpoint in {path} is damaged (see the warnings); the files are kept"
            )
        logging.info("a checkpoint of %s was deleted by its run while checked; taking the newest again", path)
    raise UnusableCheckpointError(_too_fast(path))


def _too_fast(path: str) -> str:
    return (
        f"the checkpoints of {path} were deleted {MAX_ROTATIONS} times while being read (the run saves "
        "faster than they can be read): give a checkpoint prefix, or raise the run's --keep_checkpoints"
    )


def read_newest(path: str, read: Callable[[str], T]) -> T:
    """`read(prefix)` of the checkpoint `path` means (`resolve_checkpoint`), on the newest one again when
    the run deletes it while it is read.

    A training run that saves often with few `keep_checkpoints` deletes its older checkpoints as it
    saves; a reader (evaluate.py, the tools, export, `load`) that took the newest one can find its files
    gone half way ("Failed to find any matching files"). Then, and only for a run directory whose
    checkpoint is really gone, the state file is read again and the newest complete checkpoint read.

    Raises:
      whatever `read` raises for any other reason; UnusableCheckpointError after `MAX_ROTATIONS` deletions.
    """
    for _ in range(MAX_ROTATIONS):
        prefix = resolve_checkpoint(path)
        try:
            return read(prefix)
        except (CheckpointError, tf.errors.OpError, ValueError, AssertionError, IndexError):
            if not (tf.io.gfile.isdir(fileio.user_path(path)) and rotated_away(prefix)):
                raise
        logging.warning("%s was deleted by its run while it was read; reading the newest checkpoint", prefix)
    raise UnusableCheckpointError(_too_fast(path))


def is_tf1_checkpoint(prefix: str) -> bool:
    """True for the release's TF1 checkpoints (variables named like `init/init_conv/conv2d/kernel`)."""
    return any(name.startswith("init/init_conv/") for name, _ in tf.train.list_variables(prefix))


def checkpoint_architecture(path: str) -> dict[str, int | str]:
    """Which ResNet a checkpoint holds: {"depth", "base_width", "num_classes", "kind": "ours" | "tf1"}.

    Args:
      path: a checkpoint prefix (or a directory: its latest checkpoint).

    Raises:
      CheckpointError: no checkpoint, or no reference ResNet in it.
      tf.errors.OpError: an unreadable checkpoint file.
    """
    return _prefix_architecture(resolve_checkpoint(path))


def _prefix_architecture(prefix: str) -> dict[str, int | str]:
    """`checkpoint_architecture` of an intact checkpoint prefix (not checked again)."""
    shapes = dict(tf.train.list_variables(prefix))
    if any(name.startswith("init/init_conv/") for name in shapes):
        return {**_tf1_architecture(prefix, shapes), "kind": "tf1"}
    return {**_our_architecture(prefix, shapes), "kind": "ours"}


def _tf1_architecture(prefix: str, shapes: dict[str, list[int]]) -> dict[str, int]:
    """Depth (blocks per stage), base width (stem kernel) and head size (logits kernel) from TF1 names."""
    stem, head = shapes.get(_TF1_STEM), shapes.get(_TF1_HEAD)
    if stem is None or head is None:
        raise CheckpointError(f"{prefix} has no `{_TF1_STEM}` or `{_TF1_HEAD}`: not a reference ResNet")
    blocks: dict[int, set[int]] = {}
    for name in shapes:
        try:
            layer_name, _ = resnet.keras_weight_name(name)
        except ValueError:  # global_step, <var>/Momentum, Variable, Variable_1, anything else
            continue
        if (block := resnet.parse_layer_name(layer_name)) is not None:
            blocks.setdefault(block.stage, set()).add(block.block)
    per_stage = tuple(len(blocks.get(stage, ())) for stage in range(max(blocks, default=-1) + 1))
    depths = [d for d, b in resnet.BLOCKS_PER_STAGE.items() if b == per_stage]
    if not depths:
        raise CheckpointError(
            f"{prefix}: blocks per stage {per_stage} match no ResNet depth {sorted(resnet.BLOCKS_PER_STAGE)}"
        )
    return {"depth": depths[0], "base_width": int(stem[3]), "num_classes": int(head[1])}


def _our_architecture(prefix: str, shapes: dict[str, list[int]]) -> dict[str, int]:
    """Depth, base width and head size of one of our checkpoints, from shapes alone.

    The names are object-graph paths (`model/_operations/N/...`, or the optimizer's reference to a
    trainable variable, each variable listed once), so: the stem kernel is the only 7x7 kernel
    ([7, 7, 3, base_width]); the head kernel is the only 2-D variable ([features, num_classes]); a ResNet
    with B blocks has 3 B + 5 conv kernels (stem, three per block, one projection per stage), and
    depth = 3 B + 2. Optimizer slots (`optimizer/_variables/...`) are not counted.
    """
    model_vars = {
        n: s for n, s in shapes.items() if n.startswith(("model/", "optimizer/_trainable_variables/"))
    }
    kernels4 = [s for s in model_vars.values() if len(s) == 4]
    stems = [s for s in kernels4 if s[:3] == [7, 7, 3]]
    heads = [s for s in model_vars.values() if len(s) == 2]
    if len(stems) != 1 or not heads:
        raise CheckpointError(f"{prefix} does not hold one of our ResNet checkpoints (no unique stem/head)")
    blocks = (len(kernels4) - 5) // 3
    depth = 3 * blocks + 2
    if depth not in resnet.BLOCKS_PER_STAGE:
        raise CheckpointError(f"{prefix}: {len(kernels4)} conv kernels match no ResNet depth")
    return {"depth": depth, "base_width": int(stems[0][3]), "num_classes": int(heads[0][1])}


def inspect_checkpoint(path: str, *, depth: int | None = None) -> CheckpointInfo:
    """Kind, depth, base width and head size of the ResNet in a checkpoint of either kind.

    Args:
      path: a run directory (its newest intact checkpoint, `read_newest`) or a checkpoint prefix, ours or
        a released TF1 one.
      depth: the expected depth (None: accept what the checkpoint holds).

    Raises:
      CheckpointError: no checkpoint there, an unreadable one, no reference ResNet in it, or a depth
        other than `depth`.
    """
    return read_newest(path, lambda prefix: _inspect_prefix(prefix, depth=depth))


def _inspect_prefix(prefix: str, *, depth: int | None) -> CheckpointInfo:
    """`inspect_checkpoint` of an intact checkpoint prefix (not checked again)."""
    try:
        found = _prefix_architecture(prefix)
    except tf.errors.OpError as e:
        raise CheckpointError(f"cannot read checkpoint {prefix}: {e.message.splitlines()[0]}") from None
    if depth is not None and depth != found["depth"]:
        raise CheckpointError(f"depth {depth} was asked for, but {prefix} holds a ResNet-{found['depth']}")
    return CheckpointInfo(
        path=prefix,
        kind=str(found["kind"]),
        depth=int(found["depth"]),
        base_width=int(found["base_width"]),
        num_classes=int(found["num_classes"]),
        contract=checkpoint_contract(prefix, kind=str(found["kind"]), num_classes=int(found["num_classes"])),
    )


def checkpoint_contract(prefix: str, *, kind: str, num_classes: int) -> InputContract:
    """The input contract of the checkpoint `prefix` (models/input_contract.py).

    Ours, in a run directory: its `config.json` (the size of the checkpoint's image-size phase, the
    evaluation transform) and `class_names.txt`. A released TF1 checkpoint, or ours without a
    `config.json` beside it (tools/convert_checkpoint.py's output): the release's tools' input.

    Raises:
      CheckpointError: a `config.json` or `class_names.txt` that cannot be used.
    """
    if kind != "ours":
        return input_contract.RELEASE
    try:
        found = input_contract.from_run_dir(
            os.path.dirname(prefix), step=input_contract.checkpoint_step(prefix)
        )
    except ValueError as e:
        raise CheckpointError(str(e)) from None
    if found is None:
        return input_contract.RELEASE
    return input_contract.check_class_names(found, num_classes)


def load_model(path: str, *, depth: int | None = None) -> tuple[keras.Model, CheckpointInfo]:
    """Builds the ResNet a checkpoint (ours or a released TF1 one) holds and loads its weights strictly.

    Args:
      path: a run directory (its newest intact checkpoint, the newest again if the run deletes it while
        it is read: `read_newest`) or a checkpoint prefix.
      depth: the expected depth (None: what the checkpoint holds).

    Returns:
      (the logits model of `models.resnet.build_resnet`, what the checkpoint holds).

    Raises:
      CheckpointError: see `inspect_checkpoint`; also any model weight that is missing or mis-shaped.
    """
    built: dict[tuple[int, int, int], keras.Model] = {}
    return read_newest(path, lambda prefix: _load_prefix(prefix, depth=depth, built=built))


def _load_prefix(
    prefix: str, *, depth: int | None, built: dict[tuple[int, int, int], keras.Model]
) -> tuple[keras.Model, CheckpointInfo]:
    """`load_model` of an intact checkpoint prefix, into the model of `built` of its architecture if any.

    Reusing the model built for a checkpoint the run deleted while it was read keeps the model's
    construction (most of a load's time) out of the next attempt, so the next read is quick.
    """
    info = _inspect_prefix(prefix, depth=depth)
    architecture = (info.depth, info.base_width, info.num_classes)
    if architecture not in built:
        built[architecture] = resnet.build_resnet(info.depth, info.num_classes, base_width=info.base_width)
    model = built[architecture]
    try:
        if info.kind == "tf1":
            tf1_checkpoint.load_tf1_checkpoint(model, info.path)
        else:
            tf.train.Checkpoint(model=model).read(
                info.path
            ).expect_partial().assert_existing_objects_matched()
    except (tf.errors.OpError, ValueError, AssertionError, IndexError) as e:  # IndexError: a cut-short file
        raise CheckpointError(f"cannot load {info.path}: {e}") from None
    logging.info(
        "loaded ResNet-%d (base width %d, %d classes) from %s checkpoint %s",
        info.depth,
        info.base_width,
        info.num_classes,
        info.kind,
        info.path,
    )
    return model, info


# --------------------------------------------------------------------------- the public Python interface

ACTIVATIONS = ("auto", "sigmoid", "softmax", "logits")
IMAGENET_CLASSES = 1000
PROBABILITIES = "probabilities"
FEATURES = "features"


def default_activation(num_classes: int) -> str:
    """The scores of a head: `softmax` exactly for a 1000-class (ImageNet, single-label) head, else `sigmoid`.

    The 11,166-class ML-Images head is multi-label (independent sigmoid probabilities, as it was trained);
    the release's 1000-class checkpoint was fine-tuned with a softmax, and its demo applies one.
    """
    return "softmax" if num_classes == IMAGENET_CLASSES else "sigmoid"


def load(path: str | os.PathLike[str], *, head: bool = True, activation: str = "auto") -> keras.Model:
    """A pretrained network as a plain `keras.Model` on NHWC float32 images in [-1, 1] (`preprocess`).

    Args:
      path: a run directory of ours (its latest checkpoint), a checkpoint prefix (ours or a released TF1
        one, e.g. `ckpt-resnet101-mlimages/model.ckpt`), or a `.keras` file (tools/export.py's
        `model.keras`: the logits network).
      head: True: the classifier, [N, num_classes] scores; False: the feature extractor, the pooled
        `global_pool` feature [N, 32 x base_width] (2048-d for the released ResNet-101).
      activation: with `head`: `auto` (`default_activation`: softmax for a 1000-class head, sigmoid
        otherwise), `sigmoid`, `softmax`, or `logits` (the raw head output, no activation).

    Returns:
      A model sharing its weights with the loaded network (named `probabilities` / `logits` /
      `features` by its output layer); call it with `training=False` or through `predict`. Its
      `input_contract` attribute is what the network expects (`preprocess(images, model)` follows it): a
      `.keras` file's stored contract (tools/export.py; the release's tools' input for a file without one),
      a run directory's `config.json` and `class_names.txt`, the release's tools' input for a TF1 checkpoint.

    Raises:
      CheckpointError: nothing usable at `path`, or an unknown `activation`.
    """
    if activation not in ACTIVATIONS:
        raise CheckpointError(f"activation must be one of {ACTIVATIONS}, got {activation!r}")
    path = fileio.user_path(path)
    if path.endswith(".keras"):
        if not os.path.isfile(path):
            raise CheckpointError(f"{path} not found")
        network = keras.saving.load_model(path, compile=False)
        try:
            contract = input_contract.read_keras_file(path) or input_contract.RELEASE
        except ValueError as e:
            raise CheckpointError(str(e)) from None
        num_classes = int(network.get_layer(resnet.LOGITS_LAYER).output.shape[-1])
        contract = input_contract.check_class_names(contract, num_classes)
    else:
        network, info = load_model(path)
        contract = info.contract
    if not head:
        features = network.get_layer(resnet.FEATURE_LAYER).output
        model = keras.Model(network.input, features, name=FEATURES)
    else:
        logits = network.get_layer(resnet.LOGITS_LAYER).output
        if activation == "auto":
            activation = default_activation(int(logits.shape[-1]))
        if activation == "logits":
            model = keras.Model(network.input, logits, name="logits")
        else:
            scores = keras.layers.Activation(activation, name=PROBABILITIES, dtype="float32")(logits)
            model = keras.Model(network.input, scores, name=PROBABILITIES)
    model.input_contract = contract
    return model


def preprocess(
    image_bytes: bytes | Sequence[bytes],
    model: keras.Model | InputContract | None = None,
    *,
    transform: str | None = None,
    image_size: int | None = None,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
) -> tf.Tensor:
    """Encoded image(s) -> the input batch float32[N, S, S, 3] of `model`, as its input contract says.

    The same path as the inference tools for a file (`data.pixels.preprocessing.preprocess`: checked, converted
    where TF cannot decode it, the EXIF orientation applied by `demo`).

    Args:
      image_bytes: one encoded image (JPEG, PNG, ...) or a sequence of them.
      model: a model from `load` (its `input_contract`) or an `InputContract`; None: the release's tools'
        input (`demo` at 224), which is also what a released checkpoint expects.
      transform: a name of `data.pixels.preprocessing.TRANSFORMS` instead of the contract's.
      image_size: the crop side S instead of the contract's (a warning says when it differs from it).
      max_pixels: larger images are refused (0: only Pillow's own limit).

    Raises:
      ValueError: an unknown transform; `data.pixels.images.BadImage` (a ValueError) for an unusable image.
    """
    contract = model if isinstance(model, InputContract) else getattr(model, "input_contract", None)
    transform, image_size = (contract or input_contract.RELEASE).settings(
        transform=transform, image_size=image_size
    )
    return preprocessing.preprocess(
        image_bytes, transform=transform, image_size=image_size, max_pixels=max_pixels
    )


def read_class_names(path: str | os.PathLike[str]) -> list[str]:
    """Class names, one per line, line i = class i (the `class_names.txt` tools/export.py writes).

    Raises:
      CheckpointError: the file cannot be read.
    """
    try:
        return input_contract.read_class_names(path)
    except ValueError as e:
        raise CheckpointError(str(e)) from None


def decode_predictions(
    probabilities, top: int = 5, *, class_names: Sequence[str] | str | os.PathLike[str] | None = None
) -> list[list[tuple[int, str, float]]]:
    """The `top` classes of every row, best first, as (class index, name, score).

    Args:
      probabilities: [N, C] scores (a tensor or an array); a single [C] row is taken as N = 1.
      top: classes per row (at most C).
      class_names: C names (a sequence, or a names file for `read_class_names`); None: the indices as text.

    Raises:
      ValueError: `top` out of [1, C], or a name count other than C.
    """
    scores = np.asarray(probabilities, dtype=np.float64)
    if scores.ndim == 1:
        scores = scores[np.newaxis]
    if scores.ndim != 2:
        raise ValueError(f"probabilities must be [N, C], got shape {scores.shape}")
    num_classes = scores.shape[1]
    if not 1 <= top <= num_classes:
        raise ValueError(f"top must be in [1, {num_classes}], got {top}")
    if isinstance(class_names, str | os.PathLike):
        class_names = read_class_names(class_names)
    names = [str(i) for i in range(num_classes)] if class_names is None else list(class_names)
    if len(names) != num_classes:
        raise ValueError(f"{len(names)} class names for {num_classes} scores")
    order = np.argsort(-scores, axis=1, kind="stable")[:, :top]  # ties: lower class index first
    return [[(int(i), names[i], float(row[i])) for i in idx] for row, idx in zip(scores, order, strict=True)]
