"""``memory``: peak RSS of the list tools (tools/subset.py, tools/dataset_stats.py, the writer's list pass)
on generated image lists of ``--memory_lines`` lines, each run in a fresh process (tools/benchmark.py
``memory --memory_child=TOOL:LIST``), so that one measurement does not inherit another's heap.
"""

from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time

import numpy as np
from absl import app, flags

from data import fileio
from tools.benchmarks.common import SCRIPT, emit, emit_machine

FLAGS_USED: tuple[str, ...] = (
    "memory_lines",
    "memory_tools",
    "memory_dir",
    "memory_child",
    "num_classes",
    "tags",
)


def synthetic_image_list(path: str, *, num_lines: int, num_classes: int, tags: float, seed: int = 0) -> str:
    """Writes (once) an image list like the release's: `name idx:conf ...`, 1 + Poisson(tags - 1) distinct
    sorted tags per line, confidences 1 (80 %), 0.9 or 0.8."""
    if os.path.exists(path):
        return path
    rng = np.random.default_rng(seed)
    block = 100_000
    with fileio.atomic_write(path, fsync=False) as out:  # a generated input, cheap to rebuild
        for start in range(0, num_lines, block):
            n = min(block, num_lines - start)
            counts = np.minimum(1 + rng.poisson(max(tags - 1.0, 0.0), n), num_classes)
            lines = [""] * n
            for k in np.unique(counts):
                rows = np.flatnonzero(counts == k)
                # k distinct sorted indices: sorted draws from [0, C - k] plus 0, 1, ..., k - 1.
                indices = np.sort(rng.integers(0, num_classes - k + 1, (rows.size, k)), axis=1) + np.arange(k)
                confidences = rng.choice(["1", "0.9", "0.8"], size=(rows.size, k), p=[0.8, 0.1, 0.1])
                for row, idx, conf in zip(rows, indices.tolist(), confidences.tolist(), strict=True):
                    tag_text = "\t".join(f"{i}:{c}" for i, c in zip(idx, conf, strict=True))
                    lines[row] = f"train/{start + row:08d}.jpg\t{tag_text}\n"
            out.write("".join(lines))
    return path


def _max_rss_mb(usage) -> float:
    # ru_maxrss is in KiB on Linux (bytes on macOS).
    return usage.ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _peak_rss_mb() -> float:
    """This process's peak RSS: VmHWM on Linux (ru_maxrss also counts the parent's RSS at the fork that
    spawned the process, which exec does not reset), ru_maxrss elsewhere."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    return _max_rss_mb(resource.getrusage(resource.RUSAGE_SELF))


def memory_child(tool: str, list_path: str, *, num_classes: int) -> None:
    """Runs one list tool on `list_path` in this (fresh) process and prints its RSS before and after."""
    # Each tool imports what it imports when run on its own: the list tools do not load TensorFlow, the
    # writer does.
    if tool == "subset":
        from tools import subset
    elif tool == "dataset_stats":
        from tools import dataset_stats
    elif tool.startswith("writer"):
        from data.shards import dataset_writer, list_index
    else:
        from data.labels import annotations  # noqa: F401  (the common import of the list tools)

    after_imports = _peak_rss_mb()
    work_dir = tempfile.mkdtemp(prefix="mlimages_memory_")
    started = time.perf_counter()
    try:
        if tool == "subset":
            result = subset.subset_list(
                list_path,
                os.path.join(work_dir, "subset.txt"),
                config=subset.SubsetConfig(fraction=0.5, max_per_class=100, seed=0),
                num_classes=num_classes,
            )
            detail = {"kept": result.kept}
        elif tool == "dataset_stats":
            stats = dataset_stats.stats_from_list(list_path, num_classes=num_classes)
            detail = {"avg_tags_per_image": round(stats["avg_tags_per_image"], 3)}
        elif tool == "writer_index":
            index = list_index.index_list(list_path, 1024)
            detail = {"shards": 1024, "lines_indexed": index.num_lines}
        elif tool == "writer_missing_images":
            # The whole writer on a list whose images are all missing: every line is a skipped entry, which
            # the sidecars and the manifest list (with its reason).
            manifest = dataset_writer.write_dataset(
                image_list=list_path,
                image_root=os.path.join(work_dir, "no-images"),
                output_dir=os.path.join(work_dir, "records"),
                label_format="sparse",
                num_classes=num_classes,
                shards=16,
                workers=1,
                progress=False,
            )
            detail = {"num_skipped": manifest["num_skipped"]}
        elif tool == "baseline":
            detail = {}
        else:
            raise app.UsageError(f"unknown memory tool {tool!r}")
    finally:
        shutil.rmtree(work_dir, ignore_errors=True)
    print(
        json.dumps(
            {
                "after_imports_mb": round(after_imports, 1),
                "peak_self_mb": round(_peak_rss_mb(), 1),
                "seconds": round(time.perf_counter() - started, 2),
                **detail,
            }
        ),
        flush=True,
    )


def run(f: flags.FlagValues) -> None:
    """Peak RSS of each list tool on each generated list, every measurement in a fresh process."""
    if f.memory_child:  # this process is one of those fresh processes
        tool, _, path = f.memory_child.partition(":")
        memory_child(tool, path, num_classes=f.num_classes)
        return
    emit_machine("memory", load_tensorflow=False)
    sizes = [int(n) for n in f.memory_lines]
    peaks: dict[str, dict[int, float]] = {tool: {} for tool in f.memory_tools}
    for num_lines in sizes:
        path = synthetic_image_list(
            os.path.join(f.memory_dir, f"list-{num_lines}-{f.num_classes}-{f.tags}.txt"),
            num_lines=num_lines,
            num_classes=f.num_classes,
            tags=f.tags,
        )
        emit("memory/list", num_lines=num_lines, mb=round(os.path.getsize(path) / 1e6, 1), path=path)
        for tool in f.memory_tools:
            cmd = [
                sys.executable,
                SCRIPT,
                "memory",
                f"--memory_child={tool}:{path}",
                f"--num_classes={f.num_classes}",
            ]
            env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2")
            with tempfile.TemporaryFile("w+") as stderr:
                proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, env=env, text=True)
                stdout = proc.stdout.read()
                proc.stdout.close()
                # wait4: this child's own rusage. Its ru_maxrss includes this process's RSS when the child
                # was spawned, so the child reports its VmHWM as the peak.
                _, status, usage = os.wait4(proc.pid, 0)
                proc.returncode = os.waitstatus_to_exitcode(status)
                if proc.returncode != 0:
                    stderr.seek(0)
                    raise RuntimeError(
                        f"{tool} on {path} failed ({proc.returncode}):\n{stderr.read()[-3000:]}"
                    )
            child = json.loads(stdout.strip().splitlines()[-1])
            peak = child["peak_self_mb"]
            peaks[tool][num_lines] = peak
            emit(
                f"memory/{tool}",
                num_lines=num_lines,
                peak_rss_mb=peak,
                rss_after_imports_mb=child["after_imports_mb"],
                working_mb=round(peak - child["after_imports_mb"], 1),
                wait4_max_rss_mb=round(_max_rss_mb(usage), 1),
                **{k: v for k, v in child.items() if k not in ("peak_self_mb", "after_imports_mb")},
            )
    if len(sizes) > 1:
        small, large = min(sizes), max(sizes)
        emit(
            "memory/ratio",
            lines_ratio=large // small,
            **{tool: round(p[large] / p[small], 2) for tool, p in peaks.items() if small in p and large in p},
        )
