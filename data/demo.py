r"""A procedural multi-label image set with its own semantic hierarchy: the data the README's demo trains on.

    python data/demo.py --output_dir=/tmp/mlimages_demo            # 2,000 train + 500 val images, 64 px

Each image (RGB JPEG, 64 x 64 by default) shows 1-4 shapes on a textured, noisy, low-saturation
background. The image is split into a 2 x 2 grid and every shape sits inside its own cell, so shapes never
overlap and every tag is visible in the pixels:

- shape kind: ``circle``, ``square``, ``triangle``, ``diamond``, ``ring``, ``star`` (a hexagram);
- colour: ``red``, ``blue``, ``green``, ``yellow``, ``orange``, ``purple`` (saturated palette colours that the
  grey-ish background never comes close to);
- four "colour shape" pairs (``red circle``, ``blue square``, ``green triangle``, ``yellow star``), children of
  their shape, from frequent to rare;
- the count: ``one object`` or ``two``/``three``/``four objects`` (children of ``several objects``), and
  ``multicoloured`` when the shapes have two or more colours.

Like ML-Images the 30 classes form a forest (roots ``thing``, ``colour``, ``one object``, ``several objects``)
and every tag implies its ancestors (`Hierarchy.propagate`), e.g. ``blue square`` -> ``square`` ->
``quadrilateral`` -> ``polygon`` -> ``shape`` -> ``thing`` (depth 5). Kinds, colours and counts are drawn
from skewed distributions, so class frequencies are long-tailed (``thing`` on every image, ``yellow star``
on under 2%) without being degenerate. The release's lists also hold soft tags (confidence 0.9 or 0.8);
here the tags of a small shape are soft, which is also fully determined by the drawing: a shape of radius
below 0.09 of the image gets its kind, colour and pair tags at 0.8, below 0.10 at 0.9, else 1.0 (an
ancestor takes the largest confidence that implies it).

Everything is written with the project's own machinery, exactly as for the real data: the hierarchy with
`data.hierarchy.write_hierarchy` (the release's TSV, read back by `load_hierarchy`), the image lists
(``filename idx:conf ...``) with `data.annotations.write_entries`, the TFRecords of both splits with
`data.tfrecord.write_dataset` into one folder (prefixes ``train`` and ``val``, each with its manifest for
`data.schema.read_manifest`). The JPEGs stay in ``images/`` so the lists can be re-written by hand.

Every image is drawn from its own generator seeded by ``(seed, split, index)``, so a seed gives the same
bytes on every run (and image i does not depend on how many images the split has), and a finished folder
with the same parameters (recorded in ``demo.json``) is returned as it is.

`most_frequent_baseline` scores the validation set as if a model always predicted the training class
frequencies, evaluated by `training.metrics.MultiLabelMetrics` like a real model: the floor that the
demo model's F1@k must beat.
"""

from __future__ import annotations

import dataclasses
import glob
import io
import json
import math
import os
import shutil
import time
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf
from absl import logging
from PIL import Image

from data import annotations, schema, tfrecord
from data.hierarchy import Hierarchy, load_hierarchy, write_hierarchy
from training.metrics import MultiLabelMetrics

# ---------------------------------------------------------------------------------------------------------
# The classes and what is drawn.
# ---------------------------------------------------------------------------------------------------------

# (class name, parent name or None for a root); the row is the class index.
CLASS_TABLE: tuple[tuple[str, str | None], ...] = (
    ("thing", None),
    ("shape", "thing"),
    ("round shape", "shape"),
    ("circle", "round shape"),
    ("ring", "round shape"),
    ("polygon", "shape"),
    ("quadrilateral", "polygon"),
    ("square", "quadrilateral"),
    ("diamond", "quadrilateral"),
    ("triangle", "polygon"),
    ("star", "polygon"),
    ("red circle", "circle"),
    ("blue square", "square"),
    ("green triangle", "triangle"),
    ("yellow star", "star"),
    ("colour", None),
    ("warm colour", "colour"),
    ("red", "warm colour"),
    ("orange", "warm colour"),
    ("yellow", "warm colour"),
    ("cool colour", "colour"),
    ("green", "cool colour"),
    ("blue", "cool colour"),
    ("purple", "cool colour"),
    ("multicoloured", "colour"),
    ("one object", None),
    ("several objects", None),
    ("two objects", "several objects"),
    ("three objects", "several objects"),
    ("four objects", "several objects"),
)
CLASS_NAMES: tuple[str, ...] = tuple(name for name, _ in CLASS_TABLE)
NUM_CLASSES = len(CLASS_TABLE)
CLASS_INDEX: dict[str, int] = {name: i for i, name in enumerate(CLASS_NAMES)}
# Longest root-to-leaf path (edges): thing -> shape -> polygon -> quadrilateral -> square -> blue square.
MAX_DEPTH = 5

# Shape kinds and colours with their probabilities per shape (skewed: the source of the long tail).
SHAPE_KINDS: tuple[str, ...] = ("circle", "square", "triangle", "diamond", "ring", "star")
SHAPE_PROBS: tuple[float, ...] = (0.32, 0.24, 0.18, 0.12, 0.08, 0.06)
PALETTE: dict[str, tuple[int, int, int]] = {
    "red": (215, 35, 35),
    "blue": (35, 75, 215),
    "green": (35, 160, 60),
    "yellow": (235, 210, 30),
    "orange": (240, 130, 20),
    "purple": (140, 45, 175),
}
COLOUR_NAMES: tuple[str, ...] = tuple(PALETTE)
COLOUR_PROBS: tuple[float, ...] = (0.30, 0.24, 0.18, 0.13, 0.09, 0.06)
COUNT_PROBS: tuple[float, ...] = (0.4, 0.3, 0.2, 0.1)  # 1, 2, 3, 4 shapes
COUNT_TAGS: tuple[str, ...] = ("one object", "two objects", "three objects", "four objects")

# Geometry in fractions of the image side. A shape's "radius" r sets its size; every kind fits in a disc
# of radius 1.25 r, which with R_MAX stays inside its quarter of the image (no overlaps, no clipping).
R_MIN, R_MAX = 0.08, 0.18
_EXTENT = 1.25
_CELL_MARGIN = 0.01
# Soft tags: below these radii a shape's own tags get confidence 0.8, resp. 0.9.
SOFT_RADII: tuple[tuple[float, float], ...] = ((0.09, 0.8), (0.10, 0.9))

COLOUR_JITTER = 12.0  # +- per channel and shape
PIXEL_NOISE = 4.0  # std of the per-pixel noise over the whole image
JPEG_QUALITY = 95  # 4:4:4 chroma, so that colours survive at small sizes
_SUPERSAMPLE = 2  # anti-aliasing: coverage is the mean over 2 x 2 sub-pixels

SPLITS: dict[str, int] = {"train": 0, "val": 1}  # prefix -> the split's seed component
DEMO_LABEL_FORMATS: tuple[str, ...] = schema.MULTI_LABEL_FORMATS
HIERARCHY_FILENAME = "dictionary_and_semantic_hierarchy.txt"
PARAMS_FILENAME = "demo.json"
IMAGE_DIR = "images"
_PARAMS_VERSION = 1


def list_filename(prefix: str) -> str:
    """``{prefix}_im_list.txt``, the image list of a split (the release's naming)."""
    return f"{prefix}_im_list.txt"


def demo_hierarchy() -> Hierarchy:
    """The demo's class forest (`CLASS_TABLE`), with ids ``d00000000``, ``d00000001``, ..."""
    parents = [CLASS_INDEX[parent] if parent is not None else -1 for _, parent in CLASS_TABLE]
    return Hierarchy.from_parents(
        parents, names=CLASS_NAMES, wnids=[f"d{i:08d}" for i in range(NUM_CLASSES)], source="demo"
    )


# ---------------------------------------------------------------------------------------------------------
# Drawing one image.
# ---------------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class DrawnShape:
    """One shape of a scene; positions and sizes in fractions of the image side.

    Attributes:
      kind: One of `SHAPE_KINDS`.
      colour: One of `COLOUR_NAMES`.
      cx: Centre, x (left to right).
      cy: Centre, y (top to bottom).
      radius: Size; see `R_MIN`, `R_MAX`.
      angle: Rotation of triangles and stars, radians.
      rgb: The palette colour plus this shape's jitter.
    """

    kind: str
    colour: str
    cx: float
    cy: float
    radius: float
    angle: float
    rgb: tuple[float, float, float]

    @property
    def confidence(self) -> float:
        """The confidence of this shape's own tags: soft for small shapes (`SOFT_RADII`)."""
        for limit, confidence in SOFT_RADII:
            if self.radius < limit:
                return confidence
        return 1.0


def _rng(seed: int, prefix: str, index: int) -> np.random.Generator:
    return np.random.default_rng([seed, SPLITS[prefix], index])


def draw_scene(rng: np.random.Generator) -> tuple[DrawnShape, ...]:
    """Draws the shapes of one image: how many, which cells, kinds, colours, sizes, positions."""
    count = 1 + int(rng.choice(len(COUNT_PROBS), p=COUNT_PROBS))
    cells = rng.permutation(4)[:count]
    shapes = []
    for cell in cells.tolist():
        kind = SHAPE_KINDS[int(rng.choice(len(SHAPE_KINDS), p=SHAPE_PROBS))]
        colour = COLOUR_NAMES[int(rng.choice(len(COLOUR_NAMES), p=COLOUR_PROBS))]
        radius = float(rng.uniform(R_MIN, R_MAX))
        slack = 0.25 - _EXTENT * radius - _CELL_MARGIN
        cx, cy = (np.array([cell % 2, cell // 2]) + 0.5) / 2 + rng.uniform(-slack, slack, size=2)
        angle = float(rng.uniform(0.0, 2.0 * math.pi))
        rgb = np.asarray(PALETTE[colour], np.float64) + rng.uniform(-COLOUR_JITTER, COLOUR_JITTER, size=3)
        shapes.append(DrawnShape(kind, colour, float(cx), float(cy), radius, angle, tuple(rgb.tolist())))
    return tuple(shapes)


def scene_tags(shapes: Sequence[DrawnShape]) -> dict[int, float]:
    """The tags the drawing implies, before propagation to ancestors."""
    tags: dict[int, float] = {}

    def add(name: str, confidence: float) -> None:
        index = CLASS_INDEX[name]
        tags[index] = max(tags.get(index, 0.0), confidence)

    for shape in shapes:
        add(shape.kind, shape.confidence)
        add(shape.colour, shape.confidence)
        pair = f"{shape.colour} {shape.kind}"
        if pair in CLASS_INDEX:
            add(pair, shape.confidence)
    add(COUNT_TAGS[len(shapes) - 1], 1.0)
    if len({shape.colour for shape in shapes}) > 1:
        add("multicoloured", 1.0)
    return tags


def _interpolation_matrix(size: int, knots: int) -> np.ndarray:
    """[size, knots] weights of linear interpolation from `knots` evenly spaced values to `size` pixels."""
    position = (np.arange(size) + 0.5) / size * (knots - 1)
    left = np.minimum(np.floor(position).astype(np.int64), knots - 2)
    frac = position - left
    weights = np.zeros((size, knots))
    weights[np.arange(size), left] = 1.0 - frac
    weights[np.arange(size), left + 1] = frac
    return weights


def _background(rng: np.random.Generator, size: int) -> np.ndarray:
    """float[size, size, 3]: grey level + blotches + stripes + gradient, slightly tinted (low saturation)."""
    y, x = (np.mgrid[0:size, 0:size] + 0.5) / size
    base = rng.uniform(70.0, 180.0)
    tint = rng.uniform(-10.0, 10.0, size=3)
    weights = _interpolation_matrix(size, 5)
    blotches = weights @ rng.normal(0.0, 14.0, size=(5, 5)) @ weights.T
    theta, frequency, phase = rng.uniform(0, math.pi), rng.uniform(2.0, 6.0), rng.uniform(0, 2 * math.pi)
    stripes = rng.uniform(0.0, 10.0) * np.sin(
        2 * math.pi * frequency * (x * math.cos(theta) + y * math.sin(theta)) + phase
    )
    gx, gy = rng.uniform(-20.0, 20.0, size=2)
    luminance = base + blotches + stripes + gx * (x - 0.5) + gy * (y - 0.5)
    return luminance[..., None] + tint


def _triangle(u: np.ndarray, v: np.ndarray, circumradius: float, angle: float) -> np.ndarray:
    """Inside an equilateral triangle centred at 0 with a vertex at `angle`: three half-planes."""
    inside = np.ones(u.shape, dtype=bool)
    for k in range(3):
        normal = angle + math.pi / 3 + 2 * math.pi * k / 3  # towards the midpoint of edge k
        inside &= u * math.cos(normal) + v * math.sin(normal) <= circumradius / 2
    return inside


def _shape_mask(shape: DrawnShape, u: np.ndarray, v: np.ndarray, size: int) -> np.ndarray:
    """bool mask on the sub-pixel grid; u, v are sub-pixel centres minus the shape's centre, in pixels."""
    r = shape.radius * size
    if shape.kind == "circle":
        return u * u + v * v <= r * r
    if shape.kind == "ring":
        d2 = u * u + v * v
        return (d2 <= r * r) & (d2 >= (0.55 * r) ** 2)
    if shape.kind == "square":
        return np.maximum(np.abs(u), np.abs(v)) <= 0.85 * r
    if shape.kind == "diamond":
        return np.abs(u) + np.abs(v) <= 1.2 * r
    if shape.kind == "triangle":
        return _triangle(u, v, _EXTENT * r, shape.angle)
    if shape.kind == "star":  # hexagram: two triangles
        return _triangle(u, v, _EXTENT * r, shape.angle) | _triangle(
            u, v, _EXTENT * r, shape.angle + math.pi / 3
        )
    raise ValueError(f"unknown shape kind {shape.kind!r}")


def render(shapes: Sequence[DrawnShape], rng: np.random.Generator, size: int) -> np.ndarray:
    """uint8[size, size, 3]: the background from `rng`, the anti-aliased shapes, then pixel noise."""
    image = _background(rng, size)
    sub = (np.arange(size * _SUPERSAMPLE) + 0.5) / _SUPERSAMPLE  # sub-pixel centres, in pixels
    for shape in shapes:
        u = sub[None, :] - shape.cx * size
        v = sub[:, None] - shape.cy * size
        mask = _shape_mask(shape, *np.broadcast_arrays(u, v), size)
        alpha = mask.reshape(size, _SUPERSAMPLE, size, _SUPERSAMPLE).mean(axis=(1, 3))[..., None]
        image = image * (1.0 - alpha) + np.asarray(shape.rgb) * alpha
    image += rng.normal(0.0, PIXEL_NOISE, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8)


def encode_jpeg(pixels: np.ndarray) -> bytes:
    """The demo's JPEG encoding (quality 95, no chroma subsampling); deterministic."""
    out = io.BytesIO()
    Image.fromarray(pixels, mode="RGB").save(out, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return out.getvalue()


def make_example(
    *, seed: int, prefix: str, index: int, image_size: int
) -> tuple[bytes, tuple[DrawnShape, ...], dict[int, float]]:
    """Image `index` of split `prefix`: its JPEG, its shapes and its tags (before propagation)."""
    rng = _rng(seed, prefix, index)
    shapes = draw_scene(rng)
    return encode_jpeg(render(shapes, rng, image_size)), shapes, scene_tags(shapes)


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


def _atomic_write_json(path: str, content: dict) -> None:
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(content, f, indent=1)
    os.replace(tmp, path)


def _read_json(path: str) -> dict | None:
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (FileNotFoundError, json.JSONDecodeError):
        return None


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
    patterns = [PARAMS_FILENAME, HIERARCHY_FILENAME, "summary.json"]
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
    output_dir: str, prefix: str, *, count: int, params: dict, hierarchy: Hierarchy
) -> np.ndarray:
    """Draws the split's images and list, then writes its records; returns its class counts (conf >= 0.5)."""
    image_root = os.path.join(output_dir, IMAGE_DIR)
    os.makedirs(os.path.join(image_root, prefix), exist_ok=True)
    class_counts = np.zeros(NUM_CLASSES, np.int64)

    def entries() -> Iterator[annotations.Entry]:
        for index in range(count):
            jpeg, _, tags = make_example(
                seed=params["seed"], prefix=prefix, index=index, image_size=params["image_size"]
            )
            name = f"{prefix}/{index:06d}.jpg"
            with open(os.path.join(image_root, name), "wb") as f:
                f.write(jpeg)
            labels = hierarchy.propagate(tags)
            class_counts[[i for i, c in labels.items() if c >= 0.5]] += 1
            yield annotations.Entry(name, tuple(labels.items()), index + 1)

    image_list = os.path.join(output_dir, list_filename(prefix))
    annotations.write_entries(image_list, entries())
    tfrecord.write_dataset(
        image_list=image_list,
        image_root=image_root,
        output_dir=output_dir,
        label_format=params["label_format"],
        num_classes=NUM_CLASSES,
        shards=params["shards"],
        workers=params["workers"],
        prefix=prefix,
        on_error="fail",  # Our own images: any failure is a bug, not a bad download.
        progress=False,
    )
    return class_counts


def make_demo_dataset(
    output_dir: str | os.PathLike,
    *,
    num_train: int = 2000,
    num_val: int = 500,
    image_size: int = 64,
    seed: int = 0,
    shards: int = 4,
    workers: int = 1,
    label_format: str = "sparse",
    overwrite: bool = False,
) -> DemoDataset:
    """Writes the demo set (hierarchy, JPEGs, image lists, ``train``/``val`` records) or reuses it.

    Deterministic: the same parameters give the same bytes (``workers`` only changes the speed). If
    `output_dir` already holds a complete set with the same parameters (``demo.json``), nothing is
    written; an interrupted run with the same parameters is redone (finished shards are kept).

    Args:
      output_dir: Output folder (created if needed).
      num_train: Training images.
      num_val: Validation images.
      image_size: Side of the square images in pixels (>= 16).
      seed: Generation seed.
      shards: Record shards per split.
      workers: Writer processes (`data.tfrecord.write_dataset`).
      label_format: ``sparse`` (this project's compact labels) or ``dense`` (the reference layout).
      overwrite: Replace a demo set written with other parameters (only the demo's own files are removed).

    Returns:
      The `DemoDataset`.

    Raises:
      ValueError: Bad arguments; `output_dir` holds a demo set with other parameters (and not
        `overwrite`), or records that are not a demo set.
    """
    if label_format not in DEMO_LABEL_FORMATS:
        raise ValueError(f"label_format must be one of {DEMO_LABEL_FORMATS}, got {label_format!r}")
    if num_train < 1 or num_val < 1 or shards < 1 or workers < 1:
        raise ValueError(
            f"num_train, num_val, shards and workers must be >= 1, got {num_train}, {num_val}, {shards}, {workers}"
        )
    if image_size < 16:
        raise ValueError(f"image_size must be >= 16 pixels, got {image_size}")
    output_dir = os.path.abspath(os.fspath(output_dir))
    # `workers` is not a parameter of the content, so it is not compared.
    params = {
        "num_train": num_train,
        "num_val": num_val,
        "image_size": image_size,
        "seed": seed,
        "shards": shards,
        "label_format": label_format,
    }
    record_path = os.path.join(output_dir, PARAMS_FILENAME)
    record = _read_json(record_path)
    if _is_complete(output_dir, record, params):
        logging.info("demo set in %s is complete with these parameters; reusing it", output_dir)
        return _dataset_from_record(output_dir, record, reused=True)
    if record is not None and record.get("params") != params:
        if not overwrite:
            raise ValueError(
                f"{output_dir} holds a demo set with other parameters ({record.get('params')} != {params}); "
                "use another output_dir or overwrite=True"
            )
        _remove_demo_files(output_dir)
    elif record is None and glob.glob(os.path.join(glob.escape(output_dir), "*-manifest*.json")):
        raise ValueError(f"{output_dir} holds records that are not a demo set ({PARAMS_FILENAME} missing)")

    os.makedirs(output_dir, exist_ok=True)
    started = time.monotonic()
    record = {
        "format_version": _PARAMS_VERSION,
        "params": params,
        "complete": False,
        "class_names": list(CLASS_NAMES),
    }
    _atomic_write_json(record_path, record)
    hierarchy = demo_hierarchy()
    write_hierarchy(os.path.join(output_dir, HIERARCHY_FILENAME), hierarchy)
    counts = {
        prefix: _write_split(
            output_dir, prefix, count=count, params=params | {"workers": workers}, hierarchy=hierarchy
        )
        for prefix, count in (("train", num_train), ("val", num_val))
    }
    record |= {
        "complete": True,
        "train_class_counts": counts["train"].tolist(),
        "val_class_counts": counts["val"].tolist(),
        "generation_seconds": round(time.monotonic() - started, 2),
    }
    _atomic_write_json(record_path, record)
    logging.info(
        "wrote the demo set (%d + %d images, %d classes) to %s in %.1fs",
        num_train,
        num_val,
        NUM_CLASSES,
        output_dir,
        record["generation_seconds"],
    )
    return _dataset_from_record(output_dir, record, reused=False)


# ---------------------------------------------------------------------------------------------------------
# A single-label view, for trying finetune.py on the demo images.
# ---------------------------------------------------------------------------------------------------------

COUNT_CLASSES = ("one object", "two objects", "three objects", "four objects")


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
# The most-frequent-classes baseline.
# ---------------------------------------------------------------------------------------------------------


def label_batches(data_dir: str | os.PathLike, prefix: str, *, batch_size: int = 256) -> tf.data.Dataset:
    """The split's labels, float32[B, num_classes] batches parsed from its records (vectorised)."""
    manifest = schema.read_manifest(data_dir, prefix)

    def parse(serialized: tf.Tensor) -> tf.Tensor:
        return schema.parse_records(
            serialized, label_format=manifest.label_format, num_classes=manifest.num_classes
        )[schema.LABEL_KEY]

    return tf.data.TFRecordDataset(list(manifest.files)).batch(batch_size).map(parse)


def class_frequencies(
    data_dir: str | os.PathLike, prefix: str = "train", *, label_threshold: float = 0.5
) -> np.ndarray:
    """float64[num_classes]: the fraction of the split's images where each class is a positive."""
    num_classes = schema.read_manifest(data_dir, prefix).num_classes
    positives = np.zeros(num_classes, np.float64)
    num_images = 0
    for labels in label_batches(data_dir, prefix):
        positives += np.sum(labels.numpy() >= label_threshold, axis=0)
        num_images += labels.shape[0]
    if num_images == 0:
        raise ValueError(f"{data_dir} ({prefix}) has no records")
    return positives / num_images


def most_frequent_baseline(
    data_dir: str | os.PathLike,
    *,
    topk: Sequence[int] = (1, 3, 5),
    label_threshold: float = 0.5,
    train_prefix: str = "train",
    eval_prefix: str = "val",
) -> dict:
    """Metrics on `eval_prefix` of a "model" that scores every image with the training class frequencies.

    It always predicts the k most frequent training classes (ties: lower class index, as for a model), and
    is evaluated by `MultiLabelMetrics` on the records, exactly like a model's sigmoid scores: the floor
    for the demo model's F1@k. (Its mAP is each class's prevalence: constant scores rank nothing.)

    Args:
      data_dir: A folder with both splits' records, e.g. `DemoDataset.data_dir`.
      topk: The k of the top-k metrics.
      label_threshold: Labels at or above it are positives (for the frequencies and the metrics).
      train_prefix: Split whose class frequencies are the scores.
      eval_prefix: Split that is evaluated.

    Returns:
      `MultiLabelMetrics.result()`: ``precision@k``, ``recall@k``, ``f1@k``, ``instance_f1@k``, ``mAP`` and counts.
    """
    scores = tf.constant(
        class_frequencies(data_dir, train_prefix, label_threshold=label_threshold), tf.float32
    )
    num_classes = int(scores.shape[0])
    metrics = MultiLabelMetrics(num_classes, ks=topk, label_threshold=label_threshold)
    for labels in label_batches(data_dir, eval_prefix):
        if labels.shape[1] != num_classes:
            raise ValueError(f"{eval_prefix} has {labels.shape[1]} classes, {train_prefix} {num_classes}")
        metrics.update(tf.broadcast_to(scores, tf.shape(labels)), labels)
    return metrics.result()


# ---------------------------------------------------------------------------------------------------------
# CLI.
# ---------------------------------------------------------------------------------------------------------

SUMMARY_FILENAME = "summary.json"
BASELINE_KS = (1, 3, 5)


def summarize(dataset: DemoDataset, baseline: dict, *, wall_seconds: float) -> dict:
    """The CLI's summary: parameters, class table, split sizes and the baseline."""
    hierarchy = load_hierarchy(dataset.hierarchy_path)
    record = _read_json(os.path.join(dataset.data_dir, PARAMS_FILENAME)) or {}
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
        "most_frequent_baseline": baseline,
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
    baseline = summary["most_frequent_baseline"]
    print(f"  most-frequent baseline on val (ranking: {', '.join(summary['baseline_ranking'])}):")
    for k in BASELINE_KS:
        print(
            f"    k={k}: F1 {baseline[f'f1@{k}']:.4f}  precision {baseline[f'precision@{k}']:.4f}  "
            f"recall {baseline[f'recall@{k}']:.4f}"
        )


def _define_flags() -> None:
    from absl import flags

    flags.DEFINE_string(
        "output_dir",
        None,
        "Folder for the demo set: the hierarchy, images/, the train/val image lists, the train-*/val-* "
        "TFRecord shards with their manifests, demo.json (parameters) and summary.json.",
        required=True,
    )
    flags.DEFINE_integer("num_train", 2000, "Training images.", lower_bound=1)
    flags.DEFINE_integer("num_val", 500, "Validation images.", lower_bound=1)
    flags.DEFINE_integer("image_size", 64, "Side of the square RGB JPEGs in pixels.", lower_bound=16)
    flags.DEFINE_integer(
        "seed", 0, "Generation seed: the same seed and parameters always give the same bytes."
    )
    flags.DEFINE_integer("shards", 4, "TFRecord shards per split.", lower_bound=1)
    flags.DEFINE_integer(
        "workers",
        1,
        "Processes writing shards (data/tfrecord.py); does not change the output.",
        lower_bound=1,
    )
    flags.DEFINE_enum(
        "label_format",
        "sparse",
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
    from absl import flags

    del argv
    f = flags.FLAGS
    started = time.monotonic()
    dataset = make_demo_dataset(
        f.output_dir,
        num_train=f.num_train,
        num_val=f.num_val,
        image_size=f.image_size,
        seed=f.seed,
        shards=f.shards,
        workers=f.workers,
        label_format=f.label_format,
        overwrite=f.overwrite,
    )
    baseline = most_frequent_baseline(dataset.data_dir, topk=BASELINE_KS)
    summary = summarize(dataset, baseline, wall_seconds=time.monotonic() - started)
    _atomic_write_json(f.summary_json or os.path.join(dataset.data_dir, SUMMARY_FILENAME), summary)
    _print_summary(summary)
    if f.single_label_dir:
        print(
            f"single-label view ({len(COUNT_CLASSES)} classes): {make_single_label_view(dataset, f.single_label_dir)}"
        )


if __name__ == "__main__":
    from absl import app

    _define_flags()
    app.run(main)
