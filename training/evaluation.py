"""Model evaluation: shared by evaluate.py (`evaluate_checkpoint`) and the training loop (`evaluate_model`).

- `evaluate_model` streams a dataset through a model into the streaming metrics of training/metrics.py
  (one rank's shard each, all-reduced once at the end).
- `evaluate_checkpoint` is `evaluate.py --checkpoint`: load it, of either kind (a run directory: its newest
  intact checkpoint, `models.pretrained.load_model`), pick the split (`eval_source`), evaluate at every
  image size, optionally save the scores (training/predictions.py), assemble the report
  (training/report.py) with, for multi-label data, the per-class AP, the PR curve and AP per hierarchy
  level (`report.class_details`), and keep a few images with their top tags for a picture (`Samples`).

Saved predictions (`evaluate.py --predictions`) are evaluated by training/predictions.py; the tasks, the
metric settings and the report layout are in training/report.py (imported here under the same names, which
the training loop uses: `MULTILABEL`, `SINGLE_LABEL`, `EvalSettings`).
"""

from __future__ import annotations

import contextlib
import dataclasses
from typing import Any

import keras
import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from data.pixels import preprocessing
from models import checkpoint_files, pretrained
from training import distributed, input_pipeline, metrics, report
from training.predictions import PredictionsWriter, predictions_path
from training.report import (
    MULTILABEL,
    SINGLE_LABEL,
    SINGLE_LABEL_KS,
    EvalSettings,
    EvaluationInputError,
    make_metrics,
    make_report,
)

__all__ = [
    "MULTILABEL",
    "SINGLE_LABEL",
    "EvalSettings",
    "EvaluationInputError",
    "ModelEvalConfig",
    "Samples",
    "eval_source",
    "evaluate_checkpoint",
    "evaluate_model",
    "scores_from_logits",
    "stream_metrics",
]


def scores_from_logits(logits: tf.Tensor, task: str) -> tf.Tensor:
    """Multi-label: sigmoid probabilities (mAP needs them); single-label: softmax (top-k order unchanged)."""
    logits = tf.cast(logits, tf.float32)
    return tf.sigmoid(logits) if task == MULTILABEL else tf.nn.softmax(logits, axis=-1)


@dataclasses.dataclass
class Samples:
    """The first `limit` images an evaluation sees, with their top-k classes: a picture's worth.

    `images` are uint8[H, W, 3] (the network's input, back from [-1, 1]); `top` per image its k best
    (class, score) pairs, best first; `positives` its ground-truth classes (label >= the threshold).
    """

    limit: int = 16
    k: int = 5
    images: list[np.ndarray] = dataclasses.field(default_factory=list)
    top: list[list[tuple[int, float]]] = dataclasses.field(default_factory=list)
    positives: list[set[int]] = dataclasses.field(default_factory=list)

    def add(
        self, images: np.ndarray, scores: np.ndarray, labels: np.ndarray, *, label_threshold: float
    ) -> None:
        """Keeps images of a batch until `limit` are held (multi-label labels [B, C])."""
        room = self.limit - len(self.images)
        if room <= 0:
            return
        images, scores, labels = images[:room], scores[:room], labels[:room]
        pixels = np.clip(np.round((np.asarray(images, np.float32) + 1.0) * 127.5), 0, 255).astype(np.uint8)
        order = np.argsort(-scores, axis=1, kind="stable")[:, : self.k]  # ties: the lower class first
        for image, row, best, label in zip(pixels, scores, order, labels, strict=True):
            self.images.append(image)
            self.top.append([(int(j), float(row[j])) for j in best])
            self.positives.append({int(j) for j in np.flatnonzero(label >= label_threshold)})


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
    source: input_pipeline.Source | None = None,
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
      source: the records behind `dataset`; a bad record or a damaged file among them then ends the
        evaluation with a one-line `input_pipeline.BadRecordError` naming it, not a TensorFlow traceback.

    Returns:
      `metrics.result()`: `precision@k`, `recall@k`, `f1@k`, `instance_f1@k`, `mAP` and counts (multi-label)
      or `top1`, `top5`, `num_images` (single-label); one entry of `make_report`'s `results_by_key`.

    Raises:
      EvaluationInputError: a k larger than the class count, or logits / labels of the wrong shape.
    """
    return stream_metrics(
        model,
        dataset,
        task=task,
        num_classes=num_classes,
        settings=settings,
        dist=dist,
        max_batches=max_batches,
        show_progress=show_progress,
        predictions_writer=predictions_writer,
        expected_images=expected_images,
        description=description,
        source=source,
    ).result()


def stream_metrics(
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
    source: input_pipeline.Source | None = None,
    samples: Samples | None = None,
) -> metrics.MultiLabelMetrics | metrics.SingleLabelMetrics:
    """`evaluate_model`, returning the streaming metrics themselves (all ranks' sums), whose state holds
    more than `result()` (the per-class score histograms of `report.class_details`).

    `samples` (multi-label) keeps this rank's first images with their top classes. The other arguments
    are `evaluate_model`'s.
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
    record_errors = input_pipeline.record_errors(source) if source is not None else contextlib.nullcontext()
    with progress, record_errors:
        for images, labels in dataset:
            scores = scores_fn(tf.cast(images, tf.float32))
            streaming.update(scores, labels)
            if predictions_writer is not None:
                predictions_writer.add(scores.numpy(), labels.numpy())
            if samples is not None and task == MULTILABEL:
                samples.add(
                    images.numpy(), scores.numpy(), labels.numpy(), label_threshold=settings.label_threshold
                )
            progress.update(int(images.shape[0]))
    if dist.size > 1:
        streaming.all_reduce(dist.allreduce_sum)  # Horovod: one all-reduce per sum, after every batch.
    return streaming


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
                count_records=True,  # a release folder has no manifest: the count feeds the progress ETA
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
    # What is known about the classes (`report.load_class_info`): the names (default: the checkpoint's
    # input contract's) and levels of a hierarchy file, training frequencies from tools/dataset_stats.py's
    # JSON or counted in the `train_prefix` split of `data_dir`.
    hierarchy: str = ""
    class_stats: str = ""
    train_prefix: str = ""


def evaluate_checkpoint(
    config: ModelEvalConfig,
    settings: EvalSettings,
    *,
    dist: distributed.Distributed | None = None,
    show_progress: bool = True,
    samples: Samples | None = None,
) -> dict[str, Any]:
    """Evaluates a checkpoint on a split at every image size of `config`; the report of `make_report`.

    Every rank of `dist` reads its own shard of the split and gets the same (global) report; every rank
    writes its own predictions file when `config.save_predictions` is set (see `predictions_path`).
    Multi-label reports hold `report.class_details` per image size; `samples` keeps the first images of
    the first size with their top classes (this rank's).

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
    try:
        # A run directory: its newest intact checkpoint (a damaged latest one is skipped with a warning).
        model, info = pretrained.load_model(config.checkpoint, depth=config.depth)
    except checkpoint_files.CheckpointError as e:
        raise EvaluationInputError(str(e)) from None
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
    classes = None
    if task == MULTILABEL:
        classes = report.load_class_info(
            info.num_classes,
            names=info.contract.class_names,
            hierarchy=config.hierarchy,
            data_dir=config.data_dir,
            train_prefix=config.train_prefix,
            class_stats=config.class_stats,
            label_threshold=settings.label_threshold,
        )
    expected = None
    if source.num_records is not None:
        expected = -(-source.num_records // dist.size)
        if config.max_batches:
            expected = min(expected, config.max_batches * config.batch_size)
    results: dict[str, dict[str, float]] = {}
    details: dict[str, dict[str, Any]] = {}
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
        streaming = stream_metrics(
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
            source=source,
            samples=samples if image_size == config.image_sizes[0] else None,
        )
        results[str(image_size)] = streaming.result()
        if classes is not None:
            details[str(image_size)] = report.class_details(streaming.state()["score_histogram"], classes)
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
        details_by_key=details,
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
            **{
                name: getattr(config, name)
                for name in ("hierarchy", "class_stats", "train_prefix")
                if getattr(config, name)
            },
            "batch_size": config.batch_size,
            "max_batches": config.max_batches,
            "num_ranks": dist.size,
            **({"predictions_files": tuple(saved)} if config.save_predictions else {}),
        },
    )
