"""The built-in demo: procedural data written by our writer, the real training loop, the real metrics.

`python train.py --recipe=demo` generates (once) data/demo.py's shapes-and-colours set in
`{model_dir}/data` (or `--data_dir`: a new or empty folder, or one the demo wrote), trains the `demo` recipe
on it (the reference loss, optimizer and schedule shape), then evaluates the final model on the validation
split and prints its F1@k next to the baseline of always predicting the most frequent training classes, so
that one can see that it learned. The comparison is also written to `{model_dir}/demo_report.json`.

`most_frequent_baseline` scores the validation set as if a model always predicted the training class
frequencies, evaluated by `training.metrics.MultiLabelMetrics` like a real model: the floor that the
demo model's F1@k must beat. It lives here, not in data/, because it needs the metrics of the training
layer (data/ never imports training/).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from absl import logging

from data import fileio
from data.synthetic import demo_scenes
from data.synthetic import demo_set as demo_data
from models import input_contract
from training import config as config_lib
from training import distributed, loop
from training.config import TrainConfig
from training.metrics import MultiLabelMetrics
from training.report import class_frequencies, label_batches

REPORT_FILENAME = "demo_report.json"


# ---------------------------------------------------------------------------------------------------------
# The most-frequent-classes baseline.
# ---------------------------------------------------------------------------------------------------------


def most_frequent_baseline(
    data_dir: str | os.PathLike,
    *,
    topk: Sequence[int] = (1, 3, 5),
    label_threshold: float = 0.5,
    train_prefix: str = "train",
    eval_prefix: str = "val",
) -> dict:
    """Metrics on `eval_prefix` of a "model" that scores every image with the training class frequencies.

    It always predicts the k most frequent training classes (ties: lower class index, as for a model), and
    is evaluated by `MultiLabelMetrics` on the records, exactly like a model's sigmoid scores: the floor
    for the demo model's F1@k. (Its mAP is each class's prevalence: constant scores rank nothing.)

    Args:
      data_dir: A folder with both splits' records, e.g. `DemoDataset.data_dir`.
      topk: The k of the top-k metrics.
      label_threshold: Labels at or above it are positives (for the frequencies and the metrics).
      train_prefix: Split whose class frequencies are the scores.
      eval_prefix: Split that is evaluated.

    Returns:
      `MultiLabelMetrics.result()`: ``precision@k``, ``recall@k``, ``f1@k``, ``instance_f1@k``, ``mAP`` and counts.
    """
    scores = tf.constant(
        class_frequencies(data_dir, train_prefix, label_threshold=label_threshold), tf.float32
    )
    num_classes = int(scores.shape[0])
    metrics = MultiLabelMetrics(num_classes, ks=topk, label_threshold=label_threshold)
    for labels in label_batches(data_dir, eval_prefix):
        if labels.shape[1] != num_classes:
            raise ValueError(f"{eval_prefix} has {labels.shape[1]} classes, {train_prefix} {num_classes}")
        metrics.update(tf.broadcast_to(scores, tf.shape(labels)), labels)
    return metrics.result()


# ---------------------------------------------------------------------------------------------------------
# The demo run.
# ---------------------------------------------------------------------------------------------------------


def check_config(config: TrainConfig) -> str:
    """The demo's data folder for `config`, after refusing what the demo cannot honour (one-line errors).

    A `--num_classes` other than the data's (30) is refused rather than silently replaced, and a
    `--data_dir` that holds someone else's files is refused rather than filled with demo shards
    (`data.demo.check_output_dir`). Writes nothing.

    Raises:
      ValueError: The explicit number of classes disagrees with the demo's, or the folder is not the demo's.
    """
    if config.model.num_classes not in (0, demo_scenes.NUM_CLASSES):  # 0: the recipe's "from the data"
        raise ValueError(
            f"--num_classes={config.model.num_classes} disagrees with the demo data, which has "
            f"{demo_scenes.NUM_CLASSES} classes; leave --num_classes out for the demo recipe"
        )
    data_dir = config.data.data_dir or os.path.join(config.runtime.model_dir, "data")
    demo_data.check_output_dir(data_dir)
    return data_dir


def prepare(config: TrainConfig, dist: distributed.Distributed) -> TrainConfig:
    """Generates the demo set (the chief; the others wait) and points the config at it.

    The chief also writes the classes' names into the run directory (`class_names.txt`), where the
    inference tools, tools/export.py and `models.pretrained.load` find them with the run's image size and
    transform (its `config.json`).
    """
    data_dir = check_config(config)  # every rank, before anything is written: a refusal stops them all
    dist.barrier()  # Horovod: no rank checks a folder that the chief has started writing.
    if dist.is_chief:
        dataset = demo_data.make_demo_dataset(data_dir)
    dist.barrier()  # Horovod: the data exist before any rank reads them.
    if not dist.is_chief:
        dataset = demo_data.make_demo_dataset(data_dir)  # finds the finished set and returns it
    if dist.is_chief:  # the class names of the run's input contract (models/input_contract.py)
        names = "".join(name + "\n" for name in dataset.class_names)
        fileio.write_text(os.path.join(config.runtime.model_dir, input_contract.CLASS_NAMES_FILE), names)
    return config_lib.replace(config, num_classes=dataset.num_classes, data_dir=dataset.data_dir)


def report(config: TrainConfig, result: dict[str, Any]) -> dict[str, Any]:
    """The final validation metrics next to the most-frequent-classes baseline.

    `--eval_every=0` means no evaluation (the loop then returns no `eval`): the report says so, with
    `validation` None, rather than evaluating anyway.
    """
    if "eval" not in result:
        return {"steps": result["step"], "final_loss": result.get("loss"), "validation": None}
    baseline = most_frequent_baseline(config.data.data_dir, topk=config.schedule.topk)
    rows = {}
    for k in config.schedule.topk:
        rows[f"f1@{k}"] = {"model": result["eval"][f"f1@{k}"], "most_frequent": baseline[f"f1@{k}"]}
    rows["mAP"] = {"model": result["eval"]["mAP"], "most_frequent": baseline["mAP"]}
    return {"steps": result["step"], "final_loss": result.get("loss"), "validation": rows}


def format_report(summary: dict[str, Any]) -> str:
    """The report as printed at the end of the run."""
    if summary["validation"] is None:
        return f"demo after {summary['steps']} steps — not evaluated (--eval_every=0)"
    lines = [f"demo after {summary['steps']} steps — validation metrics (model vs most-frequent baseline):"]
    for name, row in summary["validation"].items():
        lines.append(f"  {name:>6}: model {row['model']:.3f}   most frequent {row['most_frequent']:.3f}")
    return "\n".join(lines)


def run(config: TrainConfig, *, dist: distributed.Distributed) -> dict[str, Any]:
    """Data, training, final evaluation and the comparison with the baseline."""
    config = prepare(config, dist)
    result = loop.train(config, dist=dist)  # ends with an evaluation unless --eval_every=0
    summary = report(config, result)
    if dist.is_chief:
        path = os.path.join(config.runtime.model_dir, REPORT_FILENAME)
        fileio.write_json(path, summary, indent=2)
        logging.info("wrote %s", path)
        print(format_report(summary))
    return summary
