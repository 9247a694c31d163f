r"""Multithreaded, resumable image downloader for the ML-Images URL lists.

The release's `download_urls_multithreading.sh` fetched each URL once with no timeout, retry or
validation, so a long run silently produced empty and truncated files. This version:

- bounds each URL's whole fetch by a deadline (`--deadline`): connection, TLS handshake, headers, body,
  redirects and retries together, even against a server that trickles one byte at a time (a watchdog
  thread shuts the socket down when the time is up; a per-read socket timeout alone would restart with
  every byte);
- retries transient failures (timeouts, connection errors, incomplete bodies, HTTP 5xx, 408 and 429)
  with exponential back-off within that deadline, but never a permanent one (other 4xx, a redirect loop,
  a body that is not an image);
- validates the bytes with `data.images`, the project's one image check: the header first (format, size,
  and `--max_pixels`, so a decompression bomb is refused before a pixel is decoded), then a full decode
  (reduced scale for JPEG) that catches truncated files;
- writes each file atomically (`data.fileio`), so a file under its final name is always whole;
- is resumable: a re-run skips files whose final name already exists and whose header is a valid image;
- names files deterministically and without collisions: `ab/<24 hex of sha1(url)><ext>` (two-level fan-out
  so that 17.6M files never land in one directory);
- writes the image list (`filename idx:conf ...`, the reference "image list" format, in URL-list order) and
  a failed list (`URL<TAB>reason`), and shows progress with rate and ETA (tqdm); it replaces an existing
  file of those names only when the file is one of its own lists (a previous run's, recognised by its
  lines), never e.g. the release's `train_im_list.txt` given as `--image_list` by mistake;
- stops cleanly on Ctrl-C: the downloads in flight are aborted within a fraction of a second, finished
  files are kept and listed, the interrupted URLs go to the failed list as "interrupted", and the command
  exits with status 130 after logging its summary (run it again to resume).

Usage:
  python data/download.py --url_list train_urls.txt --output_dir images/ \
      --image_list train_im_list.txt --failed_list failed.txt --threads 32

With ``--output_records=DIR`` instead of ``--output_dir`` it is the one pass (`data.download_records`): the
images go straight into TFRecord shards, with the writer's flags, schema, manifest and crash safety, and no
image files:
  python data/download.py --url_list train_urls.txt --output_records records/ \
      --label_format sparse --num_classes 11166 --shards 1024 --workers 4 --threads 32
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import gzip
import hashlib
import heapq
import http.client
import itertools
import os
import pathlib
import random
import re
import signal
import socket
import ssl
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from typing import Final, TypeVar

import tqdm
from absl import logging

from data import annotations, fileio, images

IMAGE_EXTENSIONS: Final = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_EXTENSION: Final = ".jpg"
INTERRUPTED: Final = "interrupted"
# HTTP codes worth another attempt: request timeout, rate limiting and server-side errors.
_RETRYABLE_HTTP: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK: Final = 1 << 16
# The resumability check reads this much of an existing file first: enough for the header of almost any
# photo (the whole file when its EXIF/ICC segments are larger).
_HEADER_BYTES: Final = 1 << 16
# How often the thread that orders the results looks at the stop flag while it waits for a download.
_POLL_S: Final = 0.05
T = TypeVar("T")
# The records' class count when --output_records is given without --num_classes (ML-Images).
_DEFAULT_NUM_CLASSES: Final = 11166
# The lines of this downloader's own lists, by which an existing file is recognised as safe to replace:
# the image list names files `filename_for_url` made (`ab/ab<22 hex>.<ext>`), the failed list holds
# `URL<TAB>reason` (a reason, not the `idx:conf` labels of a URL list).
_OWN_IMAGE_LINE: Final = re.compile(r"([0-9a-f]{2})/\1[0-9a-f]{22}\.[a-z]+(\t.*)?")
_OWN_FAILED_LINE: Final = re.compile(r"\S+\t(?!\d+:)[^\t]+")
_RECOGNISED_LINES: Final = 1000  # lines of an existing list looked at: a foreign file fails on its first


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    """How to fetch.

    Attributes:
      threads: Concurrent downloads (the work is network-bound; Pillow releases the GIL while decoding).
      timeout_s: Socket timeout for the connection and for each read (capped by what is left of the
        deadline): how long a silent server is given.
      deadline_s: Total time for one URL, all attempts, redirects and back-off waits included, so that a
        server that trickles bytes cannot hold a thread for longer.
      retries: Extra attempts after the first for a transient failure (as long as the deadline allows).
      backoff_s: Wait before the first retry; doubled for each further retry (plus up to 10% jitter).
      backoff_max_s: Cap on one wait (also on a server's Retry-After).
      max_bytes: Larger bodies are refused (the Flickr `_o` originals are a few MB).
      max_pixels: Images whose header claims more pixels (width x height) are refused without being
        decoded (decompression bombs); 0 means no limit.
      full_decode: Also decode the image (at 1/8 scale for JPEG) to catch truncated data that the header
        cannot show; costs a few ms per image.
      user_agent: Sent with every request.
      window: Downloads in flight ahead of the oldest unwritten one (0: 8 x threads); bounds memory while
        keeping the output in URL-list order.
    """

    threads: int = 16
    timeout_s: float = 20.0
    deadline_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_bytes: int = 64 << 20
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    full_decode: bool = True
    user_agent: str = "mlimages-downloader/0.1 (+https://github.com/Tencent/tencent-ml-images)"
    window: int = 0


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """The outcome for one URL.

    Attributes:
      status: "downloaded", "existing" (skipped: already on disk and valid), "failed", or "interrupted"
        (stopped by Ctrl-C before it finished; a re-run fetches it).
      filename: Path relative to the output directory (deterministic, also for failures).
      reason: Why it failed or was interrupted ("" otherwise): a few words, never a Python object's repr.
      attempts: Network attempts made (0 for "existing").
      num_bytes: Bytes written (0 unless downloaded).
    """

    status: str
    filename: str
    reason: str = ""
    attempts: int = 0
    num_bytes: int = 0


@dataclasses.dataclass(frozen=True)
class DownloadSummary:
    """Counts for a whole run, logged at the end and returned to callers.

    `stopped` says the run was interrupted: `interrupted` URLs were in flight or queued (they are in the
    failed list as "interrupted"), and the URLs after them in the list were not read at all.
    """

    total: int
    downloaded: int
    existing: int
    failed: int
    malformed_lines: int
    num_bytes: int
    seconds: float
    failure_reasons: dict[str, int]
    interrupted: int = 0
    stopped: bool = False


class _PermanentError(Exception):
    """A failure that another attempt cannot fix (4xx, redirect loop, too large, bad scheme)."""


class _TransientError(Exception):
    """A failure worth retrying; `retry_after` is the server's requested wait, if any."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


class _DeadlineExceeded(Exception):
    """The URL's deadline passed (no attempt is left)."""


class _Interrupted(Exception):
    """The run is stopping (Ctrl-C)."""


def filename_for_url(url: str) -> str:
    """The deterministic relative file name of a URL: `ab/abcdef...<ext>` (96 bits of SHA-1).

    With 17.6M URLs the chance of any collision is about 2e-15. The original extension is kept when it is
    a known image extension (lower-cased, `.jpeg` kept as is) so that the file type stays recognisable;
    anything else gets `.jpg`. The same URL always maps to the same file, which makes re-runs resumable.
    """
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:24]
    ext = pathlib.PurePosixPath(urllib.parse.urlsplit(url).path).suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        ext = DEFAULT_EXTENSION
    return f"{digest[:2]}/{digest}{ext}"


def _is_complete_image(path: pathlib.Path, *, max_pixels: int) -> bool:
    """Whether a previous run completed `path` (the cheap resumability check: its header, no pixels).

    Files only reach their final name after full validation, so a valid header means a previous run
    completed the file; an empty or foreign file (e.g. from another tool), or one over a lowered
    `max_pixels`, fails this and is fetched (and checked) again. Only the first `_HEADER_BYTES` are read,
    unless the header does not fit in them (large EXIF/ICC segments): a re-run over millions of files
    should not read every byte of them.
    """
    try:
        with open(path, "rb") as f:
            data = f.read(_HEADER_BYTES)
            try:
                with images.open_image(data, max_pixels=max_pixels):
                    return True
            except images.BadImage:
                rest = f.read()
                if not rest:
                    return False
            with images.open_image(data + rest, max_pixels=max_pixels):
                return True
    except (OSError, images.BadImage):
        return False


def _shutdown(sock: socket.socket) -> None:
    """Makes every blocked and future operation on `sock` (connect, recv, TLS handshake) return at once."""
    with contextlib.suppress(OSError):
        sock.shutdown(socket.SHUT_RDWR)


class _Watchdog:
    """Shuts down the sockets of fetches that pass their deadline, or of every fetch on `stop()`.

    A socket timeout bounds each read, not their sum: a server that sends one byte every second keeps a
    blocking read alive indefinitely, and http.client reads the status line and headers in loops of its
    own. Shutting the socket down from another thread makes the blocked connect, TLS handshake or read
    return at once; the fetching thread then asks its `_Deadline` why and reports that, not the symptom.
    One thread serves all the fetches of a run; its heap holds their deadlines.

    Each watched socket is held as a duplicate file descriptor (closed when its fetch ends), so a shutdown
    can never reach an unrelated socket that reused the number of one closed meanwhile.
    """

    def __init__(self):
        self._cond = threading.Condition()
        self._heap: list[tuple[float, int, _Deadline]] = []
        self._live: set[_Deadline] = set()
        self._order = itertools.count()
        self._stopped = False
        self._closed = False
        self._thread = threading.Thread(target=self._run, name="download-watchdog", daemon=True)
        self._thread.start()

    @property
    def stopped(self) -> bool:
        return self._stopped

    def deadline(self, seconds: float) -> _Deadline:
        """Starts the clock of one fetch; use the result as a context manager around the fetch."""
        deadline = _Deadline(self, time.monotonic() + seconds, seconds)
        with self._cond:
            self._live.add(deadline)
            heapq.heappush(self._heap, (deadline.at, next(self._order), deadline))
            self._cond.notify()
        return deadline

    def watch(self, deadline: _Deadline, sock: socket.socket) -> None:
        """Puts `sock` under `deadline`; raises when the run is stopping or the deadline already passed."""
        with self._cond:
            deadline.raise_if_over()
            deadline.sockets.append(sock.dup())

    def release(self, deadline: _Deadline) -> None:
        with self._cond:
            self._live.discard(deadline)
            for sock in deadline.sockets:
                sock.close()
            deadline.sockets.clear()

    def stop(self) -> None:
        """Aborts every fetch in flight; later `watch` calls raise `_Interrupted`."""
        with self._cond:
            self._stopped = True
            for deadline in self._live:
                for sock in deadline.sockets:
                    _shutdown(sock)

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()
        self._thread.join()

    def _run(self) -> None:
        with self._cond:
            while not self._closed:
                now = time.monotonic()
                while self._heap and self._heap[0][0] <= now:
                    _, _, deadline = heapq.heappop(self._heap)
                    if deadline in self._live:
                        for sock in deadline.sockets:
                            _shutdown(sock)
                self._cond.wait(self._heap[0][0] - now if self._heap else None)


class _Deadline:
    """One URL's time budget, shared by its attempts, redirects and connections."""

    def __init__(self, watchdog: _Watchdog, at: float, seconds: float):
        self.watchdog = watchdog
        self.at = at
        self.seconds = seconds
        self.sockets: list[socket.socket] = []

    def __enter__(self) -> _Deadline:
        return self

    def __exit__(self, *exc_info) -> None:
        self.watchdog.release(self)

    def remaining(self) -> float:
        return self.at - time.monotonic()

    def raise_if_over(self) -> None:
        """Raises `_Interrupted` when the run is stopping, `_DeadlineExceeded` when the time is up."""
        if self.watchdog.stopped:
            raise _Interrupted
        if self.remaining() <= 0:
            raise _DeadlineExceeded

    def open_socket(
        self, address: tuple[str, int], timeout: float | None = None, source_address=None
    ) -> socket.socket:
        """`socket.create_connection`, with each socket watched from before its connect() on."""
        host, port = address
        last_error: OSError | None = None
        for family, kind, proto, _, sockaddr in socket.getaddrinfo(host, port, 0, socket.SOCK_STREAM):
            sock = socket.socket(family, kind, proto)
            try:
                self.watchdog.watch(self, sock)
                per_read = timeout if isinstance(timeout, int | float) else self.seconds
                sock.settimeout(max(min(per_read, self.remaining()), 0.001))
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as e:
                sock.close()
                last_error = e
            except BaseException:
                sock.close()
                raise
        raise last_error or OSError(f"no address found for {host}")


class _WatchedConnection:
    """Mixin: http.client opens its socket through the fetch's `_Deadline` (connect, TLS and reads)."""

    def __init__(self, *args, deadline: _Deadline, **kwargs):
        super().__init__(*args, **kwargs)
        # http.client's (private, but stable since Python 3.0) hook for opening the TCP connection;
        # HTTPSConnection wraps the socket it returns, so one hook covers HTTP, HTTPS and proxy tunnels.
        self._create_connection = deadline.open_socket


class _WatchedHTTPConnection(_WatchedConnection, http.client.HTTPConnection):
    pass


class _WatchedHTTPSConnection(_WatchedConnection, http.client.HTTPSConnection):
    pass


class _WatchedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def http_open(self, req):
        return self.do_open(_WatchedHTTPConnection, req, deadline=self._deadline)


class _WatchedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, deadline: _Deadline):
        super().__init__()
        self._deadline = deadline

    def https_open(self, req):
        return self.do_open(_WatchedHTTPSConnection, req, deadline=self._deadline)


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    """Follows redirects between http(s) URLs only, and calls a loop a "redirect loop".

    urllib's own handler lets a URL repeat 4 times (for servers that set a cookie and redirect to the same
    URL; we keep no cookies, so a repeat is a loop) and reports loops as an HTTP 30x error with a long
    message; it would also follow a redirect to ftp://, which the deadline does not cover.
    """

    max_redirections = 10

    def redirect_request(self, req, fp, code, msg, headers, newurl):
        visited = getattr(req, "redirect_dict", {})
        problem = None
        if urllib.parse.urlsplit(newurl).scheme not in ("http", "https"):
            problem = "redirect to an unsupported URL scheme"
        elif newurl == req.full_url or newurl in visited:
            problem = "redirect loop"
        elif len(visited) >= self.max_redirections:
            problem = f"too many redirects (over {self.max_redirections})"
        if problem:
            fp.close()
            raise _PermanentError(problem)
        return super().redirect_request(req, fp, code, msg, headers, newurl)


def _describe(error: BaseException) -> str:
    """`Type: first line of the message`, without object reprs (`<... at 0x7f...>`), for a reason."""
    text = str(error).splitlines()[0] if str(error) else ""
    text = re.sub(r"<[^<>]* at 0x[0-9a-fA-F]+>", "object", text)[:120]
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def _classify(error: Exception) -> Exception:
    """The `_PermanentError` or `_TransientError` that an exception from urllib/http.client stands for."""
    if isinstance(error, urllib.error.HTTPError):
        code = error.code
        retry_after = error.headers.get("Retry-After", "") if error.headers else ""
        error.close()
        if code in _RETRYABLE_HTTP:
            return _TransientError(f"http {code}", float(retry_after) if retry_after.isdigit() else None)
        if 300 <= code < 400:
            return _PermanentError(f"http {code} (redirect not followed)")
        return _PermanentError(f"http {code}")
    if isinstance(error, urllib.error.URLError):
        if isinstance(error.reason, BaseException):
            return _classify(error.reason)
        return _PermanentError(f"bad URL: {error.reason}")
    if isinstance(error, TimeoutError):
        return _TransientError("timeout")
    if isinstance(error, http.client.IncompleteRead):
        return _TransientError(f"incomplete body: {len(error.partial)} bytes received")
    if isinstance(error, http.client.InvalidURL | ValueError):  # e.g. no host, a bad port, IDNA errors
        return _PermanentError(f"bad URL: {_describe(error)}")
    if isinstance(error, socket.gaierror) and error.errno != socket.EAI_AGAIN:
        return _PermanentError(
            f"unknown host: {error.strerror or _describe(error)}"
        )  # Will not resolve later.
    if isinstance(error, ssl.SSLCertVerificationError):
        return _PermanentError(f"TLS certificate not accepted: {error.verify_message or _describe(error)}")
    if isinstance(error, OSError | http.client.HTTPException):
        return _TransientError(f"connection error: {_describe(error)}")
    return _PermanentError(f"unexpected error: {_describe(error)}")


def _read_body(
    url: str, config: DownloadConfig, deadline: _Deadline, opener: urllib.request.OpenerDirector
) -> bytes:
    """One attempt: GET the URL and return the complete body, or raise a classified error.

    Whatever urllib raised, the deadline and the stop flag are asked first: after the watchdog shut the
    socket down, the symptom (a reset, an incomplete or silently short body) is not the reason.
    """
    request = urllib.request.Request(url, headers={"User-Agent": config.user_agent})
    expected = None
    try:
        with opener.open(request, timeout=config.timeout_s) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > config.max_bytes:
                raise _PermanentError(f"too large: {expected} bytes")
            chunks: list[bytes] = []
            size = 0
            while chunk := response.read(_CHUNK):
                chunks.append(chunk)
                size += len(chunk)
                if size > config.max_bytes:
                    raise _PermanentError(f"too large: over {config.max_bytes} bytes")
            data = b"".join(chunks)
    except (_PermanentError, _TransientError, _Interrupted, _DeadlineExceeded):
        deadline.raise_if_over()
        raise
    except Exception as e:  # noqa: BLE001 -- urllib and http.client raise many types; each becomes a reason
        deadline.raise_if_over()
        raise _classify(e) from None
    deadline.raise_if_over()  # A body without Content-Length cut short by the watchdog ends "normally".
    # http.client does not raise when the peer closes before Content-Length bytes arrived in chunked reads.
    if expected is not None and len(data) != expected:
        raise _TransientError(f"incomplete body: {len(data)} of {expected} bytes")
    return data


class Fetcher:
    """Fetches URLs into a directory; owns the watchdog thread that enforces deadlines and stops.

    Thread-safe: `fetch` is called from many threads at once. Use it as a context manager (the watchdog
    thread ends on exit).

    Args:
      output_dir: Where the files go (`output_dir/filename_for_url(url)`).
      config: Fetch settings.
    """

    def __init__(self, output_dir: str | os.PathLike[str], config: DownloadConfig):
        self._output_dir = pathlib.Path(output_dir)
        self._config = config
        self._stop = threading.Event()
        self._watchdog = _Watchdog()

    def __enter__(self) -> Fetcher:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._watchdog.close()

    def stop(self) -> None:
        """Aborts the fetches in flight (they return "interrupted" at once) and every later one."""
        self._stop.set()
        self._watchdog.stop()

    def fetch(self, url: str) -> FetchResult:
        """Downloads one URL, unless its file is already there and valid.

        Never raises for a network or content problem: the failure is returned with its reason.
        """
        config = self._config
        filename = filename_for_url(url)
        dest = self._output_dir / filename
        if self._stop.is_set():
            return FetchResult(INTERRUPTED, filename, reason=INTERRUPTED)
        if _is_complete_image(dest, max_pixels=config.max_pixels):
            return FetchResult("existing", filename)
        result, data = self.fetch_with(url, self._validate)
        if data is not None:
            fileio.write_bytes(dest, data)
        return result

    def _validate(self, data: bytes) -> bytes:
        with images.open_image(data, max_pixels=self._config.max_pixels) as image:
            if self._config.full_decode:
                images.verify_decodes(image)
        return data

    def fetch_with(self, url: str, check: Callable[[bytes], T]) -> tuple[FetchResult, T | None]:
        """Downloads one URL into memory and returns ``check(body)``; nothing is written.

        The one-pass downloader passes `images.prepare_image` as `check`, so that the bytes go straight
        into a record. Never raises for a network or content problem (`images.BadImage` from `check` is a
        failure with its reason): the failure is returned with ``None``.
        """
        config = self._config
        filename = filename_for_url(url)
        if self._stop.is_set():
            return FetchResult(INTERRUPTED, filename, reason=INTERRUPTED), None
        if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
            return FetchResult("failed", filename, reason="unsupported URL scheme"), None
        rng = random.Random(url)  # Jitter that is reproducible per URL.
        with self._watchdog.deadline(config.deadline_s) as deadline:
            opener = urllib.request.build_opener(
                _WatchedHTTPHandler(deadline), _WatchedHTTPSHandler(deadline), _RedirectHandler()
            )
            reason = ""
            retry_after = None
            for attempt in range(1, config.retries + 2):
                if attempt > 1:
                    wait = config.backoff_s * 2 ** (attempt - 2) * (1 + 0.1 * rng.random())
                    if retry_after is not None:  # The server said when to come back (429/503 Retry-After).
                        wait = max(wait, retry_after)
                    wait = min(wait, config.backoff_max_s)
                    if wait >= deadline.remaining():
                        return self._failed(
                            filename,
                            f"{reason} (after {_attempts(attempt - 1)}, deadline reached)",
                            attempt - 1,
                        ), None
                    if self._stop.wait(wait):
                        return FetchResult(
                            INTERRUPTED, filename, reason=INTERRUPTED, attempts=attempt - 1
                        ), None
                try:
                    data = _read_body(url, config, deadline, opener)
                except _Interrupted:
                    return FetchResult(INTERRUPTED, filename, reason=INTERRUPTED, attempts=attempt), None
                except _DeadlineExceeded:
                    detail = f" (after {_attempts(attempt)}; last: {reason})" if reason else ""
                    return self._failed(
                        filename, f"deadline of {config.deadline_s:g}s exceeded{detail}", attempt
                    ), None
                except _PermanentError as e:
                    return self._failed(filename, str(e), attempt), None
                except _TransientError as e:
                    reason, retry_after = str(e), e.retry_after
                    continue
                try:
                    checked = check(data)
                except images.BadImage as e:
                    return self._failed(filename, e.reason, attempt), None
                return FetchResult("downloaded", filename, attempts=attempt, num_bytes=len(data)), checked
        return self._failed(
            filename, f"{reason} (after {_attempts(config.retries + 1)})", config.retries + 1
        ), None

    @staticmethod
    def _failed(filename: str, reason: str, attempts: int) -> FetchResult:
        return FetchResult("failed", filename, reason=reason, attempts=attempts)


def _attempts(n: int) -> str:
    return f"{n} attempt" if n == 1 else f"{n} attempts"


def fetch(url: str, output_dir: str | os.PathLike[str], config: DownloadConfig) -> FetchResult:
    """Downloads one URL into `output_dir/filename_for_url(url)` (see `Fetcher.fetch`)."""
    with Fetcher(output_dir, config) as fetcher:
        return fetcher.fetch(url)


def _wait_for(future: concurrent.futures.Future, stop: threading.Event) -> bool:
    """Waits until `future` is done; False if `stop` was set first."""
    while not stop.is_set():
        if future.done() or concurrent.futures.wait([future], timeout=_POLL_S).done:
            return True
    return False


def fetch_all(
    urls: Iterable[str],
    output_dir: str | os.PathLike[str],
    config: DownloadConfig,
    *,
    stop: threading.Event | None = None,
) -> Iterator[tuple[str, FetchResult]]:
    """Downloads URLs concurrently and yields `(url, result)` in input order.

    At most `config.window` downloads are in flight ahead of the oldest one not yet yielded, so memory is
    bounded for any list length and the output order does not depend on timing.

    When `stop` is set (Ctrl-C), no further URL is read, the downloads in flight are aborted, and every URL
    already read is still yielded in order: with its result if it finished, else as "interrupted".
    """
    window = config.window or 8 * config.threads
    stop = stop or threading.Event()
    pending: collections.deque[tuple[str, concurrent.futures.Future[FetchResult]]] = collections.deque()
    with (
        Fetcher(output_dir, config) as fetcher,
        concurrent.futures.ThreadPoolExecutor(config.threads, thread_name_prefix="download") as pool,
    ):
        try:
            for url in urls:
                if len(pending) >= window:
                    if not _wait_for(pending[0][1], stop):
                        break
                    head_url, head = pending.popleft()
                    yield head_url, head.result()
                if stop.is_set():
                    break
                pending.append((url, pool.submit(fetcher.fetch, url)))
            while pending and _wait_for(pending[0][1], stop):
                head_url, head = pending.popleft()
                yield head_url, head.result()
        finally:  # Stopped, or the consumer closed the generator or raised: abort the rest.
            if pending or stop.is_set():
                logging.warning("Stopping: aborting %d downloads in flight or queued.", len(pending))
                fetcher.stop()
                for _, future in pending:
                    future.cancel()
        for url, future in pending:
            if future.cancelled():
                yield url, FetchResult(INTERRUPTED, filename_for_url(url), reason=INTERRUPTED)
            else:
                yield url, future.result()


def is_own_list(path: str | os.PathLike[str], line: re.Pattern[str]) -> bool:
    """Whether an existing `path` is one of this downloader's lists (its first lines all match `line`).

    An empty file counts as one (nothing is lost by replacing it); a missing one too. Only the first
    `_RECOGNISED_LINES` lines are read: an image list of 17.6M lines is recognised at once, and a foreign
    file (the release's own `train_im_list.txt`, a URL list) differs from the first line on.
    """
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            lines = [text.rstrip("\r\n") for text in itertools.islice(f, _RECOGNISED_LINES)]
    except FileNotFoundError:
        return True
    return all(line.fullmatch(text) for text in lines if text.strip())


def refuse_foreign_lists(image_list: str | os.PathLike[str], failed_list: str | os.PathLike[str]) -> None:
    """Raises FileExistsError when an output list would replace a file this downloader did not write.

    A re-run (resuming) replaces its own previous lists; anything else, e.g. the release's own
    `train_im_list.txt` (`name.jpg<TAB>idx:conf ...`) or a URL list, is left alone.
    """
    for path, line, what in (
        (image_list, _OWN_IMAGE_LINE, "image list"),
        (failed_list, _OWN_FAILED_LINE, "failed list"),
    ):
        if not is_own_list(path, line):
            raise FileExistsError(
                f"{os.fspath(path)} exists and is not one of data/download.py's {what}s; not replacing it: "
                "give another file name, or move that file away"
            )


def _count_lines(path: pathlib.Path) -> int:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def reason_category(reason: str) -> str:
    """The reason without its details ("http 404", "timeout", "not an image"), for the summary counts."""
    return reason.split(" (")[0].split(":")[0]


@contextlib.contextmanager
def _sigint_sets(stop: threading.Event) -> Iterator[None]:
    """While active, the first Ctrl-C sets `stop` instead of raising KeyboardInterrupt anywhere.

    A KeyboardInterrupt can land between any two bytecodes (half-way through recording a result); a flag
    lets the run stop where it chooses. A second Ctrl-C gets the previous handler (normally an immediate
    KeyboardInterrupt). Signals can only be handled in the main thread, and an ignored SIGINT (e.g.
    `nohup`) stays ignored; in both cases nothing is installed.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    previous = signal.getsignal(signal.SIGINT)
    if previous in (signal.SIG_IGN, None):
        yield
        return

    def handler(signum, frame):
        del signum, frame
        stop.set()
        signal.signal(signal.SIGINT, previous)

    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def download_url_list(
    url_list: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str],
    image_list: str | os.PathLike[str],
    failed_list: str | os.PathLike[str],
    config: DownloadConfig = DownloadConfig(),
    num_classes: int | None = None,
    bad_lines_report: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    stop: threading.Event | None = None,
) -> DownloadSummary:
    """Downloads every URL of a URL list (`URL idx:conf ...`) and writes the image and failed lists.

    The image list holds `filename<TAB>idx:conf...` for each success (downloaded now or before), in URL-list
    order, with `filename` relative to `output_dir`; the failed list holds `URL<TAB>reason`. Both are written
    atomically at the end. Malformed URL-list lines are skipped and counted (see `data.annotations`).

    Ctrl-C (when called from the main thread) or setting `stop` ends the run early but cleanly: finished
    files are kept and listed, the URLs in flight are listed as failed with reason "interrupted", and the
    summary has `stopped=True`. Re-running the same command resumes (files already there are skipped). A
    second Ctrl-C raises KeyboardInterrupt at once; then the lists are not written (the files are kept).

    Args:
      url_list: The URL list file.
      output_dir: Where the images go (created if needed).
      image_list: Output image list path.
      failed_list: Output failed list path.
      config: Fetch settings.
      num_classes: If given, lines with a class index outside [0, num_classes) count as malformed.
      bad_lines_report: If given, every malformed line is written there (`file line reason text`).
      show_progress: Show a tqdm bar with rate and ETA.
      stop: Set it (from another thread) to stop the run as Ctrl-C does.

    Returns:
      The run's counts.

    Raises:
      FileExistsError: `image_list` or `failed_list` is a file that this downloader did not write (see
        `refuse_foreign_lists`); nothing was downloaded or written.
    """
    refuse_foreign_lists(image_list, failed_list)
    url_list = pathlib.Path(url_list)
    pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
    stop = stop or threading.Event()
    errors = annotations.ErrorLog(bad_lines_report)
    entries = annotations.iter_entries(
        url_list, kind="multi", num_classes=num_classes, on_error="skip", errors=errors
    )
    labels_by_url: collections.deque[annotations.Labels] = collections.deque()

    def urls() -> Iterator[str]:
        for entry in entries:
            labels_by_url.append(entry.labels)
            yield entry.path

    counts: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    num_bytes = 0
    start = time.monotonic()
    with (
        errors,
        fileio.atomic_write(image_list) as images_out,
        fileio.atomic_write(failed_list) as failed_out,
        tqdm.tqdm(total=_count_lines(url_list), unit="img", disable=not show_progress, smoothing=0.05) as bar,
        _sigint_sets(stop),
    ):
        for url, result in fetch_all(urls(), output_dir, config, stop=stop):
            labels = labels_by_url.popleft()
            if result.status in ("failed", INTERRUPTED):
                failed_out.write(f"{url}\t{result.reason}\n")
            else:
                images_out.write(annotations.format_entry(result.filename, labels) + "\n")
            counts[result.status] += 1
            num_bytes += result.num_bytes
            if result.status == "failed":
                reasons[reason_category(result.reason)] += 1
            bar.update(1)
            bar.set_postfix(failed=counts["failed"], MB=f"{num_bytes / 1e6:.0f}", refresh=False)
    summary = DownloadSummary(
        total=sum(counts.values()),
        downloaded=counts["downloaded"],
        existing=counts["existing"],
        failed=counts["failed"],
        malformed_lines=errors.count,
        num_bytes=num_bytes,
        seconds=time.monotonic() - start,
        failure_reasons=dict(reasons),
        interrupted=counts[INTERRUPTED],
        stopped=stop.is_set(),
    )
    logging.info("Download summary: %s", summary)
    return summary


def main(argv: list[str]) -> None:
    from absl import app, flags

    del argv
    f = flags.FLAGS
    config = DownloadConfig(
        threads=f.threads,
        timeout_s=f.timeout,
        deadline_s=f.deadline,
        retries=f.retries,
        backoff_s=f.backoff,
        max_pixels=f.max_pixels,
        full_decode=f.full_decode,
    )
    if f.output_records:
        if f.output_dir or f.image_list:
            raise app.UsageError("--output_records writes no image files: drop --output_dir and --image_list")
        _write_records(f, config)
        return
    if not f.output_dir:
        raise app.UsageError(
            "--output_dir (download image files) or --output_records (the one pass) is required"
        )
    try:
        summary = download_url_list(
            f.url_list,
            output_dir=f.output_dir,
            image_list=f.image_list or os.path.join(f.output_dir, "image_list.txt"),
            failed_list=f.failed_list or os.path.join(f.output_dir, "failed_urls.txt"),
            config=config,
            num_classes=f.num_classes,
            bad_lines_report=f.bad_lines_report,
            show_progress=f.progress,
        )
    except FileExistsError as e:  # an output list would replace a file it did not write: one line
        raise SystemExit(f"download.py: error: {e}") from None
    logging.info(
        "%d URLs: %d downloaded, %d already present, %d failed, %d interrupted, %d malformed lines skipped; "
        "%.1f MB in %.0f s",
        summary.total,
        summary.downloaded,
        summary.existing,
        summary.failed,
        summary.interrupted,
        summary.malformed_lines,
        summary.num_bytes / 1e6,
        summary.seconds,
    )
    if summary.stopped:
        logging.warning(
            "Interrupted: the lists hold the URLs handled so far (the interrupted ones are in the failed "
            "list); the rest of the URL list was not read. Run the same command again to resume."
        )
        raise SystemExit(130)  # What a shell reports for a command stopped by Ctrl-C.


def _write_records(f, config: DownloadConfig) -> None:
    """``--output_records``: the one pass (`data.download_records`), URLs straight into TFRecord shards."""
    from absl import app

    if f.workers > 1:  # The workers' imports (numpy, Pillow; no TensorFlow) run beside this process's.
        from data import worker_pool

        worker_pool.start_workers_early("data.download_records")
    from data import download_records  # No TensorFlow: records are framed by data/record_writer.py.

    try:
        _one_pass(download_records, f, config)
    except ValueError as e:  # Bad settings, shards of another run, or the first failure with --on_error=fail.
        raise app.UsageError(str(e)) from None
    except KeyboardInterrupt:
        logging.warning(
            "Interrupted: the finished shards are kept (the others left no file). Run the same command again "
            "to fetch only the unfinished shards."
        )
        raise SystemExit(130) from None  # What a shell reports for a command stopped by Ctrl-C.


def _one_pass(download_records, f, config: DownloadConfig) -> None:
    download_records.download_records(
        f.url_list,
        output_dir=f.output_records,
        label_format=f.label_format,
        num_classes=f.num_classes or _DEFAULT_NUM_CLASSES,
        shards=f.shards,
        config=config,
        workers=f.workers,
        prefix=f.prefix,
        on_error=f.on_error,
        task_index=f.task_index,
        num_tasks=f.num_tasks,
        jpeg_quality=f.jpeg_quality,
        verify=f.verify,
        failed_list=f.failed_list,
        tfds_metadata=f.tfds_metadata,
        progress=f.progress,
    )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "url_list", None, "URL list: one `URL idx:conf ...` per line (TABs or spaces).", required=True
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Directory for the images (files go to <output_dir>/ab/<hash>.<ext>); or use --output_records.",
    )
    flags.DEFINE_string(
        "output_records",
        None,
        "The one pass: write the images straight into TFRecord shards + manifest in this folder, with no "
        "image files (the writer's flags --label_format, --shards, --workers, --prefix, --jpeg_quality, "
        "--verify, --on_error, --task_index/--num_tasks apply; --threads is per worker). Resumable: a re-run "
        "fetches only the shards no finished run holds.",
    )
    flags.DEFINE_string(
        "image_list",
        None,
        "Output image list `filename idx:conf ...` (default: <output_dir>/image_list.txt).",
    )
    flags.DEFINE_string(
        "failed_list",
        None,
        "Output list of failed and interrupted URLs with reasons (default: <output_dir>/failed_urls.txt; with "
        "--output_records, every line without a record, <output_records>/{prefix}-failed.txt).",
    )
    flags.DEFINE_integer("threads", 16, "Concurrent downloads.", lower_bound=1)
    flags.DEFINE_float(
        "timeout",
        20.0,
        "Socket timeout in seconds: how long a silent server is given to connect or send the next bytes.",
        lower_bound=0.01,
    )
    flags.DEFINE_float(
        "deadline",
        120.0,
        "Total seconds for one URL: connection, headers, body, redirects and all retries together, "
        "however slowly the server sends.",
        lower_bound=0.01,
    )
    flags.DEFINE_integer(
        "retries",
        3,
        "Extra attempts after a transient failure (timeouts, 5xx, 429), within --deadline.",
        lower_bound=0,
    )
    flags.DEFINE_float(
        "backoff", 1.0, "Seconds before the first retry; doubles on each further retry.", lower_bound=0.0
    )
    flags.DEFINE_integer(
        "max_pixels",
        images.DEFAULT_MAX_PIXELS,
        "Refuse images whose header claims more pixels (width x height), without decoding them "
        "(decompression bombs); 0: no limit.",
        lower_bound=0,
    )
    flags.DEFINE_boolean(
        "full_decode",
        True,
        "Decode every image (reduced scale) to reject truncated files (downloads into files; the one pass "
        "checks as the writer does, see --verify).",
    )
    flags.DEFINE_integer(
        "num_classes",
        None,
        "If set, lines with a class index >= num_classes are skipped as malformed (with --output_records: "
        f"the records' class count, default {_DEFAULT_NUM_CLASSES}).",
    )
    flags.DEFINE_string(
        "bad_lines_report", None, "If set, malformed URL-list lines are written there with the reason."
    )
    flags.DEFINE_boolean("progress", True, "Show a progress bar with rate and ETA.")
    from data import split_flags

    for name in split_flags.define_split_flags():  # Listed by --help.
        flags.declare_key_flag(name)


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
