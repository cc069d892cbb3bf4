"""Datasets (tfds builders and sources), augmentation and the numpy input pipeline."""
