"""Writing shards: a block of list lines -> one ``.tfrecord`` file + its sidecar; a split's shards + manifest.

Two producers share this code: the writer (data/tfrecord.py: `write_shard` reads each line's image file)
and the one-pass downloader (data/fetch/to_records.py: each line's URL is fetched). Each turns its lines
into `LineResult`s in list order; `write_records` writes them, and `write_split` runs a split's shards
(finished ones reused, the rest in worker processes) and writes the manifest.

A shard is written under a temporary name, fsynced and renamed into place (`fileio.atomic_path`), then its
sidecar ``<shard>.done.json`` is written the same way; a shard counts as finished only when its sidecar
exists and matches the file's size and the run's settings (`finished_sidecar`). So a process killed at
any moment leaves either a finished shard or a temporary file that the next run removes and rewrites.

Each line's image (file or download) goes through `images.prepare_image` (one check for the project: pixel limit from the
header, full decode, JPEGs that TensorFlow decodes kept byte for byte, the rest converted); a bad line or
image is skipped with its reason in the sidecar, or stops the run with ``on_error="fail"``.

The writer never reads outside ``image_root``: a name that is absolute or climbs out with ``..`` (checked
on the normalised path, before any file access) is skipped with the reason ``outside image_root``, and a
symlink (the file's own or a folder's) is followed only to a file inside ``image_root`` (`ImagePaths`): a
link to /etc/passwd or /dev/zero is skipped with the reason ``outside image_root (through a symlink)``
before its target is opened. ``allow_outside_root`` lifts both; `images.read_file` still reads regular files
only, so a FIFO or a device never blocks or floods the writer.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import os
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from typing import Any, NamedTuple

from absl import logging

from data import fileio
from data.archives import imagenet
from data.labels import annotations
from data.pixels import images
from data.records import manifest, record_writer, schema
from data.records.tfds_metadata import write_tfds_metadata
from data.shards import list_index, worker_pool
from data.shards.list_index import ListIndex

OUTSIDE_ROOT = "outside image_root"
LINK_OUTSIDE_ROOT = f"{OUTSIDE_ROOT} (through a symlink)"
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
      allow_outside_root: Read names that are absolute or leave `image_root` (by `..` or a symlink).
      list_sha256: Hash of the list (recorded so that shards of another list are never mixed in).
      imagenet_archive: Read the list's ImageNet IDs from this archive (`data.archives.imagenet`) instead of
        files under `image_root`; the records are the same as from the extracted files.
      max_side: Images whose longer side exceeds it are stored scaled down to it (`images.prepare_image`;
        counted as ``resized <format>`` in ``converted``); 0: every image stored as it is.
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
    imagenet_archive: str = ""
    max_side: int = 0

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
        "max_side": task.max_side,
    }


# Run settings added after shards were first written, with the value that older sidecars (which lack the
# key) were written with: such shards stay reusable by a run with that value.
_SETTINGS_ADDED_LATER: dict[str, Any] = {"max_side": 0}


def image_path(image_root: str, name: str, *, allow_outside_root: bool) -> str:
    """The file to read for list name `name`: normalised, and inside `image_root` unless allowed.

    A check of the name alone (no file is looked at, so it holds for ``gs://`` roots too); `ImagePaths`
    adds the symlink check for a local folder.

    Args:
      image_root: An absolute, normalised folder.
      name: The name as the list gives it.
      allow_outside_root: Accept absolute names and names that leave `image_root` with ``..``.

    Raises:
      images.BadImage: ``outside image_root``.
    """
    path = os.path.normpath(os.path.join(image_root, name))
    if not allow_outside_root and (os.path.isabs(name) or not _is_inside(path, image_root)):
        raise images.BadImage(OUTSIDE_ROOT)
    return path


def _is_inside(path: str, folder: str) -> bool:
    """Whether the normalised absolute `path` is `folder` or in it (`os.path.commonpath` at 1/50 the cost)."""
    return path == folder or path.startswith(os.path.join(folder, ""))


class ImagePaths:
    """`image_path` for a local folder, with symlinks followed only to files inside `image_root`.

    An image folder is untrusted input like a list: a link in it to /etc/passwd, /dev/zero or a folder
    elsewhere is refused before its target is opened (opening some devices has effects of its own). The
    file's real path must be inside the real path of `image_root` (so a root that is itself a link, to
    another disk, works as before). Cheap on the writer's hot path: each folder's real path is resolved
    once per `ImagePaths` (a shard's lines share a few hundred folders) and each file costs one ``lstat``.

    A link changed after the check (by someone writing into the folder during the run) is not caught;
    `images.read_file` still reads regular files only, so nothing blocks on a FIFO or reads a device.

    Args:
      image_root: An absolute, normalised folder.
      allow_outside_root: Accept names and symlinks that lead out of `image_root` (no check at all).
    """

    def __init__(self, image_root: str, *, allow_outside_root: bool):
        self.image_root = image_root
        self.allow_outside_root = allow_outside_root
        self._real_root = os.path.realpath(image_root)
        self._real_folders: dict[str, str] = {}

    def __call__(self, name: str) -> str:
        """The file to read for list name `name`.

        Raises:
          images.BadImage: ``outside image_root``, or ``outside image_root (through a symlink)``.
        """
        path = image_path(self.image_root, name, allow_outside_root=self.allow_outside_root)
        if not self.allow_outside_root and not _is_inside(self._real_path(path), self._real_root):
            raise images.BadImage(LINK_OUTSIDE_ROOT)
        return path

    def _real_path(self, path: str) -> str:
        """`os.path.realpath(path)`, its folder's part remembered."""
        folder, base = os.path.split(path)
        real_folder = self._real_folders.get(folder)
        if real_folder is None:
            real_folder = self._real_folders[folder] = os.path.realpath(folder)
        real = os.path.join(real_folder, base)
        return os.path.realpath(real) if os.path.islink(real) else real


@dataclasses.dataclass(frozen=True)
class LineResult:
    """What one line of a shard's block gives: a record, a skip with its reason, or nothing (blank line).

    The writer (images read from files) and the one-pass downloader (images fetched from URLs) each produce
    these in list order; `write_records` turns them into the shard, its sidecar and the skip list.

    Attributes:
      line: 1-based line number in the list.
      name: The record's name (the list's file name; for the one pass, the downloader's file name of the
        URL), or for a skip what the line names (its path or URL).
      labels: The parsed labels (None when skipped or blank).
      image: The image to store (None when skipped or blank).
      reason: Why the line is skipped; "" for a record or a blank line.
    """

    line: int
    name: str = ""
    labels: annotations.Labels | None = None
    image: images.PreparedImage | None = None
    reason: str = ""


def label_kind(label_format: str) -> annotations.Kind:
    """The list grammar a label format reads: ``single`` (``name label_int``) for int64, else ``multi``."""
    return "single" if label_format == "int64" else "multi"


def iter_lines(task: ShardTask) -> Iterator[tuple[int, bytes]]:
    """``(1-based line number, raw line)`` for each line of the shard's block of the list."""
    with open(task.image_list, "rb") as listing:
        listing.seek(task.start)
        position, line_no = task.start, task.first_line
        while position < task.end:
            raw = listing.readline()
            position += len(raw)
            line_no += 1
            yield line_no, raw


def parse_list_line(
    raw: bytes, *, kind: annotations.Kind, num_classes: int
) -> tuple[str, annotations.Labels]:
    """`annotations.parse_line` of a raw line; `ValueError` (with the reason) for a bad one."""
    return annotations.parse_line(raw.decode("utf-8"), kind=kind, num_classes=num_classes)


def skip_reason(error: ValueError) -> str:
    """The skip list's reason for an error of `parse_list_line` or `images.prepare_image`."""
    return error.reason if isinstance(error, images.BadImage) else f"bad line: {error}"


def first_field(raw: bytes) -> str:
    """What a line names, for the skip list, even when it does not parse."""
    fields = raw.decode("utf-8", "replace").split(maxsplit=1)
    return fields[0] if fields else ""


def _file_results(task: ShardTask) -> Iterator[LineResult]:
    """The writer's lines: each image read from `image_root` (or the ImageNet archive) and prepared."""
    if task.imagenet_archive:
        yield from archive_results(task)
        return
    kind = label_kind(task.label_format)
    image_paths = ImagePaths(task.image_root, allow_outside_root=task.allow_outside_root)
    for line_no, raw in iter_lines(task):
        if not raw.strip():
            yield LineResult(line_no)
            continue
        name = ""
        try:
            name, labels = parse_list_line(raw, kind=kind, num_classes=task.num_classes)
            path = image_paths(name)
            image = images.prepare_image(
                images.read_file(path),
                jpeg_quality=task.jpeg_quality,
                verify=task.verify,
                max_pixels=task.max_pixels,
                max_side=task.max_side,
            )
        except ValueError as e:  # BadImage is a ValueError too; UnicodeDecodeError as well.
            yield LineResult(line_no, name or first_field(raw), reason=skip_reason(e))
            continue
        yield LineResult(line_no, name, labels, image)


class _ArchiveLine(NamedTuple):
    """One parsed line of `archive_results`: its image is `member` of `synset`'s tar, or it is a blank line
    (`raw` blank) or a skip (`reason`)."""

    line: int
    raw: bytes
    name: str = ""
    labels: annotations.Labels | None = None
    synset: str = ""
    member: str = ""
    reason: str = ""


def parse_archive_lines(task: ShardTask) -> tuple[list[_ArchiveLine], dict[str, set[str]]]:
    """The shard's lines parsed, and the members each synset must give them: ``(lines, {synset: members})``."""
    kind = label_kind(task.label_format)
    parsed: list[_ArchiveLine] = []
    wanted: dict[str, set[str]] = {}
    for line_no, raw in iter_lines(task):
        if not raw.strip():
            parsed.append(_ArchiveLine(line_no, raw))
            continue
        try:
            name, labels = parse_list_line(raw, kind=kind, num_classes=task.num_classes)
            synset, member = imagenet.parse_id(name)
        except ValueError as e:
            parsed.append(_ArchiveLine(line_no, raw, first_field(raw), reason=skip_reason(e)))
            continue
        wanted.setdefault(synset, set()).add(member)
        parsed.append(_ArchiveLine(line_no, raw, name, labels, synset, member))
    return parsed, wanted


SynsetFn = Callable[[str, set[str]], Mapping[str, "bytes | images.BadImage"]]


def archive_results(task: ShardTask, synset_fn: SynsetFn | None = None) -> Iterator[LineResult]:
    """The writer's lines from an ImageNet archive: the shard's lines are parsed first, then each synset's
    tar is read once, front to back, keeping only this shard's members of it (the ID lists are grouped by
    synset, so a shard holds a few synsets' runs; a synset that comes back later in the block is read
    again), and the lines are yielded in list order.

    Args:
      task: The shard.
      synset_fn: ``synset_fn(synset, members)``: the members of the synset, as `ImageNetArchive.synset`
        gives them (raises `images.BadImage` for a missing or unreadable synset); by default read from
        `task.imagenet_archive` here (a gzipped one is read by `data.shards.archive_feed` instead, which
        hands each shard its members).
    """
    parsed, wanted = parse_archive_lines(task)
    with contextlib.ExitStack() as stack:
        if synset_fn is None:
            synset_fn = stack.enter_context(imagenet.ImageNetArchive(task.imagenet_archive)).synset
        yield from _archive_lines(task, parsed, wanted, synset_fn)


def _archive_lines(
    task: ShardTask, parsed: list[_ArchiveLine], wanted: dict[str, set[str]], synset_fn: SynsetFn
) -> Iterator[LineResult]:
    loaded_synset, members, synset_error = None, {}, None
    for entry in parsed:
        if not entry.synset:
            yield LineResult(entry.line, entry.name, reason=entry.reason)
            continue
        if entry.synset != loaded_synset:
            loaded_synset, members, synset_error = entry.synset, {}, None
            try:
                members = synset_fn(entry.synset, wanted[entry.synset])
            except images.BadImage as e:
                synset_error = e
        try:
            image = images.prepare_image(
                imagenet.member_bytes(members, entry.member, synset_error),
                jpeg_quality=task.jpeg_quality,
                verify=task.verify,
                max_pixels=task.max_pixels,
                max_side=task.max_side,
            )
        except ValueError as e:
            yield LineResult(entry.line, entry.name, reason=skip_reason(e))
            continue
        yield LineResult(entry.line, entry.name, entry.labels, image)


def write_shard(task: ShardTask, report: Callable[[int], None] | None = None) -> dict:
    """Writes one shard of the image list from the image files (see `write_records`)."""
    return write_records(task, _file_results(task), report)


def write_records(
    task: ShardTask, results: Iterable[LineResult], report: Callable[[int], None] | None = None
) -> dict:
    """Writes one shard (temp file, fsync, rename, then sidecar) from its lines' results; returns the sidecar.

    Args:
      task: The shard.
      results: One `LineResult` per line of the shard's block, in list order.
      report: Called with the number of list lines done since the last call (progress); may raise to
        abandon the shard (`worker_pool.Stopped`), which leaves no file behind.

    Raises:
      ValueError: ``on_error="fail"`` and a bad line or image, named as ``list:line: name: reason``.
    """
    kind = label_kind(task.label_format)
    skipped: list[dict] = []
    converted: collections.Counter[str] = collections.Counter()
    num_records = pending = 0
    line_no = task.first_line
    with fileio.atomic_path(task.path) as temp:
        with record_writer.RecordWriter(temp) as writer:
            for result in results:
                line_no = result.line
                pending += 1
                if pending == _PROGRESS_EVERY and report is not None:
                    report(pending)
                    pending = 0
                image = result.image
                if image is None:
                    if not result.reason:  # A blank line.
                        continue
                    if task.on_error == "fail":
                        # A plain ValueError: it must cross the process boundary intact.
                        raise ValueError(
                            f"{task.image_list}:{line_no}: {result.name or '?'}: {result.reason}"
                        )
                    skipped.append({"line": line_no, "path": result.name, "reason": result.reason})
                    continue
                if image.converted_from:
                    converted[image.converted_from] += 1
                writer.write(
                    schema.encode_example(
                        image=image.jpeg,
                        name=result.name,
                        height=image.height,
                        width=image.width,
                        label=result.labels if kind == "single" else dict(result.labels),
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
    settings = {key: sidecar.get(key, _SETTINGS_ADDED_LATER.get(key)) for key in run_settings(task)}
    if settings != run_settings(task):
        raise ValueError(
            f"{sidecar_path} was written with other settings ({settings} != {run_settings(task)}); "
            "use a new --output_dir or delete that run's files"
        )
    if not os.path.exists(task.path) or os.path.getsize(task.path) != sidecar.get("bytes"):
        return None
    return sidecar


# ---------------------------------------------------------------------------------------------------------
# A whole split: this task's shards, reused when finished, the rest written by worker processes, then the
# manifest. Shared by the writer (data/tfrecord.py) and the one-pass downloader (data/fetch/to_records.py).
# ---------------------------------------------------------------------------------------------------------


def split_settings(
    *,
    image_list: str | os.PathLike[str],
    image_root: str,
    output_dir: str | os.PathLike[str],
    prefix: str,
    label_format: str,
    num_classes: int,
    shards: int,
    workers: int,
    on_error: str,
    task_index: int,
    num_tasks: int,
    jpeg_quality: int,
    verify: str,
    max_pixels: int,
    allow_outside_root: bool,
    imagenet_archive: str = "",
    max_side: int = 0,
) -> dict[str, Any]:
    """The `ShardTask` fields every shard of a split shares (`write_split`'s settings), after checking them.

    Shared by the writer (data/tfrecord.py) and the one-pass downloader (data/fetch/to_records.py), so that
    both refuse the same settings and hand the workers the same kind of paths: the list and the output
    folder made absolute (`ShardTask`), the output folder created. The arguments are `ShardTask`'s fields
    of the same names, but `image_root` (given as the shards use it: absolute, or "" for a URL list) and
    `shards`, `workers`, `task_index`, `num_tasks` (only checked here).

    Raises:
      ValueError: (one line, for a usage error) settings no split can be written with.
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
    if verify not in images.VERIFY_MODES:
        raise ValueError(f"verify must be one of {images.VERIFY_MODES}, got {verify!r}")
    if not 1 <= jpeg_quality <= 100:
        raise ValueError(f"jpeg_quality must be in [1, 100], got {jpeg_quality}")
    if max_pixels < 0:
        raise ValueError(f"max_pixels must be >= 0 (0: no limit), got {max_pixels}")
    if max_side < 0:
        raise ValueError(f"max_side must be >= 0 (0: off), got {max_side}")
    if imagenet_archive:
        imagenet_archive = os.path.abspath(imagenet_archive)
        imagenet.ImageNetArchive(imagenet_archive).close()  # a path that is no archive: one line, now
    output_dir = os.path.abspath(output_dir)
    os.makedirs(output_dir, exist_ok=True)
    return {
        "image_list": os.path.abspath(image_list),
        "image_root": image_root,
        "output_dir": output_dir,
        "prefix": prefix,
        "label_format": label_format,
        "num_classes": num_classes,
        "on_error": on_error,
        "jpeg_quality": jpeg_quality,
        "verify": verify,
        "max_pixels": max_pixels,
        "allow_outside_root": allow_outside_root,
        "imagenet_archive": imagenet_archive,
        "max_side": max_side,
    }


def lock_name(prefix: str, task_index: int, num_tasks: int) -> str:
    """The lock file of one task of a split in its output folder: hidden, so no shard, sidecar, manifest
    or list is ever named so. Another split (prefix) or another task of a multi-machine write may write
    the same folder at the same time: they write other files."""
    task = "" if num_tasks == 1 else f".task-{task_index:05d}-of-{num_tasks:05d}"
    return f".{prefix}{task}.lock"


@contextlib.contextmanager
def one_run(
    output_dir: str | os.PathLike[str], *, prefix: str, task_index: int, num_tasks: int, flag: str
) -> Iterator[None]:
    """Holds the split's lock in `output_dir` (`fileio.DirectoryLock`) while the block writes the split.

    The writer and the one-pass downloader take the same lock, so neither runs beside another run of the
    same split and task (they would replace each other's shards and lists). The lock file is removed at
    the end, however the run ends (but kill -9: the next run takes it over).

    Raises:
      fileio.FolderBusyError: (one line) another run holds the lock, naming it; or the folder is not
        writable.
    """
    with fileio.DirectoryLock(
        output_dir, name=lock_name(prefix, task_index, num_tasks), flag=flag, remove_on_release=True
    ):
        yield


def index_for_shards(image_list: str, shards: int) -> ListIndex:
    """`list_index.index_list`, logged."""
    started = time.monotonic()
    index = list_index.index_list(image_list, shards)
    logging.info(
        "%s: %d lines, %d bytes, sha256 %s (indexed in %.1fs)",
        image_list,
        index.num_lines,
        index.num_bytes,
        index.sha256[:12],
        time.monotonic() - started,
    )
    return index


def shard_tasks(index: ListIndex, *, task_index: int, num_tasks: int, **settings) -> list[ShardTask]:
    """This task's shards (s with ``s % num_tasks == task_index``) of the indexed list.

    Args:
      index: The list's index (its number of shards is the split's).
      task_index: This machine's task.
      num_tasks: Machines writing the split.
      **settings: The remaining `ShardTask` fields, the same for every shard.
    """
    shards = index.num_shards
    return [
        ShardTask(
            index=s,
            num_shards=shards,
            start=index.offsets[s],
            end=index.offsets[s + 1],
            first_line=index.first_lines[s],
            list_sha256=index.sha256,
            **settings,
        )
        for s in range(task_index, shards, num_tasks)
    ]


def write_split(
    settings: Mapping[str, Any],
    *,
    index: ListIndex,
    task_index: int,
    num_tasks: int,
    workers: int,
    progress: bool,
    tfds_metadata: bool = False,
    write_fn: worker_pool.TaskFn = write_shard,
    job: Callable[[ShardTask], Any] | None = None,
    jobs: Callable[[Sequence[ShardTask]], Iterable[Any]] | None = None,
) -> dict:
    """Writes (or finishes writing) this task's shards of an indexed list and its manifest.

    Shards whose sidecar says a previous run finished them with the same settings are kept; temporary
    files a killed run left are removed and their shards written again.

    Args:
      settings: The `ShardTask` fields every shard shares (list, output folder, prefix, labels, ...).
      index: The list's index.
      task_index: This machine's task.
      num_tasks: Machines writing the split; with one, the split's final manifest is written.
      workers: Processes writing shards at once.
      progress: Show a progress bar.
      tfds_metadata: Also write TFDS's metadata files (single-task runs).
      write_fn: ``write_fn(job(task), report) -> sidecar``, a module-level function run in the workers.
      job: What `write_fn` gets for a task (default: the task itself).
      jobs: Instead of `job`: ``jobs(tasks)`` gives what `write_fn` gets for the tasks still to write, as
        they become ready (drawn as workers free up: `worker_pool.run_tasks`).

    Returns:
      The manifest that was written: the final ``{prefix}-manifest.json`` when ``num_tasks == 1``, else
      this task's ``{prefix}-manifest.task-TTTTT-of-NNNNN.json``.

    Raises:
      ValueError: Shards left by a run with other settings.
    """
    started = time.monotonic()
    tasks = shard_tasks(index, task_index=task_index, num_tasks=num_tasks, **settings)
    output_dir, prefix = settings["output_dir"], settings["prefix"]
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
        sidecar = finished_sidecar(task)
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
    sidecars += _write_shards(
        pending,
        index=index,
        workers=workers,
        progress=progress,
        write_fn=write_fn,
        jobs=jobs(pending) if jobs and pending else [job(task) for task in pending] if job else list(pending),
    )
    header = {
        **{key: settings[key] for key in manifest.HEADER_KEYS if key in settings and key != "image_list"},
        "num_shards": index.num_shards,
        "image_list": {
            "path": settings["image_list"],
            "sha256": index.sha256,
            "bytes": index.num_bytes,
            "num_lines": index.num_lines,
        },
    }
    header = {key: header[key] for key in manifest.HEADER_KEYS}
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
    tasks: Sequence[ShardTask],
    *,
    index: ListIndex,
    workers: int,
    progress: bool,
    write_fn: worker_pool.TaskFn,
    jobs: Iterable[Any],
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
        write_fn,
        jobs,
        workers=workers,
        total=sum(index.num_lines_of(task.index) for task in tasks),
        on_result=log_shard,
        progress=progress,
    )
    return results
