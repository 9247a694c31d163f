"""TFDS metadata for the writer's output, so that `tfds.builder_from_directory(output_dir)` reads the splits.

Nothing is renamed or copied: TFDS is told our file names through its file-name template, and the record
counts through our manifests. `tensorflow_datasets` is imported only when the metadata is written.
"""

from __future__ import annotations

import glob
import os

import numpy as np
from absl import logging

from data.records import schema


def write_tfds_metadata(output_dir: str) -> None:
    """Writes TFDS's dataset_info.json and features.json for every complete split in `output_dir`.

    TFDS learns our file names (``{split}-{i:05d}-of-{n:05d}.tfrecord``) from the template stored per
    split, and the record counts from our manifests, so no file is read, renamed or copied. The features
    describe the records exactly: the dense label is a float32 tensor stored as raw bytes (TFDS's BYTES
    encoding is the reference's little-endian layout), the sparse label is the ``label/indices`` and
    ``label/confidences`` pair (TFDS flattens nested features with ``/``), the int64 label a ClassLabel.
    TFDS needs every split of the folder at once, so all manifests there must share one label format.
    """
    import tensorflow_datasets as tfds  # Optional: only this feature needs it.

    manifests = {}
    for path in sorted(glob.glob(os.path.join(glob.escape(output_dir), "*-manifest.json"))):
        prefix = os.path.basename(path).removesuffix("-manifest.json")
        manifests[prefix] = schema.read_manifest(output_dir, prefix)
    formats = {(m.label_format, m.num_classes) for m in manifests.values()}
    if len(formats) != 1:
        raise ValueError(
            f"splits in {output_dir} differ in label format or classes ({formats}); TFDS needs one"
        )
    ((label_format, num_classes),) = formats
    if label_format == "dense":
        label = tfds.features.Tensor(
            shape=(num_classes,), dtype=np.float32, encoding=tfds.features.Encoding.BYTES
        )
    elif label_format == "sparse":
        label = {
            "indices": tfds.features.Tensor(shape=(None,), dtype=np.int64),
            "confidences": tfds.features.Tensor(shape=(None,), dtype=np.float32),
        }
    else:
        label = tfds.features.ClassLabel(num_classes=num_classes)
    features = tfds.features.FeaturesDict(
        {
            schema.IMAGE_KEY: tfds.features.Image(encoding_format="jpeg"),
            schema.HEIGHT_KEY: tfds.features.Scalar(dtype=np.int64),
            schema.WIDTH_KEY: tfds.features.Scalar(dtype=np.int64),
            schema.NAME_KEY: tfds.features.Text(),
            schema.LABEL_KEY: label,
        }
    )
    template = "{SPLIT}-{SHARD_X_OF_Y}.{FILEFORMAT}"
    split_infos = [
        tfds.core.SplitInfo(
            name=prefix,
            shard_lengths=list(m.counts),
            num_bytes=sum(os.path.getsize(f) for f in m.files),
            filename_template=tfds.core.ShardedFileTemplate(
                data_dir=tfds.core.Path(output_dir),
                template=template,
                split=prefix,
                filetype_suffix="tfrecord",
            ),
        )
        for prefix, m in manifests.items()
    ]
    tfds.folder_dataset.write_metadata(
        data_dir=output_dir,
        features=features,
        split_infos=split_infos,
        filename_template=template,
        check_data=False,
        description="Tencent ML-Images records written by data/tfrecord.py (see its manifest).",
    )
    logging.info("wrote TFDS metadata for splits %s in %s", [s.name for s in split_infos], output_dir)
