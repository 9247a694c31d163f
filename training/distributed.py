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
import socket
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from absl import logging

# Wire formats of the gradient all-reduce. Horovod has fp16 compression but no bfloat16 all-reduce.
ALLREDUCE_DTYPES = ("fp32", "fp16")


def to_wire(tensor: tf.Tensor, wire: str) -> tf.Tensor:
    """`tensor` as it travels in the all-reduce: "fp16" sends float32 as float16, unscaled.

    The order is cast, sum in float16, then scale by 1/size in float32 (`from_wire`): Horovod's own fp16
    compression with its Average post-scale. A float32 pre-scale by 1/size before the cast (what this
    project did first) flushes every value under 2^-25 x size to zero (3.8e-6 at 128 ranks), e.g. the weight
    decay term of the head's weights; unscaled, only values under 2^-25 (3e-8) are lost, as with Horovod's
    own, and the float32 post-scale adds no second underflow. The sum overflows only if the average of an
    element exceeds 65,504 / size (512 at 128 ranks); gradients are far below that, and a loss-scaled fp16
    run that gets there has its scale lowered by the loss-scale optimizer (training/train_step.py).

    Raises:
      ValueError: an unknown wire format.
    """
    if wire not in ALLREDUCE_DTYPES:
        raise ValueError(f"the all-reduce dtype must be one of {ALLREDUCE_DTYPES}, got {wire!r}")
    tensor = tf.convert_to_tensor(tensor)
    if wire == "fp16" and tensor.dtype == tf.float32:
        return tf.cast(tensor, tf.float16)
    return tensor


def from_wire(summed: tf.Tensor, *, size: int, dtype: tf.DType) -> tf.Tensor:
    """The mean from a sum over `size` ranks of `to_wire` values: back to `dtype`, then scaled by 1/size."""
    return tf.cast(summed, dtype) * tf.constant(1.0 / size, dtype)


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

    def sum_group(self, tensors: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        """Element-wise sum of each tensor over all ranks: one grouped all-reduce (one per dtype present).

        The building block of the training step: it sends what it is given (cast to the wire format with
        `to_wire` first) and leaves the averaging to the caller (`from_wire`), which can then run inside XLA.
        """
        return [tf.convert_to_tensor(t) for t in tensors]

    def average_gradients(self, gradients: Sequence[tf.Tensor], *, wire: str = "fp32") -> list[tf.Tensor]:
        """Mean of each gradient over all ranks (one grouped all-reduce for the whole list).

        Args:
          gradients: the tensors to average (any float dtype; each keeps its own).
          wire: "fp32" sends them as they are; "fp16" sends float32 tensors as float16 (half the bytes):
            see `to_wire` for the order of cast, sum and scale, which keeps small averages.
        """
        gradients = [tf.convert_to_tensor(g) for g in gradients]
        sums = self.sum_group([to_wire(g, wire) for g in gradients])
        return [from_wire(s, size=self.size, dtype=g.dtype) for s, g in zip(sums, gradients, strict=True)]

    def broadcast_variables(self, variables: Sequence[tf.Variable], root_rank: int = 0) -> None:
        """Assigns rank `root_rank`'s values to `variables` on every rank."""
        del variables, root_rank

    def barrier(self) -> None:
        """Blocks until every rank has reached this point."""

    def allgather_object(self, obj: Any) -> list[Any]:
        """Every rank's `obj` (picklable), in rank order; a start-up check, not for the step."""
        return [obj]


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

    def sum_group(self, tensors: Sequence[tf.Tensor]) -> list[tf.Tensor]:
        tensors = [tf.convert_to_tensor(t) for t in tensors]
        summed: list[tf.Tensor | None] = [None] * len(tensors)
        # Horovod: one grouped all-reduce per dtype (a group must share one), fused into few ring operations.
        for dtype in dict.fromkeys(t.dtype for t in tensors):
            index = [i for i, t in enumerate(tensors) if t.dtype == dtype]
            reduced = self._hvd.grouped_allreduce([tensors[i] for i in index], op=self._hvd.Sum)
            for i, r in zip(index, reduced, strict=True):
                summed[i] = r
        return summed

    def broadcast_variables(self, variables: Sequence[tf.Variable], root_rank: int = 0) -> None:
        # Horovod: broadcast values (Keras 3 variables are not hashable by .ref()).
        for i, variable in enumerate(variables):
            value = self._hvd.broadcast(tf.convert_to_tensor(variable), root_rank, name=f"bcast_{i}")
            variable.assign(value)

    def barrier(self) -> None:
        self._hvd.allreduce(tf.constant(0.0), op=self._hvd.Sum, name="barrier")

    def allgather_object(self, obj: Any) -> list[Any]:
        return list(self._hvd.allgather_object(obj))  # Horovod: pickled, gathered in rank order.


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


def gpu_identity(plan: DevicePlan, cuda_visible_devices: str | None) -> str | None:
    """The physical GPU a rank computes on, as its host names it; None on the CPU.

    TensorFlow numbers the GPUs a process sees from 0, so two ranks whose CUDA_VISIBLE_DEVICES differ both
    say "GPU 0": the name is the CUDA_VISIBLE_DEVICES entry the plan's index picks (an index or a UUID, as
    the launcher wrote it), else the index itself (all of the host's GPUs visible).

    Args:
      plan: this rank's `plan_devices` decision.
      cuda_visible_devices: the CUDA_VISIBLE_DEVICES value (None: unset).
    """
    if plan.gpu_index is None:
        return None
    entries = [e.strip() for e in (cuda_visible_devices or "").split(",") if e.strip()]
    if plan.gpu_index < len(entries):
        return entries[plan.gpu_index]
    return str(plan.gpu_index)


def shared_gpus(devices: Sequence[tuple[str, str | None]]) -> str | None:
    """The ranks that share one GPU, described in one line; None when every rank has its own.

    Args:
      devices: per rank (in rank order), its host name and `gpu_identity` (None: the CPU, which ranks may
        share).
    """
    ranks_of: dict[tuple[str, str], list[int]] = {}
    for rank, (host, gpu) in enumerate(devices):
        if gpu is not None:
            ranks_of.setdefault((host, gpu), []).append(rank)
    shared = [(key, ranks) for key, ranks in ranks_of.items() if len(ranks) > 1]
    if not shared:
        return None
    described = "; ".join(
        f"ranks {', '.join(map(str, ranks))} on GPU {gpu} of {host}" for (host, gpu), ranks in shared[:4]
    )
    more = f" (and {len(shared) - 4} more GPUs)" if len(shared) > 4 else ""
    return (
        f"several ranks on one GPU: {described}{more}; give each rank its own GPU (do not export one "
        "CUDA_VISIBLE_DEVICES to all ranks of a host, or set it per rank)"
    )


def check_distinct_gpus(dist: Distributed, gpu: str | None) -> None:
    """All-gathers (host, GPU) and raises ValueError in one line if two ranks share a GPU.

    `CUDA_VISIBLE_DEVICES=0` exported to every rank of a host makes each of them see one GPU, so
    `plan_devices` cannot tell; only the ranks together can. Every rank must call this (a collective).

    Args:
      dist: the data-parallel context.
      gpu: this rank's `gpu_identity` (tests pass a made-up one).
    """
    problem = shared_gpus(dist.allgather_object((socket.gethostname(), gpu)))
    if problem:
        raise ValueError(problem)


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

    Raises:
      ValueError: more ranks on a host than GPUs, or two ranks on one GPU (`check_distinct_gpus`).
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
        plan = pin_devices(dist)  # Horovod: one GPU per rank, before anything touches a GPU.
        # Horovod: every rank tells its (host, GPU); two on one GPU is an error naming them.
        check_distinct_gpus(dist, gpu_identity(plan, os.environ.get("CUDA_VISIBLE_DEVICES")))
    return dist


def horovod_available() -> bool:
    """True when `import horovod.tensorflow` works (used by tests to skip cleanly)."""
    try:
        import horovod.tensorflow  # noqa: F401
    except ImportError:
        return False
    return True
