r"""Co-occurrence augmentation of the ImageNet part of ML-Images (docs/REFERENCE.md section 1, step 2).

ImageNet images carry one class (plus its ancestors). To add the other things visible in them, the
release ran a 1,134-way Open Images (OI) model on every ImageNet image and kept its confident predictions:

1. Hit: OI class j is "present" in an image when its posterior is > `score_threshold` (0.95).
2. Co-occurrence count: `count[i, j]` = number of images whose ImageNet class is i with a hit on j.
3. Normalised co-occurrence: `count[i, j] / images[i]`, where `images[i]` is the number of images whose
   ImageNet class is i (so it is the fraction of class-i images in which j is confidently seen).
4. Selected pairs: normalised co-occurrence > `cooccurrence_threshold` (0.5) and no hierarchy path between
   i and j (neither is an ancestor of the other, nor are they the same class): a related pair is already
   covered by step 1 of the annotation construction.
5. Augmentation: tag j is added to every image whose ImageNet class is i.

"ImageNet class" of a list line = its deepest confidence-1 tag (the ImageNet label; its other
confidence-1 tags are that label's ancestors). OI columns are mapped to ML-Images class indices by a
mapping file (one index per line, line k for column k; -1 ignores a column).

Not published by the reference, so made explicit here: the confidence of an added tag (`--confidence`,
default 1.0, kept as the max with any confidence the image already has for that class) and whether the
added tag's ancestors are added too (`--propagate`, default off: in the released lists soft tags often
lack their ancestor closure).

Usage:
  python data/cooccurrence.py --input_list imagenet_part.txt --scores oi_scores.npy \
      --oi_classes oi_to_mlimages.txt --hierarchy dictionary_and_semantic_hierarchy.txt \
      --output_list imagenet_part_augmented.txt --pairs_out pairs.tsv
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from absl import app, flags

from data import command_line
from data.labels.cooccurrence import CooccurrenceConfig, augment_list, read_oi_mapping
from data.labels.hierarchy import load_hierarchy


@command_line.one_line_errors(
    "cooccurrence.py"
)  # a bad hierarchy, list or mapping: one line naming file and line
def main(argv: Sequence[str], flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """The script: `argv` as left by absl's parsing of `flag_values` (app.run passes only argv)."""
    f = flag_values
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {list(argv[1:])}")
    hierarchy = load_hierarchy(f.hierarchy)
    scores = np.load(f.scores, mmap_mode="r")
    if scores.ndim != 2:
        raise command_line.error(
            __file__, f"{f.scores}: expected a 2-D [images, oi_classes] array, got shape {scores.shape}"
        )
    oi_to_class = read_oi_mapping(f.oi_classes, num_classes=hierarchy.num_classes)
    config = CooccurrenceConfig(
        score_threshold=f.score_threshold,
        cooccurrence_threshold=f.cooccurrence_threshold,
        confidence=f.confidence,
        propagate=f.propagate,
    )
    augment_list(
        f.input_list,
        f.output_list,
        scores,
        oi_to_class=oi_to_class,
        hierarchy=hierarchy,
        config=config,
        pairs_out=f.pairs_out,
    )


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = {"flag_values": flag_values}
    flags.DEFINE_string(
        "input_list",
        None,
        "Image list of the ImageNet images (`filename idx:conf ...`).",
        required=True,
        **fv,
    )
    flags.DEFINE_string(
        "output_list",
        None,
        "Output: the same list with the co-occurring tags added.",
        required=True,
        **fv,
    )
    flags.DEFINE_string(
        "scores",
        None,
        ".npy float array [entries, num_oi]: OI posteriors, row r for entry r.",
        required=True,
        **fv,
    )
    flags.DEFINE_string(
        "oi_classes",
        None,
        "Text file: ML-Images class index of OI column k on line k (-1 ignores it).",
        required=True,
        **fv,
    )
    flags.DEFINE_string("hierarchy", None, "dictionary_and_semantic_hierarchy.txt.", required=True, **fv)
    flags.DEFINE_string(
        "pairs_out",
        None,
        "Optional TSV listing the selected (ImageNet class, added class) pairs.",
        **fv,
    )
    flags.DEFINE_float("score_threshold", 0.95, "An OI posterior above this is a hit (reference 0.95).", **fv)
    flags.DEFINE_float(
        "cooccurrence_threshold",
        0.5,
        "Select pairs whose normalised co-occurrence is above this (reference 0.5).",
        **fv,
    )
    flags.DEFINE_float(
        "confidence",
        1.0,
        "Confidence of an added tag (not published by the reference).",
        lower_bound=0.0,
        upper_bound=1.0,
        **fv,
    )
    flags.DEFINE_boolean("propagate", False, "Also add the ancestors of each added tag.", **fv)


if __name__ == "__main__":
    # A missing or malformed list, hierarchy, mapping or scores file: one line.
    command_line.run(main, define_flags, script=__file__, refusals=(ValueError, OSError))
