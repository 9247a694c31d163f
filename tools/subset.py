r"""Carve a smaller training set out of the ML-Images lists, reproducibly and in bounded memory.

Most users cannot store 17.6M images (the independent re-implementation of the paper failed on storage),
so this selects lines of a list (URL, ImageNet-id, image or single-label list) by three filters, applied
in this order:

1. `--fraction f`: keep a line when a seeded hash of its path is below f (a uniform random sample that
   does not depend on the order of the list, and the same image is kept for every list sharing the seed).
2. `--classes` (indices or WordNet ids) / `--class_file`: keep a line when it has one of the classes; its
   tags are restricted to the classes plus their ancestors (via the hierarchy), so step 1 of the annotation
   construction still holds in the subset. `--remap` renumbers the kept classes 0..K-1 (ascending original
   index) and writes the matching hierarchy (`--output_hierarchy`) and index map (`--class_map`).
3. `--max_per_class M`: each class may *select* at most M lines and a line is kept when a class selects
   it. A class selects its lines in the order of a second seeded hash: pass 1 counts the lines n_c of every
   class, pass 2 lets class c select a line when the line's hash is below M / n_c and c has selected fewer
   than M lines so far. Classes with at most M lines keep all of them; larger ones select a uniform random
   sample of slightly under M (Binomial(n_c, M/n_c) capped at M). A kept line also counts for its other
   classes, so a frequent class (any ancestor such as `thing`) ends up with more than M images: a strict
   cap is impossible while every image carries its root.

Everything streams: memory is O(classes) (per-class counters), never O(lines).

Usage:
  python tools/subset.py --input_list train_urls.txt --output_list small_urls.txt --fraction 0.05 --seed 1
  python tools/subset.py --input_list train_im_list.txt --output_list animals.txt \
      --hierarchy dictionary_and_semantic_hierarchy.txt --classes n00015388 --remap \
      --output_hierarchy animals_hierarchy.txt --class_map animals_classes.tsv --max_per_class 500
"""

from __future__ import annotations

import array
import dataclasses
import hashlib
import os
from collections.abc import Iterator, Sequence

import numpy as np
from absl import app, flags, logging

from data import command_line
from data.labels import annotations
from data.labels.hierarchy import Hierarchy, load_hierarchy, write_hierarchy

_TWO64 = float(2**64)


@dataclasses.dataclass(frozen=True)
class SubsetConfig:
    """What to keep.

    Attributes:
      fraction: Keep this fraction of the lines (1.0: all), by seeded hash of the path.
      classes: Class subset (original indices); None keeps every class.
      remap: Renumber the kept classes (subset plus ancestors) 0..K-1 in the output list.
      max_per_class: Each class selects at most this many lines (None: no limit).
      seed: Seed of both hashes; the same seed gives the same subset.
    """

    fraction: float = 1.0
    classes: tuple[int, ...] | None = None
    remap: bool = False
    max_per_class: int | None = None
    seed: int = 0

    def __post_init__(self):
        if not 0.0 < self.fraction <= 1.0:
            raise ValueError(f"fraction must be in (0, 1], got {self.fraction}")
        if self.max_per_class is not None and self.max_per_class < 1:
            raise ValueError(f"max_per_class must be >= 1, got {self.max_per_class}")
        if self.classes is not None and not self.classes:
            raise ValueError("classes must not be empty (use None for all classes)")
        if self.remap and self.classes is None:
            raise ValueError("remap needs a class subset")


@dataclasses.dataclass(frozen=True)
class SubsetResult:
    """Counts of a run plus the class numbering of the output.

    Attributes:
      lines_read: Valid entries read from the input list.
      after_fraction: Entries left after the fraction filter.
      after_classes: Entries left after the class filter.
      kept: Entries written.
      kept_classes: Original indices of the classes that may appear in the output (ascending); with
        `remap`, output index k is original class `kept_classes[k]`. None when no class subset was given.
    """

    lines_read: int
    after_fraction: int
    after_classes: int
    kept: int
    kept_classes: tuple[int, ...] | None


def line_uniforms(path: str, seed: int) -> tuple[float, float]:
    """Two independent uniforms in [0, 1) from a seeded hash of the line's path (fraction, class order)."""
    digest = hashlib.blake2b(f"{seed}\0{path}".encode(), digest_size=16).digest()
    return int.from_bytes(digest[:8], "little") / _TWO64, int.from_bytes(digest[8:], "little") / _TWO64


def resolve_classes(tokens: Sequence[str], hierarchy: Hierarchy) -> tuple[int, ...]:
    """Class indices from tokens that are indices (`42`) or WordNet ids (`n00015388`), sorted, unique."""
    out = set()
    for token in tokens:
        token = token.strip()
        if not token:
            continue
        index = int(token) if token.lstrip("-").isdigit() else hierarchy.index_of(token)
        if not 0 <= index < hierarchy.num_classes:
            raise ValueError(f"class {token!r} outside [0, {hierarchy.num_classes})")
        out.add(index)
    return tuple(sorted(out))


class _Filter:
    """Steps 1 and 2 for one entry; shared by both passes so that they see exactly the same lines."""

    def __init__(self, config: SubsetConfig, hierarchy: Hierarchy | None):
        self.config = config
        self.select: frozenset[int] | None = None
        self.keep: frozenset[int] | None = None
        self.new_index: dict[int, int] | None = None
        if config.classes is not None:
            if hierarchy is None:
                raise ValueError("a class subset needs the hierarchy (for the ancestors)")
            kept = hierarchy.closure(config.classes).tolist()
            self.select = frozenset(config.classes)
            self.keep = frozenset(kept)
            if config.remap:
                self.new_index = {old: new for new, old in enumerate(kept)}
        self.counts = {"lines_read": 0, "after_fraction": 0, "after_classes": 0}

    def __call__(self, entry: annotations.Entry) -> tuple[annotations.Labels, tuple[int, ...], float] | None:
        """Returns (output labels, selecting classes, order hash) or None when the line is dropped."""
        self.counts["lines_read"] += 1
        u_fraction, u_order = line_uniforms(entry.path, self.config.seed)
        if u_fraction >= self.config.fraction:
            return None
        self.counts["after_fraction"] += 1
        labels = entry.labels
        single = isinstance(labels, int)
        pairs = ((labels, 1.0),) if single else labels
        if self.keep is not None:
            if not any(idx in self.select for idx, _ in pairs):
                return None
            pairs = tuple((idx, conf) for idx, conf in pairs if idx in self.keep)
        self.counts["after_classes"] += 1
        selecting = tuple(idx for idx, _ in pairs if self.select is None or idx in self.select)
        if self.new_index is not None:
            pairs = tuple((self.new_index[idx], conf) for idx, conf in pairs)
        return (pairs[0][0] if single else pairs), selecting, u_order


def subset_list(
    input_list: str | os.PathLike[str],
    output_list: str | os.PathLike[str],
    *,
    config: SubsetConfig,
    hierarchy: Hierarchy | None = None,
    kind: annotations.Kind = "multi",
    num_classes: int | None = None,
    errors: annotations.ErrorLog | None = None,
) -> SubsetResult:
    """Writes the subset of `input_list` selected by `config` to `output_list` (atomically).

    Args:
      input_list: Any list format (`kind="multi"`: URL, ImageNet-id or image list; `"single"`).
      output_list: Output list, same format.
      config: The filters.
      hierarchy: Needed for a class subset (ancestors) and used to validate indices.
      kind: List kind, as in `data.labels.annotations`.
      num_classes: Validates indices when there is no hierarchy.
      errors: Receives malformed lines, which are skipped.

    Returns:
      Counts and the class numbering.
    """
    if hierarchy is not None:
        num_classes = hierarchy.num_classes
    line_filter = _Filter(config, hierarchy)

    def entries() -> Iterator[tuple[annotations.Entry, tuple]]:
        # Each pass re-reads the file; counts are reset so that the result reflects one pass.
        line_filter.counts = dict.fromkeys(line_filter.counts, 0)
        for entry in annotations.iter_entries(
            input_list, kind=kind, num_classes=num_classes, on_error="skip", errors=errors
        ):
            result = line_filter(entry)
            if result is not None:
                yield entry, result

    thresholds = None
    if config.max_per_class is not None:
        counts = _count_selecting(entries(), num_classes)
        thresholds = np.minimum(1.0, config.max_per_class / np.maximum(counts, 1)).tolist()
    taken = [0] * (len(thresholds) if thresholds else 0)

    def kept() -> Iterator[annotations.Entry]:
        for entry, (labels, selecting, u_order) in entries():
            if thresholds is not None:
                chosen = [c for c in selecting if u_order < thresholds[c] and taken[c] < config.max_per_class]
                if not chosen:
                    continue
                for c in chosen:
                    taken[c] += 1
            yield dataclasses.replace(entry, labels=labels)

    written = annotations.write_entries(output_list, kept(), kind=kind)
    result = SubsetResult(
        **line_filter.counts,
        kept=written,
        kept_classes=tuple(sorted(line_filter.keep)) if line_filter.keep is not None else None,
    )
    logging.info("Subset of %s: %s", os.fspath(input_list), dataclasses.replace(result, kept_classes=None))
    return result


def _count_selecting(items: Iterator[tuple[annotations.Entry, tuple]], num_classes: int | None) -> np.ndarray:
    """Pass 1 of max_per_class: lines per selecting class, accumulated with bincount in blocks."""
    counts = np.zeros(num_classes or 0, dtype=np.int64)
    block = array.array("q")  # 8 bytes per tag, not a list of Python ints

    def flush() -> None:
        nonlocal counts
        if block:
            add = np.bincount(np.frombuffer(block, dtype=np.int64))
            if add.size > counts.size:
                counts = np.pad(counts, (0, add.size - counts.size))
            counts[: add.size] += add
            del block[:]

    for _, (_, selecting, _) in items:
        block.extend(selecting)
        if len(block) >= 1 << 18:
            flush()
    flush()
    return counts


def write_class_map(path: str | os.PathLike[str], kept_classes: Sequence[int], hierarchy: Hierarchy) -> None:
    """TSV `new_index original_index wnid name` for a remapped subset."""
    with open(path, "w", encoding="utf-8") as f:
        f.write("new_index\toriginal_index\twnid\tname\n")
        for new, old in enumerate(kept_classes):
            f.write(f"{new}\t{old}\t{hierarchy.wnid(old)}\t{hierarchy.name(old)}\n")


def summary_line(result: SubsetResult, config: SubsetConfig, output_list: str | os.PathLike[str]) -> str:
    """The counts of a run, one after each filter that was given (a filter not given removed nothing)."""
    steps = [f"{result.lines_read} lines read"]
    if config.fraction < 1.0:
        steps.append(f"{result.after_fraction} after --fraction={config.fraction:g}")
    if config.classes is not None:
        steps.append(f"{result.after_classes} with one of the {len(config.classes)} classes")
    if config.max_per_class is not None:
        steps.append(f"{result.kept} after --max_per_class={config.max_per_class}")
    return f"{', '.join(steps)}; {result.kept} written to {os.fspath(output_list)}"


@command_line.one_line_errors(
    "subset.py", errors=(ValueError, OSError, KeyError)
)  # a bad hierarchy, list or class: `subset.py: error: file:line: ...`
def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    f = flag_values
    hierarchy = load_hierarchy(f.hierarchy) if f.hierarchy else None
    tokens = list(f.classes or [])
    if f.class_file:
        with open(f.class_file, encoding="utf-8-sig") as cf:  # a byte order mark is not part of a class
            tokens += [line.split("#", 1)[0].strip() for line in cf]
    if tokens and hierarchy is None:
        raise app.UsageError("--classes/--class_file need --hierarchy")
    classes = resolve_classes(tokens, hierarchy) if tokens else None
    if f.remap and classes is None:
        raise app.UsageError("--remap needs --classes or --class_file")
    config = SubsetConfig(
        fraction=f.fraction, classes=classes, remap=f.remap, max_per_class=f.max_per_class, seed=f.seed
    )
    with annotations.ErrorLog(f.bad_lines_report) as errors:
        result = subset_list(
            f.input_list,
            f.output_list,
            config=config,
            hierarchy=hierarchy,
            kind=f.kind,
            num_classes=f.num_classes,
            errors=errors,
        )
    if f.remap:
        restricted = hierarchy.restrict(result.kept_classes)
        if f.output_hierarchy:
            write_hierarchy(f.output_hierarchy, restricted)
        if f.class_map:
            write_class_map(f.class_map, result.kept_classes, hierarchy)
    logging.info("%s", summary_line(result, config, f.output_list))


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Defines the script's flags on `flag_values` (a fresh one runs it in-process)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "input_list",
        None,
        "Input list (URL, ImageNet-id, image or single-label list; .gz ok).",
        required=True,
        **fv,
    )
    flags.DEFINE_string(
        "output_list", None, "Output list in the same format (written atomically).", required=True, **fv
    )
    flags.DEFINE_enum(
        "kind",
        "multi",
        ["multi", "single"],
        "`multi`: `path idx:conf ...` lists; `single`: `path label_int`.",
        **fv,
    )
    flags.DEFINE_float(
        "fraction", 1.0, "Keep this fraction of the lines, chosen by seeded hash of the path.", **fv
    )
    flags.DEFINE_list(
        "classes", None, "Class subset: comma-separated indices or WordNet ids (needs --hierarchy).", **fv
    )
    flags.DEFINE_string(
        "class_file", None, "File with one class index or WordNet id per line (adds to --classes).", **fv
    )
    flags.DEFINE_string(
        "hierarchy", None, "dictionary_and_semantic_hierarchy.txt (needed for a class subset).", **fv
    )
    flags.DEFINE_boolean(
        "remap", False, "Renumber the kept classes (subset + ancestors) 0..K-1 in the output.", **fv
    )
    flags.DEFINE_string("output_hierarchy", None, "With --remap: write the renumbered hierarchy here.", **fv)
    flags.DEFINE_string(
        "class_map", None, "With --remap: write `new_index original_index wnid name` here.", **fv
    )
    flags.DEFINE_integer(
        "max_per_class",
        None,
        "Each class selects at most this many lines (seeded hash order).",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_integer("seed", 0, "Seed of the hashes: the same seed gives the same subset.", **fv)
    flags.DEFINE_integer(
        "num_classes", None, "Validate class indices against this (default: from --hierarchy).", **fv
    )
    flags.DEFINE_string(
        "bad_lines_report", None, "If set, malformed input lines are written there with the reason.", **fv
    )


if __name__ == "__main__":
    # An unreadable list, hierarchy or class file, an unknown class: one line.
    command_line.run(main, define_flags, script=__file__, refusals=(ValueError, OSError))
