"""The run directory's guards: one run at a time (a lock), and no resume under a configuration it cannot take.

The lock. The chief holds an exclusive `fcntl.flock` on `{model_dir}/.lock` for the whole run and writes
its host, PID and start time into that file. The kernel releases a flock when its process dies, however
it dies (kill -9 included), so a lock file whose flock can be taken is stale: its recorded holder is named
in a warning and the lock is taken over. A second run on the same directory fails at once with one line
naming the holder. Across hosts: on a shared file system that propagates flock (NFSv4, Lustre mounted with
`-o flock`, GPFS, CephFS) a run on another host is refused the same way; a PID on another host cannot be
checked, so when the flock is free but the file names another host, the lock is taken over with a warning
that says so. On a file system without shared flock (NFSv3 without lockd, Lustre with `-o localflock`) two
hosts can both take it: there, only the warning tells. Where flock is not implemented at all (Lustre
mounted without `-o flock` fails with ENOSYS, NFS without a lock manager with ENOLCK) the run starts with
a one-line warning that mutual exclusion is off: refusing would make the file system unusable.

The configuration. A resume must run the configuration its checkpoint was trained with. Before anything is
written, the new configuration is compared with the saved `config.json` (`check_config`): a change that the
checkpoint cannot take (the model, the task, the batch, the image sizes, the schedule, ...) is refused in one
line naming the fields, and the directory is left untouched; a change that it can take (train_steps,
logging, checkpoint and evaluation intervals, data locations, ...) is allowed. The check's `ConfigRecord` is
written only once the run is known to start (its data opened, its state restored or initialised): every
configuration a run started with is appended to `config_history.jsonl`, so the original is never lost when
`config.json` is replaced, and a run refused on the way (a wrong class count, an unreadable
--init_checkpoint) records nothing that the next run would report as a change. Such a run also gives its
lock back with `release(discard=True)`: the lock file and the directories that it created are removed, so
the directory is left as it was.
"""

from __future__ import annotations

import dataclasses
import datetime
import errno
import fcntl
import json
import os
import socket
from typing import Any

from absl import logging

from data import fileio
from training import config as config_lib

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# Fields (dotted for nested ones) a resume may change: they do not touch the saved state or its meaning.
RESUMABLE_FIELDS = frozenset(
    {
        "provenance",
        "train_steps",
        "log_every",
        "checkpoint_every",
        "keep_checkpoints",
        "eval_every",
        "eval_steps",
        "topk",
        "model_dir",
        "init_checkpoint",  # not read on resume: the run's own checkpoint wins
        "skip_head",
        "xla",
        "deterministic",
        "intra_op_threads",
        "inter_op_threads",
        "data_threads",
        "accum_steps",  # the same global batch, in other micro-batches
        "data.data_dir",  # the same data, moved
        "data.tfds_data_dir",
        "data.tfds_manual_dir",
        "data.eval_prefix",
        "data.eval_transform",
    }
)
# Fields that follow the number of ranks (config.resolve): on another number of ranks they are re-resolved
# for the new global batch, and the restored step is re-counted in it (training/loop.py).
RANK_FIELDS = frozenset(
    {
        "num_ranks",
        "reference_global_batch",
        "train_steps",
        "log_every",
        "checkpoint_every",
        "eval_every",
        "schedule",
    }
)


# flock's errors on a file system that does not implement it (Lustre mounted without `-o flock` gives
# ENOSYS; NFS without a lock manager ENOLCK; some FUSE file systems EOPNOTSUPP).
_NO_FLOCK = frozenset({errno.ENOSYS, errno.ENOLCK, errno.EOPNOTSUPP})


class RunDirError(ValueError):
    """The run directory cannot be used as asked (busy, unwritable, or a configuration it cannot resume)."""


def _check_writable(model_dir: str) -> None:
    try:
        os.makedirs(model_dir, exist_ok=True)
        probe = os.path.join(model_dir, f".write-test-{os.getpid()}")
        with open(probe, "w", encoding="utf-8"):
            pass
        os.remove(probe)
    except OSError as e:
        reason = "no space left on device" if e.errno == errno.ENOSPC else (e.strerror or str(e))
        raise RunDirError(f"--model_dir {model_dir} is not writable: {reason}") from None


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


class RunLock:
    """An exclusive lock on a run directory, held by one process (the chief) until `release`."""

    _ATTEMPTS = 5  # takes of a lock file that a run giving up removed meanwhile, before "busy"

    def __init__(self, model_dir: str) -> None:
        self.path = os.path.join(model_dir, LOCK_FILE)
        self._fd: int | None = None
        self._locked = False  # False on a file system without flock (`_NO_FLOCK`): the run is unguarded
        self._created: list[
            str
        ] = []  # what `acquire` created: the lock file, then directories innermost first

    def acquire(self) -> RunLock:
        """Takes the lock, or raises RunDirError naming the holder; creates (and checks) the directory."""
        created_dirs = _missing_dirs(os.path.dirname(self.path))
        _check_writable(os.path.dirname(self.path))
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
                        os.path.dirname(self.path),
                    )
                    self._locked = False
                    break
                os.close(fd)
                if e.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise RunDirError(f"cannot lock {self.path}: {e.strerror}") from None
                raise RunDirError(
                    f"{os.path.dirname(self.path)} is in use by another run ({_describe(_read(self.path))}); "
                    "wait for it to finish or give another --model_dir"
                ) from None
            self._locked = True
            if self._is_current(fd):
                break
            os.close(fd)  # a run that did not start removed this file (`release(discard=True)`): open anew
        else:
            raise RunDirError(f"cannot lock {self.path}: it keeps being removed by another process")
        self._created = ([self.path] if created else []) + created_dirs
        previous = _read(self.path)
        if previous and self._locked:
            same_host = previous.get("host") == socket.gethostname()
            logging.warning(
                "taking over the lock of %s: %s",
                _describe(previous),
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
            (those still empty), so the run directory is as it was. The file is removed while it is still
            locked; a run that opened it meanwhile sees that it is gone once it holds the flock and opens
            the path anew (`acquire`), so two runs never hold two different files.
        """
        if self._fd is None:
            return
        created, self._created = self._created, []
        try:
            os.ftruncate(self._fd, 0)
            if discard and self.path in created:
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

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def _read(path: str) -> dict[str, Any]:
    content = fileio.read_json(path)
    return content if isinstance(content, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    if not holder:
        return "holder not recorded yet"
    return f"host {holder.get('host', '?')}, PID {holder.get('pid', '?')}, started {holder.get('start', '?')}"


def _flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in d.items():
        if isinstance(value, dict) and key in ("model", "data"):
            out.update(_flatten(value, f"{key}."))
        else:
            out[prefix + key] = value
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(fields a resume cannot take, fields it can), between two `config.to_dict` outputs.

    On another number of ranks the fields that `config.resolve` derives from it are re-resolved, so only
    what they cannot change is compared: the schedule's kind and the image sizes (not their switch steps).
    """
    saved, new = _flatten(saved), _flatten(new)
    other_ranks = saved.get("num_ranks") != new.get("num_ranks")
    refused, allowed = [], []
    for field in sorted((set(saved) | set(new)) - {"global_batch"}):  # derived: per_rank_batch x num_ranks
        before, after = saved.get(field), new.get(field)
        if before == after:
            continue
        resumable = field in RESUMABLE_FIELDS
        if other_ranks and field == "schedule":  # re-resolved: the same kind of schedule, other numbers
            resumable = (before or {}).get("kind") == (after or {}).get("kind")
        elif other_ranks and field == "image_sizes":  # re-resolved: the same sizes, other switch steps
            resumable = [s for _, s in before or []] == [s for _, s in after or []]
        elif other_ranks and field in RANK_FIELDS:
            resumable = True
        (allowed if resumable else refused).append(field)
    return refused, allowed


def _show(value: Any) -> str:
    text = json.dumps(value, sort_keys=True)
    return text if len(text) <= 60 else text[:57] + "..."


@dataclasses.dataclass
class ConfigRecord:
    """What `check_config` found, to be written by `write` once the run is known to start.

    Attributes:
      config: the run's configuration.
      resuming: the run continues a checkpoint of the directory.
      saved: the configuration saved in the directory (None: none, or unreadable).
      changed: the fields that differ from it (and that this run may change).
      written: `write` ran.
    """

    config: config_lib.TrainConfig
    resuming: bool
    saved: dict[str, Any] | None
    changed: list[str]
    written: bool = False

    def write(self) -> None:
        """Appends the start to `config_history.jsonl` (when new) and writes `config.json`; chief only."""
        model_dir = self.config.model_dir
        if self.changed:
            logging.warning(
                "configuration changed since the last start: %s (recorded in %s)", self.changed, HISTORY_FILE
            )
        history = os.path.join(model_dir, HISTORY_FILE)
        entry = {
            "time": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "resumed": self.resuming,
            "changed": self.changed,
            "config": json.loads(self.config.to_json()),
        }
        if self.saved is not None and not os.path.exists(history):
            # A directory from before the history existed: keep its original configuration first.
            _append(history, {"time": None, "resumed": None, "changed": [], "config": self.saved})
        if self.changed or self.saved is None or not os.path.exists(history):
            _append(history, entry)
        fileio.write_text(os.path.join(model_dir, CONFIG_FILE), self.config.to_json())
        self.written = True


def check_config(config: config_lib.TrainConfig, *, resuming: bool) -> ConfigRecord:
    """Checks `config` against the saved one (when `resuming`); writes nothing (see `ConfigRecord.write`).

    Raises:
      RunDirError: `resuming` and a field the checkpoint cannot take changed.
    """
    new = json.loads(config.to_json())  # as it reads back (tuples become lists)
    saved = _saved_config(config.model_dir)
    changed: list[str] = []
    if isinstance(saved, dict):
        refused, changed = config_changes(saved, new)
        if resuming and refused:
            flat_saved, flat_new = _flatten(saved), _flatten(new)
            shown = "; ".join(
                f"{f} {_show(flat_saved.get(f))} -> {_show(flat_new.get(f))}" for f in refused[:4]
            )
            more = f" (and {len(refused) - 4} more)" if len(refused) > 4 else ""
            raise RunDirError(
                f"{config.model_dir} holds a checkpoint of another configuration, which cannot resume under "
                f"this one: {shown}{more}. Use the original flags, or another --model_dir"
            )
        changed = changed + ([] if resuming else refused)
    return ConfigRecord(
        config, resuming=resuming, saved=saved if isinstance(saved, dict) else None, changed=changed
    )


def _saved_config(model_dir: str) -> dict[str, Any] | None:
    """The saved configuration: config.json, or (when that is unreadable) the history's last entry."""
    saved = fileio.read_json(os.path.join(model_dir, CONFIG_FILE))
    if isinstance(saved, dict):
        return saved
    try:
        with open(os.path.join(model_dir, HISTORY_FILE), encoding="utf-8") as f:
            lines = [line for line in f.read().splitlines() if line.strip()]
        last = json.loads(lines[-1])["config"] if lines else None
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if isinstance(last, dict):
        logging.warning(
            "%s is unreadable: comparing with the last configuration in %s", CONFIG_FILE, HISTORY_FILE
        )
        return last
    return None


def _append(path: str, entry: dict[str, Any]) -> None:
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(entry, sort_keys=True) + "\n")
        f.flush()
        os.fsync(f.fileno())
