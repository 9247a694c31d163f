"""The ImageNet part of ML-Images straight from the archives: a folder of per-synset tars, the outer tar of
them (gzipped or not), or an extracted tree give the same records as data/tfrecord.py on the extracted files;
IDs the archive lacks are skipped with the reason."""

import glob
import gzip
import io
import os
import pathlib
import signal
import subprocess
import sys
import tarfile
import time

import numpy as np
import pytest
from PIL import Image

from data.archives import imagenet
from data.records import schema
from data.shards import archive_feed, dataset_writer, shard_writer

NUM_CLASSES = 20
# synset -> its images in the archive (the list asks for more: see _id_list)
SYNSETS = {"n01440764": 4, "n02102040": 3, "n03000134": 2}


def _image(seed: int, fmt: str = "JPEG") -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (40 + seed, 48, 3), dtype=np.uint8)).save(out, format=fmt)
    return out.getvalue()


def _tar_bytes(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


def synset_members() -> dict[str, dict[str, bytes]]:
    """{synset: {member name: image bytes}}: SYNSETS' images, one of them a PNG (converted the same way
    from both sources)."""
    members_by_synset, seed = {}, 0
    for synset, count in SYNSETS.items():
        members = {}
        for i in range(count):
            fmt = "PNG" if (synset, i) == ("n02102040", 1) else "JPEG"
            members[f"{synset}_{100 + i}.JPEG"] = _image(seed, fmt)
            seed += 1
        members_by_synset[synset] = members
    return members_by_synset


def member_names() -> list[str]:
    return [name for members in synset_members().values() for name in members]


def outer_tar(members_by_synset: dict[str, dict[str, bytes]]) -> bytes:
    """An uncompressed tar of per-synset tars, as `fall11_whole.tar`."""
    return _tar_bytes({f"{synset}.tar": _tar_bytes(members) for synset, members in members_by_synset.items()})


@pytest.fixture(scope="module")
def archives(tmp_path_factory) -> dict[str, pathlib.Path]:
    """The same images as an extracted tree, a folder of per-synset tars and an outer tar of those tars,
    plus an ID list in the release's format that also names a missing synset and a missing image."""
    root = tmp_path_factory.mktemp("imagenet")
    members_by_synset = synset_members()
    tree, tars = root / "tree", root / "tars"
    tars.mkdir()
    for synset, members in members_by_synset.items():
        (tree / synset).mkdir(parents=True)
        for name, data in members.items():
            (tree / synset / name).write_bytes(data)
        (tars / f"{synset}.tar").write_bytes(_tar_bytes(members))
    (root / "fall11_whole.tar").write_bytes(outer_tar(members_by_synset))
    (root / "winter21_whole.tar.gz").write_bytes(gzip.compress(outer_tar(members_by_synset)))
    lines = []
    for k, (synset, count) in enumerate(SYNSETS.items()):
        for i in range(count):
            lines.append(f"{synset}/{synset}_{100 + i}.JPEG\t{k}:1\t{10 + i}:0.9")
        if synset == "n01440764":
            lines.append("n02000000/n02000000_5.JPEG\t3:1")  # a removed synset between two present ones
        if synset == "n02102040":
            lines.append(f"{synset}/{synset}_999.JPEG\t{k}:1")  # an image the archive lacks
    lines.append("n09999999/n09999999_1.JPEG\t7:1")  # a synset later releases removed
    (root / "ids.txt").write_text("\n".join(lines) + "\n")
    return {
        "root": root,
        "tree": tree,
        "tars": tars,
        "outer": root / "fall11_whole.tar",
        "gz": root / "winter21_whole.tar.gz",
        "list": root / "ids.txt",
    }


def _write(archives, out: pathlib.Path, **kwargs) -> dict:
    args = dict(
        image_list=str(archives["list"]),
        image_root=str(archives["tree"]),
        output_dir=str(out),
        label_format="sparse",
        num_classes=NUM_CLASSES,
        shards=2,
        progress=False,
    )
    return dataset_writer.write_dataset(**{**args, **kwargs})


def _shard_bytes(out: pathlib.Path) -> list[bytes]:
    return [pathlib.Path(f).read_bytes() for f in schema.list_record_files(out)]


@pytest.mark.parametrize("source, workers", [("tars", 1), ("outer", 1), ("tree", 1), ("gz", 1), ("gz", 2)])
def test_records_from_an_archive_equal_those_from_the_extracted_files(archives, tmp_path, source, workers):
    extracted = _write(archives, tmp_path / "extracted", shards=3)
    from_archive = _write(
        archives,
        tmp_path / source,
        image_root="/nonexistent",
        imagenet_archive=str(archives[source]),
        workers=workers,
        shards=3,
    )
    assert _shard_bytes(tmp_path / "extracted") != []
    assert _shard_bytes(tmp_path / source) == _shard_bytes(tmp_path / "extracted")
    assert from_archive["num_records"] == extracted["num_records"] == sum(SYNSETS.values())
    reasons = {(s["path"], s["reason"]) for s in from_archive["skipped"]}
    assert reasons == {
        ("n09999999/n09999999_1.JPEG", imagenet.MISSING_SYNSET),
        ("n02000000/n02000000_5.JPEG", imagenet.MISSING_SYNSET),
        ("n02102040/n02102040_999.JPEG", imagenet.MISSING_IMAGE),
    }


def test_each_synset_tar_is_read_once_per_shard(archives, tmp_path, monkeypatch):
    reads = []
    original = imagenet.ImageNetArchive.synset
    monkeypatch.setattr(
        imagenet.ImageNetArchive,
        "synset",
        lambda self, wnid, wanted: reads.append(wnid) or original(self, wnid, wanted),
    )
    _write(archives, tmp_path / "out", imagenet_archive=str(archives["outer"]), shards=1)
    assert reads == [
        "n01440764",
        "n02000000",
        "n02102040",
        "n03000134",
        "n09999999",
    ]  # the ID list is grouped by synset: each tar read once


def test_a_missing_or_non_tar_archive_is_one_line(archives, tmp_path):
    not_a_tar = tmp_path / "winter21_whole.tar.gz"
    not_a_tar.write_bytes(gzip.compress(b"not a tar" * 200))
    with pytest.raises(ValueError, match="winter21_whole.tar.gz is not a tar gzipped file"):
        _write(archives, tmp_path / "gz", imagenet_archive=str(not_a_tar))
    with pytest.raises(ValueError, match="not found"):
        _write(archives, tmp_path / "missing", imagenet_archive=str(tmp_path / "nowhere"))
    assert not os.path.exists(tmp_path / "gz" / "train-manifest.json")


def test_the_tfds_builder_refuses_a_gz_in_one_line(archives):
    from data.ml_images import pipeline

    settings = pipeline.PrepareSettings(
        list_path=str(archives["list"]), image_root="", imagenet_archive=str(archives["gz"])
    )
    with pytest.raises(ValueError, match="is gzipped: Beam workers .* unpack its outer layer"):
        pipeline.read_archive_examples(None, split="train", settings=settings)


@pytest.mark.parametrize("workers", [1, 2])
def test_a_truncated_gz_stops_in_one_line_and_a_rerun_writes_the_same_records(archives, tmp_path, workers):
    """The reader stops at the cut naming the file, the shards it had handed out are finished and kept (also
    those still in a worker when the cut came), and the run repeated on the whole archive keeps them and
    writes the same records as a run without a stop."""
    whole = archives["gz"].read_bytes()
    gz = tmp_path / "winter21_whole.tar.gz"
    gz.write_bytes(whole[: len(whole) * 3 // 4])
    out = tmp_path / "out"
    with pytest.raises(imagenet.ArchiveUnreadable) as stop:
        _write(archives, out, imagenet_archive=str(gz), shards=3, workers=workers)
    assert str(gz) in str(stop.value) and "\n" not in str(stop.value)
    assert "the shards finished so far are kept" in str(stop.value)
    finished = sorted(out.glob("train-*.done.json"))
    assert finished and not (out / "train-manifest.json").exists()  # the first synsets' shard is kept
    kept = {f: f.stat().st_mtime_ns for f in finished}
    gz.write_bytes(whole)
    _write(archives, out, imagenet_archive=str(gz), shards=3)
    _write(archives, tmp_path / "clean", imagenet_archive=str(archives["gz"]), shards=3)
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean")
    assert {f: f.stat().st_mtime_ns for f in finished} == kept


def test_a_corrupt_gz_stops_in_one_line(archives, tmp_path):
    whole = bytearray(archives["gz"].read_bytes())
    whole[len(whole) // 2 : len(whole) // 2 + 64] = bytes(64)  # deflate data overwritten
    gz = tmp_path / "winter21_whole.tar.gz"
    gz.write_bytes(bytes(whole))
    with pytest.raises(imagenet.ArchiveUnreadable, match="winter21_whole.tar.gz: unreadable gzipped archive"):
        _write(archives, tmp_path / "out", imagenet_archive=str(gz), shards=3)


def test_a_list_in_another_synset_order_than_the_gz_stops_at_the_bound(archives, tmp_path):
    """A shard waits for its synsets; when the list's order is not the archive's, what is held grows: past the
    bound, one line that says what to do (and the same list from a folder of tars is fine)."""
    reversed_list = tmp_path / "ids.txt"
    reversed_list.write_text("".join(reversed(archives["list"].read_text().splitlines(keepends=True))))
    with pytest.raises(ValueError, match="not in the archive's synset order; sort it by synset"):
        _write(
            archives,
            tmp_path / "gz",
            image_list=str(reversed_list),
            imagenet_archive=str(archives["gz"]),
            shards=1,
            imagenet_gz_max_held_bytes=1000,
        )
    from_gz = _write(
        archives,
        tmp_path / "gz_ok",
        image_list=str(reversed_list),
        imagenet_archive=str(archives["gz"]),
        shards=1,
    )
    _write(
        archives,
        tmp_path / "tars",
        image_list=str(reversed_list),
        imagenet_archive=str(archives["tars"]),
        shards=1,
    )
    assert _shard_bytes(tmp_path / "gz_ok") == _shard_bytes(tmp_path / "tars")
    assert from_gz["num_records"] == sum(SYNSETS.values())


def test_a_shard_waiting_only_for_a_synset_the_gz_lacks_goes_out_when_the_stream_passes_it(
    archives, tmp_path, monkeypatch
):
    """Later releases dropped synsets: a shard that names one must not wait (holding its images) for the end
    of the archive, but go to a worker as soon as a synset sorting after the missing one has passed."""
    id_list = tmp_path / "ids.txt"  # four shards of two lines each: one synset a shard, n02000000 missing
    synsets = ["n01440764", "n02000000", "n02102040", "n03000134"]
    id_list.write_text("".join(f"{s}/{s}_{100 + i}.JPEG\t1:1\n" for s in synsets for i in range(2)))
    settings = shard_writer.split_settings(
        image_list=str(id_list),
        image_root="",
        output_dir=tmp_path / "out",
        prefix="train",
        label_format="sparse",
        num_classes=NUM_CLASSES,
        shards=4,
        workers=1,
        on_error="skip",
        task_index=0,
        num_tasks=1,
        jpeg_quality=95,
        verify="full",
        max_pixels=0,
        allow_outside_root=False,
        imagenet_archive=str(archives["gz"]),
    )
    tasks = shard_writer.shard_tasks(
        shard_writer.index_for_shards(str(id_list), 4), task_index=0, num_tasks=1, **settings
    )
    stream_at = []
    original = imagenet.ImageNetArchive.stream_synsets

    def recording(self, wanted):
        for synset, found in original(self, wanted):
            stream_at.append(synset)
            yield synset, found

    monkeypatch.setattr(imagenet.ImageNetArchive, "stream_synsets", recording)
    handed_out = [
        (task.index, stream_at[-1], sorted(members))
        for task, members in archive_feed.shard_jobs(tasks, max_held_bytes=10**9)
    ]
    assert handed_out == [
        (0, "n01440764", ["n01440764"]),
        (1, "n02102040", []),  # before n02102040's own shard, long before the end
        (2, "n02102040", ["n02102040"]),
        (3, "n03000134", ["n03000134"]),
    ]


def test_a_gz_whose_synsets_are_not_sorted_is_one_line(archives, tmp_path):
    members = synset_members()
    unsorted = {synset: members[synset] for synset in reversed(members)}
    gz = tmp_path / "winter21_whole.tar.gz"
    gz.write_bytes(gzip.compress(outer_tar(unsorted)))
    with pytest.raises(ValueError, match=r"not in sorted order \(n02102040.tar after n03000134.tar\)"):
        _write(archives, tmp_path / "out", imagenet_archive=str(gz))


def test_a_rerun_rewrites_only_the_unfinished_shards_from_the_archive(archives, tmp_path):
    """The archive path goes through the writer's shard machinery: a shard that a killed run did not finish
    (its file and sidecar absent) is written again, the finished ones are kept as they are."""
    out = tmp_path / "out"
    _write(archives, out, imagenet_archive=str(archives["outer"]), shards=3)
    before = _shard_bytes(out)
    first, second = sorted(out.glob("train-*-of-00003.tfrecord"))[:2]
    kept_mtime = first.stat().st_mtime_ns
    second.unlink()
    second.with_suffix(".done.json").unlink()
    (out / "train-manifest.json").unlink()
    _write(archives, out, imagenet_archive=str(archives["outer"]), shards=3)
    assert _shard_bytes(out) == before and first.stat().st_mtime_ns == kept_mtime


# Loaded by every interpreter of the killed run (main process and pool workers) through PYTHONPATH: shard 1's
# second record waits while the file MLIMAGES_TEST_GATE names exists (a deterministic "mid-run").
_BLOCK_IN_SHARD_1 = """
import os, time
gate = os.environ.get("MLIMAGES_TEST_GATE", "")
if gate:
    from data.shards import shard_writer

    write_records = shard_writer.write_records

    def blocking(task, results, report=None):
        def gated():
            for i, result in enumerate(results):
                while task.index == 1 and i == 1 and os.path.exists(gate):
                    time.sleep(0.05)
                yield result

        return write_records(task, gated(), report)

    shard_writer.write_records = blocking
"""


@pytest.mark.slow
def test_kill_9_mid_run_from_a_gz_then_rerun_gives_the_same_records(archives, tmp_path, repo_root):
    """data/tfrecord.py on the gzipped archive, killed (-9, the whole process group) while it writes shard 1
    of 3, then run again: shard 0 is kept as it was, the records are those of a run that was not stopped."""
    gate, site, out = tmp_path / "gate", tmp_path / "site", tmp_path / "out"
    gate.touch()
    site.mkdir()
    (site / "sitecustomize.py").write_text(_BLOCK_IN_SHARD_1)
    env = {**os.environ, "PYTHONPATH": str(repo_root), "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [
        sys.executable,
        str(repo_root / "data" / "tfrecord.py"),
        f"--image_list={archives['list']}",
        f"--imagenet_archive={archives['gz']}",
        f"--output_dir={out}",
        "--label_format=sparse",
        f"--num_classes={NUM_CLASSES}",
        "--shards=3",
        "--workers=2",
    ]
    blocking_env = {**env, "PYTHONPATH": f"{site}{os.pathsep}{repo_root}", "MLIMAGES_TEST_GATE": str(gate)}
    process = subprocess.Popen(
        command, env=blocking_env, cwd=repo_root, start_new_session=True, stderr=subprocess.DEVNULL
    )
    try:
        deadline = time.monotonic() + 120
        while not (
            (out / "train-00000-of-00003.done.json").exists()
            and glob.glob(str(out / ".train-00001-of-00003.tfrecord.*.tmp"))
        ):
            assert time.monotonic() < deadline and process.poll() is None, (
                "the writer did not block in shard 1"
            )
            time.sleep(0.1)
    finally:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)
    assert not (out / "train-manifest.json").exists()
    inode = os.stat(out / "train-00000-of-00003.tfrecord").st_ino

    gate.unlink()
    rerun = subprocess.run(command, capture_output=True, text=True, env=env, cwd=repo_root, timeout=300)
    assert rerun.returncode == 0, rerun.stderr
    assert os.stat(out / "train-00000-of-00003.tfrecord").st_ino == inode  # not rewritten
    _write(archives, tmp_path / "clean", imagenet_archive=str(archives["gz"]), shards=3)
    assert _shard_bytes(out) == _shard_bytes(tmp_path / "clean")
    assert not glob.glob(str(out / ".*.tmp"))
