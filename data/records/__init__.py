"""The record format: the tf.train.Example schema, TFRecord framing without TensorFlow (writing and reading), the manifest of a written split and its TFDS metadata."""
