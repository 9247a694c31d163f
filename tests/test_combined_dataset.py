"""One record set from both parts of ML-Images: the ImageNet part read by image ID from the archive, the Open
Images part downloaded straight into records, then `data/tfrecord.py --join` (README.md, "One record set
from both parts"), run in this process on tiny inputs, train and val, and read back as training reads it."""

import http.server
import io
import pathlib

import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from data import download as download_script
from data import fileio
from data import tfrecord as tfrecord_script
from data.records import schema
from tests import local_http, scripts
from tests import test_imagenet_archive as archive_tests
from training import input_pipeline

NUM_CLASSES = 11166
RECORDS = "mlimages_records"
PARTS = f"--join={RECORDS}/imagenet,{RECORDS}/openimages"


def _jpeg(seed: int) -> bytes:
    rng = np.random.default_rng(seed)
    out = io.BytesIO()
    Image.fromarray(rng.integers(0, 255, (20 + seed, 24, 3), dtype=np.uint8)).save(out, format="JPEG")
    return out.getvalue()


# Flickr originals as the release's URL lists name them; any other path is a 404.
PHOTOS = {f"/{2000 + i}/{1557324960 + i}_1ae893fed8_o.jpg": _jpeg(i) for i in range(6)}


class PhotoHost(http.server.BaseHTTPRequestHandler):
    """PHOTOS by path; anything else is a 404."""

    def do_GET(self):  # noqa: N802 (http.server's name)
        body = PHOTOS.get(self.path, b"")
        self.send_response(200 if body else 404)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


def _id(member: str) -> str:
    return f"{member.split('_')[0]}/{member}"


def write_inputs(folder: pathlib.Path, base: str) -> dict[str, dict[str, tuple[int, dict[str, int]]]]:
    """The release's four lists and `fall11_whole.tar`, tiny, in `folder`; returns what the joined
    manifests must say: {split: {source: (records, skipped per reason)}}."""
    (folder / "fall11_whole.tar").write_bytes(archive_tests.outer_tar(archive_tests.synset_members()))
    members = archive_tests.member_names()  # 9 images: 4 + 3 + 2 of three synsets
    train_ids = [f"{_id(m)}\t{k}:1\t{100 + k}:0.9" for k, m in enumerate(members[:7])]
    train_ids += [
        "n09999999/n09999999_1.JPEG\t5:1",  # a synset the archive lacks
        "n01440764/n01440764_999.JPEG\t5:1",  # an image the archive lacks
        f"{_id(members[7])}\t{NUM_CLASSES}:1",  # a class index outside the 11,166 classes
    ]
    val_ids = [f"{_id(members[8])}\t8:1", f"{_id(members[0])}\t0:1\t7:0.8"]
    photos = sorted(PHOTOS)
    train_urls = [f"{base}{path}\t{20 + k}:1\t{11165 - k}:0.9" for k, path in enumerate(photos[:4])]
    train_urls += [f"{base}/1/missing_o.jpg\t3:1", f"{base}{photos[4]}\t{NUM_CLASSES + 5}:1"]
    val_urls = [f"{base}{path}\t{30 + k}:1" for k, path in enumerate(photos[4:])]
    for name, lines in (
        ("train_image_id_from_imagenet.txt", train_ids),
        ("val_image_id_from_imagenet.txt", val_ids),
        ("train_urls.txt", train_urls),
        ("val_urls.txt", val_urls),
    ):
        (folder / name).write_text("\n".join(lines) + "\n")
    missing = {"synset not in the archive": 1, "not in the archive": 1, "bad line": 1}
    return {
        "train": {"imagenet": (7, missing), "openimages": (4, {"http 404": 1, "bad line": 1})},
        "val": {"imagenet": (2, {}), "openimages": (2, {})},
    }


def _write_imagenet_part(ids: str, out: str, prefix: str, *extra: str) -> None:
    scripts.run_in_process(
        tfrecord_script,
        [
            f"--image_list={ids}",
            "--imagenet_archive=fall11_whole.tar",
            f"--output_dir={out}",
            f"--prefix={prefix}",
            "--label_format=sparse",
            f"--num_classes={NUM_CLASSES}",
            "--shards=2",
            "--workers=1",
            "--noprogress",
            *extra,
        ],
    )


def _join(prefix: str, *args: str) -> None:
    scripts.run_in_process(
        tfrecord_script,
        [
            PARTS,
            f"--output_dir={RECORDS}",
            f"--prefix={prefix}",
            "--label_format=sparse",
            f"--num_classes={NUM_CLASSES}",
            *args,
        ],
    )


def run_sequence(prefix: str) -> None:
    """The README's three commands of one split: ImageNet part, Open Images part, join."""
    _write_imagenet_part(f"{prefix}_image_id_from_imagenet.txt", f"{RECORDS}/imagenet", prefix)
    scripts.run_in_process(
        download_script,
        [
            f"--url_list={prefix}_urls.txt",
            f"--output_records={RECORDS}/openimages",
            f"--prefix={prefix}",
            "--label_format=sparse",
            f"--num_classes={NUM_CLASSES}",
            "--shards=2",
            "--workers=1",
            "--threads=2",
            "--retries=0",
            "--allow_private_addresses",  # the image host is a server on 127.0.0.1
            "--noprogress",
        ],
    )
    _join(prefix)


def _examples(files) -> list[tf.train.Example]:
    return [tf.train.Example.FromString(r) for r in tf.data.TFRecordDataset(list(files)).as_numpy_iterator()]


def _refusal(prefix: str, *args: str) -> str:
    """The one line a refused join exits with."""
    with pytest.raises(SystemExit) as refused:
        _join(prefix, *args)
    message = str(refused.value.code)
    assert message.startswith("tfrecord.py: error: ") and "\n" not in message, message
    return message


@pytest.fixture(scope="module")
def joined(tmp_path_factory):
    """Both splits written and joined as the README does, from inside the folder of the lists; the image
    host is a local server."""
    folder = tmp_path_factory.mktemp("combined")
    httpd, base = local_http.local_server(PhotoHost)
    with pytest.MonkeyPatch.context() as patch, local_http.serving(httpd):
        local_http.clear_proxies(patch)
        patch.chdir(folder)
        expected = write_inputs(folder, base)
        for prefix in ("train", "val"):
            run_sequence(prefix)
    return folder, expected


def test_both_parts_become_one_split_with_per_source_counts(joined, monkeypatch):
    folder, expected = joined
    monkeypatch.chdir(folder)
    for prefix, sources in expected.items():
        source = input_pipeline.tfrecord_source(RECORDS, prefix, num_classes=NUM_CLASSES)
        total = sum(records for records, _ in sources.values())
        assert source.num_records == total and source.record_label_format == "sparse"
        examples = _examples(source.record_files)
        assert len(examples) == total
        tags = [i for e in examples for i in e.features.feature[schema.LABEL_INDICES_KEY].int64_list.value]
        assert tags and max(tags) < NUM_CLASSES
        names = [e.features.feature[schema.NAME_KEY].bytes_list.value[0].decode() for e in examples]
        assert sum(name.startswith("n0") for name in names) == sources["imagenet"][0]

        manifest = fileio.read_json(folder / RECORDS / f"{prefix}-manifest.json")
        counts = {name: (s["num_records"], s["skipped_by_reason"]) for name, s in manifest["sources"].items()}
        assert counts == expected[prefix]
        assert manifest["num_skipped"] == sum(sum(r.values()) for _, r in sources.values())
        assert {shard["source"] for shard in manifest["shards"]} == set(sources)
        assert all(s["image_list"]["sha256"] for s in manifest["sources"].values())

    before = (folder / RECORDS / "train-manifest.json").read_bytes()
    _join("train")  # joining again (after a part was finished by a re-run, say) writes the same manifest
    assert (folder / RECORDS / "train-manifest.json").read_bytes() == before


def test_a_part_of_another_label_space_or_format_is_refused_in_one_line(joined, monkeypatch):
    folder, _ = joined
    monkeypatch.chdir(folder)
    members = archive_tests.member_names()
    (folder / "wide_ids.txt").write_text(f"{_id(members[1])}\t15000:1\n")  # fine with 20,000 classes
    _write_imagenet_part("wide_ids.txt", f"{RECORDS}/wide", "train", "--num_classes=20000")
    message = _refusal("train", f"--join={RECORDS}/imagenet,{RECORDS}/wide")
    assert "--num_classes=20000" in message and str(NUM_CLASSES) in message

    (folder / "dense_ids.txt").write_text(f"{_id(members[2])}\t3:1\n")
    _write_imagenet_part("dense_ids.txt", f"{RECORDS}/dense", "train", "--label_format=dense")
    assert "--label_format=dense" in _refusal("train", f"--join={RECORDS}/imagenet,{RECORDS}/dense")

    assert "given twice" in _refusal("train", f"--join={RECORDS}/imagenet,{RECORDS}/imagenet/")
    _write_imagenet_part("train_image_id_from_imagenet.txt", f"{RECORDS}/again", "train")
    assert "same list" in _refusal("train", f"--join={RECORDS}/imagenet,{RECORDS}/again")
    # The joined manifest must not replace the manifest of a split written in its folder.
    with pytest.raises(SystemExit, match="not a joined manifest"):
        scripts.run_in_process(tfrecord_script, [PARTS, f"--output_dir={RECORDS}/imagenet", "--prefix=train"])
    assert input_pipeline.tfrecord_source(RECORDS, "train", num_classes=NUM_CLASSES).num_records == 11
