"""The demo's classes and pictures: the 30-class forest, what a scene holds, and its rasteriser.

Each image (RGB JPEG) shows 1-4 shapes on a textured, noisy, low-saturation background. The image is split
into a 2 x 2 grid and every shape sits inside its own cell, so shapes never overlap and every tag is visible
in the pixels:

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

Every image is drawn from its own generator seeded by ``(seed, split, index)`` (`make_example`), so a seed
gives the same bytes on every run and image i does not depend on how many images the split has. Writing a
set of them (lists, records, the reuse record) is data/demo.py's job.
"""

from __future__ import annotations

import dataclasses
import io
import math
from collections.abc import Sequence

import numpy as np
from PIL import Image

from data.labels.hierarchy import Hierarchy

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
