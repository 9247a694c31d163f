"""Tests for data/labels/annotations.py: every list format, the release's lists, bad lines and the round trip."""

import gzip
import pathlib

import pytest

from data.labels import annotations
from data.labels.annotations import Entry, ErrorLog, LineError


def _write(tmp_path: pathlib.Path, text: str, name: str = "list.txt") -> pathlib.Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def _naive_tags(line: str) -> tuple[str, tuple[tuple[int, float], ...]]:
    """The obviously correct reading of one multi-label line, used as the oracle."""
    path, *tokens = line.split()
    tags = []
    for token in tokens:
        index, _, conf = token.partition(":")
        tags.append((int(index), float(conf) if conf else 1.0))
    return path, tuple(tags)


# (line, kind, expected path, expected labels)
FORMATS = [
    # URL list, TAB separated, as in train_urls.txt.
    (
        "https://farm2.staticflickr.com/2034/1557324960_1ae893fed8_o.jpg\t4097:1\t2:0.9",
        "multi",
        "https://farm2.staticflickr.com/2034/1557324960_1ae893fed8_o.jpg",
        ((4097, 1.0), (2, 0.9)),
    ),
    # ImageNet-id list, spaces, bare indices mean confidence 1.
    (
        "n01440764/n01440764_10026.JPEG 1 5:0.8 11165",
        "multi",
        "n01440764/n01440764_10026.JPEG",
        ((1, 1.0), (5, 0.8), (11165, 1.0)),
    ),
    # Image list, mixed TABs and runs of spaces, trailing whitespace, Windows line end.
    (
        "74229536_063452179d_o.jpg \t 9416:1.0\t\t9413:1.0   3:1.0 \r\n",
        "multi",
        "74229536_063452179d_o.jpg",
        ((9416, 1.0), (9413, 1.0), (3, 1.0)),
    ),
    # Image list without annotations (im_list_for_classification.txt).
    ("data/images/im_0.jpg", "multi", "data/images/im_0.jpg", ()),
    # Confidence 0 and other exact spellings.
    ("a.jpg 0:0 7:1e-1 8:.5", "multi", "a.jpg", ((0, 0.0), (7, 0.1), (8, 0.5))),
    # Single-label list (ImageNet fine-tuning), TAB or space.
    ("train/n01440764/n01440764_10026.JPEG\t0", "single", "train/n01440764/n01440764_10026.JPEG", 0),
    ("val/ILSVRC2012_val_00000001.JPEG 65", "single", "val/ILSVRC2012_val_00000001.JPEG", 65),
]


@pytest.mark.parametrize("line, kind, path, labels", FORMATS)
def test_parse_line_formats(line, kind, path, labels):
    assert annotations.parse_line(line, kind=kind, num_classes=11166) == (path, labels)


@pytest.mark.parametrize("line, kind, path, labels", FORMATS)
def test_iter_entries_formats(tmp_path, line, kind, path, labels):
    file = _write(tmp_path, line.rstrip("\r\n") + "\n")
    assert list(annotations.iter_entries(file, kind=kind, num_classes=11166, on_error="fail")) == [
        Entry(path, labels, 1)
    ]


def test_reference_url_list(reference_dir):
    path = reference_dir / "train_urls_tiny.txt"
    lines = path.read_text().splitlines()
    entries = list(annotations.iter_entries(path, num_classes=11166, on_error="fail"))
    assert len(entries) == len(lines) == 100
    assert [e.line_no for e in entries] == list(range(1, 101))
    assert entries[0] == Entry(
        "https://farm2.staticflickr.com/2034/1557324960_1ae893fed8_o.jpg",
        tuple((i, 1.0) for i in (4097, 4089, 4063, 1837, 1054, 1041, 865, 2, 4129, 4132)),
        1,
    )
    assert entries[1].labels == ((4767, 0.9), (4765, 0.9))
    for entry, line in zip(entries, lines, strict=True):
        assert (entry.path, entry.labels) == _naive_tags(line)
        assert entry.path.startswith(("http://", "https://"))
    confidences = {conf for entry in entries for _, conf in entry.labels}
    assert confidences <= {1.0, 0.9, 0.8}  # docs/REFERENCE.md section 1: the released confidences.
    assert all(0 <= index < 11166 for entry in entries for index, _ in entry.labels)


def test_reference_image_lists(reference_dir):
    path = reference_dir / "train_im_list_tiny.txt"
    entries = list(annotations.iter_entries(path, num_classes=11166, on_error="fail"))
    lines = path.read_text().splitlines()
    assert len(entries) == 100
    assert [(e.path, e.labels) for e in entries] == [_naive_tags(line) for line in lines]
    assert entries[0] == Entry(
        "17382017900_f7152f6e1c_o.jpg", ((940, 0.8), (860, 0.8), (17, 1.0), (1, 1.0)), 1
    )
    plain = list(annotations.iter_entries(reference_dir / "im_list_for_classification.txt", on_error="fail"))
    assert [(e.path, e.labels) for e in plain] == [(f"data/images/im_{i}.jpg", ()) for i in range(4)]


# (line, kind, part of the reason)
MALFORMED = [
    ("a.jpg 11166:1", "multi", "11166 >= num_classes 11166"),
    ("a.jpg 3:1.5", "multi", "outside [0, 1]"),
    ("a.jpg 3:-0.1", "multi", "outside [0, 1]"),
    ("a.jpg 3:nan", "multi", "outside [0, 1]"),
    ("a.jpg 3:inf", "multi", "outside [0, 1]"),
    ("a.jpg 3:", "multi", "not a number"),
    ("a.jpg 3:high", "multi", "not a number"),
    ("a.jpg 3:0.5:1", "multi", "not a number"),
    ("a.jpg x:1", "multi", "not an integer"),
    ("a.jpg 2.5", "multi", "not an integer"),
    ("a.jpg +3", "multi", "not an integer"),
    ("a.jpg 1_0", "multi", "not an integer"),
    ("a.jpg -1:1", "multi", "negative"),
    ("a.jpg 3:1 3:0.9", "multi", "appears twice"),
    ("a.jpg", "single", "expected 'path label_int'"),
    ("a.jpg 1 2", "single", "expected 'path label_int'"),
    ("a.jpg 1:1", "single", "not an integer"),
    ("a.jpg 1000", "single", ">= num_classes"),
]


@pytest.mark.parametrize("line, kind, reason", MALFORMED)
def test_malformed_line_fails_with_file_and_line_number(tmp_path, line, kind, reason):
    good = "good.jpg 1\n" if kind == "single" else "good.jpg 1:1\n"
    file = _write(tmp_path, good + "\n" + line + "\n" + good)
    num_classes = 1000 if kind == "single" else 11166
    entries = annotations.iter_entries(file, kind=kind, num_classes=num_classes, on_error="fail")
    assert next(entries).line_no == 1
    with pytest.raises(LineError) as caught:
        next(entries)
    error = caught.value
    assert (error.file, error.line_no) == (str(file), 3)  # The blank line 2 still counts.
    assert str(error).startswith(f"{file}:3: ")
    assert reason in str(error) and reason in error.reason
    assert error.line.rstrip("\n") == line
    assert isinstance(error, ValueError)


def test_skip_counts_reports_and_keeps_going(tmp_path):
    lines = ["a.jpg 1:1", "b.jpg 11166:1", "c.jpg 2:0.9", "d.jpg 3:7", "", "e.jpg\tx", "f.jpg 4"]
    file = _write(tmp_path, "\n".join(lines) + "\n")
    report = tmp_path / "bad_lines.tsv"
    with ErrorLog(report) as errors:
        entries = list(annotations.iter_entries(file, num_classes=11166, on_error="skip", errors=errors))
    assert [(e.path, e.line_no) for e in entries] == [("a.jpg", 1), ("c.jpg", 3), ("f.jpg", 7)]
    assert errors.count == 3
    assert [(e.line_no, e.file) for e in errors.examples] == [(2, str(file)), (4, str(file)), (6, str(file))]
    rows = [row.split("\t") for row in report.read_text().splitlines()]
    assert [(row[0], row[1]) for row in rows] == [(str(file), "2"), (str(file), "4"), (str(file), "6")]
    assert "11166 >= num_classes" in rows[0][2] and "outside [0, 1]" in rows[1][2]
    assert rows[0][3] == "b.jpg 11166:1" and rows[2][3] == "e.jpg x"  # TABs in the text become spaces.
    # Without an ErrorLog the bad lines are still skipped.
    assert len(list(annotations.iter_entries(file, num_classes=11166))) == 3


def test_error_log_memory_is_bounded_and_report_is_complete(tmp_path):
    file = _write(tmp_path, "".join(f"x{i}.jpg {i}:2\n" for i in range(50)))
    report = tmp_path / "report.tsv"
    with ErrorLog(report, max_kept=5) as errors:
        assert list(annotations.iter_entries(file, errors=errors)) == []
    assert errors.count == 50 and len(errors.examples) == 5
    assert len(report.read_text().splitlines()) == 50
    quiet = ErrorLog(tmp_path / "never.tsv")
    assert list(annotations.iter_entries(_write(tmp_path, "ok.jpg 1\n", "ok.txt"), errors=quiet))
    quiet.close()
    assert not (tmp_path / "never.tsv").exists()  # No bad line, no report file.


def test_invalid_utf8_line(tmp_path):
    file = _write(tmp_path, b"a.jpg 1\n\xff\xfe.jpg 2\nc.jpg 3\n")
    errors = ErrorLog()
    assert [e.path for e in annotations.iter_entries(file, errors=errors)] == ["a.jpg", "c.jpg"]
    assert errors.examples[0].line_no == 2 and "utf-8" in errors.examples[0].reason
    with pytest.raises(LineError, match=":2: "):
        list(annotations.iter_entries(file, on_error="fail"))


def test_without_num_classes_any_index_is_accepted(tmp_path):
    file = _write(tmp_path, "a.jpg 99999:1\n")
    assert list(annotations.iter_entries(file, on_error="fail"))[0].labels == ((99999, 1.0),)


def test_bad_arguments(tmp_path):
    file = _write(tmp_path, "a.jpg 1\n")
    with pytest.raises(ValueError, match="kind"):
        list(annotations.iter_entries(file, kind="url"))
    with pytest.raises(ValueError, match="on_error"):
        list(annotations.iter_entries(file, on_error="ignore"))
    with pytest.raises(FileNotFoundError):
        list(annotations.iter_entries(tmp_path / "missing.txt"))


ROUND_TRIP = {
    "multi": [
        Entry("https://example.com/a_o.jpg", ((4097, 1.0), (2, 0.9)), 1),
        Entry("n01440764/n01440764_1.JPEG", ((7, 0.8),), 2),
        Entry("b.jpg", (), 3),
        Entry("c.jpg", ((0, 0.0), (11165, 0.123456789), (5, 1 / 3)), 4),
    ],
    "single": [Entry("train/a.JPEG", 0, 1), Entry("train/b.JPEG", 999, 2)],
}


@pytest.mark.parametrize("kind", ["multi", "single"])
@pytest.mark.parametrize("name", ["list.txt", "list.txt.gz"])
def test_write_read_round_trip(tmp_path, kind, name):
    path = tmp_path / name
    assert annotations.write_entries(path, iter(ROUND_TRIP[kind]), kind=kind) == len(ROUND_TRIP[kind])
    assert list(annotations.iter_entries(path, kind=kind, on_error="fail")) == ROUND_TRIP[kind]
    assert [p.name for p in tmp_path.iterdir()] == [name]  # The temp file was renamed away.
    text = gzip.decompress(path.read_bytes()).decode() if name.endswith(".gz") else path.read_text()
    if kind == "multi":
        assert text.splitlines()[0] == "https://example.com/a_o.jpg\t4097:1\t2:0.9"
    else:
        assert text.splitlines() == ["train/a.JPEG\t0", "train/b.JPEG\t999"]


def test_write_reference_list_round_trips_to_the_same_entries(reference_dir, tmp_path):
    entries = list(annotations.iter_entries(reference_dir / "train_urls_tiny.txt", on_error="fail"))
    annotations.write_entries(tmp_path / "urls.txt", entries)
    assert list(annotations.iter_entries(tmp_path / "urls.txt", on_error="fail")) == entries


def test_write_refuses_what_the_format_cannot_express_and_leaves_no_file(tmp_path):
    path = tmp_path / "out.txt"
    for entries, kind in (
        ([Entry("a.jpg", ((1, 1.0),), 1), Entry("has space.jpg", (), 2)], "multi"),
        ([Entry("a.jpg", (), 1)], "single"),
        ([Entry("a.jpg", 3, 1)], "multi"),
        ([Entry("a.jpg", ((1, float("nan")),), 1)], "multi"),
        ([Entry("", (), 1)], "multi"),
    ):
        with pytest.raises(ValueError):
            annotations.write_entries(path, entries, kind=kind)
        assert list(tmp_path.iterdir()) == []


def test_format_confidence_is_shortest_exact():
    assert [annotations.format_confidence(c) for c in (1.0, 0.9, 0.8, 0.0, 0.25)] == [
        "1",
        "0.9",
        "0.8",
        "0",
        "0.25",
    ]
    assert float(annotations.format_confidence(1 / 3)) == 1 / 3


def test_a_byte_order_mark_and_crlf_are_not_part_of_the_fields(tmp_path):
    path = tmp_path / "list.txt"
    path.write_bytes(b"\xef\xbb\xbfa.jpg\t3:1\r\nb.jpg\t4:0.9\r\n")
    entries = list(annotations.iter_entries(path, num_classes=10, on_error="fail"))
    assert [(e.path, e.labels, e.line_no) for e in entries] == [
        ("a.jpg", ((3, 1.0),), 1),
        ("b.jpg", ((4, 0.9),), 2),
    ]
