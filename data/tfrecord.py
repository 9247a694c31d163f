r"""The parallel, crash-safe TFRecord writer: an image list + image folder -> sharded TFRecords + manifest.

    python data/tfrecord.py --image_list=train_im_list.txt --image_root=images/ --output_dir=records/ \
        --label_format=sparse --num_classes=11166 --shards=1024 --workers=16

How it stays correct on a 17.6M-image run (each part in its own module):

- Deterministic assignment (`data.shards.list_index`). The list is split into `shards` contiguous blocks of
  lines, found by one streaming pass that records only the shards' byte offsets, so no process ever holds
  the list. Records keep list order inside a shard, so the same list always gives the same shard files,
  whatever ``--workers``. (The input pipeline interleaves shards and shuffles, which is where mixing
  belongs.)
- Whole shards per worker (`data.shards.shard_writer`, `data.shards.worker_pool`). Each worker process writes one shard
  at a time under a temporary name, fsyncs and renames it, then writes its sidecar ``<shard>.done.json``
  (counts, byte size, skipped images), also atomically. A re-run after ``kill -9`` keeps the finished
  shards and rewrites the rest: exactly the same records, none lost or doubled. Workers exit when the
  main process dies.
- Several machines (`data.records.manifest`). ``--task_index=t --num_tasks=T`` writes the shards s with
  ``s % T == t`` and a per-task manifest; ``--merge`` then checks that every shard exists with the
  recorded size and counts and writes ``{prefix}-manifest.json``.
- Images never crash the run (`data.pixels.images.prepare_image`). A JPEG that TensorFlow decodes as it is (RGB,
  greyscale, Adobe CMYK) is stored byte for byte, as the release did; PNG, GIF, BMP, WebP, TIFF, 16-bit
  images (scaled, not clipped) and other JPEGs become RGB JPEGs (``--jpeg_quality``, 95 by default; the
  release converted PNGs at quality 100). Truncated, corrupt, empty, missing and non-image files, images
  over ``--max_pixels`` (checked on the header, never decoded) and names outside ``--image_root`` are
  skipped with the reason (``--on_error=fail`` stops instead): each shard's sidecar lists all of its own,
  the manifest their count and the first ``MANIFEST_SKIPPED_EXAMPLES``.

``--tfds_metadata`` also writes ``dataset_info.json`` and ``features.json`` (`data.records.tfds_metadata`) so that
``tfds.builder_from_directory(output_dir).as_dataset(split=prefix)`` reads the same files.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from absl import app, flags

from data.pixels import images
from data.pixels.images import DEFAULT_JPEG_QUALITY, VERIFY_MODES, prepare_image
from data.records.manifest import merge_manifests
from data.shards import shard_writer, split_flags
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
    )
    return shard_writer.write_split(
        settings,
        index=shard_writer.index_for_shards(settings["image_list"], shards),
        task_index=task_index,
        num_tasks=num_tasks,
        workers=workers,
        progress=progress,
        tfds_metadata=tfds_metadata,
    )


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
    for name in split_flags.define_split_flags():  # Listed by --help.
        flags.declare_key_flag(name)
    flags.DEFINE_integer(
        "num_classes", 11166, "Number of classes; a class index at or above it is a bad line.", lower_bound=1
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
    flags.DEFINE_bool(
        "merge",
        False,
        "Do not write: check the per-task manifests in --output_dir and write the final manifest.",
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
