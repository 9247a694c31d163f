"""Data parallelism behind one small interface: the ONLY module that imports Horovod.

`init()` returns a `Distributed`: with Horovod installed and launched under `horovodrun`, the Horovod
implementation; otherwise (not installed, or asked not to) a single-process implementation of size 1
behind the same interface, so every script also runs as plain `python train.py`.

Keras 3 variables have no `.ref()`, so `hvd.DistributedGradientTape` and `horovod.tensorflow.keras` do
not work with them: this module uses Horovod's tensor-level API only (grouped all-reduce of gradient
tensors, broadcast of variable values). Horovod ops cannot be XLA-compiled: call these methods from a plain
`tf.function` around the jit-compiled forward/backward, never inside it.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import tensorflow as tf
from absl import logging


class Distributed:
    """Single-process implementation (size 1); the base of the Horovod one."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def is_chief(self) -> bool:
        """Only the chief (rank 0) writes checkpoints, logs and summaries."""
        return self.rank == 0

    def allreduce_sum(self, tensor: tf.Tensor) -> tf.Tensor:
        """Element-wise sum of `tensor` over all ranks."""
        return tf.convert_to_tensor(tensor)

    def allreduce_mean(self, tensor: tf.Tensor) -> tf.Tensor:
        """Element-wise mean of `tensor` over all ranks."""
        return tf.convert_to_tensor(tensor)

    def average_gradients(self, gradients: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Mean of each gradient over all ranks (one fused all-reduce for the whole list)."""
        return [tf.convert_to_tensor(g) for g in gradients]

    def broadcast_variables(self, variables: Sequence[tf.Variable], root_rank: int = 0) -> None:
        """Assigns rank `root_rank`'s values to `variables` on every rank."""
        del variables, root_rank

    def barrier(self) -> None:
        """Blocks until every rank has reached this point."""


class _HorovodDistributed(Distributed):
    """Horovod (tensor-level API) implementation."""

    def __init__(self, hvd) -> None:  # Horovod: the module handle, already initialised.
        self._hvd = hvd
        self.size = hvd.size()
        self.rank = hvd.rank()
        self.local_rank = hvd.local_rank()

    def allreduce_sum(self, tensor: tf.Tensor) -> tf.Tensor:
        return self._hvd.allreduce(tensor, op=self._hvd.Sum)  # Horovod: sum over ranks.

    def allreduce_mean(self, tensor: tf.Tensor) -> tf.Tensor:
        return self._hvd.allreduce(tensor, op=self._hvd.Average)  # Horovod: mean over ranks.

    def average_gradients(self, gradients: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        # Horovod: one grouped all-reduce per dtype (a group must share one), fused into few ring operations.
        gradients = [tf.convert_to_tensor(g) for g in gradients]
        averaged: list[tf.Tensor | None] = [None] * len(gradients)
        for dtype in dict.fromkeys(g.dtype for g in gradients):
            index = [i for i, g in enumerate(gradients) if g.dtype == dtype]
            reduced = self._hvd.grouped_allreduce([gradients[i] for i in index], op=self._hvd.Average)
            for i, r in zip(index, reduced, strict=True):
                averaged[i] = r
        return averaged

    def broadcast_variables(self, variables: Sequence[tf.Variable], root_rank: int = 0) -> None:
        # Horovod: broadcast values (Keras 3 variables are not hashable by .ref()).
        for i, variable in enumerate(variables):
            value = self._hvd.broadcast(tf.convert_to_tensor(variable), root_rank, name=f"bcast_{i}")
            variable.assign(value)

    def barrier(self) -> None:
        self._hvd.allreduce(tf.constant(0.0), op=self._hvd.Sum, name="barrier")


def launched_by_horovodrun() -> bool:
    """True when this process was started by horovodrun (its rank variables are set)."""
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def init(use_horovod: bool | None = None) -> Distributed:
    """Initialises data parallelism.

    Args:
      use_horovod: True requires Horovod (error if missing); False forces a single process; None uses
        Horovod when this process was launched by horovodrun and Horovod imports.

    Returns:
      The `Distributed` for this process.
    """
    if use_horovod is None:
        use_horovod = launched_by_horovodrun()
    if not use_horovod:
        return Distributed()
    try:
        import horovod.tensorflow as hvd  # Horovod: the single import in the project.
    except ImportError as e:
        raise RuntimeError(
            "Horovod was requested (launched by horovodrun) but `import horovod.tensorflow` failed: "
            f"{e}. Install it with `bash tools/install.sh`, or run without horovodrun."
        ) from e
    hvd.init()  # Horovod: join the ring.
    dist = _HorovodDistributed(hvd)
    logging.info("Horovod: rank %d of %d (local rank %d)", dist.rank, dist.size, dist.local_rank)
    return dist


def horovod_available() -> bool:
    """True when `import horovod.tensorflow` works (used by tests to skip cleanly)."""
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return True
