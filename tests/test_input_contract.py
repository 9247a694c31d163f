"""Part of issue #23: the input contract (image size, transform, class names) travels with the network.

A run directory's `config.json` (as training writes it) and `class_names.txt` give it; `models.pretrained`
(`load`, `preprocess`, `load_model`'s info), the inference tools and tools/export.py use it by default and
warn when asked for another size; an export stores it in `model.keras`, `export.json` and the SavedModel.
"""

import json
import logging
import zipfile

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.pixels import preprocessing
from models import architecture, checkpoint_files, input_contract, pretrained, tf1_checkpoint
from tests.scripts import run_in_process
from tests.test_evaluate import tiny_model
from tests.test_pretrained import write_release_checkpoint
from tools import export, image_classification
from training import config as config_lib
from training import recipes

NAMES = ("circle", "square", "red", "blue", "two", "three", "thing")
SIZE = 32


def write_run(folder, model, *, image_sizes=((0, SIZE),), step=1, names=NAMES):
    """A run directory as training leaves it: `config.json` (the demo recipe's layout), a checkpoint
    `ckpt-{step}` with its state file, and `class_names.txt`."""
    config = config_lib.replace(recipes.get("demo"), image_sizes=image_sizes, model_dir=str(folder))
    folder.mkdir(parents=True, exist_ok=True)
    (folder / input_contract.RUN_CONFIG_FILE).write_text(config.to_json())
    if names is not None:
        (folder / input_contract.CLASS_NAMES_FILE).write_text("".join(n + "\n" for n in names))
    manager = tf.train.CheckpointManager(
        tf.train.Checkpoint(model=model), str(folder), 3, checkpoint_name="ckpt"
    )
    manager.save(checkpoint_number=step)
    return folder


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    model = tiny_model(len(NAMES), seed=21)
    return model, write_run(tmp_path_factory.mktemp("contract") / "run", model)


@pytest.fixture(scope="module")
def photo(tmp_path_factory):
    """A JPEG whose `full` and `demo` inputs differ (not square: demo crops, full does not)."""
    pixels = np.random.default_rng(3).integers(0, 256, (40, 70, 3), dtype=np.uint8)
    path = tmp_path_factory.mktemp("photo") / "photo.jpg"
    Image.fromarray(pixels).save(path, quality=95)
    return path


def test_the_run_directory_gives_size_by_step_transform_and_names(tmp_path):
    write_run(tmp_path, tiny_model(len(NAMES)), image_sizes=((0, 224), (300, 299)), step=300)
    assert input_contract.from_run_dir(str(tmp_path), step=300) == input_contract.InputContract(
        224, "full", NAMES, source=str(tmp_path / "config.json")
    )  # ckpt-300 was trained on steps 0..299: all at 224
    assert input_contract.from_run_dir(str(tmp_path), step=301).image_size == 299
    assert input_contract.from_run_dir(str(tmp_path)).image_size == 299  # no step: the last phase
    assert input_contract.from_run_dir(str(tmp_path / "elsewhere")) is None
    info = architecture.inspect_checkpoint(str(tmp_path))
    assert (info.contract.image_size, info.contract.transform, info.contract.class_names) == (
        224,
        "full",
        NAMES,
    )


def test_load_and_preprocess_follow_the_contract(run, photo, caplog):
    model, folder = run
    loaded = pretrained.load(str(folder))
    assert loaded.input_contract.image_size == SIZE and loaded.input_contract.transform == "full"
    assert loaded.input_contract.class_names == NAMES
    data = photo.read_bytes()
    batch = pretrained.preprocess(data, loaded)
    np.testing.assert_array_equal(batch[0], preprocessing.full_transform(tf.constant(data), image_size=SIZE))
    assert pretrained.preprocess(data).shape == (1, 224, 224, 3)  # no model: the release's tools' input
    with caplog.at_level(logging.WARNING, logger="absl"):
        other = pretrained.preprocess(data, loaded, image_size=48)
    assert other.shape == (1, 48, 48, 3)
    assert "image size 48 asked for, but the network expects 32" in caplog.text
    top = pretrained.decode_predictions(loaded(batch), top=2, class_names=loaded.input_contract.class_names)
    assert {name for _, name, _ in top[0]} <= set(NAMES)


def test_a_released_checkpoint_expects_the_release_tools_input(tmp_path):
    model = tiny_model(7, seed=22)
    values = {name: v.numpy() for name, v in tf1_checkpoint.tf1_variable_map(model).items()}
    prefix = write_release_checkpoint(tmp_path / "model.ckpt", values, num_classes=7)
    assert pretrained.load(prefix).input_contract == input_contract.RELEASE
    assert (input_contract.RELEASE.transform, input_contract.RELEASE.image_size) == ("demo", 224)


def test_names_of_another_count_are_dropped(tmp_path, caplog):
    write_run(tmp_path, tiny_model(5), names=NAMES)
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert pretrained.load(str(tmp_path)).input_contract.class_names is None
    assert "names 7 classes but the head has 5" in caplog.text


def test_the_export_stores_the_contract_everywhere(run, photo, tmp_path, caplog):
    model, folder = run
    out = tmp_path / "out"
    manifest = export.export(str(folder), str(out))
    expected = {"image_size": SIZE, "transform": "full", "class_names": list(NAMES)}
    assert manifest["input_contract"] == expected and manifest["transform"] == "full"
    assert json.loads((out / export.MANIFEST_FILE).read_text())["input_contract"] == expected
    assert (out / export.NAMES_FILE).read_text().splitlines() == list(NAMES)
    with zipfile.ZipFile(out / export.KERAS_FILE) as archive:
        assert json.loads(archive.read(input_contract.KERAS_MEMBER)) == expected
    loaded = pretrained.load(str(out / export.KERAS_FILE))
    assert loaded.input_contract.to_json() == expected
    saved = tf.saved_model.load(str(out / export.SAVED_MODEL_DIR))
    described = saved.signatures[export.CONTRACT_SIGNATURE]()
    assert int(described["image_size"]) == SIZE and described["transform"].numpy() == b"full"
    assert [n.decode() for n in described["class_names"].numpy()] == list(NAMES)
    served = saved.signatures["serving_default"](image_bytes=tf.constant([photo.read_bytes()]))
    expected_scores = loaded(pretrained.preprocess(photo.read_bytes(), loaded)).numpy()
    np.testing.assert_allclose(served["probabilities"].numpy(), expected_scores, atol=1e-5)
    with caplog.at_level(logging.WARNING, logger="absl"):
        resized = export.export(str(folder), str(tmp_path / "at48"), image_size=48, transform="demo")
    assert resized["input_contract"]["image_size"] == 48 and resized["transform"] == "demo"
    assert "image size 48 asked for, but the network expects 32" in caplog.text


def test_the_tools_use_the_contract_and_offer_every_transform(run, photo, tmp_path, caplog):
    model, folder = run
    out = tmp_path / "out.json"
    run_in_process(
        image_classification, [f"--checkpoint={folder}", "--topk=2", f"--output_json={out}", str(photo)]
    )
    report = json.loads(out.read_text())
    assert (report["settings"]["transform"], report["settings"]["image_size"]) == ("full", SIZE)
    assert {p["name"] for p in report["images"][0]["predictions"]} <= set(NAMES)
    for transform in sorted(preprocessing.TRANSFORMS):
        with caplog.at_level(logging.WARNING, logger="absl"):
            run_in_process(
                image_classification,
                [
                    f"--checkpoint={folder}",
                    f"--transform={transform}",
                    "--image_size=48",
                    f"--output_json={out}",
                    str(photo),
                ],
            )
        assert json.loads(out.read_text())["settings"]["transform"] == transform
    assert "image size 48 asked for, but the network expects 32" in caplog.text


def test_a_keras_file_without_a_contract_and_a_bad_one(tmp_path):
    model = tiny_model(3, seed=23)
    model.save(tmp_path / "plain.keras")
    assert pretrained.load(str(tmp_path / "plain.keras")).input_contract == input_contract.RELEASE
    with zipfile.ZipFile(tmp_path / "plain.keras", "a") as archive:
        archive.writestr(input_contract.KERAS_MEMBER, json.dumps({"image_size": 32, "transform": "bogus"}))
    with pytest.raises(checkpoint_files.CheckpointError, match="not an input contract .*unknown transform"):
        pretrained.load(str(tmp_path / "plain.keras"))
