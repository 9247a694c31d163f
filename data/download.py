r"""Multithreaded, resumable image downloader for the ML-Images URL lists.

The release's `download_urls_multithreading.sh` fetched each URL once with no timeout, retry or
validation, so a long run silently produced empty and truncated files. This version:

- fetches with a socket timeout, a total per-attempt deadline and a size cap;
- retries transient failures (timeouts, connection errors, incomplete bodies, HTTP 5xx, 408 and 429)
  with exponential back-off, but never a permanent one (other 4xx, a body that is not an image);
- validates the bytes (Pillow `verify()`, then a reduced-scale full decode that catches truncated JPEGs);
- writes each file atomically (temporary name + rename), so a file under its final name is always whole;
- is resumable: a re-run skips files whose final name already exists and whose header Pillow can parse;
- names files deterministically and without collisions: `ab/<24 hex of sha1(url)><ext>` (two-level fan-out
  so that 17.6M files never land in one directory);
- writes the image list (`filename idx:conf ...`, the reference "image list" format, in URL-list order) and
  a failed list (`URL<TAB>reason`), and shows progress with rate and ETA (tqdm).

Usage:
  python data/download.py --url_list train_urls.txt --output_dir images/ \
      --image_list train_im_list.txt --failed_list failed.txt --threads 32
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import gzip
import hashlib
import http.client
import io
import os
import pathlib
import random
import socket
import tempfile
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterable, Iterator
from typing import Final

import tqdm
from absl import logging

from data import annotations

IMAGE_EXTENSIONS: Final = frozenset({".jpg", ".jpeg", ".png", ".gif", ".bmp", ".webp", ".tif", ".tiff"})
DEFAULT_EXTENSION: Final = ".jpg"
# HTTP codes worth another attempt: request timeout, rate limiting and server-side errors.
_RETRYABLE_HTTP: Final = frozenset({408, 425, 429, 500, 502, 503, 504})
_CHUNK: Final = 1 << 16


@dataclasses.dataclass(frozen=True)
class DownloadConfig:
    """How to fetch.

    Attributes:
      threads: Concurrent downloads (the work is network-bound; Pillow releases the GIL while decoding).
      timeout_s: Socket timeout for the connection and for each read.
      deadline_s: Total time allowed for one attempt, so a server that trickles bytes cannot stall a thread.
      retries: Extra attempts after the first for a transient failure.
      backoff_s: Wait before the first retry; doubled for each further retry (plus up to 10% jitter).
      backoff_max_s: Cap on one wait (also on a server's Retry-After).
      max_bytes: Larger bodies are refused (the Flickr `_o` originals are a few MB).
      full_decode: Also decode the image (at 1/8 scale for JPEG) to catch truncated data that `verify()`
        misses; costs a few ms per image.
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
    full_decode: bool = True
    user_agent: str = "mlimages-downloader/0.1 (+https://github.com/Tencent/tencent-ml-images)"
    window: int = 0


@dataclasses.dataclass(frozen=True)
class FetchResult:
    """The outcome for one URL.

    Attributes:
      status: "downloaded", "existing" (skipped: already on disk and valid) or "failed".
      filename: Path relative to the output directory (deterministic, also for failures).
      reason: Why it failed ("" otherwise).
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
    """Counts for a whole run, logged at the end and returned to callers."""

    total: int
    downloaded: int
    existing: int
    failed: int
    malformed_lines: int
    num_bytes: int
    seconds: float
    failure_reasons: dict[str, int]


class _PermanentError(Exception):
    """A failure that another attempt cannot fix (4xx, not an image, too large, bad scheme)."""


class _TransientError(Exception):
    """A failure worth retrying; `retry_after` is the server's requested wait, if any."""

    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.retry_after = retry_after


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


def image_header_ok(path: str | os.PathLike[str]) -> bool:
    """Whether Pillow recognises the file's header (the cheap resumability check; no pixel decoding).

    Files only reach their final name after full validation, so a parsable header means a previous run
    completed the file; an empty or foreign file (e.g. from another tool) fails this and is fetched again.
    """
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as image:
            return bool(image.format) and image.size[0] > 0 and image.size[1] > 0
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError):
        return False


def image_problem(data: bytes, *, full_decode: bool = True) -> str | None:
    """Why `data` is not a usable image, or None if it is.

    `verify()` checks the container structure; for JPEG it does not read the entropy-coded data, so with
    `full_decode` the image is also decoded (at reduced scale via `draft`, which still consumes the whole
    stream) to catch truncated files.
    """
    from PIL import Image, UnidentifiedImageError

    if not data:
        return "empty body"
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
        if full_decode:
            with Image.open(io.BytesIO(data)) as image:
                image.draft("RGB", (64, 64))
                image.load()
    except UnidentifiedImageError:
        return "not an image"
    except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as e:
        return f"invalid image: {e}"
    return None


def _read_body(url: str, config: DownloadConfig, opener: urllib.request.OpenerDirector) -> bytes:
    """One attempt: GET the URL and return the complete body, or raise a classified error."""
    request = urllib.request.Request(url, headers={"User-Agent": config.user_agent})
    deadline = time.monotonic() + config.deadline_s
    try:
        with opener.open(request, timeout=config.timeout_s) as response:
            length = response.headers.get("Content-Length")
            expected = int(length) if length and length.isdigit() else None
            if expected is not None and expected > config.max_bytes:
                raise _PermanentError(f"too large: {expected} bytes")
            buffer = io.BytesIO()
            while chunk := response.read(_CHUNK):
                buffer.write(chunk)
                if buffer.tell() > config.max_bytes:
                    raise _PermanentError(f"too large: over {config.max_bytes} bytes")
                if time.monotonic() > deadline:
                    raise _TransientError(f"deadline of {config.deadline_s:g}s exceeded")
            data = buffer.getvalue()
    except urllib.error.HTTPError as e:
        if e.code in _RETRYABLE_HTTP:
            retry_after = e.headers.get("Retry-After", "") if e.headers else ""
            raise _TransientError(
                f"http {e.code}", float(retry_after) if retry_after.isdigit() else None
            ) from e
        raise _PermanentError(f"http {e.code}") from e
    except urllib.error.URLError as e:
        if isinstance(e.reason, TimeoutError | socket.timeout):
            raise _TransientError("timeout") from e
        raise _TransientError(f"connection error: {e.reason}") from e
    except TimeoutError as e:
        raise _TransientError("timeout") from e
    except (http.client.HTTPException, ConnectionError, OSError) as e:
        raise _TransientError(f"connection error: {type(e).__name__}: {e}") from e
    # http.client does not raise when the peer closes before Content-Length bytes arrived in chunked reads.
    if expected is not None and len(data) != expected:
        raise _TransientError(f"incomplete body: {len(data)} of {expected} bytes")
    return data


def _write_atomically(data: bytes, dest: pathlib.Path) -> None:
    """Writes to a temporary file in the destination directory, then renames it into place."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=dest.parent, prefix=f".{dest.name}.", suffix=".part")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, dest)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def fetch(url: str, output_dir: str | os.PathLike[str], config: DownloadConfig) -> FetchResult:
    """Downloads one URL into `output_dir/filename_for_url(url)`, unless it is already there and valid.

    Never raises for a network or content problem: the failure is returned with its reason.
    """
    filename = filename_for_url(url)
    dest = pathlib.Path(output_dir, filename)
    if dest.exists() and image_header_ok(dest):
        return FetchResult("existing", filename)
    if urllib.parse.urlsplit(url).scheme not in ("http", "https"):
        return FetchResult("failed", filename, reason="unsupported URL scheme")
    opener = urllib.request.build_opener()
    rng = random.Random(url)  # Jitter that is reproducible per URL.
    reason = ""
    retry_after = None
    for attempt in range(config.retries + 1):
        if attempt:
            wait = config.backoff_s * 2 ** (attempt - 1) * (1 + 0.1 * rng.random())
            if retry_after is not None:  # The server said when to come back (429/503 Retry-After).
                wait = max(wait, retry_after)
            time.sleep(min(wait, config.backoff_max_s))
        try:
            data = _read_body(url, config, opener)
        except _PermanentError as e:
            return FetchResult("failed", filename, reason=str(e), attempts=attempt + 1)
        except _TransientError as e:
            reason, retry_after = str(e), e.retry_after
            continue
        problem = image_problem(data, full_decode=config.full_decode)
        if problem:
            return FetchResult("failed", filename, reason=problem, attempts=attempt + 1)
        _write_atomically(data, dest)
        return FetchResult("downloaded", filename, attempts=attempt + 1, num_bytes=len(data))
    return FetchResult(
        "failed",
        filename,
        reason=f"{reason} (after {config.retries + 1} attempts)",
        attempts=config.retries + 1,
    )


def fetch_all(
    urls: Iterable[str], output_dir: str | os.PathLike[str], config: DownloadConfig
) -> Iterator[tuple[str, FetchResult]]:
    """Downloads URLs concurrently and yields `(url, result)` in input order.

    At most `config.window` downloads are in flight ahead of the oldest one not yet yielded, so memory is
    bounded for any list length and the output order does not depend on timing.
    """
    window = config.window or 8 * config.threads
    pending: collections.deque[tuple[str, concurrent.futures.Future[FetchResult]]] = collections.deque()
    with concurrent.futures.ThreadPoolExecutor(config.threads, thread_name_prefix="download") as pool:
        try:
            for url in urls:
                pending.append((url, pool.submit(fetch, url, output_dir, config)))
                if len(pending) >= window:
                    head_url, head = pending.popleft()
                    yield head_url, head.result()
            while pending:
                head_url, head = pending.popleft()
                yield head_url, head.result()
        finally:  # On an early exit (generator closed, KeyboardInterrupt) do not start the queued work.
            for _, future in pending:
                future.cancel()


def _count_lines(path: pathlib.Path) -> int:
    with gzip.open(path, "rb") if path.suffix == ".gz" else open(path, "rb") as f:
        return sum(chunk.count(b"\n") for chunk in iter(lambda: f.read(1 << 24), b""))


def _reason_category(reason: str) -> str:
    """The reason without its details ("http 404", "timeout", "invalid image"), for the summary counts."""
    return reason.split(" (after")[0].split(":")[0]


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
) -> DownloadSummary:
    """Downloads every URL of a URL list (`URL idx:conf ...`) and writes the image and failed lists.

    The image list holds `filename<TAB>idx:conf...` for each success (downloaded now or before), in URL-list
    order, with `filename` relative to `output_dir`; the failed list holds `URL<TAB>reason`. Both are written
    to temporary names and renamed at the end, so an interrupted run leaves no half list (re-run it: the
    files already fetched are skipped). Malformed URL-list lines are skipped and counted (see
    `data.annotations`).

    Args:
      url_list: The URL list file.
      output_dir: Where the images go (created if needed).
      image_list: Output image list path.
      failed_list: Output failed list path.
      config: Fetch settings.
      num_classes: If given, lines with a class index outside [0, num_classes) count as malformed.
      bad_lines_report: If given, every malformed line is written there (`file line reason text`).
      show_progress: Show a tqdm bar with rate and ETA.

    Returns:
      The run's counts.
    """
    url_list = pathlib.Path(url_list)
    pathlib.Path(output_dir).mkdir(parents=True, exist_ok=True)
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
        _AtomicTextFile(image_list) as images_out,
        _AtomicTextFile(failed_list) as failed_out,
        tqdm.tqdm(total=_count_lines(url_list), unit="img", disable=not show_progress, smoothing=0.05) as bar,
    ):
        for url, result in fetch_all(urls(), output_dir, config):
            labels = labels_by_url.popleft()
            counts[result.status] += 1
            num_bytes += result.num_bytes
            if result.status == "failed":
                reasons[_reason_category(result.reason)] += 1
                failed_out.write(f"{url}\t{result.reason}\n")
            else:
                images_out.write(annotations.format_entry(result.filename, labels) + "\n")
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
    )
    logging.info("Download summary: %s", summary)
    return summary


class _AtomicTextFile:
    """A text file written under a temporary name and renamed into place only on success."""

    def __init__(self, path: str | os.PathLike[str]):
        self._path = pathlib.Path(path)
        self._tmp = self._path.with_name(f".{self._path.name}.part")

    def __enter__(self):
        self._path.parent.mkdir(parents=True, exist_ok=True)
        self._file = open(self._tmp, "w", encoding="utf-8")
        return self._file

    def __exit__(self, exc_type, exc, tb) -> None:
        self._file.close()
        if exc_type is None:
            os.replace(self._tmp, self._path)
        else:
            self._tmp.unlink(missing_ok=True)


def main(argv: list[str]) -> None:
    from absl import flags

    del argv
    f = flags.FLAGS
    summary = download_url_list(
        f.url_list,
        output_dir=f.output_dir,
        image_list=f.image_list or os.path.join(f.output_dir, "image_list.txt"),
        failed_list=f.failed_list or os.path.join(f.output_dir, "failed_urls.txt"),
        config=DownloadConfig(
            threads=f.threads,
            timeout_s=f.timeout,
            deadline_s=f.deadline,
            retries=f.retries,
            backoff_s=f.backoff,
            full_decode=f.full_decode,
        ),
        num_classes=f.num_classes,
        bad_lines_report=f.bad_lines_report,
        show_progress=f.progress,
    )
    logging.info(
        "%d URLs: %d downloaded, %d already present, %d failed, %d malformed lines skipped; %.1f MB in %.0f s",
        summary.total,
        summary.downloaded,
        summary.existing,
        summary.failed,
        summary.malformed_lines,
        summary.num_bytes / 1e6,
        summary.seconds,
    )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "url_list", None, "URL list: one `URL idx:conf ...` per line (TABs or spaces).", required=True
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Directory for the images (files go to <output_dir>/ab/<hash>.<ext>).",
        required=True,
    )
    flags.DEFINE_string(
        "image_list",
        None,
        "Output image list `filename idx:conf ...` (default: <output_dir>/image_list.txt).",
    )
    flags.DEFINE_string(
        "failed_list",
        None,
        "Output list of failed URLs with reasons (default: <output_dir>/failed_urls.txt).",
    )
    flags.DEFINE_integer("threads", 16, "Concurrent downloads.", lower_bound=1)
    flags.DEFINE_float(
        "timeout", 20.0, "Socket timeout in seconds (connect and each read).", lower_bound=0.01
    )
    flags.DEFINE_float(
        "deadline", 120.0, "Total seconds allowed for one attempt at one URL.", lower_bound=0.01
    )
    flags.DEFINE_integer(
        "retries", 3, "Extra attempts after a transient failure (timeouts, 5xx, 429).", lower_bound=0
    )
    flags.DEFINE_float(
        "backoff", 1.0, "Seconds before the first retry; doubles on each further retry.", lower_bound=0.0
    )
    flags.DEFINE_boolean("full_decode", True, "Decode every image (reduced scale) to reject truncated files.")
    flags.DEFINE_integer(
        "num_classes", None, "If set, lines with a class index >= num_classes are skipped as malformed."
    )
    flags.DEFINE_string(
        "bad_lines_report", None, "If set, malformed URL-list lines are written there with the reason."
    )
    flags.DEFINE_boolean("progress", True, "Show a progress bar with rate and ETA.")


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
