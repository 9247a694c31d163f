"""One run per output folder, and SIGTERM, for the writer (data/tfrecord.py) and the downloader (both modes).

A second writer or download on a folder that a run is writing is refused at once, in one line naming the
holder; a holder killed with kill -9 is taken over. SIGTERM ends each of them in one line with exit status
143, its temporary files removed and its worker processes stopped; a re-run resumes.
"""

import glob
import http.server
import io
import logging
import os
import pathlib
import signal
import socket
import subprocess
import sys
import time

import numpy as np
import pytest
from PIL import Image

from data import download, fileio, tfrecord
from data.fetch import to_files, to_records, transport
from data.shards import dataset_writer, shard_writer
from tests import local_http, scripts

NUM_CLASSES = 10
TRICKLE_PERIOD_S = 0.2  # a "slow" URL sends one byte this often ...
TRICKLE_BYTES = 50  # ... for 10 s, then gives up: the server ends by itself


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 255, (12, 16, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _corpus(tmp_path: pathlib.Path, count: int) -> pathlib.Path:
    """`count` tiny JPEGs in tmp_path/img and their list; returns the list."""
    (tmp_path / "img").mkdir()
    lines = []
    for i in range(count):
        (tmp_path / "img" / f"im_{i:04d}.jpg").write_bytes(_jpeg(i))
        lines.append(f"im_{i:04d}.jpg\t{i % NUM_CLASSES}:1")
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    return tmp_path / "list.txt"


def _writer_args(tmp_path: pathlib.Path, out: pathlib.Path, *more: str) -> list[str]:
    return [
        f"--image_list={tmp_path / 'list.txt'}",
        f"--image_root={tmp_path / 'img'}",
        f"--output_dir={out}",
        f"--num_classes={NUM_CLASSES}",
        "--noprogress",
        *more,
    ]


def _env(repo_root: pathlib.Path, **extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    return {**env, "PYTHONPATH": str(repo_root), "TF_CPP_MIN_LOG_LEVEL": "2", **extra}


def _temp_files(folder: pathlib.Path) -> list[str]:
    return sorted(p.name for p in folder.rglob("*") if ".tmp" in p.name)


# ---------------------------------------------------------------------------------------------- the lock


_HOLD_LOCK = (
    "import sys, time\n"
    "from data import fileio\n"
    "fileio.DirectoryLock(sys.argv[1], name=sys.argv[2]).acquire()\n"
    "print('locked', flush=True)\n"
    "time.sleep(600)\n"
)


def _hold_lock(repo_root, folder: pathlib.Path, name: str) -> subprocess.Popen:
    """A process that holds `folder`'s lock `name` until killed; returned once it holds it."""
    proc = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, str(folder), name],
        cwd=repo_root,
        env=_env(repo_root),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_the_lock_of_a_killed_writer_is_taken_over_with_a_warning(tmp_path, repo_root, caplog):
    image_list = _corpus(tmp_path, 3)
    out = tmp_path / "out"
    holder = _hold_lock(repo_root, out, shard_writer.lock_name("train", 0, 1))
    os.kill(holder.pid, signal.SIGKILL)  # kill -9: its lock file still names it
    holder.wait()
    with caplog.at_level(logging.WARNING):
        written = dataset_writer.write_dataset(
            image_list=str(image_list),
            image_root=str(tmp_path / "img"),
            output_dir=str(out),
            label_format="sparse",
            num_classes=NUM_CLASSES,
            shards=1,
            progress=False,
        )
    assert written["num_records"] == 3
    assert f"PID {holder.pid}" in caplog.text and "that process is gone" in caplog.text
    assert not (out / shard_writer.lock_name("train", 0, 1)).exists()  # removed at the end


def test_the_lock_names_cannot_be_records_or_lists():
    for name in (
        shard_writer.lock_name("train", 0, 1),
        shard_writer.lock_name("val", 1, 2),
        to_files.LOCK_FILE,
    ):
        assert name.startswith(".") and name.endswith(".lock")
    assert shard_writer.lock_name("train", 0, 2) != shard_writer.lock_name("train", 1, 2)  # tasks write apart


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_a_running_writer_refuses_a_second_run_and_ends_in_one_line_on_sigterm(tmp_path, repo_root):
    """A writer (2 worker processes) blocks in shard 2 of 4. A second writer and a one-pass download into
    its folder are refused naming it; SIGTERM then ends it with status 143 and one line, its temporary
    files removed and its workers gone; the re-run writes only the unfinished shards."""
    _corpus(tmp_path, 8)
    gate = tmp_path / "gate"
    gate.touch()
    # Reading line 5 blocks: shard 2 of 4.
    env = _env(repo_root, **scripts.blocking_read_env(tmp_path / "site", repo_root, "im_0004.jpg", gate))
    out = tmp_path / "out"
    args = _writer_args(tmp_path, out, "--shards=4", "--workers=2")
    proc = subprocess.Popen(
        [sys.executable, str(repo_root / "data" / "tfrecord.py"), *args],
        cwd=repo_root,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        scripts.wait_for(
            lambda: glob.glob(str(out / ".train-00002-of-00004.tfrecord.*.tmp")) or proc.poll() is not None,
            timeout=120,
            what="the writer to block in shard 2",
        )
        assert proc.poll() is None, proc.stderr.read()
        with pytest.raises(SystemExit) as second:
            scripts.run_in_process(tfrecord, _writer_args(tmp_path, out, "--shards=4", "--workers=1"))
        with pytest.raises(fileio.FolderBusyError) as one_pass:
            to_records.download_records(
                tmp_path / "list.txt",
                output_dir=out,
                label_format="sparse",
                num_classes=NUM_CLASSES,
                shards=4,
            )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
        scripts.wait_for(lambda: not scripts.process_states(proc.pid), timeout=30, what="the workers to exit")
    finally:
        if scripts.process_states(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    busy = f"{out} is in use by another run (host {socket.gethostname()}, PID {proc.pid}, started "
    assert str(second.value.code).startswith(f"tfrecord.py: error: {busy}")
    assert str(one_pass.value).startswith(busy)
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr
    terminated = [line for line in stderr.splitlines() if line.startswith("tfrecord.py: ")]
    assert terminated == [
        "tfrecord.py: terminated (SIGTERM); the finished shards are kept; run the same command again to "
        "write the rest"
    ]
    assert _temp_files(out) == [] and not (out / shard_writer.lock_name("train", 0, 1)).exists()
    finished = sorted(p.name for p in out.glob("*.done.json"))
    assert "train-00002-of-00004.done.json" not in finished

    gate.unlink()
    scripts.run_in_process(tfrecord, _writer_args(tmp_path, out, "--shards=4", "--workers=1"))
    manifest = fileio.read_json(out / "train-manifest.json")
    assert manifest["num_records"] == 8 and len(manifest["shards"]) == 4


# ---------------------------------------------------------------------------------------------- downloads


class _Server:
    """``/img/good*``: a JPEG; ``/img/slow*``: headers, then one byte every TRICKLE_PERIOD_S."""

    def __init__(self):
        self.hits: set[str] = set()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def do_GET(self):
                name = self.path.rsplit("/", 1)[-1]
                server.hits.add(name)
                if name.startswith("slow"):
                    self.send_response(200)
                    self.send_header("Content-Length", str(TRICKLE_BYTES * 10))
                    self.end_headers()
                    try:
                        for _ in range(TRICKLE_BYTES):
                            self.wfile.write(b"\xff")
                            self.wfile.flush()
                            time.sleep(TRICKLE_PERIOD_S)
                    except OSError:
                        pass
                    return
                body = _jpeg(sum(map(ord, name)))
                self.send_response(200)
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


def _url_list(path: pathlib.Path, server: _Server, names: list[str]) -> list[str]:
    urls = [server.url(n) for n in names]
    path.write_text("".join(f"{u}\t{i % NUM_CLASSES}:1\n" for i, u in enumerate(urls)))
    return urls


def _download(repo_root, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            str(repo_root / "data" / "download.py"),
            "--noprogress",
            "--allow_private_addresses",
            *args,
        ],
        cwd=repo_root,
        env=_env(repo_root),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )


@pytest.mark.parametrize("mode", ["files", "records"])
def test_a_second_download_into_a_folder_being_written_is_refused_naming_it(
    server, tmp_path, repo_root, mode
):
    """A download (into files, or the one pass into records) waits on a URL that trickles; a second one
    into the same folder is refused at once, in one line naming the first."""
    _url_list(tmp_path / "urls.txt", server, ["good0.jpg", "slow0.jpg"])
    out = tmp_path / "out"
    args = [f"--url_list={tmp_path / 'urls.txt'}", "--threads=2", "--timeout=30"]
    args += [f"--output_dir={out}"] if mode == "files" else [f"--output_records={out}", "--shards=1"]
    args += [f"--num_classes={NUM_CLASSES}", "--workers=1", "--noprogress", "--allow_private_addresses"]
    first = _download(repo_root, *args)
    try:
        scripts.wait_for(
            lambda: {"good0.jpg", "slow0.jpg"} <= server.hits, timeout=60, what="the first download"
        )
        with pytest.raises(SystemExit) as info:
            scripts.run_in_process(download, args)
    finally:
        first.kill()
        first.wait()
    message = str(info.value.code)
    busy = (
        f"download.py: error: {out} is in use by another run (host {socket.gethostname()}, PID {first.pid}, "
    )
    assert message.startswith(busy) and "\n" not in message
    assert server.hits == {"good0.jpg", "slow0.jpg"}  # the second run fetched nothing


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="needs /proc")
def test_sigterm_ends_the_one_pass_at_once_in_one_line(server, tmp_path, repo_root):
    """Both workers wait on a URL that trickles for 10 s: SIGTERM stops them at once (exit 143, one line),
    with no temporary file left and no process."""
    _url_list(tmp_path / "urls.txt", server, ["good0.jpg", "slow0.jpg", "good1.jpg", "slow1.jpg"])
    out = tmp_path / "out"
    proc = _download(
        repo_root,
        f"--url_list={tmp_path / 'urls.txt'}",
        f"--output_records={out}",
        f"--num_classes={NUM_CLASSES}",
        "--shards=2",
        "--workers=2",
        "--threads=2",
        "--timeout=30",
        "--deadline=60",
    )
    try:
        scripts.wait_for(lambda: {"slow0.jpg", "slow1.jpg"} <= server.hits, timeout=60, what="both slow URLs")
        time.sleep(0.3)
        proc.send_signal(signal.SIGTERM)
        start = time.monotonic()
        _, stderr = proc.communicate(timeout=30)
        elapsed = time.monotonic() - start
        scripts.wait_for(lambda: not scripts.process_states(proc.pid), timeout=30, what="the workers to exit")
    finally:
        if scripts.process_states(proc.pid):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    assert proc.returncode == 143, stderr
    assert elapsed < 5, elapsed  # not the trickles' 10 s
    assert "Traceback" not in stderr
    terminated = [line for line in stderr.splitlines() if line.startswith("download.py: ")]
    assert len(terminated) == 1 and terminated[0].startswith(
        "download.py: terminated (SIGTERM); the finished"
    )
    assert _temp_files(out) == [] and not list(out.glob("*.tfrecord"))


def test_sigterm_stops_the_download_into_files_listing_what_it_stored(server, tmp_path, repo_root):
    urls = _url_list(tmp_path / "urls.txt", server, ["good0.jpg", "good1.jpg", "slow0.jpg", "good2.jpg"])
    out = tmp_path / "out"
    proc = _download(
        repo_root, f"--url_list={tmp_path / 'urls.txt'}", f"--output_dir={out}", "--threads=4", "--timeout=30"
    )
    try:
        stored = [out / transport.filename_for_url(urls[i]) for i in (0, 1, 3)]
        scripts.wait_for(
            lambda: all(p.exists() for p in stored) and "slow0.jpg" in server.hits,
            timeout=60,
            what="the good images",
        )
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=10)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, stderr
    assert "Traceback" not in stderr and "Terminated (SIGTERM)" in stderr, stderr
    listed = [line.split("\t")[0] for line in (out / "image_list.txt").read_text().splitlines()]
    assert listed == [transport.filename_for_url(urls[i]) for i in (0, 1, 3)]
    assert (out / "failed_urls.txt").read_text().splitlines() == [f"{urls[2]}\tinterrupted"]
    assert _temp_files(out) == [] and not (out / to_files.LOCK_FILE).exists()


def test_kill_9_of_the_download_into_files_leaves_every_stored_image_listed(server, tmp_path, repo_root):
    """The lists are written as the downloads end: a download killed with kill -9 (here while a URL
    trickles, after the images after it were stored) has listed every image it stored."""
    names = ["good0.jpg", "slow0.jpg", "good1.jpg", "good2.jpg", "good3.jpg"]
    urls = _url_list(tmp_path / "urls.txt", server, names)
    out = tmp_path / "out"
    proc = _download(
        repo_root, f"--url_list={tmp_path / 'urls.txt'}", f"--output_dir={out}", "--threads=4", "--timeout=30"
    )
    try:
        stored = [out / transport.filename_for_url(urls[i]) for i in (0, 2, 3, 4)]
        scripts.wait_for(lambda: all(p.exists() for p in stored), timeout=60, what="the good images")
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.kill()
        proc.wait()
    on_disk = sorted(str(p.relative_to(out)) for p in out.rglob("*.jpg"))
    listed = sorted(line.split("\t")[0] for line in (out / "image_list.txt").read_text().splitlines())
    assert on_disk == listed == sorted(transport.filename_for_url(urls[i]) for i in (0, 2, 3, 4))
