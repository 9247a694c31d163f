"""Dataset tooling: the TFRecord schema, the semantic hierarchy, annotation lists, downloading and writing."""
