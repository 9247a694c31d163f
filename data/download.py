r"""The downloader's command line: a URL list into image files, or with `--output_records` the one pass.

The release's `download_urls_multithreading.sh` fetched each URL once with no timeout, retry or
validation, so a long run silently produced empty and truncated files. This one bounds each URL by a
deadline, retries what is worth retrying, checks every image, writes atomically, resumes, and stops cleanly
on Ctrl-C (exit status 130) or SIGTERM (143; run it again to resume). One run at a time writes an output
folder; a full disk or another refusal ends it in one line (`data.command_line`). The transport is
`data.fetch.transport`, the run into files `data.fetch.to_files`, the one pass `data.fetch.to_records`. URLs
are requested as a browser sends them (non-ASCII hosts by IDNA, paths percent-encoded) and URLs with
credentials are not fetched, with one warning per run (`data.fetch.urls`).

Usage:
  python data/download.py --url_list train_urls.txt --output_dir images/ \
      --image_list train_im_list.txt --failed_list failed.txt --threads 32

With ``--output_records=DIR`` instead of ``--output_dir`` it is the one pass: the images go straight into
TFRecord shards, with the writer's flags, schema, manifest and crash safety, and no image files:
  python data/download.py --url_list train_urls.txt --output_records records/ \
      --label_format sparse --num_classes 11166 --shards 1024 --workers 4 --threads 32
"""

from __future__ import annotations

import os
import signal
from collections.abc import Sequence
from typing import Final

from absl import app, flags, logging

from data import command_line
from data.fetch import to_files, transport, urls
from data.pixels import images
from data.records import manifest
from data.shards import split_flags, worker_pool

# The records' class count when --output_records is given without --num_classes (ML-Images).
_DEFAULT_NUM_CLASSES: Final = 11166


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    config = transport.DownloadConfig(
        threads=f.threads,
        timeout_s=f.timeout,
        deadline_s=f.deadline,
        retries=f.retries,
        backoff_s=f.backoff,
        max_pixels=f.max_pixels,
        full_decode=f.full_decode,
        allow_private_addresses=f.allow_private_addresses,
    )
    _warn_about_credentials(f.url_list)
    if f.output_records:
        if f.output_dir or f.image_list:
            raise app.UsageError("--output_records writes no image files: drop --output_dir and --image_list")
        _write_records(f, config)
        return
    if not f.output_dir:
        raise app.UsageError(
            "--output_dir (download image files) or --output_records (the one pass) is required"
        )
    image_list = f.image_list or os.path.join(f.output_dir, "image_list.txt")
    with command_line.one_line_errors(
        "download.py",
        resume_hint=f"the stored images are kept and listed in {image_list}; run the same command again to "
        "fetch the rest",
    ):
        summary = to_files.download_url_list(
            f.url_list,
            output_dir=f.output_dir,
            image_list=image_list,
            failed_list=f.failed_list or os.path.join(f.output_dir, "failed_urls.txt"),
            config=config,
            num_classes=f.num_classes,
            bad_lines_report=f.bad_lines_report,
            show_progress=f.progress,
        )
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
            "%s: the lists hold the URLs handled so far (the interrupted ones are in the failed "
            "list); the rest of the URL list was not read. Run the same command again to resume.",
            "Terminated (SIGTERM)" if summary.signal == signal.SIGTERM else "Interrupted",
        )
        # What a shell reports for a command stopped by that signal: 130 for Ctrl-C, 143 for SIGTERM.
        raise SystemExit(128 + (summary.signal or signal.SIGINT))


def _warn_about_credentials(url_list: str) -> None:
    """One warning line for the URLs with credentials (`urls.find_credentials`), without any password."""
    try:
        count, first = urls.find_credentials(url_list)
    except OSError as e:
        raise command_line.error(__file__, f"cannot read --url_list {url_list}: {e.strerror or e}") from None
    if count:
        logging.warning(
            "%s: %d URL%s with credentials (user:password@host), the first on line %d: not fetched (each is in "
            "the failed list, reason '%s')",
            url_list,
            count,
            "" if count == 1 else "s",
            first,
            manifest.reason_category(urls.CREDENTIALS),
        )


def _write_records(f: flags.FlagValues, config: transport.DownloadConfig) -> None:
    """``--output_records``: the one pass (`data.fetch.to_records`), URLs straight into TFRecord shards."""
    if f.workers > 1:  # The workers' imports (numpy, Pillow; no TensorFlow) run beside this process's.
        worker_pool.start_workers_early("data.fetch.to_records")
    from data.fetch import to_records  # No TensorFlow: records are framed by data/records/record_writer.py.

    with command_line.one_line_errors(
        "download.py",
        errors=(ValueError, OSError, worker_pool.Stopped),
        resume_hint="the finished shards are kept; run the same command again to fetch the rest",
    ):
        try:
            to_records.download_records(
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
        except KeyboardInterrupt:
            logging.warning(
                "Interrupted: the finished shards are kept (the others left no file). Run the same command again "
                "to fetch only the unfinished shards."
            )
            raise SystemExit(130) from None  # What a shell reports for a command stopped by Ctrl-C.


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the downloader's flags (and the writer's split flags, for the one pass) on `flag_values`."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "url_list",
        None,
        "URL list: one `URL idx:conf ...` per line (TABs or spaces). Non-ASCII URLs are "
        "requested as a browser sends them (host by IDNA, path and query percent-encoded; one that cannot "
        "be encoded is a failure with the reason). URLs with credentials (user:password@host) are not "
        "fetched: one warning says how many and the first line, and each is a failure with that reason.",
        required=True,
        **fv,
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Directory for the images (files go to <output_dir>/ab/<hash>.<ext>); or use --output_records.",
        **fv,
    )
    flags.DEFINE_string(
        "output_records",
        None,
        "The one pass: write the images straight into TFRecord shards + manifest in this folder, with no "
        "image files (the writer's flags --label_format, --shards, --workers, --prefix, --jpeg_quality, "
        "--verify, --on_error, --task_index/--num_tasks apply; --threads is per worker). Resumable: a re-run "
        "fetches only the shards no finished run holds.",
        **fv,
    )
    flags.DEFINE_string(
        "image_list",
        None,
        "Output image list `filename idx:conf ...` (default: <output_dir>/image_list.txt).",
        **fv,
    )
    flags.DEFINE_string(
        "failed_list",
        None,
        "Output list of failed and interrupted URLs with reasons (default: <output_dir>/failed_urls.txt; with "
        "--output_records, every line without a record, <output_records>/{prefix}-failed.txt).",
        **fv,
    )
    flags.DEFINE_integer("threads", 16, "Concurrent downloads.", lower_bound=1, **fv)
    flags.DEFINE_float(
        "timeout",
        20.0,
        "Socket timeout in seconds: how long a silent server is given to connect or send the next bytes.",
        lower_bound=0.01,
        **fv,
    )
    flags.DEFINE_float(
        "deadline",
        120.0,
        "Total seconds for one URL: connection, headers, body, redirects and all retries together, "
        "however slowly the server sends.",
        lower_bound=0.01,
        **fv,
    )
    flags.DEFINE_integer(
        "retries",
        3,
        "Extra attempts after a transient failure (timeouts, 5xx, 429), within --deadline.",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_float(
        "backoff",
        1.0,
        "Seconds before the first retry; doubles on each further retry.",
        lower_bound=0.0,
        **fv,
    )
    flags.DEFINE_integer(
        "max_pixels",
        images.DEFAULT_MAX_PIXELS,
        "Refuse images whose header claims more pixels (width x height), without decoding them "
        "(decompression bombs); 0: no limit.",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_boolean(
        "full_decode",
        True,
        "Decode every image (reduced scale) to reject truncated files (downloads into files; the one pass "
        "checks as the writer does, see --verify).",
        **fv,
    )
    flags.DEFINE_integer(
        "num_classes",
        None,
        "If set, lines with a class index >= num_classes are skipped as malformed (with --output_records: "
        f"the records' class count, default {_DEFAULT_NUM_CLASSES}).",
        **fv,
    )
    flags.DEFINE_string(
        "bad_lines_report",
        None,
        "If set, malformed URL-list lines are written there with the reason.",
        **fv,
    )
    flags.DEFINE_boolean(
        "allow_private_addresses",
        False,
        "Also connect to loopback, private, link-local, multicast and reserved addresses (an intranet "
        "mirror, a test server). Off: such a URL, or a redirect to one (e.g. the cloud metadata service "
        "169.254.169.254), is skipped with the reason; the proxies the environment sets are always allowed.",
        **fv,
    )
    flags.DEFINE_boolean("progress", True, "Show a progress bar with rate and ETA.", **fv)
    for name in split_flags.define_split_flags(flag_values):  # Listed by --help.
        flags.declare_key_flag(name, flag_values=flag_values)


if __name__ == "__main__":
    command_line.run(main, define_flags, script=__file__)
