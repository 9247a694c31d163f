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

from absl import app, flags

from training import tf_logs

FLAGS = flags.FLAGS


def main(argv: list[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {argv[1:]}")
    from training import cli  # after tf_logs.quiet_tensorflow(): it imports TensorFlow

    cli.main(FLAGS, recipe_name=FLAGS.ckpt, finetune=True)


if __name__ == "__main__":
    tf_logs.quiet_tensorflow()  # before TensorFlow loads, which reads its log level once
    with tf_logs.quiet_import():
        from training import cli, recipes

    cli.define_flags(default_recipe="ckpt2", recipe_names=sorted(recipes.FINETUNE), finetune=True)
    flags.adopt_module_key_flags(cli)  # --help lists the flags defined in training/cli.py
    app.run(main)
