"""Paths as users type them: a run directory given relative, with `~`, a trailing slash or through a symlink
is the same run for resume, `--init_checkpoint`, evaluate, the tools and `models.pretrained.load`; only a
checkpoint that really is damaged is reported so.

The README's own lines use a relative `--model_dir=demo_run`; a run directory joined twice
(`demo_run/demo_run/ckpt-4`) made every checkpoint look damaged. These tests run from inside a temporary
working directory (`monkeypatch.chdir`), as a user's shell does.
"""

import json
import os

import pytest

import evaluate
from data import fileio
from models import architecture, checkpoint_files, pretrained
from tests import datasets, entry_points, scripts, tiny_runs


@pytest.fixture(scope="module")
def multilabel_data(tmp_path_factory):
    return datasets.multilabel(tmp_path_factory.mktemp("multilabel"))


@pytest.fixture(scope="module")
def relative_run(tmp_path_factory, multilabel_data):
    """A tiny run trained with `--model_dir=run` from its parent folder; returns that folder."""
    cwd = tmp_path_factory.mktemp("cwd")
    here = os.getcwd()
    os.chdir(cwd)
    try:
        entry_points.run(tiny_runs.train_args(multilabel_data, "run", "--train_steps=4"))
    finally:
        os.chdir(here)
    return cwd


def test_user_path_forms():
    home = os.path.expanduser("~")
    assert fileio.user_path("~/x") == os.path.join(home, "x")
    assert fileio.user_path("run/") == os.path.join(os.getcwd(), "run")
    assert fileio.user_path("./run//") == os.path.join(os.getcwd(), "run")
    assert fileio.user_path("gs://bucket/run") == "gs://bucket/run"


def test_every_spelling_of_a_run_directory_resolves_to_its_latest_checkpoint(relative_run, monkeypatch):
    monkeypatch.chdir(relative_run)
    monkeypatch.setenv("HOME", str(relative_run))
    os.symlink("run", "link")
    latest = os.path.join(relative_run, "run", "ckpt-4")
    for spelling in ("run", "run/", "./run", str(relative_run / "run"), "~/run", "~/run/", "link", "link/"):
        prefix = checkpoint_files.resolve_checkpoint(spelling)
        assert os.path.realpath(prefix) == os.path.realpath(latest), spelling
        assert architecture.checkpoint_architecture(spelling)["depth"] == 14
    for spelling in ("run/ckpt-4", "~/run/ckpt-4", "run/ckpt-4.index", "link/ckpt-4"):
        assert os.path.realpath(checkpoint_files.resolve_checkpoint(spelling)) == os.path.realpath(latest)
    model = pretrained.load("run", activation="logits")
    assert model.output_shape[-1] == 30


def test_a_relative_model_dir_resumes(relative_run, multilabel_data, monkeypatch, caplog):
    """The same command again with more steps continues from ckpt-4 (and warns of no damaged checkpoint)."""
    monkeypatch.chdir(relative_run)
    out = entry_points.run(tiny_runs.train_args(multilabel_data, "run/", "--train_steps=6"))
    assert '"step": 6' in out
    assert "damaged" not in caplog.text
    assert os.path.exists("run/ckpt-6.index")
    assert not os.path.exists("run/run")


def test_init_checkpoint_and_evaluate_take_a_relative_run(relative_run, multilabel_data, monkeypatch):
    monkeypatch.chdir(relative_run)
    out = entry_points.run(
        tiny_runs.train_args(multilabel_data, "from_init", "--train_steps=2", "--init_checkpoint=run")
    )
    assert '"step": 2' in out
    scripts.run_in_process(
        evaluate,
        [
            "--topk=5,10",
            "--checkpoint=run",
            f"--data_dir={os.path.relpath(multilabel_data.data_dir)}",
            "--image_size=32",
            "--output_json=eval.json",
        ],
    )
    result = fileio.read_json("eval.json")
    assert result is not None and "checkpoint" in json.dumps(result)


def test_a_really_damaged_checkpoint_is_still_reported(relative_run, monkeypatch):
    monkeypatch.chdir(relative_run)
    os.makedirs("broken")
    with open("broken/ckpt-1.index", "wb") as f:
        f.write(b"not an index")
    with pytest.raises(checkpoint_files.UnusableCheckpointError, match="broken/ckpt-1"):
        checkpoint_files.resolve_checkpoint("broken/ckpt-1")
