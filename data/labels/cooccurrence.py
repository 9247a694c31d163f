"""The co-occurrence augmentation of the annotations: counting class pairs, selecting them, adding tags.

data/cooccurrence.py is its command line.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Mapping

import numpy as np
from absl import logging

from data.labels import annotations
from data.labels.hierarchy import Hierarchy


@dataclasses.dataclass(frozen=True)
class CooccurrenceConfig:
    """Thresholds and the choices the reference leaves open.

    Attributes:
      score_threshold: An OI posterior strictly above this counts as a hit (reference: 0.95).
      cooccurrence_threshold: Pairs with normalised co-occurrence strictly above this are selected
        (reference: 0.5).
      confidence: Confidence written for an added tag (not published by the reference).
      propagate: Also add the ancestors of an added tag, at the same confidence.
    """

    score_threshold: float = 0.95
    cooccurrence_threshold: float = 0.5
    confidence: float = 1.0
    propagate: bool = False


class CooccurrenceCounter:
    """Accumulates co-occurrence counts over chunks of images, so scores for 10.7M images can stream.

    Args:
      num_rows: Size of the ImageNet-label space (labels must be in [0, num_rows); -1 marks an image to
        ignore). The CLI uses the ML-Images class indices, so num_rows = 11,166.
      num_oi: Number of OI score columns (1,134 in the reference).
      score_threshold: A posterior strictly above this is a hit.
    """

    def __init__(self, num_rows: int, num_oi: int, *, score_threshold: float = 0.95):
        self.score_threshold = score_threshold
        self.counts = np.zeros((num_rows, num_oi), dtype=np.int64)
        self.images = np.zeros(num_rows, dtype=np.int64)

    def update(self, scores: np.ndarray, labels: np.ndarray) -> None:
        """Adds a chunk: `scores` float[n, num_oi] (OI posteriors), `labels` int[n] (ImageNet class)."""
        labels = np.asarray(labels, dtype=np.int64)
        scores = np.asarray(scores)
        if scores.shape != (labels.shape[0], self.counts.shape[1]):
            raise ValueError(
                f"scores shape {scores.shape} does not match {labels.shape[0]} labels x {self.counts.shape[1]}"
            )
        if labels.size and (labels.max() >= self.counts.shape[0] or labels.min() < -1):
            raise ValueError(f"labels must be in [-1, {self.counts.shape[0]})")
        keep = labels >= 0
        labels, scores = labels[keep], scores[keep]
        if not labels.size:
            return
        order = np.argsort(labels, kind="stable")
        sorted_labels = labels[order]
        starts = np.flatnonzero(np.concatenate([[True], sorted_labels[1:] != sorted_labels[:-1]]))
        hits = scores[order] > self.score_threshold
        # Per-label sums of the boolean hits, accumulated in int32 without an int copy of the chunk.
        sums = np.add.reduceat(hits, starts, axis=0, dtype=np.int32)
        rows = sorted_labels[starts]
        self.counts[rows] += sums
        self.images[rows] += np.diff(np.append(starts, sorted_labels.size))

    def normalized(self) -> np.ndarray:
        """float64[num_rows, num_oi]: counts / images per row (0 for a row without images)."""
        return self.counts / np.maximum(self.images, 1)[:, None]


def select_pairs(
    counter: CooccurrenceCounter,
    *,
    oi_to_class: np.ndarray,
    hierarchy: Hierarchy | None,
    threshold: float = 0.5,
) -> np.ndarray:
    """The (ImageNet class i, ML-Images class of OI column j) pairs to add, as int64[P, 2], sorted.

    Args:
      counter: Accumulated counts; its rows are ML-Images class indices.
      oi_to_class: int[num_oi], the ML-Images class of each OI column (-1: ignore the column).
      hierarchy: Used to drop pairs with a hierarchy path (None: only drop i == j).
      threshold: Normalised co-occurrence must be strictly above it.
    """
    oi_to_class = np.asarray(oi_to_class, dtype=np.int64)
    if oi_to_class.shape != (counter.counts.shape[1],):
        raise ValueError(f"oi_to_class has shape {oi_to_class.shape}, expected ({counter.counts.shape[1]},)")
    rows, cols = [], []
    block = 1024  # Row blocks keep the float temporary small (the full matrix is 11,166 x 1,134).
    for start in range(0, counter.counts.shape[0], block):
        counts = counter.counts[start : start + block]
        images = counter.images[start : start + block]
        r, c = np.nonzero((counts > threshold * images[:, None]) & (images[:, None] > 0))
        rows.append(r + start)
        cols.append(c)
    i = np.concatenate(rows)
    j = oi_to_class[np.concatenate(cols)]
    keep = j >= 0
    i, j = i[keep], j[keep]
    related = hierarchy.has_path_pairs(i, j) if hierarchy is not None else i == j
    pairs = np.unique(np.stack([i[~related], j[~related]], axis=1), axis=0)
    return pairs.reshape(-1, 2)


def additions_by_class(pairs: np.ndarray) -> dict[int, tuple[int, ...]]:
    """Groups selected pairs by ImageNet class: i -> the classes to add to its images."""
    out: dict[int, list[int]] = {}
    for i, j in pairs.tolist():
        out.setdefault(i, []).append(j)
    return {i: tuple(js) for i, js in out.items()}


def primary_label(labels: annotations.Labels, hierarchy: Hierarchy) -> int:
    """The ImageNet class of a list line: its deepest confidence-1 tag (-1 when it has none).

    Ties in depth (not expected for ImageNet images, whose confidence-1 tags form one chain) go to the
    smallest index, so the choice is deterministic.
    """
    if isinstance(labels, int):
        return labels
    ones = [idx for idx, conf in labels if conf == 1.0]
    if not ones:
        return -1
    return min(ones, key=lambda idx: (-int(hierarchy.depth[idx]), idx))


def augment(
    labels: tuple[tuple[int, float], ...],
    added: tuple[int, ...],
    *,
    confidence: float,
    hierarchy: Hierarchy | None = None,
) -> tuple[tuple[int, float], ...]:
    """Adds classes to one line's tags; existing tags keep their order, new ones follow in index order.

    A class already present keeps the larger confidence. With `hierarchy`, the ancestors of the added
    classes are added too (same confidence).
    """
    if not added:
        return labels
    extra: Mapping[int, float] = {j: confidence for j in added}
    if hierarchy is not None:
        extra = hierarchy.propagate(extra)
    merged = dict(labels)
    for j, conf in extra.items():
        merged[j] = max(merged.get(j, 0.0), conf)
    existing = [(i, merged[i]) for i, _ in labels]
    new = sorted((j, c) for j, c in merged.items() if j not in dict(labels))
    return tuple(existing + new)


def read_oi_mapping(path: str | os.PathLike[str], *, num_classes: int) -> np.ndarray:
    """Reads the OI-column -> ML-Images-class mapping (one int per line; -1 ignores the column)."""
    values = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:  # a byte order mark (line 1) and a CR before the newline are not part of the index
                line = raw.decode("utf-8-sig" if line_no == 1 else "utf-8")
            except UnicodeDecodeError as e:
                raise ValueError(f"{path}:{line_no}: not UTF-8 text ({e.reason})") from None
            text = line.split("#", 1)[0].strip()
            if not text:
                continue
            try:
                value = int(text)
            except ValueError:
                raise ValueError(f"{path}:{line_no}: expected a class index, got {line.strip()!r}") from None
            if not -1 <= value < num_classes:
                raise ValueError(f"{path}:{line_no}: class index {value} outside [-1, {num_classes})")
            values.append(value)
    return np.asarray(values, dtype=np.int64)


def count_list(
    input_list: str | os.PathLike[str],
    scores: np.ndarray,
    *,
    hierarchy: Hierarchy,
    score_threshold: float,
    chunk: int = 8192,
) -> CooccurrenceCounter:
    """Pass 1: streams the list and the (memory-mapped) score rows, chunk by chunk.

    Row r of `scores` belongs to the r-th entry (non-blank line) of the list; any bad line raises, since
    skipping it would silently shift every later row.
    """
    counter = CooccurrenceCounter(hierarchy.num_classes, scores.shape[1], score_threshold=score_threshold)
    labels: list[int] = []
    row = 0
    for entry in annotations.iter_entries(input_list, num_classes=hierarchy.num_classes, on_error="fail"):
        labels.append(primary_label(entry.labels, hierarchy))
        if len(labels) == chunk:
            if row + chunk > scores.shape[0]:
                raise ValueError(
                    f"{input_list} has more entries than the {scores.shape[0]} rows of the scores"
                )
            counter.update(np.asarray(scores[row : row + chunk]), np.asarray(labels))
            row += chunk
            labels = []
    if row + len(labels) != scores.shape[0]:
        raise ValueError(
            f"{input_list} has {row + len(labels)} entries but the scores have {scores.shape[0]} rows"
        )
    if labels:
        counter.update(np.asarray(scores[row:]), np.asarray(labels))
    return counter


def augment_list(
    input_list: str | os.PathLike[str],
    output_list: str | os.PathLike[str],
    scores: np.ndarray,
    *,
    oi_to_class: np.ndarray,
    hierarchy: Hierarchy,
    config: CooccurrenceConfig = CooccurrenceConfig(),
    pairs_out: str | os.PathLike[str] | None = None,
) -> dict[str, int]:
    """Both passes: count, select the pairs, then rewrite the list with the added tags.

    Args:
      input_list: Image list of the ImageNet images (`filename idx:conf ...`).
      output_list: Where the augmented list goes (written atomically).
      scores: float[num_entries, num_oi] OI posteriors, row r for the r-th entry (may be a memmap).
      oi_to_class: int[num_oi], ML-Images class of each OI column (-1: ignore).
      hierarchy: The semantic hierarchy.
      config: Thresholds and choices.
      pairs_out: Optional TSV of the selected pairs with names and figures, for inspection.

    Returns:
      Counts: entries, pairs, lines_changed, tags_added.
    """
    counter = count_list(input_list, scores, hierarchy=hierarchy, score_threshold=config.score_threshold)
    pairs = select_pairs(
        counter, oi_to_class=oi_to_class, hierarchy=hierarchy, threshold=config.cooccurrence_threshold
    )
    adds = additions_by_class(pairs)
    if pairs_out is not None:
        _write_pairs(pairs_out, pairs, counter=counter, oi_to_class=oi_to_class, hierarchy=hierarchy)
    stats = {"entries": 0, "pairs": int(pairs.shape[0]), "lines_changed": 0, "tags_added": 0}

    def rewritten() -> Iterator[annotations.Entry]:
        for entry in annotations.iter_entries(input_list, num_classes=hierarchy.num_classes, on_error="fail"):
            stats["entries"] += 1
            added = adds.get(primary_label(entry.labels, hierarchy), ())
            labels = augment(
                entry.labels,
                added,
                confidence=config.confidence,
                hierarchy=hierarchy if config.propagate else None,
            )
            if labels != entry.labels:
                stats["lines_changed"] += 1
                stats["tags_added"] += len(labels) - len(entry.labels)
            yield dataclasses.replace(entry, labels=labels)

    annotations.write_entries(output_list, rewritten())
    logging.info("Co-occurrence augmentation: %s", stats)
    return stats


def _write_pairs(
    path: str | os.PathLike[str],
    pairs: np.ndarray,
    *,
    counter: CooccurrenceCounter,
    oi_to_class: np.ndarray,
    hierarchy: Hierarchy,
) -> None:
    column_of = {int(c): k for k, c in enumerate(oi_to_class.tolist()) if c >= 0}
    with open(path, "w", encoding="utf-8") as f:
        f.write("imagenet_class\timagenet_name\tadded_class\tadded_name\tcooccurrence\timages\tnormalized\n")
        for i, j in pairs.tolist():
            count, images = int(counter.counts[i, column_of[j]]), int(counter.images[i])
            f.write(
                f"{i}\t{hierarchy.name(i)}\t{j}\t{hierarchy.name(j)}\t{count}\t{images}\t{count / images:.4f}\n"
            )
