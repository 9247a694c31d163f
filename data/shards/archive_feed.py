"""The writer's shards fed from a gzipped outer ImageNet tar (``winter21_whole.tar.gz``) by one reader.

A gzip stream can only be read front to back, so the shards cannot each read their own synsets as they do
from the other kinds of archive. ONE reader, in the writer's main process (`shard_jobs`), reads the archive
once (`ImageNetArchive.stream_synsets`) and hands a shard, as soon as every synset its lines name has
passed, the members it needs; a worker then writes it as from any other archive (`write_shard`: the same
`shard_writer.archive_results`), so the records and skip reasons are the same. `worker_pool.run_tasks`
draws the next shard only when a worker is free (at most ``workers + 1`` handed out), so decompression
overlaps the writing and never runs ahead of it. With ``workers=1`` reading and writing alternate.

Synsets the archive lacks (later releases dropped synsets; ``winter21`` has fewer than ``fall11``) are told
as the stream passes: the archive's synset tars are in sorted order (what ``tar`` of a folder's sorted
listing gives), so once a synset sorting after ``nX`` has passed, ``nX`` is absent, and the shards that
wait only for it go out at once instead of holding their images to the end of the archive. The order is
checked as the synsets pass: a synset out of order stops the run in one line, which says to write into a
new ``--output_dir`` from the unpacked folder of tars (shards written before it may have counted that
synset as absent).

Memory. The reader holds the members of the shards that wait for synsets still to come. The release's ID
lists are grouped by synset (each synset's lines together; no sample of them is at hand, so their synset
order is assumed to be the archive's: both sorted by synset ID). Then a shard is complete as soon as the
stream has passed its last synset, and only the one or two shards the stream is in are held. When the
orders differ, shards wait for synsets far ahead and the held bytes grow: past `max_held_bytes` the run
stops with one line that says what to do (sort the list by synset, or unpack the outer layer), never by
running out of memory. Beside that bound, each shard handed out is held once more while a worker writes
it: about ``(workers + 1) x`` one shard's image bytes (10.7M images in 1,024 shards of ~110 KB images:
~1.2 GB a shard; more ``--shards`` make it smaller).

Resuming. Only the unfinished shards are fed; the reader still decompresses the archive from its start
(a gzip stream has no index), passing by the synsets that only finished shards need without keeping them.
Likewise each task of a several-machine write (``--num_tasks``) decompresses the whole archive for its own
shards.
A truncated or corrupt archive stops the run with one line naming the file; the shards finished until
then are kept.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Mapping, Sequence

from absl import logging

from data.archives import imagenet
from data.pixels import images
from data.shards import shard_writer
from data.shards.shard_writer import ShardTask

DEFAULT_MAX_HELD_MB = 4096
_LOG_EVERY_S = 60.0
Members = Mapping[str, "bytes | images.BadImage"]
# What a worker gets: the shard, and for each synset its lines name that the archive holds, the members of
# it the shard asks for (or the refusal of the synset's tar).
Job = tuple[ShardTask, dict[str, "Members | images.BadImage"]]


def write_shard(job: Job, report: Callable[[int], None] | None = None) -> dict:
    """Writes one shard from the members the reader handed it (`shard_writer.write_records`)."""
    task, members = job

    def synset(wnid: str, wanted: set[str]) -> Members:
        del wanted  # the reader kept only the shard's members
        found = members.get(wnid)
        if found is None:
            raise images.BadImage(imagenet.MISSING_SYNSET)
        if isinstance(found, images.BadImage):
            raise found
        return found

    return shard_writer.write_records(task, shard_writer.archive_results(task, synset), report)


def _num_bytes(members: Members | images.BadImage) -> int:
    if isinstance(members, images.BadImage):
        return 0
    return sum(len(data) for data in members.values() if isinstance(data, bytes))


def shard_jobs(tasks: Sequence[ShardTask], *, max_held_bytes: int) -> Iterator[Job]:
    """Reads the tasks' gzipped archive once and yields each shard with its members as soon as it is complete.

    A shard is complete when the stream has passed every synset its lines name: the synset's tar came, or
    a synset sorting after it came (the archive's synset tars are in sorted order, as `tar` of a folder's
    sorted listing gives; checked as they pass), so the archive lacks it.

    Args:
      tasks: The shards still to write (all of one split, one archive).
      max_held_bytes: Bound on the members held for shards still waiting for synsets.

    Yields:
      ``(task, members by synset)``, in the order the shards complete (`write_shard` skips the IDs of a
      synset that is absent as ``MISSING_SYNSET``).

    Raises:
      ValueError: (one line) the bound is exceeded, the archive's synsets are not sorted, or the archive
        is unreadable (`imagenet.ArchiveUnreadable`).
    """
    if not tasks:
        return
    path = tasks[0].imagenet_archive
    shards_of: dict[str, list[int]] = {}  # synset -> the shards (positions in `tasks`) that name it
    waiting: list[int] = []  # per shard: synsets not yet passed
    for position, task in enumerate(tasks):
        wanted = shard_writer.parse_archive_lines(task)[1]
        for synset in wanted:
            shards_of.setdefault(synset, []).append(position)
        waiting.append(len(wanted))
    order = sorted(shards_of)  # the synsets named, in the archive's order
    settled = 0  # order[:settled] have passed (came or are absent)
    for position, count in enumerate(waiting):
        if count == 0:  # no ID at all (bad lines only): nothing to wait for
            yield tasks[position], {}
    wanted_of: dict[int, dict[str, set[str]]] = {}  # the members of the shards the stream has reached
    held: dict[int, dict[str, Members | images.BadImage]] = {}
    held_bytes, last, found_synsets = 0, "", 0

    def members_to_keep(synset: str) -> set[str] | None:
        nonlocal last
        if synset <= last:
            raise ValueError(
                f"{path}: its synset tars are not in sorted order ({synset}.tar after {last}.tar), so a "
                "synset it lacks cannot be told as the stream passes; unpack its outer layer (tar xzf) and "
                "write from the folder of per-synset tars, into a new --output_dir"
            )
        last = synset
        positions = shards_of.get(synset)
        if positions is None:  # no unfinished shard needs it
            return None
        keep: set[str] = set()
        for position in positions:
            if position not in wanted_of:  # parsed again here, so that only open shards' names are held
                wanted_of[position] = shard_writer.parse_archive_lines(tasks[position])[1]
            keep |= wanted_of[position][synset]
        return keep

    def passed(synset: str, found: Members | images.BadImage | None) -> Iterator[Job]:
        """`synset` has passed (`found`: its members; None: the archive lacks it): the shards complete."""
        nonlocal held_bytes
        for position in shards_of.pop(synset):
            part = held.setdefault(position, {})
            if isinstance(found, images.BadImage):
                part[synset] = found
            elif found is not None:
                part[synset] = {m: found[m] for m in wanted_of[position][synset] if m in found}
                held_bytes += _num_bytes(part[synset])
            waiting[position] -= 1
            if waiting[position] == 0:
                members = held.pop(position)
                wanted_of.pop(position, None)
                held_bytes -= sum(_num_bytes(m) for m in members.values())
                yield tasks[position], members

    def passed_before(synset: str | None) -> Iterator[Job]:
        """The synsets sorting before `synset` (None: all) that did not come: the archive lacks them."""
        nonlocal settled
        while settled < len(order) and (synset is None or order[settled] < synset):
            if order[settled] in shards_of:
                yield from passed(order[settled], None)
            settled += 1

    try:
        with imagenet.ImageNetArchive(path) as archive:
            logged = time.monotonic()
            for synset, found in archive.stream_synsets(members_to_keep):
                found_synsets += 1
                if time.monotonic() - logged > _LOG_EVERY_S:
                    logged = time.monotonic()
                    logging.info(
                        "%s: at %s.tar, %d of the %d synsets the unfinished shards name passed, %.0f MB held",
                        path,
                        synset,
                        settled,
                        len(order),
                        held_bytes / 1e6,
                    )
                yield from passed_before(synset)
                yield from passed(synset, found)
                if held_bytes > max_held_bytes:
                    raise ValueError(
                        f"{path}: {held_bytes / 1e6:.0f} MB of images held for {len(held)} shards that wait "
                        f"for synsets further on in the archive (bound {max_held_bytes / 1e6:.0f} MB, "
                        "--imagenet_gz_max_held_mb): the ID list is not in the archive's synset order; sort it "
                        "by synset (sort -k1,1 LIST), or unpack the outer layer (tar xzf) and give the folder "
                        "of per-synset tars; the shards finished so far are kept"
                    )
    except imagenet.ArchiveUnreadable as e:
        raise imagenet.ArchiveUnreadable(f"{e}; the shards finished so far are kept") from None
    logging.info(
        "%s read to its end: %d of the %d synsets the unfinished shards name were in it",
        path,
        found_synsets,
        len(order),
    )
    yield from passed_before(None)
