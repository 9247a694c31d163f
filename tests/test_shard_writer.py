"""Tests for data/shards/shard_writer.py: which file a list name reads (the rest is tested through the writer)."""

import os

import pytest

from data.pixels import images
from data.shards import shard_writer

ROOT = "/data/images"


@pytest.mark.parametrize(
    "name, expected",
    [
        ("a.jpg", "/data/images/a.jpg"),
        ("n01/n01_1.JPEG", "/data/images/n01/n01_1.JPEG"),
        ("./a.jpg", "/data/images/a.jpg"),
        ("sub/../a.jpg", "/data/images/a.jpg"),
        ("sub//a.jpg", "/data/images/sub/a.jpg"),
        ("..a.jpg", "/data/images/..a.jpg"),  # A name that starts with dots, not a parent reference.
        ("../a.jpg", None),
        ("sub/../../a.jpg", None),
        ("..", None),
        ("../images/a.jpg", "/data/images/a.jpg"),  # Leaves and comes back: the same file, allowed.
        ("../images2/a.jpg", None),  # A sibling whose name starts like the root's.
        ("/data/images/a.jpg", None),  # Absolute names are refused even into the root.
        ("/etc/passwd", None),
    ],
)
def test_image_path(name, expected):
    if expected is None:
        with pytest.raises(images.BadImage) as raised:
            shard_writer.image_path(ROOT, name, allow_outside_root=False)
        assert raised.value.reason == "outside image_root"
        allowed = shard_writer.image_path(ROOT, name, allow_outside_root=True)
        assert allowed == os.path.normpath(os.path.join(ROOT, name))
    else:
        assert shard_writer.image_path(ROOT, name, allow_outside_root=False) == expected


def test_image_path_under_the_file_system_root():
    assert shard_writer.image_path("/", "a/b.jpg", allow_outside_root=False) == "/a/b.jpg"
    assert shard_writer.image_path("/", "../b.jpg", allow_outside_root=False) == "/b.jpg"
    with pytest.raises(images.BadImage):
        shard_writer.image_path("/", "/b.jpg", allow_outside_root=False)
