"""tools/benchmark.py overlap at toy size on one process: its JSON lines and what they contain."""

import json
import os
import subprocess
import sys

from tools.benchmarks import common


def test_overlap_reports_bytes_exposed_time_and_host_wait():
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    args = [
        "overlap",
        "--depth=14",
        "--base_width=4",
        "--num_classes=10",
        "--batch_size=2",
        "--image_size=32",
    ]
    args += ["--steps=1", "--warmup=1", "--allreduce_dtypes=fp32,fp16"]
    proc = subprocess.run(
        [sys.executable, common.SCRIPT, *args], capture_output=True, text=True, env=env, timeout=600
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    lines = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
    steps = [x for x in lines if x["benchmark"] == "overlap/step"]
    assert [(x["segments"], x["wire"]) for x in steps] == [(1, "fp32"), (4, "fp32"), (1, "fp16"), (4, "fp16")]
    fp32, fp16 = steps[0]["gradient_mb_per_step"], steps[2]["gradient_mb_per_step"]
    assert fp16 == round(fp32 / 2, 2) or abs(fp16 - fp32 / 2) <= 0.01  # half the bytes on the wire
    assert all(x["step_ms"] > 0 and x["no_allreduce_ms"] > 0 for x in steps)
    wait = [x for x in lines if x["benchmark"] == "overlap/host_wait"]
    assert len(wait) == 1 and wait[0]["check_every_step_ms"] > 0 and wait[0]["check_when_logging_ms"] > 0
