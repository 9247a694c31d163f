"""Image bytes by ImageNet ID (``nXXXXXXXX/nXXXXXXXX_N.JPEG``) straight from the archive ImageNet ships.

Three fifths of ML-Images are given only as ImageNet IDs (`train_image_id_from_imagenet.txt`), to be taken
from the ImageNet Fall 2011 release: one tar per synset (`nXXXXXXXX.tar`, members `nXXXXXXXX_N.JPEG`),
shipped as one outer tar of those tars (`fall11_whole.tar`, 1.31 TB). Extracting it means ten million
files; this module reads the members where they are:

- a folder of per-synset tars (`DIR/nXXXXXXXX.tar`; also what unpacking only the outer layer of
  `winter21_whole.tar.gz` gives);
- the outer tar itself (an uncompressed tar of per-synset tars): its members are indexed once by their
  headers (a seek per synset), then each synset tar is read as a byte range of the outer file;
- a gzipped outer tar (`winter21_whole.tar.gz`, which image-net.org distributes today; told by its gzip
  magic, not its name): it can only be read front to back, so it is read once, by one reader
  (`ImageNetArchive.stream_synsets`), each synset tar in it read in stream mode as it passes; the writer
  feeds its shard workers from that reader (`data.shards.archive_feed`). A truncated or corrupt stream
  stops the reader with one line naming the file (`ArchiveUnreadable`);
- an extracted tree (`DIR/nXXXXXXXX/nXXXXXXXX_N.JPEG`), read like the writer's `--image_root`.

A synset tar is read once, front to back, and only the members asked for are kept in memory
(`ImageNetArchive.synset`), so a shard of the writer reads each of its synsets sequentially. IDs the
archive lacks (later ImageNet releases removed synsets and images) are reported as missing by the
caller, one skip reason per ID.
"""

from __future__ import annotations

import gzip
import os
import re
import tarfile
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from typing import IO

from data.pixels import images

ID_PATTERN = re.compile(r"(n\d{8})/(n\d{8}_\d+\.[A-Za-z]+)")
KINDS = ("tars", "outer_tar", "outer_tar_gz", "tree")
GZIP_MAGIC = b"\x1f\x8b"
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


def is_gzipped(path: str | os.PathLike[str]) -> bool:
    """Whether `path` is a file that starts with the gzip magic (whatever its name)."""
    try:
        with open(path, "rb") as f:
            return f.read(2) == GZIP_MAGIC
    except (IsADirectoryError, FileNotFoundError):
        return False


class ArchiveUnreadable(ValueError):
    """The gzipped outer tar cannot be read on (truncated, corrupt): the run stops, with one line."""


class _OuterError(Exception):
    """A read of the outer stream failed while a synset tar was being read from it (not the synset's fault:
    kept apart from the `tarfile` errors that refuse one synset tar)."""


class _OuterReads:
    """A synset tar's bytes as the outer stream gives them; a failed read is the outer stream's
    (`_OuterError`)."""

    def __init__(self, fileobj: IO[bytes]):
        self._f = fileobj

    def read(self, n: int = -1) -> bytes:
        try:
            return self._f.read(n)
        except Exception as e:  # noqa: BLE001 (whatever it is, the outer stream is broken)
            raise _OuterError(e) from e


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
      ValueError: `path` is none of these (missing, not a tar, a gzipped file that is no tar).
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
            self.kind = "outer_tar_gz" if is_gzipped(self.path) else "outer_tar"
            try:
                is_tar = tarfile.is_tarfile(self.path)  # of a gzipped one: its first header, decompressed
            except (OSError, EOFError, zlib.error):
                is_tar = False
            if not is_tar:
                gzipped = "gzipped file" if self.kind == "outer_tar_gz" else "file"
                raise ValueError(f"{self.path} is not a tar {gzipped}")
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
        if self.kind == "outer_tar_gz":
            raise ValueError(
                f"{self.path} is gzipped: it can only be read front to back (`stream_synsets`), not by synset"
            )
        if self._outer is None:
            self._index_outer()
        member = self._members.get(wnid)
        if member is None:
            raise images.BadImage(MISSING_SYNSET)
        self._outer.seek(member.offset_data)
        return self._read_members(_Range(self._outer, member.size), wanted)

    def stream_synsets(
        self, wanted: Callable[[str], Collection[str] | None]
    ) -> Iterator[tuple[str, dict[str, bytes | images.BadImage] | images.BadImage]]:
        """Reads the gzipped outer tar front to back, once, and each synset tar in it as it passes.

        Args:
          wanted: Called with each synset of the archive, in archive order: the members of it to keep, or
            None to pass it by (its bytes are still decompressed, never kept).

        Yields:
          ``(synset, members)`` for each wanted synset, in archive order: `members` as `synset` gives them,
          or the `images.BadImage` that refuses the synset's tar (unreadable).

        Raises:
          ArchiveUnreadable: (one line naming the file) the stream is truncated or corrupt, or the outer tar
            ends before the gzip stream does.
        """
        if self.kind != "outer_tar_gz":
            raise ValueError(f"{self.path} is not a gzipped outer tar")
        try:
            with open(self.path, "rb") as raw, gzip.GzipFile(fileobj=raw, mode="rb") as stream:
                # tarfile's own "r|gz" does not check the gzip trailer (CRC, length) nor see a truncation
                # at a header; GzipFile does (EOFError, BadGzipFile).
                with tarfile.open(fileobj=stream, mode="r|") as outer:
                    for member in outer:
                        name = os.path.basename(member.name)
                        if not (member.isfile() and name.endswith(".tar")):
                            continue
                        keep = wanted(name[: -len(".tar")])
                        if keep is None:
                            continue
                        try:
                            found = self._read_members(_OuterReads(outer.extractfile(member)), set(keep))
                        except images.BadImage as e:
                            found = e
                        yield name[: -len(".tar")], found
                # A tar ends with zero blocks; anything else after the end it saw means a header was
                # garbage (tarfile stops there silently): a corrupt archive, not a short one.
                while block := stream.read(1 << 20):
                    if block.strip(b"\0"):
                        raise tarfile.ReadError(
                            "the outer tar ends before the gzip stream (a corrupt header)"
                        )
        except _OuterError as e:
            error = e.__cause__
        except (tarfile.TarError, OSError, EOFError, zlib.error) as e:
            error = e
        else:
            return
        raise ArchiveUnreadable(
            f"{self.path}: unreadable gzipped archive ({type(error).__name__}: {error}); "
            "check or download it again"
        ) from None

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
