"""Tests for data/download.py against local servers on 127.0.0.1 (no other traffic).

The servers live in this process (threads) and every one of their loops is bounded, so they stop by
themselves even if a client misbehaves.
"""

import collections
import dataclasses
import errno
import functools
import http.server
import io
import logging
import os
import pathlib
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zlib

import numpy as np
import pytest
from PIL import Image

from data import download
from data.fetch import to_files, transport, urls
from data.fetch.transport import DownloadConfig
from data.pixels import images
from tests import local_http, scripts

FAST = DownloadConfig(
    allow_private_addresses=True,
    threads=4,
    timeout_s=0.5,
    deadline_s=5.0,
    retries=2,
    backoff_s=0.01,
    backoff_max_s=0.05,
)
TRICKLE_PERIOD_S = 0.2  # The trickling routes send one byte this often ...
TRICKLE_MAX_BYTES = 50  # ... and give up after this many (10 s), so that they end by themselves.


def _image_bytes(fmt: str, seed: int, size: tuple[int, int] = (48, 40)) -> bytes:
    rng = np.random.default_rng(seed)
    pixels = rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format=fmt)
    return buffer.getvalue()


@functools.cache
def _png_bomb(width: int, height: int) -> bytes:
    """A valid 1-bit PNG of width x height black pixels: tiny on disk, huge once decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    rows = (b"\0" * (1 + (width + 7) // 8)) * 1000  # Filter byte + packed bits, 1000 rows at a time.
    compressor = zlib.compressobj(6)
    idat = b"".join(compressor.compress(rows) for _ in range(height // 1000)) + compressor.flush()
    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


GOOD_JPEG = _image_bytes("JPEG", 0)
GOOD_PNG = _image_bytes("PNG", 1)
NON_ASCII_JPEG = _image_bytes("JPEG", 2)
# A non-ASCII name with a space and an existing %XX, and the path a browser requests for it.
NON_ASCII_NAME = "café au lait ☃%41.jpg"
NON_ASCII_REQUESTED = "caf%C3%A9%20au%20lait%20%E2%98%83%41.jpg"


def _jpeg_with_big_header() -> bytes:
    """A valid JPEG whose frame header comes after 200 KB of ICC segments (Pillow splits them)."""
    buffer = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buffer, format="JPEG", icc_profile=b"\x01" * 200_000)
    return buffer.getvalue()


BIG_HEADER_JPEG = _jpeg_with_big_header()


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

            def _trickle(self, data: bytes) -> None:
                """Sends `data` one byte per TRICKLE_PERIOD_S (at most TRICKLE_MAX_BYTES), then closes."""
                try:
                    for byte in data[:TRICKLE_MAX_BYTES]:
                        self.wfile.write(bytes([byte]))
                        self.wfile.flush()
                        time.sleep(TRICKLE_PERIOD_S)
                except OSError:  # The client hung up, as it should.
                    pass
                self.close_connection = True

            def _redirect(self, location: str) -> None:
                self._send(302, b"", headers=[("Location", location)])

            def do_GET(self):
                with server.lock:
                    server.hits[self.path] += 1
                    hits = server.hits[self.path]
                name = self.path.rsplit("/", 1)[-1]
                if name == NON_ASCII_REQUESTED:  # Only the browser's encoding of the name gets the image.
                    self._send(200, NON_ASCII_JPEG)
                elif self.path.startswith("/flickr/"):
                    self._send(200, GOOD_JPEG)
                elif name.startswith("good") and name.endswith(".png"):
                    self._send(200, GOOD_PNG)
                elif name.startswith("good"):
                    self._send(200, _image_bytes("JPEG", hash(name) % 1000))
                elif name == "big_header.jpg":
                    self._send(200, BIG_HEADER_JPEG)
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
                elif name == "loop.jpg":
                    self._redirect(self.path)
                elif name == "loop_a.jpg":
                    self._redirect("/img/loop_b.jpg")
                elif name == "loop_b.jpg":
                    self._redirect(f"{server.base}/img/loop_a.jpg")
                elif name == "redirect_good.jpg":
                    self._redirect("/img/good_target.jpg")
                elif name == "redirect_ftp.jpg":
                    self._redirect("ftp://127.0.0.1/x.jpg")
                elif name == "redirect_metadata.jpg":  # A cloud metadata service's address.
                    self._redirect("http://169.254.169.254/latest/meta-data/x.jpg")
                elif name == "redirect_other_loopback.jpg":
                    self._redirect("http://127.0.0.2:1/img/good_x.jpg")  # refused before any connect
                elif name.startswith("bomb"):  # bomb_<width>x<height>.png
                    width, height = map(int, name[5:-4].split("x"))
                    self._send(200, _png_bomb(width, height))
                elif name.startswith("trickle_headers"):  # The status line itself crawls in.
                    self._trickle(b"HTTP/1.0 200 OK\r\nContent-Length: 10\r\n\r\n0123456789")
                elif name.startswith("trickle"):  # Prompt headers, then a body at 5 bytes/s.
                    self.send_response(200)
                    self.send_header("Content-Length", str(len(GOOD_JPEG)))
                    self.end_headers()
                    self.wfile.flush()
                    self._trickle(GOOD_JPEG)
                else:
                    self._send(500, b"unknown route")

        self.httpd, self.base = local_http.local_server(Handler)

    def url(self, name: str) -> str:
        return f"{self.base}/img/{name}"


@pytest.fixture
def no_proxy(monkeypatch):
    local_http.clear_proxies(monkeypatch)


@pytest.fixture
def server(no_proxy):
    s = _Server()
    with local_http.serving(s.httpd):
        yield s


@pytest.fixture
def silent_port(no_proxy):
    """A TCP port on 127.0.0.1 that accepts connections and never sends a byte (not even a TLS hello)."""
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(0.05)
    done = threading.Event()
    accepted = []

    def serve():
        while not done.is_set():  # Ends when the test does.
            try:
                accepted.append(listener.accept()[0])
            except TimeoutError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()[1]
    done.set()
    thread.join(timeout=5)
    for sock in [*accepted, listener]:
        sock.close()


@pytest.fixture
def hung_connect_port(no_proxy):
    """A port on 127.0.0.1 whose connect() hangs: its accept queue is full, so the kernel drops SYNs."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    held = []
    try:
        for _ in range(4):  # Fill the queue until a connect times out (bounded).
            probe = socket.socket()
            probe.settimeout(0.2)
            try:
                probe.connect(("127.0.0.1", port))
            except TimeoutError:
                probe.close()
                break
            held.append(probe)
        else:
            pytest.skip("this kernel does not let a connect hang on a full accept queue")
        yield port
    finally:
        for sock in [*held, listener]:
            sock.close()


def _no_temporary_files(directory: pathlib.Path) -> bool:
    return not [p for p in directory.rglob("*") if p.suffix in (".tmp", ".part")]


def test_filename_for_url_is_deterministic_and_keeps_the_extension():
    a = transport.filename_for_url("https://farm2.staticflickr.com/2034/1557324960_1ae893fed8_o.jpg")
    assert a == transport.filename_for_url("https://farm2.staticflickr.com/2034/1557324960_1ae893fed8_o.jpg")
    assert a.endswith(".jpg") and a[:2] == a[3:5] and len(a) == 2 + 1 + 24 + 4
    assert transport.filename_for_url("http://x/a.PNG").endswith(".png")
    assert transport.filename_for_url("http://x/a.php?id=3").endswith(".jpg")
    names = {transport.filename_for_url(f"http://x/{i}.jpg") for i in range(5000)}
    assert len(names) == 5000


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
        # The image checks are data.pixels.images' (the project's one image check), with its reasons.
        ("truncated_file.jpg", "failed", "corrupt or truncated", 1),
        ("text.jpg", "failed", "not an image", 1),
        ("empty.jpg", "failed", "empty file", 1),
        ("slow.jpg", "failed", "timeout (after 3 attempts)", 3),
        ("loop.jpg", "failed", "redirect loop", 1),  # A redirect to itself.
        ("loop_a.jpg", "failed", "redirect loop", 2),  # a -> b -> a -> (b again: stop).
        ("redirect_good.jpg", "downloaded", "", 1),
        ("redirect_ftp.jpg", "failed", "redirect to an unsupported URL scheme", 1),
    ],
)
def test_fetch_outcomes(server, tmp_path, name, status, reason, hits):
    url = server.url(name)
    result = transport.fetch(url, tmp_path, FAST)
    assert result.status == status, result
    assert result.reason.startswith(reason), result
    assert "<" not in result.reason and " at 0x" not in result.reason  # Never an object's repr.
    assert server.hits[f"/img/{name}"] == hits
    dest = tmp_path / transport.filename_for_url(url)
    assert dest.exists() == (status == "downloaded")
    if status == "downloaded":
        assert result.num_bytes == dest.stat().st_size
        images.verify_decodes(images.open_image(dest.read_bytes()))
    assert _no_temporary_files(tmp_path)  # Whatever happened.


@pytest.mark.parametrize(
    "size, max_pixels, reason",
    [
        # Our limit, checked from the header (Pillow's own bomb limit is 2 x 89 MP).
        ((5000, 5000), 20_000_000, "too many pixels: 5000x5000 = 25.0 MP > 20.0 MP"),
        ((30000, 30000), images.DEFAULT_MAX_PIXELS, "too many pixels"),
    ],
)
def test_image_over_max_pixels_is_refused_without_decoding(
    server, tmp_path, monkeypatch, size, max_pixels, reason
):
    def must_not_decode(*args, **kwargs):
        raise AssertionError("an image over --max_pixels was decoded")

    monkeypatch.setattr(images, "verify_decodes", must_not_decode)
    monkeypatch.setattr(Image.Image, "load", must_not_decode)
    config = dataclasses.replace(FAST, max_pixels=max_pixels, timeout_s=10.0, retries=0)
    name = f"bomb_{size[0]}x{size[1]}.png"
    result = transport.fetch(server.url(name), tmp_path, config)
    assert (result.status, result.reason[: len(reason)]) == ("failed", reason), result
    assert server.hits[f"/img/{name}"] == 1 and not list(tmp_path.rglob("*.png"))


def test_max_pixels_applies_to_ordinary_images(server, tmp_path):
    """GOOD_PNG is 48 x 40 = 1920 pixels: refused under a 1000-pixel limit, fine under 1920."""
    url = server.url("good5.png")
    refused = transport.fetch(url, tmp_path, dataclasses.replace(FAST, max_pixels=1000))
    assert refused.status == "failed" and refused.reason.startswith("too many pixels: 48x40"), refused
    assert transport.fetch(url, tmp_path, dataclasses.replace(FAST, max_pixels=1920)).status == "downloaded"
    # A re-run under a lower limit does not list the file it has: it is checked (and refused) again.
    again = transport.fetch(url, tmp_path, dataclasses.replace(FAST, max_pixels=1000))
    assert again.status == "failed" and again.reason.startswith("too many pixels")


@pytest.mark.parametrize("name", ["trickle.jpg", "trickle_headers.jpg"])
def test_deadline_bounds_a_trickling_server(server, tmp_path, name):
    """One byte every 0.2 s never trips the 5 s read timeout; only the 1 s deadline can end the fetch."""
    config = dataclasses.replace(FAST, timeout_s=5.0, deadline_s=1.0, retries=3)
    start = time.monotonic()
    result = transport.fetch(server.url(name), tmp_path, config)
    elapsed = time.monotonic() - start
    assert result.status == "failed" and result.reason.startswith("deadline of 1s exceeded"), result
    assert 0.9 < elapsed < 1.5, elapsed
    assert server.hits[f"/img/{name}"] == 1  # No retry fits in what is left of the deadline.
    assert _no_temporary_files(tmp_path)


@pytest.mark.parametrize("scheme", ["http", "https"])
def test_deadline_bounds_a_silent_server(silent_port, tmp_path, scheme):
    """A server that accepts and never answers: the headers (http) or the TLS handshake (https) hang."""
    config = dataclasses.replace(FAST, timeout_s=5.0, deadline_s=1.0)
    start = time.monotonic()
    result = transport.fetch(f"{scheme}://127.0.0.1:{silent_port}/x.jpg", tmp_path, config)
    elapsed = time.monotonic() - start
    assert result.status == "failed" and result.reason.startswith("deadline of 1s exceeded"), result
    assert 0.9 < elapsed < 1.5, elapsed


def test_deadline_and_stop_bound_a_connect_that_hangs(hung_connect_port, tmp_path):
    url = f"http://127.0.0.1:{hung_connect_port}/x.jpg"
    config = dataclasses.replace(FAST, timeout_s=10.0, deadline_s=1.0)
    start = time.monotonic()
    result = transport.fetch(url, tmp_path, config)
    assert result.reason.startswith("deadline of 1s exceeded") and time.monotonic() - start < 1.5, result
    # Ctrl-C's path: the stop aborts the connect itself, long before its 10 s timeout or 30 s deadline.
    stop = threading.Event()
    threading.Timer(0.5, stop.set).start()
    start = time.monotonic()
    config = dataclasses.replace(config, deadline_s=30.0)
    out = list(to_files.fetch_all([url], tmp_path, config, stop=stop))
    assert [(r.status, r.reason) for _, r in out] == [("interrupted", "interrupted")]
    assert time.monotonic() - start < 1.0


def test_fetch_refuses_other_schemes(tmp_path):
    secret = tmp_path / "secret.jpg"
    secret.write_bytes(GOOD_JPEG)
    result = transport.fetch(secret.as_uri(), tmp_path / "out", FAST)
    assert result.status == "failed" and result.reason == "unsupported URL scheme"


def test_fetch_resumes_and_replaces_invalid_existing_file(server, tmp_path):
    url = server.url("good3.jpg")
    assert transport.fetch(url, tmp_path, FAST).status == "downloaded"
    assert transport.fetch(url, tmp_path, FAST).status == "existing"
    assert server.hits["/img/good3.jpg"] == 1
    (tmp_path / transport.filename_for_url(url)).write_bytes(b"")  # e.g. left by another tool
    assert transport.fetch(url, tmp_path, FAST).status == "downloaded"
    assert server.hits["/img/good3.jpg"] == 2


def test_resume_recognises_a_file_whose_header_is_past_the_first_read(server, tmp_path):
    url = server.url("big_header.jpg")
    assert transport.fetch(url, tmp_path, FAST).status == "downloaded"
    assert transport.fetch(url, tmp_path, FAST).status == "existing"
    assert server.hits["/img/big_header.jpg"] == 1


def test_fetch_all_keeps_input_order(server, tmp_path):
    names = ["slow.jpg", *(f"good{i}.jpg" for i in range(10)), "missing.jpg", "flaky.jpg"]
    config = DownloadConfig(
        allow_private_addresses=True, threads=4, timeout_s=0.3, retries=0, backoff_s=0.01, window=3
    )
    urls = [server.url(n) for n in names]
    out = list(to_files.fetch_all(urls, tmp_path, config))
    assert [u for u, _ in out] == urls
    assert [r.status for _, r in out] == ["failed"] + ["downloaded"] * 10 + ["failed", "failed"]


def _write_url_list(path: pathlib.Path, server: _Server, names: list[str]) -> list[str]:
    lines = [f"{server.url(n)}\t{i}:1\t{i + 100}:0.9" for i, n in enumerate(names)]
    path.write_text("\n".join([*lines[:2], "not a valid line :: x:y", *lines[2:]]) + "\n")
    return [server.url(n) for n in names]


def test_download_url_list_writes_lists_and_resumes(server, tmp_path):
    names = ["good1.jpg", "missing.jpg", "good2.png", "text.jpg", "good3.jpg"]
    urls = _write_url_list(tmp_path / "urls.txt", server, names)
    kwargs = dict(
        output_dir=tmp_path / "images",
        image_list=tmp_path / "list.txt",
        failed_list=tmp_path / "failed.txt",
        config=FAST,
        show_progress=False,
    )
    summary = to_files.download_url_list(tmp_path / "urls.txt", **kwargs)
    assert (summary.total, summary.downloaded, summary.existing, summary.failed) == (5, 3, 0, 2)
    assert (summary.malformed_lines, summary.interrupted, summary.stopped) == (1, 0, False)
    listed = (tmp_path / "list.txt").read_text().splitlines()
    assert listed == [f"{transport.filename_for_url(urls[i])}\t{i}:1\t{i + 100}:0.9" for i in (0, 2, 4)]
    for line in listed:
        images.open_image((tmp_path / "images" / line.split("\t")[0]).read_bytes())
    failed = [line.split("\t") for line in (tmp_path / "failed.txt").read_text().splitlines()]
    assert [u for u, _ in failed] == [urls[1], urls[3]]
    assert failed[0][1] == "http 404" and failed[1][1].startswith("not an image")

    before = sum(server.hits.values())
    again = to_files.download_url_list(tmp_path / "urls.txt", **kwargs)
    assert (again.downloaded, again.existing, again.failed) == (0, 3, 2)
    assert sum(server.hits.values()) - before == 2  # Only the failures were asked again.
    assert (tmp_path / "list.txt").read_text().splitlines() == listed


# The first lines of the release's own train_im_list.txt: an image list, but not one the downloader wrote.
RELEASE_IM_LIST = (
    "17382017900_f7152f6e1c_o.jpg\t940:0.8\t860:0.8\t17:1\t1:1\n74229536_063452179d_o.jpg\t3:1.0\n"
)


@pytest.mark.parametrize("output", ["image_list", "failed_list"])
def test_a_list_it_did_not_write_is_not_replaced(server, tmp_path, output):
    """The release's train_im_list.txt given as --image_list, or the URL list as --failed_list: refused
    before anything is fetched or written; the downloader's own lists (and empty files) are replaced."""
    _write_url_list(tmp_path / "urls.txt", server, ["good1.jpg", "missing.jpg"])
    (tmp_path / "train_im_list.txt").write_text(RELEASE_IM_LIST)
    foreign = {"image_list": tmp_path / "train_im_list.txt", "failed_list": tmp_path / "urls.txt"}[output]
    before = foreign.read_bytes()
    kwargs = dict(
        output_dir=tmp_path / "images",
        image_list=tmp_path / "list.txt",
        failed_list=tmp_path / "failed.txt",
        config=FAST,
        show_progress=False,
    )
    what = output.replace("_", " ")
    with pytest.raises(FileExistsError, match=f"is not one of data/download.py's {what}s"):
        to_files.download_url_list(tmp_path / "urls.txt", **{**kwargs, output: foreign})
    assert foreign.read_bytes() == before
    assert not server.hits and not (tmp_path / "images").exists()
    # An empty file, then the downloader's own lists from that run, are replaced (a re-run resumes).
    (tmp_path / "list.txt").write_text("")
    for _ in range(2):
        summary = to_files.download_url_list(tmp_path / "urls.txt", **kwargs)
        assert (summary.downloaded + summary.existing, summary.failed) == (1, 1)
        assert len((tmp_path / "list.txt").read_text().splitlines()) == 1


def test_stop_aborts_downloads_in_flight_and_lists_them(server, tmp_path):
    """Setting `stop` (what Ctrl-C does) ends the run at once; finished work is kept and listed in order."""
    names = ["good1.jpg", "trickle_a.jpg", "good2.jpg", "trickle_b.jpg", "good3.jpg"]
    urls = _write_url_list(tmp_path / "urls.txt", server, names)
    stop = threading.Event()
    config = DownloadConfig(allow_private_addresses=True, threads=8, timeout_s=30, deadline_s=60, retries=0)
    threading.Timer(1.0, stop.set).start()
    start = time.monotonic()
    summary = to_files.download_url_list(
        tmp_path / "urls.txt",
        output_dir=tmp_path / "images",
        image_list=tmp_path / "list.txt",
        failed_list=tmp_path / "failed.txt",
        config=config,
        show_progress=False,
        stop=stop,
    )
    elapsed = time.monotonic() - start
    assert elapsed < 1.0 + 0.5, elapsed  # Not the trickle's 10 s, nor the 60 s deadline.
    assert summary.stopped and (summary.downloaded, summary.interrupted, summary.failed) == (3, 2, 0)
    listed = [line.split("\t")[0] for line in (tmp_path / "list.txt").read_text().splitlines()]
    assert listed == [transport.filename_for_url(urls[i]) for i in (0, 2, 4)]
    failed = [line.split("\t") for line in (tmp_path / "failed.txt").read_text().splitlines()]
    assert failed == [[urls[1], "interrupted"], [urls[3], "interrupted"]]
    assert sorted(p.name for p in (tmp_path / "images").rglob("*.jpg")) == sorted(
        pathlib.Path(transport.filename_for_url(urls[i])).name for i in (0, 2, 4)
    )
    assert _no_temporary_files(tmp_path)


def _cli(repo_root: pathlib.Path, tmp_path: pathlib.Path, *flags: str) -> list[str]:
    return [
        sys.executable,
        str(repo_root / "data" / "download.py"),
        "--url_list",
        str(tmp_path / "urls.txt"),
        "--output_dir",
        str(tmp_path / "out"),
        "--noprogress",
        "--allow_private_addresses",
        *flags,
    ]


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if "proxy" not in k.lower()}


def test_cli(server, tmp_path, repo_root):
    _write_url_list(tmp_path / "urls.txt", server, ["good1.jpg", "missing.jpg"])
    cmd = _cli(
        repo_root, tmp_path, "--threads", "2", "--timeout", "2", "--retries", "0", "--max_pixels", "5000"
    )
    subprocess.run(cmd, check=True, env=_env(), timeout=60, capture_output=True)
    assert len((tmp_path / "out" / "image_list.txt").read_text().splitlines()) == 1
    assert (
        (tmp_path / "out" / "failed_urls.txt")
        .read_text()
        .startswith(f"{server.url('missing.jpg')}\thttp 404")
    )
    helptext = subprocess.run([*cmd[:2], "--help"], capture_output=True, text=True, timeout=60).stdout
    for flag in ("--url_list", "--output_dir", "--threads", "--timeout", "--deadline", "--retries"):
        assert flag in helptext
    for flag in ("--failed_list", "--max_pixels"):
        assert flag in helptext


def test_cli_refuses_to_replace_the_release_list_in_one_line(server, tmp_path, repo_root):
    _write_url_list(tmp_path / "urls.txt", server, ["good1.jpg"])
    (tmp_path / "train_im_list.txt").write_text(RELEASE_IM_LIST)
    cmd = _cli(repo_root, tmp_path, "--image_list", str(tmp_path / "train_im_list.txt"))
    proc = subprocess.run(cmd, env=_env(), timeout=60, capture_output=True, text=True)
    assert proc.returncode == 1 and proc.stderr.strip() == (
        f"download.py: error: {tmp_path / 'train_im_list.txt'} exists and is not one of data/download.py's "
        "image lists; not replacing it: give another file name, or move that file away"
    )
    assert (tmp_path / "train_im_list.txt").read_text() == RELEASE_IM_LIST and not server.hits


def test_cli_ctrl_c_stops_within_two_seconds(server, tmp_path, repo_root):
    """SIGINT while two URLs trickle: exit 130 within 2 s, finished files kept and listed, the rest listed."""
    names = ["good1.jpg", "good2.jpg", "good3.jpg", "trickle_c.jpg", "trickle_d.jpg"]
    urls = _write_url_list(tmp_path / "urls.txt", server, names)
    cmd = _cli(repo_root, tmp_path, "--threads", "8", "--timeout", "30", "--deadline", "60", "--retries", "0")
    proc = subprocess.Popen(cmd, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        goods = [tmp_path / "out" / transport.filename_for_url(u) for u in urls[:3]]
        for _ in range(200):  # Up to 10 s for the interpreter to start and the good files to land.
            if all(p.exists() for p in goods) and server.hits["/img/trickle_d.jpg"]:
                break
            time.sleep(0.05)
        else:
            pytest.fail("the downloader did not start")
        time.sleep(0.2)
        proc.send_signal(signal.SIGINT)
        start = time.monotonic()
        _, stderr = proc.communicate(timeout=10)
        elapsed = time.monotonic() - start
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert elapsed < 2.0, elapsed
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "Interrupted" in stderr, stderr
    listed = [line.split("\t")[0] for line in (tmp_path / "out" / "image_list.txt").read_text().splitlines()]
    assert listed == [transport.filename_for_url(u) for u in urls[:3]]
    assert all(p.exists() for p in goods)
    failed = (tmp_path / "out" / "failed_urls.txt").read_text().splitlines()
    assert failed == [f"{urls[3]}\tinterrupted", f"{urls[4]}\tinterrupted"]
    assert _no_temporary_files(tmp_path / "out")


def test_reference_url_list_through_local_server(server, tmp_path, reference_dir):
    """The release's 100-line URL list, its hosts replaced by the local server: 100 images, same labels."""
    from urllib.parse import urlsplit

    from data.labels import annotations

    original = list(
        annotations.iter_entries(reference_dir / "train_urls_tiny.txt", num_classes=11166, on_error="fail")
    )
    assert len(original) == 100
    local = [dataclasses.replace(e, path=f"{server.base}/flickr{urlsplit(e.path).path}") for e in original]
    annotations.write_entries(tmp_path / "urls.txt", local)
    summary = to_files.download_url_list(
        tmp_path / "urls.txt",
        output_dir=tmp_path / "images",
        image_list=tmp_path / "list.txt",
        failed_list=tmp_path / "failed.txt",
        config=DownloadConfig(allow_private_addresses=True, threads=8, timeout_s=5, retries=0),
        num_classes=11166,
        show_progress=False,
    )
    assert summary.downloaded == 100 and summary.failed == 0
    listed = list(annotations.iter_entries(tmp_path / "list.txt", num_classes=11166, on_error="fail"))
    assert [e.labels for e in listed] == [e.labels for e in original]
    assert [e.path for e in listed] == [transport.filename_for_url(e.path) for e in local]


# ---------------------------------------------------------------------------------------------------------
# A crawler's manners: a URL list is untrusted input, so no connection to this machine's or a private network.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "address, kind",
    [
        ("127.0.0.1", "loopback"),
        ("::1", "loopback"),
        ("::ffff:127.0.0.1", "loopback"),
        ("169.254.169.254", "link-local"),
        ("fe80::1%eth0", "link-local"),
        ("10.1.2.3", "private"),
        ("172.16.0.1", "private"),
        ("192.168.1.1", "private"),
        ("fd00::1", "private"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("93.184.216.34", None),
        ("2606:4700::1111", None),
    ],
)
def test_address_problem(address, kind):
    problem = transport.address_problem(address)
    assert (problem is None) if kind is None else problem.startswith(f"{kind} address")


def test_a_url_to_this_machine_is_refused_by_default(server, tmp_path):
    config = dataclasses.replace(FAST, allow_private_addresses=False)
    result = transport.fetch(server.url("good_1.jpg"), tmp_path, config)
    assert result.status == "failed"
    assert result.reason == "refused: loopback address 127.0.0.1 (see --allow_private_addresses)"
    assert result.attempts == 1 and not server.hits  # no retry, and no connection was made
    assert transport.fetch(server.url("good_1.jpg"), tmp_path, FAST).status == "downloaded"


@pytest.mark.parametrize(
    "name, refused",
    [
        ("redirect_metadata.jpg", "link-local address 169.254.169.254"),
        ("redirect_other_loopback.jpg", "loopback address 127.0.0.2"),
    ],
)
def test_a_redirect_to_a_private_address_is_refused(server, tmp_path, monkeypatch, name, refused):
    """The check is on the address each connection uses, so it holds for redirects too: here the test
    server's own 127.0.0.1 plays a public host (everything else is judged as by default)."""
    judge = transport.address_problem
    monkeypatch.setattr(transport, "address_problem", lambda ip: None if ip == "127.0.0.1" else judge(ip))
    config = dataclasses.replace(FAST, allow_private_addresses=False)
    result = transport.fetch(server.url(name), tmp_path, config)
    assert (result.status, result.reason) == ("failed", f"refused: {refused} (see --allow_private_addresses)")
    assert server.hits[f"/img/{name}"] == 1


def test_the_cli_refuses_this_machine_without_the_flag(server, tmp_path, repo_root):
    (tmp_path / "urls.txt").write_text(f"{server.url('good_1.jpg')}\t1:1\n")
    cmd = [c for c in _cli(repo_root, tmp_path) if c != "--allow_private_addresses"]
    subprocess.run(cmd, check=True, capture_output=True, text=True, timeout=120)
    failed = (tmp_path / "out" / "failed_urls.txt").read_text()
    assert "refused: loopback address 127.0.0.1" in failed and not server.hits


# ---------------------------------------------------------------------------------------------------------
# URLs as people write them: non-ASCII, with spaces, with credentials.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url, requested",
    [
        ("https://farm1.staticflickr.com/1/2_abc_o.jpg", "https://farm1.staticflickr.com/1/2_abc_o.jpg"),
        (
            "http://Bücher.example/café au lait.jpg?q=ä x&y='1'#part",
            "http://xn--bcher-kva.example/caf%C3%A9%20au%20lait.jpg?q=%C3%A4%20x&y=%271%27",
        ),
        ("http://faß.example/", "http://xn--fa-hia.example/"),  # IDNA 2008 (as browsers), not 2003's fass
        ("http://例え.テスト:8080/写真.png", "http://xn--r8jz45g.xn--zckzah:8080/%E5%86%99%E7%9C%9F.png"),
        (
            "http://my_host.bücher.example/",
            "http://my_host.xn--bcher-kva.example/",
        ),  # ASCII labels as they are
        ("http://h.example/100%25/%7Ea%zz b.jpg", "http://h.example/100%25/%7Ea%zz%20b.jpg"),  # %XX kept
        ("http://[::1]:8080/a{b}", "http://[::1]:8080/a%7Bb%7D"),
    ],
)
def test_request_url_is_what_a_browser_sends(url, requested):
    assert urls.request_url(url) == requested


def test_a_non_ascii_url_is_fetched_percent_encoded(server, tmp_path):
    url = server.url(NON_ASCII_NAME)
    result = transport.fetch(url, tmp_path, FAST)
    assert (result.status, result.reason) == ("downloaded", "")
    assert (tmp_path / transport.filename_for_url(url)).read_bytes() == NON_ASCII_JPEG
    assert dict(server.hits) == {f"/img/{NON_ASCII_REQUESTED}": 1}


@pytest.mark.parametrize(
    "url, reason",
    [
        ("http://☃.example/x.jpg", "bad URL: cannot encode the host '☃.example' (IDNA: Codepoint U+2603 "),
        ("http://exa mple.bücher.example/x.jpg", "bad URL: cannot encode the host 'exa mple.bücher.example'"),
        ("http://[abc/x.jpg", "bad URL: Invalid IPv6 URL"),
    ],
)
def test_a_url_that_cannot_be_encoded_is_a_failure_with_its_reason(tmp_path, monkeypatch, url, reason):
    looked_up = []

    def getaddrinfo(host, *args, **kwargs):
        looked_up.append(host)
        raise socket.gaierror(socket.EAI_NONAME, "no such host in this test")

    monkeypatch.setattr(socket, "getaddrinfo", getaddrinfo)
    result = transport.fetch(url, tmp_path, FAST)
    assert result.status == "failed" and result.reason.startswith(reason), result.reason
    assert result.attempts == 0 and not looked_up  # refused before any look-up or connection


def test_a_url_with_credentials_is_not_fetched(server, tmp_path):
    url = server.url("good_1.jpg").replace("http://", "http://user:secret@")
    result = transport.fetch(url, tmp_path, FAST)
    assert (result.status, result.reason) == ("failed", urls.CREDENTIALS)
    assert not server.hits


def test_urls_with_credentials_are_one_warning_with_their_count_and_first_line(server, tmp_path, caplog):
    lines = [
        server.url("good_1.jpg"),
        server.url("good_2.jpg").replace("http://", "http://user:secret@"),
        f"{server.base}/img/good_3.jpg?a@b",  # an '@' after the host is no credential
        server.url("good_4.jpg").replace("http://", "http://token@"),
    ]
    (tmp_path / "urls.txt").write_text("".join(f"{line}\t{i}:1\n" for i, line in enumerate(lines)))
    assert urls.find_credentials(tmp_path / "urls.txt") == (2, 2)
    with caplog.at_level(logging.WARNING, logger="absl"):
        scripts.run_in_process(
            download,
            [
                f"--url_list={tmp_path / 'urls.txt'}",
                f"--output_dir={tmp_path / 'out'}",
                "--noprogress",
                "--allow_private_addresses",
                "--retries=0",
            ],
        )
    warnings = [r.getMessage() for r in caplog.records if "credentials" in r.getMessage()]
    assert warnings == [
        f"{tmp_path / 'urls.txt'}: 2 URLs with credentials (user:password@host), the first on line 2: not "
        "fetched (each is in the failed list, reason 'URL carries credentials')"
    ]
    assert "secret" not in caplog.text
    failed = (tmp_path / "out" / "failed_urls.txt").read_text().splitlines()
    assert [line.split("\t")[1] for line in failed] == [urls.CREDENTIALS] * 2
    assert sorted(server.hits) == ["/img/good_1.jpg", "/img/good_3.jpg?a@b"]


def test_a_fifo_in_place_of_an_image_file_is_replaced_without_blocking(server, tmp_path):
    """The resume check opens what is at the file's name: a FIFO there must not block the download."""
    url = server.url("good_1.jpg")
    dest = tmp_path / transport.filename_for_url(url)
    dest.parent.mkdir(parents=True)
    os.mkfifo(dest)

    class Blocked(Exception):  # not an OSError, which the resume check would take for "no such file"
        pass

    def hung(signum, frame):
        raise Blocked("the downloader blocked on a FIFO")

    previous = signal.signal(signal.SIGALRM, hung)
    signal.alarm(10)
    try:
        result = transport.fetch(url, tmp_path, FAST)
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    assert result.status == "downloaded" and dest.is_file()
    images.open_image(dest.read_bytes())


def test_a_full_disk_ends_the_download_in_one_line_with_every_stored_image_listed(
    server, tmp_path, monkeypatch
):
    """ENOSPC writing the 3rd image: `download.py: error: ...` (no traceback); every image stored before is
    in the image list (written as the downloads end); the re-run lists each image once, in URL-list order."""
    from data import download
    from tests import scripts

    names = ["good1.jpg", "good2.png", "good3.jpg", "good4.jpg", "good5.jpg", "missing.jpg"]
    urls = _write_url_list(tmp_path / "urls.txt", server, names)
    full = transport.filename_for_url(urls[2])
    real_write = transport.fileio.write_bytes

    def full_disk(path, data, **kwargs):
        if os.fspath(path).endswith(full):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), os.fspath(path))
        return real_write(path, data, **kwargs)

    out = tmp_path / "out"
    args = [
        f"--url_list={tmp_path / 'urls.txt'}",
        f"--output_dir={out}",
        "--threads=1",
        "--retries=0",
        "--noprogress",
        "--allow_private_addresses",
    ]
    monkeypatch.setattr(transport.fileio, "write_bytes", full_disk)
    with pytest.raises(SystemExit) as info:
        scripts.run_in_process(download, args)
    monkeypatch.undo()
    message = str(info.value.code)
    assert message.startswith("download.py: error: ") and "\n" not in message
    assert (
        f"{os.strerror(errno.ENOSPC)}; the stored images are kept and listed in {out / 'image_list.txt'}"
        in message
    )
    stored = sorted(str(p.relative_to(out)) for p in out.rglob("*.*") if p.suffix in (".jpg", ".png"))
    listed = [line.split("\t")[0] for line in (out / "image_list.txt").read_text().splitlines()]
    assert stored == sorted(listed) and full not in stored
    assert {transport.filename_for_url(u) for u in urls[:2]} <= set(stored)  # stored before the full disk
    assert _no_temporary_files(out)

    scripts.run_in_process(download, args)
    listed = [line.split("\t") for line in (out / "image_list.txt").read_text().splitlines()]
    assert [line[0] for line in listed] == [transport.filename_for_url(u) for u in urls[:5]]
    assert (out / "failed_urls.txt").read_text().splitlines() == [f"{urls[5]}\thttp 404"]


def test_a_rerun_after_a_kill_appends_no_line_twice(server, tmp_path):
    """What a killed run listed (in the order its downloads ended) is not listed again by a re-run that
    is stopped in turn: the lists hold each URL once, the ones the re-run did not reach included."""
    names = ["good1.jpg", "good2.png", "good3.jpg", "missing.jpg"]
    urls = _write_url_list(tmp_path / "urls.txt", server, names)
    images = tmp_path / "images"
    kwargs = dict(
        output_dir=images,
        image_list=tmp_path / "list.txt",
        failed_list=tmp_path / "failed.txt",
        config=FAST,
        show_progress=False,
    )
    to_files.download_url_list(tmp_path / "urls.txt", **kwargs)
    # What a kill -9 leaves: the lists as appended (here in another order), the last line cut short.
    lines = (tmp_path / "list.txt").read_text().splitlines()
    (tmp_path / "list.txt").write_text("\n".join(reversed(lines)) + "\n" + lines[0][:10])
    stop = threading.Event()
    stop.set()  # the re-run is stopped before it handles any URL
    summary = to_files.download_url_list(tmp_path / "urls.txt", **kwargs, stop=stop)
    assert summary.stopped
    assert (tmp_path / "list.txt").read_text().splitlines() == list(reversed(lines))
    assert (tmp_path / "failed.txt").read_text().splitlines() == [f"{urls[3]}\thttp 404"]
    again = to_files.download_url_list(tmp_path / "urls.txt", **kwargs)
    assert (again.existing, again.failed) == (3, 1)
    assert (tmp_path / "list.txt").read_text().splitlines() == lines
