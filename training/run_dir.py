"""The run directory's guards: one run at a time (a lock), and no resume under a configuration it cannot take.

The lock (`RunLock`, a `data.fileio.DirectoryLock` on `{model_dir}/.lock`). The chief holds it for the whole
run: a second run on the same directory fails at once with one line naming the holder (host, PID, start);
the lock of a run that was killed (kill -9 included) is taken over with a warning naming it; where the file
system has no flock the run starts with a one-line warning that mutual exclusion is off. data/fileio.py
says how it behaves across hosts and file systems.

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
import json
import os
from typing import Any

from absl import logging

from data import fileio
from training import config as config_lib

LOCK_FILE = ".lock"
CONFIG_FILE = "config.json"
HISTORY_FILE = "config_history.jsonl"

# Fields (part.field, as `_flatten` names them) a resume may change: they do not touch the saved state or its
# meaning.
RESUMABLE_FIELDS = frozenset(
    {
        "provenance",
        "model.init_checkpoint",  # not read on resume: the run's own checkpoint wins
        "model.skip_head",
        "data.data_dir",  # the same data, moved
        "data.tfds_data_dir",
        "data.tfds_manual_dir",
        "data.eval_prefix",
        "data.eval_transform",
        "schedule.train_steps",
        "schedule.log_every",
        "schedule.checkpoint_every",
        "schedule.keep_checkpoints",
        "schedule.eval_every",
        "schedule.eval_steps",
        "schedule.topk",
        "runtime.model_dir",
        "runtime.xla",
        # The same images to 1/255 (8 bits or float32 to the device): the numbers move slightly, as with xla;
        # the saved state and input position keep their meaning.
        "runtime.image_transport",
        "runtime.deterministic",
        "runtime.intra_op_threads",
        "runtime.inter_op_threads",
        "runtime.data_threads",
        "runtime.accum_steps",  # the same global batch, in other micro-batches
    }
)
# Fields that follow the number of ranks (config.resolve): on another number of ranks they are re-resolved
# for the new global batch, and the restored step is re-counted in it (training/loop.py).
RANK_FIELDS = frozenset(
    {
        "schedule.num_ranks",
        "schedule.reference_global_batch",
        "schedule.train_steps",
        "schedule.log_every",
        "schedule.checkpoint_every",
        "schedule.eval_every",
        "schedule.learning_rate",
    }
)


class RunDirError(ValueError):
    """The run directory cannot be used as asked (busy, unwritable, or a configuration it cannot resume)."""


class RunLock(fileio.DirectoryLock):
    """An exclusive lock on a run directory, held by one process (the chief) until `release`."""

    def __init__(self, model_dir: str) -> None:
        super().__init__(model_dir, name=LOCK_FILE, flag="--model_dir", error=RunDirError)


def _flatten(d: dict[str, Any]) -> dict[str, Any]:
    """{"runtime": {"xla": true}, ...} -> {"runtime.xla": true, ...} (the learning-rate schedule stays whole);
    a config.json of before the parts were grouped is read in today's layout."""
    out = {}
    for key, value in config_lib.upgrade_dict(d).items():
        if key in config_lib.GROUPS and isinstance(value, dict):
            out.update({f"{key}.{field}": v for field, v in value.items()})
        else:
            out[key] = value
    return out


def config_changes(saved: dict[str, Any], new: dict[str, Any]) -> tuple[list[str], list[str]]:
    """(fields a resume cannot take, fields it can), between two `config.to_dict` outputs.

    On another number of ranks the fields that `config.resolve` derives from it are re-resolved, so only
    what they cannot change is compared: the schedule's kind and the image sizes (not their switch steps).
    """
    saved, new = _flatten(saved), _flatten(new)
    other_ranks = saved.get("schedule.num_ranks") != new.get("schedule.num_ranks")
    refused, allowed = [], []
    derived = {"schedule.global_batch"}  # per_rank_batch x num_ranks
    for field in sorted((set(saved) | set(new)) - derived):
        before, after = saved.get(field), new.get(field)
        if before == after:
            continue
        resumable = field in RESUMABLE_FIELDS
        if other_ranks and field == "schedule.learning_rate":  # re-resolved: the same kind, other numbers
            resumable = (before or {}).get("kind") == (after or {}).get("kind")
        elif (
            other_ranks and field == "schedule.image_sizes"
        ):  # re-resolved: the same sizes, other switch steps
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
        model_dir = self.config.runtime.model_dir
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
    saved = _saved_config(config.runtime.model_dir)
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
                f"{config.runtime.model_dir} holds a checkpoint of another configuration, which cannot resume under "
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
