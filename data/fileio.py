"""Atomic file writes: the one way this project replaces a file so that no reader ever sees half of it.

A file is written under a temporary name in its own directory (so the rename stays on one file system),
flushed and fsynced, then renamed over the destination; the directory is fsynced too, so that after a
power loss the new name is either fully there or not at all. On any exception (including
KeyboardInterrupt and a full disk) the temporary file is removed and the old destination stays as it was.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from collections.abc import Iterator
from typing import IO, Any


def fsync_dir(path: str | os.PathLike[str]) -> None:
    """Makes a rename in directory `path` durable; a no-op where directories cannot be opened."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_write(path: str | os.PathLike[str], mode: str = "w", *, fsync: bool = True) -> Iterator[IO[Any]]:
    """Opens a temporary file that replaces `path` when the `with` block ends without an exception.

    Args:
      path: The destination; its directory is created when missing.
      mode: "w" (text, UTF-8) or "wb" (bytes).
      fsync: Flush the data and the directory entry to disk before returning (turn off only for files that
        are cheap to rebuild).

    Yields:
      The open temporary file.
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"atomic_write mode must be 'w' or 'wb', got {mode!r}")
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        with os.fdopen(fd, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f
            f.flush()
            if fsync:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if fsync:
        fsync_dir(directory)


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Replaces `path` with `data` atomically."""
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    """Replaces `path` with `text` (UTF-8) atomically."""
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)


def write_json(path: str | os.PathLike[str], content: Any, *, indent: int | None = 1, fsync: bool = True) -> None:
    """Replaces `path` with `content` as JSON atomically."""
    with atomic_write(path, "w", fsync=fsync) as f:
        json.dump(content, f, indent=indent)
        f.write("\n")


def read_json(path: str | os.PathLike[str]) -> Any | None:
    """The JSON content of `path`, or None when it is missing or not valid JSON (e.g. a foreign file)."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError, UnicodeDecodeError):
        return None
