"""data/records/record_writer.py: the CRC-32C comes from google-crc32c, and without it from the numpy fallback, which
gives the same CRCs and the same files, with a warning (tests/test_schema.py checks the files against
tf.io.TFRecordWriter's)."""

import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from data.records import record_writer

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _bitwise_crc32c(data: bytes) -> int:
    """CRC-32C one bit at a time from its definition (reflected polynomial 0x82F63B78, all-ones initial
    register and final inversion): no table, nothing shared with data/records/record_writer.py."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc ^= byte
        for _ in range(8):
            crc = (crc >> 1) ^ (0x82F63B78 & -(crc & 1))
    return crc ^ 0xFFFFFFFF


def test_the_declared_c_library_is_what_the_writer_uses():
    """setup.py declares google-crc32c: an install where the writer silently fell back to numpy (100x
    slower per record) fails here rather than only in the benchmarks."""
    assert record_writer.IMPLEMENTATION == "google-crc32c"
    assert record_writer.crc32c(b"123456789") == 0xE3069283  # the CRC-32C check value


def test_the_numpy_fallback_gives_the_same_crcs():
    rng = np.random.default_rng(3)
    # Below 1024 bytes the fallback's byte-table loop, from 1024 its vectorised lanes (odd lane counts too).
    for n in (0, 1, 8, 1023, 1024, 1025, 64 * 17 + 3, 100_003):
        data = rng.bytes(n)
        crc = _bitwise_crc32c(data)
        assert record_writer.numpy_crc32c(data) == crc, n
        assert record_writer.crc32c(data) == crc, n


# Run in a fresh interpreter with google_crc32c made unimportable (None in sys.modules) or standing for a
# build without its C extension (implementation "python"): which CRC the writer picked, then one file.
_WITHOUT_THE_C_LIBRARY = """
import sys, types
if sys.argv[1] == "missing":
    sys.modules["google_crc32c"] = None
else:
    sys.modules["google_crc32c"] = types.SimpleNamespace(implementation="python", value=None)
from data.records import record_writer
print(record_writer.IMPLEMENTATION)
with record_writer.RecordWriter(sys.argv[2]) as writer:
    for n in (0, 5, 5000, 150_000):
        writer.write(bytes(range(256)) * (n // 256) + b"x" * (n % 256))
"""


@pytest.mark.parametrize("case", ["missing", "no_c_extension"])
def test_without_the_c_library_the_fallback_writes_the_same_file_and_warns(tmp_path, case):
    with record_writer.RecordWriter(tmp_path / "c.tfrecord") as writer:
        for n in (0, 5, 5000, 150_000):
            writer.write(bytes(range(256)) * (n // 256) + b"x" * (n % 256))
    proc = subprocess.run(
        [sys.executable, "-c", _WITHOUT_THE_C_LIBRARY, case, str(tmp_path / "fallback.tfrecord")],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["numpy"]
    assert "google-crc32c" in proc.stderr and "fall back to numpy" in proc.stderr, proc.stderr
    assert (tmp_path / "fallback.tfrecord").read_bytes() == (tmp_path / "c.tfrecord").read_bytes()
