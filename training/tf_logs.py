"""Keeps TensorFlow's own INFO lines out of the entry scripts' output; our absl INFO lines stay.

TensorFlow talks on two channels: its C++ runtime (oneDNN, XLA service, "Compiled cluster using XLA!" ...),
governed by TF_CPP_MIN_LOG_LEVEL, which it reads once, when it loads; and Python modules that log through
absl like our code does (tensorflow/python/checkpoint/functional_saver.py logs "Sharding callback duration"
on every checkpoint save), which a level on the absl logger cannot hide without hiding ours too. So
`quiet_tensorflow` must run before TensorFlow is imported and filters records by the file that logged them.

TF_CPP_MIN_LOG_LEVEL=0 in the environment keeps both channels as TensorFlow has them (for debugging).
This module imports nothing from TensorFlow on purpose.
"""

from __future__ import annotations

import logging
import os

from absl import logging as absl_logging

_TF_DIR = f"{os.sep}tensorflow{os.sep}"


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
