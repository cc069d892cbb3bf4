"""The model block of a config: every field a registered model requires, with its default.

The builders in `seg_jax.models` require every field of their model and reject unknown ones, so
this file is the one home of each model default. `configs/default.py` takes `config.model` from
here, and so can a notebook or a test:

    from configs import models
    model = create_model(models.deeplabv3plus(num_classes=3, backbone="resnet50"))

`num_classes` defaults to None: the runner takes it from the dataset (`config.data.num_classes`).
"""

import ml_collections
from ml_collections import config_dict

# Config files import no JAX: the runner sets XLA flags after reading the config, before JAX starts.

BACKBONE = dict(
    backbone="resnet18",
    base_width=64,  # 64 is the standard ResNet; MobileNetV2's width multiplier is base_width / 64
    stem="imagenet",  # 'conv3x3': three 3x3 convs (DeepLab's ResNet-v1c stem)
    output_stride=16,
    multi_grid=(1, 1, 1),  # last-stage dilation factors (DeepLabv3's multi-grid); ones: none
    zero_init_residual=False,
    dtype="float32",  # computation dtype; parameters and logits stay float32
    pretrained="",  # torchvision backbone weights (.pth / .npz) for a fresh start
)

DEEPLABV3 = dict(
    BACKBONE,
    name="deeplabv3",
    num_classes=None,
    atrous_rates=(),  # () = DeepLabv3's (6, 12, 18) at output stride 16, doubled at 8
    aspp_channels=256,
    dropout_rate=0.1,  # ASPP dropout in training
    separable=False,  # depthwise-separable 3x3 convs in the heads (never in the backbone)
    aux_head=False,  # auxiliary FCN head on stage 3 (training only; config.loss.aux_weight)
    # The context module on the backbone: 'full' (ASPP: 1x1, atrous and image-pooling branches),
    # 'pooling_only' (ASPP's 1x1 and image-pooling branches; atrous_rates unused) or 'none' (one
    # 1x1 conv + BN + ReLU of width aspp_channels with the dropout, no context of its own).
    aspp="full",
)

DEEPLABV3PLUS = dict(
    DEEPLABV3,
    name="deeplabv3plus",
    low_level_channels=48,  # the decoder's 1x1 projection of the stride-4 features (paper: 48)
    decoder_channels=256,  # its two 3x3 convs (paper: 256)
)

# Cheng et al. 2020's Panoptic-DeepLab: semantic and instance decoders, 5x5 separable heads.
PANOPTIC_DEEPLAB = dict(
    BACKBONE,
    name="panoptic_deeplab",
    num_classes=None,
    atrous_rates=(),
    aspp_channels=256,
    decoder_channels=256,
    low_level_channels=(64, 32),  # projections of the stride-8 and stride-4 features
    head_channels=256,
    instance_aspp_channels=256,
    instance_decoder_channels=128,
    instance_low_level_channels=(32, 16),
    instance_head_channels=32,
    dropout_rate=0.1,
    separable=True,
)

# Yu & Koltun's context module on a dilated backbone (seg_jax.models.context).
DILATED_CONTEXT = dict(
    BACKBONE,
    name="dilated_context",
    num_classes=None,
    output_stride=8,
    dilations=(1, 1, 2, 4, 8, 16, 1),  # Yu & Koltun's Table 1 (context.YU_KOLTUN_DILATIONS)
    context_width="basic",  # 'large': Table 1's widened layers
    identity_init=True,
    early_skip=False,  # a skip from an early non-dilated layer (the gridding remedy)
    separable=False,
)

MODELS = {fields["name"]: fields for fields in
          (DEEPLABV3, DEEPLABV3PLUS, PANOPTIC_DEEPLAB, DILATED_CONTEXT)}


def model_config(name: str, **overrides) -> ml_collections.ConfigDict:
    """The complete model block of `name` with `overrides` (an unknown key is an error)."""
    if name not in MODELS:
        raise ValueError(f"No model block for {name!r}; known: {sorted(MODELS)}.")
    fields = MODELS[name]
    unknown = sorted(set(overrides) - set(fields))
    if unknown:
        raise ValueError(f"Unknown {name} fields {unknown}; valid: {sorted(fields)}.")
    block = ml_collections.ConfigDict({**fields, **overrides})
    if block.num_classes is None:  # typed, so that --config.model.num_classes=3 parses
        block.num_classes = config_dict.placeholder(int)
    return block


def deeplabv3(**overrides) -> ml_collections.ConfigDict:
    return model_config("deeplabv3", **overrides)


def deeplabv3plus(**overrides) -> ml_collections.ConfigDict:
    return model_config("deeplabv3plus", **overrides)


def panoptic_deeplab(**overrides) -> ml_collections.ConfigDict:
    return model_config("panoptic_deeplab", **overrides)


def dilated_context(**overrides) -> ml_collections.ConfigDict:
    return model_config("dilated_context", **overrides)


def switch_model(config, name: str, **overrides) -> None:
    """Replaces `config.model` with `name`'s block: the fields the two models share keep their
    current values (the backbone's, ASPP's, ...), the new model's own fields take their defaults,
    then `overrides`; the class count stays the dataset's. A locked config stays locked."""
    kept = {key: config.model[key] for key in MODELS[name]
            if key in config.model and key not in ("name", "num_classes")}
    block = model_config(name, **{**kept, **overrides})
    with config.unlocked():
        config.model = block
        config.model.num_classes = config.data.get_ref("num_classes")
