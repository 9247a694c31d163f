"""Tiny training runs for end-to-end tests: the same small model and batch as a config or as command-line flags,
and a run checkpoint's full state for comparing two runs bit for bit.

Depth 14, width 4, 32 px and 8 images per step: the smallest run that still goes through every part of the
loop (phases, checkpoints, input positions, loss counters) in about a second of training.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
import tensorflow as tf

from training import config as config_lib
from training import recipes, schedules

# The command-line form of `config`'s model and batch (train.py / finetune.py flags).
FLAGS = ["--depth=14", "--base_width=4", "--per_rank_batch=8", "--log_every=1", "--shuffle_buffer=16"]


def config(data: Any, model_dir: Any, **overrides: Any) -> config_lib.TrainConfig:
    """A tiny pre-training run on `data` (tests.datasets.multilabel) in `model_dir`: 4 steps, a checkpoint
    every 2, a log line every step; `overrides` replace any TrainConfig field. Not resolved."""
    fields = dict(
        model=config_lib.ModelConfig(depth=14, base_width=4, num_classes=data.num_classes),
        data=dataclasses.replace(recipes.PRETRAIN.data, data_dir=data.data_dir, shuffle_buffer=16),
        train_steps=4,
        per_rank_batch=8,
        reference_global_batch=8,
        image_sizes=((0, 32),),
        checkpoint_every=2,
        log_every=1,
        model_dir=str(model_dir),
    )
    fields.update(overrides)
    return config_lib.replace(recipes.PRETRAIN, **fields)


def nan_at_step_5_config(data: Any, model_dir: Any, **overrides: Any) -> config_lib.TrainConfig:
    """`config` of 50 steps whose learning rate is 0.01 for steps 0-3; step 4 applies an infinite rate, so
    the loss of step 5 is NaN."""
    schedule = schedules.ReferencePretrainSchedule(
        warmup_steps=0, boundaries=(3,), values=(0.01, float("inf"))
    )
    return config(data, model_dir, **{"learning_rate": schedule, "train_steps": 50, **overrides})


def train_args(data: Any, model_dir: Any, *extra: str) -> list[str]:
    """train.py flags for the same tiny run on `data` in `model_dir` (the recipe's schedule, unscaled)."""
    return [
        f"--data_dir={data.data_dir}",
        f"--num_classes={data.num_classes}",
        f"--model_dir={model_dir}",
        "--image_sizes=32",
        "--noscale_schedule",
        *FLAGS,
        *extra,
    ]


def state(prefix: Any) -> dict[str, np.ndarray]:
    """Every variable of a run checkpoint (model, optimizer slots, loss counters, step), by name."""
    reader = tf.train.load_checkpoint(str(prefix))
    names = [n for n, _ in tf.train.list_variables(str(prefix)) if not n.startswith("save_counter")]
    return {n: reader.get_tensor(n) for n in names if n != "_CHECKPOINTABLE_OBJECT_GRAPH"}


def assert_same_state(a: dict[str, np.ndarray], b: dict[str, np.ndarray]) -> None:
    """The two checkpoints hold the same variables with bit-identical values."""
    assert a.keys() == b.keys()
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)


def assert_all_finite(prefix: str) -> None:
    """Every floating-point variable of the checkpoint `prefix` is finite (no NaN/inf was saved)."""
    reader = tf.train.load_checkpoint(prefix)
    for name, _ in tf.train.list_variables(prefix):
        if name != "_CHECKPOINTABLE_OBJECT_GRAPH":
            value = reader.get_tensor(name)
            if np.issubdtype(np.asarray(value).dtype, np.floating):
                assert np.all(np.isfinite(value)), name


def latest(model_dir: Any) -> str:
    """The file name of the newest checkpoint of `model_dir` (e.g. "ckpt-4")."""
    return os.path.basename(tf.train.latest_checkpoint(str(model_dir)))
