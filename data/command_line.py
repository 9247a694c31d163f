"""The one convention of the project's scripts: how they are run and how a refused run ends.

Every script (train.py, finetune.py, evaluate.py, the data/*.py and tools/*.py command lines) has
`define_flags(flag_values)`, which defines its flags on the `FlagValues` it is given (a fresh one runs it in
a test or a notebook), and `main(argv, flag_values)`, which reads only those; its `__main__` block is
`command_line.run(main, define_flags, script=__file__)`. A run the script refuses (bad input, a missing
file, a damaged checkpoint) ends with exit status 1 and ONE line on stderr, `<script>: error: <message>`
(argparse's format), never a traceback: `raise command_line.error(__file__, message)`. An `app.UsageError`
(a bad combination of flags) ends in the same line, instead of absl's usage text with every flag.
tests/test_script_convention.py checks every script for both functions, and that none patches `sys.path`
(the project is installed: `pip install -e .`, tools/install.sh).

The data tools (the writer, the downloader, data/cooccurrence.py, tools/subset.py) also run their work inside
`one_line_errors`, which ends a full disk or another expected error in the same line (an OSError as
``file: reason``, with what was kept and how to resume) and SIGTERM (a scheduler's preemption, ``kill``) in
one line and exit status 143, what a shell reports for a process ended by SIGTERM, after every ``with`` block
on the way out has run (temporary files of `data.fileio` atomic writes removed, worker processes stopped).

Here, under data/, because every script may import data/ (data/*.py may import nothing else); it imports
absl alone, so a script that needs no TensorFlow loads none through it.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator, Sequence

from absl import app, flags

Main = Callable[[Sequence[str], flags.FlagValues], None]


def error_line(script: str, message: object) -> str:
    """`<script>: error: <message>` on one line (`script`: the script's name or path, e.g. `__file__`)."""
    text = " ".join(str(message).split()) or type(message).__name__
    return f"{os.path.basename(script)}: error: {text}"


def error(script: str, message: object) -> SystemExit:
    """The exit of a refused run: status 1, `error_line` on stderr. Use as `raise error(__file__, e)`."""
    return SystemExit(error_line(script, message))


def run(
    main: Main,
    define_flags: Callable[[flags.FlagValues], None] | None = None,
    *,
    script: str,
    refusals: tuple[type[BaseException], ...] = (),
) -> None:
    """The `__main__` block of a script: its flags defined on absl's global `flags.FLAGS` (the ones
    `app.run` parses the command line into), then `app.run`.

    Args:
      main: the script's `main(argv, flag_values)`.
      define_flags: the script's `define_flags(flag_values)`; None when the caller has defined them.
      script: the script's name or path (`__file__`), for its error line.
      refusals: exceptions that mean bad input where `main` raises them (e.g. the ValueError and OSError of
        a library the script drives): they end in the error line too, not a traceback.
    """
    if define_flags is not None:
        define_flags(flags.FLAGS)

    def _main(argv: Sequence[str]) -> None:
        try:
            main(argv, flags.FLAGS)
        except app.UsageError as e:
            raise error(script, f"{e} (see --help)") from None
        except refusals as e:
            raise error(script, e) from None

    app.run(_main)


# What a shell reports for a process ended by SIGTERM (128 + 15).
TERMINATED_STATUS = 128 + signal.SIGTERM


class Terminated(BaseException):
    """SIGTERM arrived. A BaseException, like KeyboardInterrupt: no ``except Exception`` swallows it."""


def one_line(error: BaseException) -> str:
    """An exception as one line for the user: an OSError as ``file: reason``, anything else its message."""
    if isinstance(error, OSError) and error.strerror:
        names = [os.fspath(n) for n in (error.filename, error.filename2) if n is not None]
        text = f"{' -> '.join(map(str, names))}: {error.strerror}" if names else error.strerror
    elif isinstance(error, KeyError) and error.args:  # str() of a KeyError is the repr of its message
        text = str(error.args[0])
    else:
        text = str(error) or type(error).__name__
    return " ".join(text.split())


def _terminate(signum, frame) -> None:
    del frame
    signal.signal(signum, signal.SIG_DFL)  # a second SIGTERM ends the process at once
    raise Terminated()


@contextlib.contextmanager
def one_line_errors(
    script: str,
    *,
    errors: tuple[type[BaseException], ...] = (ValueError, OSError),
    resume_hint: str = "",
) -> Iterator[None]:
    """Ends the script in one line on `errors` (status 1) and on SIGTERM (status 143).

    Args:
      script: The script's file name, the lines' prefix (``tfrecord.py``).
      errors: The exceptions that are the user's to fix (a traceback would only hide the message).
      resume_hint: Said after an OSError with an errno (a failed write) and after SIGTERM: what was kept and
        how to resume.

    Raises:
      SystemExit: With the one-line message (status 1) or status 143.
    """
    in_main_thread = threading.current_thread() is threading.main_thread()  # where handlers can be set
    previous = signal.signal(signal.SIGTERM, _terminate) if in_main_thread else None
    try:
        yield
    except Terminated:
        print(
            f"{script}: terminated (SIGTERM){'; ' + resume_hint if resume_hint else ''}",
            file=sys.stderr,
            flush=True,
        )
        raise SystemExit(TERMINATED_STATUS) from None
    except errors as e:
        # After a failed write (errno set: a full disk, ...), say what was kept; not after a refusal.
        hint = f"; {resume_hint}" if resume_hint and getattr(e, "errno", None) else ""
        raise SystemExit(error_line(script, one_line(e) + hint)) from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
