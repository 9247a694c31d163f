"""README.md as an executed document: every shell line it prints runs here as printed, or is listed in
`LINES` with the reason it cannot run on one CPU machine.

The lines are read from README.md itself (`tests.test_readme.code_lines`), so the README and this test
cannot drift: a line that no entry of `LINES` claims, or an entry whose line is gone, fails
`test_every_readme_line_is_run_or_skipped_with_a_reason`, and a README edit that breaks a command (a wrong
flag, a wrong path) fails the scenario that runs it. Each scenario runs its lines in README order with
`bash -c`, in a fresh working directory laid out as a clone (the repository's top-level entries and `.venv`
linked in, nothing else), with the virtual environment activated as the README asks, so that relative paths
mean what they mean to a user. Where the README's sizes are too large for a test, the entry appends flags
(`append`, later flags win) and says why; nothing else about a line is changed.
"""

from __future__ import annotations

import dataclasses
import http.server
import io
import json
import os
import pathlib
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data.records import schema
from tests import datasets, local_http
from tests import test_combined_dataset as combined
from tests import test_imagenet_archive as archive_tests
from tests.conftest import REPO_ROOT
from tests.test_readme import code_lines
from tools import subset as subset_tool

README = (REPO_ROOT / "README.md").read_text(encoding="utf-8")
VENV = pathlib.Path(sys.executable).parent.parent
# What a clone holds that the commands use (never the outputs of an earlier run).
CLONE_ENTRIES = (
    "README.md",
    "setup.py",
    "train.py",
    "finetune.py",
    "evaluate.py",
    "data",
    "models",
    "training",
    "tools",
)

LOCAL_HOST = ("--allow_private_addresses",)  # the image hosts are a server on 127.0.0.1 here
TINY_PART = "a few images per part, in 2 shards"  # the combined block's parts, at test size
TINY_DEMO = ("--train_steps=40", "--checkpoint_every=20")  # the demo's 3,000 steps take minutes


@dataclasses.dataclass(frozen=True)
class Line:
    """How one README line is tested: run by `scenario`, or skipped (`scenario="skip"`) for `why`."""

    pattern: str  # re.search on the README line: which line this is
    scenario: str
    why: str = ""  # for a skip, why it cannot run here; for a run with `append`, why those flags
    append: tuple[str, ...] = ()


LINES = (
    Line(
        r"^bash tools/install\.sh$",
        "skip",
        "tools/run_tests.sh ran it before this suite (install.sh's own test is test_install_script.py)",
    ),
    Line(
        r"^\.venv/bin/python train\.py --recipe=demo ",
        "demo",
        "the demo's 3,000 steps, shortened; a checkpoint every 20 to kill -9 after",
        TINY_DEMO,
    ),
    Line(r"^bash tools/run_tests\.sh$", "skip", "it is this suite"),
    Line(r"^horovodrun -np 128 python train\.py", "skip", "128 GPUs and the 17.6M-image record set"),
    Line(
        r"^python finetune\.py .*--tfds_name=imagenet2012",
        "skip",
        "the real ImageNet archives and a pre-training run on ML-Images",
    ),
    Line(
        r"^python evaluate\.py .*--checkpoint=runs/pretrain",
        "skip",
        "the real ML-Images records and a pre-training run",
    ),
    Line(r"^python train\.py --dry_run ", "dry_run"),
    Line(r"^python finetune\.py .*--dry_run ", "dry_run"),
    Line(
        r"^horovodrun --gloo ",
        "demo",
        "200 steps on 2 ranks, shortened",
        ("--train_steps=10",),
    ),
    Line(r"^python data/demo\.py ", "demo"),
    Line(
        r"^python finetune\.py .*--init_checkpoint=demo_run",
        "demo",
        "200 steps, shortened (the size switch moved into them)",
        ("--train_steps=20", "--image_sizes=56,64@10"),
    ),
    Line(r"^python evaluate\.py .*--checkpoint=demo_run", "demo"),
    Line(
        r"^python data/download\.py .*--output_dir=",
        "dataset",
        "the image hosts are a server on 127.0.0.1",
        LOCAL_HOST,
    ),
    Line(
        r"^python data/tfrecord\.py .*--image_root=",
        "dataset",
    ),
    Line(
        r"^python data/download\.py (?!.*mlimages_records).*--output_records=",
        "one_pass",
        "the image hosts are a server on 127.0.0.1",
        LOCAL_HOST,
    ),
    Line(r"^python data/tfrecord\.py (?!.*mlimages_records).*--imagenet_archive=", "dataset"),
    Line(
        r"^python data/tfrecord\.py .*--imagenet_archive=.*--output_dir=mlimages_records/imagenet --prefix=train ",
        "combined",
        TINY_PART,
        ("--shards=2", "--workers=1"),
    ),
    Line(
        r"^python data/download\.py .*--output_records=mlimages_records/openimages --prefix=train ",
        "combined",
        TINY_PART + "; the image hosts are a server on 127.0.0.1",
        ("--shards=2", "--workers=1", *LOCAL_HOST),
    ),
    Line(r"^python data/tfrecord\.py --join=.* --prefix=train ", "combined"),
    Line(
        r"^python data/tfrecord\.py .*--imagenet_archive=.*--output_dir=mlimages_records/imagenet --prefix=val ",
        "combined",
        TINY_PART,
        ("--shards=2", "--workers=1"),
    ),
    Line(
        r"^python data/download\.py .*--output_records=mlimages_records/openimages --prefix=val ",
        "combined",
        TINY_PART + "; the image hosts are a server on 127.0.0.1",
        ("--shards=2", "--workers=1", *LOCAL_HOST),
    ),
    Line(r"^python data/tfrecord\.py --join=.* --prefix=val ", "combined"),
    Line(r"^python tools/subset\.py ", "dataset"),
    Line(r"^python tools/dataset_stats\.py ", "dataset"),
    Line(r"^tfds build .*--config=tiny ", "dataset"),
    Line(
        r"^tfds build .*runner=DataflowRunner",
        "skip",
        "Google Cloud Dataflow and the full list of images",
    ),
    Line(
        r"^tfds build .*runner=FlinkRunner",
        "skip",
        "a Flink cluster and the full list of images",
    ),
    Line(
        r"^python train\.py .*--tfds_name=ml_images/full",
        "skip",
        "the full ml_images build (17.6M images); the tiny build is trained on in test_tfds_builder.py",
    ),
    Line(
        r"^python tools/convert_checkpoint\.py ",
        "released",
    ),
    Line(r"^python tools/image_classification\.py ", "released"),
    Line(r"^python tools/extract_feature\.py ", "released"),
    Line(r"^python tools/export\.py ", "released"),
    Line(
        r"^python train\.py .*--init_optimizer_state",
        "released",
        "the reference run's ResNet-101 at 224 for 440k steps, made the tiny release checkpoint's network for 2 steps after its 2",
        (
            "--depth=14",
            "--base_width=8",
            "--num_classes=30",
            "--image_sizes=32",
            "--per_rank_batch=4",
            "--noscale_schedule",
            "--train_steps=4",
        ),
    ),
)


def readme_lines() -> list[str]:
    """Every shell line of the README's ```bash blocks (commands joined by `&&` apart), in order."""
    return code_lines(README)


def entry(line: str) -> Line:
    """The one entry of `LINES` that claims `line` (patterns name a line by its script and what sets it apart
    from the others, so that a changed flag still reaches the scenario that runs it, and fails there)."""
    matches = [e for e in LINES if re.search(e.pattern, line)]
    assert len(matches) == 1, f"README line {line!r} is claimed by {len(matches)} entries of LINES"
    return matches[0]


def scenario_lines(scenario: str) -> list[tuple[str, Line]]:
    """The README lines `scenario` runs, in README order, each with its entry."""
    return [(line, entry(line)) for line in readme_lines() if entry(line).scenario == scenario]


def test_every_readme_line_is_run_or_skipped_with_a_reason():
    lines = readme_lines()
    for line in lines:
        matches = [e.pattern for e in LINES if re.search(e.pattern, line)]
        assert len(matches) == 1, (
            f"README line {line!r} is claimed by {len(matches)} entries of LINES: {matches}"
        )
    for e in LINES:
        assert any(re.search(e.pattern, line) for line in lines), f"no README line matches {e.pattern!r}"
        assert e.scenario != "skip" or e.why, e.pattern
        assert not e.append or e.why, f"{e.pattern}: appended flags need a reason"


# ---------------------------------------------------------------------------------------------------------
# Running a line as a user's shell does.
# ---------------------------------------------------------------------------------------------------------


def clone_layout(folder: pathlib.Path) -> pathlib.Path:
    """`folder` made into what a fresh clone after the Quickstart looks like (links to this checkout)."""
    folder.mkdir(parents=True, exist_ok=True)
    for name in CLONE_ENTRIES:
        (folder / name).symlink_to(REPO_ROOT / name)
    (folder / ".venv").symlink_to(VENV)
    return folder


def user_env() -> dict[str, str]:
    """The environment of a shell with the virtual environment activated, no proxy, no PYTHONPATH."""
    env = {k: v for k, v in os.environ.items() if k not in local_http.PROXY_VARIABLES and k != "PYTHONPATH"}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(VENV)
    return env


def command(line: str, e: Line) -> str:
    return " ".join([line, *map(shlex.quote, e.append)])


def run(line: str, e: Line, cwd: pathlib.Path, *, timeout: int = 900) -> subprocess.CompletedProcess:
    """Runs the README `line` (with its entry's appended flags) in `cwd`; fails the test unless it exits 0."""
    proc = subprocess.run(
        ["bash", "-c", command(line, e)],
        cwd=cwd,
        env=user_env(),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, (
        f"{line}\nexit {proc.returncode}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    )
    return proc


def final(proc: subprocess.CompletedProcess) -> dict:
    """The `{"final": ...}` JSON object train.py and finetune.py print last (horovodrun prefixes the line
    with `[rank]<stdout>:`)."""
    last = proc.stdout.strip().splitlines()[-1]
    return json.loads(last[last.index('{"final"') :])["final"]


# ---------------------------------------------------------------------------------------------------------
# The scenarios.
# ---------------------------------------------------------------------------------------------------------


def test_dry_runs_print_the_published_values(tmp_path):
    """The two --dry_run lines print the learning rates, steps and sizes the README claims for them."""
    # The README's claims, as printed in its recipe table.
    assert "warm-up 0.01 x1.297 / 4,400 steps, then 0.08" in README and "440k steps at 4096" in README
    assert "lr 0.1 x 0.1^floor(step/150k), 600k steps at 256" in README
    assert "ckpt2 with 224, then 299 from step 300k" in README
    (pretrain, e1), (ckpt3, e2) = scenario_lines("dry_run")
    cwd = clone_layout(tmp_path / "clone")
    report = json.loads(run(pretrain, e1, cwd).stdout)
    assert (
        report["schedule"]["reference_global_batch"] == 4096 and report["schedule"]["train_steps"] == 440_000
    )
    lr = {int(k): v for k, v in report["lr"].items()}
    assert lr[0] == lr[4399] == 0.01 and lr[4400] == pytest.approx(0.01 * 1.297)
    assert lr[35200] == 0.08 and lr[35199] < 0.08  # the reference's jump at the end of the warm-up
    report = json.loads(run(ckpt3, e2, cwd).stdout)
    assert (
        report["schedule"]["reference_global_batch"] == 256 and report["schedule"]["train_steps"] == 600_000
    )
    lr = {int(k): v for k, v in report["lr"].items()}
    assert lr == {0: 0.1, 150_000: pytest.approx(0.01), 300_000: pytest.approx(0.001)}
    sizes = {int(k): v for k, v in report["image_size"].items()}
    assert sizes == {0: 224, 150_000: 224, 300_000: 299}


def _wait_for(predicate, proc: subprocess.Popen, *, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert proc.poll() is None, f"the process ended ({proc.returncode}) before {what}"
        assert time.monotonic() < deadline, f"no {what} after {timeout} s"
        time.sleep(0.2)


def _listed_checkpoints(model_dir: pathlib.Path) -> str:
    state = model_dir / "checkpoint"
    return state.read_text() if state.exists() else ""


@pytest.mark.slow
@pytest.mark.horovod
def test_quickstart_demo_kill9_and_the_tiny_data_block(tmp_path):
    """The Quickstart demo killed with kill -9 after its first checkpoint, then the same command again (it
    resumes), then the tiny-data block in order: 2 ranks, the demo data's CLI, finetune and evaluate from
    the relative `demo_run`."""
    cwd = clone_layout(tmp_path / "clone")
    (demo, e), two_ranks, write_demo, finetune, evaluate = scenario_lines("demo")
    proc = subprocess.Popen(
        ["bash", "-c", "exec " + command(demo, e)],
        cwd=cwd,
        env=user_env(),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        _wait_for(
            lambda: '"ckpt-20"' in _listed_checkpoints(cwd / "demo_run"),
            proc,
            timeout=600,
            what="checkpoint ckpt-20",
        )
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
    again = run(demo, e, cwd)
    assert "resumed from" in again.stderr and "damaged" not in again.stderr, again.stderr[-3000:]
    report = json.loads((cwd / "demo_run" / "demo_report.json").read_text())
    assert report["steps"] == 40, report

    assert final(run(*two_ranks, cwd))["steps"] == 10  # --train_steps counts steps as run (global batch 64)
    run(*write_demo, cwd)
    assert (cwd / "demo_run" / "data_single" / "train-manifest.json").exists()
    out = final(run(*finetune, cwd))
    assert out["step"] == 20
    evaluated = run(*evaluate, cwd)
    assert "mAP" in evaluated.stdout + evaluated.stderr


# The dataset block: a local HTTP server stands in for the image hosts.
NUM_URL_IMAGES = 24


def _photos() -> dict[str, bytes]:
    """Small JPEGs named like the release's Flickr originals (`<farm>/<id>_o.jpg`)."""
    rng = np.random.default_rng(7)
    photos = {}
    for i in range(NUM_URL_IMAGES):
        pixels = rng.integers(0, 255, (48 + i, 64, 3), dtype=np.uint8)
        out = io.BytesIO()
        Image.fromarray(pixels).save(out, format="JPEG", quality=85)
        photos[f"/{2000 + i}/{1557324960 + i}_1ae893fed8_o.jpg"] = out.getvalue()
    return photos


@pytest.fixture(scope="module")
def image_host():
    photos = _photos()

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            body = photos.get(self.path)
            self.send_response(200 if body else 404)
            self.send_header("Content-Type", "image/jpeg")
            self.send_header("Content-Length", str(len(body or b"")))
            self.end_headers()
            self.wfile.write(body or b"")

        def log_message(self, *args):
            pass

    httpd, base = local_http.local_server(Handler)
    with local_http.serving(httpd):
        yield base, sorted(photos)


def _url_list(folder: pathlib.Path, base: str, paths: list[str]) -> None:
    """train_urls.txt in the release's format: URL, then `class:confidence` tags (indices of 11,166)."""
    rng = np.random.default_rng(3)
    lines = []
    for path in paths:
        tags = sorted(set(rng.integers(0, 11166, 5).tolist()) | {1, 2})
        lines.append("\t".join([base + path, *(f"{t}:1" for t in tags)]))
    (folder / "train_urls.txt").write_text("\n".join(lines) + "\n")


def _record_names(records: pathlib.Path) -> set[str]:
    manifest = schema.read_manifest(str(records), "train")
    names = set()
    for record in tf.data.TFRecordDataset(list(manifest.files)).as_numpy_iterator():
        names.add(tf.train.Example.FromString(record).features.feature["name"].bytes_list.value[0])
    return names


@pytest.mark.slow
def test_dataset_building_block(tmp_path, image_host):
    """Download, write, subset and stats as printed, then `tfds build` of the tiny config; the one-pass
    alternative in a clone of its own writes the same images."""
    base, paths = image_host
    cwd = clone_layout(tmp_path / "clone")
    _url_list(cwd, base, paths)
    download, write, write_imagenet, subset, stats, tfds_build = scenario_lines("dataset")
    run(*download, cwd)
    listed = (cwd / "train_im_list.txt").read_text().splitlines()
    assert len(listed) == NUM_URL_IMAGES and all((cwd / "images" / x.split()[0]).is_file() for x in listed)
    run(*write, cwd)
    manifest = schema.read_manifest(str(cwd / "records"), "train")
    assert sum(manifest.counts) == NUM_URL_IMAGES and manifest.num_classes == 11166
    # The ImageNet part: an outer tar of per-synset tars and an ID list, in the release's names.
    (cwd / "fall11_whole.tar").write_bytes(archive_tests.outer_tar(archive_tests.synset_members()))
    ids = [f"{member.split('_')[0]}/{member}\t{k}:1" for k, member in enumerate(archive_tests.member_names())]
    (cwd / "train_image_id_from_imagenet.txt").write_text("\n".join(ids) + "\n")
    run(*write_imagenet, cwd)
    assert sum(schema.read_manifest(str(cwd / "records_imagenet"), "train").counts) == len(ids)
    run(*subset, cwd)
    # The names embed the local server's port, so which lines a 10 % hash sample keeps changes per run: the
    # expected lines are those whose seeded hash (the README's --seed=0) is below 0.1.
    kept = [x.split()[0] for x in (cwd / "train_10pct.txt").read_text().splitlines()]
    names = [x.split()[0] for x in listed]
    assert kept == [x for x in names if subset_tool.line_uniforms(x, 0)[0] < 0.1]
    shown = run(*stats, cwd)
    assert json.loads((cwd / "stats.json").read_text()) and list((cwd / "plots").glob("*.png"))
    assert shown.stdout.strip(), "dataset_stats.py printed no summary"

    # The tiny config's manual folder, as the README describes it: the lists and the images they name.
    manual = cwd / "mlimages"
    shutil.copytree(cwd / "images", manual / "images")
    (manual / "train_im_list_tiny.txt").write_text("\n".join(listed[:16]) + "\n")
    (manual / "val_im_list_tiny.txt").write_text("\n".join(listed[16:]) + "\n")
    built = run(*tfds_build, cwd)
    printed = (built.stdout + built.stderr).splitlines()
    beam_info = [x for x in printed if x.startswith("INFO:apache_beam")]  # ~150 of them when not quiet
    assert not beam_info and len(printed) < 100, "\n".join(printed[-100:])
    info = json.loads(next((cwd / "tfds_data").glob("ml_images/tiny/*/dataset_info.json")).read_text())
    counts = {
        s["name"]: int(s["shardLengths"][0])
        if len(s["shardLengths"]) == 1
        else sum(map(int, s["shardLengths"]))
        for s in info["splits"]
    }
    assert counts == {"train": 16, "validation": NUM_URL_IMAGES - 16}

    ((one_pass, e),) = scenario_lines("one_pass")
    other = clone_layout(tmp_path / "one_pass")
    _url_list(other, base, paths)
    run(one_pass, e, other)
    assert _record_names(other / "records") == _record_names(cwd / "records")


@pytest.mark.slow
def test_combined_dataset_block(tmp_path):
    """Both parts of ML-Images, train and val, then the joins, as printed (tiny lists and archive from
    tests/test_combined_dataset.py); each joined split has both sources' records and skip reasons."""
    cwd = clone_layout(tmp_path / "clone")
    httpd, base = local_http.local_server(combined.PhotoHost)
    with local_http.serving(httpd):
        expected = combined.write_inputs(cwd, base)
        for line, e in scenario_lines("combined"):
            run(line, e, cwd)
    for prefix, sources in expected.items():
        manifest = schema.read_manifest(str(cwd / combined.RECORDS), prefix)
        assert manifest.num_records == sum(records for records, _ in sources.values())
        joined = json.loads((cwd / combined.RECORDS / f"{prefix}-manifest.json").read_text())
        counts = {name: (s["num_records"], s["skipped_by_reason"]) for name, s in joined["sources"].items()}
        assert counts == sources


@pytest.fixture(scope="module")
def released_clone(tmp_path_factory):
    """A clone holding what the README's "released checkpoints" block names: a checkpoint saved by the
    release's TF1 graph (tests/release_graph.py, at test size, 30 classes) as
    `ckpt-resnet101-mlimages/model.ckpt`, a hierarchy of those 30 classes, two JPEGs, an image list and
    records of the same classes."""
    pytest.importorskip("tf_keras", reason="tf-keras (the dev extra) runs the TF1 graph code")
    root = tmp_path_factory.mktemp("released")
    graph = root / "graph"
    env = dict(os.environ, TF_USE_LEGACY_KERAS="1", TF_CPP_MIN_LOG_LEVEL="2", PYTHONPATH=str(REPO_ROOT))
    proc = subprocess.run(
        [sys.executable, str(REPO_ROOT / "tests" / "release_graph.py"), str(graph)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    cwd = clone_layout(root / "clone")
    (cwd / "ckpt-resnet101-mlimages").mkdir()
    for f in (graph / "pretrain").glob("model.ckpt-2.*"):
        shutil.copy(f, cwd / "ckpt-resnet101-mlimages" / f.name.replace("model.ckpt-2", "model.ckpt"))
    demo = datasets.multilabel(root / "demo")
    shutil.copy(demo.hierarchy_path, cwd / "dictionary_and_semantic_hierarchy.txt")
    (cwd / "records").symlink_to(demo.data_dir)
    rng = np.random.default_rng(0)
    for i in range(2):
        Image.fromarray(rng.integers(0, 255, (300, 400, 3), dtype=np.uint8)).save(cwd / f"im_{i}.jpg")
    (cwd / "images.txt").write_text("im_0.jpg\nim_1.jpg\n")
    return cwd


@pytest.mark.slow
def test_released_checkpoints_block_and_the_python_example(released_clone, monkeypatch, capsys):
    cwd = released_clone
    convert, classify, features, export, continued = scenario_lines("released")
    run(*convert, cwd)
    assert (cwd / "converted" / "ckpt.index").exists()
    shown = run(*classify, cwd)
    assert shown.stdout.count("im_") >= 2, shown.stdout
    run(*features, cwd)
    with np.load(cwd / "features.npz") as f:
        assert any(f[k].shape[0] == 2 for k in f.files)
    run(*export, cwd)
    assert (cwd / "exported" / "mlimages" / "model.keras").exists()
    out = final(run(*continued, cwd))
    assert out["step"] == 4  # the release run's 2 steps, continued for 2 more

    # The Python example, executed as printed in the same folder.
    section = README.split("## Use the pretrained network in Python", 1)[1]
    code = re.search(r"```python\n(.*?)```", section, flags=re.S).group(1)
    monkeypatch.chdir(cwd)
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    printed = capsys.readouterr().out.strip().splitlines()
    assert len(printed) == 2 and printed[0].startswith("[(") and printed[0].count("(") == 5
    assert namespace["features"].shape[0] == 2
