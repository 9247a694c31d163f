r"""The demo's data set: the README's demo trains on it; written like the real data, reused when present.

    python data/demo.py --output_dir=/tmp/mlimages_demo            # 2,000 train + 500 val images, 64 px

The pictures and their 30 classes (a forest of depth 5, long-tailed, soft tags for small shapes) are
data/synthetic/demo_scenes.py's. Everything is written with the project's own machinery, exactly as for the real data:
the hierarchy with `data.labels.hierarchy.write_hierarchy` (the release's TSV, read back by `load_hierarchy`), the
image lists (``filename idx:conf ...``) with `data.labels.annotations.write_entries`, the TFRecords of both splits
with `data.tfrecord.write_dataset` into one folder (prefixes ``train`` and ``val``, each with its manifest for
`data.records.schema.read_manifest`). The JPEGs stay in ``images/`` so the lists can be re-written by hand.

A seed gives the same bytes on every run, and a finished folder with the same parameters (recorded in
``demo.json``, the first file a demo run writes) is returned as it is. The demo writes only into a new or
empty folder or one holding its own ``demo.json``: never into a folder of someone else's files.

Run as a script it prints the set's summary and the most frequent classes (the baseline's ranking); the
baseline's metrics on the validation split are computed by the training layer (training/demo.py's
`most_frequent_baseline`) and reported by `train.py --recipe=demo` (data/ never imports training/).
"""

from __future__ import annotations

import dataclasses
import os
import time
from collections.abc import Sequence

from absl import app, flags

from data import command_line, fileio
from data.synthetic.demo_set import (
    COUNT_CLASSES,
    DEMO_LABEL_FORMATS,
    SUMMARY_FILENAME,
    DemoParams,
    make_demo_dataset,
    make_single_label_view,
    summarize,
)


def _print_summary(summary: dict) -> None:
    images = summary["images"]
    print(f"demo set: {summary['data_dir']} ({'reused' if summary['reused'] else 'generated'})")
    print(
        f"  {summary['num_classes']} classes, max depth {summary['max_depth']}, "
        f"{images['train']} train + {images['val']} val images of {summary['image_size']} px, "
        f"{summary['tags_per_train_image']:.2f} tags per train image ({summary['label_format']} labels)"
    )
    print(f"  generation {summary['generation_seconds']}s, this call {summary['wall_seconds']}s")
    print("  train images per class:")
    for row in summary["classes"]:
        print(
            f"    {row['index']:3d} {'  ' * row['depth']}{row['name']:<{30 - 2 * row['depth']}} {row['train_images']:6d}"
        )
    print(f"  most frequent classes (the baseline's ranking): {', '.join(summary['baseline_ranking'])}")


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "output_dir",
        None,
        "Folder for the demo set: the hierarchy, images/, the train/val image lists, the train-*/val-* "
        "TFRecord shards with their manifests, demo.json (parameters) and summary.json.",
        required=True,
        **fv,
    )
    flags.DEFINE_integer("num_train", DemoParams.num_train, "Training images.", lower_bound=1, **fv)
    flags.DEFINE_integer("num_val", DemoParams.num_val, "Validation images.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "image_size",
        DemoParams.image_size,
        "Side of the square RGB JPEGs in pixels.",
        lower_bound=16,
        **fv,
    )
    flags.DEFINE_integer(
        "seed",
        DemoParams.seed,
        "Generation seed: the same seed and parameters always give the same bytes.",
        **fv,
    )
    flags.DEFINE_integer("shards", DemoParams.shards, "TFRecord shards per split.", lower_bound=1, **fv)
    flags.DEFINE_integer(
        "workers",
        DemoParams.workers,
        "Processes writing shards (data/tfrecord.py); does not change the output.",
        lower_bound=1,
        **fv,
    )
    flags.DEFINE_enum(
        "label_format",
        DemoParams.label_format,
        list(DEMO_LABEL_FORMATS),
        "sparse = label/indices + label/confidences (this project's layout); dense = the reference's "
        "float32[num_classes] bytes. Both parse to the same tensors.",
        **fv,
    )
    flags.DEFINE_bool(
        "overwrite",
        False,
        "Replace a demo set with other parameters in --output_dir (only the demo's own files are removed). "
        "A complete set with the same parameters is always reused as it is.",
        **fv,
    )
    flags.DEFINE_string(
        "single_label_dir",
        None,
        "Also write a single-label view (int64 records; the class is the number of objects, 4 classes) of "
        "the same images here, for trying finetune.py on the demo.",
        **fv,
    )
    flags.DEFINE_string(
        "summary_json",
        None,
        f"Where to write the summary (default: --output_dir/{SUMMARY_FILENAME}).",
        **fv,
    )


def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The script: writes (or reuses) the set, writes and prints its summary."""
    f = flag_values
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    started = time.monotonic()
    try:
        params = {field.name: f[field.name].value for field in dataclasses.fields(DemoParams)}
        dataset = make_demo_dataset(f.output_dir, overwrite=f.overwrite, **params)
    except ValueError as e:  # a refused folder or bad parameters: one line, not a traceback
        raise command_line.error(__file__, e) from None
    summary = summarize(dataset, wall_seconds=time.monotonic() - started)
    fileio.write_json(f.summary_json or os.path.join(dataset.data_dir, SUMMARY_FILENAME), summary)
    _print_summary(summary)
    if f.single_label_dir:
        print(
            f"single-label view ({len(COUNT_CLASSES)} classes): {make_single_label_view(dataset, f.single_label_dir)}"
        )


if __name__ == "__main__":
    command_line.run(main, define_flags, script=__file__)
