"""The demo recipe's guards (training/demo.py): it never writes into a --data_dir it did not create, and a
--num_classes that disagrees with the demo's 30 classes is a one-line error, not silently replaced."""

import dataclasses
import os
import subprocess
import sys

import pytest

from data.synthetic import demo_scenes
from training import config as config_lib
from training import demo, distributed, recipes


def _config(tmp_path, *, data_dir=None, num_classes=0):
    config = recipes.get("demo")
    return config_lib.replace(
        config,
        model_dir=str(tmp_path / "run"),
        model=dataclasses.replace(config.model, num_classes=num_classes),
        data=dataclasses.replace(config.data, data_dir=str(data_dir) if data_dir else None),
    )


class _CountingDist(distributed.Distributed):
    """One process that records the barriers it passes."""

    def __init__(self):
        self.barriers = 0

    def barrier(self) -> None:
        self.barriers += 1


def test_a_user_folder_is_refused_before_anything_is_written(tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    dist = _CountingDist()
    with pytest.raises(ValueError, match="not a demo set"):
        demo.prepare(_config(tmp_path, data_dir=mine), dist)
    assert os.listdir(mine) == ["notes.txt"]
    assert dist.barriers == 0  # refused on every rank before the first barrier: no rank is left waiting


@pytest.mark.parametrize("num_classes", [4, 11166])
def test_num_classes_other_than_the_demos_is_an_error(tmp_path, num_classes):
    with pytest.raises(ValueError, match=f"--num_classes={num_classes} disagrees .* 30 classes"):
        demo.check_config(_config(tmp_path, num_classes=num_classes))
    assert not (tmp_path / "run").exists()


def test_the_default_folder_and_the_matching_num_classes_are_accepted(tmp_path):
    assert demo.check_config(_config(tmp_path)) == str(tmp_path / "run" / "data")
    empty = tmp_path / "empty"
    empty.mkdir()
    config = _config(tmp_path, data_dir=empty, num_classes=demo_scenes.NUM_CLASSES)
    assert demo.check_config(config) == str(empty)


def test_train_py_refuses_a_user_data_dir_in_one_line(repo_root, tmp_path):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "photo.jpg").write_bytes(b"x")
    proc = subprocess.run(
        [
            sys.executable,
            "train.py",
            "--recipe=demo",
            f"--data_dir={mine}",
            f"--model_dir={tmp_path / 'run'}",
        ],
        cwd=repo_root,
        capture_output=True,
        text=True,
        env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"),
        timeout=300,
    )
    assert proc.returncode != 0
    errors = [line for line in proc.stderr.splitlines() if line.startswith("train.py: error:")]
    assert len(errors) == 1 and "not a demo set" in errors[0], proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr
    assert os.listdir(mine) == ["photo.jpg"]
