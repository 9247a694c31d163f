"""The host's share of a training step with --xla (issue #22 item 2): one traced step of a tiny ResNet, with
Horovod's real ops (tools/benchmarks/xla_ops.py, in a fresh process that initialises Horovod on itself),
has at most 300 ops outside XLA, and K + 1 collectives for K backward segments: the scalars (moving
statistics, loss, stop flag) ride with the last gradient group (K = 1 with the fp16 wire: K + 2)."""

import json
import os
import subprocess
import sys

import pytest

from tests import hvd

BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "benchmark.py")
# 2,000 classes: a head large enough that the first segment (stem - stage 1) is under 1/8 of the gradient,
# as in ResNet-101 with 11,166 classes (2.2 %).
TINY = ["--depth=14", "--base_width=8", "--num_classes=2000", "--image_size=32", "--batch_size=2"]


@pytest.fixture(scope="module")
def traced():
    hvd.require_horovodrun()  # Horovod installed: its ops are in the traced graph
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, BENCHMARK, "xla_ops", *TINY, "--xla", "--allreduce_dtypes=fp32,fp16"],
        capture_output=True,
        text=True,
        env=env,
        timeout=900,
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    return {
        (x["backward_segments"], x["allreduce_dtype"]): x for x in lines if x["benchmark"] == "xla_ops/step"
    }


@pytest.mark.horovod
def test_ops_outside_xla_per_step(traced):
    assert set(traced) == {(1, "fp32"), (1, "fp16"), (4, "fp32"), (4, "fp16")}
    for line in traced.values():
        assert line["horovod"] and line["ops_outside_xla"] <= 300, line
        # No op-by-op optimizer or moving-statistics update is left on the host.
        assert line["top_ops"].get("AssignVariableOp", 0) + line["top_ops"].get("ReadVariableOp", 0) < 20, (
            line
        )


@pytest.mark.horovod
def test_collectives_per_step(traced):
    # The class status of the global batch (before the loss), then one group per segment, the last one
    # with the scalars.
    assert traced[(1, "fp32")]["collectives"] == 2
    assert traced[(4, "fp32")]["collectives"] == 5
    # fp16: a group shares one dtype; the last (small) segment travels in float32 with the scalars. With
    # K = 1 the whole gradient is that group: it goes in float16 and the scalars alone.
    assert traced[(4, "fp16")]["collectives"] == 5
    assert traced[(1, "fp16")]["collectives"] == 3
