"""A whole dataset written: an image list + image folder -> sharded TFRecords + manifest (`write_dataset`).

data/tfrecord.py is its command line; the module docstring there says how a 17.6M-image run stays correct.
"""

from __future__ import annotations

import functools
import os

from data.archives import imagenet
from data.pixels import images
from data.pixels.images import DEFAULT_JPEG_QUALITY, VERIFY_MODES, prepare_image
from data.records.manifest import merge_manifests
from data.shards import archive_feed, shard_writer
from data.shards.list_index import index_list

# The writer's API: other code calls `tfrecord.write_dataset` and `tfrecord.merge_manifests`;
# tools/benchmark.py times `tfrecord.prepare_image` and `tfrecord.index_list` as parts of the writer.
__all__ = ["VERIFY_MODES", "index_list", "merge_manifests", "prepare_image", "write_dataset"]


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
    imagenet_archive: str = "",
    max_side: int = 0,
    imagenet_gz_max_held_bytes: int = archive_feed.DEFAULT_MAX_HELD_MB * 1_000_000,
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
      imagenet_archive: The list names ImageNet IDs (``nXXXXXXXX/nXXXXXXXX_N.JPEG``) to read from this
        archive (a folder of per-synset tars, the outer tar of them, gzipped or not, or an extracted tree;
        `data.archives.imagenet`) instead of files under `image_root`; the records are the same. A gzipped
        outer tar is read front to back by one reader in this process that feeds the workers
        (`data.shards.archive_feed`).
      max_side: Store images whose longer side exceeds it scaled down to it (`images.prepare_image`); 0
        (the default) keeps every image's bytes.
      imagenet_gz_max_held_bytes: From a gzipped outer tar: the most image bytes the reader may hold for
        shards that wait for synsets further on in the archive; past it the run stops in one line (the ID
        list is not in the archive's synset order: `archive_feed`).

    Returns:
      The manifest that was written: the final ``{prefix}-manifest.json`` when ``num_tasks == 1``, else
      this task's ``{prefix}-manifest.task-TTTTT-of-NNNNN.json``.

    Raises:
      ValueError: Bad arguments, shards left by a run with other settings, or (``on_error="fail"``) the
        first bad line or image, named as ``list:line``; `fileio.FolderBusyError` (a ValueError) when
        another run writes this split (and task) in `output_dir` (`shard_writer.one_run`).
      OSError: The disk is full (or another write failed); the finished shards are kept.
    """
    with shard_writer.one_run(
        output_dir, prefix=prefix, task_index=task_index, num_tasks=num_tasks, flag="--output_dir"
    ):
        settings = shard_writer.split_settings(
            image_list=image_list,
            image_root=os.path.abspath(image_root),
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
            max_pixels=max_pixels,
            allow_outside_root=allow_outside_root,
            imagenet_archive=imagenet_archive,
            max_side=max_side,
        )
        if imagenet_gz_max_held_bytes < 1:
            raise ValueError(f"imagenet_gz_max_held_bytes must be >= 1, got {imagenet_gz_max_held_bytes}")
        from_gz = {}
        if settings["imagenet_archive"] and imagenet.is_gzipped(settings["imagenet_archive"]):
            from_gz = {
                "write_fn": archive_feed.write_shard,
                "jobs": functools.partial(archive_feed.shard_jobs, max_held_bytes=imagenet_gz_max_held_bytes),
            }
        return shard_writer.write_split(
            settings,
            index=shard_writer.index_for_shards(settings["image_list"], shards),
            task_index=task_index,
            num_tasks=num_tasks,
            workers=workers,
            progress=progress,
            tfds_metadata=tfds_metadata,
            **from_gz,
        )
