"""Tests of seg_jax.models.receptive_field: hand-worked fields, gridding, coverage maps, ERF."""

import itertools

import jax.numpy as jnp
import numpy as np
import pytest

from seg_jax.models.aspp import ASPP
from seg_jax.models.context import (
    HDC_DILATIONS,
    YU_KOLTUN_DILATIONS,
    DilatedContextModule,
    DilatedContextNet,
)
from seg_jax.models.receptive_field import (
    ConvSpec,
    analysis_variables,
    context_conv_path,
    coverage_map,
    effective_receptive_field,
    hdc_max_distances,
    missing_offsets,
    model_receptive_field,
    module_conv_path,
    path_receptive_field,
    receptive_field,
    resnet_conv_path,
    satisfies_hdc,
    stack_offsets,
)
from seg_jax.models.resnet import RESNET_PRESETS, ResNet


def _sizes_jumps_starts(fields):
    return [(f.size, f.jump, f.start) for f in fields]


# ----------------------------------------------------------------------------- analytical


def test_three_dilated_3x3_layers():
    # r = 1 + 2*1 = 3, 3 + 2*2 = 7, 7 + 2*4 = 15; no stride, symmetric padding: centred at 0.
    fields = receptive_field([3, 3, 3], [1, 1, 1], [1, 2, 4])
    assert _sizes_jumps_starts(fields) == [(3, 1, 0), (7, 1, 0), (15, 1, 0)]
    assert [f.name for f in fields] == ["layer1", "layer2", "layer3"]


def test_strided_and_dilated_layers():
    # 3x3/2: r = 3, j = 2. 3x3/2: r = 3 + 2*2 = 7, j = 4. 3x3: r = 7 + 2*4 = 15, j = 4.
    assert _sizes_jumps_starts(receptive_field([3, 3, 3], [2, 2, 1], [1, 1, 1])) == [
        (3, 2, 0), (7, 4, 0), (15, 4, 0)
    ]
    # 3x3/2, then 3x3 with dilation 2 on the stride-2 grid: r = 3 + (3-1)*2*2 = 11.
    assert _sizes_jumps_starts(receptive_field([3, 3], [2, 1], [1, 2])) == [(3, 2, 0), (11, 2, 0)]
    # 7x7/2 stem + 3x3/2 max-pool of ResNet: 7, then 7 + 2*2 = 11 with jump 4.
    assert _sizes_jumps_starts(receptive_field([7, 3], [2, 2])) == [(7, 2, 0), (11, 4, 0)]


def test_start_offsets_without_padding():
    # 'VALID' 3x3 convs: output pixel 0 is centred on input pixel 1, then 1 + 1 = 2.
    fields = receptive_field([3, 3], paddings=[0, 0])
    assert [f.start for f in fields] == [1.0, 2.0]
    # Strided: 1, then 1 + 1 * 2 = 3; output pixel i of layer 2 is centred on 3 + 2 i.
    fields = receptive_field([3, 3], [2, 1], paddings=[0, 0])
    assert [f.start for f in fields] == [1.0, 3.0]
    assert fields[-1].center(5) == 13.0
    assert fields[-1].bounds(5) == (10.0, 16.0)  # size 3 + 2*2 = 7 around 13
    # An even window (VGG's 2x2/2 max-pool) is centred between two pixels.
    assert receptive_field([2], [2], paddings=[0])[0].start == 0.5


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(kernel_sizes=[3, 3], strides=[1], dilations=[1, 1]), "lengths"),
        (dict(kernel_sizes=[3, 3], strides=[1, 1], dilations=[1, 2, 4]), "lengths"),
        (dict(kernel_sizes=[3], strides=[0], dilations=[1]), "strides"),
        (dict(kernel_sizes=[3], strides=[1], dilations=[-1]), "dilations"),
        (dict(kernel_sizes=[0], strides=[1], dilations=[1]), "kernel_sizes"),
        (dict(kernel_sizes=[3.0], strides=[1], dilations=[1]), "kernel_sizes"),
        (dict(kernel_sizes=[3], strides=[1], dilations=[1], paddings=[-1]), "padding"),
        (dict(kernel_sizes=[], strides=[], dilations=[]), "empty"),
    ],
)
def test_invalid_layers_are_rejected(kwargs, match):
    with pytest.raises(ValueError, match=match):
        receptive_field(**kwargs)


def test_resnet_fields_are_independent_of_output_stride():
    # Hand-worked for torchvision's layout (stride on the first block's first 3x3):
    # ResNet-18: stem 7, pool 11 (j 4), layer1 +4*8 = 43, layer2 +8 +3*16 = 99 (j 8),
    # layer3 +16 +3*32 = 211 (j 16), layer4 +32 +3*64 = 435 (j 32).
    # ResNet-50: 11, +3*8 = 35, +8 +3*16 = 91, +16 +5*32 = 267, +32 +2*64 = 427.
    # Dilation doubles each tap distance exactly where the stride no longer does: same field.
    expected = {"resnet18": 435, "resnet50": 427}
    for name, size in expected.items():
        preset = RESNET_PRESETS[name]
        for output_stride in (8, 16, 32):
            path = resnet_conv_path(
                preset["stage_sizes"], preset["block"], output_stride=output_stride
            )
            field = path_receptive_field(path)[-1]
            assert (field.size, field.jump, field.start) == (size, output_stride, 0)
            model = ResNet(output_stride=output_stride, **preset)
            assert model_receptive_field(model) == field
            assert model.feature_strides()["high_level"] == field.jump


def test_resnet_multi_grid_enlarges_the_field():
    # ResNet-50, output stride 16, multi-grid (1, 2, 4): layer4's 3x3 dilations go from
    # (1, 2, 2) to (1, 4, 8) on the stride-16 grid: 427 - 2*(2+2)*16 + 2*(4+8)*16 = 683.
    path = resnet_conv_path((3, 4, 6, 3), "bottleneck", output_stride=16, multi_grid=(1, 2, 4))
    assert path_receptive_field(path)[-1].size == 683


def test_resnet_conv3x3_stem_path():
    # 3x3/2 stem (3, j 2); one basic block per stage at output stride 8 (layer4 dilated):
    # +4+4 = 11; +4 (j 4) +8 = 23; +8 (j 8) +16 = 47; +16 +2*2*8 = 95.
    path = resnet_conv_path((1, 1, 1, 1), "basic", output_stride=8, stem="conv3x3")
    assert [s.name for s in path[:3]] == ["stem", "layer1_0/conv1", "layer1_0/conv2"]
    assert path_receptive_field(path)[-1].size == 95


def test_context_module_fields():
    # Yu & Koltun, Table 1: 3, 5, 9, 17, 33, 65, 67, and the final 1x1 keeps 67.
    sizes = [f.size for f in path_receptive_field(context_conv_path(YU_KOLTUN_DILATIONS))]
    assert sizes == [3, 5, 9, 17, 33, 65, 67, 67]
    assert model_receptive_field(DilatedContextModule()).size == 67
    assert model_receptive_field(DilatedContextModule(dilations=HDC_DILATIONS)).size == 35
    assert model_receptive_field(DilatedContextModule(separable=True)).size == 67
    # Skips are shorter paths: the early skip leaves the field alone.
    assert model_receptive_field(DilatedContextModule(early_skip=True)).size == 67


def test_dilated_context_net_field_adds_the_module_at_the_backbone_stride():
    backbone = ResNet(output_stride=8, **RESNET_PRESETS["resnet18"])
    model = DilatedContextNet(num_classes=5, backbone=backbone)
    field = model_receptive_field(model)
    # 435 + (67 - 1) * 8: each pixel of the score map is 8 image pixels apart.
    assert (field.size, field.jump) == (963, 8)
    assert field.name == "context/final"


def test_unknown_models_are_rejected():
    with pytest.raises(TypeError, match="ASPP"):
        module_conv_path(ASPP())


def test_conv_spec_default_padding_is_symmetric():
    assert ConvSpec(3, dilation=4).resolved_padding() == 4
    assert ConvSpec(7, stride=2).resolved_padding() == 3


# ----------------------------------------------------------------------------- gridding


def test_stack_offsets():
    np.testing.assert_array_equal(stack_offsets((2, 2, 2)), np.arange(-6, 7, 2))
    np.testing.assert_array_equal(stack_offsets((1, 2, 5)), np.arange(-8, 9))
    np.testing.assert_array_equal(missing_offsets((2, 2, 2)), [-5, -3, -1, 1, 3, 5])
    assert missing_offsets((1, 2, 5)).size == 0
    assert missing_offsets(YU_KOLTUN_DILATIONS).size == 0
    # (1, 2) reaches [-3, 3]; the rate 9 shifts that block to [-12, -6] and [6, 12].
    assert missing_offsets((1, 2, 9)).tolist() == [-5, -4, 4, 5]


def test_hdc_rule_of_wang_et_al():
    # The paper's examples: (1, 2, 5) has M_2 = 2 <= 3, (1, 2, 9) has M_2 = 5 > 3.
    assert hdc_max_distances((1, 2, 5)) == (1, 2, 5)
    assert hdc_max_distances((1, 2, 9))[1] == 5
    assert satisfies_hdc((1, 2, 5))
    assert not satisfies_hdc((1, 2, 9))
    # M_2 = 2 for (2, 2, 2) too, but its first layer is dilated: every odd offset is missed.
    assert hdc_max_distances((2, 2, 2))[1] == 2
    assert not satisfies_hdc((2, 2, 2))
    assert satisfies_hdc(HDC_DILATIONS)
    assert satisfies_hdc(YU_KOLTUN_DILATIONS)


def test_hdc_rule_is_sufficient_for_a_hole_free_stack():
    for length in (1, 2, 3, 4):
        for rates in itertools.product(range(1, 10), repeat=length):
            if satisfies_hdc(rates):
                assert missing_offsets(rates).size == 0, rates
    # Not necessary: (1, 3, 1) has M_2 = 5 but reaches every offset in [-5, 5].
    assert not satisfies_hdc((1, 3, 1)) and missing_offsets((1, 3, 1)).size == 0


# ----------------------------------------------------------------------------- coverage maps


def _coverage(module, size, channels=2, **kwargs):
    shape = (size, size, channels)
    variables = analysis_variables(module, shape, positive=True)
    return coverage_map(lambda x: module.apply(variables, x), shape, (size // 2, size // 2),
                        **kwargs)


def _offsets_grid(covered, size):
    """Covered (row, col) offsets relative to the centre pixel `size // 2`."""
    rows, cols = np.nonzero(covered)
    return set(zip((rows - size // 2).tolist(), (cols - size // 2).tolist()))


def test_gridding_stack_covers_only_even_offsets():
    covered = _coverage(DilatedContextModule(dilations=(2, 2, 2)), 21)
    even = set(itertools.product(range(-6, 7, 2), repeat=2))
    assert _offsets_grid(covered, 21) == even  # 49 of the 13 x 13 pixels: holes
    assert covered.sum() == 49


def test_hdc_stack_covers_its_field_contiguously():
    covered = _coverage(DilatedContextModule(dilations=(1, 2, 5)), 25)
    field = model_receptive_field(DilatedContextModule(dilations=(1, 2, 5)))
    assert field.size == 17
    assert _offsets_grid(covered, 25) == set(itertools.product(range(-8, 9), repeat=2))


def test_early_skip_fills_the_holes_within_its_reach():
    covered = _coverage(DilatedContextModule(dilations=(2, 2, 2), early_skip=True), 21)
    offsets = _offsets_grid(covered, 21)
    # The skip (non-dilated 3x3 -> final 1x1) reaches the 3x3 around the centre: no hole there.
    reach = set(itertools.product(range(-1, 2), repeat=2))
    assert reach <= offsets
    assert offsets == reach | set(itertools.product(range(-6, 7, 2), repeat=2))
    # Beyond its reach the dilated path's lattice remains.
    assert (3, 3) not in offsets and (2, 3) not in offsets


@pytest.mark.parametrize(
    "dilations", [(2, 2, 2), (1, 2, 5), (1, 2, 9), (3, 1, 3), YU_KOLTUN_DILATIONS, HDC_DILATIONS]
)
def test_coverage_matches_the_exact_offsets_and_the_analytical_extent(dilations):
    module = DilatedContextModule(dilations=dilations)
    field = model_receptive_field(module)
    size = field.size + 4
    covered = _coverage(module, size, channels=1)
    reached = stack_offsets(dilations)
    assert _offsets_grid(covered, size) == set(itertools.product(reached.tolist(), repeat=2))
    rows = np.flatnonzero(covered.any(axis=1))
    assert rows[-1] - rows[0] + 1 == field.size


def test_resnet_coverage_extent_equals_the_analytical_field():
    # The conv3x3 stem has no max-pool, whose gradient would reach one input per window.
    model = ResNet(stage_sizes=(1, 1, 1, 1), block="basic", base_width=2, output_stride=8,
                   stem="conv3x3")
    field = model_receptive_field(model)
    shape, position = (128, 128, 3), (8, 8)
    variables = analysis_variables(model, shape, positive=True, train=False)
    covered = coverage_map(
        lambda x: model.apply(variables, x, train=False)["high_level"], shape, position
    )
    first, last = (int(b) for b in field.bounds(8))
    expected = np.zeros(shape[:2], bool)
    expected[first: last + 1, first: last + 1] = True
    assert last - first + 1 == field.size == 95
    np.testing.assert_array_equal(covered, expected)


def test_effective_receptive_field_is_the_same_at_output_stride_8_and_32():
    # Same weights: the dilated network computes the strided one's features on a denser grid,
    # so output pixel (4, 4) at stride 8 and (1, 1) at stride 32 (both centred on input pixel 32)
    # have the same gradient image.
    models = {s: ResNet(stage_sizes=(1, 1, 1, 1), block="basic", base_width=4, output_stride=s)
              for s in (8, 32)}
    shape = (64, 64, 3)
    variables = analysis_variables(models[8], shape, train=False, seed=1)

    def erf(output_stride, position):
        model = models[output_stride]
        return effective_receptive_field(
            lambda x: model.apply(variables, x, train=False)["high_level"], shape, position,
            num_samples=2,
        )

    erf8, erf32 = erf(8, (4, 4)), erf(32, (1, 1))
    assert erf8.shape == (64, 64) and erf8.max() > 0
    np.testing.assert_allclose(erf8, erf32, rtol=1e-4, atol=1e-6 * erf8.max())


def test_coverage_rejects_bad_positions_and_outputs():
    module = DilatedContextModule(dilations=(1,))
    variables = analysis_variables(module, (8, 8, 1), positive=True)
    apply_fn = lambda x: module.apply(variables, x)  # noqa: E731
    with pytest.raises(ValueError, match="outside"):
        coverage_map(apply_fn, (8, 8, 1), (8, 0))
    with pytest.raises(ValueError, match=r"\(H, W, C\)"):
        coverage_map(apply_fn, (8, 8), (0, 0))
    with pytest.raises(ValueError, match="one \\[1, h, w, K\\] array"):
        coverage_map(lambda x: {"out": apply_fn(x)}, (8, 8, 1), (0, 0))


def test_analysis_variables_are_positive_with_unit_gain():
    module = DilatedContextModule(dilations=(1, 2))
    variables = analysis_variables(module, (9, 9, 3), positive=True)
    kernel = variables["params"]["conv2"]["kernel"]
    assert float(kernel.min()) > 0
    # Each output sums 3*3*3 taps of mean 1 / 27: gain one on a constant input.
    assert np.isclose(float(kernel.sum(axis=(0, 1, 2)).mean()), 1.0, atol=0.1)
    assert not jnp.any(variables["params"]["conv2"]["bias"])
