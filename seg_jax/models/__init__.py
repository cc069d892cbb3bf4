"""Segmentation models (Flax Linen): layers, backbones (ResNet, MobileNetV2), ASPP, DeepLabV3, the
dilated context module, Panoptic-DeepLab, receptive-field analysis, torchvision weight import and
the `create_model` factory. Every model returns a `ModelOutput`. Importing this package registers
every model and backbone."""

from seg_jax.models.aspp import ASPP
from seg_jax.models.context import DilatedContextModule, DilatedContextNet
from seg_jax.models.deeplab import DeepLabV3, DeepLabV3Plus, DeepLabV3PlusDecoder, FCNHead
from seg_jax.models.factory import (
    create_model,
    register_backbone,
    register_model,
    registered_backbones,
    registered_models,
)
from seg_jax.models.layers import ConvBNAct, SeparableConvBNAct
from seg_jax.models.mobilenet import MobileNetV2
from seg_jax.models.outputs import ModelOutput
from seg_jax.models.panoptic_deeplab import PanopticDeepLab, panoptic_postprocess
from seg_jax.models.receptive_field import (
    coverage_map,
    effective_receptive_field,
    model_receptive_field,
    receptive_field,
)
from seg_jax.models.resnet import RESNET_PRESETS, ResNet
from seg_jax.models.weights import (
    deeplabv3_config_from_torchvision,
    deeplabv3_variables_from_torchvision,
    load_pretrained_backbone,
    mobilenet_v2_variables_from_torchvision,
    read_torch_state_dict,
    resnet_variables_from_torchvision,
)

__all__ = [
    "ASPP",
    "ConvBNAct",
    "DeepLabV3",
    "DeepLabV3Plus",
    "DeepLabV3PlusDecoder",
    "FCNHead",
    "DilatedContextModule",
    "DilatedContextNet",
    "MobileNetV2",
    "ModelOutput",
    "PanopticDeepLab",
    "RESNET_PRESETS",
    "ResNet",
    "SeparableConvBNAct",
    "coverage_map",
    "create_model",
    "deeplabv3_config_from_torchvision",
    "deeplabv3_variables_from_torchvision",
    "effective_receptive_field",
    "load_pretrained_backbone",
    "mobilenet_v2_variables_from_torchvision",
    "model_receptive_field",
    "panoptic_postprocess",
    "read_torch_state_dict",
    "receptive_field",
    "register_backbone",
    "register_model",
    "registered_backbones",
    "registered_models",
    "resnet_variables_from_torchvision",
]
