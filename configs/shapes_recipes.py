r"""The training recipes of README "Training recipes" on `shapes`, one point each (one seed).

    python -m seg_jax.main --config=configs/shapes_recipes.py --workdir=runs/recipes --sweep
    python experiments/training_recipes_report.py --workdir=runs/recipes --out=docs/recipes

Every point is the main job (configs/shapes.py) with one recipe switched on, and a moving average
of the weights (decay 0.995, a horizon of ~200 of the 2400 updates) kept in all of them, so each
point also reports `ema/mean_iou`. The figures are of one seed: a difference smaller than the
seed-to-seed spread (not measured here) says nothing.
"""

from configs import shapes

VARIANTS = shapes.VARIANTS


def get_config(arg=None):
    config = shapes.get_config(arg)
    config.ema_decay = 0.995
    return config


def get_sweep(arg=None):
    """The baseline, then each recipe on its own."""
    from seg_jax import sweep

    del arg
    crop_pixels = 96 * 96
    return sweep.concat(
        [{}],
        # deeplab2's Cityscapes setting: the hardest 20% of each image's pixels.
        [{"loss.cross_entropy.top_k_percent": 0.2}],
        # mmsegmentation's OHEM: thresh 0.7; min_kept at its Cityscapes ratio (100000 of a
        # 512 x 1024 crop's pixels, 19%), here of a 96 x 96 crop.
        [{"loss.cross_entropy.ohem_threshold": 0.7,
          "loss.cross_entropy.ohem_min_kept": int(0.19 * crop_pixels)}],
        [{"loss.cross_entropy.class_weights": "median_frequency"}],
        [{"loss.cross_entropy.class_weights": "inverse_sqrt_frequency"}],
        # DAFormer's temperature.
        [{"data.rare_class_sampling.temperature": 0.01}],
    )
