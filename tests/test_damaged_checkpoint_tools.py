"""A run directory whose latest checkpoint was cut short (a crash during a save, a full disk): the inference
tools and the export load its newest intact checkpoint with a warning, as training and evaluate.py do, and a
cut-short prefix given by name is a one-line `CheckpointError`, not TensorFlow's IndexError."""

import logging
import os

import numpy as np
import pytest
import tensorflow as tf
from absl import flags

from models import checkpoint_files, pretrained, resnet
from tools import export
from training import cli

NUM_CLASSES = 5


@pytest.fixture()
def run_dir(tmp_path):
    """ckpt-2 holds model A, ckpt-4 model B; ckpt-4's data file is cut in half."""
    model_dir = tmp_path / "run"
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=2)
    manager = tf.train.CheckpointManager(tf.train.Checkpoint(model=model), str(model_dir), max_to_keep=3)
    manager.save(checkpoint_number=2)
    for v in model.trainable_variables:
        v.assign(v + 1.0)
    manager.save(checkpoint_number=4)
    data = model_dir / "ckpt-4.data-00000-of-00001"
    with open(data, "r+b") as f:
        f.truncate(os.path.getsize(data) // 2)
    return model_dir


def _same_weights(model, prefix) -> bool:
    expected = resnet.build_resnet(14, NUM_CLASSES, base_width=2)
    tf.train.Checkpoint(model=expected).read(str(prefix)).expect_partial()
    return all(
        np.array_equal(a.numpy(), b.numpy()) for a, b in zip(model.weights, expected.weights, strict=True)
    )


def test_inference_tools_load_the_newest_intact_checkpoint(run_dir, tmp_path, caplog):
    image = tmp_path / "a.png"
    tf.io.write_file(str(image), tf.io.encode_png(tf.zeros((8, 8, 3), tf.uint8)))
    flag_values = flags.FlagValues()
    cli.define_inference_flags(flag_values)
    flag_values(["prog", f"--checkpoint={run_dir}"])
    with caplog.at_level(logging.WARNING, logger="absl"):
        paths, model, info = cli.inference_inputs([str(image)], flag_values)
    assert paths == [str(image)] and info.path == str(run_dir / "ckpt-2")
    assert "ckpt-4" in caplog.text and "damaged" in caplog.text
    assert _same_weights(model, run_dir / "ckpt-2")
    assert (run_dir / "ckpt-4.data-00000-of-00001").exists()  # kept for whoever wants to look


def test_export_loads_the_newest_intact_checkpoint(run_dir, tmp_path, caplog, monkeypatch):
    loaded = []
    monkeypatch.setattr(export.image_classification, "load_class_names", _stop_after(loaded))
    with caplog.at_level(logging.WARNING, logger="absl"), pytest.raises(_Stop):
        export.export(str(run_dir), str(tmp_path / "out"))
    assert loaded == [NUM_CLASSES] and "ckpt-4" in caplog.text


class _Stop(Exception):
    """Ends the export once the checkpoint is loaded (the writing is tests/test_export.py's subject)."""


def _stop_after(seen):
    def load_class_names(*, num_classes, **_):
        seen.append(num_classes)
        raise _Stop

    return load_class_names


def test_a_cut_short_prefix_is_a_checkpoint_error(run_dir):
    with pytest.raises(checkpoint_files.CheckpointError, match="ckpt-4 is not a readable checkpoint"):
        pretrained.load_model(str(run_dir / "ckpt-4"))
