"""Part of issue #23: results a person can look at.

`evaluate.py` writes each class's AP (with its name and training frequency), the micro PR curve and the AP
per hierarchy level into its JSON, and with `--plot_dir` draws them (training/plots.py); a run directory gets
`training_curves.png` (tools/plot_run.py, and training/loop.py at the end of a run: checked in
tests/test_checkpoint_rotation.py's demo run). Every PNG is opened and must show something.
"""

import json

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

import evaluate
from data.labels import hierarchy as hierarchy_lib
from tests import datasets
from tests.scripts import run_in_process
from tests.test_evaluate import run_cli, tiny_model
from tools import plot_run
from training import metrics, plots
from training import report as report_lib

pytest.importorskip("matplotlib")


def assert_picture(path, *, min_colours: int = 3) -> None:
    """A PNG that opens, has a size, and is not blank (more than a couple of colours)."""
    with Image.open(path) as image:
        assert image.format == "PNG" and image.width > 100 and image.height > 100
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20)
    assert colours is None or len(colours) >= min_colours, path


def test_class_details_by_hand():
    # 2 classes, 4 bins; [class, bin, (negatives, positives)].
    histogram = np.zeros((3, 4, 2))
    histogram[0, 3] = (0, 2)  # class 0: two positives in the top bin, a negative in bin 1: AP 1
    histogram[0, 1] = (1, 0)
    histogram[1, 3] = (1, 0)  # class 1: the negative above the positive: AP 1/2
    histogram[1, 2] = (0, 1)
    histogram[2, 0] = (3, 0)  # class 2: no positive: AP null, out of the mAP
    info = report_lib.ClassInfo(
        names=("cat", "dog", "fish"), train_frequencies=np.array([0.5, 0.25, 0.0]), depth=np.array([0, 1, 1])
    )
    details = report_lib.class_details(histogram, info)
    assert [(c["name"], c["ap"], c["positives"], c["train_frequency"]) for c in details["per_class"]] == [
        ("cat", 1.0, 2, 0.5),
        ("dog", 0.5, 1, 0.25),
        ("fish", None, 0, 0.0),
    ]
    # Pooled, highest bin first: bin 3 holds 2 positives + 1 negative, bin 2 one positive, bins 1, 0 negatives.
    assert details["pr_curve"] == {
        "threshold": [0.75, 0.5, 0.25, 0.0],
        "precision": [2 / 3, 3 / 4, 3 / 5, 3 / 8],
        "recall": [2 / 3, 1.0, 1.0, 1.0],
    }
    assert details["ap_per_level"] == [
        {"level": 0, "classes": 1, "mAP": 1.0},
        {"level": 1, "classes": 1, "mAP": 0.5},  # fish has no positives
    ]
    with pytest.raises(report_lib.EvaluationInputError, match="2 class names for 3 classes"):
        report_lib.class_details(histogram, report_lib.ClassInfo(names=("a", "b")))


@pytest.fixture(scope="module")
def demo_eval(tmp_path_factory):
    """evaluate.py on a small demo set (30 classes with their hierarchy) with every picture asked for."""
    root = tmp_path_factory.mktemp("pictures")
    data = datasets.multilabel(root / "data", num_train=24, num_val=12)
    model = tiny_model(data.num_classes, seed=41)
    prefix = tf.train.Checkpoint(model=model).write(str(root / "ckpt" / "ckpt-1"))
    out = root / "report.json"
    stdout, _ = run_cli(
        f"--checkpoint={prefix}",
        f"--data_dir={data.data_dir}",
        "--image_size=32,48",
        "--transform=full",
        "--topk=1,3",
        f"--hierarchy={data.hierarchy_path}",
        "--train_prefix=train",
        f"--output_json={out}",
        f"--plot_dir={root / 'plots'}",
        "--noprogress",
    )
    return data, json.loads(out.read_text()), stdout, root / "plots"


def test_the_json_holds_per_class_ap_with_names_and_frequencies(demo_eval):
    data, report, _, _ = demo_eval
    frequencies = report_lib.class_frequencies(data.data_dir, "train")
    for size in ("32", "48"):
        per_class = report["per_class"][size]
        assert [c["name"] for c in per_class] == list(data.class_names)
        np.testing.assert_allclose([c["train_frequency"] for c in per_class], frequencies)
        aps = [c["ap"] for c in per_class if c["ap"] is not None]
        assert np.mean(aps) == pytest.approx(report["results"][size]["mAP"])  # the mAP is their mean
        assert len(aps) == report["results"][size]["num_classes_with_positives"]
        curve = report["pr_curve"][size]
        assert curve["recall"][-1] == pytest.approx(1.0) and np.all(np.diff(curve["recall"]) >= 0)
        assert all(0 <= p <= 1 for p in curve["precision"])
    depth = hierarchy_lib.load_hierarchy(data.hierarchy_path).depth
    levels = report["ap_per_level"]["32"]
    assert [level["level"] for level in levels] == sorted(
        set(depth.tolist()) & {level["level"] for level in levels}
    )
    assert sum(level["classes"] for level in levels) == report["results"]["32"]["num_classes_with_positives"]


def test_the_plots_are_pictures(demo_eval):
    _, _, stdout, plot_dir = demo_eval
    names = [plots.PR_CURVE_FILE, plots.AP_VS_FREQUENCY_FILE, plots.AP_PER_LEVEL_FILE, plots.PREDICTIONS_FILE]
    for name in names:
        assert f"wrote {plot_dir / name}" in stdout
        assert_picture(plot_dir / name)
    with Image.open(plot_dir / plots.PREDICTIONS_FILE) as grid:  # 12 images, in 3 rows of 4
        assert grid.height > grid.width * 0.8


def test_predictions_files_get_the_curve_and_ap_against_positives(tmp_path):
    rng = np.random.default_rng(2)
    labels = (rng.uniform(size=(40, 6)) < 0.3).astype(np.float32)
    scores = np.clip(labels * 0.5 + rng.uniform(0, 0.5, labels.shape), 0, 1).astype(np.float32)
    np.savez(tmp_path / "p.npz", scores=scores, labels=labels)
    run_cli(
        f"--predictions={tmp_path / 'p.npz'}",
        "--topk=1",
        f"--output_json={tmp_path / 'r.json'}",
        f"--plot_dir={tmp_path / 'plots'}",
        "--noprogress",
    )
    report = json.loads((tmp_path / "r.json").read_text())
    per_class = report["per_class"]["predictions"]
    assert [c["positives"] for c in per_class] == labels.sum(axis=0).astype(int).tolist()
    assert all(c["name"] is None and c["train_frequency"] is None for c in per_class)
    state = metrics.MultiLabelMetrics(6, ks=(1,))
    state.update(scores, labels)
    assert [c["ap"] for c in per_class] == pytest.approx(
        metrics.average_precision_from_histograms(
            positives=state.state()["score_histogram"][..., 1],
            negatives=state.state()["score_histogram"][..., 0],
        ).tolist()
    )
    assert sorted(p.name for p in (tmp_path / "plots").iterdir()) == [
        plots.AP_VS_FREQUENCY_FILE,
        plots.PR_CURVE_FILE,
    ]
    for path in (tmp_path / "plots").iterdir():
        assert_picture(path)


def test_a_bad_class_source_is_a_one_line_error(demo_eval, tmp_path):
    data, _, _, _ = demo_eval
    (tmp_path / "stats.json").write_text(json.dumps({"images_per_class": [1, 2], "num_images": 4}))
    rng = np.random.default_rng(3)
    labels = (rng.uniform(size=(8, data.num_classes)) < 0.3).astype(np.float32)
    np.savez(tmp_path / "n.npz", scores=rng.uniform(size=labels.shape).astype(np.float32), labels=labels)
    args = [f"--predictions={tmp_path / 'n.npz'}", "--topk=1", "--noprogress"]
    with pytest.raises(SystemExit, match="2 class train frequencies for 30 classes"):
        run_in_process(evaluate, [*args, f"--class_stats={tmp_path / 'stats.json'}"])
    with pytest.raises(SystemExit, match="not a tools/dataset_stats.py JSON"):
        run_in_process(evaluate, [*args, f"--class_stats={tmp_path / 'missing.json'}"])
    with pytest.raises(SystemExit, match="--train_prefix counts a split of --data_dir"):
        run_in_process(evaluate, [*args, "--train_prefix=train"])
    frequencies = report_lib.read_class_stats(tmp_path / "stats.json")
    np.testing.assert_allclose(frequencies, [0.25, 0.5])


def test_training_curves_on_demand(tmp_path, capsys):
    def train(step, loss):
        return {
            "kind": "train",
            "step": step,
            "loss": loss,
            "cross_entropy": 0.8 * loss,
            "weight_decay": 0.1,
            "lr": 0.1 if step < 30 else 0.01,
            "images_per_s": 100.0 + step,
        }

    # Steps 10-40 logged, a crash cut the last line; the run resumed from ckpt-20 and logged 30-50 again.
    lines = [train(s, 2.0 / s) for s in (10, 20, 30, 40)]
    lines += [{"kind": "eval", "step": 20, "mAP": 0.3, "f1@5": 0.2, "num_images": 10}]
    text = "".join(json.dumps(line) + "\n" for line in lines) + '{"kind": "train", "st\n'
    lines = [train(s, 3.0 / s) for s in (30, 40, 50)] + [
        {"kind": "eval", "step": 50, "mAP": 0.5, "f1@5": 0.4}
    ]
    text += "".join(json.dumps(line) + "\n" for line in lines)
    (tmp_path / plots.METRICS_FILE).write_text(text)
    by_kind = plots.read_metrics(str(tmp_path))
    assert sorted(by_kind["train"]) == [10, 20, 30, 40, 50] and by_kind["train"][30]["loss"] == 3.0 / 30
    assert sorted(by_kind["eval"]) == [20, 50]
    run_in_process(plot_run, [f"--model_dir={tmp_path}"])
    assert f"wrote {tmp_path / plots.TRAINING_CURVES_FILE}" in capsys.readouterr().out
    assert_picture(tmp_path / plots.TRAINING_CURVES_FILE)
    with pytest.raises(SystemExit, match="has no metrics.jsonl"):
        run_in_process(plot_run, [f"--model_dir={tmp_path / 'nothing'}"])
