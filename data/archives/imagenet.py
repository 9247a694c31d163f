"""Image bytes by ImageNet ID (``nXXXXXXXX/nXXXXXXXX_N.JPEG``) straight from the archive ImageNet ships.

Three fifths of ML-Images are given only as ImageNet IDs (`train_image_id_from_imagenet.txt`), to be taken
from the ImageNet Fall 2011 release: one tar per synset (`nXXXXXXXX.tar`, members `nXXXXXXXX_N.JPEG`),
shipped as one outer tar of those tars (`fall11_whole.tar`, 1.31 TB). Extracting it means ten million
files; this module reads the members where they are:

- a folder of per-synset tars (`DIR/nXXXXXXXX.tar`; also what unpacking only the outer layer of
  `winter21_whole.tar.gz` gives: a gzipped tar can only be read front to back, so it is not read directly);
- the outer tar itself (an uncompressed tar of per-synset tars): its members are indexed once by their
  headers (a seek per synset), then each synset tar is read as a byte range of the outer file;
- an extracted tree (`DIR/nXXXXXXXX/nXXXXXXXX_N.JPEG`), read like the writer's `--image_root`.

A synset tar is read once, front to back, and only the members asked for are kept in memory
(`ImageNetArchive.synset`), so a shard of the writer reads each of its synsets sequentially. IDs the
archive lacks (later ImageNet releases removed synsets and images) are reported as missing by the
caller, one skip reason per ID.
"""

from __future__ import annotations

import os
import re
import tarfile
from collections.abc import Collection, Mapping
from typing import IO

from data.pixels import images

ID_PATTERN = re.compile(r"(n\d{8})/(n\d{8}_\d+\.[A-Za-z]+)")
KINDS = ("tars", "outer_tar", "tree")
MISSING_SYNSET = "synset not in the archive"
MISSING_IMAGE = "not in the archive"


def parse_id(name: str) -> tuple[str, str]:
    """``nXXXXXXXX/nXXXXXXXX_N.JPEG`` -> (synset, member name); `images.BadImage` for anything else."""
    match = ID_PATTERN.fullmatch(name)
    if not match or not match.group(2).startswith(match.group(1)):
        raise images.BadImage("not an ImageNet ID (nXXXXXXXX/nXXXXXXXX_N.JPEG)")
    return match.group(1), match.group(2)


def member_bytes(
    members: Mapping[str, bytes | images.BadImage], member: str, synset_error: images.BadImage | None = None
) -> bytes:
    """The bytes of `member` among its synset's `members` (`ImageNetArchive.synset`).

    Raises:
      images.BadImage: `synset_error` (the synset itself could not be read), `MISSING_IMAGE`, or the member's
        own refusal.
    """
    if synset_error is not None:
        raise synset_error
    data = members.get(member)
    if data is None:
        raise images.BadImage(MISSING_IMAGE)
    if isinstance(data, images.BadImage):
        raise data
    return data


class _Range:
    """A read-only, forward-only view of `size` bytes of `f` from its current position (a member of the
    outer tar, given to `tarfile` in stream mode)."""

    def __init__(self, f: IO[bytes], size: int):
        self._f = f
        self._left = size

    def read(self, n: int = -1) -> bytes:
        n = self._left if n < 0 else min(n, self._left)
        data = self._f.read(n)
        self._left -= len(data)
        return data


class ImageNetArchive:
    """One ImageNet source (see the module docstring); open it once per worker and `close` it.

    Args:
      path: a folder of per-synset tars, an uncompressed outer tar of them, or an extracted tree.
      max_bytes: members larger than this are refused like a file over the writer's limit.

    Raises:
      ValueError: `path` is none of these (missing, a gzipped tar, not a tar).
    """

    def __init__(self, path: str | os.PathLike[str], *, max_bytes: int | None = None):
        self.path = os.path.abspath(os.fspath(path))
        self.max_bytes = images.DEFAULT_MAX_FILE_BYTES if max_bytes is None else max_bytes
        self._outer: IO[bytes] | None = None
        self._members: dict[str, tarfile.TarInfo] = {}
        if os.path.isdir(self.path):
            with os.scandir(self.path) as entries:
                has_tars = any(e.name.endswith(".tar") and e.is_file() for e in entries)
            self.kind = "tars" if has_tars else "tree"
        elif os.path.isfile(self.path):
            self.kind = "outer_tar"
            with open(self.path, "rb") as f:
                magic = f.read(2)
            if magic == b"\x1f\x8b":
                raise ValueError(
                    f"{self.path} is gzipped: a gzipped tar can only be read front to back; unpack its outer "
                    "layer (tar xzf) and give the folder of per-synset tars"
                )
            if not tarfile.is_tarfile(self.path):
                raise ValueError(f"{self.path} is not a tar file")
        else:
            raise ValueError(f"ImageNet archive {self.path} not found")

    def close(self) -> None:
        if self._outer is not None:
            self._outer.close()
            self._outer = None

    def __enter__(self) -> ImageNetArchive:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _index_outer(self) -> None:
        """The outer tar's members by synset: one header read (and a seek) per synset tar."""
        self._outer = open(self.path, "rb")  # noqa: SIM115 (kept open for the archive's life)
        with tarfile.open(fileobj=self._outer, mode="r:") as outer:
            for member in outer:
                name = os.path.basename(member.name)
                if member.isfile() and name.endswith(".tar"):
                    self._members[name[: -len(".tar")]] = member

    def synset(self, wnid: str, wanted: Collection[str]) -> dict[str, bytes | images.BadImage]:
        """The members of synset `wnid` named in `wanted`, read in one sequential pass.

        Returns:
          {member name: its bytes, or the `images.BadImage` that refuses it (too large, not a file)}; a
          wanted member the synset lacks is absent.

        Raises:
          images.BadImage: the archive has no such synset (`MISSING_SYNSET`), or its tar cannot be read.
        """
        wanted = set(wanted)
        if self.kind == "tree":
            found: dict[str, bytes | images.BadImage] = {}
            for member in wanted:
                try:
                    found[member] = images.read_file(
                        os.path.join(self.path, wnid, member), max_bytes=self.max_bytes
                    )
                except images.BadImage as e:
                    if e.reason != "missing file":
                        found[member] = e
            if not found and not os.path.isdir(os.path.join(self.path, wnid)):
                raise images.BadImage(MISSING_SYNSET)
            return found
        if self.kind == "tars":
            path = os.path.join(self.path, f"{wnid}.tar")
            if not os.path.isfile(path):
                raise images.BadImage(MISSING_SYNSET)
            with open(path, "rb") as f:
                return self._read_members(f, wanted)
        if self._outer is None:
            self._index_outer()
        member = self._members.get(wnid)
        if member is None:
            raise images.BadImage(MISSING_SYNSET)
        self._outer.seek(member.offset_data)
        return self._read_members(_Range(self._outer, member.size), wanted)

    def _read_members(self, fileobj, wanted: set[str]) -> dict[str, bytes | images.BadImage]:
        found: dict[str, bytes | images.BadImage] = {}
        try:
            with tarfile.open(fileobj=fileobj, mode="r|") as tar:  # stream mode: front to back, no seek
                for member in tar:
                    name = os.path.basename(member.name)
                    if name not in wanted:
                        continue
                    if not member.isfile():
                        found[name] = images.BadImage("not a regular file (in the archive)")
                    elif self.max_bytes > 0 and member.size > self.max_bytes:
                        found[name] = images.BadImage(
                            f"too large: {member.size} bytes (over {self.max_bytes})"
                        )
                    else:
                        found[name] = tar.extractfile(member).read()
        except (tarfile.TarError, OSError) as e:
            raise images.BadImage(f"unreadable synset tar: {type(e).__name__}: {e}") from None
        return found
