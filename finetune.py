"""Fine-tunes on ImageNet with the published checkpoint recipes ckpt1 ... ckpt5 (training/recipes.py).

    python finetune.py --ckpt ckpt3 --init_checkpoint=ckpt-resnet101-mlimages \
        --tfds_name=imagenet2012 --tfds_manual_dir=/data/imagenet --model_dir=runs/ckpt3
    python finetune.py --ckpt ckpt2 --data_dir=/data/imagenet-tfrecords --init_checkpoint=runs/pretrain
    python finetune.py --ckpt ckpt3 --dry_run --simulate_workers=4 --lr_probe_steps=0,150000,300000

Each recipe states what is published and what is reconstructed (`--dry_run` prints it as `provenance`).
ImageNet comes from our TFRecords (int64 labels, data/tfrecord.py) or through tensorflow-datasets. The
image-size switch of ckpt3/ckpt5 survives resume (after kill -9, or SIGTERM / Ctrl-C, which save the
current step and exit 0). Every flag: `python finetune.py --help`.
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
        default_recipe="ckpt2", recipe_names=sorted(recipes.FINETUNE), finetune=True, flag_values=flag_values
    )


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from training import cli

    cli.main(flag_values, recipe_name=flag_values.ckpt, finetune=True)


if __name__ == "__main__":
    tf_logs.quiet_tensorflow()  # before TensorFlow loads, which reads its log level once
    with tf_logs.quiet_import():
        from training import cli

    define_flags()
    flags.adopt_module_key_flags(cli)  # --help lists the flags defined in training/cli.py
    command_line.run(main, script=__file__)
