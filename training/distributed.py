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

import dataclasses
import os
from collections.abc import Sequence

import tensorflow as tf
from absl import logging

# Wire formats of the gradient all-reduce. Horovod has fp16 compression but no bfloat16 all-reduce.
ALLREDUCE_DTYPES = ("fp32", "fp16")


class Distributed:
    """Single-process implementation (size 1); the base of the Horovod one."""

    size: int = 1
    rank: int = 0
    local_rank: int = 0
    local_size: int = 1

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

    def average_gradients(self, gradients: Sequence[tf.Tensor], *, wire: str = "fp32") -> list[tf.Tensor]:
        """Mean of each gradient over all ranks (one grouped all-reduce for the whole list).

        Args:
          gradients: the tensors to average (any float dtype; each keeps its own).
          wire: "fp32" sends them as they are; "fp16" sends float32 tensors as float16 (Horovod's fp16
            compression: half the bytes). Each rank first multiplies by 1/size in float32 (the pre-scale),
            then the float16 values are summed, so the sum is bounded by the largest rank's value and cannot
            overflow where the plain sum of `size` values could; the post-scale is then 1. float16 keeps
            11 significant bits: gradients differ from the fp32 average by ~1e-3 relative.
        """
        if wire not in ALLREDUCE_DTYPES:
            raise ValueError(f"the all-reduce dtype must be one of {ALLREDUCE_DTYPES}, got {wire!r}")
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
        self.local_size = hvd.local_size()

    def allreduce_sum(self, tensor: tf.Tensor) -> tf.Tensor:
        return self._hvd.allreduce(tensor, op=self._hvd.Sum)  # Horovod: sum over ranks.

    def allreduce_mean(self, tensor: tf.Tensor) -> tf.Tensor:
        return self._hvd.allreduce(tensor, op=self._hvd.Average)  # Horovod: mean over ranks.

    def average_gradients(self, gradients: Sequence[tf.Tensor], *, wire: str = "fp32") -> list[tf.Tensor]:
        super().average_gradients([], wire=wire)  # validates `wire`
        gradients = [tf.convert_to_tensor(g) for g in gradients]
        compress = wire == "fp16"
        averaged: list[tf.Tensor | None] = [None] * len(gradients)
        # Horovod: one grouped all-reduce per dtype (a group must share one), fused into few ring operations.
        for dtype in dict.fromkeys(g.dtype for g in gradients):
            index = [i for i, g in enumerate(gradients) if g.dtype == dtype]
            group = [gradients[i] for i in index]
            if compress and dtype == tf.float32:
                # Horovod: fp16 compression after a float32 pre-scale by 1/size, summed (post-scale 1).
                fp16 = self._hvd.Compression.fp16
                packed = [fp16.compress(g * (1.0 / self.size)) for g in group]
                summed = self._hvd.grouped_allreduce([p for p, _ in packed], op=self._hvd.Sum)
                reduced = [fp16.decompress(r, ctx) for r, (_, ctx) in zip(summed, packed, strict=True)]
            else:
                reduced = self._hvd.grouped_allreduce(group, op=self._hvd.Average)
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


@dataclasses.dataclass(frozen=True)
class DevicePlan:
    """Which GPU this rank uses: `gpu_index` into the GPUs this process sees, or None for the CPU."""

    gpu_index: int | None
    description: str


def plan_devices(
    num_gpus: int, *, local_rank: int, local_size: int, cuda_visible_devices: str | None = None
) -> DevicePlan:
    """One GPU per rank: the pure decision behind `pin_devices`, testable without GPUs.

    Args:
      num_gpus: How many GPUs this process sees.
      local_rank: This rank's index among the ranks on its host.
      local_size: How many ranks run on this host.
      cuda_visible_devices: The CUDA_VISIBLE_DEVICES value (None: unset). A launcher that gives each rank
        its own GPU (SLURM `--gpus-per-task=1`, Kubernetes device plugins) leaves every rank seeing one GPU.

    Returns:
      The plan: GPU `local_rank` when the host's GPUs are shared by its ranks; GPU 0 when the launcher
      already gave this rank exactly one; the CPU when there is no GPU.

    Raises:
      ValueError: more ranks on this host than GPUs (two ranks on one GPU run out of memory or crawl).
    """
    if not 0 <= local_rank < max(local_size, 1):
        raise ValueError(f"local rank {local_rank} is not in [0, {local_size})")
    if num_gpus == 0:
        return DevicePlan(None, "CPU (no GPU visible)")
    if num_gpus >= local_size:
        return DevicePlan(local_rank, f"GPU {local_rank} of {num_gpus} (local rank {local_rank})")
    if num_gpus == 1 and cuda_visible_devices not in (None, ""):
        return DevicePlan(0, f"GPU 0, the only one visible (CUDA_VISIBLE_DEVICES={cuda_visible_devices})")
    raise ValueError(
        f"{local_size} ranks on this host but only {num_gpus} GPU(s) visible: start at most one rank per GPU "
        "(horovodrun -np N -H host:G with G = GPUs per host)"
    )


def pin_devices(dist: Distributed) -> DevicePlan:
    """Makes only this rank's GPU visible, with memory growth; must run before anything touches a GPU.

    Without it every rank of a host would allocate memory on all of the host's GPUs and compute on GPU 0.
    """
    gpus = tf.config.list_physical_devices("GPU")
    plan = plan_devices(
        len(gpus),
        local_rank=dist.local_rank,
        local_size=getattr(dist, "local_size", 1),
        cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
    )
    if plan.gpu_index is not None:
        gpu = gpus[plan.gpu_index]
        tf.config.set_visible_devices([gpu], "GPU")
        tf.config.experimental.set_memory_growth(gpu, True)
    logging.info("rank %d: %s", dist.rank, plan.description)
    return plan


def launched_by_horovodrun() -> bool:
    """True when this process was started by horovodrun (its rank variables are set)."""
    return "HOROVOD_RANK" in os.environ or "OMPI_COMM_WORLD_RANK" in os.environ


def init(use_horovod: bool | None = None, *, pin_gpu: bool = True) -> Distributed:
    """Initialises data parallelism and pins this rank to its GPU (`pin_devices`).

    Args:
      use_horovod: True requires Horovod (error if missing); False forces a single process; None uses
        Horovod when this process was launched by horovodrun and Horovod imports.
      pin_gpu: Make only this rank's GPU visible (a no-op without GPUs).

    Returns:
      The `Distributed` for this process.
    """
    if use_horovod is None:
        use_horovod = launched_by_horovodrun()
    if not use_horovod:
        dist = Distributed()
        if pin_gpu:
            pin_devices(dist)
        return dist
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
    if pin_gpu:
        pin_devices(dist)  # Horovod: one GPU per rank, before anything touches a GPU.
    return dist


def horovod_available() -> bool:
    """True when `import horovod.tensorflow` works (used by tests to skip cleanly)."""
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return True
