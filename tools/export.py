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
- `saved_model/`: a TF SavedModel whose `serving_default` signature takes `image_bytes`, a 1-D string
  tensor of encoded images (JPEG, PNG, GIF, BMP), and returns `probabilities` [N, C] and `features` [N, D]
  (the pooled `global_pool` feature: 2048-d for the released ResNet-101, 32 x base width in general).
  The pre-processing is inside the graph (`tf.map_fn` over `data.pixels.preprocessing`'s `--transform`, pure TF
  ops), so a server needs nothing of this project. `probabilities` follow `--head`: `auto` is softmax for a
  1000-class head (ImageNet) and sigmoid for any other (the 11,166-class multi-label head), as in
  tools/image_classification.py. As in the tools (`demo`: `cv.imread`), a JPEG's EXIF orientation is
  applied, read from its header by TF ops (`exif_orientation`). Images the tools first convert through
  Pillow (16-bit PNG, CMYK JPEG without the Adobe marker, WebP, TIFF) are left to TF's own decoder.
  Its second signature, `input_contract`, takes nothing and returns `image_size`, `transform` and
  `class_names` (string[C], empty when unknown), so a client can ask the server what it expects.
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
import sys
from collections.abc import Sequence

import keras
import tensorflow as tf
from absl import app, flags, logging

if __package__ in (None, ""):  # run as a script: tools/ is not an installed package (as tools/benchmark.py)
    sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data import fileio  # noqa: E402  (after the path set-up above)
from data.pixels import preprocessing
from models import input_contract, portable, pretrained, resnet  # noqa: E402
from tools import image_classification  # noqa: E402  (the class names and the head rule of the tools)

SAVED_MODEL_DIR = "saved_model"
KERAS_FILE = "model.keras"
WEIGHTS_FILE = "model.weights.h5"
NAMES_FILE = "class_names.txt"
MANIFEST_FILE = "export.json"
SIGNATURE_INPUT = "image_bytes"
CONTRACT_SIGNATURE = "input_contract"


_EXIF_MARK = "Exif\x00\x00"  # the APP1 payload's start; the TIFF header follows it
_EXIF_SEARCH_BYTES = 65536  # APP1 (at most 64 KB) comes before the image data
_ORIENTATION_TAG = 0x0112


def exif_orientation(image_bytes: tf.Tensor) -> tf.Tensor:
    """The EXIF orientation (int32 1..8) of an encoded JPEG, in TF ops; 1 when absent, invalid or not a JPEG.

    What `data.pixels.preprocessing.load_image_file` reads with Pillow for the tools, so that the SavedModel
    applies the orientation as they (and `cv.imread`) do. Reads the TIFF header after the first
    `Exif\0\0` in the first 64 KB (byte order `II` or `MM`), the IFD0 offset, and the entries of IFD0,
    all as vectorised gathers (no loop); any read past the end yields 1.
    """
    head = tf.strings.substr(image_bytes, 0, _EXIF_SEARCH_BYTES)
    parts = tf.strings.split(head, sep=_EXIF_MARK, maxsplit=1)
    found = tf.logical_and(tf.io.is_jpeg(image_bytes), tf.size(parts) == 2)
    tiff = tf.cond(found, lambda: parts[-1], lambda: tf.constant(b"")) + b"\x00" * 16  # room for reads
    data = tf.cast(tf.io.decode_raw(tiff, tf.uint8), tf.int32)
    little = tf.equal(tf.strings.substr(tiff, 0, 2), "II")

    def uint(at: tf.Tensor, size: int) -> tf.Tensor:  # an unsigned integer of `size` bytes at `at`
        values = tf.gather(data, at[..., tf.newaxis] + tf.range(size))
        order = tf.where(little, 256 ** tf.range(size), 256 ** tf.range(size - 1, -1, -1))
        return tf.reduce_sum(values * order, axis=-1)

    length = tf.shape(data)[0] - 16
    ifd = uint(tf.constant(4), 4)
    valid = tf.logical_and(ifd >= 8, ifd + 2 <= length)
    ifd = tf.where(valid, ifd, 0)
    count = tf.clip_by_value(tf.where(valid, uint(ifd, 2), 0), 0, tf.maximum(length - ifd - 2, 0) // 12)
    entries = ifd + 2 + 12 * tf.range(count)
    values = tf.where(tf.equal(uint(entries, 2), _ORIENTATION_TAG), uint(entries + 8, 2), 0)
    value = tf.reduce_max(tf.concat([values, [0]], axis=0))
    return tf.where(tf.logical_and(value >= 1, value <= 8), value, 1)


class _Serving(tf.Module):
    """The SavedModel's root: the network (its variables) and the serving function."""

    def __init__(self, model: keras.Model, *, activation: str, contract: input_contract.InputContract):
        super().__init__()
        self.network = resnet.with_features(model)
        score_fn = tf.sigmoid if activation == "sigmoid" else tf.nn.softmax
        image_size, names = contract.image_size, list(contract.class_names or ())
        transform_fn = preprocessing.file_transform(contract.transform, image_size=image_size)
        image_spec = tf.TensorSpec([image_size, image_size, 3], tf.float32)

        @tf.function(input_signature=[])
        def describe() -> dict[str, tf.Tensor]:
            return {
                "image_size": tf.constant(image_size, tf.int32),
                "transform": tf.constant(contract.transform),
                "class_names": tf.constant(names, tf.string, shape=[len(names)]),
            }

        self.describe = describe

        @tf.function(input_signature=[tf.TensorSpec([None], tf.string, name=SIGNATURE_INPUT)])
        def serve(image_bytes: tf.Tensor) -> dict[str, tf.Tensor]:
            images = tf.map_fn(
                lambda data: transform_fn(data, exif_orientation(data)),  # `demo` applies it
                image_bytes,
                fn_output_signature=image_spec,
            )
            outputs = self.network(images, training=False)
            return {"probabilities": score_fn(outputs["logits"]), "features": outputs["features"]}

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
) -> dict:
    """Writes the files listed in the module docstring into `output_dir` and returns the manifest.

    Args:
      checkpoint: ours (run directory or prefix) or a released TF1 checkpoint prefix.
      output_dir: created if missing; existing files of the same names are replaced.
      head: `auto`, `sigmoid` or `softmax`: the SavedModel's `probabilities`.
      transform: the pre-processing inside the SavedModel (`data.pixels.preprocessing.TRANSFORMS`); None: the
        checkpoint's input contract's (`models.pretrained.checkpoint_contract`).
      image_size: the network's input side in the SavedModel; None: the contract's (another is warned about).
      hierarchy: the ML-Images hierarchy file, for the class names (default: the contract's, else indices).
      imagenet_dictionary: the release's ImageNet dictionary, for the class names.
      depth: the expected depth (None: what the checkpoint holds).

    Raises:
      ValueError: a bad checkpoint (`pretrained.CheckpointError`), transform, head or names file.
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
    serving = _Serving(model, activation=activation, contract=contract)
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
        "signature": {"inputs": {SIGNATURE_INPUT: "string[N]"}, "outputs": ["probabilities", "features"]},
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
        )
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        sys.exit(f"export.py: error: {e}")
    print(
        f"ResNet-{manifest['depth']} ({manifest['num_classes']} classes, {manifest['probabilities']}, "
        f"transform {manifest['transform']} at {manifest['image_size']}) -> {f.output_dir}"
    )


if __name__ == "__main__":
    define_flags()
    app.run(main)
