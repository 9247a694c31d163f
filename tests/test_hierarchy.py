"""Tests for data/labels/hierarchy.py: the real file's figures, ancestor correctness, propagation and errors."""

import functools
import pathlib
import re

import numpy as np
import pytest

from data.labels import hierarchy
from data.labels.hierarchy import Hierarchy, HierarchyError, load_hierarchy

HEADER = "category_index\tcategory_id\tindex_of_parent_category\tcategory name\n"


def _write(tmp_path: pathlib.Path, rows: list[str], header: str = HEADER) -> pathlib.Path:
    path = tmp_path / "hierarchy.txt"
    path.write_text(header + "".join(r + "\n" for r in rows), encoding="utf-8")
    return path


def _walk_ancestors(parents: np.ndarray, i: int) -> list[int]:
    """The slow, obviously correct definition used as the oracle."""
    out = []
    while parents[i] != -1:
        i = int(parents[i])
        out.append(i)
    return out


@functools.cache
def _load_cached(path: pathlib.Path) -> Hierarchy:
    return load_hierarchy(path)


@pytest.fixture
def real(reference_dir) -> Hierarchy:
    return _load_cached(reference_dir / "dictionary_and_semantic_hierarchy.txt")


def test_real_file_figures(real):
    assert real.num_classes == 11166
    assert [real.name(r) for r in real.roots] == [
        "thing",
        "matter",
        "object, physical object",
        "atmospheric phenomenon",
    ]
    assert int(real.depth.max()) == 16
    # Depth of a root = 0, mean over all 11,166 classes (see the module docstring).
    assert round(float(real.depth.mean()), 2) == 7.47
    assert real.wnid(0) == "n00002452" and real.index_of("n00002452") == 0


def test_real_file_is_not_topologically_ordered_and_ancestors_match_oracle(real):
    parents = real.parents
    assert np.any(parents > np.arange(real.num_classes)), "the reason a topological pass is needed"
    for i in range(real.num_classes):
        assert real.ancestors(i).tolist() == _walk_ancestors(parents, i)
    order = real.topological_order
    position = np.empty_like(order)
    position[order] = np.arange(order.size)
    child = np.flatnonzero(parents >= 0)
    assert np.all(position[parents[child]] < position[child])


def test_reference_list_confidence_one_tags_carry_their_ancestor_closure(real, reference_dir):
    """docs/REFERENCE.md section 1: confidence-1 tags carry their full closure (ancestors present, at some confidence)."""
    lines = (reference_dir / "train_im_list_tiny.txt").read_text().splitlines()
    checked = 0
    for line in lines:
        tags = {}
        for token in line.split()[1:]:
            idx, _, conf = token.partition(":")
            tags[int(idx)] = float(conf) if conf else 1.0
        ones = [i for i, c in tags.items() if c == 1.0]
        if not ones:
            continue
        assert set(real.closure(ones).tolist()) <= set(tags), line
        assert set(real.propagate({i: 1.0 for i in ones})) <= set(tags), line
        checked += 1
    assert checked > 50


def test_propagate_takes_max_confidence():
    #      0          5
    #    /   \        |
    #   1     2       6
    #   |
    #   3 -- 4 (child of 3)
    h = Hierarchy.from_parents([-1, 0, 0, 1, 3, -1, 5])
    out = h.propagate({4: 0.8, 2: 0.9, 1: 0.5, 6: 0.7})
    assert out == {0: 0.9, 1: 0.8, 2: 0.9, 3: 0.8, 4: 0.8, 5: 0.7, 6: 0.7}
    assert h.propagate({}) == {}
    assert h.propagate({0: 0.3}) == {0: 0.3}
    with pytest.raises(IndexError):
        h.propagate({7: 1.0})


def test_has_path_and_ancestor_at_depth():
    h = Hierarchy.from_parents([-1, 0, 0, 1, 3, -1, 5])
    pairs = [
        (4, 0, True),
        (0, 4, True),
        (4, 1, True),
        (4, 2, False),
        (3, 2, False),
        (4, 4, True),
        (6, 0, False),
    ]
    for a, b, expected in pairs:
        assert h.has_path(a, b) is expected, (a, b)
    a, b, expected = (np.array(x) for x in zip(*pairs, strict=True))
    np.testing.assert_array_equal(h.has_path_pairs(a, b), expected)
    np.testing.assert_array_equal(
        h.ancestor_at_depth(np.array([4, 4, 4, 4, 6]), np.array([0, 1, 2, 3, 0])), [0, 1, 3, 4, 5]
    )
    with pytest.raises(ValueError):
        h.ancestor_at_depth(np.array([1]), np.array([2]))


def test_all_roots_forest():
    h = Hierarchy.from_parents([-1, -1, -1])
    assert h.ancestor_indices.size == 0
    assert not h.has_path(0, 1) and h.has_path(2, 2)
    assert h.propagate({1: 0.5}) == {1: 0.5}


def test_random_forest_matches_oracle():
    rng = np.random.default_rng(0)
    num = 400
    # A random forest whose parent indices are shuffled relative to the children.
    perm = rng.permutation(num)
    parent_in_order = np.array([-1 if k < 3 else int(rng.integers(0, k)) for k in range(num)])
    parents = np.full(num, -1)
    for k in range(num):
        parents[perm[k]] = -1 if parent_in_order[k] < 0 else perm[parent_in_order[k]]
    h = Hierarchy.from_parents(parents)
    for i in range(num):
        assert h.ancestors(i).tolist() == _walk_ancestors(parents, i)
        assert h.depth[i] == len(_walk_ancestors(parents, i))
    a, b = rng.integers(0, num, 2000), rng.integers(0, num, 2000)
    oracle = [
        x == y or y in _walk_ancestors(parents, x) or x in _walk_ancestors(parents, y)
        for x, y in zip(a, b, strict=True)
    ]
    np.testing.assert_array_equal(h.has_path_pairs(a, b), oracle)
    tags = {int(i): float(c) for i, c in zip(rng.integers(0, num, 6), rng.random(6), strict=True)}
    expected: dict[int, float] = {}
    for i, c in tags.items():
        for j in [i, *_walk_ancestors(parents, i)]:
            expected[j] = max(expected.get(j, 0.0), c)
    assert h.propagate(tags) == pytest.approx(expected)


def test_load_small_file_out_of_order(tmp_path):
    path = _write(tmp_path, ["2\tn3\t1\tleaf, small", "0\tn1\t-1\troot", "1\tn2\t0\tmiddle"])
    h = load_hierarchy(path)
    assert h.names == ("root", "middle", "leaf, small")
    assert h.index_of("n3") == 2
    assert h.ancestors(2).tolist() == [1, 0]
    with pytest.raises(KeyError):
        h.index_of("n9")


@pytest.mark.parametrize(
    "rows, message",
    [
        (["0\tn1\t-1\troot", "1\tn2\t7\tchild"], r"hierarchy.txt:3 \(class 1\): unknown parent index 7"),
        (
            ["0\tn1\t-1\troot", "1\tn2\t2\ta", "2\tn3\t3\tb", "3\tn4\t1\tc"],
            r"cycle .*hierarchy.txt:3 \(class 1\)",
        ),
        (["0\tn1\t0\tself"], r"cycle .*hierarchy.txt:2 \(class 0\)"),
        (["0\tn1\t-1\troot", "1\tn2 -1 bad"], r"hierarchy.txt:3: expected 4 TAB-separated columns"),
        (["0\tn1\t-1\troot", "x\tn2\t0\tbad"], r"hierarchy.txt:3: non-integer"),
        (
            ["0\tn1\t-1\troot", "0\tn2\t0\tdup"],
            r"hierarchy.txt:3: duplicate class index 0 \(first at line 2\)",
        ),
        (["0\tn1\t-1\troot", "5\tn2\t0\tgap"], r"hierarchy.txt:3: class index 5 outside"),
        (["0\tn1\t-1\troot", "1\tn1\t0\tsame wnid"], r"hierarchy.txt:3 \(class 1\): duplicate WordNet id"),
    ],
)
def test_errors_name_the_line(tmp_path, rows, message):
    with pytest.raises(HierarchyError, match=message):
        load_hierarchy(_write(tmp_path, rows))


def test_bad_header(tmp_path):
    with pytest.raises(HierarchyError, match="hierarchy.txt:1: expected the header"):
        load_hierarchy(_write(tmp_path, ["0\tn1\t-1\troot"], header="index\twnid\tparent\n"))


def test_arrays_are_read_only():
    h = hierarchy.Hierarchy.from_parents([-1, 0])
    with pytest.raises(ValueError):
        h.parents[0] = 1


def test_restrict_and_write_round_trip(tmp_path):
    h = Hierarchy.from_parents([-1, 0, 0, 1, -1, 4], names=list("abcdef"), wnids=[f"n{i}" for i in range(6)])
    keep = h.closure([3, 5])
    assert keep.tolist() == [0, 1, 3, 4, 5]
    sub = h.restrict(keep)
    assert sub.names == ("a", "b", "d", "e", "f")
    assert sub.parents.tolist() == [-1, 0, 1, -1, 3]
    with pytest.raises(ValueError, match="class 3 is kept but its parent 1 is not"):
        h.restrict([0, 3])
    hierarchy.write_hierarchy(tmp_path / "sub.txt", sub)
    again = load_hierarchy(tmp_path / "sub.txt")
    assert again.names == sub.names and again.wnids == sub.wnids
    np.testing.assert_array_equal(again.parents, sub.parents)


def test_a_byte_order_mark_is_not_part_of_the_header(tmp_path):
    path = tmp_path / "h.txt"
    text = "category_index\tcategory_id\tindex_of_parent_category\tcategory name\n0\tn1\t-1\tthing\n1\tn2\t0\tsub\n"
    path.write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert load_hierarchy(path).num_classes == 2


def test_a_file_that_is_not_utf8_is_named(tmp_path):
    path = tmp_path / "latin1.txt"
    path.write_bytes(
        "category_index\tcategory_id\tindex_of_parent_category\tcategory name\n0\tn1\t-1\tcaf\xe9\n".encode(
            "latin-1"
        )
    )
    with pytest.raises(HierarchyError, match=rf"^{re.escape(str(path))}: not UTF-8 text"):
        load_hierarchy(path)
