"""Optimizers and learning-rate schedules chosen in the config."""

import jax
import optax


def create_schedule(opt_config, num_train_steps: int) -> optax.Schedule:
    """Linear warmup for `warmup_steps`, then 'poly', 'cosine' or 'constant' decay to the end.

    'poly' is DeepLab's schedule: lr * (1 - t / T) ** poly_power over the T post-warmup steps.
    """
    lr = opt_config.learning_rate
    warmup = opt_config.warmup_steps
    decay_steps = max(1, num_train_steps - warmup)
    if opt_config.schedule == "poly":
        decay = optax.polynomial_schedule(
            init_value=lr, end_value=0.0, power=opt_config.poly_power, transition_steps=decay_steps
        )
    elif opt_config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(init_value=lr, decay_steps=decay_steps)
    elif opt_config.schedule == "constant":
        decay = optax.constant_schedule(lr)
    else:
        raise ValueError(
            f"Unknown config.optimizer.schedule={opt_config.schedule!r}; "
            f"choose 'poly', 'cosine' or 'constant'."
        )
    if warmup <= 0:
        return decay
    warmup_fn = optax.linear_schedule(0.0, lr, warmup)
    return optax.join_schedules([warmup_fn, decay], boundaries=[warmup])


def _decay_mask(params):
    # Weight decay on convolution and dense kernels only; BatchNorm scales and biases are exempt,
    # as in the reference DeepLab and torchvision recipes.
    return jax.tree_util.tree_map_with_path(
        lambda path, _: getattr(path[-1], "key", None) == "kernel", params
    )


def create_optimizer(opt_config, num_train_steps: int) -> tuple[optax.GradientTransformation, optax.Schedule]:
    """Returns `(optimizer, schedule)` for `opt_config.name` in {'sgd', 'adamw'}."""
    schedule = create_schedule(opt_config, num_train_steps)
    if opt_config.name == "sgd":
        tx = optax.chain(
            optax.add_decayed_weights(opt_config.weight_decay, mask=_decay_mask),
            optax.sgd(schedule, momentum=opt_config.momentum, nesterov=opt_config.nesterov),
        )
    elif opt_config.name == "adamw":
        tx = optax.adamw(
            schedule, b1=opt_config.b1, b2=opt_config.b2,
            weight_decay=opt_config.weight_decay, mask=_decay_mask,
        )
    else:
        raise ValueError(
            f"Unknown config.optimizer.name={opt_config.name!r}; choose 'sgd' or 'adamw'."
        )
    if opt_config.grad_clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(opt_config.grad_clip_norm), tx)
    return tx, schedule
