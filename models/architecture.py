"""Which ResNet a checkpoint holds, from its variables' names and shapes alone, and what input it expects.

`checkpoint_architecture(path)` is the one answer to "which ResNet is this checkpoint" (depth, base width,
head size, kind): the loader (models/pretrained.py), training's resume and `--init_checkpoint`
(training/checkpoints.py) and tools/convert_checkpoint.py ask it. Two kinds of checkpoint are recognised:
- "ours": `tf.train.Checkpoint(model=...)` (a run directory's `ckpt-N`, or tools/convert_checkpoint.py's
  output); the names are object-graph paths, so the architecture is read from the shapes.
- "tf1": the release's files (`init/init_conv/conv2d/kernel`, `stages_{i}_block_{j}/...`; their name
  mapping is models/tf1_checkpoint.py's); the architecture is read from the model variables' names
  (`models.resnet.keras_weight_name`). Entries that are not model weights are ignored here: `global_step`,
  the Momentum slots `<variable>/Momentum` (which have the variables' shapes), and the release's unnamed
  loss counters `Variable` and `Variable_1`.

`inspect_checkpoint` adds the input contract (`checkpoint_contract`: models/input_contract.py) into a
`CheckpointInfo`. Finding the checkpoint a path means and checking that it is intact is
models/checkpoint_files.py's.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf

from models import input_contract, resnet
from models.checkpoint_files import CheckpointError, read_newest, resolve_checkpoint
from models.input_contract import InputContract

KINDS = ("ours", "tf1")
_TF1_STEM = "init/init_conv/conv2d/kernel"
_TF1_HEAD = "logits/dense/kernel"


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
    return read_newest(path, lambda prefix: inspect_prefix(prefix, depth=depth))


def inspect_prefix(prefix: str, *, depth: int | None) -> CheckpointInfo:
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
