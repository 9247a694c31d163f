"""Training images travel to the device as uint8 and are mapped to [-1, 1] there (`image_transport`).

The pipeline yields uint8 or float32 as asked; the device's mapping of a uint8 batch is bit for bit the host's
of the same values, inside a compiled step too; the uint8 images are within 1/255 of the float32 ones on
a real photo in every augmentation branch; a training run with uint8 transport is finite and reruns exactly.
"""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf
from matplotlib import cbook

from data.pixels import preprocessing
from models import losses, resnet
from tests import datasets, tiny_runs
from training import config as config_lib
from training import input_pipeline, loop, recipes, run_dir, schedules, train_step

NUM_CLASSES = 6
PRETRAIN = dict(area_cover=0.7, object_cover=0.7)


def _host_model_range(pixels: np.ndarray) -> np.ndarray:
    """The host's float32 mapping of uint8 pixels to [-1, 1], in numpy (no TensorFlow, no XLA)."""
    return (pixels.astype(np.float32) - np.float32(127.5)) * np.float32(2.0 / 255.0)


@pytest.fixture(scope="module")
def demo_data(tmp_path_factory):
    return datasets.multilabel(tmp_path_factory.mktemp("demo"), num_train=16, num_val=4)


def test_the_pipeline_yields_uint8_when_asked_and_float32_otherwise(demo_data):
    source = input_pipeline.tfrecord_source(demo_data.data_dir, "train", num_classes=demo_data.num_classes)

    def first_batch(**transport):
        ds = input_pipeline.train_dataset(
            source, batch_size=4, image_size=32, seed=1, shuffle_buffer=4, **transport
        )
        return next(iter(ds))

    (as_uint8, labels_uint8), (as_float, labels_float) = first_batch(transport="uint8"), first_batch()
    assert as_uint8.dtype == tf.uint8 and as_uint8.shape == (4, 32, 32, 3)
    assert as_float.dtype == tf.float32 and as_float.shape == (4, 32, 32, 3)
    assert first_batch(transport="float32")[0].dtype == tf.float32
    np.testing.assert_array_equal(labels_uint8, labels_float)  # the same elements, in the same augmentation
    assert np.abs(_host_model_range(as_uint8.numpy()) - as_float.numpy()).max() <= 1 / 255 + 1e-6
    with pytest.raises(ValueError, match="image transport must be one of"):
        first_batch(transport="float16")


def test_the_device_mapping_is_the_hosts_bit_for_bit_for_every_grey_level():
    levels = np.arange(256, dtype=np.uint8).reshape(4, 8, 8, 1).repeat(3, axis=-1)
    expected = _host_model_range(levels)
    compiled = tf.function(train_step.model_input, jit_compile=True)
    for mapped in (train_step.model_input(tf.constant(levels)), compiled(tf.constant(levels))):
        assert mapped.dtype == tf.float32
        np.testing.assert_array_equal(mapped.numpy(), expected)
    assert expected.min() == -1.0 and expected.max() == 1.0
    floats = tf.constant(expected)
    assert train_step.model_input(floats) is floats  # float images pass unchanged


def _tiny_step(*, segments: int, xla: bool) -> train_step.TrainStep:
    keras.utils.set_random_seed(0)
    model = resnet.build_resnet(14, NUM_CLASSES, base_width=4)
    return train_step.TrainStep(
        model,
        train_step.make_optimizer(),
        task="multilabel",
        schedule=schedules.StaircaseSchedule(base_lr=0.05, decay=0.5, decay_every=2),
        loss=losses.AdaptiveMultiLabelLoss(NUM_CLASSES, seed=3),
        backward_segments=segments,
        xla=xla,
    )


@pytest.mark.parametrize(("segments", "xla"), [(1, True), (2, False)])  # each code path once (XLA: slow)
def test_a_step_on_uint8_images_equals_one_on_the_host_mapped_images(segments, xla):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    labels = (rng.uniform(size=(4, NUM_CLASSES)) > 0.6).astype(np.float32)
    results = []
    for batch in (images, _host_model_range(images)):
        step = _tiny_step(segments=segments, xla=xla)
        logs = [step(tf.constant(batch), tf.constant(labels)) for _ in range(2)]
        results.append(
            (
                [float(log["loss"]) for log in logs],
                [v.numpy() for v in [*step.model.variables, *step.optimizer.variables]],
            )
        )
    (losses_uint8, state_uint8), (losses_float, state_float) = results
    assert np.all(np.isfinite(losses_uint8)) and losses_uint8 == losses_float
    for a, b in zip(state_uint8, state_float, strict=True):
        np.testing.assert_array_equal(a, b)


def _real_photo() -> bytes:
    with cbook.get_sample_data("grace_hopper.jpg") as f:  # a JPEG photo shipped with matplotlib
        return f.read()


def test_uint8_images_are_within_one_grey_level_of_the_float_ones_in_every_branch():
    photo = tf.constant(_real_photo())
    branches, largest = set(), 0.0
    for i in range(12):
        seed = tf.constant([i, 77], tf.int64)
        branches.add(int(preprocessing._augment_decisions(seed)["branch"]))
        exact = preprocessing.train_transform(photo, seed, image_size=64, **PRETRAIN).numpy()
        pixels = preprocessing.train_transform_uint8(photo, seed, image_size=64, **PRETRAIN).numpy()
        assert pixels.dtype == np.uint8 and pixels.shape == (64, 64, 3)
        difference = np.abs(_host_model_range(pixels) - exact).max()
        # Rounding to the nearest level: <= 0.5/255 in [0, 1], 1/255 in [-1, 1] (plus float32 rounding).
        assert difference <= 1 / 255 + 4 * np.finfo(np.float32).eps, (i, difference)
        largest = max(largest, difference)
    assert branches == {0, 1, 2}
    assert largest > 0.9 / 255  # the bound is met by rounding to the nearest level, not by chance


def test_a_uint8_run_is_finite_reruns_bit_for_bit_and_differs_from_float32(demo_data, tmp_path, monkeypatch):
    seen = []
    original = train_step.TrainStep.__call__

    def spy(self, images, labels, **kwargs):
        seen.append(images.dtype)
        return original(self, images, labels, **kwargs)

    monkeypatch.setattr(train_step.TrainStep, "__call__", spy)
    runs = {}
    for name, transport in (("a", "uint8"), ("b", "uint8"), ("float", "float32")):
        config = tiny_runs.config(
            demo_data, tmp_path / name, train_steps=2, deterministic=True, image_transport=transport
        )
        loop.train(config)
        runs[name] = tiny_runs.state(tmp_path / name / "ckpt-2")
        saved = json.loads((tmp_path / name / run_dir.CONFIG_FILE).read_text())
        assert saved["runtime"]["image_transport"] == transport
    assert seen == [tf.uint8] * 4 + [tf.float32] * 2
    tiny_runs.assert_all_finite(str(tmp_path / "a" / "ckpt-2"))
    tiny_runs.assert_same_state(runs["a"], runs["b"])
    assert any(not np.array_equal(runs["a"][n], runs["float"][n]) for n in runs["a"])
    lines = [json.loads(line) for line in (tmp_path / "a" / "metrics.jsonl").read_text().splitlines()]
    losses_logged = [line["loss"] for line in lines if line["kind"] == "train"]
    assert len(losses_logged) == 2 and np.all(np.isfinite(losses_logged))


def test_a_run_may_resume_with_the_other_transport_and_another_value_is_refused():
    saved = json.loads(config_lib.replace(recipes.DEMO, image_transport="float32").to_json())
    assert run_dir.config_changes(saved, json.loads(recipes.DEMO.to_json())) == (
        [],
        ["runtime.image_transport"],
    )
    with pytest.raises(ValueError, match="image_transport must be one of"):
        config_lib.validate(config_lib.replace(recipes.DEMO, image_transport="fp8"))


def test_the_pipeline_benchmark_times_both_transports_and_reports_their_bytes(tmp_path, capsys):
    from tools import benchmark

    benchmark.run(
        [
            "pipeline",
            "--num_images=8",
            "--image_width=64",
            "--image_height=48",
            "--num_classes=50",
            "--tags=3",
            "--image_size=32",
            "--batch_size=4",
            "--steps=1",
            "--warmup=0",
            "--shards=1",
            "--workers=1",
            "--shuffle_buffer=8",
            "--image_transport=uint8,float32",
            f"--image_cache={tmp_path}",
        ]
    )
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines() if line.startswith("{")]
    named = {line["benchmark"]: line for line in lines}
    as_uint8, as_float = (
        named["pipeline/transfer/ours_sparse"],
        named["pipeline/transfer/ours_sparse_float32"],
    )
    assert (as_uint8["image_dtype"], as_uint8["bytes_per_image"]) == ("uint8", 32 * 32 * 3)
    assert (as_float["image_dtype"], as_float["bytes_per_image"]) == ("float32", 4 * 32 * 32 * 3)
    assert as_float["image_bytes_per_batch"] == 4 * as_float["bytes_per_image"]
    for name in ("ours_sparse", "ours_sparse_float32"):
        assert named[f"pipeline/{name}"]["images"] == 4
