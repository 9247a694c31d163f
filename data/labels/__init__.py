"""What the labels mean: the list formats (URL, ImageNet-ID, image and single-label lists) and the semantic hierarchy."""
