"""The writer's bookkeeping files: per-shard sidecars, per-task manifests and the split's manifest.

- ``<shard>.done.json`` (sidecar): written right after its shard is renamed into place; its counts, byte
  size, line range, every skipped image with its reason, and the run's settings. A shard counts as
  finished only when its sidecar exists and matches the file's size and the run's settings.
- ``{prefix}-manifest.task-TTTTT-of-NNNNN.json``: what one task of a multi-machine run wrote.
- ``{prefix}-manifest.json`` (`schema.read_manifest` reads it): the complete split. Each entry of its
  ``shards`` gives the shard's ``file``, ``index``, ``num_records``, ``bytes`` (its size, which a reader
  can check to detect a truncated copy), ``first_line`` and ``end_line`` (1-based, inclusive). Skipped
  images are counted, and the first `MANIFEST_SKIPPED_EXAMPLES` are listed; the sidecars list every one,
  so memory and the manifest stay bounded when millions of downloads failed.
"""

from __future__ import annotations

import collections
import glob
import os
from collections.abc import Sequence

from absl import logging

from data import fileio
from data.records import schema
from data.records.tfds_metadata import write_tfds_metadata

MANIFEST_SKIPPED_EXAMPLES = 1000
SHARD_KEYS: tuple[str, ...] = ("file", "index", "num_records", "bytes", "first_line", "end_line")
# The run's settings every task manifest repeats; tasks that differ in one of them cannot be merged.
HEADER_KEYS: tuple[str, ...] = (
    "prefix",
    "label_format",
    "num_classes",
    "num_shards",
    "jpeg_quality",
    "verify",
    "max_pixels",
    "allow_outside_root",
    "image_list",
)


def sidecar_path(shard_path: str) -> str:
    """``<shard>.done.json`` for ``<shard>.tfrecord``."""
    return shard_path.removesuffix(schema.RECORD_SUFFIX) + ".done.json"


def task_manifest_filename(prefix: str, task_index: int, num_tasks: int) -> str:
    return f"{prefix}-manifest.task-{task_index:05d}-of-{num_tasks:05d}.json"


def compact(sidecar: dict) -> dict:
    """`sidecar` without its skipped list (which stays in its file), with the count instead."""
    return {**sidecar, "skipped": None, "num_skipped": len(sidecar["skipped"])}


def build_manifest(
    sidecars: Sequence[dict],
    *,
    output_dir: str,
    header: dict,
    complete: bool,
    task_index: int,
    num_tasks: int,
) -> dict:
    """The manifest of `compact` sidecars; the skipped examples are read from the sidecar files."""
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
            full = fileio.read_json(sidecar_path(os.path.join(output_dir, sidecar["file"])))
            skipped += full["skipped"][: MANIFEST_SKIPPED_EXAMPLES - len(skipped)]
    return {
        "format_version": schema.MANIFEST_VERSION,
        "complete": complete,
        **header,
        "task_index": task_index,
        "num_tasks": num_tasks,
        "num_records": sum(s["num_records"] for s in sidecars),
        "num_skipped": num_skipped,
        "converted": dict(sorted(converted.items())),
        "shards": [{key: s[key] for key in SHARD_KEYS} for s in sidecars],
        # The first MANIFEST_SKIPPED_EXAMPLES; each shard's `.done.json` sidecar lists all of its own.
        "skipped": skipped,
        "skipped_complete": len(skipped) == num_skipped,
    }


def _read(path: str) -> dict:
    content = fileio.read_json(path)
    if not isinstance(content, dict):
        raise ValueError(f"{path} is missing or not a JSON object")
    return content


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
    parts = [_read(path) for path in paths]
    num_tasks = parts[0]["num_tasks"]
    header = {key: parts[0].get(key) for key in HEADER_KEYS}

    def settings(part: dict) -> dict:
        # The list's content (hash, size) must match, not its path: machines may mount it elsewhere.
        listed = {key: value for key, value in part["image_list"].items() if key != "path"}
        return {
            **{key: part.get(key) for key in HEADER_KEYS},
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
            sidecar = _read(sidecar_path(path))
            size = os.path.getsize(path)
            if (
                size != shard["bytes"]
                or sidecar["bytes"] != size
                or sidecar["num_records"] != shard["num_records"]
            ):
                raise ValueError(
                    f"shard {path}: size or record count differs from its task manifest or sidecar"
                )
            sidecars.append(compact(sidecar))
    indices = sorted(s["index"] for s in sidecars)
    if indices != list(range(header["num_shards"])):
        raise ValueError(f"tasks cover shards {indices}, expected each of 0..{header['num_shards'] - 1} once")
    manifest = build_manifest(
        sidecars, output_dir=output_dir, header=header, complete=True, task_index=0, num_tasks=num_tasks
    )
    fileio.write_json(os.path.join(output_dir, schema.manifest_filename(prefix)), manifest)
    logging.info(
        "merged %d task manifests: %d records in %d shards", num_tasks, manifest["num_records"], len(indices)
    )
    if tfds_metadata:
        write_tfds_metadata(output_dir)
    return manifest
