"""How the data tools end when they cannot finish: one line and an exit status, never a traceback.

The writer (data/tfrecord.py), the downloader (data/download.py), data/cooccurrence.py and tools/subset.py
run their work inside `one_line_errors`:

- an expected error (a bad list or hierarchy line, a folder another run holds, a full disk) ends the script
  with ``<script>: error: <message>`` and exit status 1; an OSError is shown as ``file: reason``;
- SIGTERM (a scheduler's preemption, ``kill``) raises `Terminated` in the main thread, so that every
  ``with`` block on the way out runs (temporary files of `data.fileio` atomic writes are removed, worker
  processes are stopped), then ends the script with ``<script>: terminated (SIGTERM)...`` and exit status
  143, what a shell reports for a process ended by SIGTERM. A second SIGTERM ends the process at once.
"""

from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
from collections.abc import Iterator

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
        raise SystemExit(f"{script}: error: {one_line(e)}{hint}") from None
    finally:
        if in_main_thread:
            signal.signal(signal.SIGTERM, signal.SIG_DFL if previous is None else previous)
