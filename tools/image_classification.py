r"""Top-k classes of image files from a checkpoint, the release's `image_classification.py` done again.

    python tools/image_classification.py --checkpoint ckpt-resnet101-mlimages-imagenet/model.ckpt \
        --imagenet_dictionary data/imagenet2012_dictionary.txt --image_list im_list_for_classification.txt
    python tools/image_classification.py --checkpoint runs/pretrain \
        --hierarchy data/dictionary_and_semantic_hierarchy.txt --topk 10 photo1.jpg photo2.png

Images come as arguments and/or `--image_list` (one file per line, the first field; see
`data.pixels.image_files.read_image_list`); unusable files (missing, truncated, not an image, over `--max_pixels`)
are reported with the reason on stderr and in the JSON and skipped. A progress bar over the files
(images, rate, ETA) goes to stderr; `--noprogress` hides it. The checkpoint is ours or a released TF1
one (`models.pretrained.load_model`).

Scores (`--head`): `sigmoid` gives independent per-class probabilities (the multi-label ML-Images head),
`softmax` a distribution over the classes (the single-label ImageNet head). `auto` picks softmax exactly
when the head has 1000 classes (ImageNet-1k, as the release's demo does for its fine-tuned checkpoint) and
sigmoid for any other size (11,166 ML-Images classes or another multi-label head).

Class names: `--imagenet_dictionary` reads the release's `imagenet2012_dictionary.txt` (`index<TAB>words`;
in the released file the synonyms' words are all TAB separated, so the name shown is every field after
the index joined by spaces; the release printed only the first field, e.g. "great" for class 2);
`--hierarchy` reads the ML-Images `dictionary_and_semantic_hierarchy.txt` (`data.labels.hierarchy`). Without
either, the network's own class names are used where its run directory has them (`class_names.txt`,
models/input_contract.py), else the indices. The name count must equal the head size.

Pre-processing (`--transform`, `--image_size`): by default the network's input contract (its run's image
size and evaluation transform; for a released checkpoint the release's tools' input, `demo` at 224);
another size than the network's is warned about. `demo` is the release's tools' transform, as their OpenCV
code makes the network input (`cv.imread`: accurate IDCT and the EXIF orientation; shorter side to 256 with
`cv.resize`, centre crop 224, scaled to [-1, 1]; `data.pixels.preprocessing.demo_transform`); `reference` its
evaluation transform (central 80 % crop, resize); `full` the whole image resized (the demo recipe's).

Output (`--output_format`): `text` (default) is one `rank. score  [index] name` line per class under each
file; `release` is the layout of the release's `label_pred.txt`: per image `+++ the predictions of PATH is:`
then one `INDEX NAME: SCORE` line per class (score with 3 decimals), and `open pic PATH failed` in place of
an unreadable image. (The release's names are only the first TAB field of its dictionary line, and its
scores always a softmax; here the names are those shown by `text` and the scores follow `--head`.) The text
goes to `--output` (atomically) or stdout.
"""

from __future__ import annotations

import dataclasses
import sys
from collections.abc import Sequence

import keras
import tensorflow as tf
from absl import flags, logging

from data import command_line, fileio
from data.labels import hierarchy as hierarchy_lib
from data.pixels import image_files, preprocessing
from data.pixels import images as images_lib
from models import pretrained
from training import cli, tf_logs

HEADS = ("auto", "sigmoid", "softmax")
OUTPUT_FORMATS = ("text", "release")


@dataclasses.dataclass(frozen=True)
class Prediction:
    """One image's top-k classes, best first."""

    path: str
    indices: tuple[int, ...]
    scores: tuple[float, ...]


def resolve_head(head: str, num_classes: int) -> str:
    """`sigmoid` or `softmax`; `auto` is softmax exactly for a 1000-class (ImageNet) head."""
    if head not in HEADS:
        raise ValueError(f"head must be one of {HEADS}, got {head!r}")
    return pretrained.default_activation(num_classes) if head == "auto" else head


def load_imagenet_dictionary(path: str) -> list[str]:
    """Names by class index from `imagenet2012_dictionary.txt` (`index<TAB>name fields...`).

    Raises:
      ValueError: a line without an integer index, or indices that are not exactly 0..N-1.
    """
    names: dict[int, str] = {}
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            fields = line.rstrip("\r\n").split("\t")
            if not line.strip():
                continue
            try:
                index = int(fields[0])
            except ValueError:
                raise ValueError(
                    f"{path}:{line_no}: expected `index<TAB>name`, got {line.strip()!r}"
                ) from None
            if index in names:
                raise ValueError(f"{path}:{line_no}: class {index} listed twice")
            names[index] = " ".join(field.strip() for field in fields[1:] if field.strip())
    if sorted(names) != list(range(len(names))):
        raise ValueError(f"{path}: class indices are not 0..{len(names) - 1}")
    return [names[i] for i in range(len(names))]


def load_class_names(
    *,
    imagenet_dictionary: str = "",
    hierarchy: str = "",
    num_classes: int,
    default: Sequence[str] | None = None,
) -> list[str]:
    """Class names from one of the two dictionaries, else `default` (e.g. the network's input contract's),
    else the indices; checked against the head size.

    Raises:
      ValueError: both dictionaries, an unreadable one, or a name count other than `num_classes`.
    """
    if imagenet_dictionary and hierarchy:
        raise ValueError("give --imagenet_dictionary or --hierarchy, not both")
    if imagenet_dictionary:
        names, source = load_imagenet_dictionary(imagenet_dictionary), imagenet_dictionary
    elif hierarchy:
        names, source = list(hierarchy_lib.load_hierarchy(hierarchy).names), hierarchy
    elif default is not None:
        names, source = list(default), "the network's class names"
    else:
        return [str(i) for i in range(num_classes)]
    if len(names) != num_classes:
        raise ValueError(f"{source} names {len(names)} classes but the checkpoint's head has {num_classes}")
    return names


def classify(
    model: keras.Model,
    paths: Sequence[str],
    *,
    head: str,
    topk: int,
    transform: str = "demo",
    image_size: int = 224,
    batch_size: int = 32,
    max_pixels: int = images_lib.DEFAULT_MAX_PIXELS,
    show_progress: bool = False,
) -> tuple[list[Prediction], list[image_files.SkippedImage]]:
    """The top-k classes and scores of every readable image, in input order.

    Args:
      model: a logits model (`models.pretrained.load_model`).
      paths: image files.
      head: `sigmoid` or `softmax` (see `resolve_head`).
      topk: classes per image (at most the head size).
      transform: a name of `data.pixels.preprocessing.TRANSFORMS` (`demo`, `reference`, `full`).
      image_size: the model's input side.
      batch_size: images per forward pass.
      max_pixels: larger images are skipped (0: only Pillow's own limit, about 179 MP).
      show_progress: a tqdm bar over the files (images, rate, ETA) on stderr (`--progress`).

    Returns:
      (predictions of the readable images, the skipped files with the reason).
    """
    num_classes = model.outputs[0].shape[-1]
    if not 1 <= topk <= num_classes:
        raise ValueError(f"topk must be in [1, {num_classes}], got {topk}")
    activation = tf.sigmoid if resolve_head(head, num_classes) == "sigmoid" else tf.nn.softmax

    @tf.function(input_signature=[tf.TensorSpec([None, image_size, image_size, 3], tf.float32)])
    def top(images):
        scores = activation(tf.cast(model(images, training=False), tf.float32))
        return tf.math.top_k(scores, k=topk)  # ties: lower class index first

    preprocess = preprocessing.file_transform(transform, image_size=image_size)
    predictions: list[Prediction] = []
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
        scores, indices = (t.numpy() for t in top(images))
        for path, idx, score in zip(batch_paths, indices, scores, strict=True):
            predictions.append(Prediction(path, tuple(int(i) for i in idx), tuple(float(s) for s in score)))
    return predictions, skipped


def format_predictions(predictions: Sequence[Prediction], names: Sequence[str]) -> str:
    """Readable text: the file, then one `rank. score  [index] name` line per class."""
    lines = []
    for prediction in predictions:
        lines.append(prediction.path)
        for rank, (index, score) in enumerate(zip(prediction.indices, prediction.scores, strict=True), 1):
            lines.append(f"  {rank:>2}. {score:.4f}  [{index}] {names[index]}")
    return "\n".join(lines)


def format_release(
    paths: Sequence[str],
    predictions: Sequence[Prediction],
    skipped: Sequence[image_files.SkippedImage],
    names: Sequence[str],
) -> str:
    """The release's `label_pred.txt` layout, in input order (see the module docstring).

    `predictions` and `skipped` are both in input order (as `classify` returns them), so walking `paths`
    puts each `open pic PATH failed` line where the release would have printed it.
    """
    lines = []
    predicted, failed = iter(predictions), iter(skipped)
    next_prediction, next_failed = next(predicted, None), next(failed, None)
    for path in paths:
        if next_prediction is not None and next_prediction.path == path:
            lines.append(f"+++ the predictions of {path} is:")
            for index, score in zip(next_prediction.indices, next_prediction.scores, strict=True):
                lines.append(f"{index} {names[index]}: {score:.3f}")
            next_prediction = next(predicted, None)
        elif next_failed is not None and next_failed.path == path:
            lines.append(f"open pic {path} failed")
            next_failed = next(failed, None)
    return "\n".join(lines)


def predictions_json(
    predictions: Sequence[Prediction],
    skipped: Sequence[image_files.SkippedImage],
    names: Sequence[str],
    **settings,
) -> dict:
    """The JSON report: per image its top-k (index, name, score), the skipped files, the settings."""
    return {
        "images": [
            {
                "image": p.path,
                "predictions": [
                    {"index": i, "name": names[i], "score": s}
                    for i, s in zip(p.indices, p.scores, strict=True)
                ],
            }
            for p in predictions
        ],
        "skipped": [{"image": s.path, "reason": s.reason} for s in skipped],
        "settings": settings,
    }


FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the script's flags on `flag_values` (a fresh one runs it in-process)."""
    fv = {"flag_values": flag_values}
    cli.define_inference_flags(flag_values)
    flags.DEFINE_string(
        "imagenet_dictionary",
        None,
        "Class names: the release's imagenet2012_dictionary.txt (1000 classes).",
        **fv,
    )
    flags.DEFINE_string(
        "hierarchy",
        None,
        "Class names: the ML-Images dictionary_and_semantic_hierarchy.txt (11,166 classes).",
        **fv,
    )
    flags.DEFINE_enum(
        "head",
        "auto",
        list(HEADS),
        "Scores: sigmoid (multi-label head), softmax (single-label head), or auto = softmax exactly when "
        "the head has 1000 classes (ImageNet), sigmoid otherwise.",
        **fv,
    )
    flags.DEFINE_integer("topk", 5, "Classes shown per image.", lower_bound=1, **fv)
    flags.DEFINE_string(
        "output_json", None, "Also write the predictions and the skipped files here as JSON.", **fv
    )
    flags.DEFINE_enum(
        "output_format",
        "text",
        list(OUTPUT_FORMATS),
        "text: one `rank. score  [index] name` line per class under each file; release: the layout of the "
        "release's label_pred.txt (`+++ the predictions of PATH is:`, then `INDEX NAME: SCORE`; `open pic "
        "PATH failed` for an unreadable image).",
        **fv,
    )
    flags.DEFINE_string(
        "output",
        None,
        "Write the predictions (in --output_format) to this file instead of stdout.",
        **fv,
    )
    flags.mark_flag_as_required("checkpoint", **fv)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    try:
        paths, model, info = cli.inference_inputs(argv[1:], f)
        names = load_class_names(
            imagenet_dictionary=f.imagenet_dictionary or "",
            hierarchy=f.hierarchy or "",
            num_classes=info.num_classes,
            default=info.contract.class_names,
        )
        head = resolve_head(f.head, info.num_classes)
        settings = cli.inference_settings(f, info.contract)
        predictions, skipped = classify(
            model, paths, head=head, topk=min(f.topk, info.num_classes), **settings
        )
    except (ValueError, OSError) as e:  # CheckpointError is a ValueError
        raise command_line.error(__file__, e) from None
    if f.output_format == "release":
        text = format_release(paths, predictions, skipped, names)
    else:
        text = format_predictions(predictions, names)
    if f.output:
        fileio.write_text(f.output, text + "\n")
    else:
        print(text)
    if skipped:  # each was logged as a warning, with its reason, when it was read
        print(f"skipped {len(skipped)} of {len(paths)} images (unreadable or too large)", file=sys.stderr)
    logging.info("classified %d images, skipped %d (head %s)", len(predictions), len(skipped), head)
    if f.output_json:
        report = predictions_json(
            predictions,
            skipped,
            names,
            checkpoint=info.path,
            head=head,
            topk=f.topk,
            transform=settings["transform"],
            image_size=settings["image_size"],
            max_pixels=f.max_pixels,
        )
        fileio.write_json(f.output_json, report, indent=2)
    if not predictions:
        raise command_line.error(__file__, f"none of the {len(paths)} images could be read")


if __name__ == "__main__":
    tf_logs.quiet_tensorflow()  # TensorFlow's own INFO lines (e.g. on every save) stay out of the output
    define_flags()
    flags.adopt_module_key_flags(cli)  # --help lists the shared flags of training/cli.py too
    command_line.run(main, script=__file__)
