"""Our model is a Keras citizen: `.keras` and `.weights.h5` round trips give identical outputs."""

import keras
import numpy as np

from models import resnet
from training import train_step


def _tiny_model():
    keras.utils.set_random_seed(3)
    model = resnet.build_resnet(14, 7, base_width=4)
    # Non-trivial BN statistics, so that a lost moving mean/variance would change the outputs.
    images = np.random.default_rng(0).uniform(-1, 1, (4, 32, 32, 3)).astype("float32")
    model(images, training=True)
    return model, images


def test_keras_file_round_trip(tmp_path):
    model, images = _tiny_model()
    path = tmp_path / "m.keras"
    model.save(path)
    loaded = keras.saving.load_model(path)
    assert type(loaded.get_layer("global_pool_bn")) is resnet.FusedBatchNormalization
    np.testing.assert_array_equal(loaded.predict(images, verbose=0), model.predict(images, verbose=0))


def test_weights_file_round_trip(tmp_path):
    model, images = _tiny_model()
    path = tmp_path / "m.weights.h5"
    model.save_weights(path)
    other = resnet.build_resnet(14, 7, base_width=4)
    other.load_weights(path)
    np.testing.assert_array_equal(other.predict(images, verbose=0), model.predict(images, verbose=0))


def test_fused_batch_norm_config_is_complete():
    layer = resnet.FusedBatchNormalization(momentum=0.9, epsilon=1e-3, name="bn")
    clone = resnet.FusedBatchNormalization.from_config(layer.get_config())
    assert (clone.momentum, clone.epsilon, clone.name) == (0.9, 1e-3, "bn")


def test_compiled_model_with_the_release_optimizer_round_trips(tmp_path):
    model, images = _tiny_model()
    model.compile(optimizer=train_step.TF1Momentum(learning_rate=0.1, momentum=0.8), loss="mse")
    model.save(tmp_path / "c.keras")
    loaded = keras.saving.load_model(tmp_path / "c.keras")
    assert isinstance(loaded.optimizer, train_step.TF1Momentum)
    assert loaded.optimizer.momentum == 0.8
