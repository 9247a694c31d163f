"""The flags of a split's shards, shared by the writer (data/tfrecord.py) and the one pass (data/download.py).

Kept apart from `data.shards.shard_writer` so that defining them imports no TensorFlow: data/download.py defines
them whether or not it writes records, and a plain download should start in a fraction of a second.
"""

from __future__ import annotations

import os

from absl import flags

from data.labels import annotations
from data.pixels import images
from data.records import schema

LABEL_FORMATS: tuple[str, ...] = schema.LABEL_FORMATS  # importing data/records/schema.py loads no TensorFlow
SPLIT_FLAGS: tuple[str, ...] = (
    "label_format",
    "shards",
    "workers",
    "on_error",
    "prefix",
    "task_index",
    "num_tasks",
    "jpeg_quality",
    "verify",
    "tfds_metadata",
)


def define_split_flags(flag_values: flags.FlagValues = flags.FLAGS) -> tuple[str, ...]:
    """Defines the flags of a split's shards, shared by data/tfrecord.py and data/download.py --output_records.

    The writer and the one-pass downloader write the same shards, so they take the same flags, defined once.

    Returns:
      The flags' names; the caller declares them key flags (``flags.declare_key_flag``) so that its
      ``--help`` lists them.
    """
    flags.DEFINE_enum(
        "label_format",
        "sparse",
        LABEL_FORMATS,
        "dense = the reference's float32[num_classes] bytes; sparse = indices + confidences (a far smaller label field, docs/BENCHMARKS.md section 1); int64 = single-label class index.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "shards",
        1024,
        "Total number of shards of the split (across all tasks).",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "workers",
        os.cpu_count() or 1,
        "Worker processes on this machine; each writes whole shards.",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "on_error",
        "skip",
        annotations.ON_ERROR,
        "skip: bad lines/images are skipped with their reason (all in the shards' .done.json sidecars, the "
        "count and the first 1000 in the manifest); fail: stop at the first one.",
        flag_values=flag_values,
    )
    flags.DEFINE_string(
        "prefix",
        "train",
        "Split name, used in file names: {prefix}-00000-of-01024.tfrecord, {prefix}-manifest.json.",
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "task_index",
        0,
        "This machine's task in a multi-machine write, in [0, num_tasks).",
        lower_bound=0,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "num_tasks",
        1,
        "Machines writing this split; task t writes shards s with s % num_tasks == t. Run --merge afterwards.",
        lower_bound=1,
        flag_values=flag_values,
    )
    flags.DEFINE_integer(
        "jpeg_quality",
        images.DEFAULT_JPEG_QUALITY,
        "JPEG quality for converted images (PNG/GIF/BMP/WebP/TIFF, 16-bit images, CMYK JPEGs without Adobe "
        "marker; for data/tfrecord.py also images scaled down by --max_side); JPEGs that TensorFlow decodes as "
        "they are (RGB, greyscale, Adobe CMYK) are stored byte for byte.",
        lower_bound=1,
        upper_bound=100,
        flag_values=flag_values,
    )
    flags.DEFINE_enum(
        "verify",
        "full",
        images.VERIFY_MODES,
        "How JPEGs are checked before being stored as they are: full = the whole file is decoded, at 1/8 "
        "scale (catches every truncation and decode error); fast = header parse + "
        "end-of-image marker, a decode only for files without that marker (faster writing: docs/BENCHMARKS.md section 1).",
        flag_values=flag_values,
    )
    flags.DEFINE_bool(
        "tfds_metadata",
        False,
        "Also write dataset_info.json/features.json so that tfds.builder_from_directory(<the records folder>) "
        "can read the split.",
        flag_values=flag_values,
    )
    return SPLIT_FLAGS
