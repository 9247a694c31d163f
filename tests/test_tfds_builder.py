"""The `ml_images` TFDS builder (data/ml_images): Beam generation, the same data as the TFRecord writer, bad
input skipped with reasons and counted, and training on it through train.py --tfds_name."""

import io
import json
import logging
import os
import re
import shlex
import socket
import struct
import subprocess
import sys

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.records import schema
from data.shards import dataset_writer
from tests import entry_points
from tests.png_bomb import bomb_png
from training import input_pipeline

beam = pytest.importorskip("apache_beam", reason="the beam extra (pip install -e .[beam]) is not installed")
tfds = pytest.importorskip("tensorflow_datasets")
from data.ml_images import ml_images_dataset_builder as mlb  # noqa: E402  (after the importorskip)
from data.ml_images import pipeline as mlp  # noqa: E402

C = mlb.NUM_CLASSES


# ---------------------------------------------------------------------------------------------------------
# A small manual_dir: good images of every kind, bad lines and bad files.
# ---------------------------------------------------------------------------------------------------------


def _jpeg(pixels: np.ndarray, mode: str = "RGB", **kwargs) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).convert(mode).save(out, format="JPEG", quality=90, **kwargs)
    return out.getvalue()


def _png(pixels: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(pixels).save(out, format="PNG")
    return out.getvalue()


def _without_adobe_marker(jpeg: bytes) -> bytes:
    at = jpeg.index(b"\xff\xee")  # The APP14 "Adobe" segment Pillow writes into CMYK JPEGs.
    (length,) = struct.unpack(">H", jpeg[at + 2 : at + 4])
    return jpeg[:at] + jpeg[at + 2 + length :]


def _pixels(rng, height: int, width: int, channels: int = 3) -> np.ndarray:
    shape = (height, width, channels) if channels > 1 else (height, width)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def _image_files(rng) -> dict[str, bytes]:
    files = {f"rgb_{i}.jpg": _jpeg(_pixels(rng, 20 + i, 30 - i)) for i in range(6)}
    files["grey.jpg"] = _jpeg(_pixels(rng, 18, 22, 1), mode="L")
    files["alpha.png"] = _png(_pixels(rng, 16, 16, 4))  # converted: PNG
    files["cmyk.jpg"] = _without_adobe_marker(_jpeg(_pixels(rng, 12, 14), mode="CMYK"))  # converted
    files["text.jpg"] = b"this is not an image\n"
    whole = _jpeg(_pixels(rng, 64, 64))
    files["truncated.jpg"] = whole[: len(whole) // 2]
    files["bomb.png"] = bomb_png(30000, 30000)
    return files


TRAIN_LINES = [
    "rgb_0.jpg\t3:0.9\t1\t11165:0.8",
    "rgb_1.jpg 7",
    "",
    "grey.jpg 2:0.8 5",
    "alpha.png 4",
    "cmyk.jpg 11000:0.9",
    "rgb_2.jpg",  # an image without tags
    "text.jpg 1",  # not an image
    "truncated.jpg 1",  # corrupt or truncated
    "bomb.png 1",  # too many pixels
    "missing.jpg 1",  # missing file
    "rgb_3.jpg 3:zz",  # bad line: confidence
    "rgb_4.jpg 11166",  # bad line: index >= num_classes
    "../outside.jpg 1",  # outside image_root (the file exists, one level up)
    "rgb_5.jpg 5:1 5:0.8",  # bad line: repeated index
]
TRAIN_SKIPS = {
    "not an image": 1,
    "corrupt or truncated": 1,
    "too many pixels": 1,
    "missing file": 1,
    "bad line": 3,
    "outside image_root": 1,
}
VAL_LINES = ["rgb_3.jpg 1", "rgb_4.jpg 2:0.9 10", "grey.jpg 6"]


def _make_manual_dir(root, *, train_lines=TRAIN_LINES, val_lines=VAL_LINES, files=None):
    manual = root / "manual"
    (manual / "images").mkdir(parents=True)
    for name, data in (files or _image_files(np.random.default_rng(0))).items():
        (manual / "images" / name).write_bytes(data)
    (manual / "outside.jpg").write_bytes(_jpeg(np.zeros((8, 8, 3), np.uint8)))
    (manual / "train_im_list_tiny.txt").write_text("\n".join(train_lines) + "\n")
    if val_lines is not None:
        (manual / "val_im_list_tiny.txt").write_text("\n".join(val_lines) + "\n")
    return manual


def _build(manual, data_dir, config="tiny"):
    builder = mlb.Builder(config=config, data_dir=str(data_dir))
    options = beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"])
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(manual), beam_options=options)
    )
    return builder


def _write_records(
    manual, out, splits=(("train", "train_im_list_tiny.txt"), ("val", "val_im_list_tiny.txt"))
):
    return {
        prefix: dataset_writer.write_dataset(
            image_list=str(manual / list_name),
            image_root=str(manual / "images"),
            output_dir=str(out),
            label_format="sparse",
            num_classes=C,
            shards=1,
            prefix=prefix,
            progress=False,
        )
        for prefix, list_name in splits
    }


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("ml_images")
    manual = _make_manual_dir(root)
    builder = _build(manual, root / "tfds")
    manifests = _write_records(manual, root / "records")
    return {"root": root, "manual": manual, "builder": builder, "manifests": manifests}


def _tfds_examples(data_dir, split, name="ml_images/tiny") -> dict[str, tuple]:
    """name -> (image bytes, height, width, dense label) through tfds.load."""
    ds = tfds.load(
        name,
        split=split,
        data_dir=str(data_dir),
        download=False,
        decoders={"image": tfds.decode.SkipDecoding()},
    )
    out = {}
    for e in tfds.as_numpy(ds):
        dense = np.zeros(C, np.float32)
        dense[e["label"]["indices"]] = e["label"]["confidences"]
        assert np.all(np.diff(e["label"]["indices"]) > 0)  # sorted, as the writer's sparse layout
        out[e["name"].decode()] = (e["image"], int(e["height"]), int(e["width"]), dense)
    return out


def _writer_examples(records_dir, prefix) -> dict[str, tuple]:
    files = schema.read_manifest(str(records_dir), prefix).files
    out = {}
    for record in tf.data.TFRecordDataset(list(files)):
        e = schema.parse_records(record, label_format="sparse", num_classes=C)
        out[e["name"].numpy().decode()] = (
            e["image"].numpy(),
            int(e["height"]),
            int(e["width"]),
            e["label"].numpy(),
        )
    return out


# ---------------------------------------------------------------------------------------------------------
# The dataset equals what data/tfrecord.py writes.
# ---------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("split,prefix", [("train", "train"), ("validation", "val")])
def test_tfds_load_gives_the_writers_images_and_labels(built, split, prefix):
    ours = _tfds_examples(built["root"] / "tfds", split)
    theirs = _writer_examples(built["root"] / "records", prefix)
    assert ours.keys() == theirs.keys() and len(ours) == built["manifests"][prefix]["num_records"] > 0
    for name, (image, height, width, label) in ours.items():
        w_image, w_height, w_width, w_label = theirs[name]
        assert image == w_image, name
        assert (height, width) == (w_height, w_width), name
        np.testing.assert_array_equal(label, w_label, err_msg=name)
    assert built["builder"].info.splits[split].num_examples == len(ours)


def test_jpegs_are_stored_byte_for_byte_and_the_rest_converted(built):
    ours = _tfds_examples(built["root"] / "tfds", "train")
    images_dir = built["manual"] / "images"
    for name in ("rgb_0.jpg", "rgb_1.jpg", "grey.jpg", "rgb_2.jpg"):
        assert ours[name][0] == (images_dir / name).read_bytes(), name
    for name in ("alpha.png", "cmyk.jpg"):
        assert ours[name][0] != (images_dir / name).read_bytes()
        assert Image.open(io.BytesIO(ours[name][0])).format == "JPEG"
    assert ours["rgb_0.jpg"][3][[1, 3, 11165]].tolist() == pytest.approx([1.0, 0.9, 0.8])
    assert ours["rgb_2.jpg"][3].sum() == 0  # no tags: an empty label, still an example


# ---------------------------------------------------------------------------------------------------------
# Bad input: skipped with reasons, counted, summarised; nothing silently dropped.
# ---------------------------------------------------------------------------------------------------------


def test_every_bad_line_is_in_the_summary_with_the_writers_reason(built):
    metadata = built["builder"].info.metadata
    summary, manifest = metadata["train_summary"], built["manifests"]["train"]
    assert summary["reasons"] == TRAIN_SKIPS
    assert summary["num_skipped"] == sum(TRAIN_SKIPS.values()) == manifest["num_skipped"]
    assert summary["skipped"] == manifest["skipped"] and summary["skipped_complete"]
    assert summary["converted"] == manifest["converted"] == {"JPEG/CMYK": 1, "PNG": 1}
    non_blank = sum(1 for line in TRAIN_LINES if line.strip())
    assert built["builder"].info.splits["train"].num_examples + summary["num_skipped"] == non_blank
    assert metadata["validation_summary"]["num_skipped"] == 0 and metadata["num_classes"] == C
    # The summary is saved with the dataset, so a reader sees it without the build's logs.
    saved = json.loads(
        (built["root"] / "tfds" / "ml_images" / "tiny" / "1.0.0" / "metadata.json").read_text()
    )
    assert saved["train_summary"] == summary


def test_beam_counters_and_log_lines_count_every_skip(built, caplog):
    """The pipeline of `_generate_examples`, run on its own to read its metrics; tiny blocks (64 bytes) so the
    list is read in many pieces and the line numbers must still come out right."""
    settings = mlp.PrepareSettings(
        list_path=str(built["manual"] / "train_im_list_tiny.txt"), image_root=str(built["manual"] / "images")
    )
    pipeline = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"]))
    mlp.run_direct_without_download(pipeline)  # as the builder does
    _, report = mlp.read_examples(pipeline, split="train", settings=settings, chunk_bytes=64)
    _ = mlp.summarize(report, split="train") | beam.Map(
        mlp.log_summary, split="train", list_path=settings.list_path
    )
    with caplog.at_level(logging.INFO, logger="absl"):
        result = pipeline.run()
        result.wait_until_finish()
    query = result.metrics().query(beam.metrics.MetricsFilter().with_namespace(mlp.COUNTER_NAMESPACE))
    counters = {c.key.metric.name: c.committed for c in query["counters"]}
    expected = {f"train/skipped/{reason}": n for reason, n in TRAIN_SKIPS.items()}
    expected |= {
        "train/skipped": sum(TRAIN_SKIPS.values()),
        "train/examples": built["builder"].info.splits["train"].num_examples,
        "train/converted/PNG": 1,
        "train/converted/JPEG/CMYK": 1,
    }
    assert counters == expected
    skip_lines = [r.getMessage() for r in caplog.records if ": skipped (" in r.getMessage()]
    expected_lines = {
        f"{settings.list_path}:{s['line']}: {s['path']}: skipped ({s['reason']})"
        for s in built["manifests"]["train"]["skipped"]
    }
    assert set(skip_lines) == expected_lines and len(skip_lines) == len(expected_lines)
    summary_lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("ml_images train")]
    assert len(summary_lines) == 1
    assert f"{sum(TRAIN_SKIPS.values())} line(s) skipped" in summary_lines[0]
    assert "missing file: 1" in summary_lines[0] and "bad line: 3" in summary_lines[0]


@pytest.mark.parametrize("chunk_bytes", [1, 7, 64, 1 << 20])
def test_list_blocks_cover_every_line_once_with_its_number(tmp_path, chunk_bytes):
    lines = ["a.jpg 1", "", "bb.jpg 2:0.9 3", "c.jpg", "  ", "d.jpg 4", "e.jpg 5"]
    path = tmp_path / "list.txt"
    path.write_text("\n".join(lines))  # no final newline
    _, chunks = mlp.list_chunks(str(path), chunk_bytes=chunk_bytes)
    read = [item for chunk in chunks for item in mlp.read_chunk(chunk, str(path))]
    expected = [(i + 1, (line + "\n").encode()) for i, line in enumerate(lines) if line.strip()]
    expected[-1] = (expected[-1][0], expected[-1][1].rstrip(b"\n"))
    assert read == expected


def test_a_missing_train_list_is_one_clear_error(tmp_path):
    manual = tmp_path / "manual"
    (manual / "images").mkdir(parents=True)  # an empty manual_dir is TFDS's own error
    (manual / "train_im_list.txt").write_text("a.jpg 1\n")  # the `full` config's list, not `tiny`'s
    with pytest.raises(ValueError, match="train_im_list_tiny.txt not found"):
        _build(manual, tmp_path / "tfds")


# ---------------------------------------------------------------------------------------------------------
# The release's tiny list.
# ---------------------------------------------------------------------------------------------------------


def test_reference_tiny_list_gives_the_writers_records(reference_dir, tmp_path):
    """The release's train_im_list_tiny.txt with its real tags. Its images are not in the reference folder
    (which holds im_0.jpg ... im_3.jpg, names the list does not use), so five of its names get generated
    JPEGs and every other line must come out as a counted `missing file`."""
    lines = (reference_dir / "train_im_list_tiny.txt").read_text().splitlines()
    names = [line.split()[0] for line in lines if line.strip()]
    assert not any((reference_dir / "images" / name).exists() for name in names)
    rng = np.random.default_rng(1)
    files = {name: _jpeg(_pixels(rng, 16, 20)) for name in names[:5]}
    manual = _make_manual_dir(tmp_path, train_lines=lines, val_lines=None, files=files)
    builder = _build(manual, tmp_path / "tfds")
    manifest = _write_records(manual, tmp_path / "records", splits=(("train", "train_im_list_tiny.txt"),))[
        "train"
    ]
    assert list(builder.info.splits.keys()) == ["train"]  # no val list in manual_dir: no such split
    ours, theirs = _tfds_examples(tmp_path / "tfds", "train"), _writer_examples(tmp_path / "records", "train")
    assert sorted(ours) == sorted(theirs) == sorted(names[:5])
    for name in names[:5]:
        assert ours[name][0] == theirs[name][0] == files[name]
        np.testing.assert_array_equal(ours[name][3], theirs[name][3])
        assert ours[name][3].sum() > 0
    summary = builder.info.metadata["train_summary"]
    assert summary == {**summary, "num_skipped": len(names) - 5, "reasons": {"missing file": len(names) - 5}}
    assert summary["skipped"] == manifest["skipped"]


# ---------------------------------------------------------------------------------------------------------
# Reading it for training.
# ---------------------------------------------------------------------------------------------------------


def test_input_pipeline_reads_the_sparse_labels_as_the_writers_dense_vectors(built):
    data_dir = str(built["root"] / "tfds")
    source = input_pipeline.tfds_source("ml_images/tiny", "train", num_classes=C, data_dir=data_dir)
    assert source.label_format == "tfds_sparse" and not source.single_label
    records = input_pipeline.tfrecord_source(str(built["root"] / "records"), "train", num_classes=C)

    def pairs(src):
        batches = input_pipeline.eval_dataset(src, batch_size=4, image_size=16)
        out = [
            (label.tobytes(), image)
            for images, labels in batches
            for image, label in zip(images.numpy(), labels.numpy(), strict=True)
        ]
        return sorted(out, key=lambda p: p[0])

    ours, theirs = pairs(source), pairs(records)
    assert len(ours) == len(theirs) == built["builder"].info.splits["train"].num_examples
    for (label, image), (w_label, w_image) in zip(ours, theirs, strict=True):
        assert label == w_label
        np.testing.assert_array_equal(image, w_image)
    with pytest.raises(ValueError, match="has 11166 classes but the model has 30"):
        input_pipeline.tfds_source("ml_images/tiny", "train", num_classes=30, data_dir=data_dir)


@pytest.mark.slow
def test_train_py_trains_on_the_tfds_dataset(built, tmp_path):
    model_dir = tmp_path / "run"
    args = [
        "--tfds_name=ml_images/tiny",
        f"--tfds_data_dir={built['root'] / 'tfds'}",
        f"--num_classes={C}",
        f"--model_dir={model_dir}",
        "--image_sizes=32",
        "--noscale_schedule",
        "--depth=14",
        "--base_width=4",
        "--per_rank_batch=4",
        "--log_every=1",
        "--shuffle_buffer=4",
        "--train_steps=2",
        "--eval_every=2",
        "--eval_steps=1",
    ]
    entry_points.run(args)  # train.py's command line, in this process
    lines = [json.loads(x) for x in (model_dir / "metrics.jsonl").read_text().splitlines()]
    train = [x for x in lines if x["kind"] == "train"]
    assert [x["step"] for x in train] == [1, 2] and all(np.isfinite(x["loss"]) for x in train)
    evals = [x for x in lines if x["kind"] == "eval"]
    assert len(evals) == 1 and 0.0 <= evals[0]["f1@5"] <= 1.0


# ---------------------------------------------------------------------------------------------------------
# The `tfds build` command line of README.md.
# ---------------------------------------------------------------------------------------------------------


def _readme_tfds_builds(repo_root) -> list[list[str]]:
    readme = (repo_root / "README.md").read_text(encoding="utf-8")
    section = readme.split("## Building the dataset on a cluster", 1)[1].split("\n## ", 1)[0]
    commands = []
    for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            if line.strip().startswith("tfds build"):
                commands.append(shlex.split(line.strip()))
    return commands


def test_readme_tfds_build_commands_name_the_builder_and_a_beam_runner(repo_root):
    commands = _readme_tfds_builds(repo_root)
    assert commands
    configs = {c.name for c in mlb.Builder.BUILDER_CONFIGS}
    runners = set()
    for tokens in commands:
        assert (
            tokens[2] == "data/ml_images"
            and (repo_root / tokens[2] / "ml_images_dataset_builder.py").exists()
        )
        flags = dict(t[2:].split("=", 1) for t in tokens[3:] if t.startswith("--"))
        assert flags["config"] in configs and "manual_dir" in flags and "data_dir" in flags
        options = dict(o.split("=", 1) for o in flags["beam_pipeline_options"].split(","))
        runners.add(options["runner"])
    assert {"DirectRunner", "DataflowRunner"} <= runners


# ---------------------------------------------------------------------------------------------------------
# An offline build: DirectRunner would first download Beam's Prism runner from GitHub.
# ---------------------------------------------------------------------------------------------------------


def test_a_direct_runner_build_fetches_nothing_from_the_internet(tmp_path, monkeypatch):
    """The tiny config built with runner=DirectRunner (the README's line) with the network cut: no
    connection is tried and Prism is never started; the examples are all there."""
    from apache_beam.runners.portability import prism_runner

    tried = []

    def no_network(*args, **kwargs):
        tried.append(("connect", args[:2]))
        raise OSError("no network in this test")

    def no_prism(self, *args, **kwargs):
        tried.append(("prism", None))
        raise RuntimeError("Prism is not to be started")

    monkeypatch.setattr(socket, "create_connection", no_network)
    monkeypatch.setattr(socket.socket, "connect", no_network)
    monkeypatch.setattr(prism_runner.PrismRunner, "run_pipeline", no_prism)
    names = ["rgb_0.jpg", "rgb_1.jpg"]
    manual = _make_manual_dir(
        tmp_path,
        train_lines=[f"{name} {i}" for i, name in enumerate(names)],
        val_lines=None,
        files={n: d for n, d in _image_files(np.random.default_rng(0)).items() if n in names},
    )
    builder = _build(manual, tmp_path / "tfds")
    assert not tried
    assert builder.info.splits["train"].num_examples == len(names)


def test_only_direct_runner_is_replaced():
    options = beam.options.pipeline_options.PipelineOptions
    direct = beam.Pipeline(options=options(["--runner=DirectRunner"]))
    assert mlp.run_direct_without_download(direct)
    assert type(direct.runner).__name__ == "DirectFnApiRunner"
    bundle_based = beam.Pipeline(options=options(["--runner=BundleBasedDirectRunner"]))
    runner = bundle_based.runner
    assert not mlp.run_direct_without_download(bundle_based) and bundle_based.runner is runner


# ---------------------------------------------------------------------------------------------------------
# A quiet build: Beam's INFO lines only when asked for.
# ---------------------------------------------------------------------------------------------------------


def test_quiet_beam_sets_the_workers_level_unless_the_options_set_it(monkeypatch):
    monkeypatch.setattr(logging.getLogger("apache_beam"), "level", logging.NOTSET)  # restored afterwards
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    pipeline = beam.Pipeline(options=beam.options.pipeline_options.PipelineOptions(["--runner=DirectRunner"]))
    assert mlp.quiet_beam(pipeline)
    worker = pipeline.options.view_as(beam.options.pipeline_options.WorkerOptions)
    assert worker.default_sdk_harness_log_level == "WARNING"
    assert worker.sdk_harness_log_level_overrides == {"absl": "INFO"}  # our lines, e.g. each split's summary
    assert logging.getLogger("apache_beam").level == logging.WARNING
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "1"
    monkeypatch.setattr(logging.getLogger("apache_beam"), "level", logging.NOTSET)
    asked = beam.options.pipeline_options.PipelineOptions(
        ["--runner=DirectRunner", "--default_sdk_harness_log_level=INFO"]
    )
    assert not mlp.quiet_beam(beam.Pipeline(options=asked))
    assert asked.view_as(beam.options.pipeline_options.WorkerOptions).sdk_harness_log_level_overrides is None
    assert logging.getLogger("apache_beam").level == logging.NOTSET


# Beam's INFO lines of a multi-process build: the type-hint conversions, the job service forwarding each
# worker's lines, the runner's servers, the workers' own start-up.
BEAM_INFO = re.compile(
    r"^INFO(\[(native_type_compatibility|local_job_service|worker_handlers)\.py\]|:apache_beam)"
)


@pytest.mark.slow
def test_tfds_build_prints_our_lines_and_not_beams_info(tmp_path, repo_root):
    """The README's `tfds build` of the tiny config, on 6 images: the summary of each split once, no Beam
    INFO line; with default_sdk_harness_log_level=INFO in the options, Beam's lines are back."""
    names = [f"rgb_{i}.jpg" for i in range(6)]
    manual = _make_manual_dir(
        tmp_path,
        train_lines=[f"{name} {i}" for i, name in enumerate(names)],
        val_lines=[f"{names[0]} 1"],
        files={name: data for name, data in _image_files(np.random.default_rng(0)).items() if name in names},
    )
    options = "runner=DirectRunner,direct_num_workers=0,direct_running_mode=multi_processing"
    outputs = []
    for data_dir, extra in (("quiet", ""), ("verbose", ",default_sdk_harness_log_level=INFO")):
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys; from tensorflow_datasets.scripts.cli.main import launch_cli; sys.exit(launch_cli())",
                "build",
                "data/ml_images",
                "--config=tiny",
                f"--manual_dir={manual}",
                f"--data_dir={tmp_path / data_dir}",
                f"--beam_pipeline_options={options}{extra}",
            ],
            cwd=repo_root,
            capture_output=True,
            text=True,
            timeout=600,
        )
        assert proc.returncode == 0, proc.stderr[-3000:]
        outputs.append((proc.stdout + proc.stderr).splitlines())
    quiet, verbose = outputs
    assert not [line for line in quiet if BEAM_INFO.match(line)]
    for split in ("train", "validation"):
        summary = [line for line in quiet if f"ml_images {split} (" in line]
        assert len(summary) == 1 and "0 line(s) skipped" in summary[0], summary
    assert len([line for line in verbose if BEAM_INFO.match(line)]) > 20  # what the quiet build leaves out


# ---------------------------------------------------------------------------------------------------------
# The `full` config: both parts of ML-Images.
# ---------------------------------------------------------------------------------------------------------


def test_full_config_takes_both_parts_and_gives_the_joined_records(tmp_path):
    """`full` reads the ImageNet IDs from the archive and the downloaded Open Images files; each split is
    both parts, example for example the records of the two parts written by data/tfrecord.py and joined
    (`--join`), with a summary per source."""
    from data.records import manifest as manifest_lib
    from tests import test_imagenet_archive as archive_tests

    manual = tmp_path / "manual"
    (manual / "images").mkdir(parents=True)
    rng = np.random.default_rng(2)
    for i in range(3):
        (manual / "images" / f"photo_{i}.jpg").write_bytes(_jpeg(_pixels(rng, 16 + i, 20)))
    (manual / "train_im_list.txt").write_text("photo_0.jpg 3:0.9 1\nphoto_1.jpg 11165\nmissing.jpg 1\n")
    (manual / "val_im_list.txt").write_text("photo_2.jpg 2\n")
    (manual / "fall11_whole.tar").write_bytes(archive_tests.outer_tar(archive_tests.synset_members()))
    members = archive_tests.member_names()
    ids = [f"{m.split('_')[0]}/{m} {k}:1 {40 + k}:0.8" for k, m in enumerate(members)]
    (manual / "train_image_id_from_imagenet.txt").write_text(
        "\n".join([*ids[:5], "n09999999/n09999999_1.JPEG 5"]) + "\n"
    )
    (manual / "val_image_id_from_imagenet.txt").write_text("\n".join(ids[7:]) + "\n")
    builder = _build(manual, tmp_path / "tfds", config="full")

    records = tmp_path / "records"
    for prefix, open_list, id_list in (
        ("train", "train_im_list.txt", "train_image_id_from_imagenet.txt"),
        ("val", "val_im_list.txt", "val_image_id_from_imagenet.txt"),
    ):
        common = dict(
            output_dir="", label_format="sparse", num_classes=C, shards=1, prefix=prefix, progress=False
        )
        dataset_writer.write_dataset(
            **{**common, "output_dir": str(records / "openimages")},
            image_list=str(manual / open_list),
            image_root=str(manual / "images"),
        )
        dataset_writer.write_dataset(
            **{**common, "output_dir": str(records / "imagenet")},
            image_list=str(manual / id_list),
            image_root=".",
            imagenet_archive=str(manual / "fall11_whole.tar"),
        )
        manifest_lib.join_manifests(
            records,
            [records / "openimages", records / "imagenet"],
            prefix=prefix,
            label_format="sparse",
            num_classes=C,
        )
    for split, prefix, num_examples in (("train", "train", 7), ("validation", "val", 3)):
        ours = _tfds_examples(tmp_path / "tfds", split, name="ml_images/full")
        theirs = _writer_examples(records, prefix)
        assert ours.keys() == theirs.keys() and len(ours) == num_examples
        for name, (image, height, width, label) in ours.items():
            assert image == theirs[name][0] and (height, width) == theirs[name][1:3], name
            np.testing.assert_array_equal(label, theirs[name][3], err_msg=name)
    metadata = builder.info.metadata
    assert metadata["train_imagenet_summary"]["reasons"] == {"synset not in the archive": 1}
    assert metadata["train_openimages_summary"]["reasons"] == {"missing file": 1}
    assert metadata["train_summary"]["num_skipped"] == 2
    assert metadata["validation_imagenet_summary"]["num_skipped"] == 0


def test_full_config_refuses_a_split_with_one_part_in_one_line(tmp_path):
    manual = tmp_path / "manual"
    (manual / "images").mkdir(parents=True)
    (manual / "train_im_list.txt").write_text("a.jpg 1\n")
    with pytest.raises(
        ValueError, match="train_image_id_from_imagenet.txt not found, but .*train_im_list.txt is"
    ):
        _build(manual, tmp_path / "tfds", config="full")
