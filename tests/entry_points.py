"""train.py and finetune.py command lines run in this process: what `python train.py --flag=value ...` does,
without paying a fresh interpreter and TensorFlow import per call (`tests.scripts.run_in_process`). Tests
that check a real process (a signal, kill -9, horovodrun, the exit status a shell sees) keep their
subprocess."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from absl import app, flags

import finetune as finetune_script
import train as train_script
from tests import scripts


def parsed_flags(args: Sequence[str], *, finetune: bool) -> flags.FlagValues:
    """train.py's (or finetune.py's) flags, defined on a fresh `FlagValues` and parsed from `args`."""
    flag_values = flags.FlagValues()
    (finetune_script if finetune else train_script).define_flags(flag_values)
    rest = flag_values(["prog", *args])
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {rest[1:]}")
    return flag_values


def run(args: Sequence[str], *, finetune: bool = False) -> str:
    """Runs train.py (or finetune.py) with `args` in this process; returns what it printed on stdout.

    Errors come out as the entry script raises them: `app.UsageError` for a bad command line, `SystemExit`
    with the one-line message for a refused run.
    """
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        scripts.run_in_process(finetune_script if finetune else train_script, args)
    return out.getvalue()
