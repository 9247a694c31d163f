"""Saved predictions: the `.npz` format, its streaming reader and writer, and their evaluation.

`evaluate.py --predictions FILE.npz` evaluates a file without a model (`evaluate_predictions`);
`evaluate.py --save_predictions` writes one per image size and rank (`PredictionsWriter`,
`predictions_path`).

A predictions file holds `scores` float[N, C] and `labels`: float[N, C] confidences (multi-label: in
[0, 1], or -1 for "ignore", the release's convention) or int[N] class indices (single-label); an optional
0-d int `image_size` names the results entry (otherwise "predictions"). The arrays are streamed from the
zip member in row chunks, so an 88,739 x 11,166 file (4 GB of scores) is never held in memory; this works
for `np.savez` and `np.savez_compressed` alike, where `np.load(mmap_mode=...)` ignores mmap for `.npz`.
"""

from __future__ import annotations

import dataclasses
import math
import os
import zipfile
from collections.abc import Iterator
from typing import Any, BinaryIO

import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from data import fileio
from training import metrics
from training.report import (
    MULTILABEL,
    SINGLE_LABEL,
    SINGLE_LABEL_KS,
    ClassInfo,
    EvalSettings,
    EvaluationInputError,
    class_details,
    make_metrics,
    make_report,
)

PREDICTIONS_KEY = "predictions"  # results entry of a predictions file without `image_size`
IGNORE_LABEL = metrics.IGNORE_LABEL  # multi-label: neither a positive nor a negative


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


def evaluate_predictions(
    path: str, settings: EvalSettings, *, show_progress: bool = True, classes: ClassInfo | None = None
) -> dict[str, Any]:
    """Evaluates a saved-predictions `.npz` (see the module docstring) chunk by chunk.

    Args:
      path: the `.npz` with `scores`, `labels` and optionally `image_size`.
      settings: the metric settings.
      show_progress: a tqdm bar (images, rate, ETA) on stderr.
      classes: multi-label: also report per-class AP, the PR curve (and AP per level) with what is known
        about the classes (`report.class_details`); None: the metrics only.

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
        first_row = 0
        for scores, labels in predictions.chunks(settings.chunk_size):
            scores = _checked_scores(scores, predictions.task, settings)
            _check_labels(labels, predictions, first_row=first_row)
            first_row += len(labels)
            streaming.update(scores, labels)
            progress.update(len(scores))
    details = None
    if classes is not None and predictions.task == MULTILABEL:
        details = {predictions.results_key: class_details(streaming.state()["score_histogram"], classes)}
    return make_report(
        {predictions.results_key: streaming.result()},
        details_by_key=details,
        task=predictions.task,
        settings={
            **dataclasses.asdict(settings),
            "topk": settings.topk if predictions.task == MULTILABEL else SINGLE_LABEL_KS,
            "predictions": path,
            "num_classes": predictions.num_classes,
        },
    )


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
        with fileio.atomic_write(path, "wb") as f:  # a file object: np.savez would append ".npz" to a name
            np.savez(f, **arrays)
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


def _check_labels(labels: np.ndarray, predictions: PredictionsFile, *, first_row: int) -> None:
    if predictions.task == SINGLE_LABEL:
        if labels.min() < 0 or labels.max() >= predictions.num_classes:
            raise EvaluationInputError(
                f"single-label `labels` must be class indices in [0, {predictions.num_classes}); "
                f"found values in [{labels.min()}, {labels.max()}]"
            )
        return
    if not np.all(np.isfinite(labels)):
        raise EvaluationInputError("`labels` contains NaN or infinite values")
    values = labels.astype(np.float64, copy=False)
    bad = (values != IGNORE_LABEL) & ((values < 0.0) | (values > 1.0))
    if np.any(bad):
        row, column = (int(i[0]) for i in np.nonzero(bad))
        raise EvaluationInputError(
            f"multi-label `labels` must be confidences in [0, 1] or -1 (ignore); found {values[row, column]:g} "
            f"at row {first_row + row}, class {column} ({int(bad.sum())} such value(s) in rows "
            f"{first_row}-{first_row + len(values) - 1})"
        )
