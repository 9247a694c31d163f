r"""Exports a trained network for use outside this project: Keras files, a SavedModel, the class names.

    python tools/export.py --checkpoint ckpt-resnet101-mlimages/model.ckpt \
        --hierarchy dictionary_and_semantic_hierarchy.txt --output_dir exported/mlimages
    python tools/export.py --checkpoint runs/ckpt3 --imagenet_dictionary imagenet2012_dictionary.txt \
        --image_size 299 --output_dir exported/ckpt3

The checkpoint is ours (a run directory or a prefix) or a released TF1 one (`models.pretrained.load_model`).
Its input contract (models/input_contract.py: the image size its checkpoint was trained at, its run's
evaluation transform and class names; the release's tools' `demo` at 224 for a released checkpoint) is
what the export expects and stores, unless `--transform`, `--image_size` (warned about when it differs) or
`--hierarchy` / `--imagenet_dictionary` say otherwise. `--output_dir` receives:

- `model.keras`: the logits network (`models.resnet.build_resnet`) with standard Keras layers only
  (`models.portable.standard_layers`: the same inference math and weights), so `keras.saving.load_model`
  reads it in a process with Keras and TensorFlow and nothing of this project (as `models.pretrained.load`
  does here); the input contract is its zip member `input_contract.json` (image size, transform, class
  names; Keras ignores it, `models.pretrained.load` reads it); `model.weights.h5`, its weights alone
  (`load_weights` of the model in `model.keras`);
- `saved_model/`: a TF SavedModel for a server (it needs nothing of this project: the pre-processing is
  inside the graph, pure TF ops). Its `serving_default` signature:
  - input `image_bytes`: string[N], encoded images (JPEG, PNG, GIF, BMP), any number, any content;
  - output `valid`: bool[N], whether image i was used; `error`: string[N], why not ("" for a valid one):
    `not a JPEG, PNG, GIF or BMP image`, `unreadable header`, `needs P pixels (W x H image), over the
    limit M`, or `cannot be decoded (corrupt or truncated)`;
  - output `probabilities`: float32[N, C] and `features`: float32[N, D] (the pooled `global_pool`
    feature: 2048-d for the released ResNet-101, 32 x base width in general): row i is image i's when it
    is valid, zeros when it is not. A bad image never fails the call or changes another image's row.
  Before any pixel is decoded, each image's header is read in the graph (tools/serving_input.py: format,
  size, a GIF's frames) and an image whose decode or transform would hold more than `--max_pixels`
  (default 100 MP, the tools' limit) is refused: a 389 KB PNG of 20000 x 20000 zeros costs no memory. The
  others are decoded in a `tf.data` pipeline whose `ignore_errors` drops a corrupt or truncated image
  alone. Memory is bounded by `--max_pixels` per image decoded at a time (one per core). `probabilities`
  follow `--head`: `auto` is softmax for a 1000-class head (ImageNet) and sigmoid for any other (the
  11,166-class multi-label head), as in tools/image_classification.py. As in the tools (`demo`:
  `cv.imread`), a JPEG's EXIF orientation is applied, read from its header by TF ops
  (`serving_input.exif_orientation`). Images the tools first convert through Pillow (16-bit PNG, CMYK JPEG
  without the Adobe marker) are left to TF's own decoder; formats without a header check here (WebP, JPEG
  XL, TIFF) are refused.
  Its second signature, `input_contract`, takes nothing and returns `image_size`, `transform`,
  `class_names` (string[C], empty when unknown) and `max_pixels`, so a client can ask what it expects.
- `class_names.txt`: one name per line, line i = class i, from `--hierarchy` or `--imagenet_dictionary`,
  else the network's own (its run directory's `class_names.txt`), else the class indices, as
  tools/image_classification.py reads them;
- `export.json`: what was exported (checkpoint, architecture, head, the input contract, files).

tools/convert_checkpoint.py stays a separate tool: it writes a TF1 checkpoint in OUR checkpoint format,
an input of training (`--init_checkpoint`) rather than a deliverable, while this tool writes the
formats for use elsewhere, all at once.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import keras
import tensorflow as tf
from absl import app, flags, logging

from data import command_line, fileio
from data.pixels import images, preprocessing
from models import input_contract, portable, pretrained, resnet
from tools import image_classification, serving_input  # the class names and head rule of the tools

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"
WEIGHTS_FILE = "model.weights.h5"
NAMES_FILE = "class_names.txt"
MANIFEST_FILE = "export.json"
SIGNATURE_INPUT = "image_bytes"
CONTRACT_SIGNATURE = "input_contract"


class _Serving(tf.Module):
    """The SavedModel's root: the network (its variables) and the serving function."""

    def __init__(
        self,
        model: keras.Model,
        *,
        activation: str,
        contract: input_contract.InputContract,
        max_pixels: int,
    ):
        super().__init__()
        self.network = resnet.with_features(model)
        score_fn = tf.sigmoid if activation == "sigmoid" else tf.nn.softmax
        image_size, names = contract.image_size, list(contract.class_names or ())

        @tf.function(input_signature=[])
        def describe() -> dict[str, tf.Tensor]:
            return {
                "image_size": tf.constant(image_size, tf.int32),
                "transform": tf.constant(contract.transform),
                "class_names": tf.constant(names, tf.string, shape=[len(names)]),
                "max_pixels": tf.constant(max_pixels, tf.int64),
            }

        self.describe = describe

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SIGNATURE_INPUT)])
        def serve(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
            indices, images, errors = serving_input.decode_batch(
                image_bytes, transform=contract.transform, image_size=image_size, max_pixels=max_pixels
            )
            outputs = self.network(images, training=False)
            rows = tf.shape(image_bytes, out_type=tf.int64)[:1]

            def per_image(values: tf.Tensor) -> tf.Tensor:  # the valid images' rows; zeros for the others
                shape = tf.concat([rows, tf.shape(values, out_type=tf.int64)[1:]], axis=0)
                return tf.scatter_nd(indices[:, tf.newaxis], values, shape)

            return {
                "probabilities": per_image(score_fn(outputs["logits"])),
                "features": per_image(outputs["features"]),
                "valid": tf.equal(errors, ""),
                "error": errors,
            }

        self.serve = serve


def export(
    checkpoint: str,
    output_dir: str,
    *,
    head: str = "auto",
    transform: str | None = None,
    image_size: int | None = None,
    hierarchy: str = "",
    imagenet_dictionary: str = "",
    depth: int | None = None,
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
) -> dict:
    """Writes the files listed in the module docstring into `output_dir` and returns the manifest.

    Args:
      checkpoint: ours (run directory or prefix) or a released TF1 checkpoint prefix.
      output_dir: created if missing; existing files of the same names are replaced.
      head: `auto`, `sigmoid` or `softmax`: the SavedModel's `probabilities`.
      transform: the pre-processing inside the SavedModel (`data.pixels.preprocessing.TRANSFORMS`); None: the
        checkpoint's input contract's (`models.architecture.checkpoint_contract`).
      image_size: the network's input side in the SavedModel; None: the contract's (another is warned about).
      hierarchy: the ML-Images hierarchy file, for the class names (default: the contract's, else indices).
      imagenet_dictionary: the release's ImageNet dictionary, for the class names.
      depth: the expected depth (None: what the checkpoint holds).
      max_pixels: the SavedModel refuses an image whose decode or transform would hold more pixels
        (checked from its header; 0: no limit).

    Raises:
      ValueError: a bad checkpoint (`models.checkpoint_files.CheckpointError`), transform, head or names file.
    """
    if transform is not None:
        preprocessing.get_transform(transform)  # an unknown name fails before the checkpoint is read
    model, info = pretrained.load_model(checkpoint, depth=depth)  # past a damaged latest one
    activation = image_classification.resolve_head(head, info.num_classes)
    names = image_classification.load_class_names(
        imagenet_dictionary=imagenet_dictionary,
        hierarchy=hierarchy,
        num_classes=info.num_classes,
        default=info.contract.class_names,
    )
    names_source = (
        hierarchy or imagenet_dictionary or (info.contract.source if info.contract.class_names else "indices")
    )
    transform, image_size = info.contract.settings(transform=transform, image_size=image_size)
    contract = input_contract.InputContract(
        image_size=image_size, transform=transform, class_names=tuple(names), source=output_dir
    )
    os.makedirs(output_dir, exist_ok=True)
    standard = portable.standard_layers(model)  # loads with Keras alone: no class of ours in the file
    standard.save(os.path.join(output_dir, KERAS_FILE))
    input_contract.write_keras_file(os.path.join(output_dir, KERAS_FILE), contract)
    standard.save_weights(os.path.join(output_dir, WEIGHTS_FILE))
    serving = _Serving(model, activation=activation, contract=contract, max_pixels=max_pixels)
    saved_model = os.path.join(output_dir, SAVED_MODEL_DIR)
    signatures = {"serving_default": serving.serve, CONTRACT_SIGNATURE: serving.describe}
    tf.saved_model.save(serving, saved_model, signatures=signatures)
    fileio.write_text(os.path.join(output_dir, NAMES_FILE), "".join(name + "\n" for name in names))
    manifest = {
        "checkpoint": info.path,
        "checkpoint_kind": info.kind,
        "depth": info.depth,
        "base_width": info.base_width,
        "num_classes": info.num_classes,
        "feature_dim": int(model.get_layer(resnet.FEATURE_LAYER).output.shape[-1]),
        "probabilities": activation,
        "transform": transform,
        "image_size": image_size,
        "class_names": names_source,
        "input_contract": contract.to_json(),
        "files": [KERAS_FILE, WEIGHTS_FILE, SAVED_MODEL_DIR, NAMES_FILE],
        "max_pixels": max_pixels,
        "signature": {
            "inputs": {SIGNATURE_INPUT: "string[N]"},
            "outputs": {
                "probabilities": "float32[N, C]",
                "features": "float32[N, D]",
                "valid": "bool[N]",
                "error": "string[N]",
            },
        },
    }
    fileio.write_json(os.path.join(output_dir, MANIFEST_FILE), manifest, indent=2)
    logging.info("exported %s to %s", info.path, output_dir)
    return manifest


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the script's flags on `flag_values` (a fresh one runs it in-process)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "checkpoint",
        None,
        "Model: a run directory or checkpoint prefix, ours or a released TF1 checkpoint (depth, width and "
        "head size are read from it).",
        **fv,
    )
    flags.DEFINE_string(
        "output_dir", None, "Folder for model.keras, model.weights.h5, saved_model/, ...", **fv
    )
    flags.DEFINE_integer("depth", None, "Expected ResNet depth; default: what the checkpoint holds.", **fv)
    flags.DEFINE_enum(
        "head",
        "auto",
        list(image_classification.HEADS),
        "The SavedModel's probabilities: sigmoid (multi-label head), softmax (single-label head), or auto = "
        "softmax exactly when the head has 1000 classes (ImageNet), sigmoid otherwise.",
        **fv,
    )
    flags.DEFINE_enum(
        "transform",
        None,
        sorted(preprocessing.TRANSFORMS),
        "Pre-processing inside the SavedModel; default: the network's (its run's evaluation transform; demo "
        "for a released checkpoint). demo = the release's tools' (shorter side 256/224 x S, centre crop S; "
        "with the EXIF orientation); reference = its evaluation transform (central 80% crop, resize); full = "
        "the whole image resized.",
        **fv,
    )
    flags.DEFINE_integer(
        "image_size",
        None,
        "The SavedModel's input side (the crop side); default: the network's (the size its checkpoint was "
        "trained at; 224 for a released checkpoint). Another size is allowed, with a warning.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "max_pixels",
        images.DEFAULT_MAX_PIXELS,
        "The SavedModel refuses (valid=false, with the reason in `error`) an image whose decode or transform "
        "would hold more pixels, checked from its header before any pixel is decoded (the tools' limit; 0: "
        "none).",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_string(
        "hierarchy",
        None,
        "Class names: the ML-Images dictionary_and_semantic_hierarchy.txt (11,166).",
        **fv,
    )
    flags.DEFINE_string(
        "imagenet_dictionary",
        None,
        "Class names: the release's imagenet2012_dictionary.txt (1000 classes).",
        **fv,
    )
    flags.mark_flags_as_required(["checkpoint", "output_dir"], **fv)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    try:
        manifest = export(
            f.checkpoint,
            fileio.user_path(f.output_dir),
            head=f.head,
            transform=f.transform,
            image_size=f.image_size,
            hierarchy=f.hierarchy or "",
            imagenet_dictionary=f.imagenet_dictionary or "",
            depth=f.depth,
            max_pixels=f.max_pixels,
        )
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        raise command_line.error(__file__, e) from None
    print(
        f"ResNet-{manifest['depth']} ({manifest['num_classes']} classes, {manifest['probabilities']}, "
        f"transform {manifest['transform']} at {manifest['image_size']}) -> {f.output_dir}"
    )


if __name__ == "__main__":
    command_line.run(main, define_flags, script=__file__)
