"""``overlap``: the training step with its all-reduce after the backward (K = 1 segment) or per segment
while the backward runs (K = 4), fp32 or fp16 on the wire; the exposed communication per step, the bytes
per step, and the host's per-step wait of the NaN check (``check_finite``).

Under ``horovodrun`` each rank times, alternately, the real step (`TrainStep` with the Horovod
`Distributed`) and the same step without any all-reduce (a size-1 `Distributed`, both ranks computing at
once): the difference is the communication the backward did not hide. On one process only the host-wait
comparison means anything. With ``HOROVOD_TIMELINE=<file>`` set, Horovod records when each tensor's
all-reduce starts and ends (`timeline_summary` reads it).

Two CPU ranks on one host all-reduce over loopback, where sending is a memory copy on the cores that also
run the backward: nothing can hide behind anything. ``--link_gbits`` makes the wire the slow part, as it is
between GPU hosts: every TCP socket of each rank (Gloo's full mesh, connected by `hvd.init`) is paced by the
kernel (`SO_MAX_PACING_RATE`), so sending mostly waits on a timer instead of using a core. The
``comm_ms`` column is the all-reduce of the step's gradients alone (no backward), the cost to hide.
"""

from __future__ import annotations

import json
import os
import re
import socket

import numpy as np
from absl import flags

from tools.benchmarks.common import Timer, emit, emit_machine, multilabel_train_step

FLAGS_USED: tuple[str, ...] = (
    "depth",
    "base_width",
    "num_classes",
    "batch_size",
    "image_size",
    "allreduce_dtypes",
    "steps",
    "warmup",
    "xla",
    "link_gbits",
)
SEGMENTS = (1, 4)
_WIRE = {"float32": "fp32", "fp32": "fp32", "float16": "fp16", "fp16": "fp16"}
SO_MAX_PACING_RATE = getattr(socket, "SO_MAX_PACING_RATE", 47)  # Linux; Python names it from 3.12


def pace_tcp_sockets(gbits: float) -> int:
    """Paces every open TCP socket of this process to `gbits` Gbit/s; returns how many were paced.

    The kernel's TCP pacing (`SO_MAX_PACING_RATE`, no qdisc needed) spaces the socket's packets on a timer,
    so a paced transfer takes bytes / rate while its sender sleeps. Sockets opened later are not paced.
    """
    rate = int(gbits * 1e9 / 8)  # bytes per second
    paced = 0
    for name in os.listdir("/proc/self/fd"):
        try:
            if not os.readlink(f"/proc/self/fd/{name}").startswith("socket:"):
                continue
        except OSError:  # closed since listdir
            continue
        sock = socket.socket(fileno=int(name))
        try:
            if sock.type == socket.SOCK_STREAM and sock.family in (socket.AF_INET, socket.AF_INET6):
                sock.setsockopt(socket.SOL_SOCKET, SO_MAX_PACING_RATE, rate)
                paced += 1
        finally:
            sock.detach()  # the descriptor stays open, owned by whoever opened it
    return paced


def _time(step, batch, *, steps: int, warmup: int, check_finite: bool, sync) -> float:
    """Seconds per step; the host reads a device value only at the end unless `check_finite`."""
    for _ in range(warmup):
        step(*batch, check_finite=True)
    sync()
    with Timer() as t:
        for _ in range(steps):
            logs = step(*batch, check_finite=check_finite)
        float(logs["loss"])
    return t.wall / steps


def _time_allreduce(step, dist, wire: str, *, steps: int, warmup: int) -> float:
    """Seconds per all-reduce of the step's gradients (their shapes and dtype) with nothing else running."""
    import tensorflow as tf

    gradients = [tf.ones(v.shape, v.dtype) for v in step.train_variables]
    reduce = tf.function(lambda: dist.average_gradients(gradients, wire=wire))
    for _ in range(max(warmup, 1)):
        reduce()
    dist.barrier()
    with Timer() as t:
        for _ in range(steps):
            out = reduce()
        float(out[0][(0,) * len(out[0].shape)])
    return t.wall / steps


def timeline_summary(path: str) -> list[dict]:
    """The last step's grouped all-reduces in a Horovod timeline, in ms from the first group's submission.

    Per group (the tensors of one `grouped_allreduce`: one segment): `submitted` (NEGOTIATE begins: the
    gradients exist on this rank), `sent` (the reduction starts) and `done`, and its tensor count. The
    timeline holds every run of the process; groups are told apart by their tensor count ("_3of35").
    """
    with open(path, encoding="utf-8") as fh:
        text = fh.read().rstrip().rstrip(",")
    events = json.loads(text if text.endswith("]") else text + "]")
    names = {
        e["pid"]: e["args"].get("name", "")
        for e in events
        if e.get("ph") == "M" and "name" in e.get("args", {})
    }
    last: dict[int, dict] = {}
    for e in events:
        pid = e.get("pid")
        if pid not in names or "Grouped" not in names[pid]:
            continue
        if e.get("ph") == "B" and e.get("name") == "NEGOTIATE_ALLREDUCE":
            last[pid] = {"submitted": e["ts"]}
        elif e.get("ph") == "X" and pid in last:  # rank <name> has submitted the tensor
            last[pid][f"rank{e['name']}_ready"] = e["ts"]
        elif e.get("ph") == "B" and e.get("name") == "ALLREDUCE" and pid in last:
            last[pid]["sent"] = e["ts"]
        elif e.get("ph") == "E" and pid in last:
            last[pid]["done"] = e["ts"]
    groups: dict[str, dict] = {}
    for pid, span in last.items():
        group = re.sub(r"_\d+of(\d+)$", r"_of\1", names[pid])
        g = groups.setdefault(
            group,
            {"tensors": 0, "submitted": [], "rank0_ready": [], "rank1_ready": [], "sent": [], "done": []},
        )
        g["tensors"] += 1
        for key in ("submitted", "rank0_ready", "rank1_ready", "sent", "done"):
            if key in span:
                g[key].append(span[key])
    rows = [
        {
            "group": k,
            "tensors": g["tensors"],
            **{
                key: min(g[key]) if key != "done" else max(g[key])
                for key in ("submitted", "rank0_ready", "rank1_ready", "sent", "done")
                if g[key]
            },
        }
        for k, g in groups.items()
    ]
    rows = [r for r in rows if "done" in r and "sent" in r]
    rows.sort(key=lambda r: r["submitted"])
    t0 = rows[0]["submitted"] if rows else 0
    keys = [
        k for k in ("submitted", "rank0_ready", "rank1_ready", "sent", "done") if all(k in r for r in rows)
    ]
    return [{**r, **{k: round((r[k] - t0) / 1e3, 1) for k in keys}} for r in rows]


def run(f: flags.FlagValues) -> None:
    """Exposed all-reduce per step for K = 1 and 4 and each wire dtype; the NaN check's host wait."""
    import tensorflow as tf

    from training import distributed

    dist = distributed.init()
    local = distributed.Distributed()
    paced = pace_tcp_sockets(f.link_gbits) if f.link_gbits else 0
    paced = int(dist.allreduce_sum(tf.constant(paced)))
    if dist.is_chief:
        emit_machine(
            "overlap",
            ranks=dist.size,
            timeline=os.environ.get("HOROVOD_TIMELINE", ""),
            link_gbits=f.link_gbits,
            paced_sockets=paced,
        )
    rng = np.random.default_rng(dist.rank)
    images = tf.constant(rng.uniform(-1, 1, (f.batch_size, f.image_size, f.image_size, 3)).astype("float32"))
    labels = tf.constant((rng.uniform(size=(f.batch_size, f.num_classes)) < 0.001).astype("float32"))
    batch = (images, labels)
    wires = [_WIRE[w] for w in f.allreduce_dtypes]
    for wire in wires:
        for segments in SEGMENTS:
            real = multilabel_train_step(f, dist, segments=segments, wire=wire)
            alone = multilabel_train_step(f, local, segments=segments, wire="fp32")
            kw = {"steps": f.steps, "warmup": f.warmup, "check_finite": False, "sync": dist.barrier}
            real_s, alone_s = [], []
            for _ in range(2):  # alternate, so both see the same machine load
                real_s.append(_time(real, batch, **kw))
                alone_s.append(_time(alone, batch, **kw))
            real_ms = 1e3 * float(dist.allreduce_mean(tf.constant(min(real_s), tf.float64)))
            alone_ms = 1e3 * float(dist.allreduce_mean(tf.constant(min(alone_s), tf.float64)))
            comm_s = _time_allreduce(real, dist, wire, steps=f.steps, warmup=f.warmup)
            comm_ms = 1e3 * float(dist.allreduce_mean(tf.constant(comm_s)))
            elements = sum(int(np.prod(v.shape)) for v in real.train_variables)
            if dist.is_chief:
                emit(
                    "overlap/step",
                    ranks=dist.size,
                    segments=segments,
                    wire=wire,
                    depth=int(f.depth),
                    base_width=f.base_width,
                    num_classes=f.num_classes,
                    batch_size=f.batch_size,
                    image_size=f.image_size,
                    gradient_mb_per_step=round(elements * (2 if wire == "fp16" else 4) / 1e6, 2),
                    step_ms=round(real_ms, 1),
                    no_allreduce_ms=round(alone_ms, 1),
                    comm_ms=round(comm_ms, 1),
                    exposed_ms=round(real_ms - alone_ms, 1),
                    exposed_fraction=round((real_ms - alone_ms) / real_ms, 3),
                    hidden_fraction_of_comm=round(1 - (real_ms - alone_ms) / comm_ms, 3) if comm_ms else None,
                )
            if segments == 1 and wire == wires[0]:
                timed: dict[bool, list[float]] = {True: [], False: []}
                for _ in range(3):  # alternate; the minimum of each is the least disturbed by other load
                    for check in (True, False):
                        timed[check].append(
                            _time(
                                alone, batch, steps=f.steps, warmup=0, check_finite=check, sync=dist.barrier
                            )
                        )
                checked, unchecked = min(timed[True]), min(timed[False])
                if dist.is_chief:
                    emit(
                        "overlap/host_wait",
                        check_every_step_ms=round(1e3 * checked, 2),
                        check_when_logging_ms=round(1e3 * unchecked, 2),
                        saved_ms=round(1e3 * (checked - unchecked), 2),
                    )
            del real, alone
