"""DeepLabV3+ (ResNet-50, output stride 16) on Cityscapes fine annotations, 19 classes.

  python -m seg_jax.main --config=configs/cityscapes.py --workdir=runs/cityscapes \\
      --config.data.data_dir=/path/to/tensorflow_datasets \\
      --config.model.pretrained=resnet50.pth
  python -m seg_jax.main --config=configs/cityscapes.py:quick ...   # tiny smoke test

Data: tfds `cityscapes/semantic_segmentation` (2975 train, 500 validation images, 1024x2048).
Cityscapes needs a login, so tfds cannot download it: put leftImg8bit_trainvaltest.zip and
gtFine_trainvaltest.zip in a manual folder and run `tfds build cityscapes/semantic_segmentation
--manual_dir=... --file_format=array_record` once where TensorFlow is installed
(seg_jax/data/tfds_sources.py gives the full command); reading it needs no TensorFlow. Label ids
become the 19 standard train ids, every other id is ignored. This machine cannot download the
data, so no result is claimed here.

Schedule: the DeepLabv3 / v3+ Cityscapes recipe (Chen et al. 2017, 2018; also
mmsegmentation's deeplabv3plus_r50-d8_769x769_80k): output stride 16 in training, crops of
769 (768 here: this code resizes with half-pixel centres, where 769 served TF's
align_corners=True), random scale [0.5, 2.0] and flips, batch 8, SGD momentum 0.9 with lr 0.01
and the poly decay (power 0.9), weight decay 1e-4, 90k steps; photometric jitter as
mmsegmentation's PhotoMetricDistortion (brightness, contrast, saturation; milder hue).
Evaluation slides 768 px windows over the full 1024x2048 images with a third of overlap
(stride 512, as mmsegmentation's 769 / 513), logits averaged. The reference runs start from
ImageNet weights (--config.model.pretrained).
"""

from configs import default, models

VARIANTS = ("quick",)


def get_config(arg=None):
    config = default.get_config()
    config.data.name = "cityscapes"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.crop_size = 768
    config.data.min_scale = 0.5
    config.data.max_scale = 2.0
    config.data.jitter.brightness = 0.125
    config.data.jitter.contrast = 0.5
    config.data.jitter.saturation = 0.5
    config.data.jitter.hue = 0.05

    models.switch_model(config, "deeplabv3plus")
    config.model.backbone = "resnet50"
    config.model.output_stride = 16

    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 90000
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.schedule = "poly"
    config.optimizer.poly_power = 0.9
    config.optimizer.weight_decay = 1e-4
    config.eval_every_steps = 10000
    config.checkpoint_every_steps = 2000
    config.log_every_steps = 100

    config.evaluation.mode = "sliding"
    config.evaluation.window = ()  # the training crop
    config.evaluation.window_overlap = 1.0 / 3.0

    if arg == "quick":
        # Tests: a tiny model on 64 px crops (and 64 px windows), two steps, evaluation at the end.
        default.shrink_for_smoke_test(config)
        config.model.decoder_channels = 16
        config.model.low_level_channels = 8
    elif arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/cityscapes.py; known: {VARIANTS}.")
    return config
