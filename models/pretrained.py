"""Loading a trained ResNet: the public Python interface (`load`, `preprocess`, `decode_predictions`).

`load_model(path)` builds the ResNet a checkpoint holds (ours, a run or a converted one, or a released TF1
one: `models.architecture.inspect_checkpoint` says which, from the variables' names and shapes alone) and
loads its weights strictly; evaluate.py and the inference tools use it, so all of them accept the same
checkpoints. Which checkpoint a path means and whether it is intact is models/checkpoint_files.py's
question, which ResNet it holds models/architecture.py's.

For use from Python (README "Use the pretrained network in Python"): `load(path, head=...)` returns a
plain `keras.Model` from any of these checkpoints or from an exported `.keras` file (tools/export.py), with
the network's input contract attached (`model.input_contract`: image size, transform, class names;
models/input_contract.py); `preprocess(image_bytes, model)` makes its input as that contract says (without
a model: as the release's tools do); `decode_predictions` names the top classes (e.g.
`model.input_contract.class_names`, or the `class_names.txt` tools/export.py writes). `CheckpointError` is
what `load` raises for anything unusable at `path` (models/checkpoint_files.py's, named here for users).
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from data import fileio
from data.pixels import images, preprocessing
from models import input_contract, resnet, tf1_checkpoint
from models.architecture import CheckpointInfo, inspect_prefix
from models.checkpoint_files import CheckpointError, read_newest
from models.input_contract import InputContract

__all__ = [
    "ACTIVATIONS",
    "CheckpointError",
    "InputContract",
    "decode_predictions",
    "default_activation",
    "load",
    "load_model",
    "preprocess",
    "read_class_names",
]


def load_model(path: str, *, depth: int | None = None) -> tuple[keras.Model, CheckpointInfo]:
    """Builds the ResNet a checkpoint (ours or a released TF1 one) holds and loads its weights strictly.

    Args:
      path: a run directory (its newest intact checkpoint, the newest again if the run deletes it while
        it is read: `read_newest`) or a checkpoint prefix.
      depth: the expected depth (None: what the checkpoint holds).

    Returns:
      (the logits model of `models.resnet.build_resnet`, what the checkpoint holds).

    Raises:
      CheckpointError: see `models.architecture.inspect_checkpoint`; also any model weight that is missing or mis-shaped.
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
    info = inspect_prefix(prefix, depth=depth)
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
