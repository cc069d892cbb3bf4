"""DeepLabV3 (dilated ResNet-18-style backbone + ASPP with image pooling) on the built-in `shapes`.

  python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes        # the main job
  python -m seg_jax.main --config=configs/shapes.py:quick --workdir=runs/quick   # smoke test

The default variant is sized for a 2-core CPU: it reaches validation mIoU >= 0.85 within ten
minutes including dataset generation and compilation (README lists the measured figures).
`quick` is a tiny model on small crops for tests: it runs in well under a minute, keeps a batch
size divisible by 8 devices and checkpoints twice before its last step.
"""

from configs import default

VARIANTS = ("quick",)


def get_config(arg=None):
    config = default.get_config()
    config.data.name = "shapes"
    config.data.crop_size = 96
    config.data.min_scale = 0.75
    config.data.max_scale = 1.25

    config.model.backbone = "resnet18"
    config.model.base_width = 16
    config.model.stem = "imagenet"
    config.model.output_stride = 8
    config.model.atrous_rates = (6, 12, 18)
    config.model.aspp_channels = 64

    config.batch_size = 16
    config.num_train_steps = 2400
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 3e-3
    config.optimizer.weight_decay = 1e-4
    config.optimizer.schedule = "cosine"
    config.optimizer.warmup_steps = 50
    config.eval_every_steps = 1200
    config.checkpoint_every_steps = 600
    config.log_every_steps = 100

    if arg == "quick":
        config.data.crop_size = 64
        config.model.base_width = 8
        config.model.aspp_channels = 16
        config.model.atrous_rates = (2, 4, 6)
        config.batch_size = 8
        config.eval_batch_size = 8
        config.num_train_steps = 30
        config.optimizer.learning_rate = 5e-3
        config.optimizer.warmup_steps = 3
        config.log_every_steps = 5
        config.checkpoint_every_steps = 10
        config.eval_every_steps = 0
        config.num_prediction_images = 4
        config.data.eval_split = "validation[:16]"
    elif arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/shapes.py; known: {VARIANTS}.")
    return config


def get_sweep(arg=None):
    r"""Loss family x learning rate on this config: which loss trains `shapes` best, at what rate.

      python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes_sweep --sweep_list
      python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes_sweep --sweep
      python -m seg_jax.main --config=configs/shapes.py --workdir=runs/shapes_sweep \
          --sweep_index=$SLURM_ARRAY_TASK_ID     # one point per task of a job array (0-7)

    8 points, each one default run (README: about ten minutes on a 2-core CPU), into
    runs/shapes_sweep/<point>/, e.g. `loss=dice_lr=0.003`; runs/shapes_sweep/sweep_results.md,
    .csv and .png rank them by mIoU. Running the command again skips finished points and resumes
    the others. --sweep_parallel=K runs K points at a time, worth it where one run leaves cores
    or accelerators idle. The losses are names of seg_jax.losses ('+' sums them). `quick` is a
    2 x 2 sweep of the quick config, for tests.
    """
    from seg_jax import sweep

    if arg == "quick":
        return sweep.product(**{"loss.name": ["cross_entropy", "dice"],
                                "optimizer.learning_rate": [2e-3, 5e-3]})
    if arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/shapes.py; known: {VARIANTS}.")
    return sweep.product(**{"loss.name": ["cross_entropy", "focal", "dice", "cross_entropy+dice"],
                            "optimizer.learning_rate": [1e-3, 3e-3]})
