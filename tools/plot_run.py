r"""The training curves of a run directory as a PNG, on demand (training/loop.py draws them at the end).

    python tools/plot_run.py --model_dir demo_run                  # -> demo_run/training_curves.png
    python tools/plot_run.py --model_dir runs/pretrain --output curves.png

Loss (and its cross-entropy and weight-decay parts), learning rate, images/s and the evaluation metrics
(mAP, F1@k or top-k accuracy) by step, from the run's `metrics.jsonl`: every step the run logged
(`--log_every`), also while it is still running. matplotlib is needed (`pip install -e .[plots]`).
"""

from __future__ import annotations

from collections.abc import Sequence

from absl import flags

from data import command_line, fileio
from training import plots

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the script's flags on `flag_values` (a fresh one runs it in-process)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string("model_dir", None, "The run directory (its metrics.jsonl).", **fv)
    flags.DEFINE_string(
        "output", None, f"Where the PNG goes; default: {{model_dir}}/{plots.TRAINING_CURVES_FILE}.", **fv
    )
    flags.mark_flag_as_required("model_dir", **fv)


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    if len(argv) > 1:
        raise command_line.error(__file__, f"unexpected arguments {argv[1:]}")
    output = fileio.user_path(f.output) if f.output else None
    try:
        path = plots.training_curves(fileio.user_path(f.model_dir), output)
    except FileNotFoundError:
        raise command_line.error(
            __file__, f"{f.model_dir} has no {plots.METRICS_FILE} (not a run directory?)"
        ) from None
    except (ValueError, OSError, plots.PlotsUnavailable) as e:
        raise command_line.error(__file__, e) from None
    print(f"wrote {path}")


if __name__ == "__main__":
    command_line.run(main, define_flags, script=__file__)
