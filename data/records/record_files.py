"""TFRecord files read at the framing level, without TensorFlow: last record, record count, damage.

A TFRecord file is a sequence of records framed as ``uint64 length | uint32 masked_crc32c(length) | data |
uint32 masked_crc32c(data)`` (little-endian). TensorFlow only notices a cut-off file when its reader reaches
the end, as a ``DataLossError`` that names an offset but not the file. Reading the framing directly lets the
input pipeline check a folder before the first step, name the damaged file and count records where no
manifest does:

- `read_last_record` finds the last record by scanning back from the end of the file (a record's header is
  recognised by its length landing exactly on the end of the file AND its length CRC matching), so a file
  cut short by any number of bytes is found by reading about one record, whatever the file's size;
- `count_records` walks the headers (16 bytes read per record, the data skipped) and says where the framing
  breaks.
"""

from __future__ import annotations

import os
import struct
from collections.abc import Iterable

import numpy as np

# One CRC for reading and writing: the writer's (google-crc32c, or its numpy fallback), also for the 8-byte
# length headers this module checks. Re-exported: callers know it as record_files.masked_crc32c.
from data.records.record_writer import masked_crc32c

_HEADER = 12  # uint64 length + uint32 masked CRC of the length
_FOOTER = 4  # uint32 masked CRC of the data
_FRAMING = _HEADER + _FOOTER
_FIRST_TAIL = 1 << 17  # bytes read from the end first (a reference record is ~60 KB); doubled as needed


class DamagedRecordFile(ValueError):
    """A TFRecord file whose framing is broken; the message is one line naming the file."""


def _valid_header(header: bytes) -> int | None:
    """The record length of a 12-byte header, or None when its CRC does not match."""
    length, crc = struct.unpack("<QI", header)
    return length if masked_crc32c(header[:8]) == crc else None


def count_records(path: str | os.PathLike) -> int:
    """Number of records in `path`, by walking the headers (the data is skipped, not read).

    Cost: one 12-byte ``pread`` per record. Every header's CRC is checked and the last record must
    end exactly at the end of the file.

    Raises:
      DamagedRecordFile: a header with a bad CRC or a record cut short, naming the file and record index.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    count = offset = 0
    fd = os.open(path, os.O_RDONLY)
    try:
        while offset < size:
            header = os.pread(fd, _HEADER, offset)
            length = _valid_header(header) if len(header) == _HEADER else None
            if length is None or offset + _FRAMING + length > size:
                what = (
                    "is cut short" if length is not None or len(header) < _HEADER else "has a corrupt header"
                )
                raise DamagedRecordFile(
                    f"{path}: record {count} (at byte {offset}) {what}: the file is truncated or damaged "
                    f"({size} bytes); rewrite or remove it"
                )
            offset += _FRAMING + length
            count += 1
    finally:
        os.close(fd)
    return count


def read_last_record(path: str | os.PathLike) -> bytes | None:
    """The data of the last record of `path` (None for an empty file), found from the end of the file.

    Reads about one record from the end: every offset of the tail is tried at once (numpy) as a header whose
    length ends the record exactly at the end of the file, and a candidate is accepted only if its length CRC
    matches, so a random match inside the data is a ~2^-32 event. The tail read doubles until a record is
    found. A complete file always has such a record; a file cut short by any number of bytes does not.

    Raises:
      DamagedRecordFile: no complete record ends at the end of the file, naming the file and (found by
        walking its headers) the index of the record that is cut short.
    """
    path = os.fspath(path)
    size = os.path.getsize(path)
    if size == 0:
        return None
    window = min(size, _FIRST_TAIL)
    with open(path, "rb") as f:
        while True:
            f.seek(size - window)
            tail = f.read(window)
            start = _last_record_start(tail)
            if start is not None:
                return tail[start + _HEADER : window - _FOOTER]
            if window == size:
                break
            window = min(size, 2 * window)
    count_records(path)  # names the record that is cut short (raises)
    raise DamagedRecordFile(f"{path}: no complete record ends at the end of the file ({size} bytes)")


def _last_record_start(tail: bytes) -> int | None:
    """Offset in `tail` of a valid header whose record ends exactly at the end of `tail`, or None.

    The header at offset p must hold the length ``len(tail) - 16 - p``: one vectorised comparison of the
    low byte keeps ~1/256 of the offsets, and only those are checked in full (length, then CRC).
    """
    n = len(tail) - _FRAMING + 1  # candidate header offsets
    if n <= 0:
        return None
    wanted = (len(tail) - _FRAMING) - np.arange(n, dtype=np.int64)
    low_bytes = np.frombuffer(tail, np.uint8, count=n)
    for start in np.flatnonzero(low_bytes == (wanted & 0xFF).astype(np.uint8))[::-1]:
        header = tail[start : start + _HEADER]
        if int.from_bytes(header[:8], "little") == wanted[start] and _valid_header(header) is not None:
            return int(start)
    return None


def find_damaged_file(paths: Iterable[str], offset: int | None = None) -> str | None:
    """The one-line error of the first of `paths` whose framing breaks (at byte `offset` if given), or None.

    For a ``DataLossError`` raised mid-run, which names an offset but not the file: walks the headers of
    each file in turn (a cost paid only when reading has already failed).
    """
    for path in paths:
        try:
            count_records(path)
        except DamagedRecordFile as e:
            if offset is None or f"(at byte {offset})" in str(e):
                return str(e)
        except OSError:  # gone or unreadable: not what a DataLossError is about
            continue
    return None
