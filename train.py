"""Pre-trains the multi-label ResNet on ML-Images (or the built-in demo set), on one process or under Horovod.

    horovodrun -np 128 python train.py --data_dir=/data/ml-images --model_dir=runs/pretrain
    python train.py --recipe=demo --model_dir=demo_run          # the built-in demo: data, training, metrics
    python train.py --dry_run --simulate_workers=128 --lr_probe_steps=0,4400,35200,110001

The defaults are the reference run (training/recipes.py: pretrain_mlimages): ResNet-101, 11,166 classes,
224, 32 images per rank (4096 on 128 ranks), the released warm-up + piecewise schedule, mask_thres 0.7,
neg_select 0.1, a snapshot every 4,400 steps. On another number of ranks the schedule is scaled linearly
(see --scale_schedule). The same command resumes a stopped run: after kill -9, after SIGTERM or Ctrl-C (which
save the current step and exit 0), on another number of ranks (README: Resuming, preemption and faults).
Every flag: `python train.py --help`.
"""

from collections.abc import Sequence

from absl import app, flags

from data import command_line
from training import tf_logs

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines the script's flags (training/cli.py's, with its recipe default) on `flag_values`."""
    from training import cli, recipes  # after tf_logs.quiet_tensorflow() when run as a script

    cli.define_flags(
        default_recipe="pretrain_mlimages",
        recipe_names=recipes.PRETRAIN_RECIPES,
        finetune=False,
        flag_values=flag_values,
    )


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from training import cli

    cli.main(flag_values, recipe_name=flag_values.recipe, finetune=False)


if __name__ == "__main__":
    tf_logs.quiet_tensorflow()  # before TensorFlow loads, which reads its log level once
    with tf_logs.quiet_import():
        from training import cli

    define_flags()
    flags.adopt_module_key_flags(cli)  # --help lists the flags defined in training/cli.py
    command_line.run(main, script=__file__)
