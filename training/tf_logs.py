"""Keeps TensorFlow's own INFO lines out of the entry scripts' output; our absl INFO lines stay.

TensorFlow talks on two channels: its C++ runtime (oneDNN, XLA service, "Compiled cluster using XLA!" ...),
governed by TF_CPP_MIN_LOG_LEVEL, which it reads once, when it loads; and Python modules that log through
absl like our code does (tensorflow/python/checkpoint/functional_saver.py logs "Sharding callback duration"
on every checkpoint save), which a level on the absl logger cannot hide without hiding ours too. So
`quiet_tensorflow` must run before TensorFlow is imported and filters records by the file that logged them.
A third kind, the C++ INFO lines TensorFlow prints while it loads (oneDNN, "Could not find cuda drivers"),
ignores TF_CPP_MIN_LOG_LEVEL (they come before absl::InitializeLog; abseil-cpp PR 1718/1957): `quiet_import`
holds back the process's stderr while TensorFlow is imported and passes on everything but those lines.

TF_CPP_MIN_LOG_LEVEL=0 in the environment keeps both channels as TensorFlow has them (for debugging).
This module imports nothing from TensorFlow on purpose.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import sys
import tempfile
from collections.abc import Iterator

from absl import logging as absl_logging

_TF_DIR = f"{os.sep}tensorflow{os.sep}"
# A C++ INFO line ("I0000 00:00:1796201091.667906    8785 port.cc:153] ...") and the banner before them.
_CPP_INFO = re.compile(
    r"^(I\d{4} [\d:.]+ +\d+ [\w.-]+:\d+\] |WARNING: All log messages before absl::InitializeLog)"
)


class _DropTensorFlowInfo(logging.Filter):
    """Drops below-WARNING records logged from a file inside the tensorflow package."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or _TF_DIR not in record.pathname


def quiet_tensorflow() -> None:
    """Hides TensorFlow's INFO output (C++ and Python) unless TF_CPP_MIN_LOG_LEVEL is set to 0.

    Call it in an entry script before anything imports TensorFlow: the C++ level is read at load time.
    Warnings and errors still show.
    """
    level = os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")
    if level != "0" and not any(
        isinstance(f, _DropTensorFlowInfo) for f in absl_logging.get_absl_logger().filters
    ):
        absl_logging.get_absl_logger().addFilter(_DropTensorFlowInfo())


def _keep(line: str) -> bool:
    return not _CPP_INFO.match(line)


@contextlib.contextmanager
def quiet_import() -> Iterator[None]:
    """Around the import of TensorFlow: its C++ INFO lines are dropped, the rest of stderr is passed on.

    With TF_CPP_MIN_LOG_LEVEL=0 nothing is held back. The held-back text is written out also when the import
    raises, so an import error keeps all its lines.
    """
    if os.environ.get("TF_CPP_MIN_LOG_LEVEL", "0") == "0":
        yield
        return
    sys.stderr.flush()
    saved = os.dup(2)
    with tempfile.TemporaryFile() as held:
        os.dup2(held.fileno(), 2)  # the C++ runtime writes to file descriptor 2, not to sys.stderr
        try:
            yield
        finally:
            sys.stderr.flush()
            os.dup2(saved, 2)
            os.close(saved)
            held.seek(0)
            text = held.read().decode("utf-8", errors="replace")
            sys.stderr.write("".join(line for line in text.splitlines(keepends=True) if _keep(line)))
            sys.stderr.flush()
