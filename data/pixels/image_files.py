"""Image files for the inference tools (tools/image_classification.py, tools/extract_feature.py).

- The inputs: `read_image_list` (the release's one-path-per-line lists and our labelled lists) and
  `collect_image_paths` (arguments, then a list).
- `iter_image_batches`: pre-processed batches in input order; a file that cannot be used (missing,
  truncated, not an image, over --max_pixels) is reported with a short reason and skipped, never a crash
  that loses the run.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterator, Sequence
from concurrent import futures

import numpy as np
import tensorflow as tf
import tqdm
from absl import logging

from data.pixels import images, preprocessing


@dataclasses.dataclass(frozen=True)
class SkippedImage:
    """An image file that could not be used, and why."""

    path: str
    reason: str


def read_image_list(path: str, *, image_root: str = "") -> list[str]:
    """The image files of a list: the first whitespace-separated field of every non-empty line.

    So the release's `im_list_for_classification.txt` (one path per line) and the labelled lists
    (`filename idx:conf ...`) both work; a name containing spaces must be passed as an argument instead.
    Lines starting with `#` are comments. Relative names are joined to `image_root` when it is given.

    Raises:
      ValueError: the list cannot be read.
    """
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise ValueError(f"cannot read image list {path}: {e}") from None
    names = [line.split()[0] for line in lines if line.strip() and not line.lstrip().startswith("#")]
    return [os.path.join(image_root, name) if image_root else name for name in names]


def collect_image_paths(
    args: Sequence[str], *, image_list: str | None = None, image_root: str = ""
) -> list[str]:
    """The tools' inputs: the files given as arguments, then those of `image_list` (see `read_image_list`).

    Raises:
      ValueError: no image at all, or an unreadable list.
    """
    paths = list(args)
    if image_list:
        paths += read_image_list(image_list, image_root=image_root)
    if not paths:
        raise ValueError("no images: pass image files as arguments and/or --image_list")
    return paths


def iter_image_batches(
    paths: Sequence[str],
    *,
    preprocess: preprocessing.FileTransform,
    batch_size: int,
    skipped: list[SkippedImage],
    max_pixels: int = images.DEFAULT_MAX_PIXELS,
    num_threads: int = 4,
    show_progress: bool = False,
) -> Iterator[tuple[list[str], np.ndarray]]:
    """Pre-processed batches of image files, in order; unusable files are reported and left out.

    A missing, empty, truncated, corrupt, non-image or too large (over `max_pixels`) file is logged as a
    warning, appended to `skipped` with a short reason and left out of its batch (so a batch may be smaller
    than `batch_size`); it never stops the run, and a too large one is refused from its header, before any
    pixel is decoded.

    Args:
      paths: image files (any format `data.pixels.preprocessing.load_image_file` reads).
      preprocess: (encoded bytes, EXIF orientation) -> float32 array, e.g.
        `data.pixels.preprocessing.file_transform(name, image_size=S)`; run as a `tf.function`.
      batch_size: files per batch.
      skipped: receives the files that were left out.
      max_pixels: largest width x height read (the tools' --max_pixels; 0: only Pillow's own limit).
      num_threads: files read and pre-processed at once.
      show_progress: a tqdm bar over the files (images, rate, ETA) on stderr, the tools' `--progress`; a
        batch counts when the caller asks for the next one (after its work on it), skipped files too.

    Yields:
      (the batch's paths, float32[len(paths), ...] pre-processed images).
    """
    preprocess_fn = tf.function(
        preprocess, input_signature=[tf.TensorSpec([], tf.string), tf.TensorSpec([], tf.int32)]
    )

    def load(path: str) -> np.ndarray | SkippedImage:
        try:
            image = preprocessing.load_image_file(path, max_pixels=max_pixels)
            return preprocess_fn(tf.constant(image.data), tf.constant(image.orientation, tf.int32)).numpy()
        except images.BadImage as e:
            return SkippedImage(path, e.reason)
        except tf.errors.OpError as e:  # TF's decoder refused what Pillow accepted
            return SkippedImage(path, f"cannot decode: {_first_line(e.message) or type(e).__name__}")
        except ValueError as e:
            return SkippedImage(path, _first_line(str(e)) or type(e).__name__)

    progress = tqdm.tqdm(total=len(paths), unit="img", disable=not show_progress, smoothing=0.1)
    with futures.ThreadPoolExecutor(max(1, num_threads)) as pool, progress:
        for start in range(0, len(paths), batch_size):
            batch_paths = list(paths[start : start + batch_size])
            kept_paths, batch = [], []
            for path, loaded in zip(batch_paths, pool.map(load, batch_paths), strict=True):
                if isinstance(loaded, SkippedImage):
                    logging.warning("skipping %s: %s", path, loaded.reason)
                    skipped.append(loaded)
                else:
                    kept_paths.append(path)
                    batch.append(loaded)
            if batch:
                yield kept_paths, np.stack(batch)
            progress.update(len(batch_paths))  # skipped files count as done


def _first_line(text: str) -> str:
    return text.strip().splitlines()[0] if text.strip() else ""
