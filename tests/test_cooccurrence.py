"""Tests for data/cooccurrence.py: hand-computed small cases, streaming = one shot, and the CLI."""

import subprocess
import sys

import numpy as np
import pytest

from data.labels import annotations, cooccurrence
from data.labels.cooccurrence import CooccurrenceConfig, CooccurrenceCounter
from data.labels.hierarchy import Hierarchy, load_hierarchy

# 0 (root) -> 1 (ImageNet class A) -> 3 (an OI class below A)
#          -> 2 (ImageNet class B)
# 4 (root, OI class X) -> 5 (OI class Y)
PARENTS = [-1, 0, 0, 1, -1, 4]
OI_TO_CLASS = np.array([3, 4, 5, -1])  # OI column 3 maps to nothing and must be ignored.
LABELS = np.array([1, 1, 1, 1, 2, 2])
SCORES = np.array(
    [
        # col0 (->3) col1 (->4) col2 (->5) col3 (ignored)
        [0.99, 0.99, 0.99, 0.99],
        [0.99, 0.99, 0.10, 0.99],
        [0.99, 0.99, 0.96, 0.99],
        [0.99, 0.50, 0.20, 0.99],
        [0.10, 0.99, 0.96, 0.99],
        [0.10, 0.97, 0.95, 0.99],  # 0.95 is not > 0.95
    ]
)


def test_counts_and_normalization_by_hand():
    counter = CooccurrenceCounter(6, 4)
    counter.update(SCORES, LABELS)
    expected = np.zeros((6, 4), dtype=np.int64)
    expected[1] = [4, 3, 2, 4]
    expected[2] = [0, 2, 1, 2]
    np.testing.assert_array_equal(counter.counts, expected)
    np.testing.assert_array_equal(counter.images, [0, 4, 2, 0, 0, 0])
    normalized = counter.normalized()
    np.testing.assert_allclose(normalized[1], [1.0, 0.75, 0.5, 1.0])
    np.testing.assert_allclose(normalized[2], [0.0, 1.0, 0.5, 1.0])
    assert not normalized[[0, 3, 4, 5]].any()


def test_select_pairs_by_hand():
    counter = CooccurrenceCounter(6, 4)
    counter.update(SCORES, LABELS)
    h = Hierarchy.from_parents(PARENTS)
    # (1, 3): normalised 1.0 but 3 is a descendant of 1 -> dropped; (1, 5) and (2, 5): exactly 0.5 -> not > 0.5.
    pairs = cooccurrence.select_pairs(counter, oi_to_class=OI_TO_CLASS, hierarchy=h, threshold=0.5)
    np.testing.assert_array_equal(pairs, [[1, 4], [2, 4]])
    without_hierarchy = cooccurrence.select_pairs(
        counter, oi_to_class=OI_TO_CLASS, hierarchy=None, threshold=0.5
    )
    np.testing.assert_array_equal(without_hierarchy, [[1, 3], [1, 4], [2, 4]])
    lower = cooccurrence.select_pairs(counter, oi_to_class=OI_TO_CLASS, hierarchy=h, threshold=0.4)
    np.testing.assert_array_equal(lower, [[1, 4], [1, 5], [2, 4], [2, 5]])
    assert cooccurrence.additions_by_class(lower) == {1: (4, 5), 2: (4, 5)}


def test_streaming_chunks_equal_brute_force():
    rng = np.random.default_rng(0)
    labels = rng.integers(-1, 7, 500)
    scores = rng.random((500, 5)) ** 0.1  # many values above 0.95
    counter = CooccurrenceCounter(7, 5)
    for start in range(0, 500, 37):
        counter.update(scores[start : start + 37], labels[start : start + 37])
    counts = np.zeros((7, 5), dtype=np.int64)
    images = np.zeros(7, dtype=np.int64)
    for label, row in zip(labels, scores, strict=True):
        if label >= 0:
            counts[label] += row > 0.95
            images[label] += 1
    np.testing.assert_array_equal(counter.counts, counts)
    np.testing.assert_array_equal(counter.images, images)


def test_update_rejects_bad_shapes():
    counter = CooccurrenceCounter(3, 2)
    with pytest.raises(ValueError):
        counter.update(np.zeros((2, 3)), np.array([0, 1]))
    with pytest.raises(ValueError):
        counter.update(np.zeros((1, 2)), np.array([3]))


def test_primary_label_and_augment():
    h = Hierarchy.from_parents(PARENTS)
    assert cooccurrence.primary_label(((0, 1.0), (1, 1.0), (5, 0.9)), h) == 1
    assert cooccurrence.primary_label(((3, 1.0), (0, 1.0), (1, 1.0)), h) == 3
    assert cooccurrence.primary_label(((5, 0.9),), h) == -1
    labels = ((1, 1.0), (0, 1.0), (4, 0.8))
    assert cooccurrence.augment(labels, (5, 4), confidence=0.9) == ((1, 1.0), (0, 1.0), (4, 0.9), (5, 0.9))
    assert cooccurrence.augment(labels, (5,), confidence=0.7, hierarchy=h) == (
        (1, 1.0),
        (0, 1.0),
        (4, 0.8),
        (5, 0.7),
    )
    assert cooccurrence.augment(labels, (), confidence=1.0) is labels


def _hierarchy_file(path):
    rows = ["category_index\tcategory_id\tindex_of_parent_category\tcategory name"]
    rows += [f"{i}\tn{i:08d}\t{p}\tclass {i}" for i, p in enumerate(PARENTS)]
    path.write_text("\n".join(rows) + "\n")


def _inputs(tmp_path):
    _hierarchy_file(tmp_path / "hierarchy.txt")
    lines = [f"a{k}.jpg\t1:1\t0:1" for k in range(4)] + ["b0.jpg\t2:1\t0:1", "b1.jpg\t0:1\t2:1\t4:0.8"]
    (tmp_path / "list.txt").write_text("\n".join(lines) + "\n")
    np.save(tmp_path / "scores.npy", SCORES.astype(np.float32))
    (tmp_path / "oi.txt").write_text("\n".join(str(c) for c in OI_TO_CLASS) + "\n")


def test_augment_list_end_to_end(tmp_path):
    _inputs(tmp_path)
    h = load_hierarchy(tmp_path / "hierarchy.txt")
    stats = cooccurrence.augment_list(
        tmp_path / "list.txt",
        tmp_path / "out.txt",
        np.load(tmp_path / "scores.npy", mmap_mode="r"),
        oi_to_class=cooccurrence.read_oi_mapping(tmp_path / "oi.txt", num_classes=6),
        hierarchy=h,
        config=CooccurrenceConfig(confidence=0.9, propagate=True),
        pairs_out=tmp_path / "pairs.tsv",
    )
    out = [(e.path, e.labels) for e in annotations.iter_entries(tmp_path / "out.txt")]
    assert out == [
        *((f"a{k}.jpg", ((1, 1.0), (0, 1.0), (4, 0.9))) for k in range(4)),
        ("b0.jpg", ((2, 1.0), (0, 1.0), (4, 0.9))),
        ("b1.jpg", ((0, 1.0), (2, 1.0), (4, 0.9))),  # 0.8 raised to the added 0.9
    ]
    assert stats == {"entries": 6, "pairs": 2, "lines_changed": 6, "tags_added": 5}
    pairs = (tmp_path / "pairs.tsv").read_text().splitlines()
    assert pairs[1:] == ["1\tclass 1\t4\tclass 4\t3\t4\t0.7500", "2\tclass 2\t4\tclass 4\t2\t2\t1.0000"]


def test_row_count_mismatch_is_an_error(tmp_path):
    _inputs(tmp_path)
    with pytest.raises(ValueError, match="6 entries but the scores have 5 rows"):
        cooccurrence.augment_list(
            tmp_path / "list.txt",
            tmp_path / "out.txt",
            SCORES[:5],
            oi_to_class=OI_TO_CLASS,
            hierarchy=Hierarchy.from_parents(PARENTS),
        )


def test_cli(tmp_path, repo_root):
    _inputs(tmp_path)
    cmd = [sys.executable, str(repo_root / "data" / "cooccurrence.py")]
    args = ["--input_list", "list.txt", "--scores", "scores.npy", "--oi_classes", "oi.txt"]
    args += ["--hierarchy", "hierarchy.txt", "--output_list", "out.txt", "--cooccurrence_threshold", "0.4"]
    subprocess.run(cmd + args, cwd=tmp_path, check=True, capture_output=True, timeout=120)
    out = [e.labels for e in annotations.iter_entries(tmp_path / "out.txt")]
    assert out[0] == ((1, 1.0), (0, 1.0), (4, 1.0), (5, 1.0))
    assert out[5] == ((0, 1.0), (2, 1.0), (4, 1.0), (5, 1.0))


def test_count_list_chunk_boundaries(tmp_path):
    _inputs(tmp_path)
    h = Hierarchy.from_parents(PARENTS)
    one = cooccurrence.count_list(tmp_path / "list.txt", SCORES, hierarchy=h, score_threshold=0.95, chunk=100)
    for chunk in (1, 4, 6):
        many = cooccurrence.count_list(
            tmp_path / "list.txt", SCORES, hierarchy=h, score_threshold=0.95, chunk=chunk
        )
        np.testing.assert_array_equal(many.counts, one.counts)
        np.testing.assert_array_equal(many.images, one.images)
    with pytest.raises(ValueError, match="more entries than the 3 rows"):
        cooccurrence.count_list(tmp_path / "list.txt", SCORES[:3], hierarchy=h, score_threshold=0.95, chunk=2)


def test_every_input_list_may_have_a_byte_order_mark_and_crlf(tmp_path):
    """Editors on Windows write a UTF-8 BOM and CRLF: the mapping, the list and the hierarchy read the same."""
    _inputs(tmp_path)
    for name in ("hierarchy.txt", "list.txt", "oi.txt"):
        text = (tmp_path / name).read_text()
        (tmp_path / name).write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    assert cooccurrence.read_oi_mapping(tmp_path / "oi.txt", num_classes=6).tolist() == OI_TO_CLASS.tolist()
    h = load_hierarchy(tmp_path / "hierarchy.txt")
    stats = cooccurrence.augment_list(
        tmp_path / "list.txt",
        tmp_path / "out.txt",
        SCORES,
        oi_to_class=OI_TO_CLASS,
        hierarchy=h,
    )
    assert stats["entries"] == 6


@pytest.mark.parametrize(
    "broken, line",
    [
        ("hierarchy.txt", "hierarchy.txt:3: expected 4 TAB-separated columns, got 'not a row'"),
        ("list.txt", "list.txt:2: "),
        ("oi.txt", "oi.txt:2: expected a class index, got 'x'"),
    ],
)
def test_a_bad_input_line_is_one_line_naming_file_and_line(tmp_path, broken, line):
    """A broken hierarchy, list or mapping line ends data/cooccurrence.py with `cooccurrence.py: error:
    <file>:<line>: ...` and exit status 1, not a traceback."""
    from data import cooccurrence as script
    from tests import scripts

    _inputs(tmp_path)
    lines = (tmp_path / broken).read_text().splitlines()
    lines[1] = {"hierarchy.txt": lines[1], "list.txt": "a0.jpg\t1:x", "oi.txt": "x"}[broken]
    if broken == "hierarchy.txt":
        lines[2] = "not a row"
    (tmp_path / broken).write_text("\n".join(lines) + "\n")
    args = ["--input_list", "list.txt", "--scores", "scores.npy", "--oi_classes", "oi.txt"]
    args += ["--hierarchy", "hierarchy.txt", "--output_list", "out.txt"]
    args = [a if not a.endswith((".txt", ".npy")) else str(tmp_path / a) for a in args]
    with pytest.raises(SystemExit) as info:
        scripts.run_in_process(script, args)
    message = str(info.value.code)
    assert message.startswith(f"cooccurrence.py: error: {tmp_path / line}") and "\n" not in message
    assert not (tmp_path / "out.txt").exists()
