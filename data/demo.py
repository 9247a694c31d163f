r"""The demo's data set: the README's demo trains on it; written like the real data, reused when present.

    python data/demo.py --output_dir=/tmp/mlimages_demo            # 2,000 train + 500 val images, 64 px

The pictures and their 30 classes (a forest of depth 5, long-tailed, soft tags for small shapes) are
data/synthetic/demo_scenes.py's. Everything is written with the project's own machinery, exactly as for the real data:
the hierarchy with `data.labels.hierarchy.write_hierarchy` (the release's TSV, read back by `load_hierarchy`), the
image lists (``filename idx:conf ...``) with `data.labels.annotations.write_entries`, the TFRecords of both splits
with `data.tfrecord.write_dataset` into one folder (prefixes ``train`` and ``val``, each with its manifest for
`data.records.schema.read_manifest`). The JPEGs stay in ``images/`` so the lists can be re-written by hand.

A seed gives the same bytes on every run, and a finished folder with the same parameters (recorded in
``demo.json``, the first file a demo run writes) is returned as it is. The demo writes only into a new or
empty folder or one holding its own ``demo.json``: never into a folder of someone else's files.

Run as a script it prints the set's summary and the most frequent classes (the baseline's ranking); the
baseline's metrics on the validation split are computed by the training layer (training/demo.py's
`most_frequent_baseline`) and reported by `train.py --recipe=demo` (data/ never imports training/).
"""

from __future__ import annotations

import dataclasses
import glob
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence

import numpy as np
from absl import logging

from data import fileio, tfrecord
from data.labels import annotations
from data.labels.hierarchy import Hierarchy, load_hierarchy, write_hierarchy
from data.records import schema
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


# ---------------------------------------------------------------------------------------------------------
# Writing a demo set.
# ---------------------------------------------------------------------------------------------------------


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
    tfrecord.write_dataset(
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
      workers: Writer processes (`data.tfrecord.write_dataset`); they change only the speed.
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


# ---------------------------------------------------------------------------------------------------------
# A single-label view, for trying finetune.py on the demo images.
# ---------------------------------------------------------------------------------------------------------

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
        tfrecord.write_dataset(
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


# ---------------------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------------------

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


def _print_summary(summary: dict) -> None:
    images = summary["images"]
    print(f"demo set: {summary['data_dir']} ({'reused' if summary['reused'] else 'generated'})")
    print(
        f"  {summary['num_classes']} classes, max depth {summary['max_depth']}, "
        f"{images['train']} train + {images['val']} val images of {summary['image_size']} px, "
        f"{summary['tags_per_train_image']:.2f} tags per train image ({summary['label_format']} labels)"
    )
    print(f"  generation {summary['generation_seconds']}s, this call {summary['wall_seconds']}s")
    print("  train images per class:")
    for row in summary["classes"]:
        print(
            f"    {row['index']:3d} {'  ' * row['depth']}{row['name']:<{30 - 2 * row['depth']}} {row['train_images']:6d}"
        )
    print(f"  most frequent classes (the baseline's ranking): {', '.join(summary['baseline_ranking'])}")


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "output_dir",
        None,
        "Folder for the demo set: the hierarchy, images/, the train/val image lists, the train-*/val-* "
        "TFRecord shards with their manifests, demo.json (parameters) and summary.json.",
        required=True,
    )
    flags.DEFINE_integer("num_train", DemoParams.num_train, "Training images.", lower_bound=1)
    flags.DEFINE_integer("num_val", DemoParams.num_val, "Validation images.", lower_bound=1)
    flags.DEFINE_integer(
        "image_size", DemoParams.image_size, "Side of the square RGB JPEGs in pixels.", lower_bound=16
    )
    flags.DEFINE_integer(
        "seed", DemoParams.seed, "Generation seed: the same seed and parameters always give the same bytes."
    )
    flags.DEFINE_integer("shards", DemoParams.shards, "TFRecord shards per split.", lower_bound=1)
    flags.DEFINE_integer(
        "workers",
        DemoParams.workers,
        "Processes writing shards (data/tfrecord.py); does not change the output.",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "label_format",
        DemoParams.label_format,
        list(DEMO_LABEL_FORMATS),
        "sparse = label/indices + label/confidences (this project's layout); dense = the reference's "
        "float32[num_classes] bytes. Both parse to the same tensors.",
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace a demo set with other parameters in --output_dir (only the demo's own files are removed). "
        "A complete set with the same parameters is always reused as it is.",
    )
    flags.DEFINE_string(
        "single_label_dir",
        None,
        "Also write a single-label view (int64 records; the class is the number of objects, 4 classes) of "
        "the same images here, for trying finetune.py on the demo.",
    )
    flags.DEFINE_string(
        "summary_json", None, f"Where to write the summary (default: --output_dir/{SUMMARY_FILENAME})."
    )


def main(argv: Sequence[str]) -> None:
    """The script: writes (or reuses) the set, writes and prints its summary."""
    from absl import flags

    del argv
    f = flags.FLAGS
    started = time.monotonic()
    try:
        params = {field.name: f[field.name].value for field in dataclasses.fields(DemoParams)}
        dataset = make_demo_dataset(f.output_dir, overwrite=f.overwrite, **params)
    except ValueError as e:  # a refused folder or bad parameters: one line, not a traceback
        sys.exit(f"error: {e}")
    summary = summarize(dataset, wall_seconds=time.monotonic() - started)
    fileio.write_json(f.summary_json or os.path.join(dataset.data_dir, SUMMARY_FILENAME), summary)
    _print_summary(summary)
    if f.single_label_dir:
        print(
            f"single-label view ({len(COUNT_CLASSES)} classes): {make_single_label_view(dataset, f.single_label_dir)}"
        )


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
