"""PNG figures of an evaluation and of a training run, for the people who look rather than read.

- `evaluation_plots(report, plot_dir, samples=...)` (`evaluate.py --plot_dir`), from a multi-label report's
  sections (training/report.py): `pr_curve.png` (micro-averaged precision against recall, one curve per
  image size), `ap_vs_frequency.png` (each class's AP against its training frequency, or against its
  positives in the evaluated split where the frequencies are unknown), `ap_per_level.png` (mean AP of the
  classes of each hierarchy level, with `--hierarchy`), and `predictions.png` (the first evaluated images
  with their top-5 tags, green where the tag is a ground-truth positive).
- `training_curves(model_dir)` -> `{model_dir}/training_curves.png`: loss, learning rate, images/s and the
  evaluation metrics by step, from the run's `metrics.jsonl` (every logged step, where TensorBoard's
  scalar summaries keep a sample). training/loop.py draws it at the end of a run; tools/plot_run.py on
  demand.

matplotlib (the `plots` extra) is imported only when a figure is drawn, with the Agg backend (files, no
display); without it `PlotsUnavailable` says how to install it. Every PNG is written atomically.
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

from data import fileio

PR_CURVE_FILE = "pr_curve.png"
AP_VS_FREQUENCY_FILE = "ap_vs_frequency.png"
AP_PER_LEVEL_FILE = "ap_per_level.png"
PREDICTIONS_FILE = "predictions.png"
TRAINING_CURVES_FILE = "training_curves.png"
METRICS_FILE = "metrics.jsonl"  # training/loop.py's log of every logged step and evaluation
_NAMED_POINTS = 40  # classes named beside their point in ap_vs_frequency.png (more would be unreadable)
_GRID_COLUMNS = 4


class PlotsUnavailable(RuntimeError):
    """matplotlib is not installed: the figures cannot be drawn (the numbers are still written)."""


def _pyplot():
    """matplotlib's pyplot on the Agg backend, imported on first use (the `plots` extra)."""
    try:
        import matplotlib
    except ImportError:
        raise PlotsUnavailable("matplotlib is not installed (pip install -e .[plots]): no figures") from None
    matplotlib.use("Agg")
    from matplotlib import pyplot

    return pyplot


def _save(figure, path: str, *, tight: bool = True) -> str:
    """Writes `figure` as a PNG at `path` atomically and closes it (`tight`: matplotlib's tight layout)."""
    pyplot = _pyplot()
    if tight:
        figure.tight_layout()
    with fileio.atomic_path(path) as temp:
        figure.savefig(temp, format="png", dpi=100)
    pyplot.close(figure)
    return path


def _name(entry: Mapping[str, Any]) -> str:
    return entry["name"] if entry.get("name") is not None else str(entry["class"])


# ------------------------------------------------------------------------------------------- evaluation


def evaluation_plots(report: Mapping[str, Any], plot_dir: str, *, samples=None) -> list[str]:
    """Draws the figures of a multi-label evaluation report into `plot_dir`; returns their paths.

    Args:
      report: `training.report.make_report`'s report with its `per_class` and `pr_curve` sections (and
        `ap_per_level` with a hierarchy); a single-label report has none: no figure.
      plot_dir: created if missing.
      samples: `training.evaluation.Samples` of the evaluation: `predictions.png` (None: not drawn).

    Raises:
      PlotsUnavailable: matplotlib is not installed.
    """
    if "per_class" not in report:
        return []
    os.makedirs(plot_dir, exist_ok=True)
    paths = [
        pr_curve(report, os.path.join(plot_dir, PR_CURVE_FILE)),
        ap_vs_frequency(report, os.path.join(plot_dir, AP_VS_FREQUENCY_FILE)),
    ]
    if "ap_per_level" in report:
        paths.append(ap_per_level(report, os.path.join(plot_dir, AP_PER_LEVEL_FILE)))
    if samples is not None and samples.images:
        names = [_name(entry) for entry in next(iter(report["per_class"].values()))]
        paths.append(prediction_grid(samples, names, os.path.join(plot_dir, PREDICTIONS_FILE)))
    return paths


def pr_curve(report: Mapping[str, Any], path: str) -> str:
    """Micro-averaged precision against recall (every image-class pair a prediction), one curve per key."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(6, 5))
    for key, curve in report["pr_curve"].items():
        mean_ap = report["results"][key].get("mAP")
        label = f"{key}: mAP {100 * mean_ap:.1f} %" if mean_ap is not None else key
        axes.plot(curve["recall"], curve["precision"], lw=1.5, label=label)
    axes.set(
        xlim=(0, 1),
        ylim=(0, 1.02),
        xlabel="recall",
        ylabel="precision",
        title=f"Precision-recall, micro-averaged ({report['num_images']:,} images)",
    )
    axes.grid(alpha=0.3)
    axes.legend(loc="lower left")
    return _save(figure, path)


def ap_vs_frequency(report: Mapping[str, Any], path: str) -> str:
    """Each class's AP against its training frequency (log scale), or its positives where unknown."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 5))
    by_key = report["per_class"]
    first = next(iter(by_key.values()))
    known = all(entry["train_frequency"] is not None for entry in first)
    field, label = (
        ("train_frequency", "training frequency (fraction of images)")
        if known
        else (
            "positives",
            "positives in the evaluated images",
        )
    )
    for key, entries in by_key.items():
        points = [(e[field], e["ap"]) for e in entries if e["ap"] is not None and e[field]]
        if points:
            x, y = np.asarray(points, np.float64).T
            axes.scatter(x, y, s=14, alpha=0.7, label=key)
    if len(first) <= _NAMED_POINTS:
        for entry in first:
            if entry["ap"] is not None and entry[field]:
                axes.annotate(_name(entry), (entry[field], entry["ap"]), fontsize=7, alpha=0.8)
    axes.set(
        xscale="log",
        ylim=(0, 1.02),
        xlabel=label,
        ylabel="average precision",
        title=f"Per-class AP against {'training frequency' if known else 'positives'} ({len(first):,} classes)",
    )
    axes.grid(alpha=0.3)
    if len(by_key) > 1:
        axes.legend(title="image size")
    return _save(figure, path)


def ap_per_level(report: Mapping[str, Any], path: str) -> str:
    """The mean AP of the classes of each hierarchy level (0: the roots), bars per key, counts on top."""
    pyplot = _pyplot()
    figure, axes = pyplot.subplots(figsize=(7, 4))
    by_key = report["ap_per_level"]
    width = 0.8 / len(by_key)
    for i, (key, levels) in enumerate(by_key.items()):
        x = np.asarray([level["level"] for level in levels], np.float64) + (i - (len(by_key) - 1) / 2) * width
        bars = axes.bar(x, [level["mAP"] for level in levels], width=width, label=key)
        if i == 0:
            axes.bar_label(bars, labels=[f"{level['classes']}" for level in levels], fontsize=7)
    axes.set(
        ylim=(0, 1.08),
        xlabel="hierarchy level (0: roots; bar labels: classes with positives)",
        ylabel="mean AP",
        title="AP per hierarchy level",
    )
    axes.grid(alpha=0.3, axis="y")
    if len(by_key) > 1:
        axes.legend(title="image size")
    return _save(figure, path)


def prediction_grid(samples, class_names: Sequence[str], path: str) -> str:
    """The evaluated images (the network's input) with their top tags: green a ground-truth positive."""
    pyplot = _pyplot()
    count = len(samples.images)
    rows = math.ceil(count / _GRID_COLUMNS)
    figure, grid = pyplot.subplots(
        rows, _GRID_COLUMNS, figsize=(3.2 * _GRID_COLUMNS, 4.4 * rows), squeeze=False
    )
    for axes in grid.flat:
        axes.axis("off")
    for axes, image, top, positives in zip(
        grid.flat, samples.images, samples.top, samples.positives, strict=False
    ):
        axes.imshow(image, interpolation="nearest")
        for line, (index, score) in enumerate(top):
            axes.text(
                0.0,
                -0.04 - 0.1 * line,
                f"{class_names[index]} {score:.2f}",
                transform=axes.transAxes,
                fontsize=9,
                va="top",
                color="green" if index in positives else "firebrick",
            )
    figure.suptitle(f"Top-{len(samples.top[0])} tags (green: a ground-truth tag, red: not)")
    figure.subplots_adjust(left=0.02, right=0.98, top=0.95, bottom=0.1, wspace=0.1, hspace=0.7)
    return _save(figure, path, tight=False)  # the tags below each image need the room left for them


# ------------------------------------------------------------------------------------------ training run


def read_metrics(model_dir: str) -> dict[str, dict[int, dict[str, float]]]:
    """`{model_dir}/metrics.jsonl` as {kind ("train", "eval"): {step: values}}; a resumed run's re-logged
    step replaces the earlier line, an unreadable line (a write cut by a crash) is skipped.

    Raises:
      FileNotFoundError: the run has no metrics.jsonl yet.
    """
    by_kind: dict[str, dict[int, dict[str, float]]] = {}
    with open(os.path.join(model_dir, METRICS_FILE), encoding="utf-8") as f:
        for line in f:
            try:
                entry = json.loads(line)
                kind, step = str(entry.pop("kind")), int(entry.pop("step"))
            except (ValueError, KeyError, TypeError):
                continue
            by_kind.setdefault(kind, {})[step] = {
                k: v for k, v in entry.items() if isinstance(v, int | float)
            }
    return by_kind


def training_curves(model_dir: str, path: str | None = None) -> str:
    """Draws the run's loss, learning rate, images/s and evaluation metrics by step; returns the PNG's path.

    Args:
      model_dir: a run directory with `metrics.jsonl`.
      path: where the PNG goes (default `{model_dir}/training_curves.png`).

    Raises:
      FileNotFoundError: no metrics.jsonl; ValueError: it holds no logged step.
      PlotsUnavailable: matplotlib is not installed.
    """
    by_kind = read_metrics(model_dir)
    train = dict(sorted(by_kind.get("train", {}).items()))
    evals = dict(sorted(by_kind.get("eval", {}).items()))
    if not train and not evals:
        raise ValueError(f"{os.path.join(model_dir, METRICS_FILE)} holds no logged step")
    pyplot = _pyplot()
    figure, ((loss, lr), (speed, quality)) = pyplot.subplots(2, 2, figsize=(11, 7), sharex=True)
    steps = np.asarray(list(train), np.int64)

    def series(name: str) -> np.ndarray:
        return np.asarray([values.get(name, np.nan) for values in train.values()], np.float64)

    for name in ("loss", "cross_entropy", "weight_decay"):
        if train and np.isfinite(series(name)).any():
            loss.plot(steps, series(name), lw=1.2, label=name)
    loss.set(title="training loss", yscale="log" if train and np.nanmin(series("loss")) > 0 else "linear")
    loss.legend(fontsize=8)
    if train:
        lr.plot(steps, series("lr"), lw=1.2, color="tab:purple")
        speed.plot(steps, series("images_per_s"), lw=1.2, color="tab:green")
    lr.set(title="learning rate", yscale="log" if train and np.nanmin(series("lr")) > 0 else "linear")
    speed.set(title="images / s (all ranks)", xlabel="step")
    eval_steps = np.asarray(list(evals), np.int64)
    names = [n for n in next(iter(evals.values()), {}) if n == "mAP" or n.startswith(("f1@", "top"))]
    for name in names:
        quality.plot(
            eval_steps, [values.get(name, np.nan) for values in evals.values()], "o-", ms=3, label=name
        )
    quality.set(title="evaluation", xlabel="step", ylim=(0, 1.02))
    if names:
        quality.legend(fontsize=8)
    else:
        quality.text(0.5, 0.5, "no evaluation (--eval_every=0)", ha="center", transform=quality.transAxes)
    for axes in (loss, lr, speed, quality):
        axes.grid(alpha=0.3)
    figure.suptitle(f"{os.path.basename(os.path.normpath(model_dir))}: {len(train)} logged steps")
    return _save(figure, path or os.path.join(model_dir, TRAINING_CURVES_FILE))
