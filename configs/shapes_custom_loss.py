r"""`shapes` trained with a loss registered outside seg_jax (experiments/custom_losses.py).

    python -m seg_jax.main --config=configs/shapes_custom_loss.py --workdir=runs/log_cosh_dice
    python -m seg_jax.main --config=configs/shapes_custom_loss.py --workdir=runs/log_cosh_sweep \
        --sweep

The pattern for a project's own losses: the module that registers them
(`@seg_jax.losses.register_loss`) is listed in `config.extra_modules`, which every run imports
before it reads `config.loss.name`; the loss's options get a typed home in the config with
`default.add_loss_options`, so `--config.loss.log_cosh_dice.smooth=1.0` and sweeps can set them.
A config may also import the module directly; listing it keeps the sweep launcher free of JAX.
"""

from configs import default, shapes

VARIANTS = shapes.VARIANTS


def get_config(arg=None):
    config = shapes.get_config(arg)
    config.extra_modules = ("experiments.custom_losses",)
    default.add_loss_options(config, "log_cosh_dice", smooth=1e-5, per_image=True)
    config.loss.name = "cross_entropy+log_cosh_dice"
    return config


def get_sweep(arg=None):
    """The weight of the registered term against cross-entropy's, at the config's learning rate."""
    from seg_jax import sweep

    del arg
    return sweep.product(**{"loss.term_weights": [(1.0, 0.5), (1.0, 1.0), (1.0, 2.0)]})
