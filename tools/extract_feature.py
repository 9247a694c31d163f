r"""Pooled ResNet features of image files, the release's `extract_feature.py` done again.

    python tools/extract_feature.py --checkpoint ckpt-resnet101-mlimages/model.ckpt \
        --image_list images.txt --output features.npz
    python tools/extract_feature.py --checkpoint runs/pretrain --crop ten_crop --format txt \
        --output features.txt photo1.jpg photo2.jpg

The feature is the output of the `global_pool` layer (BN-ReLU-global average pool, 2048-d for the reference
ResNets, `32 x base_width` in general), read through `models.resnet.with_features`, so the classifier and
the extractor share one model definition. The checkpoint is ours or a released TF1 one; images come as
arguments and/or `--image_list`; unusable files (missing, truncated, not an image, over `--max_pixels`)
are reported with the reason on stderr and skipped (their rows are simply absent: use the names saved with
`npz` / `txt` to align rows with files). A progress bar over the files (images, rate, ETA) goes to
stderr; `--noprogress` hides it.

Crops (`--crop`):
- `center`: one view per image through `--transform` at `--image_size` (by default the network's input
  contract, models/input_contract.py; for a released checkpoint `demo`, the release's tools' input:
  OpenCV's decode with the EXIF orientation, shorter side to 256 and centre crop 224; `reference`: central
  80 % crop and resize; `full`: the whole image resized).
- `ten_crop`: the demo geometry's shorter-side resize, then the four corner crops and the centre crop
  and the horizontal flip of each; the feature is the mean of the 10 crops' pooled features. (The
  release's `10crop` branch, which its script never enables, would have averaged the numbers of the
  first crop's feature instead: `np.mean(np.squeeze(feats[0]), axis=0)`.) It is the demo geometry
  whatever the network's transform; an explicit `--transform` other than `demo` is refused.

Output formats (`--format`):
- `npz` (default): `features` float32[N, D] and `names` (the image paths as given), row-aligned.
- `npy`: the float32[N, D] array only.
- `txt`: the release's text layout as we read it: one line per image, the file name, a TAB, then the D
  values separated by single spaces (`%.9g`, which round-trips float32). The release wrote
  `path<TAB>second field of the list line<TAB>values`; that middle field (a label in its lists) does not
  exist for plain file lists, so it is left out.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf
from absl import flags, logging

from data import command_line, fileio
from data.pixels import image_files, preprocessing
from data.pixels import images as images_lib
from models import resnet
from training import cli, tf_logs

CROPS = ("center", "ten_crop")
FORMATS = ("npz", "npy", "txt")
NUM_TEN_CROPS = 10


def ten_crop_transform(
    image_bytes: tf.Tensor,
    *,
    image_size: int = 224,
    resize_side: int | None = None,
    orientation: tf.Tensor | int = 1,
) -> tf.Tensor:
    """The 10 crops of one encoded image: 4 corners and the centre, then the horizontal flip of each.

    The resize is `data.pixels.preprocessing.demo_resize`, the one `demo_transform` uses, so crop 4 (the centre)
    equals `demo_transform`'s output; a test checks that.

    Returns:
      float32[10, S, S, 3] in [-1, 1], in the order top-left, top-right, bottom-left, bottom-right, centre,
      then the same five flipped left-right.
    """
    resized, new_hw = preprocessing.demo_resize(
        image_bytes, image_size=image_size, resize_side=resize_side, orientation=orientation
    )
    bottom, right = new_hw[0] - image_size, new_hw[1] - image_size
    offsets = [(0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2)]
    crops = tf.stack(
        [tf.slice(resized, [top, left, 0], [image_size, image_size, 3]) for top, left in offsets]
    )
    crops = tf.concat([crops, tf.reverse(crops, axis=[2])], axis=0)
    return tf.ensure_shape((crops - 0.5) * 2.0, [NUM_TEN_CROPS, image_size, image_size, 3])


def extract_features(
    model: keras.Model,
    paths: Sequence[str],
    *,
    crop: str = "center",
    transform: str = "demo",
    image_size: int = 224,
    batch_size: int = 32,
    max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
    show_progress: bool = False,
) -> tuple[list[str], np.ndarray, list[image_files.SkippedImage]]:
    """The pooled feature of every readable image, in input order.

    Args:
      model: a model from `build_resnet` (e.g. `models.pretrained.load_model`); its `global_pool` is read.
      paths: image files.
      crop: `center` or `ten_crop` (see the module docstring).
      transform: a name of `data.pixels.preprocessing.TRANSFORMS`, for `center` (`ten_crop` is the demo geometry).
      image_size: crop side.
      batch_size: images per forward pass (times 10 crops for `ten_crop`).
      max_pixels: larger images are skipped (0: only Pillow's own limit, about 179 MP).
      show_progress: a tqdm bar over the files (images, rate, ETA) on stderr (`--progress`).

    Returns:
      (names of the readable images, float32[N, D] features, the skipped files with the reason).
    """
    if crop not in CROPS:
        raise ValueError(f"crop must be one of {CROPS}, got {crop!r}")
    if crop == "ten_crop" and transform != "demo":
        raise ValueError("ten_crop uses the demo transform's resize (--transform=demo)")
    features_model = resnet.with_features(model)

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def pooled(images):
        return features_model(images, training=False)["features"]

    if crop == "center":
        preprocess = preprocessing.file_transform(transform, image_size=image_size)
    else:

        def preprocess(image_bytes: tf.Tensor, orientation: tf.Tensor) -> tf.Tensor:
            return ten_crop_transform(image_bytes, image_size=image_size, orientation=orientation)

    names: list[str] = []
    rows: list[np.ndarray] = []
    skipped: list[image_files.SkippedImage] = []
    batches = image_files.iter_image_batches(
        paths,
        preprocess=preprocess,
        batch_size=batch_size,
        skipped=skipped,
        max_pixels=max_pixels,
        show_progress=show_progress,
    )
    for batch_paths, images in batches:
        features = pooled(images.reshape(-1, image_size, image_size, 3)).numpy()
        if crop == "ten_crop":  # [B * 10, D] -> the mean over each image's 10 crops
            features = features.reshape(len(batch_paths), NUM_TEN_CROPS, -1).mean(axis=1, dtype=np.float64)
        names += batch_paths
        rows.append(features.astype(np.float32))
    dim = model.get_layer(resnet.FEATURE_LAYER).output.shape[-1]
    return names, np.concatenate(rows) if rows else np.zeros((0, dim), np.float32), skipped


def save_features(path: str, names: Sequence[str], features: np.ndarray, *, fmt: str) -> None:
    """Writes the features as `npz` (with names), `npy` or `txt` (see the module docstring), atomically."""
    if fmt not in FORMATS:
        raise ValueError(f"format must be one of {FORMATS}, got {fmt!r}")
    if fmt == "txt":
        with fileio.atomic_write(path, "w") as f:
            for name, row in zip(names, features, strict=True):
                f.write(name + "\t" + " ".join(f"{v:.9g}" for v in row) + "\n")
    else:
        with fileio.atomic_write(path, "wb") as f:  # a file object: numpy would append its own extension
            if fmt == "npy":
                np.save(f, features)
            else:
                np.savez(f, features=features, names=np.array(list(names), dtype=str))


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the script's flags on `flag_values` (a fresh one runs it in-process)."""
    fv = {"flag_values": flag_values}
    cli.define_inference_flags(flag_values)
    flags.DEFINE_string("output", None, "Where the features go (see --format).", **fv)
    flags.DEFINE_enum(
        "format",
        "npz",
        list(FORMATS),
        "npz: `features` [N, D] and `names`; npy: the [N, D] array only; txt: the release's text layout, "
        "`name<TAB>v1 v2 ... vD` per line.",
        **fv,
    )
    flags.DEFINE_enum(
        "crop",
        "center",
        list(CROPS),
        "center: one view through --transform; ten_crop: 4 corners + centre and their horizontal flips "
        "(demo resize), the 10 features averaged.",
        **fv,
    )
    flags.mark_flags_as_required(["checkpoint", "output"], **fv)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    try:
        paths, model, info = cli.inference_inputs(argv[1:], f)
        contract = info.contract
        if f.crop == "ten_crop" and f.transform is None:  # its own geometry: the demo resize, then crops
            contract = dataclasses.replace(contract, transform="demo")
        settings = cli.inference_settings(f, contract)
        names, features, skipped = extract_features(model, paths, crop=f.crop, **settings)
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        raise command_line.error(__file__, e) from None
    if skipped:  # each was logged as a warning when it was read
        print(f"skipped {len(skipped)} of {len(paths)} images (unreadable or too large)", file=sys.stderr)
    if not names:
        raise command_line.error(__file__, f"none of the {len(paths)} images could be read; nothing written")
    save_features(f.output, names, features, fmt=f.format)
    logging.info("wrote %d x %d features to %s (skipped %d)", *features.shape, f.output, len(skipped))
    print(f"{len(names)} images x {features.shape[1]} features -> {f.output} ({len(skipped)} skipped)")


if __name__ == "__main__":
    tf_logs.quiet_tensorflow()  # TensorFlow's own INFO lines (e.g. on every save) stay out of the output
    define_flags()
    flags.adopt_module_key_flags(cli)  # --help lists the shared flags of training/cli.py too
    command_line.run(main, script=__file__)
