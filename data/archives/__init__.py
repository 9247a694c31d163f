"""ImageNet archives: image bytes by ImageNet ID, read from per-synset tars, an outer tar of tars or an extracted tree without unpacking."""
