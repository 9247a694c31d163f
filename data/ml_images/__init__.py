"""The ML-Images TFDS dataset builder (``ml_images``), generated with Apache Beam.

The builder lives in `ml_images_dataset_builder` (TFDS's folder layout, so that
``tfds build data/ml_images`` finds it). This package does not import it: importing the builder registers
the ``ml_images`` name with TFDS, which the ``tfds`` command line does on its own, under its own module name.
"""
