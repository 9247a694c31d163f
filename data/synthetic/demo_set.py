"""The built-in demo set written: its hierarchy, JPEGs, image lists and records (`make_demo_dataset`).

data/demo.py is its command line; data/synthetic/demo_scenes.py draws the scenes.
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import time
from collections.abc import Iterator

import numpy as np
from absl import logging

from data import fileio
from data.labels import annotations
from data.labels.hierarchy import Hierarchy, load_hierarchy, write_hierarchy
from data.records import schema
from data.shards import dataset_writer
from data.synthetic.demo_scenes import (
    CLASS_INDEX,
    CLASS_NAMES,
    COUNT_TAGS,
    NUM_CLASSES,
    SPLITS,
    demo_hierarchy,
    make_example,
)

DEMO_LABEL_FORMATS: tuple[str, ...] = schema.MULTI_LABEL_FORMATS


HIERARCHY_FILENAME = "dictionary_and_semantic_hierarchy.txt"


PARAMS_FILENAME = "demo.json"


SUMMARY_FILENAME = "summary.json"


IMAGE_DIR = "images"


_PARAMS_VERSION = 1


def list_filename(prefix: str) -> str:
    """``{prefix}_im_list.txt``, the image list of a split (the release's naming)."""
    return f"{prefix}_im_list.txt"


@dataclasses.dataclass(frozen=True)
class DemoDataset:
    """A written demo set.

    Attributes:
      data_dir: The folder with both splits' records (``read_manifest(data_dir, "train" / "val")``).
      hierarchy_path: The hierarchy in the release's TSV format (`load_hierarchy`).
      train_list: The training image list (``filename idx:conf ...``), names relative to `image_root`.
      val_list: The validation image list.
      image_root: Folder of the JPEGs.
      num_classes: Number of classes (30).
      class_names: Class names by index.
      num_train: Training images.
      num_val: Validation images.
      image_size: Side of the square images in pixels.
      seed: The generation seed.
      label_format: ``sparse`` or ``dense`` records.
      train_class_counts: Training images per class (tags with confidence >= 0.5, ancestors included).
      reused: True when the call found the set already complete and wrote nothing (not compared).
    """

    data_dir: str
    hierarchy_path: str
    train_list: str
    val_list: str
    image_root: str
    num_classes: int
    class_names: tuple[str, ...]
    num_train: int
    num_val: int
    image_size: int
    seed: int
    label_format: str
    train_class_counts: tuple[int, ...]
    reused: bool = dataclasses.field(default=False, compare=False)


def _dataset_from_record(output_dir: str, record: dict, *, reused: bool) -> DemoDataset:
    params = record["params"]
    return DemoDataset(
        data_dir=output_dir,
        hierarchy_path=os.path.join(output_dir, HIERARCHY_FILENAME),
        train_list=os.path.join(output_dir, list_filename("train")),
        val_list=os.path.join(output_dir, list_filename("val")),
        image_root=os.path.join(output_dir, IMAGE_DIR),
        num_classes=NUM_CLASSES,
        class_names=tuple(record["class_names"]),
        num_train=params["num_train"],
        num_val=params["num_val"],
        image_size=params["image_size"],
        seed=params["seed"],
        label_format=params["label_format"],
        train_class_counts=tuple(record["train_class_counts"]),
        reused=reused,
    )


def _is_complete(output_dir: str, record: dict | None, params: dict) -> bool:
    """Whether `output_dir` holds a finished demo set written with `params`."""
    if record is None or record.get("params") != params or not record.get("complete"):
        return False
    if not os.path.exists(os.path.join(output_dir, HIERARCHY_FILENAME)):
        return False
    try:
        for prefix, count in (("train", params["num_train"]), ("val", params["num_val"])):
            manifest = schema.read_manifest(output_dir, prefix)
            if (manifest.num_records, manifest.label_format) != (count, params["label_format"]):
                return False
    except (FileNotFoundError, ValueError):
        return False
    return True


def _remove_demo_files(output_dir: str) -> None:
    """Deletes what a demo run writes (and nothing else) so that a set with other parameters can be written."""
    patterns = [PARAMS_FILENAME, HIERARCHY_FILENAME, SUMMARY_FILENAME]
    for prefix in SPLITS:
        patterns += [
            list_filename(prefix),
            f"{prefix}-?????-of-?????{schema.RECORD_SUFFIX}*",
            f"{prefix}-?????-of-?????.done.json",
            f"{prefix}-manifest*.json",
        ]
    for pattern in patterns:
        for path in glob.glob(os.path.join(glob.escape(output_dir), pattern)):
            os.remove(path)
    for prefix in SPLITS:
        shutil.rmtree(os.path.join(output_dir, IMAGE_DIR, prefix), ignore_errors=True)


def _write_split(
    output_dir: str, prefix: str, *, count: int, options: DemoParams, hierarchy: Hierarchy
) -> np.ndarray:
    """Draws the split's images and list, then writes its records; returns its class counts (conf >= 0.5)."""
    image_root = os.path.join(output_dir, IMAGE_DIR)
    os.makedirs(os.path.join(image_root, prefix), exist_ok=True)
    class_counts = np.zeros(NUM_CLASSES, np.int64)

    def entries() -> Iterator[annotations.Entry]:
        for index in range(count):
            jpeg, _, tags = make_example(
                seed=options.seed, prefix=prefix, index=index, image_size=options.image_size
            )
            name = f"{prefix}/{index:06d}.jpg"
            # Never a truncated JPEG after a crash; no fsync: a rerun redraws the split's images anyway.
            fileio.write_bytes(os.path.join(image_root, name), jpeg, fsync=False)
            labels = hierarchy.propagate(tags)
            class_counts[[i for i, c in labels.items() if c >= 0.5]] += 1
            yield annotations.Entry(name, tuple(labels.items()), index + 1)

    image_list = os.path.join(output_dir, list_filename(prefix))
    annotations.write_entries(image_list, entries())
    dataset_writer.write_dataset(
        image_list=image_list,
        image_root=image_root,
        output_dir=output_dir,
        label_format=options.label_format,
        num_classes=NUM_CLASSES,
        shards=options.shards,
        workers=options.workers,
        prefix=prefix,
        on_error="fail",  # Our own images: any failure is a bug, not a bad download.
        progress=False,
    )
    return class_counts


@dataclasses.dataclass(frozen=True)
class DemoParams:
    """What a demo set is written with (the keyword arguments of `make_demo_dataset` and the script's flags).

    All but `workers` determine the set's content: `content` is what ``demo.json`` records and a rerun
    compares.

    Attributes:
      num_train: Training images.
      num_val: Validation images.
      image_size: Side of the square images in pixels (>= 16).
      seed: Generation seed.
      shards: Record shards per split.
      workers: Writer processes (`data.shards.dataset_writer.write_dataset`); they change only the speed.
      label_format: ``sparse`` (this project's compact labels) or ``dense`` (the reference layout).

    Raises:
      ValueError: an unknown label format, a count below 1 or an image size below 16.
    """

    num_train: int = 2000
    num_val: int = 500
    image_size: int = 64
    seed: int = 0
    shards: int = 4
    workers: int = 1
    label_format: str = "sparse"

    def __post_init__(self) -> None:
        if self.label_format not in DEMO_LABEL_FORMATS:
            raise ValueError(f"label_format must be one of {DEMO_LABEL_FORMATS}, got {self.label_format!r}")
        if min(self.num_train, self.num_val, self.shards, self.workers) < 1:
            raise ValueError(
                "num_train, num_val, shards and workers must be >= 1, got "
                f"{self.num_train}, {self.num_val}, {self.shards}, {self.workers}"
            )
        if self.image_size < 16:
            raise ValueError(f"image_size must be >= 16 pixels, got {self.image_size}")

    def content(self) -> dict:
        """The parameters that determine the set's content (recorded in ``demo.json``, compared on reuse)."""
        # `workers` is not a parameter of the content, so it is not recorded or compared.
        return {k: v for k, v in dataclasses.asdict(self).items() if k != "workers"}


def _read_record(output_dir: str) -> dict | None:
    """The folder's ``demo.json`` when it is one a demo run wrote (an object with ``params``), else None."""
    record = fileio.read_json(os.path.join(output_dir, PARAMS_FILENAME))
    return record if isinstance(record, dict) and isinstance(record.get("params"), dict) else None


def _check_writable(output_dir: str, record: dict | None, params: dict, *, overwrite: bool) -> None:
    """Raises unless the demo may write `params` into `output_dir`: a new or empty folder, or the demo's own.

    A folder without the demo's record is someone else's (a user's `--data_dir`, a real data set): the demo
    never mixes its shards into it, nor deletes anything there.
    """
    if record is not None:
        if record["params"] != params and not overwrite:
            raise ValueError(
                f"{output_dir} holds a demo set with other parameters ({record['params']} != {params}); "
                "use another output_dir or overwrite=True"
            )
        return
    if glob.glob(os.path.join(glob.escape(output_dir), "*-manifest*.json")):
        raise ValueError(f"{output_dir} holds records that are not a demo set ({PARAMS_FILENAME} missing)")
    if os.path.isdir(output_dir) and os.listdir(output_dir):
        raise ValueError(
            f"{output_dir} is not empty and is not a demo set ({PARAMS_FILENAME} missing): the demo writes only "
            "into a new or empty folder or into its own; give another folder"
        )
    if os.path.exists(output_dir) and not os.path.isdir(output_dir):
        raise ValueError(f"{output_dir} is a file, not a folder")


def _inspect_output_dir(output_dir: str, params: dict, *, overwrite: bool) -> tuple[dict | None, bool]:
    """The folder's demo record and whether it is complete with `params` (the content parameters).

    Raises:
      ValueError: the folder is incomplete and may not be written (`_check_writable`).
    """
    record = _read_record(output_dir)
    complete = _is_complete(output_dir, record, params)
    if not complete:
        _check_writable(output_dir, record, params, overwrite=overwrite)
    return record, complete


def check_output_dir(output_dir: str | os.PathLike, *, overwrite: bool = False, **params: int | str) -> None:
    """Raises the `ValueError` that `make_demo_dataset` with these arguments would raise, writing nothing.

    For callers that must fail together: under Horovod every rank checks before the chief writes, so that
    a refused folder stops all ranks instead of leaving the others waiting at a barrier.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    _inspect_output_dir(output_dir, DemoParams(**params).content(), overwrite=overwrite)


def make_demo_dataset(
    output_dir: str | os.PathLike, *, overwrite: bool = False, **params: int | str
) -> DemoDataset:
    """Writes the demo set (hierarchy, JPEGs, image lists, ``train``/``val`` records) or reuses it.

    Deterministic: the same parameters give the same bytes (``workers`` only changes the speed). If
    `output_dir` already holds a complete set with the same parameters (``demo.json``), nothing is
    written; an interrupted run with the same parameters is redone (finished shards are kept).

    Args:
      output_dir: Output folder (created if needed).
      overwrite: Replace a demo set written with other parameters (only the demo's own files are removed).
      **params: The fields of `DemoParams` (num_train, num_val, image_size, seed, shards, workers,
        label_format); those not given take its defaults.

    Returns:
      The `DemoDataset`.

    Raises:
      ValueError: Bad arguments; `output_dir` is not empty and holds no demo set (``demo.json``), or holds a
        demo set with other parameters (and not `overwrite`).
      TypeError: a keyword that is not a field of `DemoParams`.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    options = DemoParams(**params)
    content = options.content()
    record, complete = _inspect_output_dir(output_dir, content, overwrite=overwrite)
    if complete:
        logging.info("demo set in %s is complete with these parameters; reusing it", output_dir)
        return _dataset_from_record(output_dir, record, reused=True)
    if record is not None and record["params"] != content:  # `overwrite`, checked above
        _remove_demo_files(output_dir)

    os.makedirs(output_dir, exist_ok=True)
    started = time.monotonic()
    record_path = os.path.join(output_dir, PARAMS_FILENAME)
    record = {
        "format_version": _PARAMS_VERSION,
        "params": content,
        "complete": False,
        "class_names": list(CLASS_NAMES),
    }
    fileio.write_json(record_path, record)
    hierarchy = demo_hierarchy()
    write_hierarchy(os.path.join(output_dir, HIERARCHY_FILENAME), hierarchy)
    counts = {
        prefix: _write_split(output_dir, prefix, count=count, options=options, hierarchy=hierarchy)
        for prefix, count in (("train", options.num_train), ("val", options.num_val))
    }
    record |= {
        "complete": True,
        "train_class_counts": counts["train"].tolist(),
        "val_class_counts": counts["val"].tolist(),
        "generation_seconds": round(time.monotonic() - started, 2),
    }
    fileio.write_json(record_path, record)
    logging.info(
        "wrote the demo set (%d + %d images, %d classes) to %s in %.1fs",
        options.num_train,
        options.num_val,
        NUM_CLASSES,
        output_dir,
        record["generation_seconds"],
    )
    return _dataset_from_record(output_dir, record, reused=False)


COUNT_CLASSES: tuple[str, ...] = COUNT_TAGS  # class i of the single-label view: i + 1 objects


def make_single_label_view(dataset: DemoDataset, output_dir: str | os.PathLike, *, shards: int = 4) -> str:
    """int64 records of the demo images labelled with their number of objects (4 classes); returns the dir.

    The images on disk and the multi-label lists of `dataset` are reused: each image has exactly one of the
    count tags, whose position in `COUNT_CLASSES` becomes its class index. Written by our writer
    (`label_format=int64`), as ImageNet would be for finetune.py.
    """
    output_dir = os.path.abspath(os.fspath(output_dir))
    os.makedirs(output_dir, exist_ok=True)
    count_index = {CLASS_INDEX[name]: i for i, name in enumerate(COUNT_CLASSES)}
    for prefix in SPLITS:
        if glob.glob(os.path.join(glob.escape(output_dir), f"{prefix}-manifest.json")):
            continue
        entries = (
            annotations.Entry(
                entry.path, next(count_index[i] for i, _ in entry.labels if i in count_index), n
            )
            for n, entry in enumerate(
                annotations.iter_entries(os.path.join(dataset.data_dir, list_filename(prefix))), start=1
            )
        )
        image_list = os.path.join(output_dir, f"{prefix}_single_label.txt")
        annotations.write_entries(image_list, entries, kind="single")
        dataset_writer.write_dataset(
            image_list=image_list,
            image_root=dataset.image_root,
            output_dir=output_dir,
            label_format="int64",
            num_classes=len(COUNT_CLASSES),
            shards=shards,
            prefix=prefix,
            on_error="fail",
            progress=False,
        )
    return output_dir


BASELINE_KS = (1, 3, 5)


def summarize(dataset: DemoDataset, *, wall_seconds: float) -> dict:
    """The CLI's summary: parameters, class table, split sizes and the most-frequent baseline's ranking."""
    hierarchy = load_hierarchy(dataset.hierarchy_path)
    record = fileio.read_json(os.path.join(dataset.data_dir, PARAMS_FILENAME)) or {}
    counts = np.asarray(dataset.train_class_counts)
    ranked = np.argsort(-counts, kind="stable")
    return {
        "data_dir": dataset.data_dir,
        "hierarchy": dataset.hierarchy_path,
        "label_format": dataset.label_format,
        "image_size": dataset.image_size,
        "seed": dataset.seed,
        "num_classes": dataset.num_classes,
        "max_depth": int(hierarchy.depth.max()),
        "images": {"train": dataset.num_train, "val": dataset.num_val},
        "tags_per_train_image": float(counts.sum() / dataset.num_train),
        "classes": [
            {
                "index": int(i),
                "name": dataset.class_names[i],
                "parent": int(hierarchy.parents[i]),
                "depth": int(hierarchy.depth[i]),
                "train_images": int(counts[i]),
            }
            for i in range(dataset.num_classes)
        ],
        "baseline_ranking": [dataset.class_names[i] for i in ranked[: max(BASELINE_KS)].tolist()],
        "reused": dataset.reused,
        "generation_seconds": record.get("generation_seconds"),
        "wall_seconds": round(wall_seconds, 2),
    }
