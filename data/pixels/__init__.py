"""Pixels: the one image check, the training augmentation and evaluation transforms, and image files for the tools."""
