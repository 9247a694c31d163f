"""TrainConfig in five parts (model, data, schedule, loss, runtime): `replace` by field name, `--dry_run`
and config.json in the same groups, and a run directory written before the grouping still resumes."""

from __future__ import annotations

import dataclasses
import json

import pytest

from models import input_contract
from tests import entry_points
from training import config as config_lib
from training import recipes, run_dir, schedules

PARTS = ("model", "data", "schedule", "loss", "runtime")

# The demo recipe's config.json as this project wrote it before the fields were grouped (commit acbdbdd),
# its provenance shortened: every field but `model` and `data` at the top, the schedule under "schedule".
DEMO_CONFIG_BEFORE_PARTS = {
    "accum_steps": 1,
    "allreduce_dtype": "fp32",
    "backward_segments": 0,
    "bn_weight_decay_scale": 0.0,
    "checkpoint_every": 500,
    "class_status": "global",
    "data": {
        "area_cover": 1.0,
        "data_dir": "",
        "distort": False,
        "eval_prefix": "val",
        "eval_transform": "full",
        "object_cover": 1.0,
        "shuffle_buffer": 512,
        "tfds_data_dir": "",
        "tfds_manual_dir": "",
        "tfds_name": "",
        "train_prefix": "train",
    },
    "data_threads": 0,
    "deterministic": False,
    "eval_every": 1000,
    "eval_steps": 0,
    "frozen_stages": -1,
    "global_batch": 32,
    "image_sizes": [[0, 64]],
    "init_checkpoint": "",
    "init_optimizer_state": False,
    "inter_op_threads": 0,
    "intra_op_threads": 0,
    "keep_checkpoints": 5,
    "log_every": 250,
    "mask_thres": 0.7,
    "model": {"base_width": 16, "bn_momentum": 0.9, "depth": 14, "num_classes": 0},
    "model_dir": "demo_run",
    "momentum": 0.9,
    "neg_select": 0.1,
    "num_ranks": 1,
    "per_rank_batch": 32,
    "pos_weight": 12.0,
    "precision": "fp32",
    "provenance": "OURS: the built-in demo",
    "recipe": "demo",
    "reference_global_batch": 32,
    "schedule": {
        "boundaries": [750, 1500, 2250, 3000],
        "kind": "ReferencePretrainSchedule",
        "values": [0.08, 0.008, 0.0008, 8e-05, 8e-06],
        "warmup_every": 30,
        "warmup_factor": 1.297,
        "warmup_lr": 0.01,
        "warmup_steps": 240,
    },
    "seed": 0,
    "skip_head": False,
    "task": "multilabel",
    "topk": [3, 5, 10],
    "train_steps": 3000,
    "weight_decay": 0.0001,
    "xla": False,
}


def test_every_field_belongs_to_one_part():
    top = [f.name for f in dataclasses.fields(config_lib.TrainConfig)]
    assert sorted(top) == sorted(["recipe", "task", "provenance", *PARTS]) and config_lib.GROUPS == PARTS
    per_part = {p: [f.name for f in dataclasses.fields(getattr(recipes.PRETRAIN, p))] for p in PARTS}
    names = [name for fields in per_part.values() for name in fields]
    assert len(names) == len(set(names)) == len(config_lib.GROUP_OF)  # unique: `replace` finds the part
    assert not set(names) & set(top)
    assert {"precision", "xla", "seed", "model_dir"} <= set(per_part["runtime"])
    assert {"mask_thres", "neg_select", "pos_weight", "class_status", "weight_decay"} <= set(per_part["loss"])
    assert {"learning_rate", "train_steps", "image_sizes", "per_rank_batch"} <= set(per_part["schedule"])


def test_replace_takes_each_field_by_its_name():
    base = recipes.DEMO
    changed = config_lib.replace(
        base, precision="bf16", train_steps=5, depth=18, mask_thres=0.5, data_dir="somewhere", recipe="x"
    )
    assert (changed.runtime.precision, changed.schedule.train_steps, changed.model.depth) == ("bf16", 5, 18)
    assert (changed.loss.mask_thres, changed.data.data_dir, changed.recipe) == (0.5, "somewhere", "x")
    # Everything else as it was, in every part.
    assert (
        changed.model.base_width == base.model.base_width and changed.loss.neg_select == base.loss.neg_select
    )
    assert changed.schedule.learning_rate == base.schedule.learning_rate
    # A whole part and one of its fields together: the field applies to the given part.
    both = config_lib.replace(base, model=config_lib.ModelConfig(depth=50), base_width=8)
    assert (both.model.depth, both.model.base_width) == (50, 8)
    with pytest.raises(TypeError, match="no field 'no_such_field'"):
        config_lib.replace(base, no_such_field=1)
    with pytest.raises(TypeError, match="schedule must be a ScheduleConfig, got StaircaseSchedule"):
        config_lib.replace(base, schedule=schedules.StaircaseSchedule())  # the learning rate is a field of it


def test_dry_run_prints_the_parts():
    report = json.loads(entry_points.run(["--dry_run", "--precision=bf16", "--neg_select=0.2", "--depth=50"]))
    assert set(report) == {"recipe", "task", "provenance", *PARTS}
    assert report["runtime"]["precision"] == "bf16" and report["loss"]["neg_select"] == 0.2
    assert report["model"]["depth"] == 50 and report["schedule"]["learning_rate"]["kind"]
    expected = config_lib.replace(
        recipes.PRETRAIN, precision="bf16", neg_select=0.2, depth=50, model_dir=report["runtime"]["model_dir"]
    )
    assert report == json.loads(config_lib.resolve(expected, num_ranks=1).to_json())  # nothing else moved


def test_a_config_json_written_before_the_parts_reads_in_todays_layout():
    # Such a run sent float32 images to the device (`image_transport` came later).
    then = config_lib.replace(recipes.DEMO, provenance="OURS: the built-in demo", image_transport="float32")
    assert config_lib.upgrade_dict(DEMO_CONFIG_BEFORE_PARTS) == json.loads(then.to_json())
    today = json.loads(config_lib.replace(then, image_transport="uint8").to_json())
    assert config_lib.upgrade_dict(today) == today
    assert run_dir.config_changes(DEMO_CONFIG_BEFORE_PARTS, today) == ([], ["runtime.image_transport"])
    bigger = json.loads(config_lib.replace(recipes.DEMO, per_rank_batch=64, xla=True).to_json())
    refused, allowed = run_dir.config_changes(DEMO_CONFIG_BEFORE_PARTS, bigger)
    assert refused == ["schedule.per_rank_batch"]
    assert allowed == ["provenance", "runtime.image_transport", "runtime.xla"]


def test_a_run_directory_written_before_the_parts_resumes_and_keeps_its_input_contract(tmp_path):
    old = {**DEMO_CONFIG_BEFORE_PARTS, "model_dir": str(tmp_path), "image_sizes": [[0, 64], [10, 96]]}
    (tmp_path / run_dir.CONFIG_FILE).write_text(json.dumps(old))
    config = config_lib.replace(
        recipes.DEMO, provenance=old["provenance"], model_dir=str(tmp_path), image_sizes=((0, 64), (10, 96))
    )
    record = run_dir.check_config(config, resuming=True)
    assert record.changed == ["runtime.image_transport"]  # float32 then, uint8 now: allowed, and recorded
    with pytest.raises(run_dir.RunDirError, match="schedule.per_rank_batch 32 -> 16"):
        run_dir.check_config(config_lib.replace(config, per_rank_batch=16), resuming=True)
    contract = input_contract.from_run_dir(str(tmp_path), step=5)
    assert (contract.image_size, contract.transform) == (64, "full")
    assert input_contract.from_run_dir(str(tmp_path)).image_size == 96
    # And the grouped config.json of today gives the same contract.
    (tmp_path / run_dir.CONFIG_FILE).write_text(config.to_json())
    assert input_contract.from_run_dir(str(tmp_path)).image_size == 96
