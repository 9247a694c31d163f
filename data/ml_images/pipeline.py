"""The Beam steps of the `ml_images` builder: list blocks -> lines -> prepared examples, and the skip summary.

Kept apart from the builder module because Beam pickles these functions by reference: ``tfds build
data/ml_images`` imports the builder under its own module name (``ml_images.ml_images_dataset_builder``),
which workers cannot import, while this module is always ``data.ml_images.pipeline`` (installed with the
project, or shipped with ``setup_file``).

Everything that touches one line is plain Python (`list_chunks`, `read_chunk`, `prepare_line`; for the
ImageNet part `synset_of_line` and `prepare_synset`), tested without Beam; `read_examples`,
`read_archive_examples`, `summarize` and `log_summary` assemble them into a pipeline.
"""

from __future__ import annotations

import collections
import dataclasses
import logging as std_logging
import os
import tempfile
from collections.abc import Iterable, Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from data.archives import imagenet
from data.labels import annotations
from data.pixels import images
from data.records import schema
from data.records.manifest import reason_category  # the writer's reasons, counted the same way
from data.shards import list_index, shard_writer

NUM_CLASSES = 11166
# Beam metrics counters live in this namespace: `{split}/examples`, `{split}/skipped`,
# `{split}/skipped/{reason}`, `{split}/converted/{format}`.
COUNTER_NAMESPACE = "ml_images"
# The list is cut into blocks of about this many bytes (~11,000 lines of the release's lists).
CHUNK_BYTES = 1 << 20
# How many skipped lines the summary lists (all of them are logged and counted).
SUMMARY_SKIPPED_EXAMPLES = 1000
# The ImageNet part's example keys: this, then the line number (the other part's keys are line numbers).
IMAGENET_KEY = "imagenet:"

_REPORT = "report"  # tagged output of the per-line step: what was skipped or converted


@dataclasses.dataclass(frozen=True)
class PrepareSettings:
    """What a worker needs to turn one line of one list into an example (pickled to the workers).

    `imagenet_archive` (a folder of per-synset tars, the uncompressed outer tar, or an extracted tree, on a
    file system every worker mounts; `data.archives.imagenet`) makes the list an ImageNet ID list whose
    images are read from that archive; `image_root` is then unused.
    """

    list_path: str
    image_root: str
    num_classes: int = NUM_CLASSES
    jpeg_quality: int = images.DEFAULT_JPEG_QUALITY
    verify: str = "full"
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    imagenet_archive: str = ""


@dataclasses.dataclass(frozen=True)
class Skipped:
    """A line that gave no example: its 1-based line number, the name it gave (or its first field) and why."""

    line: int
    path: str
    reason: str


# ---------------------------------------------------------------------------------------------------------
# Per-line work (plain Python, run on the workers; tested without Beam).
# ---------------------------------------------------------------------------------------------------------


def list_chunks(list_path: str, *, chunk_bytes: int = CHUNK_BYTES) -> tuple[list_index.ListIndex, list]:
    """Cuts a list into blocks of whole lines: ``[(start_byte, end_byte, first_line), ...]`` and its index.

    A list outside the local file system (``gs://...``) is copied to a temporary file for the one pass.
    """
    local = list_path
    with tempfile.TemporaryDirectory() as temp:
        if "://" in list_path:
            local = os.path.join(temp, "list.txt")
            tf.io.gfile.copy(list_path, local)
        size = os.path.getsize(local)
        index = list_index.index_list(local, max(1, -(-size // chunk_bytes)))
    chunks = [
        (index.offsets[s], index.offsets[s + 1], index.first_lines[s])
        for s in range(len(index.offsets) - 1)
        if index.offsets[s] < index.offsets[s + 1]
    ]
    return index, chunks


def read_chunk(chunk: tuple[int, int, int], list_path: str) -> Iterator[tuple[int, bytes]]:
    """The non-blank lines of one block as ``(line_number, raw_bytes)``, line numbers 1-based."""
    start, end, first_line = chunk
    with tf.io.gfile.GFile(list_path, "rb") as f:
        f.seek(start)
        position, line_no = start, first_line
        while position < end:
            raw = f.readline()
            if not raw:
                break
            position += len(raw)
            line_no += 1
            if raw.strip():
                yield line_no, raw


def _image_path(image_root: str, name: str) -> str:
    """`shard_writer.ImagePaths` (inside `image_root` only, symlinks too), also for ``gs://``-style roots."""
    scheme, sep, rest = image_root.partition("://")
    if not sep:
        return shard_writer.ImagePaths(image_root, allow_outside_root=False)(name)
    path = shard_writer.image_path("/" + rest.strip("/"), name, allow_outside_root=False)
    return f"{scheme}:/{path}"


def _read_bytes(path: str) -> bytes:
    """The file's bytes; `images.read_file` locally, `tf.io.gfile` for ``gs://`` and other file systems."""
    if "://" not in path:
        return images.read_file(path)
    try:
        with tf.io.gfile.GFile(path, "rb") as f:
            return f.read()
    except tf.errors.NotFoundError:
        raise images.BadImage("missing file") from None
    except tf.errors.OpError as e:
        raise images.BadImage(f"unreadable: {type(e).__name__}") from None


def prepare_line(
    line_no: int, raw: bytes, settings: PrepareSettings
) -> tuple[int, dict, str | None] | Skipped:
    """One list line -> ``(key, example, converted_from)``, or `Skipped` with the writer's reason.

    The same rules as `shard_writer.write_shard`: `annotations.parse_line` for the line, names confined to
    the image folder, `images.prepare_image` for the file.
    """
    name = ""
    try:
        name, labels = annotations.parse_line(
            raw.decode("utf-8"), kind="multi", num_classes=settings.num_classes
        )
        image = images.prepare_image(
            _read_bytes(_image_path(settings.image_root, name)),
            jpeg_quality=settings.jpeg_quality,
            verify=settings.verify,
            max_pixels=settings.max_pixels,
        )
    except ValueError as e:  # BadImage and UnicodeDecodeError are ValueErrors too.
        reason = e.reason if isinstance(e, images.BadImage) else f"bad line: {e}"
        name = name or raw.decode("utf-8", "replace").split(maxsplit=1)[0]
        return Skipped(line_no, name, reason)
    return line_no, _example(name, labels, image), image.converted_from


def _example(name: str, labels: annotations.Labels, image: images.PreparedImage) -> dict:
    """The TFDS example of a prepared image: the writer's sparse layout (tags sorted by class index)."""
    indices = np.array([index for index, _ in labels], dtype=np.int64)
    confidences = np.array([conf for _, conf in labels], dtype=np.float32)
    order = np.argsort(indices, kind="stable")
    return {
        schema.IMAGE_KEY: image.jpeg,
        schema.HEIGHT_KEY: image.height,
        schema.WIDTH_KEY: image.width,
        schema.NAME_KEY: name,
        schema.LABEL_KEY: {"indices": indices[order], "confidences": confidences[order]},
    }


def synset_of_line(
    line_no: int, raw: bytes, settings: PrepareSettings
) -> tuple[str, tuple[int, str, str, annotations.Labels]] | Skipped:
    """An ID-list line -> ``(synset, (line_no, name, member, labels))``, or `Skipped` with the writer's reason
    (a bad line, or a name that is no ImageNet ID)."""
    name = ""
    try:
        name, labels = annotations.parse_line(
            raw.decode("utf-8"), kind="multi", num_classes=settings.num_classes
        )
        synset, member = imagenet.parse_id(name)
    except ValueError as e:
        return Skipped(line_no, name or shard_writer.first_field(raw), shard_writer.skip_reason(e))
    return synset, (line_no, name, member, labels)


def prepare_synset(
    synset: str,
    lines: Iterable[tuple[int, str, str, annotations.Labels]],
    settings: PrepareSettings,
    archive: imagenet.ImageNetArchive,
) -> Iterator[tuple[str, dict, str | None] | Skipped]:
    """One synset's lines (`synset_of_line`) -> their examples (key ``imagenet:<line>``) or `Skipped`s.

    The synset's tar is read once, front to back, keeping only the members asked for, as the writer's
    ``--imagenet_archive`` does (`shard_writer`): the same records, the same skip reasons
    (``synset not in the archive``, ``not in the archive``).
    """
    lines = sorted(lines)
    members: dict = {}
    synset_error: images.BadImage | None = None
    try:
        members = archive.synset(synset, {member for _, _, member, _ in lines})
    except images.BadImage as e:
        synset_error = e
    for line_no, name, member, labels in lines:
        try:
            image = images.prepare_image(
                imagenet.member_bytes(members, member, synset_error),
                jpeg_quality=settings.jpeg_quality,
                verify=settings.verify,
                max_pixels=settings.max_pixels,
            )
        except ValueError as e:
            yield Skipped(line_no, name, shard_writer.skip_reason(e))
            continue
        yield f"{IMAGENET_KEY}{line_no}", _example(name, labels, image), image.converted_from


# ---------------------------------------------------------------------------------------------------------
# The Beam pipeline.
# ---------------------------------------------------------------------------------------------------------


def _report(result, *, settings: PrepareSettings, split: str):
    """Beam: a per-line result -> ``(key, example)``, and to the report output what was skipped or
    converted (counted and, for a skip, logged)."""
    beam = tfds.core.lazy_imports.apache_beam
    counter = beam.metrics.Metrics.counter
    if isinstance(result, Skipped):
        logging.warning(
            "%s:%d: %s: skipped (%s)", settings.list_path, result.line, result.path or "?", result.reason
        )
        counter(COUNTER_NAMESPACE, f"{split}/skipped").inc()
        counter(COUNTER_NAMESPACE, f"{split}/skipped/{reason_category(result.reason)}").inc()
        yield beam.pvalue.TaggedOutput(_REPORT, ("skipped", dataclasses.asdict(result)))
        return
    key, example, converted_from = result
    counter(COUNTER_NAMESPACE, f"{split}/examples").inc()
    if converted_from:
        counter(COUNTER_NAMESPACE, f"{split}/converted/{converted_from}").inc()
        yield beam.pvalue.TaggedOutput(_REPORT, ("converted", converted_from))
    yield key, example


def _prepare_or_report(element: tuple[int, bytes], *, settings: PrepareSettings, split: str):
    """Beam step: one list line -> `_report` of its `prepare_line`."""
    yield from _report(prepare_line(*element, settings), settings=settings, split=split)


def _key_by_synset(element: tuple[int, bytes], *, settings: PrepareSettings, split: str):
    """Beam step: an ID-list line -> ``(synset, line)``; a bad line to the report output."""
    result = synset_of_line(*element, settings)
    if isinstance(result, Skipped):
        yield from _report(result, settings=settings, split=split)
    else:
        yield result


def _synset_reader(settings: PrepareSettings, split: str):
    """A DoFn: ``(synset, lines)`` -> `_report` of `prepare_synset`, the archive opened once per instance
    (the outer tar is indexed by its headers once, not once per synset)."""
    beam = tfds.core.lazy_imports.apache_beam

    class ReadSynsets(beam.DoFn):
        def setup(self):
            self.archive = imagenet.ImageNetArchive(settings.imagenet_archive)

        def teardown(self):
            self.archive.close()

        def process(self, element):
            synset, lines = element
            for result in prepare_synset(synset, lines, settings, self.archive):
                yield from _report(result, settings=settings, split=split)

    return ReadSynsets()


def quiet_beam(pipeline) -> bool:
    """Keeps Beam's INFO lines out of a build's output, unless the pipeline options ask for them.

    A `tfds build` of the tiny config (6 images) printed about 240 lines, nearly all of them Beam's INFO:
    the type-hint conversions of every step, the runner's servers, each worker's start-up and its log lines
    forwarded by the job service, and every worker's TensorFlow start-up lines. Here the workers' level
    (`default_sdk_harness_log_level`, sent with the pipeline to every worker) becomes WARNING except for
    absl's logger, which ours use; so does the `apache_beam` logger of this process (when nothing set its
    level), and worker processes start TensorFlow with TF_CPP_MIN_LOG_LEVEL=1 (unless set). Our own lines
    (the list's size, the summary of every split, each skipped line) stay. To see Beam's INFO lines, pass
    `--beam_pipeline_options="...,default_sdk_harness_log_level=INFO"`: then nothing here is changed.

    Returns:
      Whether the output was made quiet (False: the options set the workers' level themselves).
    """
    beam = tfds.core.lazy_imports.apache_beam
    worker = pipeline.options.view_as(beam.options.pipeline_options.WorkerOptions)
    if worker.default_sdk_harness_log_level is not None:
        return False
    worker.default_sdk_harness_log_level = "WARNING"
    # Ours log through absl (the summary of each split is an INFO line on the worker that runs that step).
    worker.sdk_harness_log_level_overrides = {
        "absl": "INFO",
        **(worker.sdk_harness_log_level_overrides or {}),
    }
    beam_logger = std_logging.getLogger("apache_beam")
    if beam_logger.level == std_logging.NOTSET:
        beam_logger.setLevel(std_logging.WARNING)
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "1")  # inherited by the worker processes
    return True


def run_direct_without_download(pipeline) -> bool:
    """Makes a DirectRunner pipeline run on Beam's FnApiRunner at once, without DirectRunner's try of Prism.

    Beam's DirectRunner (also the runner of a pipeline that names none) first tries Prism, a runner
    binary that it downloads from GitHub into ``~/.apache_beam/cache`` before anything runs; offline that
    download fails (or waits on the network) and DirectRunner falls back to the FnApiRunner, the local
    runner it uses for a batch pipeline. A build reads only what the user gave it, so a DirectRunner
    pipeline goes to the FnApiRunner straight away, with the pipeline options sent to its workers as
    DirectRunner sends them (`quiet_beam`'s log levels; ``direct_num_workers`` and ``direct_running_mode``
    apply as before). Any other runner, ``PrismRunner`` named explicitly included, is left alone.

    Returns:
      Whether the runner was replaced.
    """
    from apache_beam.portability.api import beam_provision_api_pb2
    from apache_beam.runners.direct import direct_runner
    from apache_beam.runners.portability.fn_api_runner import fn_runner
    from apache_beam.runners.portability.portable_runner import JobServiceHandle
    from apache_beam.runners.runner import PipelineRunner

    if type(pipeline.runner) is not direct_runner.SwitchingDirectRunner:  # what `DirectRunner` names
        return False

    class DirectFnApiRunner(PipelineRunner):
        """DirectRunner's own fallback for a batch pipeline (`SwitchingDirectRunner.run_pipeline`)."""

        def run_pipeline(self, pipeline, options):
            encoded = JobServiceHandle.encode_pipeline_options(options.get_all_options())
            info = fn_runner.ExtendedProvisionInfo(
                beam_provision_api_pb2.ProvisionInfo(pipeline_options=encoded)
            )
            return fn_runner.FnApiRunner(provision_info=info).run_pipeline(pipeline, options)

    pipeline.runner = DirectFnApiRunner()
    return True


def read_examples(pipeline, *, split: str, settings: PrepareSettings, chunk_bytes: int = CHUNK_BYTES):
    """The examples of one list, and its report, as Beam PCollections.

    Args:
      pipeline: The Beam pipeline (or a PBegin).
      split: Split name; it prefixes the transform labels and the counters.
      settings: The list, the image folder and how images are prepared.
      chunk_bytes: Size of the blocks the list is read in.

    Returns:
      ``(examples, report)``: ``(line_number, example)`` pairs for TFDS, and ``("skipped", {line, path,
      reason})`` / ``("converted", format)`` items, which `summarize` folds into one summary.
    """
    beam = tfds.core.lazy_imports.apache_beam
    index, chunks = list_chunks(settings.list_path, chunk_bytes=chunk_bytes)
    logging.info(
        "%s (%s): %d lines, %d bytes, sha256 %s, %d blocks",
        settings.list_path,
        split,
        index.num_lines,
        index.num_bytes,
        index.sha256[:12],
        len(chunks),
    )
    results = (
        pipeline
        | f"{split}/ListBlocks" >> beam.Create(chunks)
        | f"{split}/ReadLines" >> beam.FlatMap(read_chunk, settings.list_path)
        | f"{split}/Spread" >> beam.Reshuffle()
        | f"{split}/Prepare"
        >> beam.FlatMap(_prepare_or_report, settings=settings, split=split).with_outputs(
            _REPORT, main="examples"
        )
    )
    return results.examples, results[_REPORT]


def read_archive_examples(
    pipeline,
    *,
    split: str,
    settings: PrepareSettings,
    label: str = "imagenet",
    chunk_bytes: int = CHUNK_BYTES,
):
    """The examples of an ImageNet ID list read from `settings.imagenet_archive`, and its report.

    Like `read_examples`, but the lines are grouped by synset (a ``GroupByKey`` of the lines, not the
    images) so that each synset's tar is read once, front to back, by one worker.

    Args:
      pipeline: The Beam pipeline (or a PBegin).
      split: Split name; it prefixes the counters.
      settings: The ID list, the archive and how images are prepared.
      label: Prefixes the transform labels after `split` (a split may read several lists).
      chunk_bytes: Size of the blocks the list is read in.

    Returns:
      ``(examples, report)`` as `read_examples`; the keys are ``imagenet:<line number>``.
    """
    with imagenet.ImageNetArchive(settings.imagenet_archive) as archive:  # not an archive: one line, now
        if archive.kind == "outer_tar_gz":
            raise ValueError(
                f"{archive.path} is gzipped: Beam workers read synsets in parallel, and a gzipped tar can only "
                "be read front to back; unpack its outer layer (tar xzf) and give the folder of per-synset "
                "tars, or write the ImageNet part with data/tfrecord.py --imagenet_archive, which reads it"
            )
    beam = tfds.core.lazy_imports.apache_beam
    index, chunks = list_chunks(settings.list_path, chunk_bytes=chunk_bytes)
    logging.info(
        "%s (%s, from %s): %d lines, %d bytes, sha256 %s, %d blocks",
        settings.list_path,
        split,
        settings.imagenet_archive,
        index.num_lines,
        index.num_bytes,
        index.sha256[:12],
        len(chunks),
    )
    step = f"{split}/{label}"
    parsed = (
        pipeline
        | f"{step}/ListBlocks" >> beam.Create(chunks)
        | f"{step}/ReadLines" >> beam.FlatMap(read_chunk, settings.list_path)
        | f"{step}/BySynset"
        >> beam.FlatMap(_key_by_synset, settings=settings, split=split).with_outputs(_REPORT, main="lines")
    )
    results = (
        parsed.lines
        | f"{step}/GroupSynsets" >> beam.GroupByKey()
        | f"{step}/ReadSynsets"
        >> beam.ParDo(_synset_reader(settings, split)).with_outputs(_REPORT, main="examples")
    )
    report = (parsed[_REPORT], results[_REPORT]) | f"{step}/Report" >> beam.Flatten()
    return results.examples, report


def _summary_combiner(max_examples: int):
    """A CombineFn: report items -> one summary dict (counts per reason and format, first skipped lines)."""
    beam = tfds.core.lazy_imports.apache_beam

    class Summarize(beam.CombineFn):
        def create_accumulator(self):
            return collections.Counter(), collections.Counter(), []

        def add_input(self, accumulator, item):
            reasons, converted, first = accumulator
            kind, value = item
            if kind == "skipped":
                reasons[reason_category(value["reason"])] += 1
                first.append(value)
                if len(first) > 2 * max_examples:
                    first[:] = sorted(first, key=lambda s: s["line"])[:max_examples]
            else:
                converted[value] += 1
            return accumulator

        def merge_accumulators(self, accumulators):
            reasons, converted, first = self.create_accumulator()
            for r, c, f in accumulators:
                reasons.update(r)
                converted.update(c)
                first = sorted(first + f, key=lambda s: s["line"])[:max_examples]
            return reasons, converted, first

        def extract_output(self, accumulator):
            reasons, converted, first = accumulator
            first = sorted(first, key=lambda s: s["line"])[:max_examples]
            num_skipped = sum(reasons.values())
            return {
                "num_skipped": num_skipped,
                "reasons": dict(sorted(reasons.items())),
                "converted": dict(sorted(converted.items())),
                "skipped": first,
                "skipped_complete": len(first) == num_skipped,
            }

    return Summarize()


def summarize(report, *, split: str, max_examples: int = SUMMARY_SKIPPED_EXAMPLES):
    """The report of `read_examples` -> a one-element PCollection with the split's summary dict."""
    beam = tfds.core.lazy_imports.apache_beam
    return report | f"{split}/Summarize" >> beam.CombineGlobally(_summary_combiner(max_examples))


def log_summary(summary: dict, *, split: str, list_path: str) -> dict:
    """Logs the one summary line of a split (where the pipeline's last step runs) and returns the summary."""
    reasons = ", ".join(f"{reason}: {count}" for reason, count in summary["reasons"].items())
    converted = ", ".join(f"{fmt}: {count}" for fmt, count in summary["converted"].items())
    logging.log(
        logging.WARNING if summary["num_skipped"] else logging.INFO,
        "ml_images %s (%s): %d line(s) skipped%s; %d image(s) converted to JPEG%s",
        split,
        list_path,
        summary["num_skipped"],
        f" ({reasons})" if reasons else "",
        sum(summary["converted"].values()),
        f" ({converted})" if converted else "",
    )
    return summary
