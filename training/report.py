"""What an evaluation measures and how its results are reported: the tasks, the metric settings, the report.

Shared by model evaluation (training/evaluation.py) and saved predictions (training/predictions.py), so
both give one layout. A report is one JSON-ready dict, designed so that several image sizes (and later
several checkpoints' evaluation transforms) fit in one file:

    {"task": "multilabel" | "single_label",
     "num_images": N,
     "results": {"224": {"precision@5": ..., "mAP": ..., ...}, "299": {...}},
     "settings": {"topk": [5, 10], "label_threshold": 0.5, ...}}

Metric values are fractions in [0, 1] (null where undefined, e.g. recall without any positive);
`format_table` shows them as percentages, as the paper does.

A multi-label report also says where the mAP comes from, per results key (`class_details`, from the
streaming metrics' per-class score histograms):

    "per_class": {"224": [{"class": 0, "name": "thing", "ap": 0.98, "positives": 500,
                           "train_frequency": 1.0}, ...]},     # name / train_frequency: null if unknown
    "pr_curve": {"224": {"threshold": [...], "precision": [...], "recall": [...]}},  # micro-averaged
    "ap_per_level": {"224": [{"level": 0, "classes": 3, "mAP": 0.9}, ...]}  # with a hierarchy

training/plots.py draws them.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data import fileio
from data.labels import hierarchy as hierarchy_lib
from data.records import schema
from training import metrics

MULTILABEL = "multilabel"
SINGLE_LABEL = "single_label"
SINGLE_LABEL_KS = (1, 5)  # ImageNet convention: top-1 and top-5 accuracy


class EvaluationInputError(ValueError):
    """Input that cannot be evaluated: a bad predictions file (arrays, shapes, values) or k > classes."""


@dataclasses.dataclass(frozen=True)
class EvalSettings:
    """How metrics are computed; written into the report's `settings`."""

    topk: tuple[int, ...] = (5, 10)  # multi-label precision/recall/F1 at each k
    label_threshold: float = 0.5  # multi-label: a class is a positive when its label >= this
    num_bins: int = metrics.DEFAULT_NUM_BINS  # score-histogram bins for mAP
    apply_sigmoid: bool = False  # multi-label: the scores are logits, turn them into probabilities
    chunk_size: int = 1024  # rows per streamed chunk of a predictions file


def make_metrics(
    task: str, num_classes: int, settings: EvalSettings
) -> metrics.MultiLabelMetrics | metrics.SingleLabelMetrics:
    """The streaming metrics for `task`, with every k checked against `num_classes`.

    Raises:
      EvaluationInputError: a k larger than the number of classes, or an unknown task.
    """
    if task not in (MULTILABEL, SINGLE_LABEL):
        raise EvaluationInputError(f"unknown task {task!r}; expected {MULTILABEL!r} or {SINGLE_LABEL!r}")
    # Single-label top-k with k >= the number of classes is 1 by definition: such k are left out.
    ks = settings.topk if task == MULTILABEL else tuple(k for k in SINGLE_LABEL_KS if k < num_classes) or (1,)
    too_large = [k for k in ks if k > num_classes]
    if too_large:
        raise EvaluationInputError(
            f"top-k with k={too_large} needs at least that many classes; the scores have {num_classes}"
            + (" (single-label always reports top-1 and top-5)" if task == SINGLE_LABEL else "")
        )
    if task == MULTILABEL:
        return metrics.MultiLabelMetrics(
            num_classes, ks=ks, label_threshold=settings.label_threshold, num_bins=settings.num_bins
        )
    return metrics.SingleLabelMetrics(num_classes, ks=ks)


def make_report(
    results_by_key: Mapping[str, Mapping[str, float | int]],
    *,
    task: str,
    settings: Mapping[str, Any],
    details_by_key: Mapping[str, Mapping[str, Any]] | None = None,
) -> dict[str, Any]:
    """Assembles the JSON-ready report from `result()` dicts, one per image size (or other key).

    Args:
      results_by_key: e.g. {"224": metrics.result(), "299": ...}; every entry counts the same images.
      task: MULTILABEL or SINGLE_LABEL.
      settings: what produced the numbers (flags, paths, class count).
      details_by_key: multi-label, per key: `class_details` (its `per_class`, `pr_curve`, and
        `ap_per_level` where a hierarchy was given), each becoming a top-level section by key.

    Returns:
      {"task", "num_images", "results", "settings"} and the sections of `details_by_key`; NaN values
      become None (JSON null).
    """
    counts = {int(r["num_images"]) for r in results_by_key.values()}
    if len(counts) != 1:
        raise ValueError(f"the results count different numbers of images: {sorted(counts)}")
    results = {
        str(key): {name: _json_value(value) for name, value in result.items() if name != "num_images"}
        for key, result in results_by_key.items()
    }
    report = {
        "task": task,
        "num_images": counts.pop(),
        "results": results,
        "settings": {name: _json_value(value) for name, value in settings.items()},
    }
    for key, details in (details_by_key or {}).items():
        for section, value in details.items():
            report.setdefault(section, {})[str(key)] = value
    return report


@dataclasses.dataclass(frozen=True)
class ClassInfo:
    """What is known about the classes beside the scores: names, training frequencies, hierarchy depth."""

    names: tuple[str, ...] | None = None
    train_frequencies: np.ndarray | None = None  # fraction of training images where the class is positive
    depth: np.ndarray | None = None  # hierarchy level of each class (0: a root)

    def check(self, num_classes: int) -> None:
        """Raises EvaluationInputError when a field does not have one entry per class."""
        for name in ("names", "train_frequencies", "depth"):
            value = getattr(self, name)
            if value is not None and len(value) != num_classes:
                raise EvaluationInputError(
                    f"{len(value)} class {name.replace('_', ' ')} for {num_classes} classes"
                )


def label_batches(data_dir: str | os.PathLike, prefix: str, *, batch_size: int = 256):
    """The labels of a split of our records, float32[B, num_classes] batches (a `tf.data.Dataset`)."""
    import tensorflow as tf

    manifest = schema.read_manifest(data_dir, prefix)

    def parse(serialized):
        return schema.parse_records(
            serialized, label_format=manifest.label_format, num_classes=manifest.num_classes
        )[schema.LABEL_KEY]

    return tf.data.TFRecordDataset(list(manifest.files)).batch(batch_size).map(parse)


def class_frequencies(
    data_dir: str | os.PathLike, prefix: str = "train", *, label_threshold: float = 0.5
) -> np.ndarray:
    """float64[num_classes]: the fraction of the split's images where each class is a positive.

    One pass over the split's labels (our records with a manifest): seconds for the demo, long for the
    17.6M ML-Images training images, whose counts tools/dataset_stats.py writes once (`read_class_stats`).
    """
    num_classes = schema.read_manifest(data_dir, prefix).num_classes
    positives = np.zeros(num_classes, np.float64)
    num_images = 0
    for labels in label_batches(data_dir, prefix):
        positives += np.sum(labels.numpy() >= label_threshold, axis=0)
        num_images += labels.shape[0]
    if num_images == 0:
        raise ValueError(f"{data_dir} ({prefix}) has no records")
    return positives / num_images


def read_class_stats(path: str | os.PathLike) -> np.ndarray:
    """Training frequencies from tools/dataset_stats.py's JSON: `images_per_class` / `num_images`.

    Raises:
      EvaluationInputError: the file is missing or is not such a JSON.
    """
    stats = fileio.read_json(path)
    try:
        return np.asarray(stats["images_per_class"], np.float64) / float(stats["num_images"])
    except (TypeError, KeyError, ValueError, ZeroDivisionError):
        raise EvaluationInputError(
            f"{os.fspath(path)} is not a tools/dataset_stats.py JSON (images_per_class, num_images)"
        ) from None


def load_class_info(
    num_classes: int,
    *,
    names: Sequence[str] | None = None,
    hierarchy: str = "",
    data_dir: str = "",
    train_prefix: str = "",
    class_stats: str = "",
    label_threshold: float = 0.5,
) -> ClassInfo:
    """The `ClassInfo` that evaluate.py's flags name: `hierarchy` gives names (over `names`) and levels;
    the training frequencies come from `class_stats` (tools/dataset_stats.py) or the `train_prefix` split
    of `data_dir` (counted).

    Raises:
      EvaluationInputError: an unreadable source, or one that does not have `num_classes` classes.
    """
    depth = None
    try:
        if hierarchy:
            loaded = hierarchy_lib.load_hierarchy(hierarchy)
            names, depth = loaded.names, loaded.depth
        frequencies = None
        if class_stats:
            frequencies = read_class_stats(class_stats)
        elif train_prefix:
            if not data_dir:
                raise EvaluationInputError("--train_prefix counts a split of --data_dir: give --data_dir")
            frequencies = class_frequencies(data_dir, train_prefix, label_threshold=label_threshold)
    except (OSError, ValueError) as e:  # HierarchyError, a manifest's ValueError
        if isinstance(e, EvaluationInputError):
            raise
        raise EvaluationInputError(str(e)) from None
    info = ClassInfo(
        names=None if names is None else tuple(names), train_frequencies=frequencies, depth=depth
    )
    info.check(num_classes)
    return info


def class_details(histogram: np.ndarray, classes: ClassInfo = ClassInfo()) -> dict[str, Any]:
    """Per-class AP, the micro-averaged precision-recall curve and (with depths) AP per hierarchy level.

    Args:
      histogram: [C, num_bins, 2] image counts per (class, score bin, negative/positive): the streaming
        metrics' `score_histogram` state (training/metrics.py), whose per-class AP makes the mAP.
      classes: names, training frequencies and hierarchy depths, where known.

    Returns:
      {"per_class": [...], "pr_curve": {...}} and, with `classes.depth`, "ap_per_level": [...] (see the
      module docstring); AP is null for a class without positives, as it is left out of the mAP.
    """
    histogram = np.asarray(histogram, np.float64)
    num_classes, num_bins = histogram.shape[:2]
    classes.check(num_classes)
    ap = metrics.average_precision_from_histograms(positives=histogram[..., 1], negatives=histogram[..., 0])
    positives = histogram[..., 1].sum(axis=1)
    per_class = [
        {
            "class": j,
            "name": None if classes.names is None else classes.names[j],
            "ap": _json_value(float(ap[j])),
            "positives": int(positives[j]),
            "train_frequency": None
            if classes.train_frequencies is None
            else float(classes.train_frequencies[j]),
        }
        for j in range(num_classes)
    ]
    # Micro average: every (image, class) pair is one prediction; a threshold at each bin's lower edge.
    pooled = histogram.sum(axis=0)[::-1]  # [bins, 2], highest scores first
    true_positives, predicted = np.cumsum(pooled[:, 1]), np.cumsum(pooled.sum(axis=1))
    keep = predicted > 0
    details: dict[str, Any] = {
        "per_class": per_class,
        "pr_curve": {
            "threshold": (np.arange(num_bins)[::-1][keep] / num_bins).tolist(),
            "precision": (true_positives[keep] / predicted[keep]).tolist(),
            "recall": (true_positives[keep] / max(true_positives[-1], 1.0)).tolist(),
        },
    }
    if classes.depth is not None:
        depth = np.asarray(classes.depth)
        levels = []
        for level in np.unique(depth):
            values = ap[(depth == level) & ~np.isnan(ap)]
            if values.size:
                levels.append({"level": int(level), "classes": int(values.size), "mAP": float(values.mean())})
        details["ap_per_level"] = levels
    return details


def write_json(report: Mapping[str, Any], path: str) -> None:
    """Writes the report as indented JSON (strict: no NaN), atomically, creating the folder if needed."""
    with fileio.atomic_write(path) as f:
        json.dump(report, f, indent=2, allow_nan=False)
        f.write("\n")


def format_table(report: Mapping[str, Any]) -> str:
    """A readable table of the report, metric values in percent."""
    settings = report["settings"]
    lines = [f"{report['task']} evaluation of {report['num_images']:,} images"]
    if report["task"] == MULTILABEL:
        lines[0] += f", positives: label >= {settings['label_threshold']}"
        lines.append(
            f"{'results':<12}{'k':>4}{'precision %':>13}{'recall %':>10}{'F1 %':>8}{'instance F1 %':>15}"
        )
        for key, result in report["results"].items():
            for k in settings["topk"]:
                lines.append(
                    f"{key:<12}{k:>4}{_percent(result[f'precision@{k}']):>13}{_percent(result[f'recall@{k}']):>10}"
                    f"{_percent(result[f'f1@{k}']):>8}{_percent(result[f'instance_f1@{k}']):>15}"
                )
        for key, result in report["results"].items():
            lines.append(
                f"{key:<12} mAP {_percent(result['mAP'])} % (mean over {result['num_classes_with_positives']:,} "
                f"classes with positives); {result['num_images_without_positives']:,} images without positives "
                "(precision 0, not in recall or instance F1)"
            )
    else:
        names = [f"top{k}" for k in SINGLE_LABEL_KS]
        lines.append(f"{'results':<12}" + "".join(f"{name + ' %':>10}" for name in names))
        for key, result in report["results"].items():
            lines.append(f"{key:<12}" + "".join(f"{_percent(result.get(name)):>10}" for name in names))
    return "\n".join(lines)


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"
