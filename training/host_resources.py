"""Per-host resources: the threads each rank's pools get when several ranks share one host.

TensorFlow sizes its intra-op and inter-op pools, and tf.data its private pool, to every core the process
can run on. One rank per host is what that assumes; 8 ranks on a 128-core host would start 8 x 128 tf.data
threads and 8 full op pools, all contending for the same cores. Each rank therefore gets its share, the
cores divided by the ranks on its host (`Distributed.local_size`); a flag that names a size wins.
"""

from __future__ import annotations

import dataclasses
import os

import tensorflow as tf
from absl import logging


@dataclasses.dataclass(frozen=True)
class ThreadPlan:
    """The thread pools of one rank."""

    data: int  # tf.data's private pool of the training input (`options.threading.private_threadpool_size`)
    intra_op: int  # TensorFlow's pool for the work inside one op
    inter_op: int  # TensorFlow's pool for independent ops


def cpu_count() -> int:
    """The cores this process may run on (its affinity mask: what a batch system gave it, not the host's)."""
    return max(len(os.sched_getaffinity(0)), 1)


def plan_threads(
    cpus: int, local_size: int, *, intra_op_threads: int = 0, inter_op_threads: int = 0, data_threads: int = 0
) -> ThreadPlan:
    """Each rank's share of `cpus` among the `local_size` ranks of its host (at least 1 thread).

    A pool size given by its flag (`intra_op_threads`, `inter_op_threads`, `data_threads`; 0: not given)
    wins over the share. A share that does not divide evenly is rounded down: 3 ranks on 8 cores get 2
    threads each, leaving 2 cores to Horovod's background thread and the OS.
    """
    share = max(cpus // max(local_size, 1), 1)
    return ThreadPlan(
        data=data_threads or share, intra_op=intra_op_threads or share, inter_op=inter_op_threads or share
    )


def apply_op_pools(plan: ThreadPlan, *, given: tuple[str, ...] = ()) -> bool:
    """Sizes TensorFlow's op pools to `plan`; possible only before this process runs its first op.

    Args:
      plan: The pools' sizes.
      given: The pools whose size a flag asked for (``intra_op``, ``inter_op``).

    Returns:
      False when TensorFlow had already started (e.g. a run inside a test or notebook): the pools stay as
      they are, with a log line.

    Raises:
      ValueError: TensorFlow already started and a size was asked for (`given`).
    """
    try:
        tf.config.threading.set_intra_op_parallelism_threads(plan.intra_op)
        tf.config.threading.set_inter_op_parallelism_threads(plan.inter_op)
    except RuntimeError as e:
        if given:
            asked = ", ".join(f"{name}_threads={getattr(plan, name)}" for name in given)
            raise ValueError(f"{asked} cannot be applied: TensorFlow already started ({e})") from None
        logging.info("TensorFlow already started: its op pools keep their sizes (planned %s)", plan)
        return False
    logging.info("thread pools of this rank: %s", plan)
    return True
