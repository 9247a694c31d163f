"""Tests of tools/benchmark.py (and its modules in tools/benchmarks/): every subcommand runs at toy sizes (in
this process through `tools.benchmark.run`; `augment`, the usage error and horovodrun in fresh processes) and
prints parseable JSON lines with the expected keys (no timing assertions), each subcommand takes only its own
flags and every documented command parses, and the speed work behind the `pipeline` figures keeps the outputs:
the fused colour ops equal the tf.image kernels at full size, and the pipeline equals the per-image
transform and still resumes exactly."""

import json
import os
import subprocess
import sys
import tarfile

import numpy as np
import pytest

from tests import hvd

BENCHMARK = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tools", "benchmark.py")
TINY_IMAGES = ["--num_images=8", "--image_width=64", "--image_height=48", "--num_classes=50", "--tags=3"]
TINY_MODEL = ["--depth=14", "--base_width=8", "--num_classes=10", "--image_size=32", "--batch_size=2"]


def _run(capsys, *args: str) -> list[dict]:
    """`tools/benchmark.py *args` in this process (`benchmark.run`, fresh flags): its JSON lines."""
    from tools import benchmark

    capsys.readouterr()
    benchmark.run(args)
    return _json_lines(capsys.readouterr().out)


def _run_script(*args: str, timeout: int = 600) -> list[dict]:
    """`python tools/benchmark.py *args` in a fresh interpreter: its JSON lines."""
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="2", OMP_NUM_THREADS="1")
    proc = subprocess.run(
        [sys.executable, BENCHMARK, *args], capture_output=True, text=True, env=env, timeout=timeout
    )
    assert proc.returncode == 0, proc.stderr[-5000:]
    return _json_lines(proc.stdout)


def _json_lines(text: str) -> list[dict]:
    """The JSON lines of an output (horovodrun prefixes each line with its rank, e.g. `[0]<stdout>:`)."""
    lines = [line[line.index("{") :] for line in text.splitlines() if "{" in line]
    return [json.loads(line) for line in lines]


def _by_name(lines: list[dict]) -> dict[str, dict]:
    return {line["benchmark"]: line for line in lines}


def _check_machine(lines: list[dict], name: str) -> None:
    machine = _by_name(lines)[f"{name}/machine"]
    assert {"nproc", "cpu", "cpu_flags", "tensorflow", "python", "onednn"} <= machine.keys()
    # Every figure says whether TensorFlow's oneDNN kernels ran (they moved the ResNet step 1.4x here); the
    # memory benchmark, which keeps TensorFlow out of its process, says what TF_ENABLE_ONEDNN_OPTS asks for.
    onednn = machine["onednn"]
    assert "TF_ENABLE_ONEDNN_OPTS" in onednn
    assert isinstance(onednn["enabled"], bool) if name != "memory" else "enabled" not in onednn


def test_usage_error_lists_the_subcommands():
    proc = subprocess.run([sys.executable, BENCHMARK, "nope"], capture_output=True, text=True)
    assert proc.returncode != 0
    for name in ("writer", "pipeline", "augment", "step", "loss", "allreduce", "memory"):
        assert name in proc.stderr


def test_writer(tmp_path, capsys):
    lines = _run(
        capsys, "writer", *TINY_IMAGES, "--workers=1", "--shards=2", "--compare", f"--image_cache={tmp_path}"
    )
    _check_machine(lines, "writer")
    named = _by_name(lines)
    sizes = {
        line["label_format"]: line["bytes"]
        for line in lines
        if line["benchmark"] == "writer/label_field_bytes"
    }
    assert sizes["dense"] >= 4 * 50 > sizes["sparse"]
    for key in ("ours_dense_w1_full_cold", "ours_sparse_w1_fast_warm", "naive_tf_decode_dense"):
        assert {"images_per_s", "input_mb_per_s", "seconds", "output_mb"} <= named[f"writer/{key}"].keys()
    speedup = named["writer/speedup"]
    ratios = {key for key in speedup if key not in ("benchmark", "per_round", "load_average")}
    assert ratios and all(key.endswith("_vs_naive") for key in ratios)
    assert speedup["per_round"].keys() == ratios and all(len(v) == 1 for v in speedup["per_round"].values())
    cost = named["writer/verify_cost"]
    assert cost["images"] == 8 and cost["verify_full_ms"] > 0 and cost["full_size_decode_ms"] > 0


def test_photo_sizes(tmp_path, capsys):
    from tools.benchmarks import photos

    lines = _run(
        capsys,
        "photo_sizes",
        "--megapixels=0.01",
        "--max_sides=0,40",
        "--photos_per_size=4",
        "--num_classes=50",
        "--tags=3",
        "--shards=1",
        "--image_size=32",
        "--batch_size=2",
        "--steps=1",
        "--warmup=1",
        "--shuffle_buffer=4",
        f"--image_cache={tmp_path}",
    )
    _check_machine(lines, "photo_sizes")
    sizes = [(line["width"], line["height"]) for line in lines if line["benchmark"] == "photo_sizes/images"]
    assert sizes == [photos.photo_size(0.01)] == [(112, 84)]
    results = {
        (line["megapixels"], line["max_side"]): line
        for line in lines
        if line["benchmark"] == "photo_sizes/result"
    }
    assert set(results) == {(0.01, 0), (0.01, 40)}
    for (_, max_side), result in results.items():
        assert result["resized"] == (4 if max_side else 0)  # every image is over 40 px
        assert result["writer_cpu_ms_per_image"] > 0 and result["train_cpu_ms_per_image"] > 0
        assert result["cores_per_gpu"] == round(1300 * result["train_cpu_ms_per_image"] / 1000, 1)
        assert (result["eval_pixel_change"] > 0) == (max_side > 0)
    effects = [line for line in lines if line["benchmark"] == "photo_sizes/max_side_effect"]
    assert [line["megapixels"] for line in effects] == [0.01]
    assert effects[0]["max_side_40"]["records_bytes_vs_off"] < 1


def test_archive(tmp_path, capsys):
    lines = _run(
        capsys,
        "archive",
        "--num_images=150",  # two synsets, one of them short
        "--image_width=64",
        "--image_height=48",
        "--num_classes=50",
        "--tags=3",
        "--shards=2",
        "--workers=1",
        "--rounds=1",
        f"--image_cache={tmp_path}",
    )
    _check_machine(lines, "archive")
    named = _by_name(lines)
    assert named["archive/layout"]["synsets"] == 2
    for source in ("tree", "synset_tars", "outer_tar", "outer_tar_gz"):
        assert named[f"archive/{source}"]["records_per_s"] > 0
        assert named[f"archive/{source}"]["cpu_ms_per_record"] > 0
    ratio = named["archive/ratio"]
    assert ratio["identical_records"] and ratio["outer_tar_gz_vs_tree"]["records_per_s"] > 0
    members = tarfile.open(tmp_path / "imagenet-150-64x48" / "tars" / "n10000001.tar").getnames()
    assert members == [f"n10000001_{i}.JPEG" for i in range(100, 150)]


def test_photo_sizes_refuses_a_bad_size_in_one_line():
    from absl import app

    from tools import benchmark

    with pytest.raises(app.UsageError, match="--megapixels must be one or more numbers > 0"):
        benchmark.run(["photo_sizes", "--megapixels=0.5,0"])
    with pytest.raises(app.UsageError, match="--max_sides"):
        benchmark.run(["photo_sizes", "--max_sides=big"])


def test_camera_photos_have_camera_file_sizes():
    """Quality 90 and about 2 bits per pixel, like camera originals: 0.5 MP in ~100 - 250 KB."""
    from tools.benchmarks import photos

    assert photos.photo_size(8) == (3264, 2448) and photos.photo_size(0.5) == (816, 612)
    data = photos.camera_photo_jpeg(np.random.default_rng(0), width=816, height=612)
    assert 100_000 < len(data) < 250_000


def test_augment():
    # A fresh interpreter: augment sets TensorFlow's thread pools to one thread, which only a process that
    # has not initialised TensorFlow yet can do (the machine line shows it took effect).
    lines = _run_script("augment", "--image_size=32", "--batch_size=2", "--steps=1", "--warmup=1")
    _check_machine(lines, "augment")
    named = _by_name(lines)
    assert named["augment/machine"]["intra_op_threads"] == 1
    for name in ("branch_0", "branch_1", "branch_2", "rotation_ours", "rotation_release_op"):
        assert named[f"augment/{name}"]["cpu_ms_per_image"] > 0


def test_pipeline(tmp_path, capsys):
    lines = _run(
        capsys,
        "pipeline",
        *TINY_IMAGES,
        "--image_size=32",
        "--batch_size=4",
        "--steps=2",
        "--warmup=1",
        "--shards=2",
        "--workers=1",
        "--shuffle_buffer=8",
        "--compare",
        "--stages",
        f"--image_cache={tmp_path}",
    )
    _check_machine(lines, "pipeline")
    named = _by_name(lines)
    stages = [f"stage_{s}" for s in ("parse", "draws", "decode", "crop", "flip_only")]
    for name in ("ours_sparse", "ours_dense", "original_dense", "decode_only", *stages):
        assert {"images_per_s", "cpu_ms_per_image", "images"} <= named[f"pipeline/{name}"].keys()
        assert named[f"pipeline/{name}"]["images"] == 8
    assert {"ours_vs_original", "ours_fraction_of_decode_only"} <= named["pipeline/speedup"].keys()


def test_step(capsys):
    lines = _run(capsys, "step", *TINY_MODEL, "--steps=1", "--warmup=1")
    _check_machine(lines, "step")
    ours = _by_name(lines)["step/ours"]
    assert ours["model"] == "resnet14" and ours["depth"] == 14 and ours["precision"] == "fp32"
    assert {"images_per_s", "ms_per_step", "cpu_ms_per_step", "first_step_s", "params"} <= ours.keys()


@pytest.mark.slow
def test_step_compare_runs_the_keras_reference_in_the_same_step(capsys):
    lines = _run(
        capsys,
        "step",
        *TINY_MODEL,
        "--steps=1",
        "--warmup=1",
        "--compare",
        "--reference_model=resnet50v2",
        "--rounds=2",
    )
    named = _by_name(lines)
    assert named["step/keras_reference"]["model"] == "resnet50v2"
    # Interleaved rounds: ours, Keras, then Keras, ours; the ratio is the median of the rounds' ratios.
    assert [(line["benchmark"], line["round"]) for line in lines if "round" in line] == [
        ("step/ours", 0),
        ("step/keras_reference", 0),
        ("step/keras_reference", 1),
        ("step/ours", 1),
    ]
    assert named["step/ratio"]["ours_vs_keras_reference"] > 0 and len(named["step/ratio"]["per_round"]) == 2


def test_loss(capsys):
    lines = _run(capsys, "loss", *TINY_MODEL, "--num_classes=50", "--steps=1", "--warmup=1")
    _check_machine(lines, "loss")
    named = _by_name(lines)
    for name in ("adaptive", "plain_sigmoid"):
        assert named[f"loss/{name}"]["ms"] > 0 and named[f"loss/{name}"]["num_classes"] == 50
    fraction = named["loss/fraction_of_step"]
    assert fraction["step_ms"] > 0 and "measured" in fraction["step_source"]
    assert {"adaptive_fraction", "extra_over_plain_fraction"} <= fraction.keys()
    given = _by_name(_run(capsys, "loss", "--num_classes=50", "--batch_size=2", "--steps=1", "--step_ms=100"))
    assert given["loss/fraction_of_step"]["step_source"] == "--step_ms"


@pytest.mark.slow
@pytest.mark.horovod
def test_allreduce_on_two_ranks():
    proc = hvd.run_two_ranks(
        [
            BENCHMARK,
            "allreduce",
            "--depth=14",
            "--base_width=8",
            "--num_classes=10",
            "--steps=2",
            "--warmup=1",
            "--step_ms=100",
            "--allreduce_dtypes=float32,float16",
        ]  # fmt: skip
    )
    lines = [line for line in _json_lines(proc.stdout) if line["benchmark"] == "allreduce/gradients"]
    assert [line["dtype"] for line in lines] == ["float32", "float16"]  # printed by rank 0 only
    for line in lines:
        assert line["ranks"] == 2 and line["tensors"] > 0 and line["ms"] > 0
        assert {"bus_gb_per_s", "algorithm_gb_per_s", "overhead_fraction"} <= line.keys()
    assert lines[1]["mb"] < lines[0]["mb"]


def test_allreduce_single_process_without_horovodrun(capsys):
    lines = _run(
        capsys, "allreduce", "--depth=14", "--base_width=8", "--num_classes=10", "--steps=1", "--warmup=0"
    )
    gradients = _by_name(lines)["allreduce/gradients"]
    assert gradients["ranks"] == 1 and gradients["elements"] > 0 and "overhead_fraction" not in gradients


def test_memory_list_tools(tmp_path, capsys):
    lines = _run(
        capsys,
        "memory",
        "--memory_lines=30,300",
        "--memory_tools=baseline,subset,dataset_stats",
        f"--memory_dir={tmp_path}",
    )
    _check_machine(lines, "memory")
    for tool in ("baseline", "subset", "dataset_stats"):
        runs = [line for line in lines if line["benchmark"] == f"memory/{tool}"]
        assert [run["num_lines"] for run in runs] == [30, 300]
        for run in runs:
            assert run["peak_rss_mb"] >= run["rss_after_imports_mb"] > 0
    ratio = _by_name(lines)["memory/ratio"]
    assert ratio["lines_ratio"] == 10 and set(ratio) >= {"subset", "dataset_stats"}


@pytest.mark.slow
def test_memory_writer_tools(tmp_path, capsys):
    lines = _run(
        capsys,
        "memory",
        "--memory_lines=40",
        "--memory_tools=writer_index,writer_missing_images",
        f"--memory_dir={tmp_path}",
    )
    named = _by_name(lines)
    assert named["memory/writer_index"]["lines_indexed"] == 40
    assert named["memory/writer_missing_images"]["num_skipped"] == 40


def test_synthetic_image_list_reads_back(tmp_path):
    from data.labels import annotations
    from tools.benchmarks import memory

    path = memory.synthetic_image_list(str(tmp_path / "list.txt"), num_lines=500, num_classes=100, tags=9)
    entries = list(annotations.iter_entries(path, num_classes=100, on_error="fail"))
    assert len(entries) == 500
    tags = [len(entry.labels) for entry in entries]
    assert min(tags) >= 1 and 8 < np.mean(tags) < 10


# ----------------------------------------------------------------------------------------------------------
# The pipeline's speed-ups keep its outputs (data/pixels/preprocessing.py and training/input_pipeline.py).
# ----------------------------------------------------------------------------------------------------------


def test_fused_colour_ops_equal_the_tf_image_kernels_at_full_size():
    tf = pytest.importorskip("tensorflow")
    from data.pixels import preprocessing

    rng = np.random.default_rng(0)
    # In range, out of range (after a brightness shift nothing is clipped) and greys (ties, zero chroma).
    images = np.concatenate(
        [
            rng.uniform(0.0, 1.0, (1, 224, 224, 3)),
            rng.uniform(-0.2, 1.2, (1, 224, 224, 3)),
            np.repeat(rng.integers(0, 4, (1, 224, 224, 1)) / 3, 3, axis=-1),
        ]
    ).astype(np.float32)
    planes = tf.transpose(images, [0, 3, 1, 2])
    for factor, delta in ((0.5, -0.2), (1.37, 0.13), (1.5, 0.2)):
        fused = tf.function(preprocessing._saturation_and_hue, jit_compile=True)(planes, factor, delta)
        for image, out in zip(images, tf.transpose(fused, [0, 2, 3, 1]).numpy(), strict=True):
            expected = tf.image.adjust_hue(tf.image.adjust_saturation(image, factor), delta).numpy()
            np.testing.assert_allclose(out, expected, atol=1e-5)
        contrast = tf.function(preprocessing._adjust_contrast, jit_compile=True)(planes, factor)
        for image, out in zip(images, tf.transpose(contrast, [0, 2, 3, 1]).numpy(), strict=True):
            np.testing.assert_allclose(out, tf.image.adjust_contrast(image, factor).numpy(), atol=1e-6)


@pytest.fixture
def tiny_records(tmp_path):
    pytest.importorskip("tensorflow")
    from PIL import Image

    from data.labels import annotations
    from data.shards import dataset_writer

    rng = np.random.default_rng(0)
    entries = []
    for i in range(24):
        Image.fromarray(rng.integers(0, 256, (40 + i, 56, 3), dtype=np.uint8)).save(tmp_path / f"{i}.jpg")
        entries.append(annotations.Entry(f"{i}.jpg", ((i % 7, 1.0), (7 + i % 5, 0.9)), i + 1))
    annotations.write_entries(tmp_path / "list.txt", entries)
    dataset_writer.write_dataset(
        image_list=str(tmp_path / "list.txt"),
        image_root=str(tmp_path),
        output_dir=str(tmp_path / "records"),
        label_format="sparse",
        num_classes=12,
        shards=3,
        progress=False,
    )
    return tmp_path / "records"


def test_pipeline_equals_the_per_image_transform_and_resumes_exactly(tiny_records, tmp_path):
    import tensorflow as tf

    from data.pixels import preprocessing
    from training import input_pipeline

    source = input_pipeline.tfrecord_source(str(tiny_records), "train", num_classes=12)

    def make():
        return input_pipeline.train_dataset(source, batch_size=4, image_size=32, seed=5, shuffle_buffer=8)

    # The same records in the same order, transformed one by one in graph mode with the same seeds.
    records = input_pipeline._records(source, num_shards=1, shard_index=0, training=True, seed=5)
    records = input_pipeline.window_shuffle(records, 8, seed=5 + 7919)
    stream = tf.constant([5, 0], tf.int64)
    one_by_one = (
        input_pipeline._parse_in_batches(records, source)
        .enumerate()
        .map(
            lambda i, element: (
                preprocessing.train_transform(
                    element[0],
                    tf.random.experimental.stateless_fold_in(stream, i),
                    image_size=32,
                    area_cover=0.7,
                    object_cover=0.7,
                ),
                element[1],
            )
        )
    )
    expected = list(one_by_one.batch(4).take(3).as_numpy_iterator())
    iterator = iter(make())
    for want in expected:
        images, labels = next(iterator)
        np.testing.assert_allclose(images.numpy(), want[0], atol=1e-6)
        np.testing.assert_array_equal(labels.numpy(), want[1])

    path = tf.train.Checkpoint(iterator=iterator).save(str(tmp_path / "ckpt" / "it"))
    after = [next(iterator) for _ in range(3)]
    restored = iter(make())
    tf.train.Checkpoint(iterator=restored).restore(path)
    for want in after:
        images, labels = next(restored)
        np.testing.assert_array_equal(images.numpy(), want[0].numpy())
        np.testing.assert_array_equal(labels.numpy(), want[1].numpy())


# ----------------------------------------------------------------------------------------------------------
# The command line: each subcommand defines only the flags it reads; the documented commands parse.
# ----------------------------------------------------------------------------------------------------------


def _parse(argv: list[str]):
    from absl import flags

    from tools import benchmark

    flag_values = flags.FlagValues()
    benchmark.define_flags(flag_values, subcommand=benchmark.chosen_subcommand(argv))
    flag_values(argv)
    return flag_values


def _documented_commands(repo_root) -> list[list[str]]:
    """Every `tools/benchmark.py <subcommand> ...` command of docs/BENCHMARKS.md, continuation lines joined."""
    text = (repo_root / "docs" / "BENCHMARKS.md").read_text(encoding="utf-8").replace("\\\n", " ")
    commands = []
    for line in text.splitlines():
        words = line.split()
        if "tools/benchmark.py" in words:
            commands.append(words[words.index("tools/benchmark.py") :])
    return commands


def test_every_documented_command_parses_with_its_subcommands_flags(repo_root):
    from tools import benchmark

    commands = _documented_commands(repo_root)
    assert {command[1] for command in commands} == set(benchmark.SUBCOMMANDS)  # every one is documented
    for command in commands:
        parsed = _parse(command)
        given = {word[2:].split("=", 1)[0] for word in command[2:] if word.startswith("--")}
        assert given <= set(parsed), command


def test_a_flag_the_subcommand_does_not_read_is_an_error():
    from absl import flags

    assert _parse(["benchmark.py", "step", "--depth=14"]).depth == "14"
    with pytest.raises(flags.UnrecognizedFlagError):
        _parse(["benchmark.py", "augment", "--depth=14"])  # augment has no model
    with pytest.raises(flags.UnrecognizedFlagError):
        _parse(["benchmark.py", "memory", "--compare"])


def test_every_flag_belongs_to_a_subcommand_and_help_without_one_lists_all():
    from tools import benchmark
    from tools.benchmarks import common

    used = set(common.GLOBAL_FLAGS)
    for name in benchmark.SUBCOMMANDS:
        module = benchmark.subcommand_module(name)
        assert set(module.FLAGS_USED) <= common.FLAG_DEFINITIONS.keys(), name
        used |= set(module.FLAGS_USED)
    assert used == common.FLAG_DEFINITIONS.keys()
    assert set(_parse(["benchmark.py"])) >= common.FLAG_DEFINITIONS.keys()  # no subcommand: all flags


# ---------------------------------------------------------------------------------------------------------
# `check`, the regression guard: its floor logic and its wiring, with given ratios (nothing is timed here).
# ---------------------------------------------------------------------------------------------------------


def test_check_floor_logic():
    from tools.benchmarks import check

    floors = {"a": check.Floor(2.0, "why a"), "b": check.Floor(1.0, "why b"), "c": check.Floor(0.5, "why c")}
    assert check.failures({"a": 2.0, "b": 3.0, "c": 0.5}, floors) == []  # at the floor passes
    lines = check.failures({"a": 1.99, "b": None, "c": 0.7, "d": 5.0}, floors)
    assert lines == [
        "a = 1.99 is below its floor 2: why a",
        "b: not measured (its error is printed above)",
        "d: no floor in the floors file",
    ]


def test_every_ratio_has_one_floor_with_a_reason_in_the_floors_file():
    from tools.benchmarks import check, common

    floors = check.load_floors(common.FLOORS_FILE)
    assert set(floors) == set(check.RATIOS)
    for name, floor in floors.items():
        assert floor.floor > 0 and len(floor.reason) > 40, name


def test_the_floors_file_needs_a_number_and_a_reason(tmp_path):
    from tools.benchmarks import check

    path = tmp_path / "floors.toml"
    path.write_text('[a]\nfloor = 1.5\nreason = "because"\n')
    assert check.load_floors(str(path)) == {"a": check.Floor(1.5, "because")}
    for bad in (
        "[a]\nfloor = 1.5\n",
        '[a]\nfloor = "1.5"\nreason = "x"\n',
        '[a]\nfloor = true\nreason = "x"\n',
    ):
        path.write_text(bad)
        with pytest.raises(ValueError, match=r"\[a\] needs a numeric 'floor' and a 'reason'"):
            check.load_floors(str(path))


def test_best_of_rounds_alternates_the_order_and_keeps_each_sides_least_time():
    from tools.benchmarks import check
    from tools.benchmarks.common import Timer

    calls = []
    times = {"x": iter([(3.0, 1.0), (2.0, 4.0)]), "y": iter([(5.0, 5.0), (6.0, 2.0)])}

    def variant(name):
        def run():
            calls.append(name)
            t = Timer()
            t.wall, t.cpu = next(times[name])
            return t

        return run

    best = check.best_of_rounds({"x": variant("x"), "y": variant("y")}, 2)
    assert calls == ["x", "y", "y", "x"]
    assert (best["x"].wall, best["x"].cpu, best["y"].wall, best["y"].cpu) == (2.0, 1.0, 5.0, 2.0)


def test_check_exits_1_with_one_line_per_failing_ratio(monkeypatch, capsys):
    """The subcommand's wiring with the measurement replaced by given ratios (one low, one unmeasured)."""
    from tools.benchmarks import check

    measured = {name: 100.0 for name in check.RATIOS}
    measured["record_framing_vs_tf"] = 0.04  # what the numpy CRC gave
    measured["step_vs_keras"] = None
    monkeypatch.setattr(check, "measure", lambda names, image_cache: {n: measured[n] for n in names})
    with pytest.raises(SystemExit) as exit_info:
        _run(capsys, "check")
    assert exit_info.value.code == 1
    out, err = capsys.readouterr()
    failed = [line for line in err.splitlines() if line.startswith("check FAILED: ")]
    assert len(failed) == 2
    assert failed[0].startswith("check FAILED: record_framing_vs_tf = 0.04 is below its floor")
    assert failed[1].startswith("check FAILED: step_vs_keras: not measured")
    named = _by_name(_json_lines(out))
    assert named["check/result"]["ok"] is False and named["check/result"]["failed"] == 2
    assert named["check/record_framing_vs_tf"]["ok"] is False and named["check/pipeline_vs_original"]["ok"]
    # All at or above their floors: exit 0.
    measured.update(record_framing_vs_tf=100.0, step_vs_keras=100.0)
    lines = _run(capsys, "check", "--check_only=record_framing_vs_tf,step_vs_keras")
    result = _by_name(lines)["check/result"]
    assert result["ok"] is True and result["failed"] == 0
