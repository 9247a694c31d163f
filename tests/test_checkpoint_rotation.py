"""Part of issue #23: readers of a run directory race the run's checkpoint rotation, and win.

A run that saves every step with `keep_checkpoints=2` deletes a checkpoint two saves after writing it. Every
reader (evaluate.py, the tools, export, `load`) goes through `models.pretrained.load_model`: it takes the
newest complete checkpoint and, when the run deletes it while it is checked or read, the newest again.
The race is made deterministic by saving two more checkpoints between the reader's resolve and its read;
one test then lets a writer thread save every "step" while the reader loads. Also `--eval_every=0`: the
demo's report says "not evaluated" instead of failing on the missing evaluation (and the run ends with its
training curves drawn, training/plots.py).
"""

import logging
import threading

import numpy as np
import pytest
import tensorflow as tf

from models import architecture, checkpoint_files, pretrained, resnet
from tests import datasets, tiny_runs
from tests.test_pictures import assert_picture
from training import config as config_lib
from training import demo, distributed, plots

NUM_CLASSES = 5
KEEP = 2  # the run's keep_checkpoints
# The writer thread's "training step" between saves. Not a timing assertion: a load succeeds when one of
# its MAX_ROTATIONS attempts reads a checkpoint within two saves (a tiny model's read takes about 0.15 s,
# its save 0.2 s, on 2 cores); the pause keeps that so when other processes load the machine.
STEP_SECONDS = 0.3


class Run:
    """A run directory written as training writes it (`tf.train.CheckpointManager`, max_to_keep=2) whose
    checkpoint `ckpt-N` holds a model whose head bias is N everywhere, so a loaded model names its step."""

    def __init__(self, model_dir):
        self.model = resnet.build_resnet(14, NUM_CLASSES, base_width=2)
        self.step = tf.Variable(0, dtype=tf.int64)
        checkpoint = tf.train.Checkpoint(model=self.model, global_step=self.step)
        self.manager = tf.train.CheckpointManager(
            checkpoint, str(model_dir), max_to_keep=KEEP, checkpoint_name="ckpt"
        )
        self.model_dir = model_dir

    def save(self) -> int:
        self.step.assign_add(1)
        self.model.get_layer(resnet.LOGITS_LAYER).bias.assign(
            tf.fill([NUM_CLASSES], float(self.step.numpy()))
        )
        self.manager.save(checkpoint_number=int(self.step.numpy()))
        return int(self.step.numpy())


def step_of(model) -> int:
    bias = model.get_layer(resnet.LOGITS_LAYER).bias.numpy()
    assert np.all(bias == bias[0])
    return int(bias[0])


@pytest.fixture
def run(tmp_path):
    run = Run(tmp_path / "run")
    for _ in range(3):
        run.save()
    return run


def test_a_checkpoint_deleted_between_resolve_and_read_gives_the_newest(run, monkeypatch, caplog):
    """The reader resolved ckpt-3; before it reads the weights the run saves ckpt-4 and ckpt-5, deleting
    ckpt-3 (the reader would fail with "Failed to find any matching files")."""
    build = resnet.build_resnet
    saved = []

    def build_then_rotate(*args, **kwargs):
        if not saved:
            saved.extend(run.save() for _ in range(KEEP))
        return build(*args, **kwargs)

    monkeypatch.setattr(resnet, "build_resnet", build_then_rotate)
    with caplog.at_level(logging.WARNING, logger="absl"):
        model, info = pretrained.load_model(str(run.model_dir))
    assert saved == [4, 5] and not (run.model_dir / "ckpt-3.index").exists()
    assert info.path == str(run.model_dir / "ckpt-5") and step_of(model) == 5
    assert "ckpt-3 was deleted by its run while it was read" in caplog.text


def test_a_checkpoint_deleted_while_checked_is_not_called_damaged(run, monkeypatch, caplog):
    """The state file listed ckpt-3 as the newest; the run deletes it before its integrity check."""
    check = checkpoint_files.checkpoint_problem
    saved = []

    def rotate_then_check(prefix):
        if not saved:
            saved.extend(run.save() for _ in range(KEEP))
        return check(prefix)

    monkeypatch.setattr(checkpoint_files, "checkpoint_problem", rotate_then_check)
    with caplog.at_level(logging.WARNING, logger="absl"):
        assert checkpoint_files.resolve_checkpoint(str(run.model_dir)) == str(run.model_dir / "ckpt-5")
    assert "damaged" not in caplog.text


def test_a_prefix_deleted_while_read_is_an_error_not_another_checkpoint(run, monkeypatch):
    """Given a prefix (not the run directory) the reader asked for that checkpoint: no substitute."""
    build = resnet.build_resnet

    def build_then_rotate(*args, **kwargs):
        for _ in range(KEEP):
            run.save()
        return build(*args, **kwargs)

    monkeypatch.setattr(resnet, "build_resnet", build_then_rotate)
    with pytest.raises(checkpoint_files.CheckpointError, match="ckpt-3"):
        pretrained.load_model(str(run.model_dir / "ckpt-3"))


def test_a_run_that_always_rotates_first_is_a_one_line_error(run, monkeypatch):
    contract = architecture.checkpoint_contract

    def rotate_after_inspecting(*args, **kwargs):  # between the architecture's read and the weights'
        for _ in range(KEEP):
            run.save()
        return contract(*args, **kwargs)

    monkeypatch.setattr(architecture, "checkpoint_contract", rotate_after_inspecting)
    monkeypatch.setattr(checkpoint_files, "MAX_ROTATIONS", 3)
    with pytest.raises(checkpoint_files.UnusableCheckpointError, match="deleted 3 times while being read"):
        pretrained.load_model(str(run.model_dir))


def test_readers_while_a_run_saves_every_step(run):
    """A writer thread saves every "step" (keep 2) while the reader loads the run again and again, until
    the run has saved 6 more checkpoints: every one the reader saw at its first load was deleted meanwhile,
    and every load returned a complete checkpoint, never an older one than the load before."""
    done = threading.Event()
    errors = []

    def writer():
        try:
            while not done.wait(STEP_SECONDS):  # a training step between saves
                run.save()
        except Exception as e:  # noqa: BLE001 -- reported by the test
            errors.append(e)

    first = int(run.step.numpy())
    thread = threading.Thread(target=writer)
    thread.start()
    steps = []
    try:
        while int(run.step.numpy()) < first + 6 and thread.is_alive():
            steps.append(step_of(pretrained.load_model(str(run.model_dir))[0]))
    finally:
        done.set()
        thread.join()
    assert not errors
    assert len(steps) >= 2 and steps == sorted(steps) and steps[-1] > steps[0]


@pytest.mark.slow  # a real (tiny) demo run: about 30 s on 2 cores
def test_eval_every_0_means_no_evaluation(tmp_path, monkeypatch, capsys):
    """`train.py --recipe=demo --eval_every=0` used to train, save, then end with KeyError: 'eval'."""
    data = datasets.multilabel(tmp_path / "data", num_train=16, num_val=8)
    config = config_lib.replace(
        tiny_runs.config(data, tmp_path / "run", train_steps=2, eval_every=0),
        recipe="demo",
        topk=(1, 3),
    )
    monkeypatch.setattr(demo, "prepare", lambda config, dist: config)  # the small set instead of the demo's
    summary = demo.run(config, dist=distributed.Distributed())
    assert summary == {"steps": 2, "final_loss": pytest.approx(summary["final_loss"]), "validation": None}
    assert "not evaluated (--eval_every=0)" in capsys.readouterr().out
    kinds = {line.split('"kind": "')[1].split('"')[0] for line in (tmp_path / "run" / "metrics.jsonl").open()}
    assert kinds == {"train"}  # no evaluation ran
    assert_picture(tmp_path / "run" / plots.TRAINING_CURVES_FILE)  # drawn at the end of the run
