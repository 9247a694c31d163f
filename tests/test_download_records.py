"""Tests for the one pass (data/fetch/to_records.py, `data/download.py --output_records`) against a local server.

The server is a thread of this process on 127.0.0.1 that counts the requests per path, so that the tests can
see which URLs a re-run fetched again.
"""

import collections
import errno
import http.server
import io
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.fetch import to_files, to_records, transport
from data.fetch.transport import DownloadConfig
from data.records import manifest, schema
from data.shards import dataset_writer
from tests import local_http, scripts
from tests.test_download import _png_bomb

FAST = DownloadConfig(
    allow_private_addresses=True,
    threads=4,
    timeout_s=2.0,
    deadline_s=10.0,
    retries=1,
    backoff_s=0.01,
    backoff_max_s=0.05,
)
NUM_CLASSES = 20


def _image(name: str) -> bytes:
    """A tiny image whose pixels depend on the name (PNG for ``.png`` names, else JPEG)."""
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    buffer = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (12, 16, 3), dtype=np.uint8)).save(
        buffer, format="PNG" if name.endswith(".png") else "JPEG"
    )
    return buffer.getvalue()


class _Server:
    """``/img/good*`` images, ``missing`` (404), ``text`` (HTML), ``truncated`` (a JPEG cut short) and
    ``bomb`` (a 20000x20000 PNG of a few KB); every response waits `delay` seconds."""

    def __init__(self):
        self.hits: collections.Counter[str] = collections.Counter()
        self.delay = 0.0
        lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                with lock:
                    server.hits[self.path] += 1
                time.sleep(server.delay)
                name = self.path.rsplit("/", 1)[-1]
                code, body = 200, b""
                if name.startswith("good"):
                    body = _image(name)
                elif name.startswith("truncated"):
                    body = _image(name)[:-100]
                elif name.startswith("text"):
                    body = b"<html>not an image</html>"
                elif name.startswith("bomb"):
                    body = _png_bomb(20000, 20000)
                else:
                    code, body = 404, b"not found"
                self.send_response(code)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.httpd, self.base = local_http.local_server(Handler)

    def url(self, name: str) -> str:
        return f"{self.base}/img/{name}"


@pytest.fixture
def server(monkeypatch):
    local_http.clear_proxies(monkeypatch)
    s = _Server()
    with local_http.serving(s.httpd):
        yield s


# One of every kind of line; the bad ones are spread over the shards.
NAMES = [
    "good0.jpg",
    "missing0.jpg",
    "good1.png",
    "text0.jpg",
    "good2.jpg",
    "truncated0.jpg",
    "good3.jpg",
    "bomb0.png",
    "good4.jpg",
]


def _url_list(path: pathlib.Path, server: _Server, names=NAMES) -> list[str]:
    """The URL list of `names` (tags i:1 and i+10:0.9), with a malformed line and a blank line added."""
    lines = [f"{server.url(n)}\t{i}:1\t{(i + 10) % NUM_CLASSES}:0.9" for i, n in enumerate(names)]
    lines.insert(3, f"{server.url('good_but_bad_tag.jpg')}\t{NUM_CLASSES}:1")  # Class index out of range.
    lines.insert(6, "")
    path.write_text("\n".join(lines) + "\n")
    return lines


def _records(directory: pathlib.Path, prefix: str = "train") -> list[tf.train.Example]:
    """Every record of a split, parsed, in shard order."""
    files = schema.list_record_files(directory, prefix)
    return [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(files)]


def _one_pass(url_list: pathlib.Path, out: pathlib.Path, **kwargs) -> to_records.RecordsSummary:
    options = dict(
        output_dir=out,
        label_format="sparse",
        num_classes=NUM_CLASSES,
        shards=3,
        config=FAST,
        workers=1,
        progress=False,
    )
    return to_records.download_records(url_list, **{**options, **kwargs})


def test_one_pass_writes_the_records_of_download_then_write(server, tmp_path):
    """Same URL list: the one pass's records equal download + data/tfrecord.py's, record by record."""
    _url_list(tmp_path / "urls.txt", server)
    summary = _one_pass(tmp_path / "urls.txt", tmp_path / "one_pass")

    to_files.download_url_list(
        tmp_path / "urls.txt",
        output_dir=tmp_path / "images",
        image_list=tmp_path / "image_list.txt",
        failed_list=tmp_path / "failed.txt",
        config=FAST,
        num_classes=NUM_CLASSES,
        show_progress=False,
    )
    dataset_writer.write_dataset(
        image_list=str(tmp_path / "image_list.txt"),
        image_root=str(tmp_path / "images"),
        output_dir=str(tmp_path / "two_pass"),
        label_format="sparse",
        num_classes=NUM_CLASSES,
        shards=2,
        progress=False,
    )
    one_pass, two_pass = _records(tmp_path / "one_pass"), _records(tmp_path / "two_pass")
    assert len(one_pass) == 5  # good0-4; the PNG converted the same way by both.
    assert one_pass == two_pass
    names = [r.features.feature[schema.NAME_KEY].bytes_list.value[0].decode() for r in one_pass]
    assert names == [
        transport.filename_for_url(server.url(f"good{i}{'.png' if i == 1 else '.jpg'}")) for i in range(5)
    ]
    assert summary.manifest["converted"] == {"PNG": 1}


def test_every_bad_line_is_counted_and_listed(server, tmp_path):
    """Malformed lines, dead URLs, non-images, truncated files and bombs: skipped with reasons, none lost."""
    lines = _url_list(tmp_path / "urls.txt", server)
    summary = _one_pass(tmp_path / "urls.txt", tmp_path / "out")
    assert summary.lines == sum(1 for line in lines if line.strip()) == 10
    assert (summary.records, summary.failed, summary.malformed_lines) == (5, 4, 1)
    assert summary.records + summary.failed + summary.malformed_lines == summary.lines
    assert summary.failure_reasons.keys() == {
        "http 404",
        "not an image",
        "corrupt or truncated",
        "too many pixels",
    }
    failed = [line.split("\t") for line in (tmp_path / "out" / "train-failed.txt").read_text().splitlines()]
    assert [url for url, _ in failed] == [
        server.url(n)
        for n in ("missing0.jpg", "good_but_bad_tag.jpg", "text0.jpg", "truncated0.jpg", "bomb0.png")
    ]
    assert failed[1][1].startswith("bad line: ") and failed[0][1] == "http 404"
    assert summary.manifest["num_skipped"] == 5
    assert server.hits["/img/good_but_bad_tag.jpg"] == 0  # A malformed line is never fetched.


def test_on_error_fail_names_the_line(server, tmp_path):
    _url_list(tmp_path / "urls.txt", server)
    with pytest.raises(ValueError, match=r"urls.txt:2: .*missing0.jpg: http 404"):
        _one_pass(tmp_path / "urls.txt", tmp_path / "out", on_error="fail", shards=1)
    assert not list((tmp_path / "out").glob("*.tfrecord"))


def test_rerun_fetches_only_unfinished_shards(server, tmp_path):
    _url_list(tmp_path / "urls.txt", server)
    first = _one_pass(tmp_path / "urls.txt", tmp_path / "out")
    records = _records(tmp_path / "out")
    hits = sum(server.hits.values())
    again = _one_pass(tmp_path / "urls.txt", tmp_path / "out")
    assert sum(server.hits.values()) == hits  # Every shard finished: nothing fetched.
    assert (again.shards_fetched, again.shards_reused) == (0, 3)
    assert again.manifest == first.manifest

    shard = first.manifest["shards"][1]  # As if the run had been killed before shard 1's sidecar.
    os.remove(tmp_path / "out" / shard["file"].replace(".tfrecord", ".done.json"))
    before = server.hits.copy()
    third = _one_pass(tmp_path / "urls.txt", tmp_path / "out")
    assert (third.shards_fetched, third.shards_reused) == (1, 2)
    listed = (tmp_path / "urls.txt").read_text().splitlines()[shard["first_line"] - 1 : shard["end_line"]]
    expected = {
        "/" + line.split("\t")[0].split("/", 3)[3] for line in listed if line and "bad_tag" not in line
    }
    assert {path for path in server.hits if server.hits[path] > before[path]} == expected
    assert _records(tmp_path / "out") == records


def test_cli_one_pass(server, tmp_path, repo_root):
    _url_list(tmp_path / "urls.txt", server)
    cmd = [
        sys.executable,
        str(repo_root / "data" / "download.py"),
        f"--url_list={tmp_path / 'urls.txt'}",
        f"--output_records={tmp_path / 'out'}",
        f"--num_classes={NUM_CLASSES}",
        "--shards=2",
        "--workers=1",
        "--threads=2",
        "--label_format=dense",
        "--noprogress",
        "--allow_private_addresses",
    ]
    proc = subprocess.run(cmd, env=_env(), timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "5 records, 4 failed URLs, 1 malformed lines" in proc.stderr
    manifest = schema.read_manifest(tmp_path / "out")
    assert manifest.label_format == "dense" and manifest.num_records == 5
    usage = subprocess.run(
        [*cmd, f"--output_dir={tmp_path / 'images'}"], env=_env(), timeout=60, capture_output=True, text=True
    )
    assert usage.returncode != 0 and "drop --output_dir" in usage.stderr and "Traceback" not in usage.stderr
    other = subprocess.run(  # Finished shards of this run, other settings: one line, no traceback.
        [*cmd, "--label_format=sparse"], env=_env(), timeout=120, capture_output=True, text=True
    )
    assert other.returncode != 0 and "other settings" in other.stderr and "Traceback" not in other.stderr


def _env() -> dict[str, str]:
    return {
        **{k: v for k, v in os.environ.items() if "proxy" not in k.lower()},
        "PYTHONPATH": str(pathlib.Path(__file__).resolve().parents[1]),
    }


def _four_shard_command(repo_root, url_list, out, *, workers: int) -> list[str]:
    """`python data/download.py` writing `url_list` as 4 record shards into `out` (2 threads, no bar)."""
    return [
        sys.executable,
        str(repo_root / "data" / "download.py"),
        f"--url_list={url_list}",
        f"--output_records={out}",
        f"--num_classes={NUM_CLASSES}",
        "--shards=4",
        f"--workers={workers}",
        "--threads=2",
        "--noprogress",
        "--allow_private_addresses",
    ]


@pytest.mark.slow
def test_kill_9_then_rerun_fetches_only_unfinished_shards(server, tmp_path, repo_root):
    """kill -9 of the one pass (2 worker processes) after its first shard: the re-run keeps the finished
    shards (their URLs are not asked again), fetches the rest, and writes the records of an uninterrupted run."""
    names = [f"good{i}.jpg" for i in range(48)]
    lines = [f"{server.url(n)}\t{i % NUM_CLASSES}:1" for i, n in enumerate(names)]
    (tmp_path / "urls.txt").write_text("\n".join(lines) + "\n")
    out = tmp_path / "out"
    server.delay = 0.1  # 12 URLs per shard, 2 threads: about 0.6 s per shard.
    cmd = _four_shard_command(repo_root, tmp_path / "urls.txt", out, workers=2)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 90
        while not list(out.glob("*.done.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    time.sleep(1.0)  # The orphaned workers notice and exit; their temporary files stay behind.
    finished = {p.name.replace(".done.json", ".tfrecord") for p in out.glob("*.done.json")}
    assert 1 <= len(finished) < 4, finished
    assert list(out.glob(".*.tmp")), "the killed run left no temporary file: it was not killed mid-shard"
    before = server.hits.copy()

    server.delay = 0.0
    summary = _one_pass(tmp_path / "urls.txt", out, shards=4)
    assert (summary.shards_reused, summary.shards_fetched) == (len(finished), 4 - len(finished))
    assert not list(out.glob(".*.tmp"))
    for shard in summary.manifest["shards"]:
        paths = [f"/img/{names[i]}" for i in range(shard["first_line"] - 1, shard["end_line"])]
        fetched_again = [server.hits[p] - before[p] for p in paths]
        assert fetched_again == [0 if shard["file"] in finished else 1] * len(paths), shard["file"]
    clean = _one_pass(tmp_path / "urls.txt", tmp_path / "clean", shards=4)
    assert summary.manifest["shards"] == clean.manifest["shards"]
    assert _records(out) == _records(tmp_path / "clean") and len(_records(out)) == 48


@pytest.mark.parametrize(
    "reason, category",
    [
        ("http 404", "http 404"),
        ("timeout (after 4 attempts)", "timeout"),
        ("connection error: ConnectionResetError (after 2 attempts, deadline reached)", "connection error"),
        ("not an image (unidentified format)", "not an image"),
        ("corrupt or truncated (OSError: image file is truncated)", "corrupt or truncated"),
        ("too many pixels: 400000000 > 100000000", "too many pixels"),
    ],
)
def test_reason_category(reason, category):
    assert manifest.reason_category(reason) == category


def test_start_workers_early_leaves_a_forkserver_that_run_tasks_uses():
    from multiprocessing import forkserver

    from data.shards import worker_pool

    worker_pool.start_workers_early(__name__)
    pid = forkserver._forkserver._forkserver_pid  # noqa: SLF001 -- the only way to see which server runs
    assert pid is not None
    seen = []
    worker_pool.run_tasks(
        _square,
        [2, 3],
        workers=2,
        total=2,
        on_result=seen.append,
        progress=False,
    )
    assert sorted(seen) == [4, 9]
    assert forkserver._forkserver._forkserver_pid == pid  # noqa: SLF001


def _square(x, report):
    report(1)
    return x * x


def test_benchmark_at_toy_size(tmp_path, capsys, server):
    """`tools/benchmark.py download --compare` runs end to end (img2dataset skipped: no such venv)."""
    import json

    from absl import flags

    from tools import benchmark
    from tools.benchmarks import download as download_benchmark

    flag_values = flags.FlagValues()
    benchmark.define_flags(flag_values, subcommand="download")
    flag_values(
        [
            "benchmark.py",
            "--num_images=6",
            "--image_width=32",
            "--image_height=24",
            f"--num_classes={NUM_CLASSES}",
            "--tags=2",
            "--workers=1",
            "--threads=2",
            "--shards=2",
            "--compare",
            f"--image_cache={tmp_path / 'cache'}",
            f"--img2dataset_venv={tmp_path / 'none'}",
        ]
    )
    download_benchmark.run(flag_values)
    lines = {}
    for line in capsys.readouterr().out.splitlines():
        record = json.loads(line)
        lines[record["benchmark"]] = record
    assert "no img2dataset" in lines["download/img2dataset"]["skipped"]
    for name in ("one_pass", "download_then_write", "one_pass_cli"):
        assert lines[f"download/{name}"]["images_per_s"] > 0
    speedup = lines["download/speedup"]
    assert set(speedup) == {
        "benchmark",
        "one_pass_vs_download_then_write",
        "one_pass_vs_download_then_write_per_round",
    }
    assert (
        speedup["one_pass_vs_download_then_write"] == speedup["one_pass_vs_download_then_write_per_round"][0]
    )


def test_two_tasks_and_merge_give_the_single_task_records(server, tmp_path):
    """--task_index/--num_tasks split the shards between machines; `merge_manifests` completes the split."""
    from data.records import manifest

    _url_list(tmp_path / "urls.txt", server)
    single = _one_pass(tmp_path / "urls.txt", tmp_path / "single")
    summaries = [
        _one_pass(tmp_path / "urls.txt", tmp_path / "tasks", task_index=t, num_tasks=2) for t in (0, 1)
    ]
    assert [s.manifest["complete"] for s in summaries] == [False, False]
    assert sum(s.records for s in summaries) == single.records == 5
    assert sum(s.failed for s in summaries) == single.failed == 4
    for t in (0, 1):  # Each task lists its own failures.
        assert (tmp_path / "tasks" / f"train-failed.task-{t:05d}-of-00002.txt").exists()
    merged = manifest.merge_manifests(str(tmp_path / "tasks"))
    assert merged["shards"] == single.manifest["shards"] and merged["num_skipped"] == 5
    assert _records(tmp_path / "tasks") == _records(tmp_path / "single")


def test_cli_ctrl_c_keeps_finished_shards_and_exits_130(server, tmp_path, repo_root):
    names = [f"good{i}.jpg" for i in range(40)]
    (tmp_path / "urls.txt").write_text("".join(f"{server.url(n)}\t1:1\n" for n in names))
    out = tmp_path / "out"
    server.delay = 0.2  # 10 URLs per shard, 2 threads: about 1 s per shard.
    cmd = _four_shard_command(repo_root, tmp_path / "urls.txt", out, workers=1)
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while not list(out.glob("*.done.json")) and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.02)
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Interrupted" in stderr, stderr
    finished = sorted(p.name for p in out.glob("*.done.json"))
    assert 1 <= len(finished) < 4 and not list(out.glob(".*.tmp"))
    server.delay = 0.0
    summary = _one_pass(tmp_path / "urls.txt", out, shards=4)
    assert (summary.shards_reused, summary.records) == (len(finished), 40)


_NO_TENSORFLOW_RUN = """
import runpy, sys
sys.argv = ["download.py", *sys.argv[1:]]
try:
    runpy.run_path("data/download.py", run_name="__main__")
except SystemExit as e:
    assert not e.code, e.code
print("LOADED", sorted(m for m in sys.modules if m.split(".")[0] in ("tensorflow", "keras")))
"""


@pytest.mark.parametrize("workers", [1, 2])
def test_one_pass_never_imports_tensorflow(server, tmp_path, repo_root, workers):
    """The whole one pass (list reading, workers, sidecars, manifest; with workers=1 the shards' fetching and
    writing too) runs in a process that never imports TensorFlow: its 10-30 s import was the start-up that
    img2dataset does not pay (docs/BENCHMARKS.md section 8)."""
    _url_list(tmp_path / "urls.txt", server)
    cmd = [
        sys.executable,
        "-c",
        _NO_TENSORFLOW_RUN,
        f"--url_list={tmp_path / 'urls.txt'}",
        f"--output_records={tmp_path / 'out'}",
        f"--num_classes={NUM_CLASSES}",
        "--shards=2",
        f"--workers={workers}",
        "--threads=2",
        "--noprogress",
        "--allow_private_addresses",
    ]
    proc = subprocess.run(cmd, env=_env(), cwd=repo_root, timeout=120, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "LOADED []" in proc.stdout, proc.stdout
    assert schema.read_manifest(tmp_path / "out").num_records == 5


def test_one_pass_shards_are_what_tensorflow_writes(server, tmp_path):
    """Each shard is byte for byte the file tf.io.TFRecordWriter writes from the Examples that
    tf.train.Example serializes (deterministically) for the same records: TensorFlow's own bytes."""
    _url_list(tmp_path / "urls.txt", server)
    _one_pass(tmp_path / "urls.txt", tmp_path / "out", label_format="dense", shards=2)
    files = schema.list_record_files(tmp_path / "out")
    assert len(files) == 2
    for file in files:
        examples = [tf.train.Example.FromString(r.numpy()) for r in tf.data.TFRecordDataset(file)]
        assert examples
        rewritten = str(tmp_path / "tf.tfrecord")
        with tf.io.TFRecordWriter(rewritten) as writer:
            for example in examples:
                writer.write(example.SerializeToString(deterministic=True))
        assert pathlib.Path(file).read_bytes() == pathlib.Path(rewritten).read_bytes()


def test_a_full_disk_ends_the_one_pass_in_one_line_keeping_the_finished_shards(server, tmp_path, monkeypatch):
    """ENOSPC when shard 1 of 2 is renamed into place: `download.py: error: ...` (no traceback), shard 0
    and its sidecar kept, no temporary file; the re-run fetches only shard 1."""
    from data import download

    names = [f"good{i}.jpg" for i in range(4)]
    (tmp_path / "urls.txt").write_text("".join(f"{server.url(n)}\t1:1\n" for n in names))
    out = tmp_path / "out"

    args = [
        f"--url_list={tmp_path / 'urls.txt'}",
        f"--output_records={out}",
        f"--num_classes={NUM_CLASSES}",
        "--shards=2",
        "--workers=1",
        "--threads=2",
        "--noprogress",
        "--allow_private_addresses",
    ]
    scripts.full_disk_on_rename(monkeypatch, "train-00001-of-00002.tfrecord")
    with pytest.raises(SystemExit) as info:
        scripts.run_in_process(download, args)
    monkeypatch.undo()
    message = str(info.value.code)
    assert message.startswith("download.py: error: ") and "\n" not in message
    assert message.endswith(
        f"{os.strerror(errno.ENOSPC)}; the finished shards are kept; run the same command again to fetch the rest"
    )
    assert sorted(p.name for p in out.iterdir()) == [
        "train-00000-of-00002.done.json",
        "train-00000-of-00002.tfrecord",
    ]
    before = server.hits.copy()
    scripts.run_in_process(download, args)
    assert [server.hits[f"/img/{n}"] - before[f"/img/{n}"] for n in names] == [0, 0, 1, 1]
    assert len(_records(out)) == 4
