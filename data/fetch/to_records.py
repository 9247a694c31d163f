r"""The one pass: a URL list -> validated images -> sharded TFRecords + manifest, with no image files.

    python data/download.py --url_list=train_urls.txt --output_records=records/ \
        --label_format=sparse --num_classes=11166 --shards=1024 --workers=4 --threads=32

Downloading into 17.6M files and then reading them all back to write records costs a second pass over the
data and a file system full of small files. Here each worker process takes whole shards (contiguous blocks
of the URL list, `data.shards.list_index`, as the writer's shards are blocks of the image list), fetches a shard's
URLs with a pool of threads (downloads wait on the network, and Pillow releases the GIL while it decodes),
and writes the records in list order through the writer's own code (`shard_writer.write_records`,
`shard_writer.write_split`): the same schema, sidecars, manifest, per-shard atomic finalisation, and
resumption after ``kill -9`` (finished shards are kept, the others fetched again).

Each body is checked and prepared by `images.prepare_image`, the writer's function (JPEGs kept byte for
byte, other formats converted), and a record's name is the file name `transport.filename_for_url` gives the
URL, so the one pass writes exactly the records that downloading and then running data/tfrecord.py on the
downloaded image list would write. Malformed lines, dead URLs, non-images and decompression bombs are
skipped with their reason in the shard's sidecar; the failed list (``URL<TAB>reason``, in list order) and
the summary count every one of them.
"""

from __future__ import annotations

import collections
import concurrent.futures
import dataclasses
import functools
import os
import time
from collections.abc import Callable, Iterator

from absl import logging

from data import fileio
from data.fetch import transport
from data.pixels import images
from data.records import manifest
from data.shards import shard_writer
from data.shards.shard_writer import LineResult

# A bad line's reason starts so (`shard_writer.skip_reason`); the summary counts those apart.
_BAD_LINE = "bad line"


@dataclasses.dataclass(frozen=True)
class DownloadShardJob:
    """One shard of the one pass, as a worker process gets it (picklable)."""

    shard: shard_writer.ShardTask
    config: transport.DownloadConfig


@dataclasses.dataclass(frozen=True)
class RecordsSummary:
    """Counts of this task's shards (the reused ones included), logged at the end and returned.

    Attributes:
      lines: Non-blank lines of the URL list in this task's shards.
      records: Records written.
      failed: URLs that gave no record (dead, not an image, too many pixels, ...).
      malformed_lines: Lines that do not parse (each also in the failed list).
      failure_reasons: Failed URLs per reason, without details ("http 404", "not an image", ...).
      shards_fetched: Shards downloaded by this run.
      shards_reused: Shards a previous run finished, kept as they are.
      seconds: Wall time of the run.
      manifest: The manifest that was written.
    """

    lines: int
    records: int
    failed: int
    malformed_lines: int
    failure_reasons: dict[str, int]
    shards_fetched: int
    shards_reused: int
    seconds: float
    manifest: dict


def download_shard(job: DownloadShardJob, report: Callable[[int], None] | None = None) -> dict:
    """Fetches one shard's URLs and writes its records and sidecar (`shard_writer.write_records`)."""
    return shard_writer.write_records(job.shard, _fetched_results(job), report)


def _fetched_results(job: DownloadShardJob) -> Iterator[LineResult]:
    """The shard's lines in list order, each URL fetched and prepared by a pool of threads.

    At most ``config.window`` (default 8 x threads) lines are in flight ahead of the oldest one not yet
    written, so memory stays bounded whatever the shard's size. If the consumer stops (an error, another
    worker failed), the fetches in flight are aborted.
    """
    task, config = job.shard, job.config
    kind = shard_writer.label_kind(task.label_format)
    prepare = functools.partial(
        images.prepare_image, jpeg_quality=task.jpeg_quality, verify=task.verify, max_pixels=task.max_pixels
    )
    window = config.window or 8 * config.threads
    # Each entry: a finished `LineResult`, or (line, url, labels, future of `fetch_with`).
    pending: collections.deque = collections.deque()

    def resolve(entry) -> LineResult:
        if isinstance(entry, LineResult):
            return entry
        line, url, labels, future = entry
        result, image = future.result()
        if image is None:
            return LineResult(line, url, reason=result.reason)
        return LineResult(line, result.filename, labels, image)

    with (
        transport.Fetcher(task.output_dir, config) as fetcher,
        concurrent.futures.ThreadPoolExecutor(config.threads, thread_name_prefix="download") as pool,
    ):
        finished = False
        try:
            for line, raw in shard_writer.iter_lines(task):
                if not raw.strip():
                    pending.append(LineResult(line))
                else:
                    try:
                        url, labels = shard_writer.parse_list_line(
                            raw, kind=kind, num_classes=task.num_classes
                        )
                    except ValueError as e:  # UnicodeDecodeError too.
                        pending.append(
                            LineResult(
                                line, shard_writer.first_field(raw), reason=shard_writer.skip_reason(e)
                            )
                        )
                    else:
                        pending.append((line, url, labels, pool.submit(fetcher.fetch_with, url, prepare)))
                while len(pending) > window:
                    yield resolve(pending.popleft())
            while pending:
                yield resolve(pending.popleft())
            finished = True
        finally:  # Stopped early (also while waiting for a line's fetch): abort what is in flight.
            if not finished:
                fetcher.stop()
                for entry in pending:
                    if not isinstance(entry, LineResult):
                        entry[3].cancel()


def download_records(
    url_list: str | os.PathLike[str],
    *,
    output_dir: str | os.PathLike[str],
    label_format: str,
    num_classes: int,
    shards: int,
    config: transport.DownloadConfig | None = None,
    workers: int = 1,
    prefix: str = "train",
    on_error: str = "skip",
    task_index: int = 0,
    num_tasks: int = 1,
    jpeg_quality: int = images.DEFAULT_JPEG_QUALITY,
    verify: str = "full",
    failed_list: str | os.PathLike[str] | None = None,
    tfds_metadata: bool = False,
    progress: bool = True,
) -> RecordsSummary:
    """Downloads a URL list (`URL idx:conf ...`) straight into TFRecord shards; resumable.

    Safe to re-run with the same arguments after a crash or ``kill -9``: finished shards are kept, the
    others downloaded and written again.

    Args:
      url_list: The URL list (``URL idx:conf ...``; ``URL label_int`` for ``label_format="int64"``).
      output_dir: Where shards, sidecars, the manifest and the failed list go.
      label_format: ``dense``, ``sparse`` or ``int64`` (`data.records.schema`).
      num_classes: Number of classes; indices at or above it make a line malformed.
      shards: Total shards of the split (across all tasks).
      config: How to fetch (default `DownloadConfig()`) (threads per worker, deadlines, retries); its ``max_pixels`` is the limit of
        the images too.
      workers: Processes, each fetching and writing whole shards.
      prefix: Split name in the file names.
      on_error: ``skip`` failed URLs and bad lines (listed with reasons) or ``fail`` on the first one.
      task_index: This machine's task, in [0, num_tasks).
      num_tasks: Machines downloading this split; run `manifest.merge_manifests` at the end.
      jpeg_quality: Quality of the JPEGs written for converted images.
      verify: How kept JPEGs are checked (`images.prepare_image`).
      failed_list: Where ``URL<TAB>reason`` goes for every line without a record, in list order (default
        ``<output_dir>/{prefix}-failed.txt``, or ``{prefix}-failed.task-TTTTT-of-NNNNN.txt`` with several
        tasks).
      tfds_metadata: Also write TFDS's metadata files (single-task runs).
      progress: Show a progress bar.

    Returns:
      The run's counts and manifest.

    Raises:
      ValueError: Bad arguments, shards left by a run with other settings, or (``on_error="fail"``) the
        first failed URL or bad line, named as ``list:line``; `fileio.FolderBusyError` (a ValueError) when
        another run (a download or the writer) writes this split (and task) in `output_dir`.
      OSError: The disk is full (or another write failed); the finished shards are kept.
    """
    config = config or transport.DownloadConfig()
    started = time.monotonic()
    with shard_writer.one_run(
        output_dir, prefix=prefix, task_index=task_index, num_tasks=num_tasks, flag="--output_records"
    ):
        settings = shard_writer.split_settings(
            image_list=url_list,
            image_root="",
            output_dir=output_dir,
            prefix=prefix,
            label_format=label_format,
            num_classes=num_classes,
            shards=shards,
            workers=workers,
            on_error=on_error,
            task_index=task_index,
            num_tasks=num_tasks,
            jpeg_quality=jpeg_quality,
            verify=verify,
            max_pixels=config.max_pixels,
            allow_outside_root=False,
        )
        url_list, output_dir = settings["image_list"], settings["output_dir"]
        index = shard_writer.index_for_shards(url_list, shards)
        fetched: list[int] = []

        def job(task: shard_writer.ShardTask) -> DownloadShardJob:
            fetched.append(task.index)
            return DownloadShardJob(task, config)

        written = shard_writer.write_split(
            settings,
            index=index,
            task_index=task_index,
            num_tasks=num_tasks,
            workers=workers,
            progress=progress,
            tfds_metadata=tfds_metadata,
            write_fn=download_shard,
            job=job,
        )
        if failed_list is None:
            name = (
                f"{prefix}-failed.txt"
                if num_tasks == 1
                else f"{prefix}-failed.task-{task_index:05d}-of-{num_tasks:05d}.txt"
            )
            failed_list = os.path.join(output_dir, name)
        summary = _summarise(written, output_dir=output_dir, failed_list=failed_list, fetched=len(fetched))
        summary = dataclasses.replace(summary, seconds=time.monotonic() - started)
        logging.info(
            "%d lines: %d records, %d failed URLs, %d malformed lines (%d shards fetched, %d reused) in %.0f s; "
            "failures by reason: %s; failed list: %s",
            summary.lines,
            summary.records,
            summary.failed,
            summary.malformed_lines,
            summary.shards_fetched,
            summary.shards_reused,
            summary.seconds,
            summary.failure_reasons,
            failed_list,
        )
        return summary


def _summarise(
    written: dict, *, output_dir: str, failed_list: str | os.PathLike[str], fetched: int
) -> RecordsSummary:
    """Writes the failed list from the shards' sidecars (every skipped line, in list order) and counts."""
    reasons: collections.Counter[str] = collections.Counter()
    malformed = failed = 0
    with fileio.atomic_write(failed_list) as out:
        for shard in written["shards"]:  # In shard order, each shard's skips in line order.
            sidecar = fileio.read_json(manifest.sidecar_path(os.path.join(output_dir, shard["file"])))
            for skip in sidecar["skipped"]:
                out.write(f"{skip['path']}\t{skip['reason']}\n")
                if skip["reason"].startswith(_BAD_LINE):
                    malformed += 1
                else:
                    failed += 1
                    reasons[manifest.reason_category(skip["reason"])] += 1
    shards = written["shards"]
    return RecordsSummary(
        lines=written["num_records"] + written["num_skipped"],
        records=written["num_records"],
        failed=failed,
        malformed_lines=malformed,
        failure_reasons=dict(reasons.most_common()),
        shards_fetched=fetched,
        shards_reused=len(shards) - fetched,
        seconds=0.0,
        manifest=written,
    )
