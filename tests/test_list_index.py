"""Tests for data/shards/list_index.py: the writer's split of a list into contiguous blocks of lines."""

import pytest

from data.shards import list_index


@pytest.mark.parametrize(
    "num_lines, num_shards, trailing_newline",
    [
        (10, 3, True),
        (10, 3, False),
        (7, 7, True),
        (3, 5, True),
        (3, 5, False),
        (1, 4, True),
        (0, 3, True),
        (25, 1, True),
    ],
)
def test_index_list_splits_lines_into_contiguous_blocks(tmp_path, num_lines, num_shards, trailing_newline):
    # Blank lines keep their line numbers (never the last line: without a newline it would not be one).
    lines = [f"im_{i}.jpg {i}" if i % 4 != 2 or i == num_lines - 1 else "" for i in range(num_lines)]
    text = "\n".join(lines) + ("\n" if trailing_newline and lines else "")
    path = tmp_path / "list.txt"
    path.write_text(text)
    index = list_index.index_list(str(path), num_shards)
    assert index.num_lines == num_lines and index.num_bytes == len(text)
    assert len(index.offsets) == len(index.first_lines) == num_shards + 1
    data = text.encode()
    for s in range(num_shards):
        first, end = s * num_lines // num_shards, (s + 1) * num_lines // num_shards
        assert (index.first_lines[s], index.first_lines[s + 1]) == (first, end)
        block = data[index.offsets[s] : index.offsets[s + 1]].decode()
        assert block.splitlines() == lines[first:end], s
        assert index.num_lines_of(s) == end - first


def test_a_list_that_changes_between_the_passes_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "list.txt"
    path.write_text("".join(f"im_{i}.jpg 1\n" for i in range(10)))
    real_open = open
    calls = []

    def open_then_truncate(file, mode="r", *args, **kwargs):
        calls.append(file)
        if len(calls) == 2:  # The second pass finds a shorter file.
            path.write_text("im_0.jpg 1\n")
        return real_open(file, mode, *args, **kwargs)

    monkeypatch.setattr("builtins.open", open_then_truncate)
    with pytest.raises(RuntimeError, match="changed while it was being indexed"):
        list_index.index_list(str(path), 4)
