"""Fetching one URL: the HTTP transport of the downloader and the one pass.

One `--deadline` bounds a URL's whole fetch (connection, TLS, headers, body, redirects, retries): a watchdog
thread shuts the socket when the time is up, since a per-read timeout alone restarts with every byte of a
trickling server. Transient failures (timeouts, connection errors, incomplete bodies, HTTP 5xx, 408, 429)
are retried with exponential back-off within the deadline, permanent ones (other 4xx, a redirect loop, a
body that is not an image) never. The bytes are checked with `data.pixels.images`, the project's one image
check. `Fetcher` is shared by the URL-list run into files (`data.fetch.to_files`) and the one pass into
records (`data.fetch.to_records`); files are named by `filename_for_url` (`ab/<24 hex of sha1(url)><ext>`).
What is requested is the URL as a browser sends it (`data.fetch.urls.request_url`: a non-ASCII host by IDNA,
path and query percent-encoded); a URL with credentials is not fetched (`urls.CREDENTIALS`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import heapq
import http.client
import ipaddress
import itertools
import os
import pathlib
import random
import re
import socket
import ssl
import stat
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from typing import Final, TypeVar

from data import fileio
from data.fetch import urls
from data.pixels import images

IMAGE_EXTENSIONS: Final = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_EXTENSION: Final = ".jpg"
INTERRUPTED: Final = "interrupted"
# HTTP codes worth another attempt: request timeout, rate limiting and server-side errors.
_RETRYABLE_HTTP: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK: Final = 1 << 16
# The resumability check reads this much of an existing file first: enough for the header of almost any
# photo (the whole file when its EXIF/ICC segments are larger).
_HEADER_BYTES: Final = 1 << 16
T = TypeVar("T")


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
      allow_private_addresses: Connect to loopback, private, link-local, multicast and reserved addresses
        too. Off by default: a URL list is untrusted input, and a URL (or a redirect) to 127.0.0.1, to the
        machine's network or to a cloud metadata service (169.254.169.254) must not be fetched. Turn it on
        for an intranet mirror or a test server.
    """

    threads: int = 16
    timeout_s: float = 20.0
    deadline_s: float = 120.0
    retries: int = 3
    backoff_s: float = 1.0
    backoff_max_s: float = 30.0
    max_bytes: int = images.DEFAULT_MAX_FILE_BYTES
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    full_decode: bool = True
    user_agent: str = "mlimages-downloader/0.1 (+https://github.com/Tencent/tencent-ml-images)"
    window: int = 0
    allow_private_addresses: bool = False


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


def address_problem(ip: str) -> str | None:
    """Why a connection to the address `ip` is refused by default, or None for a public address.

    Checked on the address a connection is about to use (after DNS, for the URL and every redirect), so a
    host name that resolves to a private address is refused like the address itself.
    """
    address = ipaddress.ip_address(ip.split("%", 1)[0])  # an IPv6 scope id (`fe80::1%eth0`) is dropped
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    for kind, matches in (
        ("loopback", address.is_loopback),
        ("link-local", address.is_link_local),
        ("multicast", address.is_multicast),
        ("unspecified", address.is_unspecified),
        ("private", address.is_private),
        ("reserved", address.is_reserved),
    ):
        if matches:
            return f"{kind} address {address}"
    return None


def filename_for_url(url: str) -> str:
    """The deterministic relative file name of a URL: `ab/abcdef...<ext>` (96 bits of SHA-1).

    With 17.6M URLs the chance of any collision is about 2e-15. The original extension is kept when it is
    a known image extension (lower-cased, `.jpeg` kept as is) so that the file type stays recognisable;
    anything else gets `.jpg`. The same URL always maps to the same file, which makes re-runs resumable.
    """
    digest = hashlib.sha1(url.encode("utf-8")).hexdigest()[:24]
    try:
        path = urllib.parse.urlsplit(url).path
    except ValueError:  # e.g. "Invalid IPv6 URL": the fetch skips it with the reason; it still has a name
        path = ""
    ext = pathlib.PurePosixPath(path).suffix.lower()
    if ext not in IMAGE_EXTENSIONS:
        ext = DEFAULT_EXTENSION
    return f"{digest[:2]}/{digest}{ext}"


def _is_complete_image(path: pathlib.Path, *, max_pixels: int) -> bool:
    """Whether a previous run completed `path` (the cheap resumability check: its header, no pixels).

    Files only reach their final name after full validation, so a valid header means a previous run
    completed the file; an empty or foreign file (e.g. from another tool), or one over a lowered
    `max_pixels`, fails this and is fetched (and checked) again. Only the first `_HEADER_BYTES` are read,
    unless the header does not fit in them (large EXIF/ICC segments): a re-run over millions of files
    should not read every byte of them. Anything but a regular file (a FIFO, which would block the read,
    a device, a folder) is not a complete image: it is replaced by the fetched file.
    """
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | getattr(os, "O_CLOEXEC", 0))
    except OSError:
        return False
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        return False
    try:
        with os.fdopen(fd, "rb") as f:
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
        # Host names whose addresses may be private (the configured proxies); None: every address may be.
        self.private_hosts: frozenset[str] | None = None

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
            if self.private_hosts is not None and host not in self.private_hosts:
                problem = address_problem(sockaddr[0])
                if problem:
                    raise _PermanentError(f"refused: {problem} (see --allow_private_addresses)")
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
        elif urls.has_credentials(newurl):
            problem = "redirect to a URL with credentials"
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
        # The proxies the environment configures are the user's choice: they may be on a private network.
        self._private_hosts = None
        if not config.allow_private_addresses:
            proxies = urllib.request.getproxies().values()
            self._private_hosts = frozenset(urllib.parse.urlsplit(p).hostname or "" for p in proxies) - {""}

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
        try:
            if urls.has_credentials(url):
                return FetchResult("failed", filename, reason=urls.CREDENTIALS), None
            if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
                return FetchResult("failed", filename, reason="unsupported URL scheme"), None
            request = urls.request_url(url)
        except ValueError as e:  # cannot be encoded (the host for IDNA, a bad port, an invalid IPv6 address)
            return FetchResult("failed", filename, reason=f"bad URL: {e}"), None
        rng = random.Random(url)  # Jitter that is reproducible per URL.
        with self._watchdog.deadline(config.deadline_s) as deadline:
            deadline.private_hosts = self._private_hosts
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
                    data = _read_body(request, config, deadline, opener)
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
