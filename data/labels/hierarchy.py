"""The ML-Images semantic hierarchy: 11,166 classes in a forest of 4 WordNet-derived trees.

The release ships it as `dictionary_and_semantic_hierarchy.txt`, a TSV with the header
`category_index  category_id  index_of_parent_category  category name` and one parent per class (-1 for a
root). Parent indices are NOT always smaller than child indices, so ancestors are computed with a
topological (breadth-first, level-by-level) pass rather than by a single scan in file order.

Ancestors are stored once for all classes in a CSR layout (`ancestor_offsets`, `ancestor_indices`; the row
of class i lists its parent first and its root last), so per-image work (`propagate`) and per-pair work
(`has_path_pairs`) is a few vectorised numpy gathers, never a Python walk up the tree.

Depth convention: a root has depth 0 and a class has depth = number of edges to its root. On the real
file this gives max depth 16 and a mean of 7.47 over all 11,166 classes (7.4711; the mean over the 11,162
non-root classes is 7.4738, also 7.47, so both readings of docs/REFERENCE.md section 1 agree).
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping, Sequence
from typing import Final

import numpy as np

from data import fileio

HEADER: Final = ("category_index", "category_id", "index_of_parent_category", "category name")
ROOT_PARENT: Final = -1


class HierarchyError(ValueError):
    """A malformed hierarchy file or parent array; the message names the offending line."""


def _readonly(array: np.ndarray) -> np.ndarray:
    array.setflags(write=False)
    return array


@dataclasses.dataclass(frozen=True, eq=False)
class Hierarchy:
    """An immutable class forest with precomputed ancestors and depths.

    Build it with `load_hierarchy(path)` or `Hierarchy.from_parents(parents)`; the constructor trusts its
    arguments. All arrays are read-only.

    Attributes:
      names: Human-readable class names (`category name` column), by class index.
      wnids: WordNet ids (`category_id` column, e.g. `n00002452`), by class index.
      parents: int32[N], the parent of each class, -1 for a root.
      depth: int32[N], edges from the class to its root (a root has depth 0).
      ancestor_offsets: int64[N + 1]; the ancestors of class i are
        `ancestor_indices[ancestor_offsets[i]:ancestor_offsets[i + 1]]`, parent first, root last
        (so the row length equals `depth[i]`).
      ancestor_indices: int32[sum(depth)], the concatenated ancestor rows.
      topological_order: int32[N], every class after its parent (roots first, then level by level).
    """

    names: tuple[str, ...]
    wnids: tuple[str, ...]
    parents: np.ndarray
    depth: np.ndarray
    ancestor_offsets: np.ndarray
    ancestor_indices: np.ndarray
    topological_order: np.ndarray
    _wnid_to_index: Mapping[str, int] = dataclasses.field(repr=False)

    @classmethod
    def from_parents(
        cls,
        parents: Sequence[int] | np.ndarray,
        *,
        names: Sequence[str] | None = None,
        wnids: Sequence[str] | None = None,
        line_numbers: Sequence[int] | None = None,
        source: str = "<parents>",
    ) -> Hierarchy:
        """Builds a hierarchy from a parent array, checking that it is a forest.

        Args:
          parents: parents[i] is the parent class of class i, or -1 for a root.
          names: Optional class names (default: the index as a string).
          wnids: Optional WordNet ids (default: empty strings, which are not indexed for lookup).
          line_numbers: 1-based file line of each class, used only to name lines in error messages.
          source: File name used in error messages.

        Returns:
          The hierarchy.

        Raises:
          HierarchyError: On a parent outside [-1, N), a class that is its own parent, or a cycle; the
            message names the class(es) and their lines.
        """
        parents = np.asarray(parents, dtype=np.int64)
        num = parents.shape[0]
        lines = np.asarray(line_numbers if line_numbers is not None else np.arange(num) + 1)

        def where(i: int) -> str:
            return f"{source}:{int(lines[i])} (class {i})"

        bad = np.flatnonzero((parents < ROOT_PARENT) | (parents >= num))
        if bad.size:
            i = int(bad[0])
            raise HierarchyError(f"{where(i)}: unknown parent index {int(parents[i])} (valid: -1..{num - 1})")

        order, depth = _levels(parents)
        if order.shape[0] != num:
            reached = np.zeros(num, dtype=bool)
            reached[order] = True
            cycle = _find_cycle(parents, int(np.flatnonzero(~reached)[0]))
            raise HierarchyError(
                "cycle in the hierarchy (a class is its own ancestor): "
                + " -> ".join(where(i) for i in [*cycle, cycle[0]])
            )

        offsets, indices = _ancestor_csr(parents, order, depth)
        names = tuple(names) if names is not None else tuple(str(i) for i in range(num))
        wnids = tuple(wnids) if wnids is not None else ("",) * num
        if len(names) != num or len(wnids) != num:
            raise HierarchyError(f"{source}: {num} parents but {len(names)} names and {len(wnids)} wnids")
        wnid_to_index: dict[str, int] = {}
        for i, wnid in enumerate(wnids):
            if not wnid:
                continue
            if wnid in wnid_to_index:
                raise HierarchyError(
                    f"{where(i)}: duplicate WordNet id {wnid!r} (also class {wnid_to_index[wnid]})"
                )
            wnid_to_index[wnid] = i
        return cls(
            names=names,
            wnids=wnids,
            parents=_readonly(parents.astype(np.int32)),
            depth=_readonly(depth.astype(np.int32)),
            ancestor_offsets=_readonly(offsets),
            ancestor_indices=_readonly(indices),
            topological_order=_readonly(order.astype(np.int32)),
            _wnid_to_index=wnid_to_index,
        )

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def __len__(self) -> int:
        return self.num_classes

    @property
    def roots(self) -> np.ndarray:
        """Indices of the root classes, ascending."""
        return np.flatnonzero(self.parents == ROOT_PARENT)

    def ancestors(self, index: int) -> np.ndarray:
        """The ancestors of one class, parent first and root last (empty for a root); a read-only view."""
        return self.ancestor_indices[self.ancestor_offsets[index] : self.ancestor_offsets[index + 1]]

    def index_of(self, wnid: str) -> int:
        """The class index of a WordNet id such as `n00002452`; KeyError if unknown."""
        try:
            return self._wnid_to_index[wnid]
        except KeyError:
            raise KeyError(f"unknown WordNet id {wnid!r}") from None

    def name(self, index: int) -> str:
        return self.names[index]

    def wnid(self, index: int) -> str:
        return self.wnids[index]

    def closure(self, indices: Sequence[int] | np.ndarray) -> np.ndarray:
        """The given classes plus all their ancestors, as sorted unique indices."""
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        return np.unique(np.concatenate([indices, self.ancestor_indices[self._rows(indices)]]))

    def propagate(self, tags: Mapping[int, float]) -> dict[int, float]:
        """Applies "every tag implies its ancestors" (docs/REFERENCE.md section 1, step 1) to one image.

        An ancestor takes the maximum confidence over the tags that imply it; an explicit tag that is also
        an ancestor of another tag likewise keeps the larger of its own and the implied confidence.

        Args:
          tags: Class index -> confidence.

        Returns:
          Class index -> confidence for the tags and all their ancestors, keys ascending.
        """
        if not tags:
            return {}
        idx = np.fromiter(tags.keys(), dtype=np.int64, count=len(tags))
        conf = np.fromiter(tags.values(), dtype=np.float64, count=len(tags))
        if idx.min() < 0 or idx.max() >= self.num_classes:
            raise IndexError(f"tag index out of range [0, {self.num_classes}): {idx.min()}..{idx.max()}")
        counts = self.depth[idx]
        all_idx = np.concatenate([idx, self.ancestor_indices[self._rows(idx)]])
        all_conf = np.concatenate([conf, np.repeat(conf, counts)])
        order = np.lexsort((-all_conf, all_idx))  # by index, highest confidence first
        all_idx, all_conf = all_idx[order], all_conf[order]
        first = np.concatenate([[True], all_idx[1:] != all_idx[:-1]])
        return dict(zip(all_idx[first].tolist(), all_conf[first].tolist(), strict=True))

    def ancestor_at_depth(self, indices: np.ndarray, depths: np.ndarray) -> np.ndarray:
        """For each (class, d) with d <= depth[class], the class's ancestor (or itself) at depth d."""
        indices = np.asarray(indices, dtype=np.int64)
        depths = np.asarray(depths, dtype=np.int64)
        own = self.depth[indices].astype(np.int64)
        if np.any(depths > own) or np.any(depths < 0):
            raise ValueError("requested depth outside [0, depth of the class]")
        # The row of class i holds ancestors at depths depth[i]-1, ..., 0; position depth[i]-1-d is depth d.
        pos = self.ancestor_offsets[indices] + own - 1 - depths
        indices, pos, upward = np.broadcast_arrays(indices, pos, depths < own)
        result = indices.copy()
        result[upward] = self.ancestor_indices[pos[upward]]
        return result

    def has_path_pairs(self, first: np.ndarray, second: np.ndarray) -> np.ndarray:
        """Vectorised `has_path`: True where one class of the pair is an ancestor of (or equal to) the other."""
        first = np.asarray(first, dtype=np.int64)
        second = np.asarray(second, dtype=np.int64)
        first, second = np.broadcast_arrays(first, second)
        deep = np.where(self.depth[first] >= self.depth[second], first, second)
        shallow = np.where(self.depth[first] >= self.depth[second], second, first)
        return self.ancestor_at_depth(deep, self.depth[shallow]) == shallow

    def has_path(self, first: int, second: int) -> bool:
        """Whether one class is an ancestor of the other (a class has a path to itself).

        This is the "no hierarchy path between them" test of the co-occurrence augmentation: a pair with a
        path is already related by step 1 and must not be added again as a co-occurring tag.
        """
        return bool(self.has_path_pairs(np.asarray(first), np.asarray(second)))

    def restrict(self, keep: Sequence[int] | np.ndarray) -> Hierarchy:
        """The sub-forest of the classes in `keep`, re-indexed 0..K-1 in ascending original index order.

        `keep` must be closed under ancestors (e.g. the output of `closure`), so that every kept class's
        parent is kept too; this is what a class subset of the dataset needs to stay a valid hierarchy.
        New index k is original class `np.unique(keep)[k]`.
        """
        keep = np.unique(np.asarray(keep, dtype=np.int64))
        new_index = np.full(self.num_classes, -1, dtype=np.int64)
        new_index[keep] = np.arange(keep.size)
        parents = self.parents[keep]
        missing = (parents >= 0) & (new_index[np.maximum(parents, 0)] < 0)
        if np.any(missing):
            i = int(keep[np.flatnonzero(missing)[0]])
            raise ValueError(
                f"class {i} is kept but its parent {int(self.parents[i])} is not (use closure())"
            )
        return Hierarchy.from_parents(
            np.where(parents >= 0, new_index[np.maximum(parents, 0)], ROOT_PARENT),
            names=[self.names[i] for i in keep.tolist()],
            wnids=[self.wnids[i] for i in keep.tolist()],
        )

    def _rows(self, indices: np.ndarray) -> np.ndarray:
        """Positions in `ancestor_indices` of the concatenated ancestor rows of `indices`."""
        starts = self.ancestor_offsets[indices]
        counts = self.depth[indices].astype(np.int64)
        total = int(counts.sum())
        # Position k of the output belongs to row r(k): start[r] + (k - first output position of r).
        row_first = np.cumsum(counts) - counts
        return np.repeat(starts - row_first, counts) + np.arange(total)


def _levels(parents: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Breadth-first order from the roots and the depth of every reached class.

    Classes on a cycle are never reached, so `len(order) < N` signals a cycle. One numpy step per level
    (at most depth + 1 steps), so the pass is linear in N.
    """
    num = parents.shape[0]
    depth = np.full(num, -1, dtype=np.int64)
    # Children grouped by parent: sort classes by parent, then each parent's children are contiguous.
    by_parent = np.argsort(parents, kind="stable")
    sorted_parents = parents[by_parent]
    frontier = by_parent[sorted_parents == ROOT_PARENT]
    levels = []
    level = 0
    while frontier.size:
        depth[frontier] = level
        levels.append(frontier)
        lo = np.searchsorted(sorted_parents, frontier, side="left")
        hi = np.searchsorted(sorted_parents, frontier, side="right")
        counts = hi - lo
        take = np.repeat(lo - (np.cumsum(counts) - counts), counts) + np.arange(int(counts.sum()))
        frontier = by_parent[take]
        level += 1
        if level > num:  # Defensive: cannot happen when every class has exactly one parent.
            break
    order = np.concatenate(levels) if levels else np.zeros(0, dtype=np.int64)
    return order, depth


def _find_cycle(parents: np.ndarray, start: int) -> list[int]:
    """Follows parents from an unreachable class until a class repeats; returns the cycle."""
    seen: dict[int, int] = {}
    path: list[int] = []
    node = start
    while node not in seen:
        seen[node] = len(path)
        path.append(node)
        node = int(parents[node])
    return path[seen[node] :]


def _ancestor_csr(parents: np.ndarray, order: np.ndarray, depth: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Ancestor rows for all classes, filled level by level: row(c) = [parent(c)] + row(parent(c))."""
    offsets = np.zeros(parents.shape[0] + 1, dtype=np.int64)
    np.cumsum(depth, out=offsets[1:])
    indices = np.empty(int(offsets[-1]), dtype=np.int32)
    max_depth = int(depth.max()) if depth.size else 0
    for level in range(1, max_depth + 1):  # One vectorised step per level (at most 17 on the real file).
        nodes = order[depth[order] == level]
        par = parents[nodes]
        indices[offsets[nodes]] = par
        if level > 1:
            dst = offsets[nodes][:, None] + 1 + np.arange(level - 1)
            src = offsets[par][:, None] + np.arange(level - 1)
            indices[dst] = indices[src]
    return offsets, indices


def load_hierarchy(path: str | os.PathLike[str]) -> Hierarchy:
    """Reads `dictionary_and_semantic_hierarchy.txt` (or a file in the same format).

    Class indices must be exactly 0..N-1, each once, in any order. Columns are TAB separated; the name
    (4th column) may itself contain spaces and commas.

    Raises:
      HierarchyError: On a missing/wrong header, a line with too few columns or a non-integer index, a
        duplicate or missing class index, an unknown parent or a cycle; the message names the line.
    """
    source = os.fspath(path)
    rows: list[tuple[int, str, int, str, int]] = []
    try:
        with open(source, encoding="utf-8-sig") as f:  # a byte order mark is not part of the header
            header = f.readline().rstrip("\r\n")
            if tuple(field.strip() for field in header.split("\t")) != HEADER:
                raise HierarchyError(
                    f"{source}:1: expected the header {' / '.join(HEADER)!r}, got {header!r}"
                )
            for line_no, line in enumerate(f, start=2):
                line = line.rstrip("\r\n")
                if not line.strip():
                    continue
                fields = line.split("\t", 3)
                if len(fields) != 4:
                    raise HierarchyError(
                        f"{source}:{line_no}: expected 4 TAB-separated columns, got {line!r}"
                    )
                try:
                    index, parent = int(fields[0]), int(fields[2])
                except ValueError:
                    raise HierarchyError(
                        f"{source}:{line_no}: non-integer class or parent index in {line!r}"
                    ) from None
                rows.append((index, fields[1].strip(), parent, fields[3].strip(), line_no))
    except UnicodeDecodeError as e:  # name the file: Python's message names only the codec
        raise HierarchyError(f"{source}: not UTF-8 text ({e.reason} at byte {e.start})") from None

    num = len(rows)
    index = np.array([r[0] for r in rows], dtype=np.int64)
    line_of_row = np.array([r[4] for r in rows], dtype=np.int64)
    out_of_range = np.flatnonzero((index < 0) | (index >= num))
    if out_of_range.size:
        r = int(out_of_range[0])
        raise HierarchyError(f"{source}:{line_of_row[r]}: class index {index[r]} outside 0..{num - 1}")
    seen = np.full(num, -1, dtype=np.int64)
    for r, i in enumerate(index.tolist()):  # One pass over the file's rows at load time, not per query.
        if seen[i] >= 0:
            raise HierarchyError(
                f"{source}:{line_of_row[r]}: duplicate class index {i} (first at line {line_of_row[seen[i]]})"
            )
        seen[i] = r
    by_index = seen  # row of each class index (a permutation, since all indices are distinct and in range)
    return Hierarchy.from_parents(
        [rows[r][2] for r in by_index],
        names=[rows[r][3] for r in by_index],
        wnids=[rows[r][1] for r in by_index],
        line_numbers=line_of_row[by_index],
        source=source,
    )


def write_hierarchy(path: str | os.PathLike[str], hierarchy: Hierarchy) -> None:
    """Writes a hierarchy in the release's TSV format (readable by `load_hierarchy`), atomically."""
    with fileio.atomic_write(path, "w") as f:
        f.write("\t".join(HEADER) + "\n")
        for i in range(hierarchy.num_classes):
            f.write(f"{i}\t{hierarchy.wnids[i]}\t{int(hierarchy.parents[i])}\t{hierarchy.names[i]}\n")
