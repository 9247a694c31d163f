"""``xla_ops``: what the host walks per training step: the ops of one traced `TrainStep` outside XLA, and
its collectives.

With ``--xla`` the forward/backward and the update are XLA computations; everything else in the step's
plain `tf.function` (Horovod's ops, the loss's class status, the calls themselves) runs op by op on the
host, and on a GPU the host waits at each all-reduce (Horovod 0.28.1 completes GPU collectives
synchronously unless ``HOROVOD_ENABLE_ASYNC_COMPLETION=1``), so this tail is exposed once per step. The
count is static: the step's graph is traced, not run, for backward segments K = 1 and 4 and each wire
format of ``--allreduce_dtypes``; every op of the plain function and of the functions it calls that are not
compiled (`tf.cond` branches included, both of them) counts, a call of an XLA function counts as one.
Collectives are Horovod's ops in that graph (a grouped all-reduce is one, however many tensors it holds).
Under ``horovodrun`` or not, Horovod is initialised on this process so that its real ops are traced.
"""

from __future__ import annotations

import collections
from collections.abc import Iterable

from absl import flags

from tools.benchmarks.common import emit, emit_machine, multilabel_train_step

FLAGS_USED: tuple[str, ...] = (
    "depth",
    "base_width",
    "num_classes",
    "batch_size",
    "image_size",
    "precision",
    "xla",
    "allreduce_dtypes",
)
SEGMENTS = (1, 4)
_WIRES = {"fp32": "fp32", "float32": "fp32", "fp16": "fp16", "float16": "fp16"}
# Graph nodes that are not work: the step's inputs.
_NOT_OPS = frozenset({"Placeholder", "_Arg", "_Retval"})
_CALLS = ("f", "then_branch", "else_branch", "body", "cond", "branches")


def _called(node) -> list[str]:
    """The functions a node calls (a call op, a `tf.cond` or `tf.while_loop`, or a function used as an op)."""
    names = []
    for key in _CALLS:
        if key in node.attr:
            value = node.attr[key]
            if value.HasField("func"):
                names.append(value.func.name)
            names.extend(f.name for f in value.list.func)
    return names


def _compiled(node, library) -> bool:
    if node.attr["_XlaMustCompile"].b:
        return True
    return any(library[name].attr["_XlaMustCompile"].b for name in _called(node) if name in library)


def outside_xla(graph_def) -> collections.Counter:
    """Op types -> count, for the ops of `graph_def` that run outside XLA (see the module docstring).

    Args:
      graph_def: a traced function's `GraphDef` (with its function library).

    Returns:
      A Counter of op types; the key "XLA call" counts the calls of compiled functions (each one op too).
    """
    library = {f.signature.name: f for f in graph_def.library.function}
    counts: collections.Counter = collections.Counter()

    def walk(nodes: Iterable, depth: int) -> None:
        if depth > 50:
            raise RecursionError("function nesting deeper than 50")
        for node in nodes:
            if node.op in _NOT_OPS:
                continue
            if _compiled(node, library):
                counts["XLA call"] += 1
                continue
            counts[node.op] += 1
            for name in _called(node) + ([node.op] if node.op in library else []):
                if name in library:
                    walk(library[name].node_def, depth + 1)

    walk(graph_def.node, 0)
    return counts


def collectives(counts: collections.Counter) -> int:
    """How many of the counted ops are Horovod collectives."""
    return sum(n for op, n in counts.items() if op.startswith("Horovod"))


def trace_step(step, images, labels) -> collections.Counter:
    """`outside_xla` of one step of `step` (a `training.train_step.TrainStep`) on these inputs' shapes."""
    import tensorflow as tf

    concrete = step._compiled_step.get_concrete_function(images, labels, tf.constant(0.0))
    return outside_xla(concrete.graph.as_graph_def())


def run(f: flags.FlagValues) -> None:
    import tensorflow as tf

    from training import distributed

    wires = [_WIRES[w] for w in f.allreduce_dtypes]
    emit_machine("xla_ops")
    dist = distributed.init(use_horovod=distributed.horovod_available(), pin_gpu=False)
    images = tf.zeros([f.batch_size, f.image_size, f.image_size, 3])
    labels = tf.zeros([f.batch_size, f.num_classes])
    for segments in SEGMENTS:
        for wire in wires:
            step = multilabel_train_step(f, dist, segments=segments, wire=wire, precision=f.precision)
            counts = trace_step(step, images, labels)
            emit(
                "xla_ops/step",
                depth=int(f.depth),
                num_classes=f.num_classes,
                xla=f.xla,
                precision=f.precision,
                backward_segments=segments,
                allreduce_dtype=wire,
                horovod=isinstance(dist, distributed._HorovodDistributed),
                ops_outside_xla=sum(counts.values()),
                xla_calls=counts["XLA call"],
                collectives=collectives(counts),
                top_ops=dict(counts.most_common(8)),
            )
