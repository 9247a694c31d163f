"""Evaluates a model checkpoint on a validation split, or saved scores: multi-label top-k precision/recall/F1
and mAP, or single-label top-1/top-5 accuracy.

A checkpoint (ours: a run directory or prefix; or a released TF1 checkpoint) on our TFRecords, at two sizes:

    python evaluate.py --checkpoint runs/pretrain --data_dir records/ --split_prefix val \\
        --image_size 224,299 --topk 5,10 --output_json results.json

ImageNet through TFDS (the single-label fine-tuned checkpoints), on several GPUs:

    horovodrun -np 4 python evaluate.py --checkpoint ckpt-resnet101-mlimages-imagenet/model.ckpt \\
        --tfds_name imagenet2012 --tfds_manual_dir ~/imagenet --image_size 224,299

Saved predictions (arrays `scores` [N, C] and `labels`: [N, C] float confidences for multi-label data or
[N] int class indices for single-label data, optionally a 0-d int `image_size`), e.g. from
`--save_predictions`:

    python evaluate.py --predictions val_scores.npz --topk 5,10 --output_json results.json

Prints a table (percent) on stdout and writes the JSON report (fractions in [0, 1]); see
training/report.py for its layout and training/metrics.py for the metric definitions; a progress bar
(images, rate, ETA) goes to stderr, `--noprogress` hides it, as in the tools. Under horovodrun every rank
evaluates its own shard and only the chief prints and writes the report.

For multi-label data the JSON also holds each class's AP (with its name, its positives and, where known,
its training frequency), the micro-averaged precision-recall curve and, with `--hierarchy`, the mAP per
hierarchy level; `--plot_dir` draws them as PNGs (training/plots.py), with the first evaluated images and
their top-5 tags:

    python evaluate.py --checkpoint demo_run --data_dir demo_run/data --image_size 64 --transform full \
        --hierarchy demo_run/data/dictionary_and_semantic_hierarchy.txt --train_prefix train \
        --output_json demo_eval.json --plot_dir demo_plots
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

from absl import flags

from data import command_line
from training import distributed, evaluation, input_pipeline, metrics, plots, predictions, report, tf_logs

FLAGS = flags.FLAGS


def define_flags(flag_values: flags.FlagValues = FLAGS) -> None:
    """Defines evaluate.py's flags on `flag_values` (a fresh one runs the script in-process)."""
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "predictions",
        None,
        "A .npz of saved scores to evaluate without a model: `scores` float[N, C]; `labels` float[N, C] "
        "(multi-label confidences in [0, 1], -1 = ignore) or int[N] (single-label class indices); optional 0-d int `image_size` "
        "names the results entry. Streamed in chunks, never loaded whole. Excludes --checkpoint.",
        **fv,
    )
    flags.DEFINE_string(
        "checkpoint",
        None,
        "The model to evaluate: a run directory (its newest intact checkpoint; a damaged one is skipped with a "
        "warning) or a checkpoint prefix, either ours "
        "(tf.train.Checkpoint(model=...), depth/width/classes read from it) or a released TF1 checkpoint "
        "(e.g. ckpt-resnet101-mlimages/model.ckpt). Needs --data_dir or --tfds_name.",
        **fv,
    )
    flags.DEFINE_integer(
        "depth",
        None,
        "Expected ResNet depth (50, 101, 152); default: whatever the checkpoint holds (found from its "
        "variables, for ours and TF1 ones alike). A different depth is an error.",
        **fv,
    )
    flags.DEFINE_string(
        "data_dir",
        None,
        "Folder of our TFRecords (data/tfrecord.py output) with `{split_prefix}-manifest.json`, or written by "
        "the original release with `{split_prefix}/*.tfrecords`; any label format (dense/sparse: multi-label "
        "metrics; int64: top-1/top-5).",
        **fv,
    )
    flags.DEFINE_string(
        "split_prefix",
        "val",
        "Split of --data_dir to evaluate (the writer's --prefix; the release's sub-folder).",
        **fv,
    )
    flags.DEFINE_string(
        "tfds_name",
        None,
        "A single-label TFDS dataset instead of --data_dir, e.g. imagenet2012 (prepared from "
        "--tfds_manual_dir on first use).",
        **fv,
    )
    flags.DEFINE_string("tfds_split", "validation", "TFDS split to evaluate.", **fv)
    flags.DEFINE_string("tfds_data_dir", None, "TFDS data_dir (default: ~/tensorflow_datasets).", **fv)
    flags.DEFINE_string(
        "tfds_manual_dir",
        None,
        "Folder holding the manually downloaded archives (ILSVRC2012_img_val.tar ...) for preparing it.",
        **fv,
    )
    flags.DEFINE_list(
        "image_size",
        ["224"],
        "Comma-separated evaluation image sizes; each is a results entry (the paper reports 224 and 299).",
        **fv,
    )
    flags.DEFINE_enum(
        "transform",
        "reference",
        ["reference", "demo", "full"],
        "Evaluation pre-processing: `reference` = the release's eval transform (central 80% crop, bilinear "
        "resize to S); `demo` = its demo scripts' (shorter side to 256/224 x S, centre crop S); `full` = the "
        "whole image resized to S (what the built-in demo recipe evaluates with).",
        **fv,
    )
    flags.DEFINE_integer("batch_size", 64, "Images per batch (per rank).", **fv)
    flags.DEFINE_integer(
        "max_batches",
        0,
        "Evaluate only this many batches per rank and size (0: all), for quick checks.",
        **fv,
    )
    flags.DEFINE_string(
        "save_predictions",
        None,
        "Also save the scores (sigmoid or softmax) and labels as FILE.npz for --predictions; `.SIZE` is "
        "inserted with several --image_size values and `.rankR` under horovodrun (each rank saves its own "
        "shard). Holds N x C float32 in memory: for moderate sets.",
        **fv,
    )
    flags.DEFINE_list(
        "topk",
        ["5", "10"],
        "Comma-separated k values for the multi-label precision@k, recall@k, F1@k (the reference reports "
        "5 and 10). Single-label data always reports top-1 and top-5 accuracy.",
        **fv,
    )
    flags.DEFINE_float(
        "label_threshold",
        0.5,
        "Multi-label: class j is a ground-truth positive of an image when its label >= this value "
        "(the released lists hold confidences 1, 0.9 and 0.8).",
        **fv,
    )
    flags.DEFINE_string(
        "output_json",
        None,
        "Also write the report here as JSON: task, num_images, results per image size, settings.",
        **fv,
    )
    flags.DEFINE_bool(
        "apply_sigmoid",
        False,
        "--predictions, multi-label: the saved scores are logits; apply a sigmoid before evaluating (mAP "
        "needs probabilities in [0, 1]; top-k metrics are unchanged by it).",
        **fv,
    )
    flags.DEFINE_integer(
        "num_bins",
        metrics.DEFAULT_NUM_BINS,
        "Multi-label: bins over [0, 1] of the per-class score histograms from which mAP is computed "
        "(memory: num_classes x num_bins x 16 bytes; more bins, closer to the exact AP).",
        **fv,
    )
    flags.DEFINE_integer(
        "chunk_size",
        1024,
        "Rows of the predictions file read and evaluated at a time (memory vs speed).",
        **fv,
    )
    flags.DEFINE_string(
        "hierarchy",
        None,
        "Multi-label: the class hierarchy (dictionary_and_semantic_hierarchy.txt): the classes' names in the "
        "JSON and plots (default: the checkpoint's own class_names.txt, else indices) and the mAP per level.",
        **fv,
    )
    flags.DEFINE_string(
        "train_prefix",
        None,
        "Multi-label: the training split of --data_dir whose labels are counted for each class's training "
        "frequency (one pass over its labels; for ML-Images' 17.6M images use --class_stats).",
        **fv,
    )
    flags.DEFINE_string(
        "class_stats",
        None,
        "Multi-label: tools/dataset_stats.py's --output_json of the training data: each class's training "
        "frequency (images_per_class / num_images).",
        **fv,
    )
    flags.DEFINE_string(
        "plot_dir",
        None,
        "Multi-label: also draw pr_curve.png, ap_vs_frequency.png, ap_per_level.png (with --hierarchy) and "
        "predictions.png (--checkpoint: the first 16 images with their top-5 tags) here (needs matplotlib).",
        **fv,
    )
    # As the inference tools' --progress (training/cli.py define_inference_flags).
    flags.DEFINE_bool("progress", True, "Show a progress bar (images, rate, ETA) on stderr.", **fv)
    flags.register_validator(
        "topk",
        _positive_ints,
        message="--topk must be a comma-separated list of positive integers, e.g. 5,10",
        **fv,
    )
    flags.register_validator(
        "image_size",
        _positive_ints,
        message="--image_size must be comma-separated positive integers, e.g. 224,299",
        **fv,
    )
    flags.register_validator(
        "label_threshold",
        lambda v: 0.0 < v <= 1.0,
        message="--label_threshold must be in (0, 1]",
        **fv,
    )
    flags.register_validator("chunk_size", lambda v: v > 0, message="--chunk_size must be positive", **fv)
    flags.register_validator("num_bins", lambda v: v > 0, message="--num_bins must be positive", **fv)
    flags.register_validator("batch_size", lambda v: v > 0, message="--batch_size must be positive", **fv)
    flags.register_validator("max_batches", lambda v: v >= 0, message="--max_batches must be >= 0", **fv)


def _positive_ints(values: list[str]) -> bool:
    return bool(values) and all(v.strip().isdigit() and int(v) > 0 for v in values)


def _unique_ints(values: list[str]) -> tuple[int, ...]:
    return tuple(dict.fromkeys(int(v) for v in values))  # keeps the order, drops repeats


def main(argv: Sequence[str], flag_values: flags.FlagValues = FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    # One line, not absl's usage text (the whole module docstring) under the error.
    if len(argv) > 1:
        raise command_line.error(__file__, f"unexpected arguments {argv[1:]}; see --help")
    if not f.predictions and not f.checkpoint:
        raise command_line.error(
            __file__, "give --checkpoint (with --data_dir or --tfds_name) or --predictions; see --help"
        )
    if f.predictions and f.checkpoint:
        raise command_line.error(__file__, "give --checkpoint or --predictions, not both; see --help")
    settings = report.EvalSettings(
        topk=_unique_ints(f.topk),
        label_threshold=f.label_threshold,
        num_bins=f.num_bins,
        apply_sigmoid=f.apply_sigmoid,
        chunk_size=f.chunk_size,
    )
    dist = distributed.init()
    samples = evaluation.Samples() if f.plot_dir else None
    try:
        if f.predictions:
            result = predictions.evaluate_predictions(
                f.predictions,
                settings,
                show_progress=f.progress and dist.is_chief,
                classes=_class_info(f, predictions.PredictionsFile.open(f.predictions).num_classes, settings),
            )
        else:
            config = evaluation.ModelEvalConfig(
                checkpoint=f.checkpoint,
                data_dir=f.data_dir or "",
                split_prefix=f.split_prefix,
                tfds_name=f.tfds_name or "",
                tfds_split=f.tfds_split,
                tfds_data_dir=f.tfds_data_dir or "",
                tfds_manual_dir=f.tfds_manual_dir or "",
                image_sizes=_unique_ints(f.image_size),
                transform=f.transform,
                batch_size=f.batch_size,
                max_batches=f.max_batches,
                depth=f.depth,
                save_predictions=f.save_predictions or "",
                hierarchy=f.hierarchy or "",
                train_prefix=f.train_prefix or "",
                class_stats=f.class_stats or "",
            )
            result = evaluation.evaluate_checkpoint(
                config, settings, dist=dist, show_progress=f.progress, samples=samples
            )
    except (report.EvaluationInputError, input_pipeline.BadRecordError) as e:
        raise command_line.error(__file__, e) from None
    if dist.is_chief:  # Horovod: every rank holds the global report; only the chief prints and writes it.
        print(report.format_table(result))
        if f.output_json:
            report.write_json(result, f.output_json)
        if f.plot_dir and result["task"] != report.MULTILABEL:
            print("--plot_dir: no figures for single-label results (the table says it all)", file=sys.stderr)
        elif f.plot_dir:
            try:
                for path in plots.evaluation_plots(result, f.plot_dir, samples=samples):
                    print(f"wrote {path}")
            except plots.PlotsUnavailable as e:
                raise command_line.error(__file__, e) from None


def _class_info(flag_values: flags.FlagValues, num_classes: int, settings: report.EvalSettings):
    """`--predictions`: what the flags say about the classes (`report.load_class_info`)."""
    f = flag_values
    return report.load_class_info(
        num_classes,
        hierarchy=f.hierarchy or "",
        data_dir=f.data_dir or "",
        train_prefix=f.train_prefix or "",
        class_stats=f.class_stats or "",
        label_threshold=settings.label_threshold,
    )


if __name__ == "__main__":
    tf_logs.quiet_tensorflow()  # TensorFlow's own INFO lines (e.g. on every save) stay out of the output
    command_line.run(main, define_flags, script=__file__)
