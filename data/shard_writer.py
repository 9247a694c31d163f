"""Writing one shard of the TFRecord writer: its block of list lines -> one ``.tfrecord`` file + its sidecar.

A shard is written under a temporary name, fsynced and renamed into place (`fileio.atomic_path`), then its
sidecar ``<shard>.done.json`` is written the same way; a shard counts as finished only when its sidecar
exists and matches the file's size and the run's settings (`finished_sidecar`). So a process killed at
any moment leaves either a finished shard or a temporary file that the next run removes and rewrites.

Each line's image goes through `images.prepare_image` (one check for the project: pixel limit from the
header, full decode, JPEGs that TensorFlow decodes kept byte for byte, the rest converted); a bad line or
image is skipped with its reason in the sidecar, or stops the run with ``on_error="fail"``.

The writer never reads outside ``image_root`` because of what a list says: a name that is absolute or
climbs out with ``..`` (checked on the normalised path, before any file access) is skipped with the reason
``outside image_root`` unless ``allow_outside_root``. Symlinks inside ``image_root`` are followed: they
are put there by whoever owns the folder (a folder of images on another disk), never by a list.
"""

from __future__ import annotations

import collections
import dataclasses
import os
from collections.abc import Callable

import tensorflow as tf

from data import annotations, fileio, images, manifest, schema

OUTSIDE_ROOT = "outside image_root"
_PROGRESS_EVERY = 16


@dataclasses.dataclass(frozen=True)
class ShardTask:
    """Everything a worker needs to write one shard; picklable.

    Attributes:
      index: The shard's index in [0, num_shards).
      num_shards: Shards of the split.
      start: Byte offset of the shard's first line in the list.
      end: Byte offset just past its last line.
      first_line: 0-based number of its first line.
      image_list: Absolute path of the list.
      image_root: Absolute folder the list's names are relative to.
      output_dir: Absolute output folder.
      prefix: Split name in the file names.
      label_format: One of `schema.LABEL_FORMATS`.
      num_classes: Class indices at or above it are bad lines.
      on_error: ``skip`` or ``fail``.
      jpeg_quality: Quality of converted images.
      verify: One of `images.VERIFY_MODES`.
      max_pixels: Images with more pixels are skipped (0: no limit).
      allow_outside_root: Read names that are absolute or leave `image_root`.
      list_sha256: Hash of the list (recorded so that shards of another list are never mixed in).
    """

    index: int
    num_shards: int
    start: int
    end: int
    first_line: int
    image_list: str
    image_root: str
    output_dir: str
    prefix: str
    label_format: str
    num_classes: int
    on_error: str
    jpeg_quality: int
    verify: str
    max_pixels: int
    allow_outside_root: bool
    list_sha256: str

    @property
    def path(self) -> str:
        return os.path.join(self.output_dir, schema.shard_filename(self.prefix, self.index, self.num_shards))


def run_settings(task: ShardTask) -> dict:
    """Settings that must match for a finished shard to be reused by a re-run."""
    return {
        "list_sha256": task.list_sha256,
        "label_format": task.label_format,
        "num_classes": task.num_classes,
        "num_shards": task.num_shards,
        "jpeg_quality": task.jpeg_quality,
        "max_pixels": task.max_pixels,
        "allow_outside_root": task.allow_outside_root,
    }


def image_path(image_root: str, name: str, *, allow_outside_root: bool) -> str:
    """The file to read for list name `name`: normalised, and inside `image_root` unless allowed.

    Args:
      image_root: An absolute, normalised folder.
      name: The name as the list gives it.
      allow_outside_root: Accept absolute names and names that leave `image_root` with ``..``.

    Raises:
      images.BadImage: ``outside image_root``.
    """
    path = os.path.normpath(os.path.join(image_root, name))
    if not allow_outside_root and (
        os.path.isabs(name) or os.path.commonpath([image_root, path]) != image_root
    ):
        raise images.BadImage(OUTSIDE_ROOT)
    return path


def write_shard(task: ShardTask, report: Callable[[int], None] | None = None) -> dict:
    """Writes one shard (temp file, fsync, rename, then sidecar) and returns its sidecar.

    Args:
      task: The shard.
      report: Called with the number of list lines done since the last call (progress); may raise to
        abandon the shard (`worker_pool.Stopped`), which leaves no file behind.

    Raises:
      ValueError: ``on_error="fail"`` and a bad line or image, named as ``list:line: name: reason``.
    """
    kind = "single" if task.label_format == "int64" else "multi"
    skipped: list[dict] = []
    converted: collections.Counter[str] = collections.Counter()
    num_records = pending = 0
    with fileio.atomic_path(task.path) as temp:
        with tf.io.TFRecordWriter(temp) as writer, open(task.image_list, "rb") as listing:
            listing.seek(task.start)
            position, line_no = task.start, task.first_line
            while position < task.end:
                raw = listing.readline()
                position += len(raw)
                line_no += 1
                pending += 1
                if pending == _PROGRESS_EVERY and report is not None:
                    report(pending)
                    pending = 0
                if not raw.strip():
                    continue
                name = ""
                try:
                    name, labels = annotations.parse_line(
                        raw.decode("utf-8"), kind=kind, num_classes=task.num_classes
                    )
                    path = image_path(task.image_root, name, allow_outside_root=task.allow_outside_root)
                    image = images.prepare_image(
                        images.read_file(path),
                        jpeg_quality=task.jpeg_quality,
                        verify=task.verify,
                        max_pixels=task.max_pixels,
                    )
                except ValueError as e:  # BadImage is a ValueError too; UnicodeDecodeError as well.
                    reason = e.reason if isinstance(e, images.BadImage) else f"bad line: {e}"
                    name = name or raw.decode("utf-8", "replace").split(maxsplit=1)[0]
                    if task.on_error == "fail":
                        # A plain ValueError: it must cross the process boundary intact.
                        raise ValueError(f"{task.image_list}:{line_no}: {name or '?'}: {reason}") from None
                    skipped.append({"line": line_no, "path": name, "reason": reason})
                    continue
                if image.converted_from:
                    converted[image.converted_from] += 1
                writer.write(
                    schema.encode_example(
                        image=image.jpeg,
                        name=name,
                        height=image.height,
                        width=image.width,
                        label=labels if kind == "single" else dict(labels),
                        label_format=task.label_format,
                        num_classes=task.num_classes,
                    )
                )
                num_records += 1
        if report is not None:
            report(pending)
    sidecar = {
        "file": os.path.basename(task.path),
        "index": task.index,
        "num_records": num_records,
        "bytes": os.path.getsize(task.path),
        "first_line": task.first_line + 1,
        "end_line": line_no,
        "converted": dict(sorted(converted.items())),
        "skipped": skipped,
        **run_settings(task),
    }
    fileio.write_json(manifest.sidecar_path(task.path), sidecar)
    return sidecar


def finished_sidecar(task: ShardTask) -> dict | None:
    """The sidecar of a shard a previous run finished with the same settings, else None.

    Raises:
      ValueError: The shard was finished with other settings (another list, label format, ...).
    """
    sidecar_path = manifest.sidecar_path(task.path)
    sidecar = fileio.read_json(sidecar_path)
    if not isinstance(sidecar, dict):
        return None
    settings = {key: sidecar.get(key) for key in run_settings(task)}
    if settings != run_settings(task):
        raise ValueError(
            f"{sidecar_path} was written with other settings ({settings} != {run_settings(task)}); "
            "use a new --output_dir or delete that run's files"
        )
    if not os.path.exists(task.path) or os.path.getsize(task.path) != sidecar.get("bytes"):
        return None
    return sidecar
