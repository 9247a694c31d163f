"""Shared test fixtures.

The original release's files live in ../shared/reference beside the checkout (never committed here);
tests that use them take the `reference_dir` fixture and are skipped where the folder is absent.
"""

import os
import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
REFERENCE_DIR = pathlib.Path(
    os.environ.get("MLIMAGES_REFERENCE_DIR", REPO_ROOT.parent / "shared" / "reference")
)

# Tests run on 2 cores: keep TensorFlow's logging and thread pools small.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")


@pytest.fixture
def reference_dir() -> pathlib.Path:
    """The original release's sample files; skips the test where they are not present."""
    if not REFERENCE_DIR.is_dir():
        pytest.skip(f"reference files not found at {REFERENCE_DIR}")
    return REFERENCE_DIR


@pytest.fixture
def repo_root() -> pathlib.Path:
    return REPO_ROOT


@pytest.fixture(autouse=True)
def _op_determinism_stays_in_its_test():
    """An in-process `--deterministic` run turns on TensorFlow's op determinism for the whole process
    (training/loop.py); turn it off again after that test, so later tests run as they would alone."""
    yield
    import sys

    if "tensorflow" in sys.modules:
        from tensorflow.python.framework import config  # no public switch off (TF 2.21)

        if config.is_op_determinism_enabled():
            config.disable_op_determinism()
