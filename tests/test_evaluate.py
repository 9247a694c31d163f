"""evaluate.py end to end (--predictions; --checkpoint on our TFRecords, a TF1 checkpoint, mocked TFDS ImageNet)
and the checks of training/evaluation.py."""

import contextlib
import io
import json
import math

import numpy as np
import pytest
from absl import flags

import evaluate
from models import architecture, checkpoint_files, pretrained
from tests.scripts import run_in_process, run_script
from tests.test_metrics import random_multilabel, reference_multilabel, reference_single_label
from training import evaluation
from training import predictions as predictions_lib
from training import report as report_lib

SETTINGS = report_lib.EvalSettings(topk=(1, 3), num_bins=32, chunk_size=16)


def run_cli(*args: str) -> tuple[str, str]:
    """`python evaluate.py *args` in this process (a fresh FlagValues): what it printed on stdout and stderr
    (the table; the tqdm bars)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        run_in_process(evaluate, args)
    return out.getvalue(), err.getvalue()


def cli_error(*args: str) -> str:
    """The message of the run `python evaluate.py *args` refuses: the script exits with it (status 1, the
    one line on stderr, no traceback); tests/test_evaluate_usage.py checks one such exit as a shell sees it."""
    with pytest.raises(SystemExit) as info:
        run_cli(*args)
    message = info.value.code
    assert isinstance(message, str) and "\n" not in message, message
    return message


@pytest.fixture
def multilabel_npz(tmp_path):
    scores, labels = random_multilabel(np.random.default_rng(0), 101, 7, num_bins=32)
    path = tmp_path / "multilabel.npz"
    np.savez(path, scores=scores, labels=labels)
    return path, scores, labels


@pytest.fixture
def single_label_npz(tmp_path):
    rng = np.random.default_rng(1)
    scores = rng.normal(size=(75, 8)).astype(np.float16)
    labels = rng.integers(0, 8, size=75)
    path = tmp_path / "single.npz"
    np.savez_compressed(path, scores=scores, labels=labels, image_size=np.array(224))
    return path, scores, labels


def test_cli_multilabel_json_matches_direct_computation(tmp_path, multilabel_npz):
    path, scores, labels = multilabel_npz
    out = tmp_path / "out" / "report.json"
    stdout, stderr = run_cli(
        f"--predictions={path}",
        "--topk=1,3,7",
        "--num_bins=32",
        "--chunk_size=10",
        f"--output_json={out}",
    )
    report = json.loads(out.read_text())
    expected = reference_multilabel(scores, labels, ks=(1, 3, 7))
    assert report["task"] == "multilabel"
    assert report["num_images"] == expected.pop("num_images") == 101
    result = report["results"]["predictions"]
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-9), name
    assert report["settings"]["topk"] == [1, 3, 7]
    assert report["settings"]["label_threshold"] == 0.5
    assert report["settings"]["num_classes"] == 7
    assert f"{100 * expected['precision@3']:.2f}" in stdout  # the table
    assert "100%" in stderr  # tqdm finished


def test_noprogress_hides_the_bar_and_nothing_else(multilabel_npz, multilabel_setup):
    path = multilabel_npz[0]
    shown, bar = run_cli(f"--predictions={path}", "--topk=1,3")
    hidden, nothing = run_cli(f"--predictions={path}", "--topk=1,3", "--noprogress")
    assert "100%" in bar and "100%" not in nothing and hidden == shown
    checkpoint = [f"--checkpoint={multilabel_setup['prefix']}", f"--data_dir={multilabel_setup['records']}"]
    _, stderr = run_cli(*checkpoint, "--image_size=32", "--topk=1,3", "--batch_size=4", "--noprogress")
    assert "evaluate @32" not in stderr and "10/10" not in stderr


def test_cli_single_label_json_matches_direct_computation(tmp_path, single_label_npz):
    path, scores, labels = single_label_npz
    out = tmp_path / "report.json"
    stdout, _ = run_cli(f"--predictions={path}", f"--output_json={out}", "--chunk_size=20")
    report = json.loads(out.read_text())
    expected = reference_single_label(scores.astype(np.float32), labels)
    assert report["task"] == "single_label" and report["num_images"] == 75
    assert set(report["results"]) == {"224"}  # named by the file's image_size
    assert report["results"]["224"]["top1"] == pytest.approx(expected["top1"])
    assert report["results"]["224"]["top5"] == pytest.approx(expected["top5"])
    assert f"{100 * expected['top5']:.2f}" in stdout


def test_cli_reports_bad_input_without_traceback(tmp_path):
    path = tmp_path / "no_labels.npz"
    np.savez(path, scores=np.zeros((3, 4), np.float32))
    message = cli_error(f"--predictions={path}")
    assert message.startswith("evaluate.py: error:") and "lacks array(s) ['labels']" in message


def test_cli_help_explains_every_flag_and_rejects_bad_topk(repo_root):
    proc = run_script(repo_root, "evaluate.py", "--help")  # the real script's --help
    for flag in (
        "predictions",
        "topk",
        "label_threshold",
        "output_json",
        "apply_sigmoid",
        "num_bins",
        "chunk_size",
        "checkpoint",
        "depth",
        "data_dir",
        "split_prefix",
        "tfds_name",
        "tfds_split",
        "tfds_data_dir",
        "tfds_manual_dir",
        "image_size",
        "transform",
        "batch_size",
        "max_batches",
        "save_predictions",
        "progress",
    ):
        assert f"--{flag}" in proc.stdout or f"--[no]{flag}" in proc.stdout, flag
    with pytest.raises(flags.IllegalFlagValueError, match="comma-separated list of positive integers"):
        run_cli("--predictions=x.npz", "--topk=5,ten")  # absl prints it as the usage error


@pytest.mark.parametrize("save", [np.savez, np.savez_compressed])
def test_chunks_stream_every_row_in_order(tmp_path, save):
    scores = np.arange(23 * 3, dtype=np.float32).reshape(23, 3)
    labels = np.arange(23)
    save(tmp_path / "p.npz", scores=scores, labels=labels)
    predictions = predictions_lib.PredictionsFile.open(str(tmp_path / "p.npz"))
    assert (predictions.task, predictions.num_images, predictions.num_classes) == ("single_label", 23, 3)
    chunks = list(predictions.chunks(10))
    assert [len(s) for s, _ in chunks] == [10, 10, 3]
    np.testing.assert_array_equal(np.concatenate([s for s, _ in chunks]), scores)
    np.testing.assert_array_equal(np.concatenate([lab for _, lab in chunks]), labels)


def test_fortran_ordered_arrays_are_read_correctly(tmp_path, multilabel_npz):
    _, scores, labels = multilabel_npz
    np.savez(tmp_path / "f.npz", scores=np.asfortranarray(scores), labels=np.asfortranarray(labels))
    report = predictions_lib.evaluate_predictions(str(tmp_path / "f.npz"), SETTINGS, show_progress=False)
    expected = reference_multilabel(scores, labels, ks=(1, 3))
    assert report["results"]["predictions"]["recall@3"] == pytest.approx(expected["recall@3"])


def test_apply_sigmoid_evaluates_logits(tmp_path, multilabel_npz):
    _, scores, labels = multilabel_npz
    logits = np.log(scores / (1 - scores))
    np.savez(tmp_path / "logits.npz", scores=logits, labels=labels)
    with pytest.raises(report_lib.EvaluationInputError, match="--apply_sigmoid"):
        predictions_lib.evaluate_predictions(str(tmp_path / "logits.npz"), SETTINGS, show_progress=False)
    settings = report_lib.EvalSettings(topk=(1, 3), num_bins=32, apply_sigmoid=True)
    report = predictions_lib.evaluate_predictions(str(tmp_path / "logits.npz"), settings, show_progress=False)
    expected = reference_multilabel(scores, labels, ks=(1, 3))
    assert report["results"]["predictions"]["mAP"] == pytest.approx(expected["mAP"], rel=1e-6)
    assert report["settings"]["apply_sigmoid"] is True


@pytest.mark.parametrize(
    "arrays, match",
    [
        ({"labels": np.zeros(3, np.int64)}, r"lacks array\(s\) \['scores'\]"),
        ({"scores": np.zeros((3, 4)), "labels": np.zeros((3, 5))}, "does not match"),
        ({"scores": np.zeros((3, 4)), "labels": np.zeros(4, np.int64)}, "does not match"),
        ({"scores": np.zeros((3, 4)), "labels": np.zeros(3, np.float32)}, "int\\[3\\] \\(single-label\\)"),
        ({"scores": np.zeros(3), "labels": np.zeros(3, np.int64)}, "must be \\[N, C\\]"),
        ({"scores": np.zeros((3, 6)), "labels": np.array([0, 1, 6])}, r"class indices in \[0, 6\)"),
        ({"scores": np.zeros((3, 2)), "labels": np.zeros((3, 2))}, "k=\\[3\\]"),
        ({"scores": np.full((3, 6), np.nan), "labels": np.zeros(3, np.int64)}, "NaN"),
        ({"scores": np.zeros((3, 6)), "labels": np.zeros(3, np.int64), "image_size": np.array([224])}, "0-d"),
    ],
)
def test_bad_predictions_raise_clear_errors(tmp_path, arrays, match):
    np.savez(tmp_path / "bad.npz", **arrays)
    with pytest.raises(report_lib.EvaluationInputError, match=match):
        predictions_lib.evaluate_predictions(str(tmp_path / "bad.npz"), SETTINGS, show_progress=False)


def test_missing_and_non_npz_files_raise_clear_errors(tmp_path):
    with pytest.raises(report_lib.EvaluationInputError, match="not found"):
        predictions_lib.PredictionsFile.open(str(tmp_path / "absent.npz"))
    (tmp_path / "text.npz").write_text("not a zip")
    with pytest.raises(report_lib.EvaluationInputError, match="not an .npz"):
        predictions_lib.PredictionsFile.open(str(tmp_path / "text.npz"))


def test_report_json_and_table(tmp_path):
    results = {
        "224": {"top1": 0.75, "top5": 0.9, "num_images": 8},
        "299": {"top1": math.nan, "top5": 1.0, "num_images": 8},
    }
    report = report_lib.make_report(results, task="single_label", settings={"topk": (5,)})
    assert report == {
        "task": "single_label",
        "num_images": 8,
        "results": {"224": {"top1": 0.75, "top5": 0.9}, "299": {"top1": None, "top5": 1.0}},
        "settings": {"topk": [5]},
    }
    report_lib.write_json(report, str(tmp_path / "r.json"))
    assert json.loads((tmp_path / "r.json").read_text()) == report
    table = report_lib.format_table(report)
    assert "75.00" in table and "90.00" in table and "n/a" in table
    with pytest.raises(ValueError, match="different numbers of images"):
        report_lib.make_report({"224": {"num_images": 1}, "299": {"num_images": 2}}, task="x", settings={})


# ------------------------------------------------------------------------------ evaluating a checkpoint

NUM_CLASSES = 12
BASE_WIDTH = 4
NUM_BINS = 50
IMAGE_SIZES = (32, 48)
TOPK = (1, 3)
MODEL_SETTINGS = report_lib.EvalSettings(topk=TOPK, num_bins=NUM_BINS)


def tiny_model(num_classes, *, seed=0):
    """A depth-14 ResNet with randomised BN statistics and head, so that its scores differ per image."""
    import keras

    from models import resnet

    keras.utils.set_random_seed(seed)
    model = resnet.build_resnet(14, num_classes, base_width=BASE_WIDTH)
    rng = np.random.default_rng(seed)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.moving_variance.assign(rng.uniform(0.5, 1.5, layer.moving_variance.shape))
    head = model.get_layer("logits")
    head.kernel.assign(rng.normal(0, 1.0, head.kernel.shape) / np.sqrt(head.kernel.shape[0]))
    return model


def write_jpegs(folder, count, *, seed=0):
    """Smooth random colour images of varied sizes (JPEG artefacts stay small); returns the file names."""
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    names = []
    for i in range(count):
        height, width = int(rng.integers(36, 80)), int(rng.integers(36, 80))
        coarse = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
        image = Image.fromarray(coarse).resize((width, height), Image.BILINEAR)
        name = f"im_{i}.jpg"
        image.save(folder / name, format="JPEG", quality=90)
        names.append(name)
    return names


def standardise_head(model, images):
    """Rescales the head so that the logits of these images vary across images (a random network's pooled
    features barely do): logits = ((features - mean) / std) @ kernel."""
    from models import resnet

    features = resnet.with_features(model)(images, training=False)["features"].numpy()
    mean, std = features.mean(0), features.std(0) + 1e-6
    head = model.get_layer("logits")
    kernel = head.kernel.numpy() / std[:, None]
    head.kernel.assign(kernel)
    head.bias.assign(-mean @ kernel)


def write_records(root, model, *, num_images=10, num_classes=NUM_CLASSES, seed=0):
    """A multi-label `val` split written by the project's writer (sparse labels, 2 shards) whose labels
    partly agree with `model`'s predictions at 32 px (after `standardise_head`), so that the top-k metrics
    are neither all 0 nor all 1."""
    import tensorflow as tf

    from data.pixels import preprocessing
    from data.shards import dataset_writer

    names = write_jpegs(root / "images", num_images, seed=seed)
    images = np.stack(
        [
            preprocessing.eval_transform(tf.constant((root / "images" / n).read_bytes()), image_size=32)
            for n in names
        ]
    )
    standardise_head(model, images)
    ranked = np.argsort(-model(images, training=False).numpy(), axis=1)
    rng = np.random.default_rng(seed)
    lines = []
    for i, name in enumerate(names):
        tags = {
            int(ranked[i, 2]): 0.9,
            int(rng.integers(num_classes)): 0.4,
            int(rng.integers(num_classes)): 1.0,
        }
        if i % 2 == 0:
            tags[int(ranked[i, 0])] = 1.0
        if i == num_images - 1:
            tags = {c: 0.4 for c in tags}  # an image without positives
        lines.append(name + " " + " ".join(f"{c}:{conf}" for c, conf in tags.items()))
    (root / "val_list.txt").write_text("\n".join(lines) + "\n")
    dataset_writer.write_dataset(
        image_list=str(root / "val_list.txt"),
        image_root=str(root / "images"),
        output_dir=str(root / "records"),
        label_format="sparse",
        num_classes=num_classes,
        shards=2,
        prefix="val",
        progress=False,
    )
    return root / "records"


def direct_scores(model, source, image_size, *, task):
    """The model run eagerly over the split (the same input pipeline), scores and labels stacked."""
    import tensorflow as tf

    from training import input_pipeline

    scores, labels = [], []
    for images, batch_labels in input_pipeline.eval_dataset(source, batch_size=3, image_size=image_size):
        logits = model(images, training=False)
        scores.append((tf.sigmoid(logits) if task == "multilabel" else tf.nn.softmax(logits)).numpy())
        labels.append(batch_labels.numpy())
    return np.concatenate(scores), np.concatenate(labels)


def expected_multilabel(scores, labels):
    """Top-k metrics on the raw scores; mAP on the scores quantised to the histogram bins, where the
    streaming AP is exact (training/metrics.py)."""
    with np.errstate(invalid="ignore"):  # F1 of precision = recall = 0
        expected = reference_multilabel(scores, labels, ks=TOPK)
    quantised = np.clip(np.floor(scores * np.float32(NUM_BINS)), 0, NUM_BINS - 1)
    with np.errstate(invalid="ignore"):
        expected["mAP"] = reference_multilabel(quantised, labels, ks=TOPK)["mAP"]
    for k in TOPK:  # precision = recall = 0: F1 0 (training/metrics.py), where the formula gives 0/0
        if math.isnan(expected[f"f1@{k}"]):
            expected[f"f1@{k}"] = 0.0
    return expected


def assert_result_matches(result, expected):
    expected = {k: v for k, v in expected.items() if k != "num_images"}
    assert set(result) == set(expected)
    for name, value in expected.items():
        assert result[name] == pytest.approx(value, rel=1e-6, abs=1e-9), name


@pytest.fixture(scope="module")
def multilabel_setup(tmp_path_factory):
    """A 12-way model saved as our checkpoint, a 10-image multi-label split, and the direct results."""
    import tensorflow as tf

    from training import input_pipeline

    root = tmp_path_factory.mktemp("eval")
    model = tiny_model(NUM_CLASSES)
    records = write_records(root, model)
    prefix = tf.train.Checkpoint(model=model).write(str(root / "ckpt" / "model"))
    source = input_pipeline.tfrecord_source(str(records), "val", num_classes=NUM_CLASSES)
    expected = {}
    for size in IMAGE_SIZES:
        scores, labels = direct_scores(model, source, size, task="multilabel")
        expected[str(size)] = expected_multilabel(scores, labels)
        assert 0 < expected[str(size)]["precision@1"] < 1 and 0 < expected[str(size)]["recall@3"] < 1
    return {"root": root, "model": model, "prefix": prefix, "records": records, "expected": expected}


@pytest.fixture(scope="module")
def cli_report(multilabel_setup):
    """evaluate.py --checkpoint run once on the split at two sizes, saving the predictions."""
    root = multilabel_setup["root"]
    out = root / "report.json"
    stdout, stderr = run_cli(
        f"--checkpoint={multilabel_setup['prefix']}",
        f"--data_dir={multilabel_setup['records']}",
        "--image_size=32,48",
        "--topk=1,3",
        f"--num_bins={NUM_BINS}",
        "--batch_size=4",
        f"--save_predictions={root / 'preds.npz'}",
        f"--output_json={out}",
    )
    return json.loads(out.read_text()), stdout, stderr


def test_cli_checkpoint_report_matches_direct_computation(cli_report, multilabel_setup):
    report, stdout, stderr = cli_report
    assert report["task"] == "multilabel" and report["num_images"] == 10
    assert set(report["results"]) == {"32", "48"}
    for size, expected in multilabel_setup["expected"].items():
        assert_result_matches(report["results"][size], expected)
    settings = report["settings"]
    assert settings["checkpoint_kind"] == "ours" and settings["checkpoint"] == multilabel_setup["prefix"]
    assert (settings["depth"], settings["base_width"], settings["num_classes"]) == (
        14,
        BASE_WIDTH,
        NUM_CLASSES,
    )
    assert settings["image_sizes"] == [32, 48] and settings["topk"] == [1, 3]
    assert settings["label_format"] == "sparse" and settings["transform"] == "reference"
    assert settings["num_ranks"] == 1
    assert f"{100 * report['results']['48']['precision@3']:.2f}" in stdout  # the table
    assert "evaluate @48" in stderr and "10/10" in stderr  # the progress bar knew the total


def test_saved_predictions_round_trip(cli_report, multilabel_setup):
    report = cli_report[0]
    root = multilabel_setup["root"]
    assert report["settings"]["predictions_files"] == [str(root / "preds.32.npz"), str(root / "preds.48.npz")]
    for size in ("32", "48"):
        again = predictions_lib.evaluate_predictions(
            str(root / f"preds.{size}.npz"), MODEL_SETTINGS, show_progress=False
        )
        assert set(again["results"]) == {size}  # named by the saved image_size
        assert again["num_images"] == 10
        assert_result_matches(again["results"][size], report["results"][size])


def test_tf1_checkpoint_gives_the_same_numbers(cli_report, multilabel_setup):
    from models import tf1_checkpoint
    from tests.test_tf1_checkpoint import write_tf1_checkpoint

    report = cli_report[0]
    values = {
        name: v.numpy() for name, v in tf1_checkpoint.tf1_variable_map(multilabel_setup["model"]).items()
    }
    folder = multilabel_setup["root"] / "tf1"
    write_tf1_checkpoint(folder / "model.ckpt", values)
    config = evaluation.ModelEvalConfig(
        checkpoint=str(folder),  # a directory: its latest checkpoint
        data_dir=str(multilabel_setup["records"]),
        image_sizes=IMAGE_SIZES,
        batch_size=4,
    )
    tf1_report = evaluation.evaluate_checkpoint(config, MODEL_SETTINGS, show_progress=False)
    assert tf1_report["settings"]["checkpoint_kind"] == "tf1"
    assert (tf1_report["settings"]["depth"], tf1_report["settings"]["base_width"]) == (14, BASE_WIDTH)
    for size in ("32", "48"):
        assert_result_matches(tf1_report["results"][size], report["results"][size])


def test_evaluate_model_all_reduces_once_at_the_end(multilabel_setup):
    """A stand-in for 2 ranks holding identical shards: every sum is all-reduced once, after the loop."""
    from training import distributed, input_pipeline

    class TwoIdenticalRanks(distributed.Distributed):
        size, rank = 2, 0
        calls = 0

        def allreduce_sum(self, tensor):
            TwoIdenticalRanks.calls += 1
            return 2 * tensor

    source = input_pipeline.tfrecord_source(str(multilabel_setup["records"]), "val", num_classes=NUM_CLASSES)
    dataset = input_pipeline.eval_dataset(source, batch_size=3, image_size=32)  # 4 batches
    result = evaluation.evaluate_model(
        multilabel_setup["model"],
        dataset,
        task=report_lib.MULTILABEL,
        num_classes=NUM_CLASSES,
        settings=MODEL_SETTINGS,
        dist=TwoIdenticalRanks(),
        show_progress=False,
    )
    assert TwoIdenticalRanks.calls == 6  # the 6 sums of MultiLabelMetrics, not 6 per batch
    assert result["num_images"] == 20
    assert_result_matches(
        {k: v for k, v in result.items() if not k.startswith("num_")},
        {k: v for k, v in multilabel_setup["expected"]["32"].items() if not k.startswith("num_")},
    )


def test_evaluate_model_max_batches_and_writer(multilabel_setup):
    from training import input_pipeline

    source = input_pipeline.tfrecord_source(str(multilabel_setup["records"]), "val", num_classes=NUM_CLASSES)
    writer = predictions_lib.PredictionsWriter()
    result = evaluation.evaluate_model(
        multilabel_setup["model"],
        input_pipeline.eval_dataset(source, batch_size=3, image_size=32),
        task=report_lib.MULTILABEL,
        num_classes=NUM_CLASSES,
        settings=MODEL_SETTINGS,
        max_batches=2,
        show_progress=False,
        predictions_writer=writer,
    )
    assert result["num_images"] == writer.num_images == 6


def test_evaluate_model_rejects_mismatched_shapes(multilabel_setup):
    import tensorflow as tf

    labels = tf.data.Dataset.from_tensors((tf.zeros([2, 32, 32, 3]), tf.zeros([2, 7])))
    with pytest.raises(report_lib.EvaluationInputError, match=r"labels \[batch, 12\]"):
        evaluation.evaluate_model(
            multilabel_setup["model"], labels, task="multilabel", num_classes=12, settings=MODEL_SETTINGS
        )
    with pytest.raises(report_lib.EvaluationInputError, match="12 logits but num_classes is 5"):
        evaluation.evaluate_model(
            multilabel_setup["model"], labels, task="multilabel", num_classes=5, settings=MODEL_SETTINGS
        )


@pytest.mark.parametrize(
    "several_sizes, num_ranks, expected",
    [
        (False, 1, "out/p.npz"),
        (True, 1, "out/p.224.npz"),
        (False, 2, "out/p.rank1.npz"),
        (True, 2, "out/p.224.rank1.npz"),
        (True, 1, "out/p.224"),  # no .npz: the name is kept whole
    ],
)
def test_predictions_path(several_sizes, num_ranks, expected):
    path = "out/p.npz" if expected.endswith(".npz") else "out/p"
    got = predictions_lib.predictions_path(
        path, image_size=224, several_sizes=several_sizes, rank=1, num_ranks=num_ranks
    )
    assert got == expected


def test_checkpoint_and_source_errors(multilabel_setup, tmp_path):
    with pytest.raises(checkpoint_files.CheckpointError, match="not found"):
        pretrained.load_model(str(tmp_path / "absent" / "model"))
    with pytest.raises(checkpoint_files.CheckpointError, match="no checkpoint in directory"):
        pretrained.load_model(str(tmp_path))
    with pytest.raises(checkpoint_files.CheckpointError, match="holds a ResNet-14"):
        architecture.inspect_checkpoint(multilabel_setup["prefix"], depth=101)
    with pytest.raises(report_lib.EvaluationInputError, match="no manifest"):
        evaluation.eval_source(num_classes=NUM_CLASSES, data_dir=str(tmp_path))
    with pytest.raises(
        report_lib.EvaluationInputError, match="has 12 classes but the checkpoint's head has 7"
    ):
        evaluation.eval_source(num_classes=7, data_dir=str(multilabel_setup["records"]))
    with pytest.raises(report_lib.EvaluationInputError, match="exactly one evaluation source"):
        evaluation.eval_source(num_classes=7)


@pytest.mark.parametrize("case", ["missing_checkpoint", "class_mismatch", "no_manifest"])
def test_cli_errors_are_one_line(case, multilabel_setup, tmp_path):
    import tensorflow as tf

    checkpoint, data_dir = multilabel_setup["prefix"], multilabel_setup["records"]
    if case == "missing_checkpoint":
        checkpoint, match = str(tmp_path / "absent"), "not found"
    elif case == "class_mismatch":
        checkpoint = tf.train.Checkpoint(model=tiny_model(7)).write(str(tmp_path / "seven"))
        match = "has 12 classes but the checkpoint's head has 7"
    else:
        data_dir, match = tmp_path, "no manifest"
    message = cli_error(f"--checkpoint={checkpoint}", f"--data_dir={data_dir}", "--image_size=32")
    assert message.startswith("evaluate.py: error:") and match in message, message


def test_tfds_imagenet_mock(tmp_path):
    """ImageNet through TFDS, offline: `tfds.testing.mock_data` makes tfds.load('imagenet2012') yield
    random JPEGs (5-50 px sides, labels in [0, 1000)). The mock lives in this process, so evaluate.py's
    command line (the real --tfds_name flag path) runs in it, inside the mock."""
    tfds = pytest.importorskip("tensorflow_datasets")
    import tensorflow as tf

    from training import input_pipeline

    num_examples = 7
    model = tiny_model(1000, seed=1)
    with tfds.testing.mock_data(num_examples=num_examples):
        source = input_pipeline.tfds_source("imagenet2012", "validation", num_classes=1000)
        labels = np.concatenate(
            [y.numpy() for _, y in input_pipeline.eval_dataset(source, batch_size=4, image_size=32)]
        )
        bias = np.zeros(1000, np.float32)
        bias[labels[0]], bias[labels[1]] = 12.0, 11.0  # so that top-1 / top-5 are not all zero
        model.get_layer("logits").bias.assign(bias)
        scores, direct_labels = direct_scores(model, source, 32, task="single_label")
    expected = reference_single_label(scores, direct_labels)
    assert expected["top1"] > 0
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "imagenet"))
    out = tmp_path / "report.json"
    with tfds.testing.mock_data(num_examples=num_examples):
        run_cli(
            f"--checkpoint={prefix}",
            "--tfds_name=imagenet2012",
            "--image_size=32",
            "--batch_size=4",
            f"--output_json={out}",
        )
    report = json.loads(out.read_text())
    assert report["task"] == "single_label" and report["num_images"] == num_examples
    assert report["settings"]["tfds_name"] == "imagenet2012" and report["settings"]["topk"] == [1, 5]
    assert report["results"]["32"]["top1"] == pytest.approx(expected["top1"])
    assert report["results"]["32"]["top5"] == pytest.approx(expected["top5"])


@pytest.mark.slow
@pytest.mark.horovod
def test_two_horovod_ranks_match_one_process(cli_report, multilabel_setup, repo_root):
    from tests.hvd import run_two_ranks

    report = cli_report[0]
    root = multilabel_setup["root"]
    out = root / "hvd.json"
    run_two_ranks(
        [
            "evaluate.py",
            f"--checkpoint={multilabel_setup['prefix']}",
            f"--data_dir={multilabel_setup['records']}",
            "--image_size=32",
            "--topk=1,3",
            f"--num_bins={NUM_BINS}",
            "--batch_size=2",
            f"--save_predictions={root / 'hvd.npz'}",
            f"--output_json={out}",
        ],
        cwd=repo_root,
    )
    hvd_report = json.loads(out.read_text())
    assert hvd_report["num_images"] == 10 and hvd_report["settings"]["num_ranks"] == 2
    assert_result_matches(hvd_report["results"]["32"], report["results"]["32"])
    rows = [predictions_lib.PredictionsFile.open(str(root / f"hvd.rank{r}.npz")).num_images for r in (0, 1)]
    assert sum(rows) == 10 and min(rows) > 0  # each rank saved its own shard


def test_single_label_with_fewer_than_5_classes_reports_top1_only(tmp_path):
    """top-5 of 4 classes is 1 by definition: it is left out rather than failing the evaluation."""
    scores = np.array([[0.1, 0.7, 0.1, 0.1], [0.6, 0.2, 0.1, 0.1], [0.1, 0.1, 0.1, 0.7]], np.float32)
    np.savez(tmp_path / "four.npz", scores=scores, labels=np.array([1, 2, 3]))
    report = predictions_lib.evaluate_predictions(str(tmp_path / "four.npz"), SETTINGS, show_progress=False)
    result = report["results"][predictions_lib.PREDICTIONS_KEY]
    assert result["top1"] == pytest.approx(2 / 3) and "top5" not in result
    assert "n/a" in report_lib.format_table(report)


@pytest.mark.parametrize("value", [-0.5, 1.5, -2.0, 2.0])
def test_multilabel_labels_outside_0_1_and_minus_1_are_an_error(tmp_path, value):
    labels = np.zeros((40, 4), np.float32)
    labels[:, 0] = 1.0
    labels[:, 2] = -1.0  # ignore: allowed
    labels[33, 1] = value
    np.savez(tmp_path / "bad.npz", scores=np.full((40, 4), 0.5, np.float32), labels=labels)
    with pytest.raises(report_lib.EvaluationInputError, match=rf"found {value:g} at row 33, class 1") as info:
        predictions_lib.evaluate_predictions(str(tmp_path / "bad.npz"), SETTINGS, show_progress=False)
    assert "\n" not in str(info.value)  # one line, printed by evaluate.py as a usage error


def test_multilabel_label_minus_1_is_ignored(tmp_path):
    """Image 0 ignores class 1, whose score (0.9) is its highest: ignored, class 1 is not predicted (top-1
    is class 0, a hit) and image 0 is not a negative of class 1 (its AP stays 1). Counted as a negative,
    it would give precision@1 = 0.5 and mAP = 0.75."""
    scores = np.array([[0.5, 0.9, 0.1], [0.2, 0.8, 0.3]], np.float32)
    labels = np.array([[1.0, -1.0, 0.0], [0.0, 1.0, 0.0]], np.float32)
    np.savez(tmp_path / "ignore.npz", scores=scores, labels=labels)
    report = predictions_lib.evaluate_predictions(str(tmp_path / "ignore.npz"), SETTINGS, show_progress=False)
    result = report["results"][predictions_lib.PREDICTIONS_KEY]
    assert result["precision@1"] == pytest.approx(1.0)
    assert result["mAP"] == pytest.approx(1.0)
    assert result["num_classes_with_positives"] == 2
    np.savez(tmp_path / "zero.npz", scores=scores, labels=np.maximum(labels, 0.0))  # the same, -1 -> 0
    zero = predictions_lib.evaluate_predictions(str(tmp_path / "zero.npz"), SETTINGS, show_progress=False)
    assert zero["results"][predictions_lib.PREDICTIONS_KEY]["precision@1"] == pytest.approx(0.5)
    assert zero["results"][predictions_lib.PREDICTIONS_KEY]["mAP"] == pytest.approx(0.75)


def test_cli_rejects_out_of_range_labels_in_one_line(tmp_path):
    labels = np.zeros((3, 4), np.float32)
    labels[1, 2] = 3.0
    np.savez(tmp_path / "bad.npz", scores=np.full((3, 4), 0.5, np.float32), labels=labels)
    message = cli_error(f"--predictions={tmp_path / 'bad.npz'}", "--topk=1")
    assert message.startswith("evaluate.py: error: multi-label `labels` must be confidences in [0, 1] or -1")
