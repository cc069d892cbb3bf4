"""Figures and tables of docs/receptive_field.md: gridding, effective receptive fields, RF table.

    python -m experiments.receptive_field_figures
    python -m experiments.receptive_field_figures --out_dir=/tmp/rf --erf_size=512 --base_width=8

Writes `<out_dir>/gridding_coverage.png` (which input pixels reach one output pixel, for dilated
stacks with and without the remedies), `<out_dir>/effective_receptive_field.png` (Luo et al.'s
ERF of ResNet-18 at output stride 32 and 8 and of the dilated_context model), and prints the
Markdown tables of analytical receptive fields. Takes about a minute on two CPU cores (most of it
the ERF of the full-size models).
"""

import argparse
import os
import time

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from matplotlib import colors, patches  # noqa: E402

from seg_jax.models.context import (  # noqa: E402
    HDC_DILATIONS,
    YU_KOLTUN_DILATIONS,
    DilatedContextModule,
    DilatedContextNet,
)
from seg_jax.models.receptive_field import (  # noqa: E402
    analysis_variables,
    coverage_map,
    effective_receptive_field,
    hdc_max_distances,
    missing_offsets,
    model_receptive_field,
    satisfies_hdc,
)
from seg_jax.models.resnet import RESNET_PRESETS, ResNet  # noqa: E402

# (title, DilatedContextModule arguments) of the gridding figure's columns.
GRIDDING_PANELS = (
    ("dilations (2, 2, 2)", dict(dilations=(2, 2, 2))),
    ("dilations (1, 2, 5) (HDC)", dict(dilations=(1, 2, 5))),
    ("(2, 2, 2) + early skip", dict(dilations=(2, 2, 2), early_skip=True)),
    (f"context module {YU_KOLTUN_DILATIONS}", dict(dilations=YU_KOLTUN_DILATIONS)),
)


def _centred_maps(kwargs, margin=3, channels=2):
    """Coverage map and positive-weight gradient magnitude of the centre output pixel."""
    module = DilatedContextModule(**kwargs)
    field = model_receptive_field(module)
    size = field.size + 2 * margin
    shape = (size, size, channels)
    variables = analysis_variables(module, shape, positive=True)

    def apply_fn(x):
        return module.apply(variables, x)

    centre = (size // 2, size // 2)
    covered = coverage_map(apply_fn, shape, centre)
    # With positive weights the gradient is a (weighted) count of the paths to each input pixel.
    weight = effective_receptive_field(apply_fn, shape, centre, num_samples=1,
                                       positive_inputs=True)
    return field, covered, weight


def _draw_field(ax, size, field_size):
    """Outline of the analytical receptive field, centred in a `size` x `size` image."""
    first = (size - field_size) / 2 - 0.5
    ax.add_patch(patches.Rectangle(
        (first, first), field_size, field_size, fill=False, edgecolor="tab:red", linewidth=1.2,
        linestyle="--",
    ))


def gridding_figure(path):
    fig, axes = plt.subplots(2, len(GRIDDING_PANELS), figsize=(4.0 * len(GRIDDING_PANELS), 9.0))
    for column, (title, kwargs) in enumerate(GRIDDING_PANELS):
        field, covered, weight = _centred_maps(kwargs)
        size = covered.shape[0]
        top, bottom = axes[0, column], axes[1, column]
        top.imshow(covered, cmap="Greys", vmin=-0.15, vmax=1, interpolation="nearest")
        inside = covered.sum()
        top.set_title(
            f"{title}\nRF {field.size}x{field.size}: {inside} of {field.size ** 2} pixels",
            fontsize=10,
        )
        positive = weight[weight > 0]
        bottom.imshow(
            np.where(weight > 0, weight, np.nan), cmap="viridis", interpolation="nearest",
            norm=colors.LogNorm(vmin=positive.min(), vmax=positive.max()),
        )
        bottom.set_title(f"gradient magnitude (log), max/min {positive.max() / positive.min():.0f}",
                         fontsize=10)
        for ax in (top, bottom):
            _draw_field(ax, size, field.size)
            ax.set_xticks([])
            ax.set_yticks([])
    axes[0, 0].set_ylabel("coverage: input pixels that reach\nthe centre output pixel", fontsize=10)
    axes[1, 0].set_ylabel("how strongly (all-positive weights;\nwhite: no path)", fontsize=10)
    fig.suptitle(
        "Gridding: 3x3 dilated stacks, one output pixel (dashed: analytical receptive field)",
        fontsize=12,
    )
    fig.tight_layout(h_pad=2.5)
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _erf_models(base_width, num_classes):
    """(label, module, output-position function, feature picker) of the ERF figure."""
    preset = RESNET_PRESETS["resnet18"]

    def resnet(output_stride):
        return ResNet(output_stride=output_stride, base_width=base_width, **preset)

    context_net = DilatedContextNet(num_classes=num_classes, backbone=resnet(8))
    return [
        ("ResNet-18, output stride 32", resnet(32), lambda out: out["high_level"]),
        ("ResNet-18, output stride 8 (dilated)", resnet(8), lambda out: out["high_level"]),
        ("ResNet-18 (OS 8) + context module", context_net, None),
    ]


def _mass_square(erf, centre, fraction):
    """Side of the smallest square centred on `centre` holding `fraction` of the ERF's sum."""
    total = erf.sum()
    for half in range(erf.shape[0]):
        window = erf[max(centre - half, 0): centre + half + 1, max(centre - half, 0):
                     centre + half + 1]
        if window.sum() >= fraction * total:
            return 2 * half + 1
    return None


def erf_figure(path, *, size, base_width, num_classes, num_samples):
    shape = (size, size, 3)
    models = _erf_models(base_width, num_classes)
    # One set of backbone weights for all three, so OS 8 and OS 32 compute the same features.
    shared = analysis_variables(models[1][1], shape, train=False, seed=0)
    context_variables = analysis_variables(models[2][1], shape, train=False, seed=1)
    context_variables["params"]["backbone"] = shared["params"]
    context_variables["batch_stats"]["backbone"] = shared["batch_stats"]

    erfs, fields = [], []
    for (label, model, pick), variables in zip(models, (shared, shared, context_variables)):
        field = model_receptive_field(model)
        # The output pixel whose receptive field is centred on the image centre.
        position = (size // 2 // field.jump,) * 2

        def apply_fn(x, model=model, variables=variables, pick=pick):
            if pick is not None:
                return pick(model.apply(variables, x, train=False))
            # DilatedContextNet upsamples its logits; take the context module's own output grid.
            _, state = model.apply(
                variables, x, train=False,
                capture_intermediates=lambda module, _: module.name == "context",
            )
            return state["intermediates"]["context"]["__call__"][0]

        start = time.time()
        erf = effective_receptive_field(apply_fn, shape, position, num_samples=num_samples)
        centre = position[0] * field.jump
        print(
            f"  ERF of {label} ({time.time() - start:.1f} s): centred squares holding 50% / 90% "
            f"of it: {_mass_square(erf, centre, 0.5)} / {_mass_square(erf, centre, 0.9)} px "
            f"(receptive field {field.size} px)"
        )
        erfs.append(erf / erf.max())
        fields.append((field, position[0] * field.jump))

    fig, axes = plt.subplots(1, 4, figsize=(19, 5.0))
    for ax, (label, _, _), erf, (field, centre) in zip(axes, models, erfs, fields):
        ax.imshow(erf, cmap="magma", interpolation="bilinear", vmin=0, vmax=1)
        first = centre - (field.size - 1) / 2 - 0.5
        ax.add_patch(patches.Rectangle(
            (first, first), field.size, field.size, fill=False, edgecolor="cyan", linestyle="--",
        ))
        ax.set_xlim(-0.5, size - 0.5)
        ax.set_ylim(size - 0.5, -0.5)
        ax.set_title(f"{label}\nRF {field.size} px (dashed), jump {field.jump}", fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
    profile_ax = axes[3]
    for (label, _, _), erf, (_, centre), style in zip(models, erfs, fields, ("-", "--", "-")):
        profile_ax.semilogy(np.arange(size) - centre, erf[centre], style, label=label)
    for field, _ in fields[::2]:
        profile_ax.axvline(-(field.size - 1) / 2, color="grey", linewidth=0.6)
        profile_ax.axvline((field.size - 1) / 2, color="grey", linewidth=0.6)
    profile_ax.set_ylim(1e-6, 1.5)
    profile_ax.set_xlabel("offset from the centre (px); grey: analytical RF bounds")
    profile_ax.set_title("centre row, normalised", fontsize=10)
    profile_ax.legend(fontsize=8, loc="lower center")
    fig.suptitle(
        f"Effective receptive field (Luo et al. 2016): |d output / d input| of the centre pixel, "
        f"random He weights, mean over {num_samples} N(0, 1) inputs of {size}x{size}, "
        f"base width {base_width}",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def receptive_field_table():
    """Markdown table of analytical receptive fields of the backbones and the context module."""
    rows = [
        "| model | output stride | receptive field (px) | jump (px) |",
        "|---|---:|---:|---:|",
    ]
    for name in ("resnet18", "resnet50"):
        for output_stride in (8, 16, 32):
            field = model_receptive_field(ResNet(output_stride=output_stride,
                                                 **RESNET_PRESETS[name]))
            rows.append(f"| {name} | {output_stride} | {field.size} | {field.jump} |")
    field = model_receptive_field(ResNet(output_stride=16, multi_grid=(1, 2, 4),
                                         **RESNET_PRESETS["resnet50"]))
    rows.append(f"| resnet50, multi-grid (1, 2, 4) | 16 | {field.size} | {field.jump} |")
    for label, dilations in (("default", YU_KOLTUN_DILATIONS), ("HDC", HDC_DILATIONS)):
        field = model_receptive_field(DilatedContextModule(dilations=dilations))
        rows.append(
            f"| context module, {label} {dilations} (on its input grid) | 1 | {field.size} | "
            f"{field.jump} |"
        )
    for name in ("resnet18", "resnet50"):
        for label, dilations in (("default", YU_KOLTUN_DILATIONS), ("HDC", HDC_DILATIONS)):
            backbone = ResNet(output_stride=8, **RESNET_PRESETS[name])
            field = model_receptive_field(
                DilatedContextNet(num_classes=21, backbone=backbone, dilations=dilations)
            )
            rows.append(
                f"| dilated_context: {name} + {label} context | 8 | {field.size} | {field.jump} |"
            )
    return "\n".join(rows)


def dilation_table():
    """Markdown table: receptive field, gridding holes and Wang et al.'s rule per rate sequence."""
    rows = [
        "| 3x3 dilations | receptive field | 1-D offsets never reached | M_2 | HDC rule |",
        "|---|---:|---|---:|---|",
    ]
    for dilations in ((2, 2, 2), (1, 2, 5), (1, 2, 9), (2, 4, 8), YU_KOLTUN_DILATIONS,
                      HDC_DILATIONS):
        field = model_receptive_field(DilatedContextModule(dilations=dilations))
        holes = missing_offsets(dilations)
        holes_text = (
            "none" if holes.size == 0 else
            f"{holes.size} of {field.size}: {', '.join(str(h) for h in holes[holes > 0][:6])}"
            + (", ..." if (holes > 0).sum() > 6 else "") + " (and negatives)"
        )
        m2 = hdc_max_distances(dilations)[1] if len(dilations) > 1 else "-"
        rows.append(
            f"| {dilations} | {field.size} | {holes_text} | {m2} | "
            f"{'satisfied' if satisfies_hdc(dilations) else 'violated'} |"
        )
    return "\n".join(rows)


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out_dir", default="docs")
    parser.add_argument("--erf_size", type=int, default=1024,
                        help="input side of the ERF figure; 1024 holds the 963 px field")
    parser.add_argument("--base_width", type=int, default=16,
                        help="ResNet width of the ERF figure (64 is standard; slower)")
    parser.add_argument("--num_classes", type=int, default=21)
    parser.add_argument("--num_samples", type=int, default=8)
    args = parser.parse_args()
    os.makedirs(args.out_dir, exist_ok=True)

    print(receptive_field_table(), end="\n\n")
    print(dilation_table(), end="\n\n")
    gridding_path = os.path.join(args.out_dir, "gridding_coverage.png")
    gridding_figure(gridding_path)
    print(f"wrote {gridding_path}")
    erf_path = os.path.join(args.out_dir, "effective_receptive_field.png")
    erf_figure(erf_path, size=args.erf_size, base_width=args.base_width,
               num_classes=args.num_classes, num_samples=args.num_samples)
    print(f"wrote {erf_path}")


if __name__ == "__main__":
    main()
