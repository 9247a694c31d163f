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
- Several sources (`data.records.manifest.join_manifests`). ML-Images' ImageNet part (``--imagenet_archive``)
  and its Open Images part (data/download.py ``--output_records``) are written into two folders, each its
  own resumable run; ``--join=DIR,DIR`` then checks that both have the same label format and class count
  and writes one ``{prefix}-manifest.json`` listing the shards of both, with each source's counts and skip
  reasons. Training reads it like any other split.
- Images never crash the run (`data.pixels.images.prepare_image`). A JPEG that TensorFlow decodes as it is (RGB,
  greyscale, Adobe CMYK) is stored byte for byte, as the release did; PNG, GIF, BMP, WebP, TIFF, 16-bit
  images (scaled, not clipped) and other JPEGs become RGB JPEGs (``--jpeg_quality``, 95 by default; the
  release converted PNGs at quality 100). Truncated, corrupt, empty, missing and non-image files, images
  over ``--max_pixels`` (checked on the header, never decoded) and names outside ``--image_root`` are
  skipped with the reason (``--on_error=fail`` stops instead): each shard's sidecar lists all of its own,
  the manifest their count and the first ``MANIFEST_SKIPPED_EXAMPLES``.
- ``--max_side=N`` (off by default) stores images whose longer side exceeds N scaled down to N (aspect
  ratio kept, Lanczos, ``--jpeg_quality``; counted as ``resized <format>`` in ``converted``), which cuts
  the dataset's bytes and the training input's decode cost for multi-megapixel originals
  (docs/BENCHMARKS.md, "Real photo sizes"). For training sets only: the evaluation transform and the
  reference's numbers assume the original resolution, so write evaluation/validation sets without it.

One run at a time writes a split (and task) into an output folder: a second one is refused in one line naming
the first (`shard_writer.one_run`). A full disk, a refused folder or a bad ``--on_error=fail`` line ends the
run in one line (``tfrecord.py: error: ...``, status 1); SIGTERM in one line with status 143, the temporary
files removed and the workers stopped (`data.command_line`). Either way the finished shards are kept.

``--tfds_metadata`` also writes ``dataset_info.json`` and ``features.json`` (`data.records.tfds_metadata`) so that
``tfds.builder_from_directory(output_dir).as_dataset(split=prefix)`` reads the same files.
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import app, flags

from data import command_line
from data.pixels import images
from data.records.manifest import join_manifests, merge_manifests
from data.shards import archive_feed, split_flags, worker_pool
from data.shards.dataset_writer import write_dataset


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "image_list",
        None,
        "Image list: 'filename idx:conf ...' per line, or 'filename label_int' for --label_format=int64.",
        **fv,
    )
    flags.DEFINE_string("image_root", ".", "Folder that the list's file names are relative to.", **fv)
    flags.DEFINE_string(
        "imagenet_archive",
        None,
        "The ImageNet part: read the list's ImageNet IDs (nXXXXXXXX/nXXXXXXXX_N.JPEG) straight from this "
        "archive instead of --image_root: a folder of per-synset tars, the outer tar of them (fall11_whole.tar), "
        "the gzipped outer tar (winter21_whole.tar.gz: read front to back once by one reader that feeds the "
        "workers; its synset tars must be in sorted order and the list grouped by synset in that order, see "
        "--imagenet_gz_max_held_mb), or an extracted tree. IDs it lacks are skipped with the reason.",
        **fv,
    )
    flags.DEFINE_integer(
        "imagenet_gz_max_held_mb",
        archive_feed.DEFAULT_MAX_HELD_MB,
        "With a gzipped --imagenet_archive: the most image bytes (MB) held for shards that wait for synsets "
        "further on in the archive (when the list's synset order is not the archive's). Past it the run stops "
        "in one line (sort the list by synset, or unpack the outer layer); finished shards are kept. Each "
        "shard handed to a worker is held once more: about (--workers + 1) shards' images beside this.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_string(
        "output_dir",
        None,
        "Output folder for shards, sidecars and the manifest.",
        required=True,
        **fv,
    )
    for name in split_flags.define_split_flags(flag_values):  # Listed by --help.
        flags.declare_key_flag(name, flag_values=flag_values)
    flags.DEFINE_integer(
        "num_classes",
        11166,
        "Number of classes; a class index at or above it is a bad line.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer(
        "max_pixels",
        images.DEFAULT_MAX_PIXELS,
        "Images over this many pixels (width x height, read from the file's header) are skipped with the "
        "reason, never decoded; 0 = no limit.",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_integer(
        "max_side",
        0,
        "Store an image whose longer side exceeds this many pixels as a JPEG scaled down to it (aspect ratio "
        "kept, Lanczos, --jpeg_quality; the records' height/width are the new size); smaller images are kept "
        "as without it. 0 = off: the release's bytes are kept. Training sets only: write evaluation and "
        "validation sets without it (the evaluation transform and the reference numbers assume the original "
        "resolution). Cost and effect: docs/BENCHMARKS.md, 'Real photo sizes'.",
        lower_bound=0,
        **fv,
    )
    flags.DEFINE_bool(
        "allow_outside_root",
        False,
        "Read list names that are absolute or leave --image_root through '..', and follow symlinks that lead "
        "out of it; by default such lines are skipped with the reason 'outside image_root' (symlinks to files "
        "inside --image_root are followed either way; FIFOs and devices are never read).",
        **fv,
    )
    flags.DEFINE_bool(
        "merge",
        False,
        "Do not write: check the per-task manifests in --output_dir and write the final manifest.",
        **fv,
    )
    flags.DEFINE_list(
        "join",
        None,
        "Do not write: join the --prefix splits finished in these folders (e.g. "
        "records/imagenet,records/openimages) into one split, {output_dir}/{prefix}-manifest.json, that "
        "lists their shards where they are. Refused in one line unless every part was written with "
        "--label_format and --num_classes as given here; the manifest's 'sources' gives each part's records "
        "and skipped lines per reason.",
        **fv,
    )
    flags.DEFINE_bool("progress", True, "Show a progress bar with rate and ETA.", **fv)


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    if f.join:
        if f.merge or f.image_list or f.imagenet_archive or f.tfds_metadata:
            raise app.UsageError(
                "--join writes only the joined manifest: drop --merge, --image_list, --imagenet_archive and "
                "--tfds_metadata (TFDS cannot name shards in several folders; the TFDS builder's full config "
                "builds both parts)"
            )
        try:
            join_manifests(
                f.output_dir,
                f.join,
                prefix=f.prefix,
                label_format=f.label_format,
                num_classes=f.num_classes,
            )
        except (FileNotFoundError, ValueError) as e:
            raise command_line.error(__file__, e) from None
        return
    with command_line.one_line_errors(
        "tfrecord.py",
        errors=(ValueError, OSError, worker_pool.Stopped),
        resume_hint="the finished shards are kept; run the same command again to write the rest",
    ):
        if f.merge:
            merge_manifests(f.output_dir, f.prefix, tfds_metadata=f.tfds_metadata)
            return
        if not f.image_list:
            raise app.UsageError("--image_list is required unless --merge or --join")
        write_dataset(
            image_list=f.image_list,
            image_root=f.image_root,
            output_dir=f.output_dir,
            label_format=f.label_format,
            num_classes=f.num_classes,
            shards=f.shards,
            workers=f.workers,
            prefix=f.prefix,
            on_error=f.on_error,
            task_index=f.task_index,
            num_tasks=f.num_tasks,
            jpeg_quality=f.jpeg_quality,
            verify=f.verify,
            max_pixels=f.max_pixels,
            allow_outside_root=f.allow_outside_root,
            tfds_metadata=f.tfds_metadata,
            progress=f.progress,
            imagenet_archive=f.imagenet_archive or "",
            max_side=f.max_side,
            imagenet_gz_max_held_bytes=f.imagenet_gz_max_held_mb * 1_000_000,
        )


if __name__ == "__main__":
    # Bad settings, an unreadable list, shards of other settings, --on_error=fail's first bad image: one line.
    command_line.run(main, define_flags, script=__file__, refusals=(ValueError, OSError))
