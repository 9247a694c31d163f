"""``archive``: the writer reading the ImageNet part straight from its archive, against the same images
extracted.

The benchmark JPEGs (`photos.benchmark_images`) are laid out as ImageNet is, in synsets of `SYNSET_IMAGES`
images: (a) an extracted tree ``nXXXXXXXX/nXXXXXXXX_N.JPEG``, (b) a folder of per-synset tars, (c) one
outer tar of those tars, like ``fall11_whole.tar``, and (d) that outer tar gzipped, like
``winter21_whole.tar.gz`` (read front to back by one reader that feeds the workers); with an ID list in the release's format, each synset's
lines together, as in ``train_image_id_from_imagenet.txt``. The layout is built once into ``--image_cache``.
data/tfrecord.py's writer (`write_dataset`, ``verify=full``, sparse labels) then writes the records from
each source in turn, ``--rounds`` times, and the benchmark prints per source and round the records per
second (wall) and the process CPU ms per record (``--workers=1`` keeps the writer in this process, so all
of its work is counted), then each archive against the tree (``archive/ratio``, medians over the rounds).
The records of the four sources are checked to be the same bytes. (The gzipped tar is compressed at level 6,
gzip's default; JPEGs hardly shrink.)
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import statistics
import tarfile
import tempfile

from absl import flags

from tools.benchmarks import photos
from tools.benchmarks.common import Timer, emit, emit_machine

FLAGS_USED: tuple[str, ...] = (*photos.IMAGE_FLAGS, "shards", "workers", "rounds")
SYNSET_IMAGES = 100  # images per synset (the Fall 2011 release averages ~650 over its 21,841 synsets)
SOURCES = ("tree", "synset_tars", "outer_tar", "outer_tar_gz")


def _synset(index: int) -> str:
    return f"n{10_000_000 + index:08d}"


def build_layout(list_path: str, image_root: str, folder: str) -> dict[str, str]:
    """The benchmark images as an extracted tree, per-synset tars and an outer tar (also gzipped), plus their
    ID list, in `folder` (reused when complete); returns the ID list and each source's path."""
    paths = {
        "id_list": os.path.join(folder, "ids.txt"),
        "tree": os.path.join(folder, "tree"),
        "synset_tars": os.path.join(folder, "tars"),
        "outer_tar": os.path.join(folder, "whole.tar"),
        "outer_tar_gz": os.path.join(folder, "whole.tar.gz"),
    }
    if os.path.exists(paths["id_list"]):
        if not os.path.exists(paths["outer_tar_gz"]):  # a layout built before the gzipped source
            _gzip(paths["outer_tar"], paths["outer_tar_gz"])
        return paths
    shutil.rmtree(folder, ignore_errors=True)
    os.makedirs(paths["synset_tars"])
    with open(list_path, encoding="utf-8") as listing:
        entries = [line.rstrip("\n").split("\t", 1) for line in listing]
    id_lines, by_synset = [], {}
    for i, (name, tags) in enumerate(entries):
        synset = _synset(i // SYNSET_IMAGES)
        member = f"{synset}_{i}.JPEG"
        id_lines.append(f"{synset}/{member}\t{tags}\n")
        by_synset.setdefault(synset, []).append((member, os.path.join(image_root, name)))
    for synset, members in by_synset.items():
        os.makedirs(os.path.join(paths["tree"], synset))
        with tarfile.open(os.path.join(paths["synset_tars"], f"{synset}.tar"), "w") as tar:
            for member, source in members:
                shutil.copyfile(source, os.path.join(paths["tree"], synset, member))
                tar.add(source, arcname=member)
    with tarfile.open(paths["outer_tar"], "w") as outer:
        for synset in by_synset:
            outer.add(os.path.join(paths["synset_tars"], f"{synset}.tar"), arcname=f"{synset}.tar")
    _gzip(paths["outer_tar"], paths["outer_tar_gz"])
    with open(paths["id_list"] + ".tmp", "w", encoding="utf-8") as ids:
        ids.writelines(id_lines)
    os.replace(paths["id_list"] + ".tmp", paths["id_list"])  # last: marks the layout complete
    return paths


def _gzip(source: str, target: str) -> None:
    with open(source, "rb") as plain, gzip.open(target + ".tmp", "wb", compresslevel=6) as packed:
        shutil.copyfileobj(plain, packed, 1 << 20)
    os.replace(target + ".tmp", target)


def _shard_digests(out_dir: str) -> list[str]:
    names = sorted(n for n in os.listdir(out_dir) if n.endswith(".tfrecord"))
    digests = []
    for name in names:
        with open(os.path.join(out_dir, name), "rb") as file:
            digests.append(hashlib.sha256(file.read()).hexdigest())
    return digests


def run(f: flags.FlagValues) -> None:
    """Records/s and CPU ms per record of the writer from the tree, the synset tars and the outer tar, plain
    and gzipped."""
    from data.shards import dataset_writer

    emit_machine("archive")
    list_path, names = photos.benchmark_images(f)
    folder = os.path.join(f.image_cache, f"imagenet-{len(names)}-{f.image_width}x{f.image_height}")
    paths = build_layout(list_path, f.image_cache, folder)
    emit(
        "archive/layout",
        images=len(names),
        synsets=-(-len(names) // SYNSET_IMAGES),
        outer_tar_mb=round(os.path.getsize(paths["outer_tar"]) / 1e6, 1),
        outer_tar_gz_mb=round(os.path.getsize(paths["outer_tar_gz"]) / 1e6, 1),
    )
    output_root = tempfile.mkdtemp(prefix="mlimages_archive_benchmark_")
    rates: dict[str, list[float]] = {s: [] for s in SOURCES}
    cpu: dict[str, list[float]] = {s: [] for s in SOURCES}
    digests: dict[str, list[str]] = {}
    try:
        for round_index in range(f.rounds):
            for source in SOURCES:
                out_dir = os.path.join(output_root, source)
                shutil.rmtree(out_dir, ignore_errors=True)
                with Timer() as timer:
                    manifest = dataset_writer.write_dataset(
                        image_list=paths["id_list"],
                        image_root=paths["tree"],
                        output_dir=out_dir,
                        label_format="sparse",
                        num_classes=f.num_classes,
                        shards=f.shards,
                        workers=f.workers,
                        progress=False,
                        imagenet_archive="" if source == "tree" else paths[source],
                    )
                if manifest["num_records"] != len(names):
                    raise RuntimeError(f"{source}: {manifest['num_records']} records of {len(names)}")
                digests[source] = _shard_digests(out_dir)
                rates[source].append(len(names) / timer.wall)
                cpu[source].append(timer.cpu * 1e3 / len(names))
                emit(
                    f"archive/{source}",
                    round=round_index,
                    records_per_s=round(rates[source][-1], 1),
                    cpu_ms_per_record=round(cpu[source][-1], 3),
                    seconds=round(timer.wall, 2),
                    workers=f.workers,
                )
    finally:
        shutil.rmtree(output_root, ignore_errors=True)
    if len({tuple(d) for d in digests.values()}) != 1:
        raise RuntimeError("the archive sources wrote other records than the extracted tree")
    tree_rate, tree_cpu = statistics.median(rates["tree"]), statistics.median(cpu["tree"])
    emit(
        "archive/ratio",
        identical_records=True,
        **{
            f"{source}_vs_tree": {
                "records_per_s": round(statistics.median(rates[source]) / tree_rate, 3),
                "cpu_per_record": round(statistics.median(cpu[source]) / tree_cpu, 3),
            }
            for source in SOURCES[1:]
        },
    )
