"""Where a checkpoint is and whether it is intact: the one reader of a checkpoint path.

A path a user gives (`--checkpoint`, `--init_checkpoint`, `load(path)`) is a run directory (the checkpoints its
`checkpoint` state file lists, latest first: `checkpoint_paths`), a checkpoint prefix, or one of a checkpoint's
own files (`checkpoint_candidates`). `checkpoint_problem` says what is wrong with one (a missing or short data
file, an unreadable index, a variable-size tensor failing its CRC), `resolve_checkpoint` takes the newest
intact one past damaged ones, and `read_newest` reads it again when a run's rotation deletes it meanwhile.
Training's resume (training/resume.py), evaluate.py, the tools and `models.pretrained.load` all go through
here; which ResNet a checkpoint holds is models/architecture.py's question.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from typing import TypeVar

import tensorflow as tf
from absl import logging

from data import fileio

T = TypeVar("T")


class CheckpointError(ValueError):
    """A checkpoint that cannot be used: missing, unreadable, not a reference ResNet, or not the asked one."""


class NoCheckpointError(CheckpointError, FileNotFoundError):
    """No checkpoint where a path points: nothing there, or a file that is not a checkpoint.

    Also a FileNotFoundError, so that callers catching a missing file report it the same way.
    """


class UnusableCheckpointError(NoCheckpointError):
    """A checkpoint that is there but damaged; "nothing there" and "not a checkpoint" are its base class.

    Both a FileNotFoundError (no usable checkpoint is found there: the callers that catch a missing one
    report it the same way) and a ValueError (the entry scripts' one-line usage errors).
    """


def checkpoint_paths(model_dir: str) -> list[str]:
    """The checkpoints the `checkpoint` state file of `model_dir` lists, newest (the latest) first.

    The order is the order of saving, not of step numbers: after a resume on another number of ranks the
    step is re-counted in the new global batch and can be lower than an older checkpoint's. TensorFlow
    already prefixes the file's relative entries with `model_dir` (as given: relative stays relative), so
    the paths are used as they come.
    """
    state = tf.train.get_checkpoint_state(model_dir)
    if state is None:
        return []
    paths = list(state.all_model_checkpoint_paths) or [state.model_checkpoint_path]
    if state.model_checkpoint_path in paths:  # the latest first, then the others newest to oldest
        paths.remove(state.model_checkpoint_path)
    paths = [state.model_checkpoint_path, *reversed(paths)]
    return paths


def checkpoint_candidates(path: str) -> list[str]:
    """The checkpoint prefixes `path` means, the one to use first: the one place that reads a checkpoint path.

    A directory means the checkpoints its state file lists (`checkpoint_paths`: the latest first; the
    training code falls back to older ones past damaged ones); one of a checkpoint's own files (`.index`,
    `.data-*-of-*`) means that checkpoint; anything else is a prefix.

    `path` is taken as a user types it (`fileio.user_path`: `~`, relative to the working directory, a
    trailing slash or a symlink all name the same checkpoint); the prefixes returned are absolute.

    Raises:
      NoCheckpointError: nothing at `path`, no checkpoint in the directory, or a file that is not a
        checkpoint.
    """
    path = fileio.user_path(path)
    if tf.io.gfile.isdir(path):
        candidates = checkpoint_paths(path)
        if not candidates:
            raise NoCheckpointError(f"no checkpoint in directory {path}")
        return candidates
    match = re.fullmatch(r"(.+)\.(index|data-\d+-of-\d+)", path)
    if match and tf.io.gfile.exists(match.group(1) + ".index"):
        path = match.group(1)  # one of a checkpoint's files: its prefix is meant
    if not tf.io.gfile.exists(path + ".index"):
        if tf.io.gfile.exists(path):
            raise NoCheckpointError(
                f"{path} is not a checkpoint: give a checkpoint prefix (the path without .index/.data-*) or "
                "a directory holding a `checkpoint` file"
            )
        raise NoCheckpointError(f"checkpoint {path} not found (no {path}.index)")
    return [path]


def error_line(error: BaseException) -> str:
    """The last line of an error's message (TensorFlow's hold a C++ trace before it), at most 300 chars."""
    text = getattr(error, "message", None) or str(error) or type(error).__name__
    return text.strip().splitlines()[-1][:300] if text.strip() else type(error).__name__


def checkpoint_problem(prefix: str) -> str | None:
    """What is wrong with the checkpoint at `prefix` (None: intact), cheaply but for real.

    Opens the index (a truncated or foreign index fails to parse), checks that the data files it names are
    all there and together hold at least the bytes of every fixed-size tensor (a truncated data file is
    short), and reads the variable-size tensors (the object graph, a serialized iterator) through
    RestoreV2, which checks their CRC. Fixed-size tensors are not read: a load or resume reads them next
    anyway, and reading a ResNet-101 state twice would double its time.
    """
    if not tf.io.gfile.exists(prefix + ".index"):
        return f"{prefix}.index is missing"
    try:
        reader = tf.train.load_checkpoint(prefix)
    except (tf.errors.OpError, ValueError) as e:
        return f"{prefix}.index cannot be read ({error_line(e)})"
    dtypes = reader.get_variable_to_dtype_map()
    shapes = reader.get_variable_to_shape_map()
    data = tf.io.gfile.glob(prefix + ".data-*-of-*")
    shards = {int(m.group(1)) for f in data if (m := re.search(r"-of-(\d+)$", f))}
    if not data or len(shards) != 1 or len(data) != shards.pop():
        return f"the data files of {prefix} are missing or incomplete ({len(data)} found)"
    try:
        have = sum(tf.io.gfile.stat(f).length for f in data)
    except tf.errors.NotFoundError:  # deleted since the glob (a run's rotation)
        return f"the data files of {prefix} were deleted while checked"
    fixed = {n: d for n, d in dtypes.items() if d not in (tf.string, tf.variant, tf.resource)}
    need = sum(math.prod(shapes[n]) * d.size for n, d in fixed.items())
    if have < need:
        return f"{prefix}.data-* is truncated ({have} bytes, the index needs at least {need})"
    variable = sorted(n for n in dtypes if n not in fixed)
    if variable:
        try:
            tf.raw_ops.RestoreV2(
                prefix=prefix,
                tensor_names=variable,
                shape_and_slices=[""] * len(variable),
                dtypes=[dtypes[n] for n in variable],
            )
        except tf.errors.OpError as e:
            return f"{prefix} cannot be read ({error_line(e)})"
    return None


# How often a reader of a run directory takes the newest checkpoint again after the one it took was deleted
# by the run's rotation (`keep_checkpoints`) while it read it; a run saving faster than a checkpoint can be
# read would otherwise keep it busy for ever.
MAX_ROTATIONS = 20


def rotated_away(prefix: str) -> bool:
    """Whether the checkpoint `prefix` is gone: its index or every data file deleted (a run's rotation)."""
    try:
        return not tf.io.gfile.exists(prefix + ".index") or not tf.io.gfile.glob(prefix + ".data-*")
    except tf.errors.OpError:
        return True


def resolve_checkpoint(path: str) -> str:
    """The intact checkpoint prefix `path` (a run directory, a prefix, or one of its files) means.

    A directory's damaged checkpoints (`checkpoint_problem`: cut short by a crash during a save or a full
    disk) are skipped with a warning naming them, and left on disk, for its newest intact one; a damaged
    prefix is refused. A directory's checkpoint that the run deletes while it is checked (its rotation keeps
    only the newest `keep_checkpoints`) is not damaged: the state file is read again for the newest.
    Training's resume, evaluate.py, the tools and `load` all go through here.

    Raises:
      NoCheckpointError: nothing at `path`, or not a checkpoint (see `checkpoint_candidates`).
      UnusableCheckpointError: `path` is damaged (for a directory: all of its checkpoints).
    """
    for _ in range(MAX_ROTATIONS):
        rotated = False
        for prefix in checkpoint_candidates(path):
            problem = checkpoint_problem(prefix)
            if problem is None:
                return prefix
            if not tf.io.gfile.isdir(path):
                raise UnusableCheckpointError(f"{prefix} is not a readable checkpoint: {problem}")
            if rotated_away(prefix):  # deleted by the run since its state file was read
                rotated = True
                break
            logging.warning("skipping the damaged checkpoint %s: %s (its files are kept)", prefix, problem)
        if not rotated:
            raise UnusableCheckpointError(
                f"every checkpoint in {path} is damaged (see the warnings); the files are kept"
            )
        logging.info("a checkpoint of %s was deleted by its run while checked; taking the newest again", path)
    raise UnusableCheckpointError(_too_fast(path))


def _too_fast(path: str) -> str:
    return (
        f"the checkpoints of {path} were deleted {MAX_ROTATIONS} times while being read (the run saves "
        "faster than they can be read): give a checkpoint prefix, or raise the run's --keep_checkpoints"
    )


def read_newest(path: str, read: Callable[[str], T]) -> T:
    """`read(prefix)` of the checkpoint `path` means (`resolve_checkpoint`), on the newest one again when
    the run deletes it while it is read.

    A training run that saves often with few `keep_checkpoints` deletes its older checkpoints as it
    saves; a reader (evaluate.py, the tools, export, `load`) that took the newest one can find its files
    gone half way ("Failed to find any matching files"). Then, and only for a run directory whose
    checkpoint is really gone, the state file is read again and the newest complete checkpoint read.

    Raises:
      whatever `read` raises for any other reason; UnusableCheckpointError after `MAX_ROTATIONS` deletions.
    """
    for _ in range(MAX_ROTATIONS):
        prefix = resolve_checkpoint(path)
        try:
            return read(prefix)
        except (CheckpointError, tf.errors.OpError, ValueError, AssertionError, IndexError):
            if not (tf.io.gfile.isdir(fileio.user_path(path)) and rotated_away(prefix)):
                raise
        logging.warning("%s was deleted by its run while it was read; reading the newest checkpoint", prefix)
    raise UnusableCheckpointError(_too_fast(path))
