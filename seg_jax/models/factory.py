"""`create_model(config)`: builds a model from a config through two small registries.

A model builder is registered under `config.name`, a backbone builder under `config.backbone`, so
new architectures (PanopticDeepLab) and backbones (MobileNetV2) plug in with one decorated function
each. The model config (usually `config.model`) holds, for DeepLabV3:

  field               values
  name                'deeplabv3' | 'deeplabv3plus'
  num_classes         int (the configs take it from the dataset)
  backbone            'resnet18', '...34', '...50', '...101', 'mobilenet_v2' (seg_jax.models.mobilenet)
  base_width          int: 64 is standard, smaller for CPU
  stem                'imagenet' | 'conv3x3'
  output_stride       8 | 16 | 32
  multi_grid          last-stage dilation factors; all ones: none
  zero_init_residual  zero each block's last BN gamma
  pretrained          torchvision backbone weights to start from ('' for none; read by the runner)
  atrous_rates        ASPP rates; () scales (6, 12, 18) by 16 / output_stride (doubled at 8)
  aspp_channels       int
  dropout_rate        ASPP dropout in training
  separable           depthwise-separable 3x3 convs in the heads (never in the backbone)
  aux_head            auxiliary FCN head on 'stage3' (`ModelOutput.aux_logits` in training)
  aspp                'full' | 'pooling_only' | 'none' (seg_jax.models.aspp.ASPP_MODES): ASPP,
                      its 1x1 + image-pooling branches only, or a 1x1 conv instead; optional,
                      'full' when absent (configs written before the field, torchvision's)
  dtype               'float32' | 'bfloat16' (computation)

'deeplabv3plus' adds `low_level_channels` (the decoder's 1x1 projection of 'low_level') and
`decoder_channels` (its two 3x3 convs).

Builders require every field of their model and reject unknown ones, so a misspelt or forgotten
field fails instead of silently taking a value from somewhere else: the config files hold the
defaults (`configs/models.py` has a complete block for each model). Other modules register more
models ('panoptic_deeplab', 'dilated_context') with their own fields; `registered_models()` and
`registered_backbones()` list what the imported modules registered.
"""

from typing import Any, Callable, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp

from seg_jax.errors import ConfigError
from seg_jax.models.aspp import check_aspp_mode
from seg_jax.models.deeplab import DeepLabV3, DeepLabV3Plus
from seg_jax.models.resnet import RESNET_PRESETS, VALID_OUTPUT_STRIDES, ResNet, resnet_layout

ModelBuilder = Callable[[Mapping[str, Any]], nn.Module]

_MODELS: dict[str, ModelBuilder] = {}
_BACKBONES: dict[str, ModelBuilder] = {}

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}

# Fields every backbone builder reads ('pretrained' is the runner's: builders ignore it).
BACKBONE_FIELDS = ("backbone", "base_width", "stem", "output_stride", "multi_grid",
                   "zero_init_residual", "dtype")
# Fields of every model config built on a registered backbone.
MODEL_BACKBONE_FIELDS = (*BACKBONE_FIELDS, "pretrained")

_DEEPLABV3_FIELDS = (*MODEL_BACKBONE_FIELDS, "name", "num_classes", "atrous_rates",
                     "aspp_channels", "dropout_rate", "separable", "aux_head")
_DEEPLABV3PLUS_FIELDS = (*_DEEPLABV3_FIELDS, "low_level_channels", "decoder_channels")
# Optional DeepLab fields and their value when absent: added after configs (saved runs, the
# torchvision converter's) that do not have them, whose models they leave as they were.
_DEEPLAB_OPTIONAL_FIELDS = {"aspp": "full"}


def register_model(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering `builder(config) -> nn.Module` under `config.name == name`."""
    return _register(_MODELS, name)


def register_backbone(name: str) -> Callable[[ModelBuilder], ModelBuilder]:
    """Decorator registering `builder(config) -> nn.Module` under `config.backbone == name`.

    The backbone maps `images, *, train` to a dict of features with at least 'high_level'.
    """
    return _register(_BACKBONES, name)


def _register(
    registry: dict[str, ModelBuilder], name: str
) -> Callable[[ModelBuilder], ModelBuilder]:
    def decorator(builder: ModelBuilder) -> ModelBuilder:
        if name in registry:
            raise ValueError(f"{name!r} is already registered.")
        registry[name] = builder
        return builder

    return decorator


def registered_models() -> list[str]:
    """The valid `config.name` values, sorted (those whose modules have been imported)."""
    return sorted(_MODELS)


def registered_backbones() -> list[str]:
    """The valid `config.backbone` values, sorted (those whose modules have been imported)."""
    return sorted(_BACKBONES)


def check_model_name(config: Mapping[str, Any]) -> None:
    """Raises ValueError unless `config.name` is a registered model, naming the valid ones."""
    name = config.get("name")
    if name not in _MODELS:
        raise ConfigError(f"Unknown model name config.model.name={name!r}; valid names: "
                          f"{sorted(_MODELS)}.")


def create_model(config: Mapping[str, Any]) -> nn.Module:
    """Builds the model named `config.name`; raises ValueError naming the valid options."""
    check_model_name(config)
    return _MODELS[config.get("name")](config)


def create_backbone(config: Mapping[str, Any]) -> nn.Module:
    """Builds the backbone named `config.backbone`; raises ValueError naming the valid options."""
    name = config.get("backbone")
    if name not in _BACKBONES:
        raise ConfigError(f"Unknown backbone {name!r}; valid backbones: {sorted(_BACKBONES)}.")
    return _BACKBONES[name](config)


def _required(config: Mapping[str, Any], fields: Sequence[str], what: str) -> dict[str, Any]:
    missing = sorted(key for key in fields if config.get(key) is None)
    if missing:
        raise ConfigError(
            f"The {what} config is missing required keys {missing}; the config files hold their "
            f"defaults (configs/models.py has a complete block for every model).")
    return {key: config[key] for key in fields}


def resolve_fields(config: Mapping[str, Any], fields: Sequence[str],
                   optional: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """`config`'s values of `fields` and of `optional` ({field: value when absent or None});
    rejects unknown keys and missing (or None) required ones."""
    optional = dict(optional or {})
    unknown = sorted(set(config.keys()) - set(fields) - set(optional))
    if unknown:
        raise ConfigError(
            f"Unknown model config keys {unknown} for model {config.get('name')!r}; "
            f"valid keys: {sorted({*fields, *optional})}."
        )
    values = _required(config, fields, f"model {config.get('name')!r}")
    for key, default in optional.items():
        values[key] = default if config.get(key) is None else config[key]
    return values


def backbone_fields(config: Mapping[str, Any]) -> dict[str, Any]:
    """The backbone's fields of a model config, all required (other keys are the model's)."""
    return _required(config, BACKBONE_FIELDS, f"backbone {config.get('backbone')!r}")


def parse_dtype(name: str) -> Any:
    if name not in _DTYPES:
        raise ConfigError(f"Unknown dtype {name!r}; valid dtypes: {sorted(_DTYPES)}.")
    return _DTYPES[name]


def _build_resnet(preset: str) -> ModelBuilder:
    def builder(config: Mapping[str, Any]) -> nn.Module:
        fields = backbone_fields(config)
        output_stride = fields["output_stride"]
        if output_stride not in VALID_OUTPUT_STRIDES:
            raise ConfigError(
                f"output_stride={output_stride!r}; valid output strides: "
                f"{list(VALID_OUTPUT_STRIDES)}."
            )
        stage_sizes = RESNET_PRESETS[preset]["stage_sizes"]
        multi_grid = tuple(int(m) for m in fields["multi_grid"])
        # Fail at construction rather than at the first init: unreachable stride, bad multi-grid.
        resnet_layout(
            stage_sizes, output_stride=output_stride, multi_grid=multi_grid, stem=fields["stem"]
        )
        return ResNet(
            stage_sizes=stage_sizes,
            block=RESNET_PRESETS[preset]["block"],
            base_width=int(fields["base_width"]),
            output_stride=int(output_stride),
            multi_grid=multi_grid,
            stem=fields["stem"],
            zero_init_residual=bool(fields["zero_init_residual"]),
            dtype=parse_dtype(fields["dtype"]),
        )

    return builder


for _preset in RESNET_PRESETS:
    register_backbone(_preset)(_build_resnet(_preset))


# DeepLabv3's ASPP rates at output stride 16 (Chen et al. 2017, Sec. 3.3); doubled at 8.
ASPP_RATES_AT_STRIDE_16 = (6, 12, 18)


def resolve_atrous_rates(atrous_rates, output_stride: int) -> tuple[int, ...]:
    """`atrous_rates` as ints; empty means DeepLabv3's (6, 12, 18) scaled by 16 / output_stride."""
    if len(atrous_rates):
        return tuple(int(r) for r in atrous_rates)
    scale = 16 / int(output_stride)
    return tuple(max(1, round(r * scale)) for r in ASPP_RATES_AT_STRIDE_16)


def _deeplab_fields(fields: Mapping[str, Any]) -> dict[str, Any]:
    """Constructor arguments shared by DeepLabV3 and DeepLabV3Plus, typed."""
    return dict(
        num_classes=int(fields["num_classes"]),
        backbone=create_backbone(fields),
        aspp_channels=int(fields["aspp_channels"]),
        atrous_rates=resolve_atrous_rates(fields["atrous_rates"], fields["output_stride"]),
        dropout_rate=float(fields["dropout_rate"]),
        separable=bool(fields["separable"]),
        aux_head=bool(fields["aux_head"]),
        dtype=parse_dtype(fields["dtype"]),
        aspp=check_aspp_mode(fields["aspp"]),  # fail here rather than at the first init
    )


@register_model("deeplabv3")
def _build_deeplabv3(config: Mapping[str, Any]) -> nn.Module:
    return DeepLabV3(**_deeplab_fields(
        resolve_fields(config, _DEEPLABV3_FIELDS, _DEEPLAB_OPTIONAL_FIELDS)))


@register_model("deeplabv3plus")
def _build_deeplabv3plus(config: Mapping[str, Any]) -> nn.Module:
    fields = resolve_fields(config, _DEEPLABV3PLUS_FIELDS, _DEEPLAB_OPTIONAL_FIELDS)
    return DeepLabV3Plus(
        **_deeplab_fields(fields),
        low_level_channels=int(fields["low_level_channels"]),
        decoder_channels=int(fields["decoder_channels"]),
    )
