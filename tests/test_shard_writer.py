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


def test_image_paths_follow_symlinks_only_inside_the_root(tmp_path):
    """The writer's names -> files: a link (the file's or a folder's) may point anywhere inside the root,
    which may itself be a link; one that leads out is refused before anything is opened."""
    real_root = tmp_path / "disk2" / "images"
    (real_root / "sub").mkdir(parents=True)
    (tmp_path / "img").symlink_to(real_root)
    (real_root / "sub" / "a.jpg").write_bytes(b"a")
    (tmp_path / "secret.jpg").write_bytes(b"s")
    links = {
        "in.jpg": "sub/a.jpg",
        "dir_in": str(real_root / "sub"),
        "out.jpg": str(tmp_path / "secret.jpg"),
        "chain.jpg": "out.jpg",
        "dir_out": str(tmp_path),
        "zero.jpg": "/dev/zero",
        "passwd.jpg": "/etc/passwd",
    }
    for name, target in links.items():
        (real_root / name).symlink_to(target)
    root = str(tmp_path / "img")
    paths = shard_writer.ImagePaths(root, allow_outside_root=False)
    for name in ("sub/a.jpg", "in.jpg", "dir_in/a.jpg", "missing.jpg", "sub/missing.jpg"):
        assert paths(name) == os.path.join(root, name)  # a missing file is read_file's "missing file"
    for name in ("out.jpg", "chain.jpg", "dir_out/secret.jpg", "zero.jpg", "passwd.jpg"):
        with pytest.raises(images.BadImage) as raised:
            paths(name)
        assert raised.value.reason == "outside image_root (through a symlink)", name
    with pytest.raises(images.BadImage, match="^outside image_root$"):
        paths("../secret.jpg")
    allowed = shard_writer.ImagePaths(root, allow_outside_root=True)
    assert allowed("zero.jpg") == os.path.join(root, "zero.jpg")
    with pytest.raises(images.BadImage, match=r"not a regular file \(a character device\)"):
        images.read_file(allowed("zero.jpg"))
