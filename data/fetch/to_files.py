"""A URL list into image files and the lists of what was stored and what failed (`data/download.py`).

Downloads run concurrently (`fetch_all`, results in list order with bounded memory); each file is written
atomically and a re-run skips files already there, so the run resumes; the image list
(`filename idx:conf ...`) and the failed list (`URL<TAB>reason`) replace an existing file only when it is one
of this downloader's own lists. One run at a time downloads into a folder (`fileio.DirectoryLock`).

Nothing stored is ever unlisted. Each result is appended to the lists (and flushed) as soon as its
download ends, so after a kill -9 or a full disk every image on disk is in the image list; a re-run appends
only what the lists do not hold yet. A run that ends (completely, or stopped by Ctrl-C or SIGTERM) then
rewrites both lists in URL-list order; a stopped run keeps the entries of earlier runs for the URLs it did
not reach. After a kill the failed list may still name a URL that a later attempt stored: the next run that
ends tidies that. Ctrl-C or SIGTERM stops within a fraction of a second: finished files are kept and
listed, the interrupted URLs go to the failed list as "interrupted".
"""

from __future__ import annotations

import array
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
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Final

import numpy as np
import tqdm
from absl import logging

from data import fileio
from data.fetch.transport import (
    INTERRUPTED,
    DownloadConfig,
    Fetcher,
    FetchResult,
    filename_for_url,
)
from data.labels import annotations
from data.records import manifest

# How often the thread that orders the results looks at the stop flag while it waits for a download.
_POLL_S: Final = 0.05
# The lines of this downloader's own lists, by which an existing file is recognised as safe to replace:
# the image list names files `filename_for_url` made (`ab/ab<22 hex>.<ext>`), the failed list holds
# `URL<TAB>reason` (a reason, not the `idx:conf` labels of a URL list).
_OWN_IMAGE_LINE: Final = re.compile(r"([0-9a-f]{2})/\1[0-9a-f]{22}\.[a-z]+(\t.*)?")
_OWN_FAILED_LINE: Final = re.compile(r"\S+\t(?!\d+:)[^\t]+")
_RECOGNISED_LINES: Final = 1000  # lines of an existing list looked at: a foreign file fails on its first
# The lock file of a download into files, in the image folder (hidden: no image is named so).
LOCK_FILE: Final = ".download.lock"


@dataclasses.dataclass(frozen=True)
class DownloadSummary:
    """Counts for a whole run, logged at the end and returned to callers.

    `stopped` says the run was interrupted (by `signal`, or by the caller's `stop`): `interrupted` URLs were
    in flight or queued (they are in the failed list as "interrupted"), and the URLs after them in the list
    were not read at all.
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
    signal: int = 0  # the signal that stopped the run (SIGINT, SIGTERM), 0 when none did


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
    on_fetched: Callable[[int, FetchResult], None] | None = None,
) -> Iterator[tuple[str, FetchResult]]:
    """Downloads URLs concurrently and yields `(url, result)` in input order.

    `on_fetched(i, result)` is called in the downloading thread as soon as the i-th URL's download ends (in
    completion order), before the result waits for its turn; an exception it raises is the URL's.

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

        def fetch(i: int, url: str) -> FetchResult:
            result = fetcher.fetch(url)
            if on_fetched is not None:
                on_fetched(i, result)
            return result

        try:
            for i, url in enumerate(urls):
                if len(pending) >= window:
                    if not _wait_for(pending[0][1], stop):
                        break
                    head_url, head = pending.popleft()
                    yield head_url, head.result()
                if stop.is_set():
                    break
                pending.append((url, pool.submit(fetch, i, url)))
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
            lines = list(itertools.islice(f, _RECOGNISED_LINES))
    except FileNotFoundError:
        return True
    if len(lines) > 1 and not lines[-1].endswith("\n"):
        lines.pop()  # the end of a line cut short by a full disk or a kill; `_LiveList` drops it
    return all(line.fullmatch(text.rstrip("\r\n")) for text in lines if text.strip())


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
def _signals_set(stop: threading.Event) -> Iterator[list[int]]:
    """While active, the first Ctrl-C (SIGINT) or SIGTERM sets `stop` instead of ending the process.

    A KeyboardInterrupt can land between any two bytecodes (half-way through recording a result); a flag
    lets the run stop where it chooses. A second signal gets the previous handler (normally an immediate
    KeyboardInterrupt, or the end of the process). Signals can only be handled in the main thread, and an
    ignored signal (e.g. SIGINT under `nohup`) stays ignored; in both cases nothing is installed.

    Yields:
      The signals received (the first one stopped the run).
    """
    received: list[int] = []
    if threading.current_thread() is not threading.main_thread():
        yield received
        return
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM):
        handler = signal.getsignal(signum)
        if handler not in (signal.SIG_IGN, None):
            previous[signum] = handler

    def handler(signum, frame):
        del frame
        received.append(signum)
        stop.set()
        signal.signal(signum, previous[signum])

    for signum in previous:
        signal.signal(signum, handler)
    try:
        yield received
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def _key(filename: str) -> int:
    """A URL's key in the lists: 64 of the 96 bits of its file name's hash (`ab/ab<22 hex>.<ext>`)."""
    return int(filename[3:19], 16)


def _listed_keys(path: str | os.PathLike[str], *, failed: bool) -> np.ndarray:
    """The sorted keys of the URLs that one of this downloader's lists holds (empty when it is missing)."""
    keys = array.array("Q")
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            for line in f:
                first = line.split("\t", 1)[0].strip()
                if failed and first:
                    keys.append(_key(filename_for_url(first)))
                elif _OWN_IMAGE_LINE.fullmatch(first):
                    keys.append(_key(first))
    except FileNotFoundError:
        pass
    return _sorted(keys)


def _sorted(keys: array.array) -> np.ndarray:
    return np.sort(np.frombuffer(keys, dtype=np.uint64)) if keys else np.zeros(0, np.uint64)


def _contains(sorted_keys: np.ndarray, key: int) -> bool:
    i = int(np.searchsorted(sorted_keys, np.uint64(key)))
    return i < sorted_keys.size and int(sorted_keys[i]) == key


def _drop_cut_line(path: str | os.PathLike[str]) -> None:
    """Removes the end of a line that a full disk or a kill cut short (the file's bytes after its last
    newline), so that the next line appended starts a line of its own."""
    try:
        f = open(path, "r+b")
    except FileNotFoundError:
        return
    with f:
        end = f.seek(0, os.SEEK_END)
        position = end
        while position > 0:
            start = max(0, position - (1 << 16))
            f.seek(start)
            newline = f.read(position - start).rfind(b"\n")
            if newline >= 0:
                cut = start + newline + 1
                break
            position = start
        else:
            cut = 0
        if cut != end:
            f.truncate(cut)


class _LiveList:
    """One of the lists, appended to (and flushed) line by line as the downloads end; thread-safe.

    A line whose URL the list held when the run started is not appended again, so a re-run after a kill
    doubles no line.
    """

    def __init__(self, path: str | os.PathLike[str], *, failed: bool):
        self.listed = _listed_keys(path, failed=failed)
        _drop_cut_line(path)
        self._file: IO[str] = open(path, "a", encoding="utf-8")
        self._lock = threading.Lock()

    def add(self, key: int, line: str) -> None:
        if _contains(self.listed, key):
            return
        with self._lock:
            self._file.write(line + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def _carry_over(live: str | os.PathLike[str], out: IO[str], handled: np.ndarray, *, failed: bool) -> None:
    """Appends to `out` the lines of `live` (the list as the run appended to it) whose URL this run did
    not handle: what earlier runs listed beyond the point where this run was stopped."""
    with open(live, encoding="utf-8", errors="replace") as f:
        for line in f:
            first = line.split("\t", 1)[0].strip()
            if not first or not line.endswith("\n"):
                continue
            if not failed and not _OWN_IMAGE_LINE.fullmatch(first):
                continue
            key = _key(filename_for_url(first)) if failed else _key(first)
            if not _contains(handled, key):
                out.write(line)


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
    order, with `filename` relative to `output_dir`; the failed list holds `URL<TAB>reason`. Both are
    appended to as the downloads end (nothing stored is unlisted, whatever ends the process) and rewritten
    in URL-list order when the run ends. Malformed URL-list lines are skipped and counted (see
    `data.labels.annotations`).

    Ctrl-C or SIGTERM (when called from the main thread) or setting `stop` ends the run early but cleanly:
    finished files are kept and listed, the URLs in flight are listed as failed with reason "interrupted",
    and the summary has `stopped=True`. Re-running the same command resumes (files already there are
    skipped). A second Ctrl-C raises KeyboardInterrupt at once; then the lists are as the downloads left
    them (every stored image listed, not in URL-list order).

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
      fileio.FolderBusyError: (a ValueError) another download writes into `output_dir` (one line naming
        it); nothing was downloaded or written.
      OSError: The disk is full (or another write failed); the stored images are kept and listed.
    """
    refuse_foreign_lists(image_list, failed_list)
    with fileio.DirectoryLock(output_dir, name=LOCK_FILE, remove_on_release=True):
        return _download(
            pathlib.Path(url_list),
            output_dir=output_dir,
            image_list=image_list,
            failed_list=failed_list,
            config=config or DownloadConfig(),
            num_classes=num_classes,
            bad_lines_report=bad_lines_report,
            show_progress=show_progress,
            stop=stop or threading.Event(),
        )


def _download(
    url_list: pathlib.Path,
    *,
    output_dir: str | os.PathLike[str],
    image_list: str | os.PathLike[str],
    failed_list: str | os.PathLike[str],
    config: DownloadConfig,
    num_classes: int | None,
    bad_lines_report: str | os.PathLike[str] | None,
    show_progress: bool,
    stop: threading.Event,
) -> DownloadSummary:
    """`download_url_list` once the folder is locked."""
    errors = annotations.ErrorLog(bad_lines_report)
    entries = annotations.iter_entries(
        url_list, kind="multi", num_classes=num_classes, on_error="skip", errors=errors
    )
    # The URLs read and not yet yielded back by `fetch_all` (at most its window), by their index.
    in_flight: dict[int, annotations.Entry] = {}

    def urls() -> Iterator[str]:
        for i, entry in enumerate(entries):
            in_flight[i] = entry
            yield entry.path

    def on_fetched(i: int, result: FetchResult) -> None:  # in a downloading thread
        entry = in_flight[i]
        if result.status in ("downloaded", "existing"):
            live_images.add(_key(result.filename), annotations.format_entry(result.filename, entry.labels))
        elif result.status == "failed":
            live_failed.add(_key(result.filename), f"{entry.path}\t{result.reason}")

    counts: collections.Counter[str] = collections.Counter()
    reasons: collections.Counter[str] = collections.Counter()
    handled = {"images": array.array("Q"), "failed": array.array("Q")}  # the keys of this run's URLs
    num_bytes = 0
    start = time.monotonic()
    with (
        errors,
        fileio.atomic_write(image_list) as images_out,
        fileio.atomic_write(failed_list) as failed_out,
        contextlib.closing(_LiveList(image_list, failed=False)) as live_images,
        contextlib.closing(_LiveList(failed_list, failed=True)) as live_failed,
        tqdm.tqdm(total=_count_lines(url_list), unit="img", disable=not show_progress, smoothing=0.05) as bar,
        _signals_set(stop) as received,
    ):
        for i, (url, result) in enumerate(
            fetch_all(urls(), output_dir, config, stop=stop, on_fetched=on_fetched)
        ):
            labels = in_flight.pop(i).labels
            key = _key(result.filename)
            handled["failed"].append(key)
            if result.status != INTERRUPTED:  # an interrupted URL keeps what an earlier run listed
                handled["images"].append(key)
            if result.status in ("failed", INTERRUPTED):
                failed_out.write(f"{url}\t{result.reason}\n")
            else:
                images_out.write(annotations.format_entry(result.filename, labels) + "\n")
            counts[result.status] += 1
            num_bytes += result.num_bytes
            if result.status == "failed":
                reasons[manifest.reason_category(result.reason)] += 1
            bar.update(1)
            bar.set_postfix(failed=counts["failed"], MB=f"{num_bytes / 1e6:.0f}", refresh=False)
        live_images.close()
        live_failed.close()
        if stop.is_set():  # the URLs after the stop keep what earlier runs listed for them
            _carry_over(image_list, images_out, _sorted(handled["images"]), failed=False)
            _carry_over(failed_list, failed_out, _sorted(handled["failed"]), failed=True)
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
        signal=received[0] if received else 0,
    )
    logging.info("Download summary: %s", summary)
    return summary
