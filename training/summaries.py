"""TensorBoard output of a training run, written by the chief: what a reader needs to judge the run.

`{model_dir}/train` and `{model_dir}/eval` hold the scalars (loss, lr, images/s; the validation metrics) and,
in `train`, a few input images per phase, as the step sees them (after augmentation). `{model_dir}` itself
holds the hyper-parameters, the resolved config flattened to one value per field (HPARAMS tab), with the
train and eval scalars as its metrics. A profile of chosen steps goes to `{model_dir}/train/plugins/profile`
(Profile tab, with the tensorboard-plugin-profile package).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import tensorflow as tf
from absl import logging
from tensorboard.plugins.hparams import api as hp

from training import config as config_lib

NUM_IMAGES = 4  # input images shown per phase
_METRICS = (("train", "loss"), ("train", "lr"), ("train", "images_per_s"))
_EVAL_METRICS = {"multilabel": ("mAP",), "softmax": ("top1", "top5")}  # the headline validation numbers


def flatten_config(config: config_lib.TrainConfig) -> dict[str, bool | int | float | str]:
    """The resolved config as {"model/depth": 101, "schedule/learning_rate/kind": ...}: hparams take scalars only.

    Tuples, lists and None (image_sizes, topk, an unset init_checkpoint) become their text.
    """
    flat: dict[str, bool | int | float | str] = {}

    def add(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            for key, item in value.items():
                add(f"{prefix}/{key}" if prefix else str(key), item)
        elif isinstance(value, bool | int | float | str):
            flat[prefix] = value
        else:
            flat[prefix] = str(value)

    add("", config_lib.to_dict(config))
    return flat


class Writers:
    """The chief's TensorBoard writers of one run: `train`, `eval` and the run directory (hparams)."""

    def __init__(self, model_dir: str):
        self._writers = {
            "train": tf.summary.create_file_writer(os.path.join(model_dir, "train")),
            "eval": tf.summary.create_file_writer(os.path.join(model_dir, "eval")),
            "hparams": tf.summary.create_file_writer(model_dir),
        }

    def scalars(self, writer: str, step: int, values: dict[str, float | None]) -> None:
        """Scalars of `writer` ("train" or "eval") at `step`; None values are skipped."""
        with self._writers[writer].as_default(step=step):
            for name, value in values.items():
                if value is not None:
                    tf.summary.scalar(name, value)

    def hparams(self, config: config_lib.TrainConfig) -> None:
        """The resolved config as one hparams session, with the train (and eval) scalars as its metrics."""
        flat = flatten_config(config)
        metrics = [hp.Metric(tag, group=group) for group, tag in _METRICS]
        if config.schedule.eval_every:
            metrics += [hp.Metric(tag, group="eval") for tag in _EVAL_METRICS[config.task]]
        with self._writers["hparams"].as_default():
            hp.hparams_config(hparams=[hp.HParam(name) for name in flat], metrics=metrics)
            hp.hparams(flat, trial_id=os.path.basename(os.path.normpath(config.runtime.model_dir)))
        self._writers["hparams"].flush()

    def input_images(self, images: tf.Tensor, *, phase: int, size: int, step: int) -> None:
        """The first `NUM_IMAGES` of a batch, uint8 or in [-1, 1] (the model's input), shown in [0, 1]."""
        shown = images[:NUM_IMAGES]  # uint8 (the default image transport) is shown as it is
        if shown.dtype != tf.uint8:
            shown = tf.clip_by_value((tf.cast(shown, tf.float32) + 1.0) / 2.0, 0.0, 1.0)
        with self._writers["train"].as_default(step=step):
            tf.summary.image(f"input/phase_{phase}_{size}px", shown, max_outputs=NUM_IMAGES)

    def flush(self) -> None:
        for writer in self._writers.values():
            writer.flush()


@dataclasses.dataclass
class StepProfiler:
    """Profiles the training steps `first` to `last` (step N ends at global step N) into `logdir`.

    `before(step)` is called with the step about to end (global step + 1), `after(step)` once it ended;
    `close()` stops a profile still running when the run ends early (a stop, an error).
    """

    first: int
    last: int
    logdir: str
    _running: bool = dataclasses.field(default=False, init=False)

    def before(self, step: int) -> None:
        if step == self.first or (self.first < step <= self.last and not self._running):
            tf.profiler.experimental.start(self.logdir)
            self._running = True
            logging.info("profiling steps %d-%d into %s", step, self.last, self.logdir)

    def after(self, step: int) -> None:
        if self._running and step >= self.last:
            self.close()
            logging.info("profile written: %s/plugins/profile", self.logdir)

    def close(self) -> None:
        if self._running:
            self._running = False
            tf.profiler.experimental.stop()
