"""Yu & Koltun's dilated context network (`dilated_context`) on the built-in `shapes`.

  python -m seg_jax.main --config=configs/shapes_context.py --workdir=runs/shapes_context
  python -m seg_jax.main --config=configs/shapes_context.py:quick --workdir=runs/context_quick
  python -m seg_jax.main --config=configs/shapes_context.py:hdc --workdir=runs/context_hdc

The model (seg_jax.models.context, configs/models.py DILATED_CONTEXT): the `shapes` main job's
front-end (configs/shapes.py: dilated ResNet-18 of base width 16 at output stride 8), a 1x1 conv to
one score per class, Yu & Koltun's context module on that K-channel score map (3x3 convs of
dilations 1, 1, 2, 4, 8, 16, 1 with ReLU, then a 1x1; identity initialisation; no BatchNorm) and
bilinear upsampling to the input size. Optimiser and schedule are the main job's (AdamW 3e-3,
cosine, 2,400 updates of batch 16 on 96 px crops), so the two models compare on equal terms.

The module works on the score map at output stride 8: 12 x 12 cells for a 96 px training crop,
16 x 16 for a whole 128 px validation image. Its rates 8 and 16 therefore reach mostly zero padding
on crops (the paper's 1024 px Cityscapes images gave 128 px score maps); they are kept as
published, since they are what the gridding study (experiments/studies/gridding.py) examines.

Variants:
  quick   a tiny model on small crops for tests and smoke runs: well under a minute (batch 8,
          divisible by 8 devices; checkpoints twice before its last step).
  hdc     the module's rates replaced by Wang et al.'s hybrid dilated rates, (1, 2, 5) twice and a
          final 1 (context.HDC_DILATIONS), which sample every pixel of their receptive field.
  skip    the published rates plus the early non-dilated skip into the final 1x1 layer.
A variant can be combined with quick: 'hdc,quick', 'skip,quick'.
"""

from configs import models, shapes

VARIANTS = ("quick", "hdc", "skip")

# seg_jax.models.context.HDC_DILATIONS; written out because a config file imports no JAX.
HDC_DILATIONS = (1, 2, 5, 1, 2, 5, 1)


def _variants(arg) -> set[str]:
    chosen = {part.strip() for part in (arg or "").split(",") if part.strip()}
    unknown = sorted(chosen - set(VARIANTS))
    if unknown:
        raise ValueError(f"Unknown variant(s) {unknown} of configs/shapes_context.py; known: "
                         f"{VARIANTS} (comma-separated to combine).")
    return chosen


def use_context_model(config, **overrides):
    """`config` with its model replaced by `dilated_context`: the front-end's fields (backbone,
    width, stem, output stride) kept, the context module's from configs/models.py (Yu & Koltun's
    rates, basic width, identity init, no skip) unless `overrides` set them. Returns `config`."""
    models.switch_model(config, "dilated_context", **overrides)
    return config


def get_config(arg=None):
    variants = _variants(arg)
    # The main job's data, front-end, optimiser and schedule (its quick variant's for 'quick');
    # only the head differs, so the two models compare on equal terms.
    config = shapes.get_config("quick" if "quick" in variants else None)
    overrides = {}
    if "hdc" in variants:
        overrides["dilations"] = HDC_DILATIONS
    if "skip" in variants:
        overrides["early_skip"] = True
    return use_context_model(config, **overrides)
