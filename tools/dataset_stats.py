r"""Dataset statistics in the style of the original README, from a list file or from TFRecords.

The release's README reports, for ML-Images train: 17,609,752 images, 11,166 classes, 10,505 trainable
classes (more than 100 images), 8.72 tags per image on average and 13,843 images per class on average, with
a plot of images per class and of tags per image. This tool computes the same figures for any list or
written dataset (e.g. a subset from tools/subset.py): a short table of the headline figures on stdout, all of
them as JSON (`--output_json`), plus two PNG plots.

Definitions used here:
- a tag counts when its confidence is > 0 and >= `--min_confidence` (a dense TFRecord label cannot hold a
  confidence-0 tag, so lists and records agree);
- images per class = number of images carrying the class; trainable = strictly more than
  `--trainable_min` (100) images;
- `avg_images_per_class` divides the number of tags by the classes that have at least one image
  (`avg_images_per_class_all` divides by `num_classes`).

Both paths stream: the list is read line by line (per-class counters, O(classes) memory) and TFRecords
are parsed in batches with `data.records.schema.parse_records` (TensorFlow is imported only for that path).
matplotlib is optional (`pip install .[plots]`); without it the JSON is still written.

Usage:
  python tools/dataset_stats.py --list train_im_list.txt --num_classes 11166 --output_json stats.json \
      --plot_dir plots/
  python tools/dataset_stats.py --data_dir tfrecords/ --prefix train --output_json stats.json
  python tools/dataset_stats.py --tfrecords 'ref/*.tfrecords' --label_format dense --num_classes 11166
"""

from __future__ import annotations

import array
import glob
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
from absl import app, flags, logging

from data import command_line, fileio
from data.labels import annotations

CONFIDENCE_BINS = 101  # Confidences are histogrammed at 0.01 resolution: bounded memory for any input.


class StatsAccumulator:
    """Per-class and per-image counters, fed in vectorised blocks.

    Args:
      num_classes: Known class count (None: grows to the largest index seen).
    """

    def __init__(self, num_classes: int | None = None):
        self.num_classes = num_classes
        self.images_per_class = np.zeros(num_classes or 0, dtype=np.int64)
        self.tags_histogram = np.zeros(1, dtype=np.int64)
        self.confidence_histogram = np.zeros(CONFIDENCE_BINS, dtype=np.int64)

    def add(self, tags_per_image: np.ndarray, class_indices: np.ndarray, confidences: np.ndarray) -> None:
        """Adds a block of images: their tag counts and the concatenated (class, confidence) of their tags."""
        per_image = np.bincount(np.asarray(tags_per_image, dtype=np.int64))
        per_class = np.bincount(
            np.asarray(class_indices, dtype=np.int64), minlength=self.images_per_class.size
        )
        self.tags_histogram = _add_padded(self.tags_histogram, per_image)
        self.images_per_class = _add_padded(self.images_per_class, per_class)
        bins = np.clip(np.rint(np.asarray(confidences, dtype=np.float64) * 100), 0, 100).astype(np.int64)
        self.confidence_histogram += np.bincount(bins, minlength=CONFIDENCE_BINS)

    def add_counts(
        self, tags_histogram: np.ndarray, images_per_class: np.ndarray, confidence_histogram: np.ndarray
    ) -> None:
        """Adds already-reduced counts (the TFRecord path reduces each batch in TensorFlow)."""
        self.tags_histogram = _add_padded(self.tags_histogram, np.asarray(tags_histogram, dtype=np.int64))
        self.images_per_class = _add_padded(
            self.images_per_class, np.asarray(images_per_class, dtype=np.int64)
        )
        self.confidence_histogram += np.asarray(confidence_histogram, dtype=np.int64)

    def result(self, *, trainable_min: int = 100) -> dict[str, Any]:
        """The statistics as a JSON-ready dict."""
        num_classes = self.num_classes or int(self.images_per_class.size)
        per_class = self.images_per_class[:num_classes]
        num_images = int(self.tags_histogram.sum())
        num_tags = int((self.tags_histogram * np.arange(self.tags_histogram.size)).sum())
        with_images = int(np.count_nonzero(per_class))
        return {
            "num_images": num_images,
            "num_classes": num_classes,
            "num_tags": num_tags,
            "avg_tags_per_image": num_tags / num_images if num_images else 0.0,
            "tags_per_image": {
                "min": int(np.flatnonzero(self.tags_histogram)[0]) if num_images else 0,
                "median": float(_histogram_median(self.tags_histogram)) if num_images else 0.0,
                "max": int(np.flatnonzero(self.tags_histogram)[-1]) if num_images else 0,
                "histogram": self.tags_histogram.tolist(),
            },
            "classes_with_images": with_images,
            "trainable_min": trainable_min,
            "trainable_classes": int(np.count_nonzero(per_class > trainable_min)),
            "avg_images_per_class": num_tags / with_images if with_images else 0.0,
            "avg_images_per_class_all": num_tags / num_classes if num_classes else 0.0,
            "median_images_per_class": float(np.median(per_class[per_class > 0])) if with_images else 0.0,
            "max_images_per_class": int(per_class.max()) if per_class.size else 0,
            "confidence_histogram": {
                f"{k / 100:g}": int(n) for k, n in enumerate(self.confidence_histogram.tolist()) if n
            },
            "images_per_class": per_class.tolist(),
        }


def _add_padded(total: np.ndarray, extra: np.ndarray) -> np.ndarray:
    if extra.size > total.size:
        total = np.pad(total, (0, extra.size - total.size))
    total[: extra.size] += extra
    return total


def _histogram_median(histogram: np.ndarray) -> float:
    """Median of the values whose counts are `histogram` (average of the two middle values if even)."""
    cumulative = np.cumsum(histogram)
    total = int(cumulative[-1])
    lo = int(np.searchsorted(cumulative, (total + 1) // 2))
    hi = int(np.searchsorted(cumulative, total // 2 + 1))
    return (lo + hi) / 2


def stats_from_list(
    path: str | os.PathLike[str],
    *,
    kind: annotations.Kind = "multi",
    num_classes: int | None = None,
    min_confidence: float = 0.0,
    trainable_min: int = 100,
    errors: annotations.ErrorLog | None = None,
    block_tags: int = 1 << 18,
) -> dict[str, Any]:
    """Statistics of a list file (any list format), streamed in blocks of about `block_tags` tags."""
    acc = StatsAccumulator(num_classes)
    # Typed arrays (8 bytes per value) rather than lists of Python objects keep the block small.
    counts = array.array("q")
    classes = array.array("q")
    confidences = array.array("d")
    log = errors if errors is not None else annotations.ErrorLog()

    def flush() -> None:
        acc.add(
            np.frombuffer(counts, np.int64),
            np.frombuffer(classes, np.int64),
            np.frombuffer(confidences, np.float64),
        )
        for buffer in (counts, classes, confidences):
            del buffer[:]

    for entry in annotations.iter_entries(path, kind=kind, num_classes=num_classes, errors=log):
        labels = ((entry.labels, 1.0),) if isinstance(entry.labels, int) else entry.labels
        n = 0
        for idx, conf in labels:
            if conf > 0 and conf >= min_confidence:
                classes.append(idx)
                confidences.append(conf)
                n += 1
        counts.append(n)
        if len(classes) >= block_tags:
            flush()
    flush()
    stats = acc.result(trainable_min=trainable_min)
    stats["source"] = os.fspath(path)
    stats["malformed_lines"] = log.count
    return stats


def stats_from_tfrecords(
    files: Sequence[str],
    *,
    label_format: str,
    num_classes: int,
    min_confidence: float = 0.0,
    trainable_min: int = 100,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Statistics of TFRecord files of any label format, parsed with `data.records.schema.parse_records`.

    Each batch is reduced inside the tf.data pipeline (per-class sums, tag-count and confidence
    histograms), so only small count vectors reach Python.
    """
    import tensorflow as tf

    from data.records import schema

    def reduce_batch(serialized: tf.Tensor) -> tuple[tf.Tensor, tf.Tensor, tf.Tensor]:
        parsed = schema.parse_records(serialized, label_format=label_format, num_classes=num_classes)
        label = parsed[schema.LABEL_KEY]
        if label_format == "int64":
            label = tf.one_hot(label, num_classes, dtype=tf.float32)
        present = (label > 0) & (label >= min_confidence)
        per_image = tf.reduce_sum(tf.cast(present, tf.int32), axis=1)
        per_class = tf.reduce_sum(tf.cast(present, tf.int64), axis=0)
        bins = tf.cast(tf.clip_by_value(tf.round(tf.boolean_mask(label, present) * 100), 0, 100), tf.int32)
        return (
            tf.math.bincount(per_image, dtype=tf.int64),
            per_class,
            tf.math.bincount(bins, minlength=CONFIDENCE_BINS, maxlength=CONFIDENCE_BINS, dtype=tf.int64),
        )

    dataset = (
        tf.data.TFRecordDataset(list(files), num_parallel_reads=tf.data.AUTOTUNE)
        .batch(batch_size)
        .map(reduce_batch, num_parallel_calls=tf.data.AUTOTUNE)
        .prefetch(2)
    )
    acc = StatsAccumulator(num_classes)
    for tags_hist, per_class, conf_hist in dataset.as_numpy_iterator():
        acc.add_counts(tags_hist, per_class, conf_hist)
    stats = acc.result(trainable_min=trainable_min)
    stats["source"] = list(files)
    stats["label_format"] = label_format
    return stats


def stats_from_data_dir(
    data_dir: str | os.PathLike[str],
    prefix: str = "train",
    *,
    min_confidence: float = 0.0,
    trainable_min: int = 100,
) -> dict[str, Any]:
    """Statistics of a split written by data/tfrecord.py, found through its manifest (format, classes)."""
    from data.records import schema

    manifest = schema.read_manifest(data_dir, prefix)
    stats = stats_from_tfrecords(
        list(manifest.files),
        label_format=manifest.label_format,
        num_classes=manifest.num_classes,
        min_confidence=min_confidence,
        trainable_min=trainable_min,
    )
    if stats["num_images"] != manifest.num_records:
        raise ValueError(f"read {stats['num_images']} records but the manifest lists {manifest.num_records}")
    stats["skipped_by_writer"] = manifest.num_skipped
    return stats


def write_plots(stats: dict[str, Any], plot_dir: str | os.PathLike[str]) -> list[str]:
    """Writes `images_per_class.png` and `tags_per_image.png`; returns their paths ([] without matplotlib)."""
    try:
        import matplotlib
    except ImportError:
        logging.warning("matplotlib is not installed (pip install .[plots]); skipping the plots")
        return []
    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    os.makedirs(plot_dir, exist_ok=True)
    paths = []
    per_class = np.sort(np.asarray(stats["images_per_class"]))[::-1]
    per_class = per_class[per_class > 0]  # log scale: classes without images are reported in the JSON
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(np.arange(1, per_class.size + 1), per_class, lw=1)
    ax.axhline(
        stats["trainable_min"], color="gray", ls="--", lw=0.8, label=f"{stats['trainable_min']} images"
    )
    ax.set(
        yscale="log",
        xlabel=f"class rank ({per_class.size:,} classes with images)",
        ylabel="images",
        title=f"Images per class ({stats['trainable_classes']:,} classes > {stats['trainable_min']})",
    )
    ax.legend()
    paths.append(os.path.join(plot_dir, "images_per_class.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)

    histogram = np.asarray(stats["tags_per_image"]["histogram"])
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.bar(np.arange(histogram.size), histogram, width=0.9)
    ax.set(
        xlabel="tags per image",
        ylabel="images",
        title=f"Tags per image (mean {stats['avg_tags_per_image']:.2f})",
    )
    paths.append(os.path.join(plot_dir, "tags_per_image.png"))
    fig.tight_layout()
    fig.savefig(paths[-1], dpi=100)
    plt.close(fig)
    return paths


def format_summary(stats: dict[str, Any]) -> str:
    """The headline figures of `stats` as a short table, in the release README's terms (its numbers for
    ML-Images train: 17,609,752 images, 11,166 classes, 10,505 trainable, 8.72 tags per image, 13,843 images
    per class)."""
    tags = stats["tags_per_image"]
    rows = [
        ("images", f"{stats['num_images']:,}"),
        (
            "classes",
            f"{stats['num_classes']:,} ({stats['classes_with_images']:,} with images, "
            f"{stats['trainable_classes']:,} trainable: with more than {stats['trainable_min']:,} images)",
        ),
        (
            "tags per image",
            f"{stats['avg_tags_per_image']:.2f} mean, {tags['median']:g} median, {tags['min']}-{tags['max']}",
        ),
        (
            "images per class",
            f"{stats['avg_images_per_class']:,.1f} mean over the classes with images "
            f"({stats['avg_images_per_class_all']:,.1f} over all), {stats['median_images_per_class']:,g} "
            f"median, {stats['max_images_per_class']:,} max",
        ),
    ]
    if stats.get("malformed_lines"):
        rows.append(("malformed lines", f"{stats['malformed_lines']:,} (skipped)"))
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"{name:<{width}}  {value}" for name, value in rows)


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    f = flag_values
    sources = sum(bool(x) for x in (f.list, f.data_dir, f.tfrecords))
    if sources != 1:
        raise app.UsageError("give exactly one of --list, --data_dir, --tfrecords")
    if f.list:
        with annotations.ErrorLog(f.bad_lines_report) as errors:
            stats = stats_from_list(
                f.list,
                kind=f.kind,
                num_classes=f.num_classes,
                min_confidence=f.min_confidence,
                trainable_min=f.trainable_min,
                errors=errors,
            )
    elif f.data_dir:
        stats = stats_from_data_dir(
            f.data_dir, f.prefix, min_confidence=f.min_confidence, trainable_min=f.trainable_min
        )
    else:
        files = sorted(glob.glob(f.tfrecords))
        if not files:
            raise command_line.error(__file__, f"no files match {f.tfrecords}")
        if f.num_classes is None:
            raise app.UsageError("--tfrecords needs --num_classes (and --label_format)")
        stats = stats_from_tfrecords(
            files,
            label_format=f.label_format,
            num_classes=f.num_classes,
            min_confidence=f.min_confidence,
            trainable_min=f.trainable_min,
        )
    if f.output_json:
        fileio.write_json(f.output_json, stats)
    if f.plot_dir:
        write_plots(stats, f.plot_dir)
    print(format_summary(stats))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the script's flags on `flag_values` (a fresh one runs it in-process)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "list", None, "A list file (URL, ImageNet-id, image or single-label list; .gz ok).", **fv
    )
    flags.DEFINE_enum(
        "kind", "multi", ["multi", "single"], "List kind: `multi` (`path idx:conf ...`) or `single`.", **fv
    )
    flags.DEFINE_string(
        "data_dir", None, "A folder written by data/tfrecord.py (read through its manifest).", **fv
    )
    flags.DEFINE_string("prefix", "train", "With --data_dir: the split prefix.", **fv)
    flags.DEFINE_string(
        "tfrecords", None, "Glob of TFRecord files without a manifest (e.g. the reference samples).", **fv
    )
    flags.DEFINE_enum(
        "label_format", "dense", ["dense", "sparse", "int64"], "With --tfrecords: the label layout.", **fv
    )
    flags.DEFINE_integer(
        "num_classes", None, "Number of classes (11166 for ML-Images); required with --tfrecords.", **fv
    )
    flags.DEFINE_float(
        "min_confidence", 0.0, "Count a tag only if its confidence is >= this (and > 0).", **fv
    )
    flags.DEFINE_integer(
        "trainable_min", 100, "A class is trainable with strictly more images than this.", **fv
    )
    flags.DEFINE_string("output_json", None, "Write the statistics here (JSON).", **fv)
    flags.DEFINE_string(
        "plot_dir", None, "Write images_per_class.png and tags_per_image.png here (needs matplotlib).", **fv
    )
    flags.DEFINE_string(
        "bad_lines_report", None, "With --list: malformed lines are written there with the reason.", **fv
    )


if __name__ == "__main__":
    # An unreadable list, folder or record file: one line.
    command_line.run(main, define_flags, script=__file__, refusals=(ValueError, OSError))
