"""Atomic file writes: the one way this project replaces a file so that no reader ever sees half of it.

A file is written under a temporary name in its own directory (so the rename stays on one file system),
flushed and fsynced, then renamed over the destination; the directory is fsynced too, so that after a
power loss the new name is either fully there or not at all. On any exception (including
KeyboardInterrupt and a full disk) the temporary file is removed and the old destination stays as it was.
"""

from __future__ import annotations

import contextlib
import glob
import json
import os
import secrets
from collections.abc import Iterator
from typing import IO, Any


def user_path(path: str | os.PathLike[str]) -> str:
    """A path as the user typed it, made absolute: `~` expanded, relative to the working directory.

    Every path a command line or `models.pretrained.load` takes goes through here once, at the boundary, so
    that everything after it (TensorFlow's checkpoint state file, which stores paths relative to the run
    directory and prefixes them with the directory it was read from; a later `chdir`; messages) sees one
    form: `demo_run`, `./demo_run/`, `~/x/demo_run` and a symlink to it name the same run. A URL-like path
    (`gs://...`) is returned as it is.
    """
    path = os.fspath(path)
    if "://" in path:
        return path
    return os.path.abspath(os.path.expanduser(path))


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


def _create_temp(directory: str, name: str) -> str:
    """Creates an empty, new ``.<name>.<random>.tmp`` in `directory` with the umask's permissions.

    Not `tempfile.mkstemp`, whose files are private (0600): a dataset or a checkpoint written by one user is
    read by others (training jobs, other machines), as any file created with `open` would be.
    """
    while True:
        tmp = os.path.join(directory, f".{name}.{secrets.token_hex(6)}.tmp")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
        except FileExistsError:
            continue
        return tmp


def remove_temp_files(path: str | os.PathLike[str]) -> int:
    """Removes the temporary files that processes killed while writing `path` left beside it.

    Call it only where no live process can be writing `path` (a re-run of the job that owns the file).

    Returns:
      The number of files removed.
    """
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    leftovers = glob.glob(os.path.join(glob.escape(folder), f".{glob.escape(name)}.*.tmp"))
    for leftover in leftovers:
        with contextlib.suppress(FileNotFoundError):
            os.remove(leftover)
    return len(leftovers)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str], *, fsync: bool = True) -> Iterator[str]:
    """Yields a temporary file name that replaces `path` when the `with` block ends without an exception.

    For writers that open a file by name themselves (`tf.io.TFRecordWriter`); they must have closed it
    when the block ends. The temporary file is ``.<basename>.<random>.tmp`` beside `path`, so a process
    killed inside the block leaves only such a hidden file, which no reader globs for.

    Args:
      path: The destination; its directory is created when missing.
      fsync: Flush the file and the directory entry to disk before returning.

    Yields:
      The temporary file's name (the file exists, empty).
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    os.makedirs(directory, exist_ok=True)
    tmp = _create_temp(directory, os.path.basename(path))
    try:
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)  # fsync flushes the file's data whichever descriptor wrote it.
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.remove(tmp)
        raise
    if fsync:
        fsync_dir(directory)


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
    with atomic_path(path, fsync=fsync) as tmp:
        with open(tmp, mode, **({"encoding": "utf-8"} if mode == "w" else {})) as f:
            yield f


def write_bytes(path: str | os.PathLike[str], data: bytes, *, fsync: bool = True) -> None:
    """Replaces `path` with `data` atomically."""
    with atomic_write(path, "wb", fsync=fsync) as f:
        f.write(data)


def write_text(path: str | os.PathLike[str], text: str, *, fsync: bool = True) -> None:
    """Replaces `path` with `text` (UTF-8) atomically."""
    with atomic_write(path, "w", fsync=fsync) as f:
        f.write(text)


def write_json(
    path: str | os.PathLike[str], content: Any, *, indent: int | None = 1, fsync: bool = True
) -> None:
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
