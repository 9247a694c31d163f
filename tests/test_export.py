"""tools/export.py: the SavedModel, loaded in a fresh process, agrees with the Keras model on the Python path.

The fresh process is what is tested: `tf.saved_model.load` there has nothing of this project imported, so
the pre-processing must be inside the graph. It runs the signature on the release's sample JPEGs (or, where
those are absent, JPEGs written here) and saves its outputs; the Python path is `data.pixels.preprocessing`'s
transform of the same files and the Keras model. One such process loads every SavedModel exported here.
"""

import io
import json
import os
import struct
import subprocess
import sys
import textwrap

import keras
import numpy as np
import pytest
import tensorflow as tf

from data.pixels import preprocessing
from models import checkpoint_files, portable, resnet, tf1_checkpoint
from tests.scripts import run_in_process, run_script
from tests.test_evaluate import BASE_WIDTH, tiny_model, write_jpegs
from tests.test_pretrained import write_release_checkpoint
from tools import export, serving_input

SIZE = 32
# The SavedModel's graph vs eager Keras on the same pixels: only float32 rounding of op fusion/ordering
# differs (measured at most 1.8e-7 on the release's JPEGs at 32 and 224 px).
TOLERANCE = 1e-5
# The (num_classes, transform) of our checkpoints exported and served: a multi-label and an ImageNet head.
SERVED = [(7, "demo"), (1000, "reference")]

LOADER = textwrap.dedent(
    """
    import json, sys
    import numpy as np
    import tensorflow as tf
    saved_models, *paths = sys.argv[1:]
    data = [open(p, "rb").read() for p in paths]
    for saved_model, out in json.loads(saved_models).items():
        serve = tf.saved_model.load(saved_model).signatures["serving_default"]
        outputs = {k: v.numpy() for k, v in serve(image_bytes=tf.constant(data)).items()}
        np.savez(out, **{k: v.astype("S") if v.dtype == object else v for k, v in outputs.items()})
    assert not {m.split(".")[0] for m in sys.modules} & {"data", "models", "training", "tools"}
    """
)


def run_saved_models(saved_models, paths, folder):
    """{name: the signature's outputs on `paths`} for {name: SavedModel folder}, computed in one fresh process
    that imports nothing of the project."""
    outs = {str(path): str(folder / f"served_{name}.npz") for name, path in saved_models.items()}
    proc = subprocess.run(
        [sys.executable, "-c", LOADER, json.dumps(outs), *map(str, paths)],
        cwd=folder,
        env={k: v for k, v in os.environ.items() if k != "PYTHONPATH"},
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    return {name: dict(np.load(folder / f"served_{name}.npz")) for name in saved_models}


def python_path(model, paths, *, transform, activation):
    """The Keras model on the tools' pre-processing of the files (`data.pixels.preprocessing.preprocess`: the
    transform with the EXIF orientation): (probabilities, features)."""
    images = preprocessing.preprocess(
        [open(p, "rb").read() for p in paths], transform=transform, image_size=SIZE
    )
    outputs = resnet.with_features(model)(images, training=False)
    scores = tf.sigmoid if activation == "sigmoid" else tf.nn.softmax
    return scores(outputs["logits"]).numpy(), outputs["features"].numpy()


def with_exif(jpeg: bytes, orientation: int, *, byte_order: str = "II") -> bytes:
    """`jpeg` with an APP1 EXIF segment (IFD0: orientation, then another tag) right after its SOI."""
    end = "<" if byte_order == "II" else ">"
    magic = struct.pack(end + "H", 42)
    entries = struct.pack(end + "HHIHH", 0x0112, 3, 1, orientation, 0)
    entries += struct.pack(end + "HHI4s", 0x010F, 2, 4, b"cam\x00")
    tiff = byte_order.encode() + magic + struct.pack(end + "I", 8) + struct.pack(end + "H", 2) + entries
    tiff += struct.pack(end + "I", 0)  # no next IFD
    payload = b"Exif\x00\x00" + tiff
    return jpeg[:2] + b"\xff\xe1" + struct.pack(">H", len(payload) + 2) + payload + jpeg[2:]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The SavedModels of the tests below, served in one fresh process on the same images: the release's four
    sample JPEGs when present (large photos: real decoding), else 3 written here; then one stored rotated
    (EXIF orientation 6), which the demo transform turns upright."""
    from tests.conftest import REFERENCE_DIR

    root = tmp_path_factory.mktemp("export")
    folder = REFERENCE_DIR / "images"
    if folder.is_dir():
        paths = sorted(folder.glob("*.jpg"))
    else:
        paths = [root / "jpegs" / n for n in write_jpegs(root / "jpegs", 3)]
    rotated = root / "rotated.jpg"
    rotated.write_bytes(with_exif(paths[-1].read_bytes(), 6))
    images = [*paths, rotated]

    runs = {}
    for num_classes, transform in SERVED:  # ours, exported as train.py saves it
        name = f"{num_classes}-{transform}"
        model = tiny_model(num_classes, seed=4)
        prefix = tf.train.Checkpoint(model=model).write(str(root / name / "ckpt" / "ckpt-1"))
        manifest = export.export(prefix, str(root / name / "out"), transform=transform, image_size=SIZE)
        runs[name] = {"model": model, "manifest": manifest}
    # A checkpoint as the release's train.py saves it (model + step, Momentum slots, loss counters).
    model = tiny_model(7, seed=6)
    values = {name: v.numpy() for name, v in tf1_checkpoint.tf1_variable_map(model).items()}
    prefix = write_release_checkpoint(root / "release" / "model.ckpt", values, num_classes=7)
    runs["tf1"] = {
        "model": model,
        "manifest": export.export(prefix, str(root / "tf1" / "out"), image_size=SIZE),
    }

    served = run_saved_models(
        {name: root / name / "out" / export.SAVED_MODEL_DIR for name in runs}, images, root
    )
    for name, run in runs.items():
        assert served[name]["valid"].all() and not served[name]["error"].any()  # every image served
        run["served"] = served[name]
    return images, runs


@pytest.mark.parametrize("byte_order", ["II", "MM"])
def test_exif_orientation_in_tf_ops_matches_pillow(byte_order):
    from PIL import Image

    pixels = np.random.default_rng(2).integers(0, 256, (20, 30, 3), dtype=np.uint8)
    plain = io.BytesIO()
    Image.fromarray(pixels).save(plain, format="JPEG")
    png = io.BytesIO()
    Image.fromarray(pixels).save(png, format="PNG")
    read = tf.function(serving_input.exif_orientation, input_signature=[tf.TensorSpec([], tf.string)])
    for orientation in range(10):  # 0 and 9 are invalid: 1 (as stored), as Pillow's reader is used
        data = with_exif(plain.getvalue(), orientation, byte_order=byte_order)
        pillow = Image.open(io.BytesIO(data)).getexif().get(0x0112)
        assert pillow == orientation
        assert int(read(tf.constant(data))) == (orientation if 1 <= orientation <= 8 else 1)
    assert int(read(tf.constant(plain.getvalue()))) == 1
    assert int(read(tf.constant(png.getvalue()))) == 1
    assert int(read(tf.constant(plain.getvalue()[:40]))) == 1  # cut short: no read past the end


@pytest.mark.parametrize("num_classes, transform", SERVED)
def test_saved_model_matches_the_python_path(exported, num_classes, transform):
    images, runs = exported
    run = runs[f"{num_classes}-{transform}"]
    model, manifest, served = run["model"], run["manifest"], run["served"]
    activation = "softmax" if num_classes == 1000 else "sigmoid"
    assert manifest["probabilities"] == activation and manifest["feature_dim"] == 32 * BASE_WIDTH

    probabilities, features = python_path(model, images, transform=transform, activation=activation)
    assert served["probabilities"].shape == (len(images), num_classes)
    assert served["features"].shape == (len(images), 32 * BASE_WIDTH)
    np.testing.assert_allclose(served["probabilities"], probabilities, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(served["features"], features, atol=TOLERANCE, rtol=0)
    assert not np.allclose(probabilities[0], probabilities[1])  # the images give different outputs
    if transform == "demo":  # the rotated copy is turned upright: not the stored image's outputs
        assert not np.allclose(features[-1], features[-2], atol=1e-3)


def test_keras_files_and_class_names(tmp_path, reference_dir):
    model = tiny_model(1000, seed=5)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt" / "ckpt-1"))
    out = tmp_path / "out"
    export.export(
        prefix,
        str(out),
        image_size=SIZE,
        imagenet_dictionary=str(reference_dir / "imagenet2012_dictionary.txt"),
    )
    names = (out / export.NAMES_FILE).read_text(encoding="utf-8").splitlines()
    assert len(names) == 1000 and names[1] == "goldfish Carassius auratus"
    x = np.random.default_rng(0).uniform(-1, 1, (2, SIZE, SIZE, 3)).astype(np.float32)
    expected = model(x, training=False).numpy()
    loaded = keras.saving.load_model(out / export.KERAS_FILE)
    np.testing.assert_array_equal(loaded(x, training=False).numpy(), expected)
    other = portable.standard_layers(resnet.build_resnet(14, 1000, base_width=BASE_WIDTH))
    other.load_weights(out / export.WEIGHTS_FILE)  # the weights of model.keras's (standard) layers
    np.testing.assert_array_equal(other(x, training=False).numpy(), expected)
    manifest = json.loads((out / export.MANIFEST_FILE).read_text())
    assert manifest["checkpoint_kind"] == "ours" and manifest["num_classes"] == 1000


def test_release_tf1_checkpoint(exported):
    """A checkpoint as the release's train.py saves it (model + step, Momentum slots, loss counters)."""
    images, runs = exported
    run = runs["tf1"]
    assert run["manifest"]["checkpoint_kind"] == "tf1"
    probabilities, features = python_path(run["model"], images, transform="demo", activation="sigmoid")
    np.testing.assert_allclose(run["served"]["probabilities"], probabilities, atol=TOLERANCE, rtol=0)
    np.testing.assert_allclose(run["served"]["features"], features, atol=TOLERANCE, rtol=0)


def test_bad_inputs_are_one_line_errors(tmp_path):
    with pytest.raises(ValueError, match="unknown transform"):
        export.export(str(tmp_path / "nothing"), str(tmp_path / "out"), transform="bogus")
    with pytest.raises(checkpoint_files.CheckpointError, match="not found"):
        export.export(str(tmp_path / "nothing"), str(tmp_path / "out"))


def test_command_line(tmp_path, repo_root, capsys):
    """The command line in this process; then the script as a shell runs it, `python tools/export.py` (tools/
    is not an installed package): it starts, parses its flags and refuses a missing checkpoint in one line."""
    prefix = tf.train.Checkpoint(model=tiny_model(7, seed=7)).write(str(tmp_path / "ckpt" / "ckpt-1"))
    run_in_process(
        export, [f"--checkpoint={prefix}", f"--output_dir={tmp_path / 'out'}", f"--image_size={SIZE}"]
    )
    assert "ResNet-14 (7 classes, sigmoid" in capsys.readouterr().out
    assert (tmp_path / "out" / export.NAMES_FILE).read_text().splitlines() == [str(i) for i in range(7)]
    bad = run_script(
        repo_root, "tools/export.py", f"--checkpoint={tmp_path}/none", f"--output_dir={tmp_path}/o"
    )
    assert bad.returncode != 0 and bad.stderr.strip().splitlines()[-1].startswith("export.py: error:")
    assert "not found" in bad.stderr
