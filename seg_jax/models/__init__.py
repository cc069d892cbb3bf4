"""Segmentation models (Flax Linen): layers, ResNet backbones, ASPP, DeepLabv3 and the factory."""

from seg_jax.models.aspp import ASPP
from seg_jax.models.deeplab import DeepLabV3
from seg_jax.models.factory import create_model, register_backbone, register_model
from seg_jax.models.layers import ConvBNAct, SeparableConvBNAct
from seg_jax.models.panoptic_deeplab import PanopticDeepLab, panoptic_postprocess
from seg_jax.models.resnet import RESNET_PRESETS, ResNet

__all__ = [
    "ASPP",
    "ConvBNAct",
    "DeepLabV3",
    "PanopticDeepLab",
    "RESNET_PRESETS",
    "ResNet",
    "SeparableConvBNAct",
    "create_model",
    "panoptic_postprocess",
    "register_backbone",
    "register_model",
]
