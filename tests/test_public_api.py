"""The Python interface of models/pretrained.py: load, preprocess and decode_predictions (the README example runs in tests/test_readme_runs.py)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.pixels import preprocessing
from models import pretrained, resnet, tf1_checkpoint
from tests.test_evaluate import BASE_WIDTH, tiny_model
from tests.test_pretrained import write_release_checkpoint

SIZE = 32
X = np.random.default_rng(0).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)


def _outputs(model):
    out = resnet.with_features(model)(X, training=False)
    return out["logits"].numpy(), out["features"].numpy()


@pytest.fixture(scope="module")
def sources(tmp_path_factory):
    """One network (7 classes) as a run directory, a release-style TF1 checkpoint and a `.keras` file."""
    root = tmp_path_factory.mktemp("sources")
    model = tiny_model(7, seed=8)
    tf.train.Checkpoint(model=model).save(str(root / "run" / "ckpt"))  # run dir: ckpt-1 + `checkpoint`
    values = {name: v.numpy() for name, v in tf1_checkpoint.tf1_variable_map(model).items()}
    tf1 = write_release_checkpoint(root / "release" / "model.ckpt", values, num_classes=7)
    model.save(root / "model.keras")
    return model, {"run": str(root / "run"), "tf1": tf1, "keras": str(root / "model.keras")}


@pytest.mark.parametrize("kind", ["run", "tf1", "keras"])
def test_load_every_kind(sources, kind):
    model, paths = sources
    logits, features = _outputs(model)
    probabilities = pretrained.load(paths[kind])
    assert isinstance(probabilities, keras.Model) and probabilities.name == "probabilities"
    np.testing.assert_allclose(probabilities(X, training=False), tf.sigmoid(logits), atol=1e-6)
    raw = pretrained.load(paths[kind], activation="logits")
    np.testing.assert_allclose(raw(X, training=False), logits, atol=1e-5)
    extractor = pretrained.load(paths[kind], head=False)
    assert extractor.output.shape[-1] == 32 * BASE_WIDTH
    np.testing.assert_allclose(extractor(X, training=False), features, atol=1e-5)


def test_head_activation_rule(tmp_path):
    model = tiny_model(1000, seed=9)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "imagenet"))
    logits, _ = _outputs(model)
    softmax = pretrained.load(prefix)(X, training=False).numpy()
    np.testing.assert_allclose(softmax, tf.nn.softmax(logits), atol=1e-6)
    np.testing.assert_allclose(softmax.sum(axis=1), 1.0, atol=1e-5)
    sigmoid = pretrained.load(prefix, activation="sigmoid")(X, training=False)
    np.testing.assert_allclose(sigmoid, tf.sigmoid(logits), atol=1e-6)
    assert pretrained.default_activation(11166) == "sigmoid"


def test_load_errors_are_checkpoint_errors(tmp_path, sources):
    with pytest.raises(pretrained.CheckpointError, match="not found"):
        pretrained.load(tmp_path / "missing.keras")
    with pytest.raises(pretrained.CheckpointError, match="not found"):
        pretrained.load(tmp_path / "missing" / "model.ckpt")
    with pytest.raises(pretrained.CheckpointError, match="activation must be one of"):
        pretrained.load(sources[1]["run"], activation="relu")


def test_preprocess_is_the_tools_transform_with_exif(tmp_path):
    """`preprocess` of bytes = the tools' path for the file (file_transform + the EXIF orientation)."""
    pixels = np.random.default_rng(1).integers(0, 256, (40, 60, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90 degrees clockwise for display
    path = tmp_path / "rotated.jpg"
    Image.fromarray(pixels).save(path, format="JPEG", quality=95, exif=exif)
    data = path.read_bytes()
    batch = pretrained.preprocess(data, image_size=SIZE)
    assert batch.shape == (1, SIZE, SIZE, 3)
    expected = preprocessing.demo_transform(tf.constant(data), image_size=SIZE, orientation=6)
    np.testing.assert_array_equal(batch[0], expected)
    as_stored = preprocessing.demo_transform(tf.constant(data), image_size=SIZE, orientation=1)
    assert not np.allclose(batch[0], as_stored)
    two = pretrained.preprocess([data, data], image_size=SIZE, transform="reference")
    reference = preprocessing.eval_transform(tf.constant(data), image_size=SIZE)
    assert two.shape == (2, SIZE, SIZE, 3)
    np.testing.assert_array_equal(two[1], reference)
    with pytest.raises(ValueError, match="not an image"):
        pretrained.preprocess(b"text, not an image")


def test_decode_predictions_table(tmp_path):
    names_file = tmp_path / "names.txt"
    names_file.write_text("cat\ndog\nbird\nfish\n", encoding="utf-8")
    scores = np.array([[0.1, 0.7, 0.7, 0.2], [0.9, 0.0, 0.3, 0.4]], np.float32)
    decoded = pretrained.decode_predictions(scores, top=3, class_names=str(names_file))
    assert [[(i, n) for i, n, _ in row] for row in decoded] == [
        [(1, "dog"), (2, "bird"), (3, "fish")],  # tie 0.7: the lower index first
        [(0, "cat"), (3, "fish"), (2, "bird")],
    ]
    assert decoded[1][0][2] == pytest.approx(0.9)
    assert pretrained.decode_predictions(scores[1], top=1) == [[(0, "0", pytest.approx(0.9))]]
    with pytest.raises(ValueError, match="top must be in"):
        pretrained.decode_predictions(scores, top=5)
    with pytest.raises(ValueError, match="3 class names for 4 scores"):
        pretrained.decode_predictions(scores, class_names=["a", "b", "c"], top=2)
