"""Evaluation shared by evaluate.py, the training loop and the inference tools.

- Model evaluation: `evaluate_model` streams a dataset through a model into the streaming metrics of
  training/metrics.py (one rank's shard each, all-reduced once at the end); `evaluate_checkpoint` is
  `evaluate.py --checkpoint`: load a checkpoint of either kind (`load_model`), pick the split
  (`eval_source`), evaluate at every image size, assemble the report.
- Saved predictions: `evaluate_predictions` (`evaluate.py --predictions`), written by `PredictionsWriter`.
- The report (`make_report`, `write_json`, `format_table`), one layout for both paths.
- Image files for tools/image_classification.py and tools/extract_feature.py: `read_image_list`,
  `iter_image_batches` (unreadable files are reported and skipped).

A report is one JSON-ready dict, designed so that several image sizes (and later several checkpoints'
evaluation transforms) fit in one file:

    {"task": "multilabel" | "single_label",
     "num_images": N,
     "results": {"224": {"precision@5": ..., "mAP": ..., ...}, "299": {...}},
     "settings": {"topk": [5, 10], "label_threshold": 0.5, ...}}

Metric values are fractions in [0, 1] (null where undefined, e.g. recall without any positive);
`format_table` shows them as percentages, as the paper does.

Saved predictions (`--predictions FILE.npz`) hold `scores` float[N, C] and `labels`: float[N, C]
confidences (multi-label) or int[N] class indices (single-label); an optional 0-d int `image_size` names
the results entry (otherwise "predictions"). The arrays are streamed from the zip member in row chunks, so
an 88,739 x 11,166 file (4 GB of scores) is never held in memory; this works for `np.savez` and
`np.savez_compressed` alike, where `np.load(mmap_mode=...)` ignores mmap for `.npz`.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from concurrent import futures
from typing import Any, BinaryIO

import keras
import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from data import preprocessing
from models import resnet, tf1_checkpoint
from training import checkpoints, distributed, input_pipeline, metrics

MULTILABEL = "multilabel"
SINGLE_LABEL = "single_label"
SINGLE_LABEL_KS = (1, 5)  # ImageNet convention: top-1 and top-5 accuracy
PREDICTIONS_KEY = "predictions"  # results entry of a predictions file without `image_size`


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


@dataclasses.dataclass(frozen=True)
class PredictionsFile:
    """A validated predictions `.npz`: its task, sizes and results key, read from the array headers only."""

    path: str
    task: str
    num_images: int
    num_classes: int
    results_key: str

    @classmethod
    def open(cls, path: str) -> PredictionsFile:
        """Checks the arrays' presence, shapes and dtypes without reading their data.

        Raises:
          EvaluationInputError: anything that makes the file unusable, with what was found.
        """
        if not os.path.isfile(path):
            raise EvaluationInputError(f"predictions file not found: {path}")
        try:
            with zipfile.ZipFile(path) as archive:
                members = {name.removesuffix(".npy") for name in archive.namelist()}
                missing = {"scores", "labels"} - members
                if missing:
                    raise EvaluationInputError(
                        f"{path} lacks array(s) {sorted(missing)}; it holds {sorted(members)} "
                        "(expected `scores` [N, C] and `labels` [N, C] or [N])"
                    )
                scores_shape, scores_dtype = _member_header(archive, "scores")
                labels_shape, labels_dtype = _member_header(archive, "labels")
        except zipfile.BadZipFile as e:
            raise EvaluationInputError(f"{path} is not an .npz file (np.savez): {e}") from e
        if len(scores_shape) != 2 or scores_shape[0] < 1 or scores_shape[1] < 1:
            raise EvaluationInputError(f"`scores` must be [N, C] with N, C >= 1; got shape {scores_shape}")
        if not (np.issubdtype(scores_dtype, np.floating) or np.issubdtype(scores_dtype, np.integer)):
            raise EvaluationInputError(f"`scores` must be numeric; got dtype {scores_dtype}")
        num_images, num_classes = scores_shape
        if labels_shape == (num_images,) and np.issubdtype(labels_dtype, np.integer):
            task = SINGLE_LABEL
        elif labels_shape == (num_images, num_classes) and (
            np.issubdtype(labels_dtype, np.number) or labels_dtype == np.bool_
        ):
            task = MULTILABEL
        else:
            raise EvaluationInputError(
                f"`labels` {labels_dtype}{list(labels_shape)} does not match `scores` {list(scores_shape)}: "
                f"expected float[{num_images}, {num_classes}] (multi-label) or int[{num_images}] (single-label)"
            )
        results_key = PREDICTIONS_KEY
        if "image_size" in members:
            with np.load(path) as npz:  # lazy: only this member is read
                image_size = npz["image_size"]
            if image_size.shape != () or not np.issubdtype(image_size.dtype, np.integer):
                raise EvaluationInputError(
                    f"`image_size` must be a 0-d integer; got {image_size.dtype}{image_size.shape}"
                )
            results_key = str(int(image_size))
        return cls(path, task, num_images, num_classes, results_key)

    def chunks(self, chunk_size: int) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Yields (scores, labels) blocks of up to `chunk_size` rows, in order."""
        with zipfile.ZipFile(self.path) as archive:
            scores = _iter_rows(archive, "scores", chunk_size)
            labels = _iter_rows(archive, "labels", chunk_size)
            yield from zip(scores, labels, strict=True)


def evaluate_predictions(path: str, settings: EvalSettings, *, show_progress: bool = True) -> dict[str, Any]:
    """Evaluates a saved-predictions `.npz` (see the module docstring) chunk by chunk.

    Args:
      path: the `.npz` with `scores`, `labels` and optionally `image_size`.
      settings: the metric settings.
      show_progress: a tqdm bar (images, rate, ETA) on stderr.

    Returns:
      The report (see `make_report`).

    Raises:
      EvaluationInputError: a bad file, a k larger than the number of classes, labels out of range, or
        multi-label scores outside [0, 1] without `apply_sigmoid`.
    """
    predictions = PredictionsFile.open(path)
    streaming = make_metrics(predictions.task, predictions.num_classes, settings)
    logging.info(
        "Evaluating %s: %d images x %d classes (%s)",
        path,
        predictions.num_images,
        predictions.num_classes,
        predictions.task,
    )
    progress = tqdm.tqdm(
        total=predictions.num_images, unit="img", desc="evaluate", disable=not show_progress, smoothing=0.1
    )
    with progress:
        for scores, labels in predictions.chunks(settings.chunk_size):
            scores = _checked_scores(scores, predictions.task, settings)
            _check_labels(labels, predictions)
            streaming.update(scores, labels)
            progress.update(len(scores))
    return make_report(
        {predictions.results_key: streaming.result()},
        task=predictions.task,
        settings={
            **dataclasses.asdict(settings),
            "topk": settings.topk if predictions.task == MULTILABEL else SINGLE_LABEL_KS,
            "predictions": path,
            "num_classes": predictions.num_classes,
        },
    )


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
    """Writes the report as indented JSON (strict: no NaN), creating the folder if needed."""
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
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


# ---------------------------------------------------------------------------------------- model evaluation


class PredictionsWriter:
    """Keeps one rank's scores and labels in memory and saves them as a predictions `.npz`.

    The saved file is the input of `evaluate_predictions` (`evaluate.py --predictions`). Unlike the
    streaming metrics this holds every score, N x C float32, so it is meant for moderate sets: ImageNet's
    50,000 x 1000 validation scores are 200 MB, the ML-Images 88,739 x 11,166 ones would be 4 GB.
    """

    def __init__(self) -> None:
        self._scores: list[np.ndarray] = []
        self._labels: list[np.ndarray] = []

    @property
    def num_images(self) -> int:
        return sum(len(s) for s in self._scores)

    def add(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Appends a batch: scores float[B, C]; labels float[B, C] or int[B]."""
        self._scores.append(np.asarray(scores, np.float32))
        self._labels.append(np.asarray(labels))

    def save(self, path: str, *, image_size: int | None = None) -> bool:
        """Writes `scores`, `labels` (and `image_size`, naming the results entry) to `path` atomically.

        Returns:
          False (and a warning) when no image was added: a predictions file needs at least one row.
        """
        if not self._scores:
            logging.warning("no predictions to save in %s (this rank evaluated no images)", path)
            return False
        arrays = {"scores": np.concatenate(self._scores), "labels": np.concatenate(self._labels)}
        if image_size is not None:
            arrays["image_size"] = np.array(image_size, np.int64)
        os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
        partial = f"{path}.tmp-{os.getpid()}"
        with open(partial, "wb") as f:  # a file object: np.savez would append ".npz" to a bare name
            np.savez(f, **arrays)
        os.replace(partial, path)
        return True


def predictions_path(path: str, *, image_size: int, several_sizes: bool, rank: int, num_ranks: int) -> str:
    """Where one (image size, rank) predictions file goes: `path` with `.{size}` / `.rank{R}` inserted.

    With one image size on one process this is `path` itself; `preds.npz` evaluated at 224 and 299 on two
    ranks gives `preds.224.rank0.npz`, `preds.224.rank1.npz`, `preds.299.rank0.npz`, ... Each rank writes
    the images of its own shard (no gather: every rank would need the whole set in memory).
    """
    base, extension = os.path.splitext(path)
    if extension != ".npz":  # `preds` or `preds.v2`: keep the whole name, the suffixes go after it
        base, extension = path, ""
    parts = [base]
    if several_sizes:
        parts.append(str(image_size))
    if num_ranks > 1:
        parts.append(f"rank{rank}")
    return ".".join(parts) + extension


def scores_from_logits(logits: tf.Tensor, task: str) -> tf.Tensor:
    """Multi-label: sigmoid probabilities (mAP needs them); single-label: softmax (top-k order unchanged)."""
    logits = tf.cast(logits, tf.float32)
    return tf.sigmoid(logits) if task == MULTILABEL else tf.nn.softmax(logits, axis=-1)


def evaluate_model(
    model: keras.Model,
    dataset: tf.data.Dataset,
    *,
    task: str,
    num_classes: int,
    settings: EvalSettings,
    dist: distributed.Distributed | None = None,
    max_batches: int = 0,
    show_progress: bool = True,
    predictions_writer: PredictionsWriter | None = None,
    expected_images: int | None = None,
    description: str = "evaluate",
) -> dict[str, float]:
    """Streams `dataset` through `model` and returns the metrics of ALL ranks' images.

    Used by evaluate.py and by the training loop's periodic validation. The forward pass runs in a
    `tf.function` (traced once per call, for a batch of any size); each batch is folded into the streaming
    sums of training/metrics.py, so no [N, C] matrix is ever held (unless `predictions_writer` asks for it).

    Args:
      model: logits model (`models.resnet.build_resnet`), called with `training=False`.
      dataset: this rank's `(images float[B, S, S, 3], labels)` batches, e.g.
        `training.input_pipeline.eval_dataset`: labels float[B, C] confidences (multi-label) or int[B].
      task: MULTILABEL (sigmoid scores) or SINGLE_LABEL (softmax scores).
      num_classes: C, the width of the logits and of multi-label labels.
      settings: the metric settings (`topk`, `label_threshold`, `num_bins`).
      dist: the ranks (`training.distributed.init()`); None is a single process. Each rank evaluates its
        own shard; the sums are all-reduced ONCE after the loop, so every rank issues the same collectives
        in the same order whatever its number of batches, and every rank returns the global result.
      max_batches: stop after this many batches per rank (0: the whole dataset), for quick checks.
      show_progress: a tqdm bar (images, rate, ETA when `expected_images` is known) on the chief's stderr.
      predictions_writer: also collect this rank's scores and labels (see `PredictionsWriter`).
      expected_images: images this rank will see, for the bar's ETA (None: rate only).
      description: the bar's label, e.g. the image size.

    Returns:
      `metrics.result()`: `precision@k`, `recall@k`, `f1@k`, `instance_f1@k`, `mAP` and counts (multi-label)
      or `top1`, `top5`, `num_images` (single-label); one entry of `make_report`'s `results_by_key`.

    Raises:
      EvaluationInputError: a k larger than the class count, or logits / labels of the wrong shape.
    """
    dist = dist or distributed.Distributed()
    streaming = make_metrics(task, num_classes, settings)
    _check_model_and_dataset(model, dataset, task=task, num_classes=num_classes)
    scores_fn = tf.function(
        lambda images: scores_from_logits(model(images, training=False), task),
        input_signature=[tf.TensorSpec([None, None, None, 3], tf.float32)],
    )
    if max_batches:
        dataset = dataset.take(max_batches)
    progress = tqdm.tqdm(
        total=expected_images,
        unit="img",
        desc=description,
        disable=not (show_progress and dist.is_chief),
        smoothing=0.1,
    )
    with progress:
        for images, labels in dataset:
            scores = scores_fn(tf.cast(images, tf.float32))
            streaming.update(scores, labels)
            if predictions_writer is not None:
                predictions_writer.add(scores.numpy(), labels.numpy())
            progress.update(int(images.shape[0]))
    if dist.size > 1:
        streaming.all_reduce(dist.allreduce_sum)  # Horovod: one all-reduce per sum, after every batch.
    return streaming.result()


def _check_model_and_dataset(
    model: keras.Model, dataset: tf.data.Dataset, *, task: str, num_classes: int
) -> None:
    width = model.outputs[0].shape[-1] if getattr(model, "outputs", None) else None
    if width is not None and width != num_classes:
        raise EvaluationInputError(f"the model has {width} logits but num_classes is {num_classes}")
    spec = dataset.element_spec
    if not (isinstance(spec, tuple) and len(spec) == 2):
        raise EvaluationInputError(f"the dataset must yield (images, labels) pairs; its elements are {spec}")
    labels = spec[1].shape
    if task == MULTILABEL and (labels.rank != 2 or labels[-1] not in (None, num_classes)):
        raise EvaluationInputError(
            f"multi-label evaluation needs labels [batch, {num_classes}]; the dataset gives {labels}"
        )
    if task == SINGLE_LABEL and labels.rank != 1:
        raise EvaluationInputError(
            f"single-label evaluation needs class indices [batch]; the dataset gives {labels}"
        )


@dataclasses.dataclass(frozen=True)
class CheckpointInfo:
    """What a checkpoint holds, found from its variables' names and shapes alone."""

    path: str  # the resolved checkpoint prefix
    kind: str  # "ours" (tf.train.Checkpoint(model=...)) or "tf1" (the released format)
    depth: int
    base_width: int
    num_classes: int


_TF1_BLOCK = re.compile(r"stages_(\d+)_block_(\d+)/")


def inspect_checkpoint(path: str, *, depth: int | None = None) -> CheckpointInfo:
    """Kind, depth, base width and head size of the ResNet in a checkpoint of either kind.

    Args:
      path: a run directory (its latest checkpoint) or a checkpoint prefix, ours or a released TF1 one.
      depth: the expected depth (None: accept what the checkpoint holds).

    Raises:
      EvaluationInputError: no checkpoint there, an unreadable one, no reference ResNet in it, or a depth
        other than `depth`.
    """
    try:
        prefix = checkpoints.resolve_checkpoint_path(path)
    except FileNotFoundError as e:
        raise EvaluationInputError(str(e)) from None
    try:
        kind = "tf1" if checkpoints.is_tf1_checkpoint(prefix) else "ours"
        found = _tf1_model_config(prefix) if kind == "tf1" else checkpoints.infer_model_config(prefix)
    except (tf.errors.OpError, ValueError) as e:
        raise EvaluationInputError(f"cannot read the ResNet in checkpoint {prefix}: {e}") from None
    if depth is not None and depth != found["depth"]:
        raise EvaluationInputError(
            f"depth {depth} was asked for, but {prefix} holds a ResNet-{found['depth']}"
        )
    return CheckpointInfo(path=prefix, kind=kind, **found)


def _tf1_model_config(prefix: str) -> dict[str, int]:
    """Depth (blocks per stage), base width (stem kernel) and head size (logits kernel) from TF1 names."""
    shapes = dict(tf.train.list_variables(prefix))
    stem = shapes.get("init/init_conv/conv2d/kernel")
    head = shapes.get(tf1_checkpoint.HEAD_PREFIX + "kernel")
    if stem is None or head is None:
        raise ValueError("no `init/init_conv/conv2d/kernel` or `logits/dense/kernel`")
    blocks: dict[int, set[int]] = {}
    for name in shapes:
        if match := _TF1_BLOCK.match(name):
            blocks.setdefault(int(match.group(1)), set()).add(int(match.group(2)))
    per_stage = tuple(len(blocks.get(stage, ())) for stage in range(max(blocks, default=-1) + 1))
    depths = [d for d, b in resnet.BLOCKS_PER_STAGE.items() if b == per_stage]
    if not depths:
        raise ValueError(
            f"blocks per stage {per_stage} match no ResNet depth {sorted(resnet.BLOCKS_PER_STAGE)}"
        )
    return {"depth": depths[0], "base_width": int(stem[3]), "num_classes": int(head[1])}


def load_model(path: str, *, depth: int | None = None) -> tuple[keras.Model, CheckpointInfo]:
    """Builds the ResNet a checkpoint (ours or a released TF1 one) holds and loads its weights strictly.

    Used by evaluate.py and the inference tools, so that all of them accept the same checkpoints.

    Raises:
      EvaluationInputError: see `inspect_checkpoint`; also any variable that does not match.
    """
    info = inspect_checkpoint(path, depth=depth)
    model = resnet.build_resnet(info.depth, info.num_classes, base_width=info.base_width)
    try:
        checkpoints.load_model_weights(model, info.path)
    except (tf.errors.OpError, ValueError, AssertionError) as e:
        raise EvaluationInputError(f"cannot load {info.path}: {e}") from None
    logging.info(
        "loaded ResNet-%d (base width %d, %d classes) from %s checkpoint %s",
        info.depth,
        info.base_width,
        info.num_classes,
        info.kind,
        info.path,
    )
    return model, info


def eval_source(
    *,
    num_classes: int,
    data_dir: str = "",
    split_prefix: str = "val",
    tfds_name: str = "",
    tfds_split: str = "validation",
    tfds_data_dir: str = "",
    tfds_manual_dir: str = "",
) -> input_pipeline.Source:
    """The evaluation split (our TFRecords or a TFDS dataset), checked against the model's class count.

    Exactly one of `data_dir` and `tfds_name`. The returned source's `num_records` is the split's size
    where known (it feeds the progress bar's ETA).

    Raises:
      EvaluationInputError: both or neither source, no (complete) manifest in `data_dir`, an unknown TFDS
        dataset, or a class count other than `num_classes`.
    """
    if bool(data_dir) == bool(tfds_name):
        raise EvaluationInputError("give exactly one evaluation source: --data_dir or --tfds_name")
    if data_dir:
        try:
            return input_pipeline.tfrecord_source(
                data_dir,
                split_prefix,
                num_classes=num_classes,
                head="the checkpoint's head",
                hint="evaluate a checkpoint trained for these labels",
            )
        except (FileNotFoundError, ValueError) as e:
            raise EvaluationInputError(str(e)) from None
    dataset_classes, num_records = _tfds_split_info(tfds_name, tfds_split, tfds_data_dir)
    if dataset_classes != num_classes:
        raise EvaluationInputError(
            f"TFDS {tfds_name} has {dataset_classes} classes but the checkpoint's head has {num_classes}"
        )
    source = input_pipeline.tfds_source(
        tfds_name, tfds_split, num_classes=num_classes, data_dir=tfds_data_dir, manual_dir=tfds_manual_dir
    )
    return dataclasses.replace(source, num_records=num_records)


def _tfds_split_info(name: str, split: str, data_dir: str) -> tuple[int, int | None]:
    """(number of label classes, examples in `split` or None before the dataset is prepared)."""
    import tensorflow_datasets as tfds

    try:
        builder = tfds.builder(name, data_dir=data_dir or None)
    except Exception as e:  # tfds raises its own DatasetNotFoundError and friends
        raise EvaluationInputError(f"TFDS dataset {name!r}: {e}") from None
    try:
        label = builder.info.features["label"]
    except (KeyError, TypeError):
        label = None
    if not isinstance(label, tfds.features.ClassLabel):
        raise EvaluationInputError(f"TFDS {name} has no ClassLabel `label`: not a single-label dataset")
    try:
        num_records = int(builder.info.splits[split].num_examples)
    except (KeyError, ValueError):  # metadata of an unprepared dataset has no splits yet
        num_records = None
    return label.num_classes, num_records


@dataclasses.dataclass(frozen=True)
class ModelEvalConfig:
    """What evaluate.py --checkpoint evaluates, and how (the metric settings are `EvalSettings`)."""

    checkpoint: str
    data_dir: str = ""
    split_prefix: str = "val"
    tfds_name: str = ""
    tfds_split: str = "validation"
    tfds_data_dir: str = ""
    tfds_manual_dir: str = ""
    image_sizes: tuple[int, ...] = (224,)
    transform: str = "reference"
    batch_size: int = 64
    max_batches: int = 0
    depth: int | None = None  # None: as stored in the checkpoint
    save_predictions: str = ""  # a `.npz` path (see `predictions_path`); "" saves nothing


def evaluate_checkpoint(
    config: ModelEvalConfig,
    settings: EvalSettings,
    *,
    dist: distributed.Distributed | None = None,
    show_progress: bool = True,
) -> dict[str, Any]:
    """Evaluates a checkpoint on a split at every image size of `config`; the report of `make_report`.

    Every rank of `dist` reads its own shard of the split and gets the same (global) report; every rank
    writes its own predictions file when `config.save_predictions` is set (see `predictions_path`).

    Raises:
      EvaluationInputError: a missing or unreadable checkpoint, a bad source or class count, a bad k.
    """
    dist = dist or distributed.Distributed()
    if not config.image_sizes or min(config.image_sizes) < 1:
        raise EvaluationInputError(f"image sizes must be positive; got {config.image_sizes}")
    try:
        preprocessing.get_transform(config.transform)
    except ValueError as e:
        raise EvaluationInputError(str(e)) from None
    model, info = load_model(config.checkpoint, depth=config.depth)
    source = eval_source(
        num_classes=info.num_classes,
        data_dir=config.data_dir,
        split_prefix=config.split_prefix,
        tfds_name=config.tfds_name,
        tfds_split=config.tfds_split,
        tfds_data_dir=config.tfds_data_dir,
        tfds_manual_dir=config.tfds_manual_dir,
    )
    task = SINGLE_LABEL if source.single_label else MULTILABEL
    make_metrics(task, info.num_classes, settings)  # fail on a bad k before reading any image
    expected = None
    if source.num_records is not None:
        expected = -(-source.num_records // dist.size)
        if config.max_batches:
            expected = min(expected, config.max_batches * config.batch_size)
    results: dict[str, dict[str, float]] = {}
    saved: list[str] = []
    for image_size in config.image_sizes:
        dataset = input_pipeline.eval_dataset(
            source,
            batch_size=config.batch_size,
            image_size=image_size,
            num_shards=dist.size,  # Horovod: each rank reads its own files (or records).
            shard_index=dist.rank,
            transform=config.transform,
        )
        writer = PredictionsWriter() if config.save_predictions else None
        results[str(image_size)] = evaluate_model(
            model,
            dataset,
            task=task,
            num_classes=info.num_classes,
            settings=settings,
            dist=dist,
            max_batches=config.max_batches,
            show_progress=show_progress,
            predictions_writer=writer,
            expected_images=expected,
            description=f"evaluate @{image_size}",
        )
        if writer is not None:
            path = predictions_path(
                config.save_predictions,
                image_size=image_size,
                several_sizes=len(config.image_sizes) > 1,
                rank=dist.rank,
                num_ranks=dist.size,
            )
            if writer.save(path, image_size=image_size):
                saved.append(path)
                logging.info("saved %d predictions to %s", writer.num_images, path)
    source_settings = (
        {"data_dir": config.data_dir, "split_prefix": config.split_prefix}
        if config.data_dir
        else {"tfds_name": config.tfds_name, "tfds_split": config.tfds_split}
    )
    metric_settings = (
        {"topk": settings.topk, "label_threshold": settings.label_threshold, "num_bins": settings.num_bins}
        if task == MULTILABEL
        else {"topk": SINGLE_LABEL_KS}
    )
    return make_report(
        results,
        task=task,
        settings={
            **metric_settings,
            "checkpoint": info.path,
            "checkpoint_kind": info.kind,
            "depth": info.depth,
            "base_width": info.base_width,
            "num_classes": info.num_classes,
            **source_settings,
            "label_format": source.label_format,
            "image_sizes": tuple(config.image_sizes),
            "transform": config.transform,
            "batch_size": config.batch_size,
            "max_batches": config.max_batches,
            "num_ranks": dist.size,
            **({"predictions_files": tuple(saved)} if config.save_predictions else {}),
        },
    )


# ------------------------------------------------------------------- image files (the inference tools)


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    """An image file that could not be used, and why."""

    path: str
    reason: str


def read_image_list(path: str, *, image_root: str = "") -> list[str]:
    """The image files of a list: the first whitespace-separated field of every non-empty line.

    So the release's `im_list_for_classification.txt` (one path per line) and the labelled lists
    (`filename idx:conf ...`) both work; a name containing spaces must be passed as an argument instead.
    Lines starting with `#` are comments. Relative names are joined to `image_root` when it is given.

    Raises:
      EvaluationInputError: the list cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise EvaluationInputError(f"cannot read image list {path}: {e}") from None
    names = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [os.path.join(image_root, name) if image_root else name for name in names]


def collect_image_paths(
    args: Sequence[str], *, image_list: str | None = None, image_root: str = ""
) -> list[str]:
    """The tools' inputs: the files given as arguments, then those of `image_list` (see `read_image_list`).

    Raises:
      EvaluationInputError: no image at all, or an unreadable list.
    """
    paths = list(args)
    if image_list:
        paths += read_image_list(image_list, image_root=image_root)
    if not paths:
        raise EvaluationInputError("no images: pass image files as arguments and/or --image_list")
    return paths


def iter_image_batches(
    paths: Sequence[str],
    *,
    preprocess: Callable[[tf.Tensor], tf.Tensor],
    batch_size: int,
    skipped: list[SkippedImage],
    num_threads: int = 4,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Pre-processed batches of image files, in order; unreadable files are reported and left out.

    A missing, empty, truncated, corrupt or non-image file is logged as a warning, appended to `skipped`
    and left out of its batch (so a batch may be smaller than `batch_size`); it never stops the run.

    Args:
      paths: image files (any format `data.preprocessing.load_image_bytes` reads).
      preprocess: encoded bytes (scalar string) -> float32 array, e.g. a transform of data/preprocessing.py
        with its image size bound; run as a `tf.function`.
      batch_size: files per batch.
      skipped: receives the files that were left out.
      num_threads: files read and pre-processed at once.

    Yields:
      (the batch's paths, float32[len(paths), ...] pre-processed images).
    """
    preprocess_fn = tf.function(preprocess, input_signature=[tf.TensorSpec([], tf.string)])

    def load(path: str) -> np.ndarray | SkippedImage:
        try:
            return preprocess_fn(tf.constant(preprocessing.load_image_bytes(path))).numpy()
        except (ValueError, tf.errors.OpError) as e:
            return SkippedImage(path, str(e).splitlines()[0] if str(e) else type(e).__name__)

    with futures.ThreadPoolExecutor(max(1, num_threads)) as pool:
        for start in range(0, len(paths), batch_size):
            batch_paths = list(paths[start : start + batch_size])
            kept_paths, images = [], []
            for path, loaded in zip(batch_paths, pool.map(load, batch_paths), strict=True):
                if isinstance(loaded, SkippedImage):
                    logging.warning("skipping %s: %s", path, loaded.reason)
                    skipped.append(loaded)
                else:
                    kept_paths.append(path)
                    images.append(loaded)
            if images:
                yield kept_paths, np.stack(images)


def _member_header(archive: zipfile.ZipFile, name: str) -> tuple[tuple[int, ...], np.dtype]:
    with archive.open(f"{name}.npy") as fp:
        shape, _, dtype = _read_npy_header(fp, name)
    return shape, dtype


def _read_npy_header(fp: BinaryIO, name: str) -> tuple[tuple[int, ...], bool, np.dtype]:
    try:
        version = np.lib.format.read_magic(fp)
        read_header = {
            (1, 0): np.lib.format.read_array_header_1_0,
            (2, 0): np.lib.format.read_array_header_2_0,
        }
        if version not in read_header:
            raise EvaluationInputError(
                f"`{name}` uses .npy format version {version}; only 1.0 and 2.0 are read"
            )
        shape, fortran_order, dtype = read_header[version](fp)
    except EvaluationInputError:
        raise
    except ValueError as e:  # numpy's message for a bad magic string or header
        raise EvaluationInputError(f"`{name}` is not a valid .npy member: {e}") from e
    if dtype.hasobject:
        raise EvaluationInputError(f"`{name}` holds Python objects (dtype {dtype}); save numeric arrays")
    return tuple(shape), fortran_order, dtype


def _iter_rows(archive: zipfile.ZipFile, name: str, chunk_size: int) -> Iterator[np.ndarray]:
    """Streams row blocks of one array member (stored or deflated) without loading the whole array."""
    with archive.open(f"{name}.npy") as fp:
        shape, fortran_order, dtype = _read_npy_header(fp, name)
        if fortran_order:  # rows are not contiguous on disk: the whole array must be read
            logging.warning("`%s` was saved in Fortran order: reading it whole (save C-ordered arrays)", name)
            array = np.frombuffer(fp.read(), dtype).reshape(shape, order="F")
            for start in range(0, shape[0], chunk_size):
                yield np.ascontiguousarray(array[start : start + chunk_size])
            return
        row_bytes = dtype.itemsize * math.prod(shape[1:])
        for start in range(0, shape[0], chunk_size):
            rows = min(chunk_size, shape[0] - start)
            data = fp.read(rows * row_bytes)
            if len(data) != rows * row_bytes:
                raise EvaluationInputError(f"`{name}` is truncated: rows from {start} are missing")
            yield np.frombuffer(data, dtype).reshape((rows, *shape[1:]))


def _checked_scores(scores: np.ndarray, task: str, settings: EvalSettings) -> np.ndarray | tf.Tensor:
    if not np.all(np.isfinite(scores)):
        raise EvaluationInputError("`scores` contains NaN or infinite values")
    if task != MULTILABEL:
        return scores  # top-k accuracy only uses the order: logits and probabilities are equivalent
    if settings.apply_sigmoid:
        return tf.sigmoid(tf.cast(scores, tf.float32))
    if scores.min() < 0.0 or scores.max() > 1.0:
        raise EvaluationInputError(
            f"multi-label `scores` range over [{scores.min():g}, {scores.max():g}], outside [0, 1]: mAP needs "
            "probabilities; pass --apply_sigmoid if they are logits"
        )
    return scores


def _check_labels(labels: np.ndarray, predictions: PredictionsFile) -> None:
    if predictions.task == SINGLE_LABEL:
        if labels.min() < 0 or labels.max() >= predictions.num_classes:
            raise EvaluationInputError(
                f"single-label `labels` must be class indices in [0, {predictions.num_classes}); "
                f"found values in [{labels.min()}, {labels.max()}]"
            )
    elif not np.all(np.isfinite(labels)):
        raise EvaluationInputError("`labels` contains NaN or infinite values")


def _json_value(value: Any) -> Any:
    if isinstance(value, tuple):
        return list(value)
    if isinstance(value, float) and math.isnan(value):
        return None
    return value


def _percent(value: float | None) -> str:
    return "n/a" if value is None else f"{100.0 * value:.2f}"
