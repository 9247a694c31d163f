"""Writing TFRecord files without TensorFlow: the framing, with CRC-32C from the `google-crc32c` C library.

The shard writers (data/tfrecord.py and the one-pass downloader, through data/shards/shard_writer.py) run in worker
processes whose only use of TensorFlow was ``tf.io.TFRecordWriter``; importing TensorFlow costs each run
10-30 s of start-up on a loaded machine (docs/BENCHMARKS.md section 8). A record is framed as ``uint64
length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)`` (little-endian), which is all
`RecordWriter` writes: the files are byte-identical to ``tf.io.TFRecordWriter``'s (tests/test_schema.py
compares them).

**The CRC-32C comes from `google-crc32c`** (a declared dependency in setup.py): Google's C library
``crc32c``, the one TensorFlow's and LevelDB's checksums come from, behind a CPython extension, maintained
by Google for its Cloud client libraries (which check every upload with it), Apache-2.0, with wheels for
Linux, macOS and Windows on x86-64 and arm64. It uses the CPU's CRC32 instruction (SSE4.2, ARMv8): 9 us
for a 140 KB record on the AMD EPYC of docs/BENCHMARKS.md, ~15 GB/s. The ``crc32c`` package (ICRAR) is as
fast but LGPL. Before it, this module computed the CRC with numpy at 142 MB/s, about 1 ms per record per
core, which cut the writer from 2.8x the naive TensorFlow writer to 1.3x (issue 24).

**Fallback.** Where the wheel (or its C extension) is missing, the numpy implementation below
(`numpy_crc32c`) is used and a warning says so once, at import: the files are the same, only slower. It
splits the data into lanes of `_LANE` bytes, runs the table-driven CRC over all lanes at once (one vector
step per byte of a lane) and combines the lanes' CRCs pairwise, using that a CRC is linear: CRC(A || B) =
shift(CRC(A), len(B)) ^ CRC(B), where ``shift`` (feeding zero bytes) is a linear map of the 32-bit state,
applied by four 256-entry tables. (google-crc32c's own pure-Python fallback is a byte loop, slower still.)
"""

from __future__ import annotations

import functools
import os
import struct
import warnings
from collections.abc import Callable

import numpy as np
from absl import logging

_REFLECTED_POLY = 0x82F63B78  # CRC-32C (Castagnoli), bit-reflected
_MASK_DELTA = 0xA282EAD8
_LANE = 64  # bytes per lane of the vectorised CRC
_SHORT = 1024  # below this many bytes a plain loop is faster than numpy's per-call overhead
_LENGTH = struct.Struct("<Q")
_CRC = struct.Struct("<I")


def _byte_table() -> np.ndarray:
    table = []
    for byte in range(256):
        crc = byte
        for _ in range(8):
            crc = (crc >> 1) ^ _REFLECTED_POLY if crc & 1 else crc >> 1
        table.append(crc)
    return np.array(table, dtype=np.uint32)


@functools.cache
def _tables() -> tuple[np.ndarray, tuple[int, ...]]:
    """The byte table, as a numpy array and as a tuple (faster to index from plain Python)."""
    table = _byte_table()
    return table, tuple(int(x) for x in table)


def _raw_update(state: int, data: bytes | memoryview) -> int:
    """The CRC register after feeding `data` from `state` (no initial or final inversion)."""
    _, table = _tables()
    for byte in data:
        state = table[(state ^ byte) & 0xFF] ^ (state >> 8)
    return state


def _apply_columns(columns: tuple[int, ...], state: int) -> int:
    """A linear map of the 32-bit state, given by the images of the 32 unit vectors."""
    out = 0
    for bit in range(32):
        if state >> bit & 1:
            out ^= columns[bit]
    return out


@functools.cache
def _shift_columns(level: int) -> tuple[int, ...]:
    """The map "feed ``_LANE * 2**level`` zero bytes", as the images of the 32 unit vectors."""
    if level == 0:
        return tuple(_raw_update(1 << bit, bytes(_LANE)) for bit in range(32))
    half = _shift_columns(level - 1)
    return tuple(_apply_columns(half, column) for column in half)


@functools.cache
def _shift_tables(level: int) -> np.ndarray:
    """uint32[4, 256]: the shift of `_shift_columns(level)` for each byte of the state, to XOR together."""
    columns = _shift_columns(level)
    tables = np.zeros((4, 256), dtype=np.uint32)
    for part in range(4):
        table = [0]
        for bit in range(8):
            column = columns[8 * part + bit]
            table += [entry ^ column for entry in table]
        tables[part] = table
    return tables


def _vector_raw_crc(data: bytes) -> int:
    """`_raw_update(0, data)` for long data: all lanes at once, then a pairwise combination."""
    table, _ = _tables()
    lanes = -(-len(data) // _LANE)
    # Leading zero bytes leave a zero register unchanged, so the data is right-aligned in the lanes.
    padded = np.zeros(lanes * _LANE, dtype=np.uint8)
    padded[lanes * _LANE - len(data) :] = np.frombuffer(data, dtype=np.uint8)
    columns = np.ascontiguousarray(padded.reshape(lanes, _LANE).T)
    state = np.zeros(lanes, dtype=np.uint32)
    for column in columns:
        state = table[(state ^ column) & 0xFF] ^ (state >> 8)
    level = 0
    while state.size > 1:
        if state.size % 2:  # A zero lane in front: leading zero bytes again.
            state = np.concatenate([np.zeros(1, dtype=np.uint32), state])
        first, second = state[0::2], state[1::2]
        shift = _shift_tables(level)
        state = (
            shift[0][first & 0xFF]
            ^ shift[1][(first >> 8) & 0xFF]
            ^ shift[2][(first >> 16) & 0xFF]
            ^ shift[3][first >> 24]
            ^ second
        )
        level += 1
    return int(state[0])


def numpy_crc32c(data: bytes) -> int:
    """The CRC-32C (Castagnoli) of `data` with numpy: the fallback when google-crc32c is missing."""
    if len(data) < _SHORT:
        return _raw_update(0xFFFFFFFF, data) ^ 0xFFFFFFFF
    # The initial all-ones register is the same as inverting the first four bytes from a zero register.
    head = bytes(b ^ 0xFF for b in data[:4])
    return _vector_raw_crc(head + data[4:]) ^ 0xFFFFFFFF


def _c_crc32c() -> Callable[[bytes], int] | None:
    """google-crc32c's C function, or None when the package or its C extension is missing."""
    try:
        with warnings.catch_warnings():
            # Without its C extension the package warns and falls back to a byte loop; ours says more.
            warnings.simplefilter("ignore", RuntimeWarning)
            import google_crc32c
    except ImportError:
        return None
    return google_crc32c.value if google_crc32c.implementation == "c" else None


_crc32c_c = _c_crc32c()
# Which implementation `crc32c` uses: "google-crc32c" (C) or "numpy" (the fallback). The benchmarks print it.
IMPLEMENTATION = "google-crc32c" if _crc32c_c is not None else "numpy"
if _crc32c_c is None:
    logging.warning(
        "google-crc32c (with its C extension) is not installed: TFRecord CRCs fall back to numpy, about 1 ms "
        "per 150 KB record instead of 10 us (the files are the same); pip install google-crc32c"
    )
_crc32c: Callable[[bytes], int] = _crc32c_c or numpy_crc32c


def crc32c(data: bytes) -> int:
    """The CRC-32C (Castagnoli) of `data` (google-crc32c, or the numpy fallback)."""
    return _crc32c(data)


def masked_crc32c(data: bytes) -> int:
    """TFRecord's masked CRC-32C: rotated right by 15 bits, plus a constant."""
    crc = _crc32c(data)
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def frame(record: bytes) -> bytes:
    """One record as it is stored in a TFRecord file (header, data, footer)."""
    length = _LENGTH.pack(len(record))
    return b"".join((length, _CRC.pack(masked_crc32c(length)), record, _CRC.pack(masked_crc32c(record))))


class RecordWriter:
    """An uncompressed TFRecord file writer, byte-identical to ``tf.io.TFRecordWriter``; a context manager."""

    def __init__(self, path: str | os.PathLike[str]):
        self._file = open(path, "wb")  # noqa: SIM115 - closed by `close` / `__exit__`.

    def write(self, record: bytes) -> None:
        """Appends one record (as `frame` gives it, without copying the record into a joined frame)."""
        length = _LENGTH.pack(len(record))
        self._file.write(length + _CRC.pack(masked_crc32c(length)))
        self._file.write(record)
        self._file.write(_CRC.pack(masked_crc32c(record)))

    def close(self) -> None:
        self._file.close()

    def __enter__(self) -> RecordWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
