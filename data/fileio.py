"""Atomic file writes, and the lock that lets one process at a time write a folder.

Atomic writes: the one way this project replaces a file so that no reader ever sees half of it. A file is
written under a temporary name in its own directory (so the rename stays on one file system), flushed and
fsynced, then renamed over the destination; the directory is fsynced too, so that after a power loss the
new name is either fully there or not at all. On any exception (including KeyboardInterrupt and a full
disk) the temporary file is removed and the old destination stays as it was.

The folder lock (`DirectoryLock`): training's run directory (training/run_dir.py), the writer's and the
one-pass downloader's output folder and the downloader's image folder are each written by one run at a
time. The holder keeps an exclusive `fcntl.flock` on a lock file in the folder for the whole run and writes
its host, PID and start time into that file. The kernel releases a flock when its process dies, however it
dies (kill -9 included), so a lock file whose flock can be taken is stale: its recorded holder is named in
a warning and the lock is taken over. A second run on the same folder fails at once with one line naming
the holder. Across hosts: on a shared file system that propagates flock (NFSv4, Lustre mounted with
`-o flock`, GPFS, CephFS) a run on another host is refused the same way; a PID on another host cannot be
checked, so when the flock is free but the file names another host, the lock is taken over with a warning
that says so. On a file system without shared flock (NFSv3 without lockd, Lustre with `-o localflock`) two
hosts can both take it: there, only the warning tells. Where flock is not implemented at all (Lustre
mounted without `-o flock` fails with ENOSYS, NFS without a lock manager with ENOLCK) the run starts with
a one-line warning that mutual exclusion is off: refusing would make the file system unusable.
"""

from __future__ import annotations

import contextlib
import datetime
import errno
import fcntl
import glob
import json
import os
import secrets
import socket
from collections.abc import Iterator
from typing import IO, Any

from absl import logging


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


# ---------------------------------------------------------------------------------------------------------
# The folder lock: one run at a time writes a folder.
# ---------------------------------------------------------------------------------------------------------

# flock's errors on a file system that does not implement it (Lustre mounted without `-o flock` gives
# ENOSYS; NFS without a lock manager ENOLCK; some FUSE file systems EOPNOTSUPP).
_NO_FLOCK = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP})


class FolderBusyError(ValueError):
    """A folder cannot be locked: another run holds it, or it is not writable (one line, for the user)."""


def _check_writable(directory: str, flag: str, error: type[Exception]) -> None:
    try:
        os.makedirs(directory, exist_ok=True)
        probe = os.path.join(directory, f".write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as e:
        reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise error(f"{flag} {directory} is not writable: {reason}") from None


def _missing_dirs(path: str) -> list[str]:
    """`path` and those of its parents that do not exist yet, innermost first (what makedirs would create)."""
    missing = []
    path = os.path.abspath(path)
    while not os.path.exists(path):
        missing.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return missing


class DirectoryLock:
    """An exclusive lock on a folder, held by one process until `release` (see the module docstring).

    Args:
      directory: The folder (created when missing, and checked to be writable).
      name: The lock file's name in it; a hidden name that no data file of the folder can have.
      flag: The command-line flag that names the folder, for the messages (``--model_dir``).
      error: The exception raised when the folder is busy or not writable (a `ValueError` subclass).
      remove_on_release: Remove the lock file at `release` (a data tool's output folder keeps only its
        data); by default it stays, emptied (a run directory's `.lock`).
    """

    _ATTEMPTS = 5  # takes of a lock file that a run giving up removed meanwhile, before "busy"

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        name: str,
        flag: str = "--output_dir",
        error: type[Exception] = FolderBusyError,
        remove_on_release: bool = False,
    ) -> None:
        self.path = os.path.join(os.fspath(directory), name)
        self._remove_on_release = remove_on_release
        self._flag = flag
        self._error = error
        self._fd: int | None = None
        self._locked = False  # False on a file system without flock (`_NO_FLOCK`): the run is unguarded
        # What `acquire` created: the lock file, then directories innermost first.
        self._created: list[str] = []

    def acquire(self) -> DirectoryLock:
        """Takes the lock, or raises `error` naming the holder; creates (and checks) the directory."""
        directory = os.path.dirname(self.path)
        created_dirs = _missing_dirs(directory)
        _check_writable(directory, self._flag, self._error)
        for _ in range(self._ATTEMPTS):
            fd, created = self._open()
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as e:
                if e.errno in _NO_FLOCK:
                    # A file system without flock (Lustre without `-o flock`, some NFS set-ups): refusing
                    # would stop every run there, so run unguarded and say so.
                    logging.warning(
                        "%s cannot be locked (%s): mutual exclusion is off, make sure no other run uses %s",
                        self.path,
                        e.strerror or errno.errorcode.get(e.errno, e.errno),
                        directory,
                    )
                    self._locked = False
                    break
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise self._error(f"cannot lock {self.path}: {e.strerror}") from None
                raise self._error(
                    f"{directory} is in use by another run ({describe_holder(read_holder(self.path))}); "
                    f"wait for it to finish or give another {self._flag}"
                ) from None
            self._locked = True
            if self._is_current(fd):
                break
            os.close(fd)  # a run that did not start removed this file (`release(discard=True)`): open anew
        else:
            raise self._error(f"cannot lock {self.path}: it keeps being removed by another process")
        self._created = ([self.path] if created else []) + created_dirs
        previous = read_holder(self.path)
        if previous and self._locked:
            same_host = previous.get("host") == socket.gethostname()
            logging.warning(
                "taking over the lock of %s: %s",
                describe_holder(previous),
                "that process is gone (a crash or kill)"
                if same_host
                else "written on another host, whose process cannot be checked from here; its flock is free, "
                "so it ended, or this file system does not share locks between hosts",
            )
        holder = {
            "host": socket.gethostname(),
            "pid": os.getpid(),
            "start": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        }
        os.ftruncate(fd, 0)
        os.pwrite(fd, (json.dumps(holder) + "\n").encode(), 0)
        os.fsync(fd)
        self._fd = fd
        return self

    def _open(self) -> tuple[int, bool]:
        """The lock file's descriptor, and whether this call created the file."""
        try:
            return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644), True
        except FileExistsError:
            return os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644), False

    def _is_current(self, fd: int) -> bool:
        """Whether the locked descriptor is still the file at `path` (not one removed before the flock)."""
        try:
            now = os.stat(self.path)
        except FileNotFoundError:
            return False
        held = os.fstat(fd)
        return (held.st_dev, held.st_ino) == (now.st_dev, now.st_ino)

    def release(self, *, discard: bool = False) -> None:
        """Empties the lock file (no holder) and releases the flock.

        Args:
          discard: the run did not start: also remove the lock file and the directories `acquire` created
            (those still empty), so the folder is as it was. The file is removed while it is still
            locked; a run that opened it meanwhile sees that it is gone once it holds the flock and opens
            the path anew (`acquire`), so two runs never hold two different files.
        """
        if self._fd is None:
            return
        created, self._created = self._created, []
        try:
            os.ftruncate(self._fd, 0)
            if (discard and self.path in created) or self._remove_on_release:
                os.remove(self.path)
        except OSError:
            pass
        if self._locked:
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        os.close(self._fd)
        self._fd = None
        if discard:
            for directory in (p for p in created if p != self.path):
                try:
                    os.rmdir(directory)  # only an empty one: anything written there since stays
                except OSError:
                    break

    def __enter__(self) -> DirectoryLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def read_holder(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The holder a lock file names (host, pid, start), or {} when it names none."""
    content = read_json(path)
    return content if isinstance(content, dict) else {}


def describe_holder(holder: dict[str, Any]) -> str:
    """A lock holder for a message: ``host H, PID P, started T``."""
    if not holder:
        return "holder not recorded yet"
    return f"host {holder.get('host', '?')}, PID {holder.get('pid', '?')}, started {holder.get('start', '?')}"
