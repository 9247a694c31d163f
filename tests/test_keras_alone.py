"""Part of issue #23: what tools/export.py writes for users loads with Keras alone.

`model.keras` and `model.weights.h5` are read in a process that has Keras and TensorFlow but cannot import
this project (tests/keras_alone.py), and predict what our model predicts. Our own training-time `.keras`
files (FusedBatchNormalization) load after `import models`, the package alone.
"""

import subprocess
import sys

import keras
import numpy as np
import tensorflow as tf

from models import portable, resnet
from tests import keras_alone
from tests.test_evaluate import BASE_WIDTH, tiny_model
from tools import export

SIZE = 32
TOLERANCE = 1e-5  # another process, the same kernels: measured 0 here

KERAS_ONLY = """
import sys
import keras
import numpy as np
folder, inputs, out = sys.argv[1:]
x = np.load(inputs)
model = keras.saving.load_model(f"{folder}/model.keras", compile=False)
same = keras.models.clone_model(model)  # the architecture with fresh weights, then the weights file
same.load_weights(f"{folder}/model.weights.h5")
classes = sorted({type(layer).__module__.split(".")[0] for layer in model.layers})
np.savez(out, keras_file=model.predict(x, verbose=0), weights_file=same.predict(x, verbose=0))
print(classes)
"""


def test_exported_keras_files_load_and_predict_with_keras_alone(tmp_path):
    model = tiny_model(7, seed=11)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt" / "ckpt-1"))
    out = tmp_path / "out"
    export.export(prefix, str(out), image_size=SIZE)
    x = np.random.default_rng(0).uniform(-1, 1, (3, SIZE, SIZE, 3)).astype(np.float32)
    np.save(tmp_path / "x.npy", x)
    proc = keras_alone.run(
        KERAS_ONLY, str(out), str(tmp_path / "x.npy"), str(tmp_path / "y.npz"), cwd=tmp_path
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "['keras']"  # every layer is Keras' own
    expected = model(x, training=False).numpy()
    outputs = np.load(tmp_path / "y.npz")
    np.testing.assert_allclose(outputs["keras_file"], expected, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(outputs["weights_file"], expected, atol=TOLERANCE, rtol=0)
    assert np.ptp(expected, axis=0).max() > 1e-3  # the images give different outputs


def test_the_keras_alone_process_cannot_import_the_project(tmp_path):
    proc = keras_alone.run("import models\n", cwd=tmp_path)
    assert proc.returncode != 0 and "No module named 'models'" in proc.stderr


def test_standard_layers_keep_the_outputs_and_drop_our_classes():
    model = tiny_model(5, seed=12)
    x = np.random.default_rng(1).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    model(x, training=True)  # a training pass moves the BN statistics: they must be copied too
    standard = portable.standard_layers(model)
    assert portable.non_standard_layers(model) and not portable.non_standard_layers(standard)
    assert [layer.name for layer in standard.layers] == [layer.name for layer in model.layers]
    bn = standard.get_layer(resnet.HEAD_BN_LAYER)
    assert type(bn) is keras.layers.BatchNormalization and bn.epsilon == 1e-5
    np.testing.assert_array_equal(standard(x, training=False), model(x, training=False))
    assert type(model.get_layer(resnet.HEAD_BN_LAYER)) is resnet.FusedBatchNormalization  # left as it was


def test_importing_the_models_package_registers_our_layers(tmp_path):
    """A training-time `.keras` (FusedBatchNormalization) loads in a fresh process after `import models`."""
    model = resnet.build_resnet(14, 3, base_width=BASE_WIDTH)
    model.save(tmp_path / "train.keras")
    code = (
        "import sys, keras, models\n"
        "m = keras.saving.load_model(sys.argv[1])\n"
        "print(type(m.get_layer('global_pool_bn')).__name__)\n"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "train.keras")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.strip().splitlines()[-1] == "FusedBatchNormalization"
