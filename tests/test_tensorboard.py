"""TensorBoard of a tiny run, read back from the event files: scalars, hparams, input images, a profile."""

import glob
import io
import os

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image
from tensorboard.backend.event_processing import event_accumulator
from tensorboard.plugins.hparams import plugin_data_pb2

from tests import datasets, tiny_runs
from training import loop, recipes, summaries


def _events(logdir: str) -> event_accumulator.EventAccumulator:
    acc = event_accumulator.EventAccumulator(logdir, size_guidance={event_accumulator.TENSORS: 0})
    acc.Reload()
    return acc


def _png(encoded: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(encoded)))


def test_flatten_config_gives_one_scalar_per_field():
    flat = summaries.flatten_config(recipes.PRETRAIN)
    assert flat["model/depth"] == recipes.PRETRAIN.model.depth
    assert flat["data/shuffle_buffer"] == recipes.PRETRAIN.data.shuffle_buffer
    assert flat["schedule/learning_rate/kind"] == type(recipes.PRETRAIN.schedule.learning_rate).__name__
    assert flat["schedule/image_sizes"] == str(recipes.PRETRAIN.schedule.image_sizes)
    assert all(isinstance(v, bool | int | float | str) for v in flat.values())


def test_input_images_are_shown_from_minus_one_one_to_zero_one(tmp_path):
    writers = summaries.Writers(str(tmp_path))
    images = tf.stack([tf.fill([8, 8, 3], v) for v in (-1.0, 0.0, 1.0, 1.0, -1.0)])  # 5: only 4 shown
    writers.input_images(images, phase=1, size=8, step=7)
    writers.flush()
    acc = _events(str(tmp_path / "train"))
    (event,) = acc.Tensors("input/phase_1_8px")
    assert event.step == 7
    encoded = tf.make_ndarray(event.tensor_proto)[2:]  # width, height, then the images
    assert len(encoded) == summaries.NUM_IMAGES
    assert [int(_png(e).mean()) for e in encoded] in ([0, 127, 255, 255], [0, 128, 255, 255])


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("tensorboard")
    data = datasets.multilabel(root / "data", num_train=24, num_val=8)
    config = tiny_runs.config(
        data,
        root / "run",
        train_steps=3,
        image_sizes=((0, 32), (1, 40)),
        checkpoint_every=100,
        eval_every=3,
        eval_steps=1,
    )
    loop.train(config, profile_steps=(2, 2))
    return config


def test_train_scalars_include_lr_and_images_per_s(tiny_run):
    acc = _events(os.path.join(tiny_run.runtime.model_dir, "train"))
    for tag in ("loss", "lr", "images_per_s"):
        assert [e.step for e in acc.Tensors(tag)] == [1, 2, 3], tag
    assert all(float(tf.make_ndarray(e.tensor_proto)) > 0 for e in acc.Tensors("images_per_s"))


def test_input_images_once_per_phase(tiny_run):
    acc = _events(os.path.join(tiny_run.runtime.model_dir, "train"))
    image_tags = sorted(t for t in acc.Tags()["tensors"] if t.startswith("input/"))
    assert image_tags == ["input/phase_0_32px", "input/phase_1_40px"]
    for tag, step, size in (("input/phase_0_32px", 1, 32), ("input/phase_1_40px", 2, 40)):
        (event,) = acc.Tensors(tag)
        assert event.step == step
        encoded = tf.make_ndarray(event.tensor_proto)[2:]
        assert len(encoded) == summaries.NUM_IMAGES
        pixels = np.stack([_png(e) for e in encoded])
        assert pixels.shape == (summaries.NUM_IMAGES, size, size, 3)
        assert pixels.std() > 1  # real pictures, not a constant (clipped) image


def test_hparams_hold_the_resolved_config(tiny_run):
    acc = _events(tiny_run.runtime.model_dir)
    contents = {
        tag: plugin_data_pb2.HParamsPluginData.FromString(acc.SummaryMetadata(tag).plugin_data.content)
        for tag in acc.Tags()["tensors"]
        if acc.SummaryMetadata(tag).plugin_data.plugin_name == "hparams"
    }
    session = next(c.session_start_info for c in contents.values() if c.HasField("session_start_info"))
    assert session.hparams["model/depth"].number_value == 14
    assert session.hparams["schedule/train_steps"].number_value == 3
    assert session.hparams["schedule/image_sizes"].string_value == str(tiny_run.schedule.image_sizes)
    experiment = next(c.experiment for c in contents.values() if c.HasField("experiment"))
    metrics = {(m.name.group, m.name.tag) for m in experiment.metric_infos}
    assert metrics >= {("train", "loss"), ("train", "lr"), ("eval", "mAP")}
    eval_tags = _events(os.path.join(tiny_run.runtime.model_dir, "eval")).Tags()["tensors"]
    assert "mAP" in eval_tags  # the metric the hparams table shows exists under that name


def test_profile_of_the_chosen_steps_is_written(tiny_run):
    assert glob.glob(
        os.path.join(tiny_run.runtime.model_dir, "train", "plugins", "profile", "*", "*.xplane.pb")
    )
