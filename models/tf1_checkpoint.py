"""Strict loading of the released TF1 checkpoints into `models.resnet.build_resnet`.

The released checkpoints (`ckpt-resnet101-mlimages`, 11,166-way head; `ckpt-resnet101-mlimages-imagenet`,
1000-way head) name their variables `init/init_conv/conv2d/kernel`,
`stages_{i}_block_{j}/conv1_b2_bn/batch_normalization/gamma`, ..., `logits/dense/{kernel,bias}`; they also
hold `global_step` and the Momentum optimizer's slots (`<variable>/Momentum`), which are not model weights
and are ignored. Everything else must match one-to-one: unlike the release, whose failed restores were
only printed, any missing, extra or mis-shaped variable raises, listing all of them at once.
"""

from __future__ import annotations

import re

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from models import resnet

HEAD_PREFIX = "logits/dense/"
# Non-model entries of the TF1 checkpoints: the step counter and tf.train.MomentumOptimizer's slots
# (`<var>/Momentum`, or `<var>/Momentum_1`, ... when several optimizer instances were created).
_IGNORED = re.compile(r"global_step|.+/Momentum(_\d+)?")


class TF1CheckpointMismatchError(ValueError):
    """The checkpoint's variables do not match the model one-to-one (the message lists every name)."""


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


def load_tf1_checkpoint(model: keras.Model, ckpt_path: str, *, skip_head: bool = False) -> None:
    """Loads a released TF1 checkpoint into `model`, strictly.

    Args:
      model: a model from `build_resnet` of the checkpoint's depth (and head size unless skip_head).
      ckpt_path: the checkpoint prefix (e.g. `.../ckpt-resnet101-mlimages/model.ckpt`), as accepted by
        tf.train.load_checkpoint.
      skip_head: leave the model's head (`logits`) untouched and ignore the checkpoint's (fine-tuning a
        new head); the rest must still match exactly.

    Raises:
      TF1CheckpointMismatchError: listing every missing, extra and mis-shaped variable; nothing is
        assigned in that case.
    """
    reader = tf.train.load_checkpoint(ckpt_path)
    stored = {
        name: shape
        for name, shape in reader.get_variable_to_shape_map().items()
        if not _IGNORED.fullmatch(name) and not (skip_head and name.startswith(HEAD_PREFIX))
    }
    mapping = tf1_variable_map(model, skip_head=skip_head)
    missing = sorted(set(mapping) - set(stored))
    extra = sorted(set(stored) - set(mapping))
    misshaped = sorted(
        f"{name}: checkpoint {list(stored[name])}, model {list(mapping[name].shape)}"
        for name in set(mapping) & set(stored)
        if list(stored[name]) != list(mapping[name].shape)
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
    logging.info("loaded %d variables from TF1 checkpoint %s", len(mapping), ckpt_path)
