"""seg_jax: semantic and panoptic segmentation in JAX/Flax.

Modules: `losses`, `decision`, `metrics`, `models`, `data`, `train` (see README.md).
"""
