"""Tests for data/fileio.py: atomic replacement, for files written by us and by name-taking writers."""

import os
import stat
import subprocess
import sys

import pytest
import tensorflow as tf

from data import fileio


def _temp_files(folder) -> list[str]:
    return [name for name in os.listdir(folder) if name.endswith(".tmp")]


def test_atomic_path_gives_a_name_for_writers_that_open_files_themselves(tmp_path):
    final = tmp_path / "out" / "shard.tfrecord"
    with fileio.atomic_path(final) as temp:
        assert os.path.dirname(temp) == str(final.parent) and os.path.basename(temp).startswith(
            ".shard.tfrecord."
        )
        with tf.io.TFRecordWriter(temp) as writer:
            writer.write(b"record")
        assert not final.exists()  # Not under the final name before the block ends.
    assert [r.numpy() for r in tf.data.TFRecordDataset(str(final))] == [b"record"]
    assert _temp_files(final.parent) == []


def test_a_failed_block_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    final = tmp_path / "manifest.json"
    fileio.write_text(final, "old")
    with pytest.raises(RuntimeError), fileio.atomic_path(final) as temp:
        with open(temp, "w") as f:
            f.write("half")
        raise RuntimeError("crash")
    with pytest.raises(KeyboardInterrupt), fileio.atomic_write(final) as f:
        f.write("half")
        raise KeyboardInterrupt
    assert final.read_text() == "old" and _temp_files(tmp_path) == []


def test_files_get_the_umasks_permissions_not_privates(tmp_path):
    """Datasets and checkpoints are read by other users and machines, as files made with `open` would be."""
    old = os.umask(0o022)
    try:
        fileio.write_json(tmp_path / "a.json", {"x": 1})
        with fileio.atomic_path(tmp_path / "b.tfrecord") as temp, tf.io.TFRecordWriter(temp) as writer:
            writer.write(b"x")
        os.umask(0o077)
        fileio.write_bytes(tmp_path / "c.bin", b"x")
    finally:
        os.umask(old)
    modes = {
        name: stat.S_IMODE(os.stat(tmp_path / name).st_mode) for name in ("a.json", "b.tfrecord", "c.bin")
    }
    assert modes == {"a.json": 0o644, "b.tfrecord": 0o644, "c.bin": 0o600}


def test_remove_temp_files_removes_what_a_killed_writer_left(tmp_path, repo_root):
    final = tmp_path / "shard.tfrecord"
    code = (
        "import os, sys\n"
        "from data import fileio\n"
        "with fileio.atomic_path(sys.argv[1]) as temp:\n"
        "    open(temp, 'wb').write(b'partial'); os._exit(9)\n"
    )
    for _ in range(2):
        killed = subprocess.run(
            [sys.executable, "-c", code, str(final)],
            env={**os.environ, "PYTHONPATH": str(repo_root)},
            timeout=60,
        )
        assert killed.returncode == 9
    (tmp_path / ".other.tfrecord.abc.tmp").write_bytes(b"another file's")
    assert len(_temp_files(tmp_path)) == 3 and not final.exists()
    assert fileio.remove_temp_files(final) == 2
    assert _temp_files(tmp_path) == [".other.tfrecord.abc.tmp"]
