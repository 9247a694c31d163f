"""The inference tools' progress bar: it counts every file (skipped ones too); `--noprogress` hides it."""

import re

import pytest
import tensorflow as tf

from tests.test_evaluate import tiny_model, write_jpegs
from tests.test_inference_tools import run_tool
from tools import extract_feature, image_classification

SIZE = 32


@pytest.fixture(scope="module")
def model():
    return tiny_model(5, seed=1)


@pytest.fixture
def paths(tmp_path):
    names = write_jpegs(tmp_path, 3)
    # The missing file comes last, after the last batch: the bar must still reach the total.
    return [str(tmp_path / n) for n in names] + [str(tmp_path / "missing.jpg")]


def _final_count(stderr: str) -> str:
    counts = re.findall(r"(\d+/\d+) \[", stderr)
    assert counts, stderr
    return counts[-1]


@pytest.mark.parametrize(
    "run",
    [
        lambda m, p, **kw: image_classification.classify(
            m, p, head="sigmoid", topk=2, image_size=SIZE, batch_size=2, **kw
        ),
        lambda m, p, **kw: extract_feature.extract_features(m, p, image_size=SIZE, batch_size=2, **kw),
    ],
    ids=["image_classification", "extract_feature"],
)
def test_progress_bar_counts_every_file(model, paths, capsys, run):
    run(model, paths, show_progress=True)
    stderr = capsys.readouterr().err
    assert _final_count(stderr) == "4/4" and "img" in stderr
    run(model, paths)
    assert "4/4" not in capsys.readouterr().err


def test_command_lines_show_the_bar_unless_noprogress(model, paths, tmp_path):
    prefix = tf.train.Checkpoint(model=model).write(str(tmp_path / "ckpt" / "ckpt-1"))
    common = [f"--checkpoint={prefix}", f"--image_size={SIZE}", "--batch_size=2", *paths]
    _, shown, _ = run_tool("extract_feature", f"--output={tmp_path / 'f.npz'}", *common)
    assert _final_count(shown) == "4/4"
    _, hidden, _ = run_tool("image_classification", "--noprogress", *common)
    assert "4/4" not in hidden and "skipped 1 of 4" in hidden
