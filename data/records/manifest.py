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
- A joined manifest (`join_manifests`): one split made of several written ones, e.g. ML-Images' ImageNet
  part (written from the archive) and its Open Images part (downloaded), each in its own folder. It lists
  the parts' shards by their paths relative to its own folder, so readers (`schema.read_manifest`,
  training) need nothing new, and adds ``sources``: each part's counts, skip reasons and list.
"""

from __future__ import annotations

import collections
import glob
import os
import re
from collections.abc import Sequence

from absl import logging

from data import fileio
from data.records import schema
from data.records.tfds_metadata import write_tfds_metadata

MANIFEST_SKIPPED_EXAMPLES = 1000
_REASON_DETAILS = re.compile(r"\s*[:(]")
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
    "max_side",
    "allow_outside_root",
    "image_list",
)


def sidecar_path(shard_path: str) -> str:
    """``<shard>.done.json`` for ``<shard>.tfrecord``."""
    return shard_path.removesuffix(schema.RECORD_SUFFIX) + ".done.json"


def task_manifest_filename(prefix: str, task_index: int, num_tasks: int) -> str:
    return f"{prefix}-manifest.task-{task_index:05d}-of-{num_tasks:05d}.json"


def reason_category(reason: str) -> str:
    """A skip reason without its details (``too many pixels: 1x2 = ...`` -> ``too many pixels``,
    ``bad line: class index 11166 ...`` -> ``bad line``), for counts per reason."""
    return _REASON_DETAILS.split(reason, maxsplit=1)[0] or "unknown"


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


# ---------------------------------------------------------------------------------------------------------
# Joining written splits into one (ML-Images: the ImageNet part and the Open Images part).
# ---------------------------------------------------------------------------------------------------------

# What a joined manifest keeps of each part's run settings, per source (they may differ between parts).
_SOURCE_SETTINGS: tuple[str, ...] = ("jpeg_quality", "verify", "max_pixels", "allow_outside_root")


def join_manifests(
    output_dir: str | os.PathLike[str],
    parts: Sequence[str | os.PathLike[str]],
    *,
    prefix: str = "train",
    label_format: str,
    num_classes: int,
) -> dict:
    """Writes ``{output_dir}/{prefix}-manifest.json``: one split made of the `prefix` splits of `parts`.

    Each part is a folder that the writer (data/tfrecord.py) or the one pass (data/download.py
    --output_records) finished with this `prefix`. Nothing is copied or renamed: the joined manifest lists
    every part's shards by their path relative to `output_dir` (``imagenet/train-00000-of-01024.tfrecord``),
    so keep the parts inside `output_dir` (subfolders) to move the whole set as one folder. Its
    ``sources`` section gives, per part (named by that relative path), the records, the skipped lines with
    their count per reason (read from every shard's sidecar, so complete), the converted images, the list
    it was written from and its settings. Re-running it after a part changed writes it again; it writes
    one file, atomically.

    The label space is checked here, once for the whole set: every part must have been written with
    `label_format` and `num_classes`, and the writer refuses (skips with the reason ``bad line``) every
    list line with a class index at or above its ``--num_classes``, so every label of the joined split is
    below `num_classes`.

    Args:
      output_dir: Folder of the joined manifest (training's ``--data_dir``).
      parts: The parts' folders, in the order their shards are listed.
      prefix: The split (``train``, ``val``): the parts' prefix and the joined manifest's.
      label_format: The label format every part must have been written with.
      num_classes: The class count every part must have been written with (11,166 for ML-Images).

    Returns:
      The joined manifest.

    Raises:
      FileNotFoundError: A part has no complete manifest, or a shard it lists is missing.
      ValueError: (one line) no parts, a part given twice, two parts written from the same list, a part
        written with another label format or class count, a shard of the wrong size, or
        ``{prefix}-manifest.json`` in `output_dir` belonging to a written split (not a join) that the
        joined manifest would replace.
    """
    schema.check_label_format(label_format)
    output_dir = os.path.abspath(os.fspath(output_dir))
    folders = [os.path.abspath(os.fspath(part)) for part in parts]
    if not folders:
        raise ValueError("no parts to join")
    target = os.path.join(output_dir, schema.manifest_filename(prefix))
    previous = fileio.read_json(target)
    if os.path.exists(target) and not (isinstance(previous, dict) and "sources" in previous):
        raise ValueError(
            f"{target} exists and is not a joined manifest: it belongs to a split written there, which the "
            "join would hide; give the parts their own folders (e.g. subfolders) or another --output_dir"
        )
    names = [os.path.relpath(folder, output_dir) for folder in folders]
    sources: dict[str, dict] = {}
    lists: dict[str, str] = {}
    shards: list[dict] = []
    skipped: list[dict] = []
    converted: collections.Counter[str] = collections.Counter()
    for folder, name in zip(folders, names, strict=True):
        if name in sources:
            raise ValueError(f"part {folder} is given twice")
        path = os.path.join(folder, schema.manifest_filename(prefix))
        written = schema.read_manifest(folder, prefix)  # complete, and every shard there at its size
        raw = _read(path)
        if written.label_format != label_format:
            raise ValueError(
                f"{path}: written with --label_format={written.label_format}, but the join asks for "
                f"{label_format}: write every part with the same --label_format"
            )
        if written.num_classes != num_classes:
            raise ValueError(
                f"{path}: written with --num_classes={written.num_classes}, but the join asks for "
                f"{num_classes}: its labels may lie outside [0, {num_classes}); write every part with "
                f"--num_classes={num_classes}"
            )
        image_list = raw.get("image_list") or {}
        digest = image_list.get("sha256")
        if digest and digest in lists:
            raise ValueError(
                f"{path} and {lists[digest]} were written from the same list (sha256 {digest[:12]}): "
                "its images would be in the joined split twice"
            )
        lists[digest or path] = path
        reasons: collections.Counter[str] = collections.Counter()
        for shard in raw["shards"]:
            shard_path = os.path.join(folder, shard["file"])
            sidecar = _read(sidecar_path(shard_path))
            reasons.update(reason_category(s["reason"]) for s in sidecar["skipped"])
            shards.append(
                {
                    **{key: shard[key] for key in SHARD_KEYS},
                    "file": os.path.relpath(shard_path, output_dir),
                    "index": len(shards),
                    "source": name,
                }
            )
        if sum(reasons.values()) != written.num_skipped:
            raise ValueError(
                f"{path} counts {written.num_skipped} skipped lines but its shards' sidecars list "
                f"{sum(reasons.values())}: the folder holds files of another run"
            )
        part_converted = raw.get("converted", {})
        converted.update(part_converted)
        room = MANIFEST_SKIPPED_EXAMPLES - len(skipped)
        skipped += [{**s, "source": name} for s in raw.get("skipped", [])[:room]]
        sources[name] = {
            "manifest": os.path.relpath(path, output_dir),
            "image_list": image_list,
            "num_shards": len(raw["shards"]),
            "num_records": written.num_records,
            "num_skipped": written.num_skipped,
            "skipped_by_reason": dict(reasons.most_common()),
            "converted": part_converted,
            **{key: raw.get(key) for key in _SOURCE_SETTINGS},
        }
    num_skipped = sum(source["num_skipped"] for source in sources.values())
    joined = {
        "format_version": schema.MANIFEST_VERSION,
        "complete": True,
        "prefix": prefix,
        "label_format": label_format,
        "num_classes": num_classes,
        "num_shards": len(shards),
        "num_records": sum(s["num_records"] for s in shards),
        "num_skipped": num_skipped,
        "converted": dict(sorted(converted.items())),
        "shards": shards,
        "skipped": skipped,
        "skipped_complete": len(skipped) == num_skipped,
        "sources": sources,
    }
    fileio.write_json(target, joined)
    logging.info(
        "%s: %d records, %d skipped, from %d sources",
        target,
        joined["num_records"],
        num_skipped,
        len(sources),
    )
    for name, source in sources.items():
        logging.info("  %s", describe_source(name, source))
    return joined


def describe_source(name: str, source: dict) -> str:
    """One line of a joined manifest's ``sources`` entry: ``imagenet: 10 records, 2 skipped (reason: n)``."""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in source["skipped_by_reason"].items())
    return (
        f"{name}: {source['num_records']} records, {source['num_skipped']} skipped"
        + (f" ({reasons})" if reasons else "")
        + f", {source['num_shards']} shards"
    )
