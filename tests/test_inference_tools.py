"""tools/image_classification.py and tools/extract_feature.py: direct computations, bad files, the CLIs."""

import ast
import contextlib
import io
import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf

from data.pixels import image_files, preprocessing
from models import pretrained, resnet, tf1_checkpoint
from tests.scripts import run_in_process, run_script
from tests.test_evaluate import BASE_WIDTH, tiny_model, write_jpegs
from tests.test_preprocessing import _png_header_only
from tests.test_tf1_checkpoint import write_tf1_checkpoint
from tools import extract_feature, image_classification

SIZE = 32  # crops of 32 px: the demo transform resizes the shorter side to round(32 / 0.875) = 37


def run_tool(tool, *args) -> tuple[str, str, str]:
    """`python tools/<tool>.py *args` in this process (its `run`, fresh flags): (stdout, stderr, the absl
    warnings, e.g. `skipping PATH: reason`), as a shell would see them on its stdout and stderr."""
    out, err = io.StringIO(), io.StringIO()
    handler = logging.StreamHandler(io.StringIO())
    handler.setLevel(logging.WARNING)
    absl_logger = logging.getLogger("absl")
    absl_logger.addHandler(handler)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            run_in_process(
                {"image_classification": image_classification, "extract_feature": extract_feature}[tool], args
            )
    finally:
        absl_logger.removeHandler(handler)
    return out.getvalue(), err.getvalue(), handler.stream.getvalue()


@pytest.fixture(scope="module")
def imagenet_model(tmp_path_factory):
    """A 1000-way tiny model (the ImageNet head size: softmax under --head=auto) and its checkpoint."""
    model = tiny_model(1000, seed=2)
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path_factory.mktemp("ckpt") / "imagenet"))
    return model, prefix


@pytest.fixture
def bad_files(tmp_path):
    """A text file named .jpg, a truncated JPEG, a missing path and a 30000 x 30000 PNG (header only: refused
    from its header by the default --max_pixels; decoding it would take 2.7 GB)."""
    write_jpegs(tmp_path / "good", 1)
    text = tmp_path / "text.jpg"
    text.write_text("not an image\n")
    data = (tmp_path / "good" / "im_0.jpg").read_bytes()
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(data[: len(data) // 2])
    huge = tmp_path / "huge.png"
    huge.write_bytes(_png_header_only(30000, 30000))
    return [str(text), str(truncated), str(tmp_path / "missing.jpg"), str(huge)]


BAD_REASONS = ("not an image", "corrupt or truncated", "missing file", "too many pixels")


def direct_logits(model, path, transform=preprocessing.demo_transform):
    image = transform(tf.constant(open(path, "rb").read()), image_size=SIZE)
    return model(image[tf.newaxis], training=False).numpy()[0]


def test_resolve_head_rule():
    assert image_classification.resolve_head("auto", 1000) == "softmax"
    assert image_classification.resolve_head("auto", 11166) == "sigmoid"
    assert image_classification.resolve_head("auto", 7) == "sigmoid"
    assert image_classification.resolve_head("sigmoid", 1000) == "sigmoid"
    assert image_classification.resolve_head("softmax", 11166) == "softmax"
    with pytest.raises(ValueError, match="head must be one of"):
        image_classification.resolve_head("relu", 5)


def test_class_names_from_both_dictionaries(reference_dir):
    names = image_classification.load_class_names(
        imagenet_dictionary=str(reference_dir / "imagenet2012_dictionary.txt"), num_classes=1000
    )
    assert names[0] == "tench Tinca tinca" and names[1] == "goldfish Carassius auratus"
    names = image_classification.load_class_names(
        hierarchy=str(reference_dir / "dictionary_and_semantic_hierarchy.txt"), num_classes=11166
    )
    assert len(names) == 11166 and names[0] == "thing"
    with pytest.raises(ValueError, match="names 1000 classes but the checkpoint's head has 11166"):
        image_classification.load_class_names(
            imagenet_dictionary=str(reference_dir / "imagenet2012_dictionary.txt"), num_classes=11166
        )
    assert image_classification.load_class_names(num_classes=3) == ["0", "1", "2"]


def test_classify_matches_direct_softmax_and_skips_bad_files(imagenet_model, reference_dir, bad_files):
    model, _ = imagenet_model
    good = sorted(str(p) for p in (reference_dir / "images").glob("*.jpg"))
    paths = [good[0], *bad_files, *good[1:]]
    predictions, skipped = image_classification.classify(
        model, paths, head="softmax", topk=5, image_size=SIZE, batch_size=3
    )
    assert [p.path for p in predictions] == good  # in input order, bad files left out
    assert [s.path for s in skipped] == bad_files
    for skip, reason in zip(skipped, BAD_REASONS, strict=True):
        assert reason in skip.reason and " at 0x" not in skip.reason, skip.reason
    for prediction in predictions:
        probabilities = tf.nn.softmax(direct_logits(model, prediction.path)).numpy()
        want = np.argsort(-probabilities, kind="stable")[:5]
        assert list(prediction.indices) == list(want)
        np.testing.assert_allclose(prediction.scores, probabilities[want], rtol=1e-5)


def test_classify_sigmoid_head_from_a_tf1_checkpoint(tmp_path, reference_dir):
    """A multi-label (7-way) head from a TF1 checkpoint: sigmoid scores, same as our checkpoint's."""
    model = tiny_model(7, seed=3)
    values = {name: v.numpy() for name, v in tf1_checkpoint.tf1_variable_map(model).items()}
    write_tf1_checkpoint(tmp_path / "tf1" / "model.ckpt", values)
    loaded, info = pretrained.load_model(str(tmp_path / "tf1"))
    assert (info.kind, info.depth, info.base_width, info.num_classes) == ("tf1", 14, BASE_WIDTH, 7)
    path = str(reference_dir / "images" / "im_0.jpg")
    (prediction,), skipped = image_classification.classify(
        loaded, [path], head=image_classification.resolve_head("auto", 7), topk=3, image_size=SIZE
    )
    assert not skipped
    probabilities = tf.sigmoid(direct_logits(model, path)).numpy()
    want = np.argsort(-probabilities, kind="stable")[:3]
    assert list(prediction.indices) == list(want)
    np.testing.assert_allclose(prediction.scores, probabilities[want], rtol=1e-5)


def test_image_classification_cli(imagenet_model, reference_dir, bad_files, tmp_path):
    _, prefix = imagenet_model
    (tmp_path / "list.txt").write_text("im_0.jpg\n\nim_1.jpg 3:1\n")  # the first field of each line
    out = tmp_path / "predictions.json"
    stdout, stderr, warnings = run_tool(
        "image_classification",
        f"--checkpoint={prefix}",
        f"--imagenet_dictionary={reference_dir / 'imagenet2012_dictionary.txt'}",
        f"--image_list={tmp_path / 'list.txt'}",
        f"--image_root={reference_dir / 'images'}",
        f"--image_size={SIZE}",
        "--topk=3",
        f"--output_json={out}",
        *bad_files,
        str(reference_dir / "images" / "im_2.jpg"),
    )
    report = json.loads(out.read_text())
    assert [entry["image"] for entry in report["images"]] == [
        str(reference_dir / "images" / name) for name in ("im_2.jpg", "im_0.jpg", "im_1.jpg")
    ]
    assert [entry["image"] for entry in report["skipped"]] == bad_files
    assert report["skipped"][3]["reason"].startswith("too many pixels")
    assert report["settings"]["head"] == "softmax"
    first = report["images"][0]["predictions"]
    assert len(first) == 3 and first[0]["score"] >= first[1]["score"] >= first[2]["score"]
    assert f"[{first[0]['index']}] {first[0]['name']}" in stdout
    for path in bad_files:
        assert f"skipping {path}: " in warnings
    assert "skipped 4 of 7 images" in stderr


def test_center_features_match_with_features(imagenet_model, reference_dir):
    model, _ = imagenet_model
    paths = sorted(str(p) for p in (reference_dir / "images").glob("*.jpg"))
    for transform in ("demo", "reference"):
        names, features, skipped = extract_feature.extract_features(
            model, paths, transform=transform, image_size=SIZE, batch_size=3
        )
        assert names == paths and not skipped
        assert features.shape == (4, 32 * BASE_WIDTH) and features.dtype == np.float32
        view = resnet.with_features(model)
        transform_fn = preprocessing.get_transform(transform)
        for name, row in zip(names, features, strict=True):
            image = transform_fn(tf.constant(open(name, "rb").read()), image_size=SIZE)
            np.testing.assert_allclose(
                row, view(image[tf.newaxis])["features"].numpy()[0], rtol=1e-5, atol=1e-6
            )


def test_ten_crop_features_are_the_mean_of_ten_independent_crops(imagenet_model, reference_dir, bad_files):
    model, _ = imagenet_model
    path = str(reference_dir / "images" / "im_1.jpg")
    names, features, skipped = extract_feature.extract_features(
        model, [*bad_files, path], crop="ten_crop", image_size=SIZE
    )
    assert names == [path] and len(skipped) == 4

    # The crops, computed here: shorter side to 37 (bilinear, half-pixel centres, rounded to uint8), then
    # 32 x 32 windows at the 4 corners and the centre, and their mirror images.
    image = tf.io.decode_jpeg(open(path, "rb").read(), channels=3, dct_method="INTEGER_ACCURATE")
    height, width = image.shape[:2]
    side = round(SIZE / 0.875)
    new = (side, int(width / height * side)) if height <= width else (int(height / width * side), side)
    resized = np.clip(np.round(tf.image.resize(image, new, antialias=False).numpy()), 0, 255) / 255.0
    bottom, right = new[0] - SIZE, new[1] - SIZE
    crops = [
        resized[top : top + SIZE, left : left + SIZE]
        for top, left in ((0, 0), (0, right), (bottom, 0), (bottom, right), (bottom // 2, right // 2))
    ]
    crops += [crop[:, ::-1] for crop in crops]
    view = resnet.with_features(model)
    each = [view(((c - 0.5) * 2.0)[np.newaxis].astype(np.float32))["features"].numpy()[0] for c in crops]
    np.testing.assert_allclose(features[0], np.mean(each, axis=0), rtol=1e-4, atol=1e-5)

    ten = extract_feature.ten_crop_transform(tf.constant(open(path, "rb").read()), image_size=SIZE).numpy()
    centre = preprocessing.demo_transform(tf.constant(open(path, "rb").read()), image_size=SIZE).numpy()
    np.testing.assert_array_equal(ten[4], centre)  # the same geometry as the demo transform
    with pytest.raises(ValueError, match="transform=demo"):
        extract_feature.extract_features(model, [path], crop="ten_crop", transform="reference")


@pytest.mark.parametrize("fmt", extract_feature.FORMATS)
def test_save_features_formats(tmp_path, fmt):
    rng = np.random.default_rng(0)
    features = rng.normal(size=(3, 5)).astype(np.float32)
    names = ["a.jpg", "dir/b.jpg", "c d.png"]
    path = tmp_path / f"features.{fmt}"
    extract_feature.save_features(str(path), names, features, fmt=fmt)
    if fmt == "npy":
        np.testing.assert_array_equal(np.load(path), features)
    elif fmt == "npz":
        with np.load(path) as npz:
            np.testing.assert_array_equal(npz["features"], features)
            assert list(npz["names"]) == names
    else:
        lines = path.read_text().splitlines()
        assert [line.split("\t")[0] for line in lines] == names
        parsed = np.array([[float(v) for v in line.split("\t")[1].split(" ")] for line in lines], np.float32)
        np.testing.assert_array_equal(parsed, features)  # %.9g round-trips float32


def test_extract_feature_cli_txt(imagenet_model, reference_dir, bad_files, tmp_path):
    _, prefix = imagenet_model
    good = sorted(str(p) for p in (reference_dir / "images").glob("*.jpg"))
    out = tmp_path / "features.txt"
    stdout, stderr, warnings = run_tool(
        "extract_feature",
        f"--checkpoint={prefix}",
        f"--output={out}",
        "--format=txt",
        f"--image_size={SIZE}",
        *good,
        *bad_files,
    )
    lines = out.read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == good
    assert all(len(line.split("\t")[1].split(" ")) == 32 * BASE_WIDTH for line in lines)
    for path in bad_files:
        assert f"skipping {path}: " in warnings
    assert f"skipped {len(bad_files)} of {len(good) + len(bad_files)} images" in stderr
    assert f"{len(good)} images x {32 * BASE_WIDTH} features -> {out}" in stdout


def test_tools_report_a_missing_checkpoint(repo_root, tmp_path, reference_dir):
    """As a shell sees it (a fresh process): one line, status 1, no traceback."""
    proc = run_script(
        repo_root,
        "tools/image_classification.py",
        f"--checkpoint={tmp_path / 'absent'}",
        str(reference_dir / "images" / "im_0.jpg"),
    )
    assert (
        proc.returncode == 1
        and "image_classification.py: error:" in proc.stderr
        and "not found" in proc.stderr
    )
    assert "Traceback" not in proc.stderr


def test_max_pixels_skips_large_images_and_keeps_the_rest(imagenet_model, reference_dir):
    """im_0.jpg is 3648 x 2736 = 9.98 MP: over a 5 MP limit it is skipped with the reason, the rest run."""
    model, _ = imagenet_model
    paths = sorted(str(p) for p in (reference_dir / "images").glob("*.jpg"))
    for extract in (False, True):
        if extract:
            names, _, skipped = extract_feature.extract_features(
                model, paths, image_size=SIZE, max_pixels=5_000_000
            )
        else:
            predictions, skipped = image_classification.classify(
                model, paths, head="softmax", topk=1, image_size=SIZE, max_pixels=5_000_000
            )
            names = [p.path for p in predictions]
        assert names == paths[1:]
        assert [s.path for s in skipped] == paths[:1]
        assert skipped[0].reason.startswith("too many pixels: 3648x2736 = 10.0 MP > 5.0 MP")


def test_release_output_format_is_the_label_pred_layout():
    """The release prints, per list line, `+++ the predictions of PATH is:` and `%d %s: %.3f` per class,
    or `open pic PATH failed`; here in input order with the skipped files in their place."""
    predictions = [
        image_classification.Prediction("a.jpg", (2, 0), (0.71249, 0.2)),
        image_classification.Prediction("c.jpg", (1, 2), (0.5, 0.0004)),
    ]
    skipped = [image_files.SkippedImage("b.jpg", "missing file")]
    text = image_classification.format_release(
        ["a.jpg", "b.jpg", "c.jpg"], predictions, skipped, ["tench", "goldfish", "great white shark"]
    )
    assert text.splitlines() == [
        "+++ the predictions of a.jpg is:",
        "2 great white shark: 0.712",
        "0 tench: 0.200",
        "open pic b.jpg failed",
        "+++ the predictions of c.jpg is:",
        "1 goldfish: 0.500",
        "2 great white shark: 0.000",
    ]


def test_image_classification_cli_release_format(imagenet_model, reference_dir, tmp_path):
    _, prefix = imagenet_model
    out = tmp_path / "label_pred.txt"
    image = str(reference_dir / "images" / "im_3.jpg")
    _, _, warnings = run_tool(
        "image_classification",
        f"--checkpoint={prefix}",
        f"--image_size={SIZE}",
        "--output_format=release",
        f"--output={out}",
        "--max_pixels=1000000",  # im_3.jpg is 1024 x 768 = 0.79 MP
        image,
        str(reference_dir / "images" / "im_0.jpg"),  # 9.98 MP: skipped
    )
    lines = out.read_text().splitlines()
    assert lines[0] == f"+++ the predictions of {image} is:" and len(lines) == 7
    assert all(
        line.split(" ", 1)[0].isdigit() and line.rsplit(": ", 1)[1].count(".") == 1 for line in lines[1:6]
    )
    assert lines[6] == f"open pic {reference_dir / 'images' / 'im_0.jpg'} failed"
    assert "too many pixels" in warnings


def test_the_tools_do_not_import_the_evaluation_or_checkpoint_code(repo_root):
    """Issue #15: the tools get image files from data/ and the loader from models/, not from training/
    (only training/cli.py for the shared inference flags)."""
    code = (
        "import sys\nimport tools.image_classification, tools.extract_feature\n"
        "print(sorted(m for m in sys.modules if m.startswith('training.')))"
    )
    proc = subprocess.run(
        [sys.executable, "-c", code], cwd=repo_root, capture_output=True, text=True, timeout=300
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    loaded = set(ast.literal_eval(proc.stdout.strip().splitlines()[-1]))
    assert "training.cli" in loaded
    assert not loaded & {
        "training.evaluation",
        "training.predictions",
        "training.report",
        "training.checkpoints",
        "training.input_pipeline",
        "training.metrics",
        "training.loop",
    }
