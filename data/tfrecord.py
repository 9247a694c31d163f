r"""The parallel, crash-safe TFRecord writer: an image list + image folder -> sharded TFRecords + manifest.

    python data/tfrecord.py --image_list=train_im_list.txt --image_root=images/ --output_dir=records/ \
        --label_format=sparse --num_classes=11166 --shards=1024 --workers=16

How it stays correct on a 17.6M-image run:

- Deterministic assignment. The list is split into `shards` contiguous blocks of lines (line i of N goes
  to shard ``i * shards // N``), found by one streaming pass that records only the shards' byte offsets,
  so no process ever holds the list. Records keep list order inside a shard, so the same list always
  gives the same shard files, whatever ``--workers``. (Shards hold neighbouring lines: the input pipeline
  interleaves shards and shuffles, which is where mixing belongs.)
- Whole shards per worker. Each worker process (``--workers``) writes one shard at a time to
  ``<shard>.tmp-<pid>``, fsyncs it, renames it into place and then writes a small sidecar
  ``<shard>.done.json`` (its counts and skipped images), also atomically. A shard counts as finished
  only when its sidecar exists and matches the file's size and this run's settings, so a re-run after
  ``kill -9`` skips finished shards and rewrites the rest: exactly the same records, none lost or doubled.
- Several machines. ``--task_index=t --num_tasks=T`` writes the shards s with ``s % T == t`` and a
  per-task manifest; ``--merge`` then checks that every shard exists with the recorded size and counts and
  writes ``{prefix}-manifest.json``.
- Images never crash the run. A JPEG that Pillow decodes without error is kept byte for byte (no re-encode);
  PNG, GIF, BMP, WebP, TIFF, and CMYK or grayscale JPEGs are converted to RGB JPEG (``--jpeg_quality``,
  95 by default; the original converted PNGs at quality 100); truncated, corrupt, empty, missing and
  non-image files are skipped with the reason (``--on_error=fail`` stops instead): each shard's sidecar
  lists all of its own, the manifest their count and the first ``MANIFEST_SKIPPED_EXAMPLES``, so memory and
  the manifest stay bounded when millions of downloads failed.

``--tfds_metadata`` also writes ``dataset_info.json`` and ``features.json`` so that
``tfds.builder_from_directory(output_dir).as_dataset(split=prefix)`` reads the same files (TFDS is told
our file names through its file-name template; nothing is renamed or copied).
"""

from __future__ import annotations

import collections
import dataclasses
import glob
import hashlib
import io
import json
import multiprocessing
import os
import select
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures

import numpy as np
import tensorflow as tf
from absl import app, flags, logging
from PIL import Image
from tqdm import tqdm

from data import annotations, schema

DEFAULT_JPEG_QUALITY = 95
# Formats whose bytes are kept as they are when they decode to RGB. MPO is the multi-picture JPEG some
# cameras write; its first frame is a baseline JPEG that TensorFlow decodes.
_JPEG_FORMATS = ("JPEG", "MPO")
_JPEG_END = b"\xff\xd9"
VERIFY_MODES: tuple[str, ...] = ("full", "fast")
_HASH_BLOCK = 16 << 20
_PROGRESS_EVERY = 16


class BadImage(ValueError):
    """An image file that cannot go into the dataset; `reason` says why in a few words."""

    def __init__(self, reason: str):
        super().__init__(reason)
        self.reason = reason


@dataclasses.dataclass(frozen=True)
class PreparedImage:
    """What goes into a record for one image.

    Attributes:
      jpeg: The JPEG bytes to store (the original file when it was already a clean RGB JPEG).
      height: Original height in pixels.
      width: Original width in pixels.
      converted_from: None when the bytes are the original file, else what was converted
        (``"PNG"``, ``"JPEG/CMYK"``, ...).
    """

    jpeg: bytes
    height: int
    width: int
    converted_from: str | None


def prepare_image(
    data: bytes, *, jpeg_quality: int = DEFAULT_JPEG_QUALITY, verify: str = "full"
) -> PreparedImage:
    """Validates one image file and returns the JPEG to store.

    Keeping a clean JPEG's original bytes avoids a lossy and slow re-encode. How a JPEG is checked:

    - ``verify="full"``: the whole file is decoded (``Image.load``). Opening alone only parses the header,
      so this is what catches truncated and corrupt files for sure. A JPEG that is kept is decoded at 1/8
      scale (``Image.draft``): libjpeg still decodes its whole entropy-coded stream, where every decode
      error arises, and skips most of the inverse DCT, upsampling and colour conversion, which cannot
      fail; docs/BENCHMARKS.md section 1 (`writer/verify_cost`) measures what this saves.
    - ``verify="fast"``: the header is parsed (markers, size, colour mode) and the file must end with the
      JPEG end-of-image marker (FF D9), which a truncated download lacks; a file that does not end so
      gets the full decode. Mid-stream corruption with an intact end is not caught (libjpeg, and so
      TensorFlow, decode most of it with a warning anyway).

    Args:
      data: The file's bytes.
      jpeg_quality: Quality of the JPEG written for converted images.
      verify: ``full`` or ``fast``, see above.

    Returns:
      A `PreparedImage`.

    Raises:
      BadImage: Empty, not an image, truncated or corrupt.
    """
    if not data:
        raise BadImage("empty file")
    try:
        image = Image.open(io.BytesIO(data))
        image_format, mode, (width, height) = image.format, image.mode, image.size
        keep = image_format in _JPEG_FORMATS and mode == "RGB"
        if keep and verify == "fast" and data.endswith(_JPEG_END):
            return PreparedImage(data, height, width, None)
        if keep:
            image.draft("RGB", (max(1, width // 8), max(1, height // 8)))
            image.load()
            return PreparedImage(data, height, width, None)
        image.load()
        converted = image.convert("RGB")
        out = io.BytesIO()
        converted.save(out, format="JPEG", quality=jpeg_quality)
    except Image.UnidentifiedImageError:
        raise BadImage("not an image (unidentified format)") from None
    except Image.DecompressionBombError as e:
        raise BadImage(f"too many pixels ({e})") from None
    # Pillow's decoders raise many types on corrupt data (OSError, SyntaxError, ValueError, struct.error,
    # EOFError, ...); one bad file among millions must become a reason in the manifest, not a crash.
    except Exception as e:  # noqa: BLE001
        raise BadImage(f"corrupt or truncated {type(e).__name__}: {e}") from None
    source = image_format if image_format not in _JPEG_FORMATS else f"JPEG/{mode}"
    return PreparedImage(out.getvalue(), height, width, source)


def read_image(path: str) -> bytes:
    """The file's bytes, or `BadImage` with the reason when it cannot be read."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except FileNotFoundError:
        raise BadImage("missing file") from None
    except IsADirectoryError:
        raise BadImage("is a directory") from None
    except OSError as e:
        raise BadImage(f"unreadable: {e.strerror or e}") from None


# ---------------------------------------------------------------------------------------------------------
# Splitting the list into shards.
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class ListIndex:
    """Where each shard's lines start in the list file, found without holding the list.

    Attributes:
      sha256: Hash of the list file; every shard and task manifest records it so that shards written from
        a different list are never mixed in.
      num_bytes: Size of the list file.
      num_lines: Lines in the file (blank and bad lines included: they keep their line numbers).
      offsets: num_shards + 1 byte offsets; shard s is ``[offsets[s], offsets[s + 1])``.
      first_lines: num_shards + 1 0-based line numbers aligned with `offsets`.
    """

    sha256: str
    num_bytes: int
    num_lines: int
    offsets: tuple[int, ...]
    first_lines: tuple[int, ...]


def index_list(path: str, num_shards: int) -> ListIndex:
    """Two streaming passes over the list: count lines (and hash), then find the shard boundaries.

    Both passes work on 16 MiB blocks with C-speed primitives (``bytes.count``, numpy), so a 17.6M-line
    list takes seconds and a few tens of MB whatever its size.
    """
    digest = hashlib.sha256()
    newlines = num_bytes = 0
    last = b"\n"
    with open(path, "rb") as f:
        while block := f.read(_HASH_BLOCK):
            digest.update(block)
            newlines += block.count(b"\n")
            num_bytes += len(block)
            last = block[-1:]
    num_lines = newlines + (last != b"\n")
    first_lines = [s * num_lines // num_shards for s in range(num_shards + 1)]
    # Shard s starts right after newline number first_lines[s] - 1 (0-based), or at byte 0 when
    # first_lines[s] == 0: with more shards than lines the leading shards are empty and all start there.
    targets = np.asarray(first_lines[1:-1], dtype=np.int64) - 1
    offsets = [0] * (1 + int(np.count_nonzero(targets < 0)))
    targets = targets[targets >= 0]
    num_found = len(offsets) + targets.size
    seen = 0  # Newlines before the current block.
    position = 0  # Byte offset of the current block.
    with open(path, "rb") as f:
        while len(offsets) < num_found and (block := f.read(_HASH_BLOCK)):
            newline_at = np.flatnonzero(np.frombuffer(block, dtype=np.uint8) == ord("\n"))
            wanted = targets[(targets >= seen) & (targets < seen + newline_at.size)]
            offsets.extend((position + newline_at[wanted - seen] + 1).tolist())
            seen += newline_at.size
            position += len(block)
    if len(offsets) != num_shards:  # Every target newline exists in an unchanged file.
        raise RuntimeError(f"{path} changed while it was being indexed; run again")
    offsets.append(num_bytes)
    return ListIndex(digest.hexdigest(), num_bytes, num_lines, tuple(offsets), tuple(first_lines))


# ---------------------------------------------------------------------------------------------------------
# One shard (runs in a worker process).
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _ShardTask:
    """Everything a worker needs to write one shard; picklable."""

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
    list_sha256: str

    @property
    def path(self) -> str:
        return os.path.join(self.output_dir, schema.shard_filename(self.prefix, self.index, self.num_shards))


def _sidecar_path(shard_path: str) -> str:
    return shard_path.removesuffix(schema.RECORD_SUFFIX) + ".done.json"


# The manifest lists the first skipped images as examples; every shard's sidecar lists all of its own. So the
# writer's memory and the manifest stay bounded however many images of a 17.6M-line list fail.
MANIFEST_SKIPPED_EXAMPLES = 1000


def _compact(sidecar: dict) -> dict:
    """`sidecar` without its skipped list (which stays in its file), with the count instead."""
    return {**sidecar, "skipped": None, "num_skipped": len(sidecar["skipped"])}


def _fsync_file(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_dir(path: str) -> None:
    # Makes the renames themselves durable; not every platform can open a directory.
    try:
        _fsync_file(path)
    except OSError:
        pass


def _atomic_write_json(path: str, content: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(content, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def _run_settings(task: _ShardTask) -> dict:
    """Settings that must match for a finished shard to be reused by a re-run."""
    return {
        "list_sha256": task.list_sha256,
        "label_format": task.label_format,
        "num_classes": task.num_classes,
        "num_shards": task.num_shards,
        "jpeg_quality": task.jpeg_quality,
    }


class _Stopped(RuntimeError):
    """Another shard failed (``on_error="fail"``): abandon this one instead of finishing it."""


# Per-process state of pool workers, set by `_init_worker`: the shared progress counter and the event that
# tells workers to stop. Both are None in the main process (``workers=1`` reports through a callback).
_worker_progress = None
_worker_stop = None


def _exit_when_orphaned(main_pid: int) -> None:
    """Ends this worker as soon as the run's main process is gone (kill -9, OOM killer).

    An orphan must not go on writing shards that a re-run is writing too (its temp file is left behind
    and removed by the re-run). The main process is watched directly: the workers' parent is the
    forkserver, which does NOT exit with the main process, because every worker holds the forkserver's
    "alive" pipe open, so waiting to be re-parented would wait forever.
    """
    try:
        # A pidfd turns readable when the process exits (also while it is an unreaped zombie), and cannot
        # be fooled by pid reuse. It is opened while the main process is surely alive (it is starting us).
        pidfd = os.pidfd_open(main_pid)
    except (AttributeError, OSError):  # Not Linux >= 5.3: poll the pid.
        pidfd = None
    if pidfd is not None:
        select.select([pidfd], [], [])
        os._exit(1)
    while True:
        try:
            os.kill(main_pid, 0)
        except ProcessLookupError:
            os._exit(1)
        except PermissionError:  # The pid was reused by another user's process.
            os._exit(1)
        time.sleep(1.0)


def _init_worker(progress, stop, main_pid: int) -> None:
    global _worker_progress, _worker_stop
    _worker_progress, _worker_stop = progress, stop
    threading.Thread(target=_exit_when_orphaned, args=(main_pid,), daemon=True).start()


def _report_progress(count: int, callback: Callable[[int], None] | None) -> None:
    if callback is not None:
        callback(count)
    elif _worker_progress is not None:
        with _worker_progress.get_lock():
            _worker_progress.value += count
    if _worker_stop is not None and _worker_stop.is_set():
        raise _Stopped("stopping: another shard failed")


def _write_shard(task: _ShardTask, progress: Callable[[int], None] | None = None) -> dict:
    """Writes one shard (temp file, fsync, rename, then sidecar) and returns its sidecar."""
    kind = "single" if task.label_format == "int64" else "multi"
    final = task.path
    tmp = f"{final}.tmp-{os.getpid()}"
    skipped: list[dict] = []
    converted: collections.Counter[str] = collections.Counter()
    num_records = pending = 0
    try:
        with tf.io.TFRecordWriter(tmp) as writer, open(task.image_list, "rb") as listing:
            listing.seek(task.start)
            position, line_no = task.start, task.first_line
            while position < task.end:
                raw = listing.readline()
                position += len(raw)
                line_no += 1
                pending += 1
                if pending == _PROGRESS_EVERY:
                    _report_progress(pending, progress)
                    pending = 0
                if not raw.strip():
                    continue
                path = ""
                try:
                    path, labels = annotations.parse_line(
                        raw.decode("utf-8"), kind=kind, num_classes=task.num_classes
                    )
                    image = prepare_image(
                        read_image(os.path.join(task.image_root, path)),
                        jpeg_quality=task.jpeg_quality,
                        verify=task.verify,
                    )
                except (BadImage, ValueError) as e:
                    reason = e.reason if isinstance(e, BadImage) else f"bad line: {e}"
                    path = path or raw.decode("utf-8", "replace").split(maxsplit=1)[0]
                    if task.on_error == "fail":
                        # A plain ValueError: it must cross the process boundary intact.
                        raise ValueError(f"{task.image_list}:{line_no}: {path or '?'}: {reason}") from None
                    skipped.append({"line": line_no, "path": path, "reason": reason})
                    continue
                if image.converted_from:
                    converted[image.converted_from] += 1
                writer.write(
                    schema.encode_example(
                        image=image.jpeg,
                        name=path,
                        height=image.height,
                        width=image.width,
                        label=labels if kind == "single" else dict(labels),
                        label_format=task.label_format,
                        num_classes=task.num_classes,
                    )
                )
                num_records += 1
        _report_progress(pending, progress)
        _fsync_file(tmp)
        os.replace(tmp, final)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    sidecar = {
        "file": os.path.basename(final),
        "index": task.index,
        "num_records": num_records,
        "bytes": os.path.getsize(final),
        "first_line": task.first_line + 1,
        "end_line": line_no,
        "converted": dict(sorted(converted.items())),
        "skipped": skipped,
        **_run_settings(task),
    }
    _atomic_write_json(_sidecar_path(final), sidecar)
    _fsync_dir(task.output_dir)
    return sidecar


def _finished_sidecar(task: _ShardTask) -> dict | None:
    """The sidecar of a shard a previous run finished with the same settings, else None."""
    sidecar_path = _sidecar_path(task.path)
    try:
        with open(sidecar_path, encoding="utf-8") as f:
            sidecar = json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None
    settings = {key: sidecar.get(key) for key in _run_settings(task)}
    if settings != _run_settings(task):
        raise ValueError(
            f"{sidecar_path} was written with other settings ({settings} != {_run_settings(task)}); "
            "use a new --output_dir or delete that run's files"
        )
    if not os.path.exists(task.path) or os.path.getsize(task.path) != sidecar.get("bytes"):
        return None
    return sidecar


# ---------------------------------------------------------------------------------------------------------
# Orchestration.
# ---------------------------------------------------------------------------------------------------------


def _pool_context() -> multiprocessing.context.BaseContext:
    """Workers come from a forkserver that imported this module once.

    Forking the caller directly is unsafe once TensorFlow has started its thread pools, and plain spawn
    would import TensorFlow again in every worker; the forkserver is a clean process that pays that
    import once and forks cheap workers from it.
    """
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload([__name__ if __name__ != "__main__" else "data.tfrecord"])
    return context


def _run_tasks(tasks: Sequence[_ShardTask], *, workers: int, total_lines: int, progress: bool) -> list[dict]:
    """Writes the shards, in this process or in a pool, with a progress bar (rate and ETA)."""
    results: list[dict] = []
    bar = tqdm(total=total_lines, unit="img", desc="writing", disable=not progress, smoothing=0.05)
    started = time.monotonic()

    def log_shard(sidecar: dict) -> None:
        results.append(_compact(sidecar))
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

    try:
        if workers == 1:
            for task in tasks:
                log_shard(_write_shard(task, progress=bar.update))
            return results
        context = _pool_context()
        counter, stop = context.Value("q", 0), context.Event()
        # concurrent.futures rather than multiprocessing.Pool: a worker that dies (OOM killer, segfault in a
        # decoder) raises BrokenProcessPool here instead of hanging the run forever.
        with futures.ProcessPoolExecutor(
            min(workers, len(tasks)),
            mp_context=context,
            initializer=_init_worker,
            initargs=(counter, stop, os.getpid()),
        ) as executor:
            running = {executor.submit(_write_shard, task) for task in tasks}
            try:
                while running:
                    done, running = futures.wait(running, timeout=0.5, return_when=futures.FIRST_COMPLETED)
                    for future in done:
                        log_shard(future.result())
                    bar.update(counter.value - bar.n)
            except BaseException:
                stop.set()
                for future in running:
                    future.cancel()
                raise
        return results
    finally:
        bar.close()


def _task_manifest_filename(prefix: str, task_index: int, num_tasks: int) -> str:
    return f"{prefix}-manifest.task-{task_index:05d}-of-{num_tasks:05d}.json"


def _build_manifest(
    sidecars: Sequence[dict],
    *,
    output_dir: str,
    header: dict,
    complete: bool,
    task_index: int,
    num_tasks: int,
) -> dict:
    """The manifest of `_compact` sidecars; the skipped examples are read from the sidecar files."""
    sidecars = sorted(sidecars, key=lambda s: s["index"])
    converted: collections.Counter[str] = collections.Counter()
    for sidecar in sidecars:
        converted.update(sidecar["converted"])
    num_skipped = sum(sidecar["num_skipped"] for sidecar in sidecars)
    skipped: list[dict] = []
    for sidecar in sidecars:
        if len(skipped) >= MANIFEST_SKIPPED_EXAMPLES:
            break
        if sidecar["num_skipped"]:
            with open(_sidecar_path(os.path.join(output_dir, sidecar["file"])), encoding="utf-8") as f:
                skipped += json.load(f)["skipped"][: MANIFEST_SKIPPED_EXAMPLES - len(skipped)]
    return {
        "format_version": schema.MANIFEST_VERSION,
        "complete": complete,
        **header,
        "task_index": task_index,
        "num_tasks": num_tasks,
        "num_records": sum(s["num_records"] for s in sidecars),
        "num_skipped": num_skipped,
        "converted": dict(sorted(converted.items())),
        "shards": [
            {key: s[key] for key in ("file", "index", "num_records", "bytes", "first_line", "end_line")}
            for s in sidecars
        ],
        # The first MANIFEST_SKIPPED_EXAMPLES; each shard's `.done.json` sidecar lists all of its own.
        "skipped": skipped,
        "skipped_complete": len(skipped) == num_skipped,
    }


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
      jpeg_quality: Quality of JPEGs written for converted (non-JPEG, CMYK, grayscale) images.
      verify: How JPEGs are checked: ``full`` decode, or ``fast`` (header + end marker); see
        `prepare_image`.
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
        _ShardTask(
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
            list_sha256=index.sha256,
        )
        for s in range(task_index, shards, num_tasks)
    ]
    complete = num_tasks == 1
    manifest_path = os.path.join(
        output_dir,
        schema.manifest_filename(prefix)
        if complete
        else _task_manifest_filename(prefix, task_index, num_tasks),
    )
    # Temp files a killed run left (shards, sidecars, this task's manifest); their shards are rewritten.
    for final in [manifest_path] + [p for task in tasks for p in (task.path, _sidecar_path(task.path))]:
        for leftover in glob.glob(glob.escape(final) + ".tmp-*"):
            os.remove(leftover)
    sidecars, pending = [], []
    for task in tasks:
        sidecar = _finished_sidecar(task)
        if sidecar is None:
            pending.append(task)
        else:
            sidecars.append(_compact(sidecar))
    if sidecars:
        logging.info(
            "%d of this task's %d shards already finished; writing %d",
            len(sidecars),
            len(tasks),
            len(pending),
        )
    if pending:
        total_lines = sum(index.first_lines[t.index + 1] - index.first_lines[t.index] for t in pending)
        sidecars += _run_tasks(pending, workers=workers, total_lines=total_lines, progress=progress)

    header = {
        "prefix": prefix,
        "label_format": label_format,
        "num_classes": num_classes,
        "num_shards": shards,
        "jpeg_quality": jpeg_quality,
        "verify": verify,
        "image_list": {
            "path": image_list,
            "sha256": index.sha256,
            "bytes": index.num_bytes,
            "num_lines": index.num_lines,
        },
    }
    manifest = _build_manifest(
        sidecars,
        output_dir=output_dir,
        header=header,
        complete=complete,
        task_index=task_index,
        num_tasks=num_tasks,
    )
    _atomic_write_json(manifest_path, manifest)
    logging.info(
        "%s: %d records, %d skipped, %d converted, in %.1fs",
        os.path.basename(manifest_path),
        manifest["num_records"],
        manifest["num_skipped"],
        sum(manifest["converted"].values()),
        time.monotonic() - started,
    )
    if complete and tfds_metadata:
        write_tfds_metadata(output_dir)
    return manifest


def merge_manifests(output_dir: str, prefix: str = "train", *, tfds_metadata: bool = False) -> dict:
    """Checks the per-task manifests of a multi-machine run and writes the final manifest.

    Every task must have finished with the same list and settings, every shard must exist once with the
    size and record count its sidecar recorded.

    Args:
      output_dir: The shared output folder of all tasks.
      prefix: The split's prefix.
      tfds_metadata: Also write TFDS's metadata files.

    Returns:
      The final manifest (also written as ``{prefix}-manifest.json``).

    Raises:
      FileNotFoundError: A task manifest or a shard is missing.
      ValueError: Tasks disagree on settings, or a shard's size or count does not match.
    """
    output_dir = os.path.abspath(output_dir)
    pattern = os.path.join(glob.escape(output_dir), f"{glob.escape(prefix)}-manifest.task-*-of-*.json")
    paths = sorted(glob.glob(pattern))
    if not paths:
        raise FileNotFoundError(f"no task manifests match {pattern}")
    parts = []
    for path in paths:
        with open(path, encoding="utf-8") as f:
            parts.append(json.load(f))
    num_tasks = parts[0]["num_tasks"]
    header_keys = (
        "prefix",
        "label_format",
        "num_classes",
        "num_shards",
        "jpeg_quality",
        "verify",
        "image_list",
    )
    header = {key: parts[0][key] for key in header_keys}

    def settings(part: dict) -> dict:
        # The list's content (hash, size) must match, not its path: machines may mount it elsewhere.
        listed = {key: value for key, value in part["image_list"].items() if key != "path"}
        return {
            **{key: part[key] for key in header_keys},
            "image_list": listed,
            "num_tasks": part["num_tasks"],
        }

    for path, part in zip(paths, parts, strict=True):
        if settings(part) != settings(parts[0]):
            raise ValueError(f"{path} was written with other settings than {paths[0]}")
    found = sorted(part["task_index"] for part in parts)
    if found != list(range(num_tasks)):
        missing = sorted(set(range(num_tasks)) - set(found))
        raise FileNotFoundError(f"task manifests missing for tasks {missing} of {num_tasks} in {output_dir}")
    sidecars = []
    for part in parts:
        for shard in part["shards"]:
            path = os.path.join(output_dir, shard["file"])
            if not os.path.exists(path):
                raise FileNotFoundError(f"shard {path} listed by task {part['task_index']} is missing")
            with open(_sidecar_path(path), encoding="utf-8") as f:
                sidecar = json.load(f)
            size = os.path.getsize(path)
            if (
                size != shard["bytes"]
                or sidecar["bytes"] != size
                or sidecar["num_records"] != shard["num_records"]
            ):
                raise ValueError(
                    f"shard {path}: size or record count differs from its task manifest or sidecar"
                )
            sidecars.append(_compact(sidecar))
    indices = sorted(s["index"] for s in sidecars)
    if indices != list(range(header["num_shards"])):
        raise ValueError(f"tasks cover shards {indices}, expected each of 0..{header['num_shards'] - 1} once")
    manifest = _build_manifest(
        sidecars, output_dir=output_dir, header=header, complete=True, task_index=0, num_tasks=num_tasks
    )
    _atomic_write_json(os.path.join(output_dir, schema.manifest_filename(prefix)), manifest)
    logging.info(
        "merged %d task manifests: %d records in %d shards", num_tasks, manifest["num_records"], len(indices)
    )
    if tfds_metadata:
        write_tfds_metadata(output_dir)
    return manifest


def write_tfds_metadata(output_dir: str) -> None:
    """Writes TFDS's dataset_info.json and features.json for every complete split in `output_dir`.

    TFDS learns our file names (``{split}-{i:05d}-of-{n:05d}.tfrecord``) from the template stored per
    split, and the record counts from our manifests, so no file is read, renamed or copied. The features
    describe the records exactly: the dense label is a float32 tensor stored as raw bytes (TFDS's BYTES
    encoding is the reference's little-endian layout), the sparse label is the ``label/indices`` and
    ``label/confidences`` pair (TFDS flattens nested features with ``/``), the int64 label a ClassLabel.
    TFDS needs every split of the folder at once, so all manifests there must share one label format.
    """
    import tensorflow_datasets as tfds  # Optional: only this feature needs it.

    manifests = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), "*-manifest.json"))):
        prefix = os.path.basename(path).removesuffix("-manifest.json")
        manifests[prefix] = schema.read_manifest(output_dir, prefix)
    formats = {(m.label_format, m.num_classes) for m in manifests.values()}
    if len(formats) != 1:
        raise ValueError(
            f"splits in {output_dir} differ in label format or classes ({formats}); TFDS needs one"
        )
    ((label_format, num_classes),) = formats
    if label_format == "dense":
        label = tfds.features.Tensor(
            shape=(num_classes,), dtype=np.float32, encoding=tfds.features.Encoding.BYTES
        )
    elif label_format == "sparse":
        label = {
            "indices": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "confidences": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        }
    else:
        label = tfds.features.ClassLabel(num_classes=num_classes)
    features = tfds.features.FeaturesDict(
        {
            schema.IMAGE_KEY: tfds.features.Image(encoding_format="jpeg"),
            schema.HEIGHT_KEY: tfds.features.Scalar(dtype=np.int64),
            schema.WIDTH_KEY: tfds.features.Scalar(dtype=np.int64),
            schema.NAME_KEY: tfds.features.Text(),
            schema.LABEL_KEY: label,
        }
    )
    template = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"
    split_infos = [
        tfds.core.SplitInfo(
            name=prefix,
            shard_lengths=list(m.counts),
            num_bytes=sum(os.path.getsize(f) for f in m.files),
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=tfds.core.Path(output_dir),
                template=template,
                split=prefix,
                filetype_suffix="tfrecord",
            ),
        )
        for prefix, m in manifests.items()
    ]
    tfds.folder_dataset.write_metadata(
        data_dir=output_dir,
        features=features,
        split_infos=split_infos,
        filename_template=template,
        check_data=False,
        description="Tencent ML-Images records written by data/tfrecord.py (see its manifest).",
    )
    logging.info("wrote TFDS metadata for splits %s in %s", [s.name for s in split_infos], output_dir)


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
        "JPEG quality for converted images (PNG/GIF/BMP/WebP, CMYK or grayscale JPEG); clean RGB JPEGs are stored byte for byte.",
        lower_bound=1,
        upper_bound=100,
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
        tfds_metadata=FLAGS.tfds_metadata,
        progress=FLAGS.progress,
    )


if __name__ == "__main__":
    _define_flags()
    app.run(main)
