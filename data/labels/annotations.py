"""Parsers and writers for the ML-Images annotation lists (docs/REFERENCE.md section 1).

Every list of the release has one image per line, fields separated by TABs or spaces:

- URL list (``train_urls.txt``): ``URL idx:conf idx:conf ...``
- ImageNet-id list: ``nXXXXXXXX/nXXXXXXXX_NNNN.JPEG idx:conf ...``
- image list (after download): ``filename idx:conf ...``
- single-label list (ImageNet fine-tuning): ``filename label_int``

The first three share one grammar (``kind="multi"``): a path followed by zero or more tags, where a tag is
``idx`` (confidence 1.0) or ``idx:conf``; a line with no tags is an image without annotations (the release's
``im_list_for_classification.txt`` is such a list). The fourth is ``kind="single"``.

The full training list has 17.6M lines, so everything here streams: `iter_entries` is a generator that
holds one line at a time, and `ErrorLog` keeps a bounded sample of the bad lines (all of them go to its
report file when it has one). Lists ending in ``.gz`` are read and written through gzip.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import math
import os
import re
from collections.abc import Iterable, Iterator
from typing import IO, Literal

from absl import logging

from data import fileio

Kind = Literal["multi", "single"]
OnError = Literal["skip", "fail"]
KINDS: tuple[str, ...] = ("multi", "single")
ON_ERROR: tuple[str, ...] = ("skip", "fail")

Labels = tuple[tuple[int, float], ...] | int

_INDEX_RE = re.compile(r"-?[0-9]+")


@dataclasses.dataclass(frozen=True)
class Entry:
    """One annotated image of a list.

    Attributes:
      path: The URL, the ``nXXX/nXXX_N.JPEG`` id or the file name, exactly as written in the list.
      labels: For ``kind="multi"`` a tuple of ``(class_index, confidence)`` pairs in the order of the line;
        for ``kind="single"`` the class index.
      line_no: 1-based line number in the list file, so that any later error can point back to the line.
    """

    path: str
    labels: Labels
    line_no: int


class LineError(ValueError):
    """A line of a list that does not follow its format; the message names ``file:line``."""

    def __init__(self, file: str, line_no: int, reason: str, line: str = ""):
        self.file = file
        self.line_no = line_no
        self.reason = reason
        self.line = line
        super().__init__(f"{file}:{line_no}: {reason}")


class ErrorLog:
    """Collects the bad lines met while streaming a list (``on_error="skip"``).

    A 17.6M-line list could hold millions of bad lines, so memory is bounded: `count` counts them all,
    `examples` keeps the first `max_kept`, and when `report_path` is given every one of them is written
    there as it is met (``file<TAB>line<TAB>reason<TAB>text``). Use it as a context manager (or call
    `close`) to flush the report.

    Args:
      report_path: Optional file that receives every bad line as it is found.
      max_kept: How many `LineError`s to keep in memory for display and tests.
    """

    def __init__(self, report_path: str | os.PathLike | None = None, max_kept: int = 1000):
        self.count = 0
        self.examples: list[LineError] = []
        self.max_kept = max_kept
        self.report_path = os.fspath(report_path) if report_path is not None else None
        self._report: IO[str] | None = None

    def add(self, error: LineError) -> None:
        """Records one bad line."""
        self.count += 1
        if len(self.examples) < self.max_kept:
            self.examples.append(error)
        if self.report_path is not None:
            if self._report is None:
                self._report = open(self.report_path, "w", encoding="utf-8")
            text = error.line.replace("\t", " ").rstrip("\n")
            self._report.write(f"{error.file}\t{error.line_no}\t{error.reason}\t{text}\n")

    def close(self) -> None:
        """Flushes and closes the report file (a no-op when nothing was written)."""
        if self._report is not None:
            self._report.close()
            self._report = None

    def __enter__(self) -> ErrorLog:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()


def _check_choice(name: str, value: str, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"{name} must be one of {choices}, got {value!r}")


def _parse_index(token: str, num_classes: int | None) -> int:
    # Plain ASCII digits only: int() would also take "+3", "1_0" and non-ASCII digits.
    if not _INDEX_RE.fullmatch(token):
        raise ValueError(f"class index {token!r} is not an integer")
    index = int(token)
    if index < 0:
        raise ValueError(f"class index {index} is negative")
    if num_classes is not None and index >= num_classes:
        raise ValueError(f"class index {index} >= num_classes {num_classes}")
    return index


def _parse_tag(token: str, num_classes: int | None) -> tuple[int, float]:
    index_text, sep, conf_text = token.partition(":")
    index = _parse_index(index_text, num_classes)
    if not sep:
        return index, 1.0
    try:
        conf = float(conf_text)
    except ValueError:
        raise ValueError(f"confidence {conf_text!r} of tag {token!r} is not a number") from None
    if not (0.0 <= conf <= 1.0):  # Also rejects NaN.
        raise ValueError(f"confidence {conf_text} of class {index} is outside [0, 1]")
    return index, conf


def parse_line(text: str, *, kind: Kind = "multi", num_classes: int | None = None) -> tuple[str, Labels]:
    """Parses the fields of one non-blank line.

    Exposed so that tools which read byte ranges of a list themselves (the sharded TFRecord writer) apply
    exactly the same rules as `iter_entries`.

    Args:
      text: The line, with or without its newline (``\r\n`` too). A UTF-8 byte order mark at its start
        (what some editors write at the start of a file) is not part of the path.
      kind: ``"multi"`` (``path idx[:conf] ...``) or ``"single"`` (``path label_int``).
      num_classes: When given, indices must be below it.

    Returns:
      ``(path, labels)`` as in `Entry`.

    Raises:
      ValueError: The line does not follow the format; the message says why (without file:line, which
        the caller adds).
    """
    fields = text.removeprefix("\ufeff").split()
    if not fields:
        raise ValueError("blank line")
    path, tokens = fields[0], fields[1:]
    if kind == "single":
        if len(tokens) != 1:
            raise ValueError(f"expected 'path label_int', got {len(fields)} fields")
        return path, _parse_index(tokens[0], num_classes)
    labels = tuple(_parse_tag(token, num_classes) for token in tokens)
    if len({index for index, _ in labels}) != len(labels):
        raise ValueError("a class index appears twice")
    return path, labels


def _open_binary(path: str, mode: str, *, compressed: bool) -> IO[bytes]:
    """Opens a list in binary mode ("rb"/"wb"), through gzip when `compressed`."""
    return gzip.open(path, mode) if compressed else open(path, mode)


def iter_entries(
    path: str | os.PathLike,
    *,
    kind: Kind = "multi",
    num_classes: int | None = None,
    on_error: OnError = "skip",
    errors: ErrorLog | None = None,
) -> Iterator[Entry]:
    """Streams the entries of a list file, one line in memory at a time.

    Blank lines are ignored. A bad line (wrong field count, a non-integer or negative index, an index
    >= `num_classes`, a confidence that is not a number in [0, 1], a repeated index, invalid UTF-8) is
    either skipped and recorded in `errors` or raised, depending on `on_error`.

    Args:
      path: The list file (``.gz`` is decompressed on the fly).
      kind: ``"multi"`` for the URL, ImageNet-id and image lists; ``"single"`` for ``path label_int``.
      num_classes: When given, class indices must be below it (11,166 for ML-Images).
      on_error: ``"skip"`` to record bad lines and go on, ``"fail"`` to raise on the first one.
      errors: Where skipped lines are recorded; when None they are only counted in a warning at the end.

    Yields:
      One `Entry` per valid line, in file order.

    Raises:
      LineError: With ``on_error="fail"``, for the first bad line (a ValueError naming ``file:line``).
    """
    _check_choice("kind", kind, KINDS)
    _check_choice("on_error", on_error, ON_ERROR)
    name = os.fspath(path)
    skipped = 0
    with _open_binary(name, "rb", compressed=name.endswith(".gz")) as f:
        for line_no, raw in enumerate(f, start=1):
            if not raw.strip():
                continue
            try:
                text = raw.decode("utf-8")
                entry_path, labels = parse_line(text, kind=kind, num_classes=num_classes)
            except ValueError as e:  # UnicodeDecodeError is a ValueError too.
                error = LineError(name, line_no, str(e), raw.decode("utf-8", "replace"))
                if on_error == "fail":
                    raise error from e
                skipped += 1
                if errors is not None:
                    errors.add(error)
                continue
            yield Entry(entry_path, labels, line_no)
    if skipped:
        logging.warning("%s: skipped %d bad line(s)", name, skipped)


def format_confidence(conf: float) -> str:
    """Shortest text that parses back to the same float, without a trailing ``.0`` (``1``, ``0.9``)."""
    if not math.isfinite(conf):
        raise ValueError(f"confidence {conf} is not finite")
    text = repr(float(conf))
    return text[:-2] if text.endswith(".0") else text


def format_entry(path: str, labels: Labels, *, kind: Kind = "multi") -> str:
    """Formats one line (without newline) in the release's TAB-separated layout."""
    if any(c.isspace() for c in path) or not path:
        raise ValueError(f"path {path!r} is empty or contains whitespace, which the format cannot express")
    if kind == "single":
        if not isinstance(labels, int):
            raise ValueError(f"a single-label entry needs an int label, got {labels!r}")
        return f"{path}\t{labels}"
    if isinstance(labels, int):
        raise ValueError(f"a multi-label entry needs (index, confidence) pairs, got {labels!r}")
    return "\t".join([path] + [f"{int(i)}:{format_confidence(c)}" for i, c in labels])


def write_entries(path: str | os.PathLike, entries: Iterable[Entry], *, kind: Kind = "multi") -> int:
    """Writes entries as a list file that `iter_entries` reads back to the same entries (line numbers aside).

    Streams: `entries` may be a generator over a 17.6M-line list. Confidences are written in their
    shortest exact form (``1``, ``0.9``). The file is written to a temporary name and renamed, so an
    interrupted run never leaves a half-written list under the final name.

    Args:
      path: Output file (``.gz`` compresses).
      entries: The entries to write, in order.
      kind: ``"multi"`` or ``"single"``; must match the entries' labels.

    Returns:
      The number of lines written.
    """
    _check_choice("kind", kind, KINDS)
    path = os.fspath(path)
    count = 0
    with fileio.atomic_write(path, "wb") as raw:
        # mtime=0: the same entries give the same .gz bytes. GzipFile leaves `raw` open for atomic_write.
        compressed = gzip.GzipFile(fileobj=raw, mode="wb", mtime=0) if path.endswith(".gz") else None
        with compressed or contextlib.nullcontext(raw) as f:
            for entry in entries:
                f.write((format_entry(entry.path, entry.labels, kind=kind) + "\n").encode("utf-8"))
                count += 1
    return count
