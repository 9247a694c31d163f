"""Tests for data/download.py against a local HTTP server on 127.0.0.1 (no other traffic)."""

import collections
import dataclasses
import http.server
import io
import os
import pathlib
import subprocess
import sys
import threading
import time

import numpy as np
import pytest
from PIL import Image

from data import download
from data.download import DownloadConfig

FAST = DownloadConfig(threads=4, timeout_s=0.5, deadline_s=5.0, retries=2, backoff_s=0.01, backoff_max_s=0.05)


def _image_bytes(fmt: str, seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


GOOD_JPEG = _image_bytes("JPEG", 0)
GOOD_PNG = _image_bytes("PNG", 1)


class _Server:
    """Routes by path; counts requests per path so that tests can see retries."""

    def __init__(self):
        self.hits: collections.Counter[str] = collections.Counter()
        self.lock = threading.Lock()
        server = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def log_message(self, *args):  # Keep test output clean.
                pass

            def _send(self, code: int, body: bytes, *, length: int | None = None, headers=()):
                self.send_response(code)
                self.send_header("Content-Length", str(len(body) if length is None else length))
                for key, value in headers:
                    self.send_header(key, value)
                self.end_headers()
                try:
                    self.wfile.write(body)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] += 1
                    hits = server.hits[self.path]
                name = self.path.rsplit("/", 1)[-1]
                if self.path.startswith("/flickr/"):
                    self._send(200, GOOD_JPEG)
                elif name.startswith("good") and name.endswith(".png"):
                    self._send(200, GOOD_PNG)
                elif name.startswith("good"):
                    self._send(200, _image_bytes("JPEG", hash(name) % 1000))
                elif name == "missing.jpg":
                    self._send(404, b"not found")
                elif name == "forbidden.jpg":
                    self._send(403, b"no")
                elif name == "ratelimit.jpg":
                    self._send(429, b"slow down", headers=[("Retry-After", "0")])
                elif name == "flaky.jpg":  # Fails once, then works: a retry must rescue it.
                    self._send(503, b"busy") if hits == 1 else self._send(200, GOOD_JPEG)
                elif name == "cut_connection.jpg":  # Announces the full length, sends half, closes.
                    self._send(200, GOOD_JPEG[: len(GOOD_JPEG) // 2], length=len(GOOD_JPEG))
                    self.close_connection = True
                elif name == "truncated_file.jpg":  # A complete response whose JPEG data is cut short.
                    self._send(200, GOOD_JPEG[: len(GOOD_JPEG) * 2 // 3])
                elif name == "text.jpg":
                    self._send(200, b"<html>this is not an image</html>")
                elif name == "empty.jpg":
                    self._send(200, b"")
                elif name == "slow.jpg":
                    time.sleep(1.5)
                    self._send(200, GOOD_JPEG)
                else:
                    self._send(500, b"unknown route")

        self.httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(
            target=self.httpd.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True
        )

    def url(self, name: str) -> str:
        return f"{self.base}/img/{name}"


@pytest.fixture
def server(monkeypatch):
    for var in ("http_proxy", "HTTP_PROXY", "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)  # Only talk to 127.0.0.1 directly.
    s = _Server()
    s.thread.start()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


def test_filename_for_url_is_deterministic_and_keeps_the_extension():
    a = download.filename_for_url("https://farm2.staticflickr.com/2034/1557324960_1ae893fed8_o.jpg")
    assert a == download.filename_for_url("https://farm2.staticflickr.com/2034/1557324960_1ae893fed8_o.jpg")
    assert a.endswith(".jpg") and a[:2] == a[3:5] and len(a) == 2 + 1 + 24 + 4
    assert download.filename_for_url("http://x/a.PNG").endswith(".png")
    assert download.filename_for_url("http://x/a.php?id=3").endswith(".jpg")
    names = {download.filename_for_url(f"http://x/{i}.jpg") for i in range(5000)}
    assert len(names) == 5000


def test_image_problem():
    assert download.image_problem(GOOD_JPEG) is None
    assert download.image_problem(GOOD_PNG) is None
    assert download.image_problem(b"") == "empty body"
    assert download.image_problem(b"hello") == "not an image"
    assert download.image_problem(GOOD_JPEG[: len(GOOD_JPEG) * 2 // 3]).startswith("invalid image")
    assert download.image_problem(GOOD_PNG[:-30]).startswith("invalid image")


@pytest.mark.parametrize(
    "name, status, reason, hits",
    [
        ("good1.jpg", "downloaded", "", 1),
        ("good2.png", "downloaded", "", 1),
        ("missing.jpg", "failed", "http 404", 1),  # 4xx: no retry
        ("forbidden.jpg", "failed", "http 403", 1),
        ("ratelimit.jpg", "failed", "http 429 (after 3 attempts)", 3),  # 429: retried
        ("flaky.jpg", "downloaded", "", 2),
        ("cut_connection.jpg", "failed", "incomplete body", 3),
        ("truncated_file.jpg", "failed", "invalid image", 1),
        ("text.jpg", "failed", "not an image", 1),
        ("empty.jpg", "failed", "empty body", 1),
        ("slow.jpg", "failed", "timeout (after 3 attempts)", 3),
    ],
)
def test_fetch_outcomes(server, tmp_path, name, status, reason, hits):
    url = server.url(name)
    result = download.fetch(url, tmp_path, FAST)
    assert result.status == status, result
    assert result.reason.startswith(reason), result
    assert server.hits[f"/img/{name}"] == hits
    dest = tmp_path / download.filename_for_url(url)
    assert dest.exists() == (status == "downloaded")
    if status == "downloaded":
        assert result.num_bytes == dest.stat().st_size and download.image_problem(dest.read_bytes()) is None
    # No temporary files left behind, whatever happened.
    assert not [p for p in tmp_path.rglob("*.part")]


def test_fetch_refuses_other_schemes(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(GOOD_JPEG)
    result = download.fetch(secret.as_uri(), tmp_path / "out", FAST)
    assert result.status == "failed" and result.reason == "unsupported URL scheme"


def test_fetch_resumes_and_replaces_invalid_existing_file(server, tmp_path):
    url = server.url("good3.jpg")
    assert download.fetch(url, tmp_path, FAST).status == "downloaded"
    assert download.fetch(url, tmp_path, FAST).status == "existing"
    assert server.hits["/img/good3.jpg"] == 1
    (tmp_path / download.filename_for_url(url)).write_bytes(b"")  # e.g. left by another tool
    assert download.fetch(url, tmp_path, FAST).status == "downloaded"
    assert server.hits["/img/good3.jpg"] == 2


def test_fetch_all_keeps_input_order(server, tmp_path):
    names = ["slow.jpg", *(f"good{i}.jpg" for i in range(10)), "missing.jpg", "flaky.jpg"]
    config = DownloadConfig(threads=4, timeout_s=0.3, retries=0, backoff_s=0.01, window=3)
    urls = [server.url(n) for n in names]
    out = list(download.fetch_all(urls, tmp_path, config))
    assert [u for u, _ in out] == urls
    assert [r.status for _, r in out] == ["failed"] + ["downloaded"] * 10 + ["failed", "failed"]


def _write_url_list(path: pathlib.Path, server: _Server, names: list[str]) -> list[str]:
    lines = [f"{server.url(n)}\t{i}:1\t{i + 100}:0.9" for i, n in enumerate(names)]
    path.write_text("\n".join([*lines[:2], "not a valid line :: x:y", *lines[2:]]) + "\n")
    return [server.url(n) for n in names]


def test_download_url_list_writes_lists_and_resumes(server, tmp_path):
    pytest.importorskip("data.annotations")
    names = ["good1.jpg", "missing.jpg", "good2.png", "text.jpg", "good3.jpg"]
    urls = _write_url_list(tmp_path / "urls.txt", server, names)
    kwargs = dict(
        output_dir=tmp_path / "images",
        image_list=tmp_path / "list.txt",
        failed_list=tmp_path / "failed.txt",
        config=FAST,
        show_progress=False,
    )
    summary = download.download_url_list(tmp_path / "urls.txt", **kwargs)
    assert (summary.total, summary.downloaded, summary.existing, summary.failed) == (5, 3, 0, 2)
    assert summary.malformed_lines == 1
    listed = (tmp_path / "list.txt").read_text().splitlines()
    assert listed == [f"{download.filename_for_url(urls[i])}\t{i}:1\t{i + 100}:0.9" for i in (0, 2, 4)]
    for line in listed:
        assert download.image_header_ok(tmp_path / "images" / line.split("\t")[0])
    failed = [line.split("\t") for line in (tmp_path / "failed.txt").read_text().splitlines()]
    assert [(u, r) for u, r in failed] == [(urls[1], "http 404"), (urls[3], "not an image")]

    before = sum(server.hits.values())
    again = download.download_url_list(tmp_path / "urls.txt", **kwargs)
    assert (again.downloaded, again.existing, again.failed) == (0, 3, 2)
    assert sum(server.hits.values()) - before == 2  # Only the failures were asked again.
    assert (tmp_path / "list.txt").read_text().splitlines() == listed


def test_cli(server, tmp_path, repo_root):
    pytest.importorskip("data.annotations")
    _write_url_list(tmp_path / "urls.txt", server, ["good1.jpg", "missing.jpg"])
    env = {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}
    cmd = [sys.executable, str(repo_root / "data" / "download.py"), "--url_list", str(tmp_path / "urls.txt")]
    cmd += [
        "--output_dir",
        str(tmp_path / "out"),
        "--threads",
        "2",
        "--timeout",
        "2",
        "--retries",
        "0",
        "--noprogress",
    ]
    subprocess.run(cmd, check=True, env=env, timeout=60, capture_output=True)
    assert len((tmp_path / "out" / "image_list.txt").read_text().splitlines()) == 1
    assert (
        (tmp_path / "out" / "failed_urls.txt")
        .read_text()
        .startswith(f"{server.url('missing.jpg')}\thttp 404")
    )
    helptext = subprocess.run([*cmd[:2], "--help"], capture_output=True, text=True, timeout=60).stdout
    for flag in ("--url_list", "--output_dir", "--threads", "--timeout", "--retries", "--failed_list"):
        assert flag in helptext


def test_reference_url_list_through_local_server(server, tmp_path, reference_dir):
    """The release's 100-line URL list, its hosts replaced by the local server: 100 images, same labels."""
    from urllib.parse import urlsplit

    from data import annotations

    original = list(
        annotations.iter_entries(reference_dir / "train_urls_tiny.txt", num_classes=11166, on_error="fail")
    )
    assert len(original) == 100
    local = [dataclasses.replace(e, path=f"{server.base}/flickr{urlsplit(e.path).path}") for e in original]
    annotations.write_entries(tmp_path / "urls.txt", local)
    summary = download.download_url_list(
        tmp_path / "urls.txt",
        output_dir=tmp_path / "images",
        image_list=tmp_path / "list.txt",
        failed_list=tmp_path / "failed.txt",
        config=DownloadConfig(threads=8, timeout_s=5, retries=0),
        num_classes=11166,
        show_progress=False,
    )
    assert summary.downloaded == 100 and summary.failed == 0
    listed = list(annotations.iter_entries(tmp_path / "list.txt", num_classes=11166, on_error="fail"))
    assert [e.labels for e in listed] == [e.labels for e in original]
    assert [e.path for e in listed] == [download.filename_for_url(e.path) for e in local]
