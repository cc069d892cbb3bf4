"""DeepLabV3+ (ResNet-50, output stride 16) on Oxford-IIIT Pet trimaps: background vs pet.

  python -m seg_jax.main --config=configs/oxford_pet.py --workdir=runs/pet \\
      --config.data.data_dir=/path/to/tensorflow_datasets
  python -m seg_jax.main --config=configs/oxford_pet.py:quick ...   # tiny smoke test

Data: tfds `oxford_iiit_pet` (3680 train, 3669 test images), prepared once as ArrayRecord with
`tfds build oxford_iiit_pet --file_format=array_record` where TensorFlow is installed
(seg_jax/data/tfds_sources.py); reading it needs no TensorFlow. This machine cannot download it,
so no result is claimed here. The trimap's border class is ignored (loss and metrics); the
evaluation split is tfds' 'test' (the dataset has no validation split).

Schedule: the pets have no canonical segmentation benchmark; this is the DeepLabv3+ recipe
(Chen et al. 2018) as in configs/folder.py: SGD momentum 0.9, lr 0.01 with DeepLab's poly decay
(power 0.9), weight decay 1e-4, batch 16, random scale [0.5, 2.0] + 512 crops + flips, about 50
epochs (12k steps of 16 images); whole-image evaluation. Add
--config.model.pretrained=resnet50.pth to start from torchvision's ImageNet weights.
"""

from configs import default, models

VARIANTS = ("quick",)


def get_config(arg=None):
    config = default.get_config()
    config.data.name = "oxford_iiit_pet"
    config.data.train_split = "train"
    config.data.eval_split = "test"
    config.data.crop_size = 512

    models.switch_model(config, "deeplabv3plus")
    config.model.backbone = "resnet50"
    config.model.output_stride = 16

    config.batch_size = 16
    config.eval_batch_size = 16
    config.num_train_steps = 12000
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.schedule = "poly"
    config.optimizer.weight_decay = 1e-4
    config.eval_every_steps = 4000
    config.checkpoint_every_steps = 1000
    config.evaluation.mode = "whole"

    if arg == "quick":
        # Tests: a tiny model on 64 px crops, two steps, evaluation at the end.
        default.shrink_for_smoke_test(config)
        config.model.decoder_channels = 16
        config.model.low_level_channels = 8
    elif arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/oxford_pet.py; known: {VARIANTS}.")
    return config
