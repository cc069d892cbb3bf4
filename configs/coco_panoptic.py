"""Panoptic-DeepLab (ResNet-50, output stride 16) on COCO panoptic: 133 classes, 80 of them things.

  python -m seg_jax.main --config=configs/coco_panoptic.py --workdir=runs/coco_panoptic \\
      --config.data.root=/path/to/coco --config.model.pretrained=resnet50.pth
  python -m seg_jax.main --config=configs/coco_panoptic.py:quick ...   # tiny smoke test

Data: the raw COCO 2017 release under config.data.root (seg_jax/data/coco_panoptic.py gives the
layout): train2017/ and val2017/ images and panoptic_annotations_trainval2017.zip unpacked with
its inner panoptic PNG zips. No TensorFlow is involved. This machine cannot download COCO, so
no result is claimed here.

Schedule: Panoptic-DeepLab's COCO recipe (Cheng et al. 2020): crops of 641 (640 here; 641 served
TF's align_corners=True) from images rescaled by [0.5, 1.5] and flipped, batch 64, Adam with lr
5e-4 and the poly decay (power 0.9), no weight decay, 200k steps; the paper's heads (semantic
decoder 256, instance decoder 128, depthwise-separable 5x5 convs), centre (weight 200, sigma
8 px) and offset (weight 0.01) losses, and post-processing (centre threshold 0.1, 7x7 NMS, top
200 centres). Evaluation: whole images padded to 640x640 (COCO's longest side), so the step
compiles once; PQ with COCO's rules. A COCO image has at most ~100 thing segments and ~150
segments in all, hence max_instances 128 and max_segments 256.
"""

from configs import default, models

VARIANTS = ("quick",)


def get_config(arg=None):
    config = default.get_config()
    config.data.name = "coco_panoptic"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    config.data.crop_size = 640
    config.data.min_scale = 0.5
    config.data.max_scale = 1.5

    # Panoptic-DeepLab as published (configs/models.py): ResNet-50, output stride 16.
    config.model.backbone = "resnet50"
    models.switch_model(config, "panoptic_deeplab", separable=True)  # 5x5 separable heads
    config.panoptic.max_instances = 128
    config.panoptic.max_segments = 256
    config.panoptic.top_k = 200
    config.panoptic.preset = "coco"

    config.batch_size = 64
    config.eval_batch_size = 16
    config.num_train_steps = 200000
    config.optimizer.name = "adamw"
    config.optimizer.learning_rate = 5e-4
    config.optimizer.weight_decay = 0.0
    config.optimizer.schedule = "poly"
    config.optimizer.poly_power = 0.9
    config.eval_every_steps = 20000
    config.checkpoint_every_steps = 5000
    config.log_every_steps = 100

    config.evaluation.mode = "whole"
    config.evaluation.pad_size = (640, 640)

    if arg == "quick":
        # Tests: a tiny model on 64 px crops, two steps, evaluation at the end.
        default.shrink_for_smoke_test(config)
        config.model.decoder_channels = 16
        config.model.head_channels = 16
        config.model.low_level_channels = (8, 8)
        config.model.instance_aspp_channels = 16
        config.model.instance_decoder_channels = 16
        config.model.instance_head_channels = 8
        config.model.instance_low_level_channels = (8, 8)
        config.model.separable = False
        config.panoptic.max_instances = 16
        config.panoptic.max_segments = 32
        config.panoptic.top_k = 16
        config.evaluation.pad_size = ()
    elif arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/coco_panoptic.py; known: {VARIANTS}.")
    config.lock()
    return config
