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
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from typing import Any

from data import fileio
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
    results_by_key: Mapping[str, Mapping[str, float | int]], *, task: str, settings: Mapping[str, Any]
) -> dict[str, Any]:
    """Assembles the JSON-ready report from `result()` dicts, one per image size (or other key).

    Args:
      results_by_key: e.g. {"224": metrics.result(), "299": ...}; every entry counts the same images.
      task: MULTILABEL or SINGLE_LABEL.
      settings: what produced the numbers (flags, paths, class count).

    Returns:
      {"task", "num_images", "results", "settings"}; NaN values become None (JSON null).
    """
    counts = {int(r["num_images"]) for r in results_by_key.values()}
    if len(counts) != 1:
        raise ValueError(f"the results count different numbers of images: {sorted(counts)}")
    results = {
        str(key): {name: _json_value(value) for name, value in result.items() if name != "num_images"}
        for key, result in results_by_key.items()
    }
    return {
        "task": task,
        "num_images": counts.pop(),
        "results": results,
        "settings": {name: _json_value(value) for name, value in settings.items()},
    }


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
