"""Tests of DeepLabV3Plus and its decoder: golden parameter counts, layout, factory, training."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from configs import models as model_configs
from seg_jax.models import create_model
from seg_jax.models.deeplab import DeepLabV3, DeepLabV3Plus, DeepLabV3PlusDecoder
from seg_jax.models.resnet import ResNet
from model_helpers import init_shapes, random_variables, rbg_key

# Tests that run a model to check values, not speed: XLA:CPU compiles about twice as fast.
_FAST_COMPILE = {"xla_backend_optimization_level": 0}


def _count(tree) -> int:
    return sum(leaf.size for leaf in jax.tree.leaves(tree))


def _config(**overrides) -> ml_collections.ConfigDict:
    config = model_configs.deeplabv3plus(
        num_classes=5, backbone="resnet18", base_width=8, stem="imagenet", output_stride=16,
        multi_grid=(1, 1, 1), atrous_rates=(6, 12, 18), aspp_channels=16, dropout_rate=0.1,
        separable=False, aux_head=False, low_level_channels=8, decoder_channels=12,
        dtype="float32",
    )
    config.update(overrides)
    return config


def _tiny_model(**kwargs) -> DeepLabV3Plus:
    backbone = ResNet(stage_sizes=(1, 1, 1, 1), block="basic", base_width=4, output_stride=16)
    defaults = dict(num_classes=3, aspp_channels=8, atrous_rates=(2, 3), low_level_channels=4,
                    decoder_channels=6)
    return DeepLabV3Plus(backbone=backbone, **{**defaults, **kwargs})


# ResNet-50, output stride 16, 21 classes, the paper's widths (ASPP 256, low level 48, decoder 256):
#   backbone (torchvision resnet50 without fc)                        23,508,032
#   ASPP (as torchvision's deeplabv3_resnet50)                        15,535,104
#   decoder low-level 1x1 conv 256 -> 48: 12,288 + BN 96                  12,384
#   decoder conv0 3x3 (256 + 48) -> 256: 700,416 + BN 512                700,928
#   decoder conv1 3x3 256 -> 256: 589,824 + BN 512                       590,336
#   classifier 1x1 256 -> 21 with bias                                     5,397
#   total                                                             40,352,181
# Separable: each 3x3 conv C_in -> C_out saves 8 C_in C_out - 11 C_in parameters:
#   3 ASPP branches 2048 -> 256: 12,515,328; conv0 304 -> 256: 619,248; conv1 256 -> 256: 521,472;
#   total 13,656,048, leaving 26,696,133.
def test_resnet50_parameter_counts_golden():
    config = _config(backbone="resnet50", base_width=64, num_classes=21, aspp_channels=256,
                     low_level_channels=48, decoder_channels=256)
    images = jnp.zeros((1, 64, 64, 3))
    params = init_shapes(create_model(config), images)["params"]
    assert _count(params) == 40_352_181
    assert _count(params["aspp"]) == 15_535_104
    assert _count(params["decoder"]) == 12_384 + 700_928 + 590_336
    assert params["decoder"]["low_level_project"]["conv"]["kernel"].shape == (1, 1, 256, 48)
    assert params["decoder"]["conv0"]["conv"]["kernel"].shape == (3, 3, 304, 256)
    assert "head" not in params  # V3's 3x3 head conv is replaced by the decoder

    config.separable = True
    separable = init_shapes(create_model(config), images)["params"]
    assert _count(params) - _count(separable) == 13_656_048
    assert _count(separable) == 26_696_133
    assert separable["decoder"]["conv0"]["depthwise"]["conv"]["kernel"].shape == (3, 3, 1, 304)
    assert separable["decoder"]["conv1"]["pointwise"]["conv"]["kernel"].shape == (1, 1, 256, 256)
    assert _count(separable["backbone"]) == _count(params["backbone"])

    config.separable, config.aux_head = False, True
    with_aux = init_shapes(create_model(config), images)["params"]
    assert _count(with_aux) - _count(params) == 2_365_205  # torchvision's FCNHead(1024, 21)


@pytest.mark.parametrize(
    "stem, low_level_stride, height, width",
    [("imagenet", 4, 65, 97), ("conv3x3", 2, 33, 47), ("imagenet", 4, 1, 2)],
)
def test_decoder_works_at_the_low_level_stride(stem, low_level_stride, height, width):
    model = create_model(_config(stem=stem, output_stride=8 if stem == "conv3x3" else 16))
    images = jnp.zeros((2, height, width, 3))
    variables = init_shapes(model, images)

    def apply(variables):
        # Record the classifier's input-resolution output, before the final resize.
        return model.apply(variables, images, train=False, mutable=["intermediates"],
                           capture_intermediates=lambda mdl, _: mdl.name == "classifier")

    output, state = jax.eval_shape(apply, variables)
    logits = output.logits
    assert logits.shape == (2, height, width, 5) and logits.dtype == jnp.float32
    (classifier_out,) = state["intermediates"]["classifier"]["__call__"]
    expected = (-(-height // low_level_stride), -(-width // low_level_stride))
    assert classifier_out.shape == (2, *expected, 5)


def test_decoder_concatenates_the_encoder_output_first():
    # The order of the concatenation fixes how conv0's input channels are laid out (and so weight
    # import): the encoder's channels come first, then the low-level projection's. With
    # the ASPP rows of conv0's kernel zeroed, the output no longer depends on the encoder input.
    decoder = DeepLabV3PlusDecoder(low_level_channels=4, channels=6)
    rng = np.random.default_rng(0)
    encoded = jnp.asarray(rng.normal(size=(1, 3, 4, 8)), jnp.float32)
    low_level = jnp.asarray(rng.normal(size=(1, 9, 13, 5)), jnp.float32)
    variables = random_variables(decoder, encoded, low_level)
    kernel = variables["params"]["conv0"]["conv"]["kernel"]
    assert kernel.shape == (3, 3, 8 + 4, 6)
    params = {**variables["params"],
              "conv0": {**variables["params"]["conv0"],
                        "conv": {"kernel": kernel.at[:, :, :8, :].set(0.0)}}}
    variables = {**variables, "params": params}
    apply = jax.jit(lambda enc, low: decoder.apply(variables, enc, low, train=False),
                    compiler_options=_FAST_COMPILE)
    out = apply(encoded, low_level)
    assert out.shape == (1, 9, 13, 6)
    np.testing.assert_array_equal(apply(encoded * -3.0 + 1.0, low_level), out)
    assert jnp.any(apply(encoded, low_level * 2.0) != out)


class _HighLevelOnly(nn.Module):
    @nn.compact
    def __call__(self, images, *, train):
        return {"high_level": nn.Conv(4, (1, 1))(images)}


def test_backbones_without_the_needed_features_are_rejected_by_name():
    model = DeepLabV3Plus(num_classes=2, backbone=_HighLevelOnly(), aspp_channels=4)
    message = r"needs the backbone feature 'low_level'.*\['high_level'\]"
    with pytest.raises(ValueError, match=message):
        init_shapes(model, jnp.zeros((1, 8, 8, 3)))
    aux = DeepLabV3(num_classes=2, backbone=_HighLevelOnly(), aspp_channels=4, aux_head=True)
    with pytest.raises(ValueError, match=r"aux_head=True needs the backbone feature 'stage3'"):
        init_shapes(aux, jnp.zeros((1, 8, 8, 3)))


def test_create_model_builds_deeplabv3plus_with_its_fields():
    model = create_model(_config(separable=True, aux_head=True, dtype="bfloat16"))
    assert isinstance(model, DeepLabV3Plus) and isinstance(model.backbone, ResNet)
    assert (model.low_level_channels, model.decoder_channels) == (8, 12)
    assert model.separable and model.aux_head and model.dtype == jnp.bfloat16
    assert model.backbone.output_stride == 16 and model.backbone.dtype == jnp.bfloat16
    defaults = create_model(model_configs.deeplabv3plus(num_classes=3))
    assert (defaults.low_level_channels, defaults.decoder_channels) == (48, 256)
    assert not defaults.aux_head and not defaults.separable


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(decoder_chanels=8), r"Unknown model config keys \['decoder_chanels'\]"),
        (dict(name="deeplabv3"), r"Unknown model config keys \['decoder_channels', "
                                 r"'low_level_channels'\] for model 'deeplabv3'"),
        (dict(num_classes=None), r"missing required keys \['num_classes'\]"),
    ],
)
def test_create_model_rejects_bad_deeplabv3plus_configs(overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model(_config(**overrides))


@pytest.fixture(scope="module")
def train_step():
    """One jitted training step of a tiny V3+ with the auxiliary loss, as a train step would do."""
    model = _tiny_model(aux_head=True, dropout_rate=0.5)
    rng = np.random.default_rng(0)
    images = jnp.asarray(rng.normal(size=(2, 33, 47, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 3, size=(2, 33, 47)))
    variables = random_variables(model, images)

    @functools.partial(jax.jit, compiler_options=_FAST_COMPILE)
    def step(variables, images, labels):
        # One-hot, not take_along_axis: its scatter gradient is slow to compile on CPU.
        one_hot = jax.nn.one_hot(labels, 3)

        def cross_entropy(logits):
            return -jnp.sum(one_hot * jax.nn.log_softmax(logits), axis=-1).mean()

        def loss_fn(params):
            output, updates = model.apply(
                {**variables, "params": params}, images, train=True,
                mutable=["batch_stats"], rngs={"dropout": rbg_key(1)},
            )
            logits, aux = output.logits, output.aux_logits
            # torchvision's reference recipe weighs the auxiliary loss by 0.5, PSPNet by 0.4.
            return cross_entropy(logits) + 0.4 * cross_entropy(aux), (logits, aux, updates)

        return jax.value_and_grad(loss_fn, has_aux=True)(variables["params"])

    (loss, (logits, aux, updates)), grads = step(variables, images, labels)
    return dict(variables=variables, loss=loss, logits=logits, aux=aux, updates=updates,
                grads=grads)


def test_training_step_reaches_every_part(train_step):
    assert np.isfinite(train_step["loss"])
    grads = train_step["grads"]
    assert all(np.isfinite(np.asarray(g)).all() for g in jax.tree.leaves(grads))
    for path in [("backbone", "stem"), ("backbone", "layer4_0"), ("aspp", "project"),
                 ("decoder", "low_level_project"), ("decoder", "conv1"), ("aux_head", "conv")]:
        tree = functools.reduce(lambda t, k: t[k], path, grads)
        assert any(np.any(np.asarray(g) != 0) for g in jax.tree.leaves(tree)), path
    assert train_step["logits"].shape == train_step["aux"].shape == (2, 33, 47, 3)
    assert jnp.any(train_step["logits"] != train_step["aux"])


def test_training_updates_every_batch_norm_and_keeps_the_state_structure(train_step):
    old = train_step["variables"]["batch_stats"]
    new = train_step["updates"]["batch_stats"]
    assert set(train_step["updates"]) == {"batch_stats"}
    assert jax.tree.structure(new) == jax.tree.structure(old)
    assert all(np.any(np.asarray(a) != np.asarray(b))
               for a, b in zip(jax.tree.leaves(new), jax.tree.leaves(old)))
