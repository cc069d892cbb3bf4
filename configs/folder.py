"""DeepLabV3+ on your own images and masks (seg_jax/data/folder.py describes the layout).

  python -m seg_jax.main --config=configs/folder.py --workdir=runs/mine \\
      --config.data.root=/path/to/data

The dataset says how many classes it has: its classes.json names them (and may set the ignore
label and the thing classes). A folder without classes.json needs --config.data.num_classes=<C>
(classes named class_0, ...). A ResNet-50 at output stride 16 with ASPP rates (6, 12, 18), crops
of 512, SGD + poly as in DeepLabv3+; add --config.model.pretrained=resnet50.pth to start from
torchvision's ImageNet weights. Evaluation sees whole images of any size (config.evaluation).
"""

from configs import default, models


def get_config(arg=None):
    del arg
    config = default.get_config()
    config.data.name = "folder"
    config.data.crop_size = 512
    config.model.backbone = "resnet50"
    config.model.output_stride = 16
    models.switch_model(config, "deeplabv3plus")
    config.batch_size = 8
    config.eval_batch_size = 8
    config.num_train_steps = 30000
    config.optimizer.learning_rate = 0.01
    return config
