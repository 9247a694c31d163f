"""Our network with standard Keras layers only: what a `.keras` file for users outside this project holds.

Training builds its BatchNorms as `models.resnet.FusedBatchNormalization` (TensorFlow's fused kernel in the
training pass, as the release's TF1 layers); a `.keras` file of that model names the class
`mlimages>FusedBatchNormalization`, which `keras.saving.load_model` finds only where this project is
imported. At inference the layer IS Keras' `BatchNormalization` (its `call` hands every non-training case
to it, and its config is exactly Keras'), so `standard_layers` swaps each for a
`keras.layers.BatchNormalization` of the same config and weights: the same epsilon and moving statistics,
the same inference math, and a file that loads with Keras alone (tools/export.py; tested in a process
that cannot import this project).
"""

from __future__ import annotations

import keras

from models import resnet

__all__ = ["non_standard_layers", "standard_layers"]


def _standard(layer: keras.layers.Layer) -> keras.layers.Layer:
    """A new layer of `layer`'s config, as the nearest class Keras itself defines."""
    if isinstance(layer, resnet.FusedBatchNormalization):
        return keras.layers.BatchNormalization.from_config(layer.get_config())
    return layer.__class__.from_config(layer.get_config())


def non_standard_layers(model: keras.Model) -> list[str]:
    """Names of `model`'s layers whose class Keras does not define (the ones a Keras-only process lacks)."""
    return [
        f"{layer.name} ({type(layer).__module__}.{type(layer).__name__})"
        for layer in model.layers
        if not type(layer).__module__.startswith("keras.")
    ]


def standard_layers(model: keras.Model) -> keras.Model:
    """A copy of `model` (from `models.resnet.build_resnet`, or a view of it) with Keras' own layers only.

    Same layer names, graph and weights (copied layer by layer, moving statistics included), so its
    inference outputs equal `model`'s; `model` is left as it is.

    Raises:
      ValueError: `model` holds a layer that has no standard Keras counterpart.
    """
    copy = keras.models.clone_model(model, clone_function=_standard)
    remaining = non_standard_layers(copy)
    if remaining:
        raise ValueError(f"no standard Keras layer for {', '.join(remaining)}")
    for layer in model.layers:
        copy.get_layer(layer.name).set_weights(layer.get_weights())
    return copy
