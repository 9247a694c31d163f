r"""The parallel, crash-safe TFRecord writer: an image list + image folder -> sharded TFRecords + manifest.

    python data/tfrecord.py --image_list=train_im_list.txt --image_root=images/ --output_dir=records/ \
        --label_format=sparse --num_classes=11166 --shards=1024 --workers=16

How it stays correct on a 17.6M-image run (each part in its own module):

- Deterministic assignment (`data.list_index`). The list is split into `shards` contiguous blocks of
  lines, found by one streaming pass that records only the shards' byte offsets, so no process ever holds
  the list. Records keep list order inside a shard, so the same list always gives the same shard files,
  whatever ``--workers``. (The input pipeline interleaves shards and shuffles, which is where mixing
  belongs.)
- Whole shards per worker (`data.shard_writer`, `data.worker_pool`). Each worker process writes one shard
  at a time under a temporary name, fsyncs and renames it, then writes its sidecar ``<shard>.done.json``
  (counts, byte size, skipped images), also atomically. A re-run after ``kill -9`` keeps the finished
  shards and rewrites the rest: exactly the same records, none lost or doubled. Workers exit when the
  main process dies.
- Several machines (`data.manifest`). ``--task_index=t --num_tasks=T`` writes the shards s with
  ``s % T == t`` and a per-task manifest; ``--merge`` then checks that every shard exists with the
  recorded size and counts and writes ``{prefix}-manifest.json``.
- Images never crash the run (`data.images.prepare_image`). A JPEG that TensorFlow decodes as it is (RGB,
  greyscale, Adobe CMYK) is stored byte for byte, as the release did; PNG, GIF, BMP, WebP, TIFF, 16-bit
  images (scaled, not clipped) and other JPEGs become RGB JPEGs (``--jpeg_quality``, 95 by default; the
  release converted PNGs at quality 100). Truncated, corrupt, empty, missing and non-image files, images
  over ``--max_pixels`` (checked on the header, never decoded) and names outside ``--image_root`` are
  skipped with the reason (``--on_error=fail`` stops instead): each shard's sidecar lists all of its own,
  the manifest their count and the first ``MANIFEST_SKIPPED_EXAMPLES``.

``--tfds_metadata`` also writes ``dataset_info.json`` and ``features.json`` (`data.tfds_metadata`) so that
``tfds.builder_from_directory(output_dir).as_dataset(split=prefix)`` reads the same files.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence

from absl import app, flags, logging

from data import annotations, fileio, images, manifest, schema, shard_writer, worker_pool
from data.images import DEFAULT_JPEG_QUALITY, VERIFY_MODES, prepare_image
from data.list_index import ListIndex, index_list
from data.manifest import merge_manifests
from data.tfds_metadata import write_tfds_metadata

# The writer's API: other code calls `tfrecord.write_dataset` and `tfrecord.merge_manifests`;
# tools/benchmark.py times `tfrecord.prepare_image` and `tfrecord.index_list` as parts of the writer.
__all__ = ["index_list", "merge_manifests", "prepare_image", "write_dataset"]


def write_dataset(
    *,
    image_list: str,
    image_root: str,
    output_dir: str,
    label_format: str,
    num_classes: int,
    shards: int,
    workers: int = 1,
    prefix: str = "train",
    on_error: str = "skip",
    task_index: int = 0,
    num_tasks: int = 1,
    jpeg_quality: int = DEFAULT_JPEG_QUALITY,
    verify: str = "full",
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    allow_outside_root: bool = False,
    tfds_metadata: bool = False,
    progress: bool = True,
) -> dict:
    """Writes (or finishes writing) this task's shards of an image list and its manifest.

    Safe to re-run with the same arguments after a crash: finished shards are kept, the rest rewritten.

    Args:
      image_list: ``filename idx:conf ...`` (dense/sparse) or ``filename label_int`` (int64) list.
      image_root: Folder the list's file names are relative to.
      output_dir: Where shards, sidecars and manifests go (created if needed).
      label_format: ``dense`` (reference layout), ``sparse`` or ``int64``.
      num_classes: Number of classes; indices at or above it are bad lines.
      shards: Total number of shards of the split (across all tasks).
      workers: Processes writing shards at once on this machine.
      prefix: Split name used in file names (``train``, ``val``).
      on_error: ``skip`` bad lines and images (listed in the shards' sidecars, counted and exemplified in
        the manifest) or ``fail`` on the first one.
      task_index: This machine's task, in [0, num_tasks).
      num_tasks: Machines writing this split; with more than one, run `merge_manifests` at the end.
      jpeg_quality: Quality of JPEGs written for converted images (those TensorFlow cannot decode as they
        are: PNG, GIF, 16-bit, ...).
      verify: How kept JPEGs are checked: ``full`` decode, or ``fast`` (header + end marker); see
        `images.prepare_image`.
      max_pixels: Images with more pixels (width x height, read from the header) are skipped without being
        decoded; 0 disables the limit.
      allow_outside_root: Read list names that are absolute or leave `image_root` through ``..``; by
        default they are skipped as ``outside image_root``.
      tfds_metadata: Also write TFDS's dataset_info.json/features.json (single-task runs; else at merge).
      progress: Show a tqdm progress bar with rate and ETA.

    Returns:
      The manifest that was written: the final ``{prefix}-manifest.json`` when ``num_tasks == 1``, else
      this task's ``{prefix}-manifest.task-TTTTT-of-NNNNN.json``.

    Raises:
      ValueError: Bad arguments, shards left by a run with other settings, or (``on_error="fail"``) the
        first bad line or image, named as ``list:line``.
    """
    schema.check_label_format(label_format)
    if on_error not in annotations.ON_ERROR:
        raise ValueError(f"on_error must be one of {annotations.ON_ERROR}, got {on_error!r}")
    if shards < 1 or workers < 1 or num_classes < 1:
        raise ValueError(
            f"shards, workers and num_classes must be >= 1, got {shards}, {workers}, {num_classes}"
        )
    if not 0 <= task_index < num_tasks:
        raise ValueError(f"task_index {task_index} is outside [0, {num_tasks})")
    if verify not in VERIFY_MODES:
        raise ValueError(f"verify must be one of {VERIFY_MODES}, got {verify!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    if max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {max_pixels}")
    image_list = os.path.abspath(image_list)
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)

    started = time.monotonic()
    index = index_list(image_list, shards)
    logging.info(
        "%s: %d lines, %d bytes, sha256 %s (indexed in %.1fs)",
        image_list,
        index.num_lines,
        index.num_bytes,
        index.sha256[:12],
        time.monotonic() - started,
    )
    tasks = [
        shard_writer.ShardTask(
            index=s,
            num_shards=shards,
            start=index.offsets[s],
            end=index.offsets[s + 1],
            first_line=index.first_lines[s],
            image_list=image_list,
            image_root=os.path.abspath(image_root),
            output_dir=output_dir,
            prefix=prefix,
            label_format=label_format,
            num_classes=num_classes,
            on_error=on_error,
            jpeg_quality=jpeg_quality,
            verify=verify,
            max_pixels=max_pixels,
            allow_outside_root=allow_outside_root,
            list_sha256=index.sha256,
        )
        for s in range(task_index, shards, num_tasks)
    ]
    complete = num_tasks == 1
    manifest_path = os.path.join(
        output_dir,
        schema.manifest_filename(prefix)
        if complete
        else manifest.task_manifest_filename(prefix, task_index, num_tasks),
    )
    # Temp files a killed run left (shards, sidecars, this task's manifest); their shards are rewritten.
    for final in [manifest_path] + [
        p for task in tasks for p in (task.path, manifest.sidecar_path(task.path))
    ]:
        fileio.remove_temp_files(final)
    sidecars, pending = [], []
    for task in tasks:
        sidecar = shard_writer.finished_sidecar(task)
        if sidecar is None:
            pending.append(task)
        else:
            sidecars.append(manifest.compact(sidecar))
    if sidecars:
        logging.info(
            "%d of this task's %d shards already finished; writing %d",
            len(sidecars),
            len(tasks),
            len(pending),
        )
    sidecars += _write_shards(pending, index=index, workers=workers, progress=progress)

    header = {
        "prefix": prefix,
        "label_format": label_format,
        "num_classes": num_classes,
        "num_shards": shards,
        "jpeg_quality": jpeg_quality,
        "verify": verify,
        "max_pixels": max_pixels,
        "allow_outside_root": allow_outside_root,
        "image_list": {
            "path": image_list,
            "sha256": index.sha256,
            "bytes": index.num_bytes,
            "num_lines": index.num_lines,
        },
    }
    written = manifest.build_manifest(
        sidecars,
        output_dir=output_dir,
        header=header,
        complete=complete,
        task_index=task_index,
        num_tasks=num_tasks,
    )
    fileio.write_json(manifest_path, written)
    logging.info(
        "%s: %d records, %d skipped, %d converted, in %.1fs",
        os.path.basename(manifest_path),
        written["num_records"],
        written["num_skipped"],
        sum(written["converted"].values()),
        time.monotonic() - started,
    )
    if complete and tfds_metadata:
        write_tfds_metadata(output_dir)
    return written


def _write_shards(
    tasks: Sequence[shard_writer.ShardTask], *, index: ListIndex, workers: int, progress: bool
) -> list[dict]:
    """Writes the shards (see `worker_pool.run_tasks`), logging each; returns their compact sidecars."""
    results: list[dict] = []
    started = time.monotonic()

    def log_shard(sidecar: dict) -> None:
        results.append(manifest.compact(sidecar))
        lines = sum(s["end_line"] - s["first_line"] + 1 for s in results)
        logging.info(
            "shard %s: %d records, %d skipped (%d/%d shards, %.0f lines/s)",
            sidecar["file"],
            sidecar["num_records"],
            results[-1]["num_skipped"],
            len(results),
            len(tasks),
            lines / max(time.monotonic() - started, 1e-9),
        )

    worker_pool.run_tasks(
        shard_writer.write_shard,
        tasks,
        workers=workers,
        total=sum(index.num_lines_of(task.index) for task in tasks),
        on_result=log_shard,
        progress=progress,
    )
    return results


# ---------------------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------------------

FLAGS = flags.FLAGS


def _define_flags() -> None:
    flags.DEFINE_string(
        "image_list",
        None,
        "Image list: 'filename idx:conf ...' per line, or 'filename label_int' for --label_format=int64.",
    )
    flags.DEFINE_string("image_root", ".", "Folder that the list's file names are relative to.")
    flags.DEFINE_string(
        "output_dir", None, "Output folder for shards, sidecars and the manifest.", required=True
    )
    flags.DEFINE_enum(
        "label_format",
        "sparse",
        schema.LABEL_FORMATS,
        "dense = the reference's float32[num_classes] bytes; sparse = indices + confidences (a far smaller label field, docs/BENCHMARKS.md section 1); int64 = single-label class index.",
    )
    flags.DEFINE_integer(
        "num_classes", 11166, "Number of classes; a class index at or above it is a bad line.", lower_bound=1
    )
    flags.DEFINE_integer(
        "shards", 1024, "Total number of shards of the split (across all tasks).", lower_bound=1
    )
    flags.DEFINE_integer(
        "workers",
        os.cpu_count() or 1,
        "Worker processes on this machine; each writes whole shards.",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "on_error",
        "skip",
        annotations.ON_ERROR,
        "skip: bad lines/images are skipped with their reason (all in the shards' .done.json sidecars, the "
        "count and the first 1000 in the manifest); fail: stop at the first one.",
    )
    flags.DEFINE_string(
        "prefix",
        "train",
        "Split name, used in file names: {prefix}-00000-of-01024.tfrecord, {prefix}-manifest.json.",
    )
    flags.DEFINE_integer(
        "task_index", 0, "This machine's task in a multi-machine write, in [0, num_tasks).", lower_bound=0
    )
    flags.DEFINE_integer(
        "num_tasks",
        1,
        "Machines writing this split; task t writes shards s with s % num_tasks == t. Run --merge afterwards.",
        lower_bound=1,
    )
    flags.DEFINE_integer(
        "jpeg_quality",
        DEFAULT_JPEG_QUALITY,
        "JPEG quality for converted images (PNG/GIF/BMP/WebP/TIFF, 16-bit images, CMYK JPEGs without Adobe "
        "marker); JPEGs that TensorFlow decodes as they are (RGB, greyscale, Adobe CMYK) are stored byte for byte.",
        lower_bound=1,
        upper_bound=100,
    )
    flags.DEFINE_integer(
        "max_pixels",
        images.DEFAULT_MAX_PIXELS,
        "Images over this many pixels (width x height, read from the file's header) are skipped with the "
        "reason, never decoded; 0 = no limit.",
        lower_bound=0,
    )
    flags.DEFINE_bool(
        "allow_outside_root",
        False,
        "Read list names that are absolute or leave --image_root through '..'; by default such lines are "
        "skipped with the reason 'outside image_root' (symlinks inside --image_root are followed either way).",
    )
    flags.DEFINE_enum(
        "verify",
        "full",
        VERIFY_MODES,
        "How JPEGs are checked before being stored as they are: full = the whole file is decoded, at 1/8 "
        "scale (catches every truncation and decode error); fast = header parse + "
        "end-of-image marker, a decode only for files without that marker (faster writing: docs/BENCHMARKS.md section 1).",
    )
    flags.DEFINE_bool(
        "merge",
        False,
        "Do not write: check the per-task manifests in --output_dir and write the final manifest.",
    )
    flags.DEFINE_bool(
        "tfds_metadata",
        False,
        "Also write dataset_info.json/features.json so tfds.builder_from_directory(--output_dir) can read the split.",
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar with rate and ETA.")


def main(argv: Sequence[str]) -> None:
    del argv
    if FLAGS.merge:
        merge_manifests(FLAGS.output_dir, FLAGS.prefix, tfds_metadata=FLAGS.tfds_metadata)
        return
    if not FLAGS.image_list:
        raise app.UsageError("--image_list is required unless --merge")
    write_dataset(
        image_list=FLAGS.image_list,
        image_root=FLAGS.image_root,
        output_dir=FLAGS.output_dir,
        label_format=FLAGS.label_format,
        num_classes=FLAGS.num_classes,
        shards=FLAGS.shards,
        workers=FLAGS.workers,
        prefix=FLAGS.prefix,
        on_error=FLAGS.on_error,
        task_index=FLAGS.task_index,
        num_tasks=FLAGS.num_tasks,
        jpeg_quality=FLAGS.jpeg_quality,
        verify=FLAGS.verify,
        max_pixels=FLAGS.max_pixels,
        allow_outside_root=FLAGS.allow_outside_root,
        tfds_metadata=FLAGS.tfds_metadata,
        progress=FLAGS.progress,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
