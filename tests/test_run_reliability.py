"""The run directory under faults: a second run, a changed configuration, preemption, damaged checkpoints,
another number of ranks, a full disk, and the one-line errors that replace tracebacks (issue #12)."""

import errno
import json
import logging
import os
import pathlib
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest
import tensorflow as tf
from absl import app

from data import fileio
from models import checkpoint_files
from tests import datasets, entry_points, hvd, tiny_runs
from training import checkpoints, cli, evaluation, loop, preemption, recipes, run_dir, train_step
from training import config as config_lib

ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return datasets.multilabel(tmp_path_factory.mktemp("reliability_data"))


def _config(data, model_dir, **overrides):
    """A tiny pre-training run (depth 14, width 4, 32 px, 8 images per step) in `model_dir`, resolved."""
    return config_lib.resolve(tiny_runs.config(data, model_dir, **overrides), num_ranks=1)


_train_args = tiny_runs.train_args
_latest = tiny_runs.latest


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


# ---------------------------------------------------------------------------------------------- 1. the lock


def _hold_lock_in_a_subprocess(model_dir):
    """A process that holds the run directory's lock until killed; returns it once the lock is taken."""
    code = (
        "import sys, time\n"
        "from training import run_dir\n"
        "run_dir.RunLock(sys.argv[1]).acquire()\n"
        "print('locked', flush=True)\n"
        "time.sleep(600)\n"
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code, str(model_dir)],
        cwd=pathlib.Path(__file__).parents[1],
        env=dict(ENV, PYTHONPATH=str(pathlib.Path(__file__).parents[1])),
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_a_second_run_on_the_same_directory_is_refused_naming_the_holder(tmp_path, data):
    model_dir = tmp_path / "run"
    holder = _hold_lock_in_a_subprocess(model_dir)
    try:
        with pytest.raises(run_dir.RunDirError) as info:
            loop.train(_config(data, model_dir))
        message = str(info.value)
        assert f"PID {holder.pid}" in message and f"host {socket.gethostname()}" in message
        assert "\n" not in message
        assert not (model_dir / "config.json").exists()  # refused before touching the directory
    finally:
        holder.kill()
        holder.wait()


def test_the_lock_of_a_killed_run_is_taken_over_with_a_warning(tmp_path, caplog):
    model_dir = tmp_path / "run"
    holder = _hold_lock_in_a_subprocess(model_dir)
    os.kill(holder.pid, signal.SIGKILL)  # kill -9: no clean-up ran, the lock file still names it
    holder.wait()
    assert json.loads((model_dir / ".lock").read_text())["pid"] == holder.pid
    with caplog.at_level(logging.WARNING):
        lock = run_dir.RunLock(str(model_dir)).acquire()
    try:
        assert f"PID {holder.pid}" in caplog.text and "gone" in caplog.text
        assert json.loads((model_dir / ".lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release()
    # Released: the next run takes it without a warning about a previous holder.
    caplog.clear()
    with caplog.at_level(logging.WARNING), run_dir.RunLock(str(model_dir)):
        pass
    assert "taking over" not in caplog.text


def test_a_lock_file_removed_before_its_flock_is_taken_is_opened_anew(tmp_path, monkeypatch):
    """A run that did not start removes its lock file while holding it (`release(discard=True)`); a run
    that had opened that file just before must not hold the removed file while a third run locks a new one."""
    model_dir = tmp_path / "run"
    lock = run_dir.RunLock(str(model_dir)).acquire()
    removed_fd = os.open(lock.path, os.O_RDWR)  # opened by a second run just before the first one gives up
    lock.release(discard=True)
    assert not model_dir.exists()  # the first run left nothing: it created the directory and the file
    second = run_dir.RunLock(str(model_dir))
    opened = []
    real_open = second._open

    def first_the_removed_file():
        opened.append(1)
        return (removed_fd, False) if len(opened) == 1 else real_open()

    monkeypatch.setattr(second, "_open", first_the_removed_file)
    second.acquire()
    try:
        assert len(opened) == 2  # the removed file was let go, the path opened again
        with pytest.raises(run_dir.RunDirError, match="is in use by another run"):
            run_dir.RunLock(str(model_dir)).acquire()  # a third run sees the second one's lock
    finally:
        second.release()


@pytest.mark.parametrize("code", [errno.ENOSYS, errno.ENOLCK])
def test_a_file_system_without_flock_runs_with_one_warning(tmp_path, monkeypatch, caplog, code):
    """Lustre without `-o flock` (ENOSYS), NFS without a lock manager (ENOLCK): the run starts unguarded."""

    def no_flock(fd, operation):
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(fileio.fcntl, "flock", no_flock)  # the lock is data.fileio.DirectoryLock
    model_dir = tmp_path / "run"
    with caplog.at_level(logging.WARNING):
        lock = run_dir.RunLock(str(model_dir)).acquire()
    try:
        warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
        assert len(warnings) == 1 and "mutual exclusion is off" in warnings[0]
        assert "\n" not in warnings[0] and os.strerror(code) in warnings[0]
        assert json.loads((model_dir / ".lock").read_text())["pid"] == os.getpid()
    finally:
        lock.release(discard=True)  # never calls the missing flock to unlock
    assert not model_dir.exists()


def test_train_py_refuses_a_busy_directory_in_one_line(tmp_path, data, capfd):
    model_dir = tmp_path / "run"
    holder = _hold_lock_in_a_subprocess(model_dir)
    try:
        with pytest.raises(SystemExit) as info:
            entry_points.run(_train_args(data, model_dir, "--train_steps=1"))
    finally:
        holder.kill()
        holder.wait()
    message = str(info.value.code)  # what train.py prints as its last line, exiting with status 1
    assert "\n" not in message and "Traceback" not in capfd.readouterr().err
    assert (
        message.startswith(f"train.py: error: {model_dir} is in use by another run")
        and f"PID {holder.pid}" in message
    )


def test_an_unwritable_model_dir_is_one_line(tmp_path, data):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(
        run_dir.RunDirError, match=r"--model_dir .*a_file/run is not writable: Not a directory"
    ):
        loop.train(_config(data, blocker / "run"))


# ------------------------------------------------------------------------------------ 2. the configuration


@pytest.fixture(scope="module")
def finished_run(data, tmp_path_factory):
    """A 4-step run with checkpoints at 2 and 4 (copied by the tests that change it)."""
    model_dir = tmp_path_factory.mktemp("finished") / "run"
    loop.train(_config(data, model_dir))
    return model_dir


def _copy(run, tmp_path):
    target = tmp_path / "run"
    shutil.copytree(run, target)
    return target


@pytest.mark.parametrize(
    ("change", "fields"),
    [
        ({"per_rank_batch": 4}, "schedule.per_rank_batch"),
        ({"image_sizes": ((0, 48),)}, "schedule.image_sizes"),
        ({"task": "softmax"}, "task"),
    ],
)
def test_a_change_that_cannot_resume_is_refused_and_leaves_the_directory_untouched(
    finished_run, tmp_path, data, change, fields
):
    model_dir = _copy(finished_run, tmp_path)
    before = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    config = config_lib.replace(_config(data, model_dir), train_steps=6, **change)
    with pytest.raises(run_dir.RunDirError, match=f"cannot resume under this one: {fields} ") as info:
        loop.train(config)
    assert "\n" not in str(info.value)
    after = {p.name: p.read_bytes() for p in model_dir.iterdir() if p.is_file()}
    assert after == before


def test_a_change_that_can_resume_is_allowed_and_the_original_config_is_kept(finished_run, tmp_path, data):
    model_dir = _copy(finished_run, tmp_path)
    original = json.loads((model_dir / "config.json").read_text())
    config = config_lib.replace(_config(data, model_dir), train_steps=5, log_every=5)
    assert loop.train(config)["step"] == 5
    history = [json.loads(x) for x in (model_dir / "config_history.jsonl").read_text().splitlines()]
    assert history[0]["config"] == original
    assert history[-1]["resumed"] and history[-1]["changed"] == [
        "runtime.model_dir",
        "schedule.log_every",
        "schedule.train_steps",
    ]
    assert json.loads((model_dir / "config.json").read_text())["schedule"]["train_steps"] == 5


def test_another_models_checkpoint_is_named_in_our_words(finished_run, tmp_path, data, caplog):
    model_dir = _copy(finished_run, tmp_path)
    config = config_lib.replace(_config(data, model_dir), base_width=8)
    with pytest.raises(run_dir.RunDirError, match="model.base_width 4 -> 8"):
        loop.train(config)
    # Without its config.json (checkpoints copied in by hand), the checkpoint itself is compared.
    (model_dir / "config.json").unlink()
    (model_dir / "config_history.jsonl").unlink()
    with caplog.at_level(logging.WARNING), pytest.raises(ValueError) as info:
        loop.train(config)
    message = str(info.value)
    assert "holds another model: base_width 4 (this run: 8)" in message
    assert "init_conv/kernel is (7, 7, 3, 4) there, (7, 7, 3, 8) here" in message
    assert "\n" not in message and "Unresolved object" not in caplog.text


@pytest.mark.parametrize("refusal", ["num_classes", "init_checkpoint"])
def test_a_run_refused_before_its_first_step_leaves_the_directory_as_it_was(tmp_path, data, caplog, refusal):
    """A class count the data does not have (in a directory that does not exist yet, nor its parent), or an
    unreadable --init_checkpoint (in an empty directory): one line, nothing left behind (no config.json,
    event files or lock file), and the next run starts without "configuration changed"."""
    if refusal == "num_classes":
        model_dir, bad = tmp_path / "runs" / "run", f"--num_classes={data.num_classes + 1}"
    else:
        model_dir, bad = tmp_path / "run", f"--init_checkpoint={tmp_path / 'missing' / 'model.ckpt'}"
        model_dir.mkdir()
    with pytest.raises(SystemExit) as info:
        entry_points.run(_train_args(data, model_dir, "--train_steps=1", bad))
    assert str(info.value.code).startswith("train.py: error: ") and "\n" not in str(info.value.code)
    assert sorted(p.name for p in tmp_path.iterdir()) == (["run"] if refusal == "init_checkpoint" else [])
    assert not model_dir.exists() or not list(model_dir.iterdir())
    with caplog.at_level(logging.WARNING):
        entry_points.run(_train_args(data, model_dir, "--train_steps=1"))
    assert "configuration changed" not in caplog.text
    history = [json.loads(x) for x in (model_dir / "config_history.jsonl").read_text().splitlines()]
    assert [(h["resumed"], h["changed"]) for h in history] == [(False, [])]


# ------------------------------------------------------------------------------------------ 3. preemption


def test_the_stop_request_records_one_signal_and_leaves_the_second_to_the_default():
    previous = signal.getsignal(signal.SIGTERM)
    with preemption.StopRequest() as stop:
        assert not stop.requested
        os.kill(os.getpid(), signal.SIGINT)
        assert stop.requested and stop.signal_name == "SIGINT"
        assert signal.getsignal(signal.SIGTERM) == signal.getsignal(signal.SIGINT) == signal.SIG_DFL
    assert signal.getsignal(signal.SIGTERM) == previous


def _signal_at_step(monkeypatch, step, signum=signal.SIGTERM):
    """Sends this process `signum` right after the train step that reaches `step` (as SLURM would, mid-run)."""
    original = train_step.TrainStep.__call__

    def call(self, images, labels, **kwargs):
        logs = original(self, images, labels, **kwargs)
        if int(self.global_step.numpy()) == step:
            os.kill(os.getpid(), signum)
        return logs

    monkeypatch.setattr(train_step.TrainStep, "__call__", call)


def test_sigterm_saves_the_current_step_everywhere_and_the_run_resumes_from_it(tmp_path, data, monkeypatch):
    model_dir = tmp_path / "run"
    config = config_lib.replace(_config(data, model_dir), train_steps=6, checkpoint_every=4)
    previous = signal.getsignal(signal.SIGTERM)
    _signal_at_step(monkeypatch, 3)
    with pytest.raises(preemption.Preempted, match=r"stopped by SIGTERM at step 3: saved .*ckpt-3"):
        loop.train(config)
    assert _latest(model_dir) == "ckpt-3"
    meta = checkpoints.read_input_meta(str(model_dir), rank=0, step=3)
    assert (meta.num_ranks, meta.global_batch, meta.phase, meta.elements) == (1, 8, 0, 3 * 8)
    assert signal.getsignal(signal.SIGTERM) == previous  # the handler is only installed while training
    monkeypatch.undo()
    assert loop.train(config)["step"] == 6


@pytest.mark.slow
def test_sigterm_and_resume_equal_an_uninterrupted_run_bit_for_bit(repo_root, tmp_path, data, caplog):
    """The stopped run is a real train.py process that gets SIGTERM; the uninterrupted run and the resume run
    in this process."""
    common = ["--train_steps=30", "--checkpoint_every=20", "--deterministic"]
    entry_points.run(_train_args(data, tmp_path / "straight", *common))
    args = _train_args(data, tmp_path / "stopped", *common)
    proc = subprocess.Popen(
        [sys.executable, "train.py", *args],
        cwd=repo_root,
        env=ENV,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    metrics = tmp_path / "stopped" / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 5):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.05)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=300)
    assert proc.returncode == 0, err[-3000:]
    lines = [x for x in err.splitlines() if x.startswith("preempted:")]
    assert len(lines) == 1 and "stopped by SIGTERM at step" in lines[0] and "Traceback" not in err
    step = int(lines[0].split("at step ")[1].split(":")[0])
    assert 5 <= step < 30 and _latest(tmp_path / "stopped") == f"ckpt-{step}"
    previous = signal.getsignal(signal.SIGTERM)
    with caplog.at_level(logging.INFO, logger="absl"):
        entry_points.run(args)
    assert f"from step {step} to 30" in caplog.text
    a, b = (
        tiny_runs.state(tmp_path / "straight" / "ckpt-30"),
        tiny_runs.state(tmp_path / "stopped" / "ckpt-30"),
    )
    assert any("pos_count" in n for n in a)
    tiny_runs.assert_same_state(a, b)
    # The in-process runs left nothing behind: the signal handler is back, the lock is free.
    assert signal.getsignal(signal.SIGTERM) == previous
    caplog.clear()
    with caplog.at_level(logging.WARNING), run_dir.RunLock(str(tmp_path / "stopped")):
        pass
    assert "taking over" not in caplog.text


def test_a_second_signal_during_the_save_aborts_at_once_leaving_the_previous_checkpoint(
    repo_root, tmp_path, data
):
    model_dir = tmp_path / "run"
    worker = pathlib.Path(__file__).with_name("preemption_worker.py")
    proc = subprocess.run(
        [sys.executable, str(worker), str(data.data_dir), str(data.num_classes), str(model_dir)],
        cwd=repo_root,
        env=dict(ENV, PYTHONPATH=str(repo_root)),
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == -signal.SIGTERM, proc.stderr[-3000:]
    assert "second signal sent during the save of ckpt-5" in proc.stderr
    # The half-written ckpt-5 is not the latest: ckpt-4 is, intact, and a resume continues from it.
    assert (model_dir / "ckpt-5.data-00000-of-00001").exists()
    assert (
        _latest(model_dir) == "ckpt-4"
        and checkpoint_files.checkpoint_problem(str(model_dir / "ckpt-4")) is None
    )
    config = config_lib.replace(_config(data, model_dir), train_steps=6)
    assert loop.train(config)["step"] == 6


# ------------------------------------------------------------------------------------ 4. damaged checkpoints


@pytest.mark.parametrize("damage", ["ckpt-4.data-00000-of-00001", "ckpt-4.index", "input/rank-0/ckpt-4.json"])
def test_a_damaged_latest_checkpoint_falls_back_to_the_newest_intact_one(
    finished_run, tmp_path, data, damage, caplog
):
    model_dir = _copy(finished_run, tmp_path)
    _truncate(model_dir / damage)
    original = (model_dir / damage).read_bytes()
    with caplog.at_level(logging.WARNING):
        result = loop.train(config_lib.replace(_config(data, model_dir), train_steps=5))
    assert "ckpt-4" in caplog.text and "damaged" in caplog.text
    assert result["step"] == 5 and _latest(model_dir) == "ckpt-5"
    # Resumed from ckpt-2: steps 3 and 4 ran again after the first run's 1-4.
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"] == [1, 2, 3, 4, 3, 4, 5]
    # The damaged ckpt-4 was neither used nor deleted: it was moved aside, byte for byte.
    assert (model_dir / "damaged" / damage).read_bytes() == original


@pytest.mark.parametrize("damage", ["ckpt-4.data-00000-of-00001", "ckpt-4.index"])
def test_evaluation_resolves_a_directory_to_its_newest_intact_checkpoint(
    finished_run, tmp_path, damage, caplog
):
    model_dir = _copy(finished_run, tmp_path)
    assert checkpoint_files.resolve_checkpoint(str(model_dir)).endswith("ckpt-4")
    _truncate(model_dir / damage)
    with caplog.at_level(logging.WARNING):
        assert checkpoint_files.resolve_checkpoint(str(model_dir)).endswith("ckpt-2")
    assert "ckpt-4" in caplog.text and (model_dir / damage).exists()
    with pytest.raises(ValueError, match="not a readable checkpoint"):
        checkpoint_files.resolve_checkpoint(str(model_dir / "ckpt-4"))


def test_evaluate_checkpoint_of_a_run_directory_skips_a_damaged_latest_checkpoint(
    finished_run, tmp_path, data, caplog
):
    """evaluate.py --checkpoint=<run dir> evaluates the newest intact checkpoint with a warning, instead of
    failing inside TensorFlow on the damaged latest one."""
    model_dir = _copy(finished_run, tmp_path)
    damaged = model_dir / "ckpt-4.data-00000-of-00001"
    _truncate(damaged)
    config = evaluation.ModelEvalConfig(
        checkpoint=str(model_dir), data_dir=data.data_dir, image_sizes=(32,), batch_size=8, max_batches=1
    )
    with caplog.at_level(logging.WARNING):
        report = evaluation.evaluate_checkpoint(
            config, evaluation.EvalSettings(topk=(1,)), show_progress=False
        )
    assert report["settings"]["checkpoint"] == str(model_dir / "ckpt-2")
    assert "ckpt-4" in caplog.text and "damaged" in caplog.text and damaged.exists()


def test_a_file_that_is_not_a_checkpoint_says_so(tmp_path, data, finished_run):
    notes = tmp_path / "notes.txt"
    notes.write_text("hello")
    with pytest.raises(ValueError, match="notes.txt is not a checkpoint"):
        checkpoint_files.resolve_checkpoint(str(notes))
    with pytest.raises(FileNotFoundError, match="not found"):
        checkpoint_files.resolve_checkpoint(str(tmp_path / "missing"))
    # One of a checkpoint's own files stands for the checkpoint.
    index = finished_run / "ckpt-2.index"
    assert checkpoint_files.resolve_checkpoint(str(index)) == str(finished_run / "ckpt-2")
    config = config_lib.replace(_config(data, tmp_path / "run"), init_checkpoint=str(notes), train_steps=1)
    with pytest.raises(ValueError, match="is not a checkpoint"):
        loop.train(config)


# ------------------------------------------------------------------------------- 5. another number of ranks


def test_a_resume_on_another_number_of_ranks_recounts_the_step_and_restarts_the_input(
    finished_run, tmp_path, data, caplog
):
    """ckpt-4's positions are rewritten as a 2-rank run's (global batch 16): this 1-rank run (8) maps its
    64 images seen to step 8 and restarts the input with a new permutation instead of failing to restore."""
    model_dir = _copy(finished_run, tmp_path)
    meta = json.loads((model_dir / "input" / "rank-0" / "ckpt-4.json").read_text())
    meta.update(num_ranks=2, global_batch=16)
    (model_dir / "input" / "rank-0" / "ckpt-4.json").write_text(json.dumps(meta))
    with caplog.at_level(logging.WARNING):
        result = loop.train(config_lib.replace(_config(data, model_dir), train_steps=10))
    assert result["step"] == 10
    assert "step 4 is step 8 here (the same 64 images seen)" in caplog.text
    assert "new permutation (seed 8)" in caplog.text and "saved by 2 rank(s)" in caplog.text
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if x["kind"] == "train"][-2:] == [9, 10]


def _pids_of_rank(model_dir, rank):
    """PIDs of the horovodrun worker of `rank` running on `model_dir` (found through /proc)."""
    found = []
    for entry in pathlib.Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            cmdline = (entry / "cmdline").read_bytes().split(b"\0")
            environ = (entry / "environ").read_bytes().split(b"\0")
        except OSError:
            continue
        if f"--model_dir={model_dir}".encode() in cmdline and f"HOROVOD_RANK={rank}".encode() in environ:
            found.append(int(entry.name))
    return found


@pytest.mark.slow
@pytest.mark.horovod
def test_two_ranks_stop_together_on_one_ranks_sigterm_and_resume_on_one(
    repo_root, tmp_path, data, caplog, capfd
):
    exe = hvd.require_horovodrun()
    model_dir = tmp_path / "run"
    args = _train_args(data, model_dir, "--train_steps=40", "--checkpoint_every=20", "--per_rank_batch=4")
    cmd = [exe, "--gloo", "-np", "2", "-H", "localhost:2", sys.executable, "train.py", *args]
    proc = subprocess.Popen(
        cmd, cwd=repo_root, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    metrics = model_dir / "metrics.jsonl"
    deadline = time.time() + 600
    while not (metrics.exists() and len(metrics.read_text().splitlines()) >= 3):
        assert proc.poll() is None and time.time() < deadline
        time.sleep(0.1)
    (rank1,) = _pids_of_rank(model_dir, 1)
    os.kill(rank1, signal.SIGTERM)  # only rank 1: rank 0 must stop at the same step
    out, _ = proc.communicate(timeout=600)
    assert proc.returncode == 0, out[-5000:]
    step = checkpoints.latest_step(str(model_dir))
    assert 3 <= step < 40 and step % preemption.HOROVOD_CHECK_EVERY == 0  # agreed at a check step
    for rank in (0, 1):
        meta = checkpoints.read_input_meta(str(model_dir), rank=rank, step=step)
        assert (meta.num_ranks, meta.global_batch) == (2, 8)
    # The same command on one process (this one): global batch 4, the step re-counted, the input restarted.
    with caplog.at_level(logging.INFO, logger="absl"):
        single = entry_points.run(args)
    logged = caplog.text + capfd.readouterr().err  # our log lines, and what TensorFlow wrote to stderr
    assert "cycle" not in logged and f"step {step} is step {2 * step} here" in logged
    assert "new permutation" in logged
    assert json.loads(single.strip().splitlines()[-1])["final"]["step"] == 40


# ------------------------------------------------------------------------------- faults as one-line errors


def test_a_full_disk_during_a_save_keeps_the_previous_checkpoint(tmp_path, data, monkeypatch):
    model_dir = tmp_path / "run"
    original = tf.train.CheckpointManager.save

    def save(self, checkpoint_number=None, **kwargs):
        if checkpoint_number == 4:  # half of the data written, then the disk is full
            (model_dir / "ckpt-4_temp").mkdir()
            (model_dir / "ckpt-4_temp" / "part-00000-of-00001.data-00000-of-00001").write_bytes(b"x" * 100)
            (model_dir / "ckpt-4.data-00000-of-00001").write_bytes(b"x" * 100)
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return original(self, checkpoint_number=checkpoint_number, **kwargs)

    monkeypatch.setattr(tf.train.CheckpointManager, "save", save)
    with pytest.raises(checkpoints.CheckpointWriteError) as info:
        loop.train(_config(data, model_dir))
    message = str(info.value)
    assert "cannot write ckpt-4" in message and "no space left on device" in message
    assert "latest checkpoint stays ckpt-2" in message and "\n" not in message
    assert _latest(model_dir) == "ckpt-2"
    assert not list(model_dir.glob("ckpt-4*"))


def test_nan_labels_are_blamed_on_the_data_not_the_learning_rate(tmp_path, data, monkeypatch):
    phase_dataset = loop._phase_dataset

    def with_nan_labels(run, phase, start=0):
        def poison(index, batch):
            images, labels = batch
            bad = tf.where(index == 2, tf.fill(tf.shape(labels), float("nan")), labels)
            return images, bad

        return phase_dataset(run, phase, start).enumerate().map(poison)

    monkeypatch.setattr(loop, "_phase_dataset", with_nan_labels)
    with pytest.raises(train_step.NonFiniteLossError) as info:
        loop.train(_config(data, tmp_path / "run"))
    message = str(info.value)
    assert "labels of the batch of step 2" in message and "not the learning rate" in message
    assert "Lower the learning rate" not in message and "ckpt-2" in message


@pytest.mark.parametrize(
    ("value", "sizes"), [("0", ((0, 0),)), ("16", ((0, 16),)), ("224,8@100", ((0, 224), (100, 8)))]
)
def test_too_small_image_sizes_name_the_minimum(value, sizes):
    with pytest.raises(app.UsageError, match=f"the minimum is {config_lib.MIN_IMAGE_SIZE}"):
        cli.parse_image_sizes(value.split(","))
    with pytest.raises(ValueError, match="image sizes must be >= 32"):
        config_lib.validate(config_lib.replace(recipes.PRETRAIN, image_sizes=sizes))


def test_the_config_check_reads_the_history_when_config_json_is_damaged(tmp_path, data):
    model_dir = tmp_path / "run"
    model_dir.mkdir()
    run_dir.check_config(_config(data, model_dir), resuming=False).write()
    _truncate(model_dir / "config.json")
    smaller = config_lib.replace(_config(data, model_dir), per_rank_batch=4)
    with pytest.raises(run_dir.RunDirError, match="per_rank_batch 8 -> 4"):
        run_dir.check_config(smaller, resuming=True)


def test_on_another_number_of_ranks_only_what_resolve_cannot_change_is_compared(data):
    two = json.loads(config_lib.resolve(_config(data, "run"), num_ranks=2).to_json())
    one = json.loads(_config(data, "run").to_json())
    assert (two["schedule"]["num_ranks"], two["schedule"]["global_batch"]) == (2, 16)
    refused, allowed = run_dir.config_changes(two, one)
    assert refused == [] and "schedule.num_ranks" in allowed
    bigger = json.loads(config_lib.replace(_config(data, "run"), image_sizes=((0, 48),)).to_json())
    assert run_dir.config_changes(two, bigger)[0] == ["schedule.image_sizes"]
