"""Tests for tools/subset.py: fraction, class subset (+ancestors, remap), max_per_class, CLI."""

import collections
import random
import subprocess
import sys

import numpy as np
import pytest

from data.labels import annotations
from data.labels.hierarchy import Hierarchy, load_hierarchy
from tools import subset
from tools.subset import SubsetConfig

# 0 -> 1 -> 3, 0 -> 2, 4 (root) -> 5
PARENTS = [-1, 0, 0, 1, -1, 4]


def _hierarchy() -> Hierarchy:
    return Hierarchy.from_parents(
        PARENTS, names=[f"c{i}" for i in range(6)], wnids=[f"n{i:08d}" for i in range(6)]
    )


def _write_list(path, lines):
    path.write_text("".join(line + "\n" for line in lines))


def _read(path, kind="multi"):
    return [(e.path, e.labels) for e in annotations.iter_entries(path, kind=kind)]


def test_fraction_is_a_seeded_hash_of_the_path_and_order_independent(tmp_path):
    lines = [f"img{k}.jpg\t{k % 6}:1" for k in range(3000)]
    _write_list(tmp_path / "in.txt", lines)
    result = subset.subset_list(
        tmp_path / "in.txt", tmp_path / "a.txt", config=SubsetConfig(fraction=0.3, seed=7)
    )
    kept = [p for p, _ in _read(tmp_path / "a.txt")]
    expected = [f"img{k}.jpg" for k in range(3000) if subset.line_uniforms(f"img{k}.jpg", 7)[0] < 0.3]
    assert kept == expected
    assert result.lines_read == 3000 and result.kept == len(kept)
    assert 0.25 < len(kept) / 3000 < 0.35

    random.Random(0).shuffle(lines)
    _write_list(tmp_path / "shuffled.txt", lines)
    subset.subset_list(
        tmp_path / "shuffled.txt", tmp_path / "b.txt", config=SubsetConfig(fraction=0.3, seed=7)
    )
    assert sorted(p for p, _ in _read(tmp_path / "b.txt")) == sorted(kept)

    subset.subset_list(tmp_path / "in.txt", tmp_path / "c.txt", config=SubsetConfig(fraction=0.3, seed=8))
    assert [p for p, _ in _read(tmp_path / "c.txt")] != kept


def test_class_subset_restricts_labels_to_subset_plus_ancestors(tmp_path):
    lines = [
        "a.jpg\t3:1\t1:1\t0:1\t5:0.9",  # has 3 -> kept, 5 dropped
        "b.jpg\t2:1\t0:1",  # only 0, an ancestor of the subset -> not kept
        "c.jpg\t5:1\t4:1",
        "d.jpg\t1:0.8\t0:0.8\t3:0.9\t4:1",  # has 3 -> kept; 4 dropped
        "e.jpg\t5:1\t4:1\t2:1\t0:1",
    ]
    _write_list(tmp_path / "in.txt", lines)
    h = _hierarchy()
    result = subset.subset_list(
        tmp_path / "in.txt", tmp_path / "out.txt", config=SubsetConfig(classes=(3,)), hierarchy=h
    )
    assert _read(tmp_path / "out.txt") == [
        ("a.jpg", ((3, 1.0), (1, 1.0), (0, 1.0))),
        ("d.jpg", ((1, 0.8), (0, 0.8), (3, 0.9))),
    ]
    assert result.kept_classes == (0, 1, 3) and result.after_classes == 2

    remapped = subset.subset_list(
        tmp_path / "in.txt",
        tmp_path / "remap.txt",
        config=SubsetConfig(classes=(3, 2), remap=True),
        hierarchy=h,
    )
    assert remapped.kept_classes == (0, 1, 2, 3)
    assert _read(tmp_path / "remap.txt") == [
        ("a.jpg", ((3, 1.0), (1, 1.0), (0, 1.0))),
        ("b.jpg", ((2, 1.0), (0, 1.0))),
        ("d.jpg", ((1, 0.8), (0, 0.8), (3, 0.9))),
        ("e.jpg", ((2, 1.0), (0, 1.0))),
    ]
    with pytest.raises(ValueError, match="needs the hierarchy"):
        subset.subset_list(tmp_path / "in.txt", tmp_path / "x.txt", config=SubsetConfig(classes=(3,)))


def test_remap_renumbers_densely(tmp_path):
    _write_list(tmp_path / "in.txt", ["a.jpg\t5:1\t4:1\t3:0.5"])
    subset.subset_list(
        tmp_path / "in.txt",
        tmp_path / "out.txt",
        config=SubsetConfig(classes=(5,), remap=True),
        hierarchy=_hierarchy(),
    )
    assert _read(tmp_path / "out.txt") == [("a.jpg", ((1, 1.0), (0, 1.0)))]


def test_single_label_lists(tmp_path):
    _write_list(tmp_path / "in.txt", ["a.jpg 3", "b.jpg 2", "c.jpg 5"])
    subset.subset_list(
        tmp_path / "in.txt",
        tmp_path / "out.txt",
        config=SubsetConfig(classes=(5, 3), remap=True),
        hierarchy=_hierarchy(),
        kind="single",
    )
    assert _read(tmp_path / "out.txt", "single") == [("a.jpg", 2), ("c.jpg", 4)]


def test_max_per_class_single_tag_lines(tmp_path):
    sizes = {0: 5, 1: 60, 2: 600}
    lines = []
    for c, n in sizes.items():
        lines += [f"c{c}_{k}.jpg\t{c}:1" for k in range(n)]
    random.Random(1).shuffle(lines)
    _write_list(tmp_path / "in.txt", lines)
    m = 20
    subset.subset_list(
        tmp_path / "in.txt", tmp_path / "out.txt", config=SubsetConfig(max_per_class=m, seed=3)
    )
    out = _read(tmp_path / "out.txt")
    per_class = collections.Counter(labels[0][0] for _, labels in out)
    assert per_class[0] == 5  # a class with <= M lines keeps all of them
    assert 10 <= per_class[1] <= m and 10 <= per_class[2] <= m
    # With one tag per line the rule is: the first M lines (file order) whose order hash is below M / n_c.
    for c, n in sizes.items():
        below = [p for p, labels in (entry for entry in _read(tmp_path / "in.txt")) if labels[0][0] == c]
        below = [p for p in below if subset.line_uniforms(p, 3)[1] < min(1.0, m / n)][:m]
        assert [p for p, labels in out if labels[0][0] == c] == below
    # Reproducible.
    subset.subset_list(
        tmp_path / "in.txt", tmp_path / "again.txt", config=SubsetConfig(max_per_class=m, seed=3)
    )
    assert (tmp_path / "again.txt").read_bytes() == (tmp_path / "out.txt").read_bytes()


def test_max_per_class_multi_label_keeps_rare_classes(tmp_path):
    rng = np.random.default_rng(0)
    lines = []
    for k in range(2000):
        tags = sorted(set(rng.choice(50, size=4, p=np.r_[0.5, np.full(49, 0.5 / 49)]).tolist()))
        lines.append(f"img{k}.jpg\t" + "\t".join(f"{t}:1" for t in tags))
    _write_list(tmp_path / "in.txt", lines)
    m = 15
    subset.subset_list(
        tmp_path / "in.txt", tmp_path / "out.txt", config=SubsetConfig(max_per_class=m, seed=0)
    )
    before = collections.Counter(t for _, labels in _read(tmp_path / "in.txt") for t, _ in labels)
    after = collections.Counter(t for _, labels in _read(tmp_path / "out.txt") for t, _ in labels)
    for c, n in before.items():
        if n <= m:
            assert after[c] == n, c
        else:
            assert after[c] >= min(n, m // 2), c
    assert sum(1 for _ in _read(tmp_path / "out.txt")) <= m * len(before)


def test_combined_filters_on_reference_urls(reference_dir, tmp_path):
    h = load_hierarchy(reference_dir / "dictionary_and_semantic_hierarchy.txt")
    config = SubsetConfig(fraction=0.8, classes=(2,), max_per_class=30, seed=0)
    result = subset.subset_list(
        reference_dir / "train_urls_tiny.txt", tmp_path / "out.txt", config=config, hierarchy=h
    )
    out = _read(tmp_path / "out.txt")
    assert result.lines_read == 100 and result.kept == len(out) <= 30
    assert all(any(t == 2 for t, _ in labels) for _, labels in out)
    assert all(t in (0, 2) or 2 in h.ancestors(t) for _, labels in out for t, _ in labels)


def test_config_validation():
    with pytest.raises(ValueError):
        SubsetConfig(fraction=0.0)
    with pytest.raises(ValueError):
        SubsetConfig(max_per_class=0)
    with pytest.raises(ValueError, match="remap needs a class subset"):
        SubsetConfig(remap=True)
    assert subset.resolve_classes(["3", "n00000005", " "], _hierarchy()) == (3, 5)


def test_the_summary_names_only_the_filters_given():
    result = subset.SubsetResult(lines_read=10, after_fraction=6, after_classes=4, kept=3, kept_classes=None)
    line = subset.summary_line(result, SubsetConfig(), "out.txt")
    assert line == "10 lines read; 3 written to out.txt"
    line = subset.summary_line(result, SubsetConfig(fraction=0.5, max_per_class=2), "out.txt")
    assert line == "10 lines read, 6 after --fraction=0.5, 3 after --max_per_class=2; 3 written to out.txt"
    line = subset.summary_line(result, SubsetConfig(classes=(1, 2)), "out.txt")
    assert line == "10 lines read, 4 with one of the 2 classes; 3 written to out.txt"


def test_cli(tmp_path, repo_root):
    h = _hierarchy()
    from data.labels.hierarchy import write_hierarchy

    write_hierarchy(tmp_path / "h.txt", h)
    _write_list(tmp_path / "in.txt", ["a.jpg\t5:1\t4:1", "b.jpg\t3:1\t1:1\t0:1", "bad line 9:x"])
    cmd = [sys.executable, str(repo_root / "tools" / "subset.py")]
    args = ["--input_list=in.txt", "--output_list=out.txt", "--hierarchy=h.txt", "--classes=n00000005"]
    args += ["--remap", "--output_hierarchy=sub.txt", "--class_map=map.tsv", "--bad_lines_report=bad.tsv"]
    proc = subprocess.run(cmd + args, cwd=tmp_path, check=True, capture_output=True, text=True, timeout=120)
    assert "2 lines read, 1 with one of the 1 classes; 1 written to out.txt" in proc.stderr  # no --fraction
    assert _read(tmp_path / "out.txt") == [("a.jpg", ((1, 1.0), (0, 1.0)))]
    assert load_hierarchy(tmp_path / "sub.txt").names == ("c4", "c5")
    assert (tmp_path / "map.tsv").read_text().splitlines()[1:] == [
        "0\t4\tn00000004\tc4",
        "1\t5\tn00000005\tc5",
    ]
    assert len((tmp_path / "bad.tsv").read_text().splitlines()) == 1
    helptext = subprocess.run([*cmd, "--help"], capture_output=True, text=True, timeout=120).stdout
    for flag in ("--fraction", "--classes", "--max_per_class", "--seed", "--remap"):
        assert flag in helptext


def _subset_cli(tmp_path, repo_root, *args):
    cmd = [
        sys.executable,
        str(repo_root / "tools" / "subset.py"),
        "--input_list=in.txt",
        "--output_list=out.txt",
    ]
    return subprocess.run([*cmd, *args], cwd=tmp_path, capture_output=True, text=True, timeout=120)


def test_a_class_file_with_a_byte_order_mark_and_crlf(tmp_path, repo_root):
    from data.labels.hierarchy import write_hierarchy

    write_hierarchy(tmp_path / "h.txt", _hierarchy())
    _write_list(tmp_path / "in.txt", ["a.jpg\t5:1\t4:1", "b.jpg\t3:1\t1:1\t0:1", "c.jpg\t2:1\t0:1"])
    (tmp_path / "classes.txt").write_bytes(b"\xef\xbb\xbfn00000005\r\n3  # a comment\r\n")
    proc = _subset_cli(tmp_path, repo_root, "--hierarchy=h.txt", "--class_file=classes.txt")
    assert proc.returncode == 0, proc.stderr
    assert [p for p, _ in _read(tmp_path / "out.txt")] == ["a.jpg", "b.jpg"]


@pytest.mark.parametrize(
    "hierarchy, message",
    [
        (
            b"category_index\tcategory_id\tindex_of_parent_category\tcategory name\n0\tn0\t-1\tc0\nbad\n",
            "h.txt:3: expected 4 TAB-separated columns, got 'bad'",
        ),
        (
            b"category_index\tcategory_id\tindex_of_parent_category\tcategory name\n0\tn0\t-1\tc\xe9\n",
            "h.txt: not UTF-8 text",
        ),
    ],
)
def test_a_bad_hierarchy_is_one_line_naming_the_file(tmp_path, repo_root, hierarchy, message):
    (tmp_path / "h.txt").write_bytes(hierarchy)
    _write_list(tmp_path / "in.txt", ["a.jpg\t0:1"])
    proc = _subset_cli(tmp_path, repo_root, "--hierarchy=h.txt", "--classes=0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.strip().splitlines()[-1].startswith(f"subset.py: error: {message}")
    assert not (tmp_path / "out.txt").exists()
