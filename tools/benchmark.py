r"""Benchmarks, one subcommand each; every measurement is printed as one JSON line on stdout.

    python tools/benchmark.py writer --num_images=3000 --workers=2 --compare
    python tools/benchmark.py pipeline --num_images=3000 --compare --rounds=3
    python tools/benchmark.py augment --steps=20
    python tools/benchmark.py step --depth=101 --batch_size=32 --compare
    python tools/benchmark.py step --depth=101 --batch_size=128 --precision=bf16 --xla --compare  # on a GPU
    python tools/benchmark.py loss
    horovodrun --gloo -np 2 -H localhost:2 python tools/benchmark.py allreduce --step_ms=...
    horovodrun --gloo -np 2 -H localhost:2 python tools/benchmark.py overlap --depth=14 --allreduce_dtypes=fp32,fp16
    horovodrun --gloo -np 2 -H localhost:2 python tools/benchmark.py overlap --depth=14 --link_gbits=0.25
    python tools/benchmark.py memory
    python tools/benchmark.py download --num_images=1000 --workers=2 --threads=16 --compare
    python tools/benchmark.py check      # the regression guard of .ci/run: every headline ratio, ~2 min
    python tools/benchmark.py photo_sizes --megapixels=0.5,2,8 --max_sides=0,640,1024
    python tools/benchmark.py archive --num_images=3000 --workers=1 --rounds=3

Each subcommand is a module of tools/benchmarks/ (`SUBCOMMANDS`) with `FLAGS_USED` and `run(flag_values)`;
this script defines only the chosen subcommand's flags (``<subcommand> --help`` lists them; without a
subcommand, ``--help`` lists all) and calls its `run`, which prints with `common.emit`. With ``--compare``
each also measures its baseline in the same run, so that the ratios printed (``.../speedup``,
``.../ratio``) compare runs that shared the machine's state. docs/BENCHMARKS.md records the figures with the
commands that produced them.

- ``writer``: generates (once, cached in ``--image_cache``) real-size JPEGs with photo-like file sizes, then
  times ``data/tfrecord.py``'s writer and, with ``--compare``, a naive single-process writer that decodes
  every image with TensorFlow and writes the dense reference layout (what the original writer does). It also
  reports the size of the label field for ``dense`` vs ``sparse`` at ``--num_classes`` with ``--tags`` tags,
  and the cost per JPEG of ``verify=full`` against a full-size decode.
- ``pipeline``: training images/s of `training.input_pipeline.train_dataset` on records written by our
  writer from the same JPEGs; ``--compare`` adds a port of the original input pipeline
  (tools/benchmarks/release_pipeline.py) and the decode-only limit (parallel ``decode_jpeg`` of the same
  bytes and nothing else).
- ``augment``: single-threaded CPU ms per image of each augmentation branch after the crop, and of the
  rotation alone, ours vs the release's op.
- ``step``: images/s of `training.train_step.TrainStep` (the project's training step) on synthetic inputs
  for our ResNet; ``--compare`` runs the same step on ``keras.applications`` ResNet-V2 of the same depth.
- ``loss``: the adaptive 11,166-class loss (forward and backward w.r.t. the logits) vs plain sigmoid
  cross-entropy, as a fraction of the step time (measured here, or ``--step_ms``).
- ``allreduce``: under ``horovodrun``, the gradient all-reduce of the model's real variable shapes through
  `training.distributed`, and its overhead relative to ``--step_ms``.
- ``overlap``: under ``horovodrun``, the exposed all-reduce per step of `TrainStep` with 1 and 4 backward
  segments and fp32/fp16 on the wire (the step against the same step without all-reduce), the gradient
  bytes per step, and the host wait saved by checking the NaN guard only when logging; ``--link_gbits``
  paces the ranks' sockets, a wire slower than the cores as between GPU hosts.
- ``memory``: peak RSS of the list tools (tools/subset.py, tools/dataset_stats.py, the writer's list pass)
  on generated image lists of ``--memory_lines`` lines, each run in a fresh process.
- ``download``: images/s of the one pass (``data/download.py --output_records``: URLs straight into TFRecord
  shards) against a local HTTP server of generated JPEGs; ``--compare`` adds download-then-write (our
  downloader, then our writer) and img2dataset (from ``--img2dataset_venv``) on the same URLs.
- ``check``: the regression guard (tools/benchmarks/check.py): each headline ratio above measured side by
  side at a small size and held against its floor in tools/benchmarks/floors.toml; exits 1 with one line
  per ratio below its floor. ``.ci/run`` runs it.
- ``photo_sizes``: camera-size originals (``--megapixels``, 4:3 JPEGs at quality 90, like the Open Images
  ``_o.jpg`` files): per size and writer ``--max_side`` (``--max_sides``), the writer's and the training
  input's CPU ms per image, the records' bytes, and the CPU cores per GPU the input needs at
  ``--gpu_images_per_s`` (tools/benchmarks/photo_sizes.py).
- ``archive``: the writer reading the ImageNet part from per-synset tars and from an outer tar of them,
  plain and gzipped (``--imagenet_archive``), against the same images extracted: records/s, CPU ms per record, and the records
  checked identical (tools/benchmarks/archive.py).
- ``input_position``: bytes, save and restore time of one rank's saved input position at the reference
  settings (restored 10 epochs deep); ``--compare`` adds the same pipeline saved as tf.data's iterator state
  (the buffers' contents, as before #22 item 1).

Every subcommand starts with a ``<name>/machine`` line (CPU count, model and flags, TensorFlow version,
whether its oneDNN kernels are on, the load average).
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Sequence
from types import ModuleType

from absl import app, flags

from data import command_line
from tools.benchmarks import common

# Subcommand -> its module (imported only when chosen: the memory benchmark's fresh processes stay small).
SUBCOMMANDS: dict[str, str] = {
    "writer": "tools.benchmarks.writer",
    "pipeline": "tools.benchmarks.pipeline",
    "augment": "tools.benchmarks.augment",
    "step": "tools.benchmarks.step",
    "loss": "tools.benchmarks.loss",
    "allreduce": "tools.benchmarks.allreduce",
    "overlap": "tools.benchmarks.overlap",
    "memory": "tools.benchmarks.memory",
    "download": "tools.benchmarks.download",
    "check": "tools.benchmarks.check",
    "xla_ops": "tools.benchmarks.xla_ops",
    "input_position": "tools.benchmarks.input_position",
    "photo_sizes": "tools.benchmarks.photo_sizes",
    "archive": "tools.benchmarks.archive",
}


def subcommand_module(name: str) -> ModuleType:
    """The module that runs subcommand `name`."""
    return importlib.import_module(SUBCOMMANDS[name])


def chosen_subcommand(argv: Sequence[str]) -> str | None:
    """The subcommand named on the command line (its first argument that is one), or None."""
    return next((arg for arg in argv[1:] if arg in SUBCOMMANDS), None)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS, *, subcommand: str | None = None) -> None:
    """Defines `subcommand`'s flags (and the global ones) on `flag_values`; every flag when None."""
    if subcommand is None:
        names = tuple(common.FLAG_DEFINITIONS)
    else:
        names = (*subcommand_module(subcommand).FLAGS_USED, *common.GLOBAL_FLAGS)
    common.define_flags(names, flag_values)
    for name in names:  # listed by --help, which shows the main module's key flags
        flags.declare_key_flag(name, flag_values=flag_values)


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The script: `argv` (the subcommand) as left by absl's parsing of `flag_values`."""
    if len(argv) != 2 or argv[1] not in SUBCOMMANDS:
        raise app.UsageError(f"usage: benchmark.py {{{'|'.join(SUBCOMMANDS)}}} [--flags]")
    if flag_values.intra_op_threads:
        import tensorflow as tf

        tf.config.threading.set_intra_op_parallelism_threads(flag_values.intra_op_threads)
    subcommand_module(argv[1]).run(flag_values)


def run(args: Sequence[str]) -> None:
    """Runs one subcommand in this process, e.g. ``run(["overlap", "--steps=1"])``; prints as `main` does.

    The flags live in a fresh `FlagValues`, so several runs (tests, a notebook) do not share them.
    """
    argv = ["benchmark.py", *args]
    flag_values = flags.FlagValues()
    define_flags(flag_values, subcommand=chosen_subcommand(argv))
    main(flag_values(argv), flag_values)


if __name__ == "__main__":
    define_flags(subcommand=chosen_subcommand(sys.argv))
    command_line.run(main, script=__file__)
