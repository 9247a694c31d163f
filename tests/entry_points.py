"""The entry scripts' command lines run in this process: what `python train.py --flag=value ...` does, without
paying a fresh interpreter and TensorFlow import per call. Tests that check a real process (a signal, kill -9,
horovodrun, the exit status a shell sees) keep their subprocess."""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence

from absl import app, flags

from training import cli, recipes


def parsed_flags(args: Sequence[str], *, finetune: bool) -> flags.FlagValues:
    """train.py's (or finetune.py's) flags, defined on a fresh `FlagValues` and parsed from `args`."""
    flag_values = flags.FlagValues()
    if finetune:
        cli.define_flags(
            default_recipe="ckpt2",
            recipe_names=sorted(recipes.FINETUNE),
            finetune=True,
            flag_values=flag_values,
        )
    else:
        cli.define_flags(
            default_recipe="pretrain_mlimages",
            recipe_names=recipes.PRETRAIN_RECIPES,
            finetune=False,
            flag_values=flag_values,
        )
    rest = flag_values(["prog", *args])
    if len(rest) > 1:
        raise app.UsageError(f"unexpected arguments: {rest[1:]}")
    return flag_values


def run(args: Sequence[str], *, finetune: bool = False) -> str:
    """Runs train.py (or finetune.py) with `args` in this process; returns what it printed on stdout.

    Errors come out as the entry script raises them: `app.UsageError` for a bad command line, `SystemExit`
    with the one-line message for a refused run.
    """
    flag_values = parsed_flags(args, finetune=finetune)
    recipe = flag_values.ckpt if finetune else flag_values.recipe
    out = io.StringIO()
    with contextlib.redirect_stdout(out):
        cli.main(flag_values, recipe_name=recipe, finetune=finetune)
    return out.getvalue()
