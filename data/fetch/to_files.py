"""A URL list into image files and the lists of what was stored and what failed (`data/download.py`).

Downloads run concurrently (`fetch_all`, results in list order with bounded memory); each file is written
atomically and a re-run skips files already there, so the run resumes; the image list
(`filename idx:conf ...`) and the failed list (`URL<TAB>reason`) replace an existing file only when it is one
of this downloader's own lists. Ctrl-C stops within a fraction of a second: finished files are kept and
listed, the interrupted URLs go to the failed list as "interrupted".
"""

from __future__ import annotations

import collections
import concurrent.futures
import contextlib
import dataclasses
import gzip
import itertools
import os
import pathlib
import re
import signal
import threading
import time
from collections.abc import Iterable, Iterator
from typing import Final

import tqdm
from absl import logging

from data import fileio
from data.fetch.transport import (
    INTERRUPTED,
    DownloadConfig,
    Fetcher,
    FetchResult,
    filename_for_url,
    reason_category,
)
from data.labels import annotations

# How often the thread that orders the results looks at the stop flag while it waits for a download.
_POLL_S: Final = 0.05
# The lines of this downloader's own lists, by which an existing file is recognised as safe to replace:
# the image list names files `filename_for_url` made (`ab/ab<22 hex>.<ext>`), the failed list holds
# `URL<TAB>reason` (a reason, not the `idx:conf` labels of a URL list).
_OWN_IMAGE_LINE: Final = re.compile(r"([0-9a-f]{2})/\1[0-9a-f]{22}\.[a-z]+(\t.*)?")
_OWN_FAILED_LINE: Final = re.compile(r"\S+\t(?!\d+:)[^\t]+")
_RECOGNISED_LINES: Final = 1000  # lines of an existing list looked at: a foreign file fails on its first


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
    config: DownloadConfig | None = None,
    num_classes: int | None = None,
    bad_lines_report: str | os.PathLike[str] | None = None,
    show_progress: bool = True,
    stop: threading.Event | None = None,
) -> DownloadSummary:
    """Downloads every URL of a URL list (`URL idx:conf ...`) and writes the image and failed lists.

    The image list holds `filename<TAB>idx:conf...` for each success (downloaded now or before), in URL-list
    order, with `filename` relative to `output_dir`; the failed list holds `URL<TAB>reason`. Both are written
    atomically at the end. Malformed URL-list lines are skipped and counted (see `data.labels.annotations`).

    Ctrl-C (when called from the main thread) or setting `stop` ends the run early but cleanly: finished
    files are kept and listed, the URLs in flight are listed as failed with reason "interrupted", and the
    summary has `stopped=True`. Re-running the same command resumes (files already there are skipped). A
    second Ctrl-C raises KeyboardInterrupt at once; then the lists are not written (the files are kept).

    Args:
      url_list: The URL list file.
      output_dir: Where the images go (created if needed).
      image_list: Output image list path.
      failed_list: Output failed list path.
      config: Fetch settings (default: `DownloadConfig()`).
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
    config = config or DownloadConfig()
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
