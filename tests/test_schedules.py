"""Learning-rate schedules against (step, lr) tables, recipes, scaling, and the entry scripts' --dry_run."""

import json
import math
import subprocess
import sys

import keras
import pytest
import tensorflow as tf
from absl import app, flags

from tests import entry_points
from training import config as config_lib
from training import recipes, schedules

# docs/REFERENCE.md section 4; warm-up values are 0.01 x 1.297^floor(step / 4400).
PRETRAIN_TABLE = [
    (0, 0.01),
    (4399, 0.01),
    (4400, 0.01297),
    (8800, 0.01 * 1.297**2),
    (35199, 0.01 * 1.297**7),
    (35200, 0.08),
    (110000, 0.08),
    (110001, 0.008),
    (220000, 0.008),
    (220001, 0.0008),
    (330001, 8e-5),
    (440000, 8e-5),
    (440001, 8e-6),
]
STAIRCASE_TABLE = [(0, 0.1), (149999, 0.1), (150000, 0.01), (299999, 0.01), (300000, 0.001), (599999, 1e-4)]
COSINE_TABLE = [(0, 0.0), (2500, 0.05), (5000, 0.1), (302500, 0.05), (600000, 0.0)]


def _check(schedule, table):
    for step, lr in table:
        assert schedule(step) == pytest.approx(lr, rel=1e-9, abs=1e-12), step
        # The tensor path (used inside the train step) gives the same value.
        assert float(schedule(tf.constant(step, tf.int64))) == pytest.approx(lr, rel=1e-9, abs=1e-12), step


def test_reference_pretrain_schedule():
    _check(recipes.PRETRAIN.schedule.learning_rate, PRETRAIN_TABLE)
    assert 0.0617 < recipes.PRETRAIN.schedule.learning_rate(35199) < 0.0618  # the ~0.06174 before the jump


@pytest.mark.parametrize("name", ["ckpt2", "ckpt3", "ckpt4", "ckpt1"])
def test_released_finetune_schedule(name):
    _check(recipes.get(name).schedule.learning_rate, STAIRCASE_TABLE)


def test_ckpt5_warmup_cosine():
    _check(recipes.get("ckpt5").schedule.learning_rate, COSINE_TABLE)


RECIPE_TABLES = [("pretrain_mlimages", PRETRAIN_TABLE), ("ckpt2", STAIRCASE_TABLE), ("ckpt5", COSINE_TABLE)]


@pytest.mark.parametrize(("name", "table"), RECIPE_TABLES)
def test_the_same_formula_runs_compiled_with_a_step_variable(name, table):
    """As in the train step: a tf.function (XLA) reading an int64 step variable gives the table's values."""
    schedule = recipes.get(name).schedule.learning_rate
    step = tf.Variable(0, dtype=tf.int64)
    compiled = tf.function(lambda: schedule(step), jit_compile=True)
    for s, lr in table:
        step.assign(s)
        value = compiled()
        assert value.dtype == tf.float64
        assert float(value) == pytest.approx(lr, rel=1e-9, abs=1e-12), s


@pytest.mark.parametrize(("name", "table"), RECIPE_TABLES)
def test_python_steps_give_python_floats_identical_to_the_tensor_path(name, table):
    schedule = recipes.get(name).schedule.learning_rate
    for s, _ in table:
        value = schedule(s)
        assert type(value) is float and value == float(schedule(tf.constant(s, tf.int64))), s


@pytest.mark.parametrize("name", ["pretrain_mlimages", "ckpt2", "ckpt5", "demo"])
def test_schedules_are_keras_learning_rate_schedules(name):
    schedule = recipes.get(name).schedule.learning_rate
    assert isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule)
    # Keras' own serialisation, through JSON, gives back an equal (and hashable) schedule.
    restored = keras.optimizers.schedules.deserialize(
        json.loads(json.dumps(keras.optimizers.schedules.serialize(schedule)))
    )
    assert type(restored) is type(schedule) and restored == schedule and hash(restored) == hash(schedule)
    assert type(schedule).from_config(json.loads(json.dumps(schedule.get_config()))) == schedule
    # A Keras optimizer evaluates it at its own iteration count.
    optimizer = keras.optimizers.SGD(learning_rate=schedule, momentum=0.9)
    optimizer.iterations.assign(4400)
    assert float(optimizer.learning_rate) == pytest.approx(float(schedule(4400)), rel=1e-6)


def test_config_json_keeps_the_schedule_fields():
    """config.json of a run stores the schedule as its kind and fields, as before it was a Keras object."""
    stored = json.loads(recipes.PRETRAIN.to_json())["schedule"]["learning_rate"]
    assert stored == {
        "kind": "ReferencePretrainSchedule",
        "warmup_lr": 0.01,
        "warmup_factor": 1.297,
        "warmup_every": 4400,
        "warmup_steps": 35200,
        "boundaries": [110000, 220000, 330000, 440000],
        "values": [0.08, 0.008, 0.0008, 8e-5, 8e-6],
    }
    kind = stored.pop("kind")
    assert getattr(schedules, kind).from_config(stored) == recipes.PRETRAIN.schedule.learning_rate


def test_demo_schedule_is_the_reference_shape_compressed():
    s = recipes.DEMO.schedule.learning_rate
    assert (s.warmup_every, s.warmup_steps, s.boundaries) == (30, 240, (750, 1500, 2250, 3000))
    _check(s, [(0, 0.01), (30, 0.01297), (239, 0.01 * 1.297**7), (240, 0.08), (750, 0.08), (751, 0.008)])


@pytest.mark.parametrize(
    ("name", "table"),
    [
        ("ckpt2", [(0, 224), (599999, 224)]),
        ("ckpt3", [(0, 224), (299999, 224), (300000, 299), (599999, 299)]),
        ("ckpt4", [(0, 299)]),
        ("ckpt5", [(0, 224), (399999, 224), (400000, 299)]),
    ],
)
def test_image_size_switch(name, table):
    config = recipes.get(name)
    for step, size in table:
        assert config.image_size_at(step) == size


def test_provenance_says_what_is_reconstructed():
    for name in ("ckpt1", "ckpt3", "ckpt4", "ckpt5"):
        assert "RECONSTRUCTED" in recipes.get(name).provenance, name
    assert recipes.get("ckpt2").provenance.startswith("Published")
    assert recipes.PRETRAIN.provenance.startswith("Published")
    with pytest.raises(ValueError, match="known: ckpt1"):
        recipes.get("ckpt9")


def test_resolve_keeps_the_reference_at_its_batch_and_scales_linearly_otherwise():
    at_ref = config_lib.resolve(recipes.PRETRAIN, num_ranks=128)
    assert (
        at_ref.schedule.learning_rate == recipes.PRETRAIN.schedule.learning_rate
        and at_ref.schedule.train_steps == 440000
    )
    on8 = config_lib.resolve(recipes.PRETRAIN, num_ranks=8)  # global 256 = reference / 16
    assert on8.global_batch == 256
    s = on8.schedule
    assert s.train_steps == 440000 * 16 and s.checkpoint_every == 4400 * 16
    assert s.log_every == 100 * 16 and s.eval_every == 0  # no periodic evaluation stays none
    assert s.learning_rate(0) == pytest.approx(0.01 / 16)
    assert s.learning_rate(35200 * 16) == pytest.approx(0.08 / 16)
    assert s.learning_rate(110000 * 16) == pytest.approx(0.08 / 16)
    assert s.learning_rate(110000 * 16 + 1) == pytest.approx(0.008 / 16)
    ckpt3 = config_lib.resolve(recipes.get("ckpt3"), num_ranks=8).schedule  # 512 = 2 x the reference 256
    assert ckpt3.image_sizes == ((0, 224), (150000, 299)) and ckpt3.learning_rate(75000) == pytest.approx(
        0.02
    )
    with pytest.raises(ValueError):
        config_lib.resolve(recipes.PRETRAIN, num_ranks=0)


def test_validate_names_the_problem():

    bad = config_lib.replace(recipes.PRETRAIN, per_rank_batch=30, accum_steps=4, precision="fp8")
    with pytest.raises(ValueError, match="precision.*accum_steps|accum_steps.*precision"):
        config_lib.validate(bad)
    with pytest.raises(ValueError, match="intra_op_threads must be >= 0, got -1"):
        config_lib.validate(config_lib.replace(recipes.PRETRAIN, intra_op_threads=-1))


def _dry_run(*args, finetune=False):
    """`train.py --dry_run *args` (or finetune.py) in this process: exactly one JSON object on stdout."""
    return json.loads(entry_points.run(["--dry_run", *args], finetune=finetune))


def test_train_dry_run_prints_the_reference_values():
    report = _dry_run("--simulate_workers=128", "--lr_probe_steps=0,4399,4400,35199,35200,110000,110001")
    assert report["lr"] == {
        "0": 0.01,
        "4399": 0.01,
        "4400": 0.01297,
        "35199": 0.0617418776198,
        "35200": 0.08,
        "110000": 0.08,
        "110001": 0.008,
    }
    schedule, loss = report["schedule"], report["loss"]
    assert schedule["global_batch"] == 4096 and schedule["num_ranks"] == 128
    assert (report["model"]["depth"], report["model"]["num_classes"]) == (101, 11166)
    assert (loss["mask_thres"], loss["neg_select"], schedule["checkpoint_every"]) == (0.7, 0.1, 4400)
    assert schedule["image_sizes"] == [[0, 224]] and schedule["per_rank_batch"] == 32
    # The probed value is the float32 the optimizer receives.
    assert math.isclose(report["lr"]["35199"], 0.01 * 1.297**7, rel_tol=1e-11)


def test_dry_run_prints_a_key_per_line_and_the_probes_in_step_order():
    text = entry_points.run(["--dry_run", "--lr_probe_steps=110001,4400,0,35200,4399"])
    report = json.loads(text)  # one JSON object, whose text keeps its key order
    assert list(report["lr"]) == ["0", "4399", "4400", "35200", "110001"]
    assert list(report) == sorted(report) and list(report["model"]) == sorted(report["model"])
    lines = text.splitlines()
    assert len(lines) > len(report) and '  "lr": {' in lines
    start = lines.index('  "lr": {') + 1
    assert [line.split(":")[0] for line in lines[start : start + 5]] == [
        f'    "{step}"' for step in (0, 4399, 4400, 35200, 110001)
    ]
    assert '    "image_sizes": [[0, 224]],' in lines  # short lists stay on their line


def test_log_checkpoint_and_eval_intervals_scale_alike_and_flags_are_as_run():
    """The demo recipe (batch 32: log 250, save 500, evaluate 1000) on 2 ranks logs, saves and evaluates
    after the same images as on one: every 125, 250 and 500 steps, so a 200-step run logs twice; a value
    typed on the command line is the interval as run, for all three alike."""
    one = _dry_run("--recipe=demo", "--train_steps=200")
    two = _dry_run("--recipe=demo", "--simulate_workers=2", "--train_steps=200")
    every = ("log_every", "checkpoint_every", "eval_every")
    one, two = one["schedule"], two["schedule"]
    assert [one[k] for k in every] == [250, 500, 1000] and [two[k] for k in every] == [125, 250, 500]
    given = ["--log_every=7", "--checkpoint_every=11", "--eval_every=13"]
    for workers in ("1", "2", "8"):
        report = _dry_run("--recipe=demo", f"--simulate_workers={workers}", *given)
        assert [report["schedule"][k] for k in every] == [7, 11, 13]
    help_text = entry_points.parsed_flags([], finetune=False)["log_every"].help
    assert "as run" in help_text and "scaled like --checkpoint_every" in help_text


def test_finetune_dry_run_probes_lr_and_image_size():
    report = _dry_run(
        "--ckpt=ckpt3", "--simulate_workers=4", "--lr_probe_steps=0,150000,300000", finetune=True
    )
    assert report["recipe"] == "ckpt3" and report["schedule"]["global_batch"] == 256
    assert report["model"]["frozen_stages"] == 2
    assert report["lr"] == {"0": 0.1, "150000": 0.01, "300000": 0.001}
    assert report["image_size"] == {"0": 224, "150000": 224, "300000": 299}
    assert "RECONSTRUCTED" in report["provenance"]


def test_dry_run_overrides_and_bad_flags():
    report = _dry_run("--per_rank_batch=8", "--noscale_schedule", "--train_steps=7", "--image_sizes=32,48@4")
    schedule = report["schedule"]
    assert schedule["train_steps"] == 7 and schedule["image_sizes"] == [[0, 32], [4, 48]]
    assert schedule["learning_rate"]["values"][0] == 0.08  # not rescaled to the batch of 8
    with pytest.raises(flags.UnrecognizedFlagError, match="no_such_flag"):
        _dry_run("--no_such_flag=1")


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--per_rank_batch=30", "--accum_steps=4"], "not a multiple of accum_steps"),
        (["--lr_probe_steps=1,x"], "non-negative integers"),
    ],
)
def test_bad_flag_values_are_usage_errors(args, message):
    with pytest.raises(app.UsageError, match=message) as info:
        _dry_run(*args)
    assert "\n" not in str(info.value)  # one line under absl's usage text


def test_a_bad_flag_value_is_a_one_line_usage_error_in_the_shell(repo_root):
    """The same refusal as a shell sees it: app.run prints the usage error, no traceback, exit status 1."""
    proc = subprocess.run(
        [sys.executable, str(repo_root / "train.py"), "--dry_run", "--image_sizes=224,299@0"],
        cwd=repo_root,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode != 0 and "first size starts at step 0" in proc.stderr
    assert "Traceback" not in proc.stderr
