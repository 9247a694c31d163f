"""What the labels mean: the list formats (URL, ImageNet-ID, image and single-label lists), the semantic hierarchy and the co-occurrence augmentation."""
