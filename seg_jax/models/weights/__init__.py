"""Importing torchvision weights (ResNet, DeepLabV3-ResNet, MobileNetV2), without PyTorch.

Reading (`torch_format`). `read_torch_state_dict(path)` reads a state dict written by
`torch.save(state_dict, path)` in the zip format of torch >= 1.6 (the default since), or an `.npz`
of the same keys, with an unpickler that resolves only the names a state dict needs and refuses
every other: nothing named in the file is executed.

Converting (`convert`, one `torchvision_*` module per model family). Each torchvision module has
one counterpart in this package (see the layout notes of `resnet.py`, `mobilenet.py`,
`deeplab.py`, `aspp.py`): a conv `weight` `[O, I, kh, kw]` becomes a flax `kernel`
`[kh, kw, I, O]`, a BatchNorm `weight`/`bias` becomes `scale`/`bias` in 'params' and
`running_mean`/`running_var` become `mean`/`var` in 'batch_stats'; `num_batches_tracked` has no
use here. The converters walk the flax variable tree the model really creates (from
`jax.eval_shape` of its `init`), fetch the torch key of every leaf, and check that every leaf is
filled exactly once with the right shape and that every torch key is used or explicitly ignored
(e.g. the ImageNet classifier `fc.*`); errors name the keys. The converted variables are host
NumPy float32 arrays, ready to be placed or sharded like the variables from `model.init`.
`load_pretrained_backbone` (`backbone`) puts them into a segmentation model's backbone.

Inputs: torchvision's pretrained models expect RGB images scaled to [0, 1] and normalised with the
ImageNet mean (0.485, 0.456, 0.406) and standard deviation (0.229, 0.224, 0.225).

Every name is importable from here (`seg_jax.models.weights.<name>`); the submodules' loggers are
children of this package's, `seg_jax.models.weights`.
"""

from seg_jax.models.weights.backbone import BACKBONE_PRESETS, load_pretrained_backbone
from seg_jax.models.weights.convert import (
    ModuleKey,
    NoCounterpart,
    StateDict,
    Variables,
    convert_torchvision,
)
from seg_jax.models.weights.torch_format import read_torch_state_dict
from seg_jax.models.weights.torchvision_deeplab import (
    TORCHVISION_DEEPLABV3_ATROUS_RATES,
    TORCHVISION_DEEPLABV3_OUTPUT_STRIDE,
    deeplabv3_config_from_torchvision,
    deeplabv3_module_key,
    deeplabv3_variables_from_torchvision,
)
from seg_jax.models.weights.torchvision_mobilenet import (
    mobilenet_v2_module_key,
    mobilenet_v2_variables_from_torchvision,
)
from seg_jax.models.weights.torchvision_resnet import (
    infer_resnet_preset,
    resnet_module_key,
    resnet_variables_from_torchvision,
)

__all__ = [
    "BACKBONE_PRESETS",
    "ModuleKey",
    "NoCounterpart",
    "StateDict",
    "TORCHVISION_DEEPLABV3_ATROUS_RATES",
    "TORCHVISION_DEEPLABV3_OUTPUT_STRIDE",
    "Variables",
    "convert_torchvision",
    "deeplabv3_config_from_torchvision",
    "deeplabv3_module_key",
    "deeplabv3_variables_from_torchvision",
    "infer_resnet_preset",
    "load_pretrained_backbone",
    "mobilenet_v2_module_key",
    "mobilenet_v2_variables_from_torchvision",
    "read_torch_state_dict",
    "resnet_module_key",
    "resnet_variables_from_torchvision",
]
