"""``download``: images/s of the one pass (``data/download.py --output_records``) against a local HTTP server,
and with ``--compare`` of download-then-write (our downloader, then our writer) and of img2dataset on the same
URLs.

The server is a separate process on 127.0.0.1 (so that it does not share the measuring process's GIL)
serving the benchmark's photo-like JPEGs (`photos.benchmark_images`). Every variant fetches and validates
every image and stores it unchanged in shards:

- ``one_pass``: `to_records.download_records` (``--workers`` processes x ``--threads`` threads), in
  this process (its imports already done).
- ``download_then_write``: `to_files.download_url_list` (``--workers`` x ``--threads`` threads) into image
  files, then `dataset_writer.write_dataset` (``--workers`` processes) of the image list, in this process.
- ``one_pass_cli`` and ``img2dataset``: the two commands as subprocesses, wall time from start to exit
  (interpreter start-up and imports included for both; neither imports TensorFlow: ours writes the
  records with data/records/record_writer.py). ``img2dataset_work`` is img2dataset's own timing from its shards' stats
  (first start to last end: no start-up), to compare with ``one_pass`` (in this process, warm). img2dataset runs from ``--img2dataset_venv`` with
  ``--processes_count=--workers --thread_count=--threads --resize_mode=no --skip_reencode`` (it decodes each
  image to check it, and keeps the original bytes) writing webdataset shards (its TFRecord output needs
  TensorFlow and tensorflow_io in its environment); it is skipped with a message when that virtualenv is
  missing.
"""

from __future__ import annotations

import glob
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable

from absl import flags

from tools.benchmarks import photos
from tools.benchmarks.common import REPO_ROOT, emit, emit_machine

FLAGS_USED: tuple[str, ...] = (
    *photos.IMAGE_FLAGS,
    "workers",
    "threads",
    "shards",
    "compare",
    "rounds",
    "img2dataset_venv",
)

# The server: a threading HTTP server on a free port of 127.0.0.1 serving one folder; it prints its port.
# A deep accept queue: socketserver's default of 5 drops the SYNs of 64 concurrent connects (1 s retries).
_SERVER = r"""
import functools, http.server, sys

class Handler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass

class Server(http.server.ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True

httpd = Server(("127.0.0.1", 0), functools.partial(Handler, directory=sys.argv[1]))
print(httpd.server_address[1], flush=True)
httpd.serve_forever()
"""


def _start_server(directory: str) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-c", _SERVER, directory], stdout=subprocess.PIPE, text=True, env=_no_proxy_env()
    )
    port = int(proc.stdout.readline())
    return proc, f"http://127.0.0.1:{port}"


def _no_proxy_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def _url_lists(list_path: str, base: str, out_dir: str) -> tuple[str, str]:
    """Our URL list (``URL idx:conf ...``) and img2dataset's (one URL per line) of the benchmark images."""
    ours, plain = os.path.join(out_dir, "urls.txt"), os.path.join(out_dir, "urls_plain.txt")
    with open(list_path, encoding="utf-8") as src, open(ours, "w") as a, open(plain, "w") as b:
        for line in src:
            name, _, tags = line.rstrip("\n").partition("\t")
            a.write(f"{base}/{name}\t{tags}\n")
            b.write(f"{base}/{name}\n")
    return ours, plain


def _one_pass(url_list: str, out: str, f: flags.FlagValues) -> int:
    from data.fetch import to_records, transport

    summary = to_records.download_records(
        url_list,
        output_dir=out,
        label_format="sparse",
        num_classes=f.num_classes,
        shards=f.shards,
        config=transport.DownloadConfig(allow_private_addresses=True, threads=f.threads),
        workers=f.workers,
        progress=False,
    )
    return summary.records, None


def _download_then_write(url_list: str, out: str, f: flags.FlagValues) -> int:
    from data.fetch import to_files, transport
    from data.shards import dataset_writer

    image_list = os.path.join(out, "image_list.txt")
    to_files.download_url_list(
        url_list,
        output_dir=os.path.join(out, "images"),
        image_list=image_list,
        failed_list=os.path.join(out, "failed.txt"),
        config=transport.DownloadConfig(allow_private_addresses=True, threads=f.threads * f.workers),
        num_classes=f.num_classes,
        show_progress=False,
    )
    manifest = dataset_writer.write_dataset(
        image_list=image_list,
        image_root=os.path.join(out, "images"),
        output_dir=os.path.join(out, "records"),
        label_format="sparse",
        num_classes=f.num_classes,
        shards=f.shards,
        workers=f.workers,
        progress=False,
    )
    return manifest["num_records"], None


def _one_pass_cli(url_list: str, out: str, f: flags.FlagValues) -> int:
    subprocess.run(
        [
            sys.executable,
            os.path.join(REPO_ROOT, "data", "download.py"),
            f"--url_list={url_list}",
            f"--output_records={out}",
            f"--num_classes={f.num_classes}",
            f"--shards={f.shards}",
            f"--workers={f.workers}",
            f"--threads={f.threads}",
            "--noprogress",
            "--allow_private_addresses",
        ],
        check=True,
        capture_output=True,
        env={**_no_proxy_env(), "PYTHONPATH": REPO_ROOT},
    )
    with open(os.path.join(out, "train-manifest.json"), encoding="utf-8") as file:
        return json.load(file)["num_records"], None


def _img2dataset(url_list: str, out: str, f: flags.FlagValues) -> int:
    subprocess.run(
        [
            os.path.join(f.img2dataset_venv, "bin", "img2dataset"),
            f"--url_list={url_list}",
            "--input_format=txt",
            f"--output_folder={out}",
            "--output_format=webdataset",
            f"--processes_count={f.workers}",
            f"--thread_count={f.threads}",
            f"--number_sample_per_shard={max(f.num_images // f.shards, 1)}",
            "--resize_mode=no",
            "--skip_reencode=True",
            "--extract_exif=False",
            "--timeout=20",
        ],
        check=True,
        capture_output=True,
        env={**_no_proxy_env(), "NO_ALBUMENTATIONS_UPDATE": "1"},
    )
    stats = []
    for path in glob.glob(os.path.join(out, "*_stats.json")):
        with open(path, encoding="utf-8") as file:
            stats.append(json.load(file))
    # Its own timing: first shard's start to last shard's end (no start-up, imports or process spawning).
    work = max(s["end_time"] for s in stats) - min(s["start_time"] for s in stats)
    return sum(s["successes"] for s in stats), work


def run(f: flags.FlagValues) -> None:
    """The one pass's images/s and, with --compare, download-then-write's and img2dataset's, interleaved."""
    from data.records import record_writer

    emit_machine("download", workers=f.workers, threads=f.threads, crc32c=record_writer.IMPLEMENTATION)
    list_path, names = photos.benchmark_images(f)
    input_bytes = sum(os.path.getsize(os.path.join(f.image_cache, n)) for n in names)
    emit("download/images", num_images=len(names), mean_jpeg_kb=round(input_bytes / len(names) / 1024, 1))

    variants: dict[str, Callable[[str, str, flags.FlagValues], tuple[int, float | None]]] = {
        "one_pass": _one_pass
    }
    if f.compare:
        variants["download_then_write"] = _download_then_write
        variants["one_pass_cli"] = _one_pass_cli
        if os.path.exists(os.path.join(f.img2dataset_venv, "bin", "img2dataset")):
            variants["img2dataset"] = _img2dataset
        else:
            emit("download/img2dataset", skipped=f"no img2dataset in {f.img2dataset_venv}/bin")
    root = tempfile.mkdtemp(prefix="mlimages_benchmark_download_")
    server, base = _start_server(f.image_cache)
    try:
        url_list, plain_list = _url_lists(list_path, base, root)
        # Untimed: starts the worker processes' forkserver, which later runs reuse, and warms the caches.
        t0 = time.perf_counter()
        count, _ = _one_pass(url_list, os.path.join(root, "cold"), f)
        emit("download/one_pass_cold", seconds=round(time.perf_counter() - t0, 2), images=count)
        shutil.rmtree(os.path.join(root, "cold"), ignore_errors=True)
        seconds: dict[str, list[float]] = {name: [] for name in variants}
        if "img2dataset" in variants:
            seconds["img2dataset_work"] = []
        for round_index in range(f.rounds):
            for name, variant in variants.items():
                out = os.path.join(root, f"{name}-{round_index}")
                t0 = time.perf_counter()
                count, work = variant(plain_list if name == "img2dataset" else url_list, out, f)
                seconds[name].append(time.perf_counter() - t0)
                shutil.rmtree(out, ignore_errors=True)
                if count != len(names):
                    raise RuntimeError(f"{name} stored {count} of {len(names)} images")
                extra = {}
                if work is not None:
                    seconds[f"{name}_work"].append(work)
                    extra = {"work_seconds": round(work, 2), "work_images_per_s": round(len(names) / work, 1)}
                emit(
                    f"download/{name}",
                    round=round_index,
                    seconds=round(seconds[name][-1], 2),
                    images_per_s=round(len(names) / seconds[name][-1], 1),
                    **extra,
                    load_average=[round(x, 2) for x in os.getloadavg()],
                )
        best = {name: len(names) / min(times) for name, times in seconds.items()}
        emit("download/best_images_per_s", **{name: round(rate, 1) for name, rate in best.items()})
        # Speed-ups within each round (variants of one round ran back to back, under about the same load),
        # then their median over the rounds.
        ratios = {}
        for ours, theirs in (
            ("one_pass", "download_then_write"),
            ("one_pass", "img2dataset_work"),
            ("one_pass_cli", "img2dataset"),
        ):
            if ours in seconds and theirs in seconds:
                per_round = [t / o for o, t in zip(seconds[ours], seconds[theirs], strict=True)]
                ratios[f"{ours}_vs_{theirs}"] = round(statistics.median(per_round), 2)
                ratios[f"{ours}_vs_{theirs}_per_round"] = [round(r, 2) for r in per_round]
        if ratios:
            emit("download/speedup", **ratios)
    finally:
        server.terminate()
        server.wait()
        shutil.rmtree(root, ignore_errors=True)
