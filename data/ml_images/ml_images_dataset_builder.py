r"""TFDS builder for Tencent ML-Images, generated with Apache Beam so that it runs on a cluster.

    tfds build data/ml_images --config=tiny --manual_dir=DIR --data_dir=OUT \
        --beam_pipeline_options="runner=DirectRunner"

(``runner=DataflowRunner,...``, ``FlinkRunner`` or ``SparkRunner`` to spread the images over many machines:
README.md, "Building the dataset on a cluster".)

`manual_dir` holds both parts of ML-Images (docs/REFERENCE.md section 1)::

    DIR/train_im_list.txt      the Open Images part after data/download.py: filename idx:conf ...
    DIR/val_im_list.txt        the same for the validation split
    DIR/images/...             the files those lists name, relative to this folder
    DIR/train_image_id_from_imagenet.txt   the ImageNet part: nXXXXXXXX/nXXXXXXXX_N.JPEG idx:conf ...
    DIR/val_image_id_from_imagenet.txt     the same for the validation split
    DIR/fall11_whole.tar       the ImageNet archive the IDs are read from (uncompressed outer tar), or
    DIR/imagenet/              a folder of per-synset tars or an extracted tree (a symlink will do)

The ``full`` config takes all of these: each split is the union of its two parts (10,706,941 + 6,902,811
train, 50,000 + 38,739 validation images), and a split with one part's list but not the other's is an
error naming the missing file; without any list of the validation split, there is no such split. The
``tiny`` config takes only ``train_im_list_tiny.txt``, ``val_im_list_tiny.txt`` and ``images/``. The
archive is read by the workers (`data.archives.imagenet`: each synset's tar once, front to back, only the
listed members kept), so it must be on a file system they all mount (not ``gs://``); the lists and
``images/`` may be on either.

Each image gets exactly what `data/tfrecord.py` stores for it: `images.prepare_image` keeps a JPEG that
TensorFlow decodes byte for byte (no re-encode) and converts everything else to an RGB JPEG; the label is
the line's tags as sparse ``indices`` + ``confidences`` (sorted by class index), which TFDS serializes as
``label/indices`` and ``label/confidences``, the writer's ``sparse`` layout. ``train`` and ``validation``
are TFDS's split names (``validation`` is what train.py's periodic evaluation reads).

The pipeline (its steps are in `data.ml_images.pipeline`): the driver cuts the list into ~1 MiB blocks of
whole lines (`list_index.index_list`, two streaming passes that keep only the block offsets); workers read
their blocks, a reshuffle spreads the lines, and every line is parsed and its image read and prepared on
the worker. An example's key is its line number, so the same list always gives
the same dataset, whatever the runner.

Nothing is dropped silently: a malformed line, a missing, unreadable, non-image, truncated or too large
file (`--max_pixels`-style limit on the header, before any pixel is decoded) is skipped with the same
reason the writer gives, logged as one line, counted in Beam metrics counters (namespace ``ml_images``,
``{split}/skipped/{reason}``) and summarised in the dataset's ``metadata.json`` (``{split}_summary``: the
count per reason and the first skipped lines; for a split of two parts also ``{split}_imagenet_summary``
and ``{split}_openimages_summary``, the same per source), with one summary log line per split and source.

``runner=DirectRunner`` (and a build that names no runner) runs on Beam's FnApiRunner without first trying
to download Beam's Prism runner from GitHub, as DirectRunner itself does (`pipeline.run_direct_without_download`):
a build fetches nothing from the internet.

The build prints our lines (each list's size, each split's summary, every skipped line) and Beam's
warnings, not Beam's INFO lines; ``default_sdk_harness_log_level=INFO`` in ``--beam_pipeline_options``
brings those back (`pipeline.quiet_beam`).

Apache Beam is needed only to generate the dataset (``pip install -e .[beam]``); reading a built dataset
needs only TFDS.
"""

from __future__ import annotations

import dataclasses
import os

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds
from absl import logging

from data.ml_images import pipeline as steps
from data.ml_images.pipeline import NUM_CLASSES, PrepareSettings
from data.pixels import images
from data.records import schema

__all__ = ["NUM_CLASSES", "Builder", "MlImagesConfig"]


@dataclasses.dataclass(eq=False)
class MlImagesConfig(tfds.core.BuilderConfig):
    """One set of lists (TFDS needs its configs to be mutable dataclasses, so this one is not frozen).

    Attributes:
      train_list: The training list's file name in `manual_dir`.
      val_list: The validation list's file name in `manual_dir`; the split is left out when it is absent.
      image_dir: Folder in `manual_dir` that the lists' file names are relative to.
      num_classes: Class indices at or above it are bad lines.
      jpeg_quality: Quality of the JPEG written for a converted image (`images.prepare_image`).
      verify: How kept JPEGs are checked: ``full`` or ``fast`` (`images.prepare_image`).
      max_pixels: Images with more pixels (read from the header) are skipped; 0 = no limit.
      imagenet_train_list: The ImageNet part's ID list for training in `manual_dir` ("" = no such part).
      imagenet_val_list: The same for validation.
      imagenet_archives: Where in `manual_dir` the ImageNet archive may be, in order; the first that
        exists is read (an outer tar, a folder of per-synset tars or an extracted tree).
    """

    train_list: str = "train_im_list.txt"
    val_list: str = "val_im_list.txt"
    image_dir: str = "images"
    num_classes: int = NUM_CLASSES
    jpeg_quality: int = images.DEFAULT_JPEG_QUALITY
    verify: str = "full"
    max_pixels: int = images.DEFAULT_MAX_PIXELS
    imagenet_train_list: str = ""
    imagenet_val_list: str = ""
    imagenet_archives: tuple[str, ...] = ("fall11_whole.tar", "imagenet")


# ---------------------------------------------------------------------------------------------------------
# The TFDS builder.
# ---------------------------------------------------------------------------------------------------------


class Builder(tfds.core.GeneratorBasedBuilder):
    """ML-Images: 11,166 classes, multi-label soft tags (docs/REFERENCE.md section 1)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: images as the TFRecord writer stores them, sparse labels."}
    BUILDER_CONFIGS = [
        MlImagesConfig(
            name="full",
            description="Both parts: the ImageNet IDs read from the archive and the downloaded Open Images "
            "(17,609,752 train / 88,739 val images, 11,166 classes).",
            imagenet_train_list="train_image_id_from_imagenet.txt",
            imagenet_val_list="val_image_id_from_imagenet.txt",
        ),
        MlImagesConfig(
            name="tiny",
            description="The release's tiny lists (train_im_list_tiny.txt), for checking a setup.",
            train_list="train_im_list_tiny.txt",
            val_list="val_im_list_tiny.txt",
        ),
    ]
    MANUAL_DOWNLOAD_INSTRUCTIONS = """
    Download the images of the ML-Images URL lists (data/download.py) and place in `manual_dir`:
      train_im_list.txt and val_im_list.txt (`tiny`: train_im_list_tiny.txt, val_im_list_tiny.txt),
      one `filename idx:conf ...` line per image, and the folder `images/` the file names are relative to;
    for `full` also the ImageNet part: train_image_id_from_imagenet.txt, val_image_id_from_imagenet.txt and
      the ImageNet Fall 2011 archive as fall11_whole.tar (or imagenet/: per-synset tars or extracted).
    """

    def _info(self) -> tfds.core.DatasetInfo:
        config = self.builder_config
        features = tfds.features.FeaturesDict(
            {
                schema.IMAGE_KEY: tfds.features.Image(encoding_format="jpeg"),
                schema.HEIGHT_KEY: tfds.features.Scalar(dtype=np.int64),
                schema.WIDTH_KEY: tfds.features.Scalar(dtype=np.int64),
                schema.NAME_KEY: tfds.features.Text(),
                schema.LABEL_KEY: tfds.features.FeaturesDict(
                    {
                        "indices": tfds.features.Tensor(shape=(None,), dtype=np.int64),
                        "confidences": tfds.features.Tensor(shape=(None,), dtype=np.float32),
                    }
                ),
            }
        )
        return tfds.core.DatasetInfo(
            builder=self,
            description="Tencent ML-Images: a large-scale multi-label image database (Wu et al., 2019).",
            features=features,
            homepage="https://github.com/Tencent/tencent-ml-images",
            citation="@article{tencent-ml-images-2019, title={Tencent ML-Images: A Large-Scale Multi-Label "
            "Image Database for Visual Representation Learning}, author={Wu, Baoyuan and Chen, Weidong and "
            "Fan, Yanbo and Zhang, Yong and Hou, Jinlong and Liu, Jie and Zhang, Tong}, journal={IEEE Access}, "
            "year={2019}}",
            metadata=tfds.core.BeamMetadataDict(num_classes=config.num_classes),
        )

    def _split_generators(self, dl_manager, pipeline):
        steps.quiet_beam(pipeline)  # Beam's INFO lines only when the pipeline options ask for them
        steps.run_direct_without_download(pipeline)  # DirectRunner would first download Prism from GitHub
        config = self.builder_config
        manual_dir = os.fspath(dl_manager.manual_dir)
        image_root = os.path.join(manual_dir, config.image_dir)
        if "://" not in image_root:
            image_root = os.path.abspath(image_root)  # shard_writer.image_path needs an absolute root
        instructions = self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()
        splits = {}
        for split, list_name, id_list_name in (
            ("train", config.train_list, config.imagenet_train_list),
            ("validation", config.val_list, config.imagenet_val_list),
        ):
            lists = {"openimages": os.path.join(manual_dir, list_name)}
            if id_list_name:
                lists["imagenet"] = os.path.join(manual_dir, id_list_name)
            present = {source: path for source, path in lists.items() if tf.io.gfile.exists(path)}
            if not present:
                if split == "train":
                    raise ValueError(f"{lists['openimages']} not found: {instructions}")
                logging.warning(
                    "%s not found: the %s config has no %s split",
                    " nor ".join(lists.values()),
                    config.name,
                    split,
                )
                continue
            missing = [path for source, path in lists.items() if source not in present]
            if missing:
                raise ValueError(
                    f"{missing[0]} not found, but {', '.join(present.values())} is: the {config.name} "
                    f"config's {split} split is made of both parts. {instructions}"
                )
            parts = {
                source: PrepareSettings(
                    list_path=path,
                    image_root=image_root,
                    num_classes=config.num_classes,
                    jpeg_quality=config.jpeg_quality,
                    verify=config.verify,
                    max_pixels=config.max_pixels,
                    imagenet_archive=self._imagenet_archive(manual_dir) if source == "imagenet" else "",
                )
                for source, path in lists.items()
            }
            splits[split] = self._generate_examples(pipeline, split=split, parts=parts)
        return splits

    def _imagenet_archive(self, manual_dir: str) -> str:
        """The first of the config's `imagenet_archives` that exists in `manual_dir`."""
        candidates = [os.path.join(manual_dir, name) for name in self.builder_config.imagenet_archives]
        for path in candidates:
            if os.path.exists(path):
                return os.path.abspath(path)
        raise ValueError(
            f"no ImageNet archive in {manual_dir} (looked for {', '.join(candidates)}): "
            f"{self.MANUAL_DOWNLOAD_INSTRUCTIONS.strip()}"
        )

    def _generate_examples(self, pipeline, *, split: str, parts: dict[str, PrepareSettings]):
        """The split's examples (all parts') as a PCollection; its summaries go to the metadata and the log."""
        beam = tfds.core.lazy_imports.apache_beam
        read = {}
        for source, settings in parts.items():
            if settings.imagenet_archive:
                read[source] = steps.read_archive_examples(
                    pipeline, split=split, settings=settings, label=source
                )
            else:
                read[source] = steps.read_examples(pipeline, split=split, settings=settings)
        list_paths = ", ".join(settings.list_path for settings in parts.values())
        if len(read) == 1:
            ((examples, report),) = read.values()
        else:
            examples = [e for e, _ in read.values()] | f"{split}/JoinParts" >> beam.Flatten()
            report = [r for _, r in read.values()] | f"{split}/JoinReports" >> beam.Flatten()
            for source, (_, part_report) in read.items():
                summary = steps.summarize(part_report, split=f"{split}/{source}") | (
                    f"{split}/{source}/LogSummary"
                    >> beam.Map(
                        steps.log_summary, split=f"{split} ({source})", list_path=parts[source].list_path
                    )
                )
                self.info.metadata[f"{split}_{source}_summary"] = summary
        summary = steps.summarize(report, split=split) | f"{split}/LogSummary" >> beam.Map(
            steps.log_summary, split=split, list_path=list_paths
        )
        self.info.metadata[f"{split}_summary"] = summary
        return examples
