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

Here, under data/, because every script may import data/ (data/*.py may import nothing else); it imports
absl alone, so a script that needs no TensorFlow loads none through it.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence

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
