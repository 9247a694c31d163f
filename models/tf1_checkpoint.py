"""Loading the release's TF1 checkpoints into `models.resnet.build_resnet`: strict on the model, tolerant of the rest.

The released checkpoints (`ckpt-resnet101-mlimages`, 11,166-way head; `ckpt-resnet101-mlimages-imagenet`,
1000-way head) name the model's variables `init/init_conv/conv2d/kernel`,
`stages_{i}_block_{j}/conv1_b2_bn/batch_normalization/gamma`, ..., `logits/dense/{kernel,bias}`. A file saved
by the release's graphs holds more (docs/REFERENCE.md section 2): `global_step`, tf.train.MomentumOptimizer's slot
`<variable>/Momentum` of every variable it trained (all of them in pre-training, only the trained ones in
fine-tuning) and, from train.py, two unnamed float32 [num_classes] variables `Variable` and `Variable_1`:
the loss's run-length counters pos_count and neg_count (created by `tf.Variable(...)` without a name, in that
order).

The model part must match one-to-one: any missing, mis-shaped or extra MODEL variable (an entry named like
a reference ResNet weight that the model does not have, e.g. a deeper network's block) raises, listing all of
them at once and assigning nothing — unlike the release, whose failed restores were only printed. Everything
else is sorted by meaning (`TF1Contents`), reported once in the log and otherwise ignored; an entry that is
none of the known kinds is a warning, never a reason to refuse a real file. `restore_release_state` then
takes over the counters, slots and step where a run continues the release's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping, Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from models import resnet

HEAD_PREFIX = "logits/dense/"
GLOBAL_STEP = "global_step"
# train.py's loss counters, in creation order: pos_count is `Variable`, neg_count `Variable_1`.
COUNTERS = ("Variable", "Variable_1")
_SLOT = re.compile(r"(.+)/Momentum")
# Slots of further optimizer instances (`<var>/Momentum_1`, ...): optimizer state, but not this run's.
_OTHER_SLOT = re.compile(r".+/Momentum_\d+")
_SHOWN_NAMES = 6  # names listed in a log line before "... and N more"


class TF1CheckpointMismatchError(ValueError):
    """The checkpoint's model variables do not match the model one-to-one (the message lists every name)."""


@dataclasses.dataclass(frozen=True)
class TF1Contents:
    """A TF1 checkpoint's entries sorted by meaning (names only; `read` gets a value).

    Attributes:
      path: the checkpoint prefix.
      model: the model variables that were (or are to be) loaded.
      head: the checkpoint's head variables left out by skip_head.
      momentum: {model variable name: entry of its MomentumOptimizer slot}, for the variables that have one.
      counters: ("Variable", "Variable_1") when both exist (the loss counters pos_count, neg_count), else None.
      global_step: "global_step" when present, else None.
      other_optimizer: further optimizer slots (`<var>/Momentum_N`) and slots of non-model variables.
      unknown: entries of none of these kinds (ignored with a warning).
      shapes: every entry's shape.
    """

    path: str
    model: tuple[str, ...]
    head: tuple[str, ...]
    momentum: Mapping[str, str]
    counters: tuple[str, str] | None
    global_step: str | None
    other_optimizer: tuple[str, ...]
    unknown: tuple[str, ...]
    shapes: Mapping[str, tuple[int, ...]]

    def read(self, name: str) -> np.ndarray:
        """The value of entry `name`."""
        return np.asarray(tf.train.load_checkpoint(self.path).get_tensor(name))

    def summary(self) -> str:
        """One line: what the file holds beside the loaded model weights."""
        parts = [f"{len(self.model)} model variables"]
        if self.head:
            parts.append(f"{len(self.head)} head variables not loaded (skip_head)")
        if self.momentum:
            parts.append(f"{len(self.momentum)} Momentum slots")
        if self.counters:
            parts.append("the loss counters Variable/Variable_1")
        if self.global_step:
            parts.append("global_step")
        if self.other_optimizer:
            parts.append(
                f"{len(self.other_optimizer)} other optimizer slots ({abbreviate(self.other_optimizer)})"
            )
        if self.unknown:
            parts.append(f"{len(self.unknown)} unknown entries ({abbreviate(self.unknown)})")
        return ", ".join(parts)


def abbreviate(names: Sequence[str], shown: int = _SHOWN_NAMES) -> str:
    """'a, b, c ... and N more' for log lines about many names."""
    names = sorted(names)
    text = ", ".join(names[:shown])
    return text + (f" ... and {len(names) - shown} more" if len(names) > shown else "")


def tf1_variable_map(model: keras.Model, *, skip_head: bool = False) -> dict[str, keras.Variable]:
    """Maps each TF1 variable name of the reference ResNet to the model's variable (one-to-one).

    Args:
      model: a model from `build_resnet`.
      skip_head: leave out the head (`logits/dense/*`).

    Returns:
      {tf1_name: variable} covering every weight of the model (except the head when skip_head).

    Raises:
      ValueError: when a weight has no TF1 counterpart or two weights map to the same name.
    """
    mapping: dict[str, keras.Variable] = {}
    for layer in model.layers:
        for variable in layer.weights:
            name = resnet.tf1_variable_name(layer.name, variable.name)
            if name in mapping:
                raise ValueError(f"two weights map to the TF1 name {name}")
            if not (skip_head and name.startswith(HEAD_PREFIX)):
                mapping[name] = variable
    return mapping


def _is_reference_weight(name: str) -> bool:
    try:
        resnet.keras_weight_name(name)
    except ValueError:
        return False
    return True


def classify(
    ckpt_path: str, shapes: Mapping[str, Sequence[int]], model_names: Sequence[str], *, skip_head: bool
) -> tuple[TF1Contents, list[str]]:
    """Sorts a checkpoint's entries by meaning; returns them and the list of model mismatches (empty if none).

    Args:
      ckpt_path: the checkpoint prefix (kept in the result).
      shapes: {entry name: shape} of the checkpoint.
      model_names: the TF1 names the model needs (`tf1_variable_map`, head excluded when skip_head).
      skip_head: the checkpoint's head entries are left out (and not an error).

    Returns:
      (contents, problems): `problems` lists every missing, extra and mis-shaped model variable, grouped
      and formatted for the error message.
    """
    shapes = {name: tuple(int(d) for d in shape) for name, shape in shapes.items()}
    wanted = set(model_names)
    model, head, other, unknown, extra = [], [], [], [], []
    momentum: dict[str, str] = {}
    for name in sorted(shapes):
        slot = _SLOT.fullmatch(name)
        if name in wanted:
            model.append(name)
        elif slot and _is_reference_weight(slot.group(1)):
            momentum[slot.group(1)] = name
        elif skip_head and name.startswith(HEAD_PREFIX):
            head.append(name)
        elif slot or _OTHER_SLOT.fullmatch(name):
            other.append(name)
        elif name == GLOBAL_STEP or name in COUNTERS:
            pass
        elif _is_reference_weight(name):
            extra.append(name)  # a weight of another architecture (deeper, or another head layout)
        else:
            unknown.append(name)
    counters = COUNTERS if all(c in shapes for c in COUNTERS) else None
    if counters is None:  # a lone `Variable` is nothing we know
        unknown += [c for c in COUNTERS if c in shapes]
    contents = TF1Contents(
        path=ckpt_path,
        model=tuple(model),
        head=tuple(head),
        momentum=momentum,
        counters=counters,
        global_step=GLOBAL_STEP if GLOBAL_STEP in shapes else None,
        other_optimizer=tuple(other),
        unknown=tuple(sorted(unknown)),
        shapes=shapes,
    )
    return contents, extra


def load_tf1_checkpoint(model: keras.Model, ckpt_path: str, *, skip_head: bool = False) -> TF1Contents:
    """Loads the model weights of a TF1 checkpoint into `model`, strictly; reports the rest.

    Args:
      model: a model from `build_resnet` of the checkpoint's depth (and head size unless skip_head).
      ckpt_path: the checkpoint prefix (e.g. `.../ckpt-resnet101-mlimages/model.ckpt`), as accepted by
        tf.train.load_checkpoint.
      skip_head: leave the model's head (`logits`) untouched and ignore the checkpoint's (fine-tuning a
        new head); the rest must still match exactly.

    Returns:
      The checkpoint's entries sorted by meaning, for a caller that takes over the optimizer state or the
      loss counters (`restore_release_state`).

    Raises:
      TF1CheckpointMismatchError: listing every missing, extra and mis-shaped model variable; nothing is
        assigned in that case.
    """
    reader = tf.train.load_checkpoint(ckpt_path)
    mapping = tf1_variable_map(model, skip_head=skip_head)
    contents, extra = classify(
        ckpt_path, reader.get_variable_to_shape_map(), list(mapping), skip_head=skip_head
    )
    missing = sorted(set(mapping) - set(contents.model))
    misshaped = sorted(
        f"{name}: checkpoint {list(contents.shapes[name])}, model {list(mapping[name].shape)}"
        for name in contents.model
        if contents.shapes[name] != tuple(mapping[name].shape)
    )
    if missing or extra or misshaped:
        raise TF1CheckpointMismatchError(
            f"{ckpt_path} does not match the model ({model.name}, "
            f"{'without' if skip_head else 'with'} head):\n"
            + "".join(
                f"  {title} ({len(names)}):\n" + "".join(f"    {n}\n" for n in names)
                for title, names in (("missing", missing), ("extra", extra), ("mis-shaped", misshaped))
                if names
            )
        )
    for name, variable in mapping.items():
        variable.assign(np.asarray(reader.get_tensor(name), dtype=variable.dtype))
    logging.info("loaded TF1 checkpoint %s: %s", ckpt_path, contents.summary())
    if contents.unknown:
        logging.warning(
            "%s holds %d entries that are neither the model's nor the release's optimizer slots, step or "
            "loss counters; ignored: %s",
            ckpt_path,
            len(contents.unknown),
            abbreviate(contents.unknown),
        )
    return contents


def restore_release_state(
    contents: TF1Contents,
    *,
    pos_count: tf.Variable | None = None,
    neg_count: tf.Variable | None = None,
    momentum: Mapping[str, tf.Variable] | None = None,
    global_step: tf.Variable | None = None,
) -> list[str]:
    """Takes over the release's training state from a TF1 checkpoint, to continue its run.

    The release's tf.train.MomentumOptimizer keeps accum <- momentum * accum + gradient and applies
    variable <- variable - lr * accum, the accumulator of `training.train_step.TF1Momentum`: the slots are
    copied as they are.

    Args:
      contents: from `load_tf1_checkpoint`.
      pos_count, neg_count: the loss counters to fill from `Variable` / `Variable_1`; taken when both
        exist and their shape matches (a head of another size has other classes), otherwise left as they
        are (and said so in the returned lines).
      momentum: {TF1 model variable name: the optimizer's accumulator} of every variable to fill; all must
        have a slot of the same shape in the checkpoint.
      global_step: the step variable to set from `global_step`; required to be present when given.

    Returns:
      Human-readable lines of what was taken over and what was not.

    Raises:
      ValueError: a requested slot or the step is missing or mis-shaped (listing all of them); nothing is
        assigned in that case.
    """
    taken: list[str] = []
    assignments: list[tuple[tf.Variable, str]] = []
    if pos_count is not None and neg_count is not None:
        want = tuple(pos_count.shape)
        if contents.counters and all(contents.shapes[c] == want for c in contents.counters):
            assignments += [(pos_count, COUNTERS[0]), (neg_count, COUNTERS[1])]
            taken.append("loss counters (Variable -> pos_count, Variable_1 -> neg_count)")
        elif contents.counters:
            shape = list(contents.shapes[COUNTERS[0]])
            taken.append(f"loss counters NOT taken: shape {shape} in the checkpoint, {list(want)} here")
        else:
            taken.append("loss counters NOT taken: the checkpoint has none (they start at 0)")
    problems = []
    if momentum:
        for name, variable in momentum.items():
            slot = contents.momentum.get(name)
            if slot is None:
                problems.append(f"no Momentum slot for {name}")
            elif contents.shapes[slot] != tuple(variable.shape):
                problems.append(
                    f"{slot}: checkpoint {list(contents.shapes[slot])}, model {list(variable.shape)}"
                )
            else:
                assignments.append((variable, slot))
        unused = len(contents.momentum) - (len(momentum) - len(problems))
        taken.append(
            f"Momentum slots of {len(momentum)} trained variables ({unused} slots in the file unused)"
        )
    if global_step is not None:
        if contents.global_step is None:
            problems.append("no global_step")
        else:
            assignments.append((global_step, GLOBAL_STEP))
            taken.append(f"global_step {int(contents.read(GLOBAL_STEP))}")
    if problems:
        raise ValueError(
            f"{contents.path} cannot continue this run's optimizer state ({len(problems)} problems): "
            + "; ".join(problems[:20])
            + (f" ... and {len(problems) - 20} more" if len(problems) > 20 else "")
        )
    reader = tf.train.load_checkpoint(contents.path)
    for variable, name in assignments:
        variable.assign(np.asarray(reader.get_tensor(name), dtype=tf.as_dtype(variable.dtype).as_numpy_dtype))
    return taken
