"""Dataset tooling, one folder per concern (docs/DESIGN.md has the map).

- records: the record format (schema, TFRecord framing, manifest, TFDS metadata);
- labels: list formats, the semantic hierarchy, co-occurrence;
- pixels: the image check, augmentation and evaluation transforms, image files;
- archives: ImageNet images by ID from the archive as shipped;
- synthetic: the demo set;
- shards: image lists into crash-safe TFRecord shards, a whole dataset;
- fetch: URLs into image files or straight into shards;
- ml_images: the TFDS builder.

The scripts the README and the release name stay here as command lines: tfrecord.py, download.py, demo.py,
cooccurrence.py. fileio.py (atomic writes, paths as users type them) is shared by all; command_line.py is
the convention of every script of the project (its flags, its one-line errors).
"""
