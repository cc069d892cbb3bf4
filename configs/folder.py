"""DeepLabV3+ on your own images and masks (seg_jax/data/folder.py describes the layout).

  python -m seg_jax.main --config=configs/folder.py --workdir=runs/mine \\
      --config.data.root=/path/to/data --config.data.num_classes=<C>

Without classes.json the class count comes from --config.data.num_classes; with it, set
--config.data.num_classes to its number of classes (checked before training). A ResNet-50 at
output stride 16 with ASPP rates (6, 12, 18), crops of 512, SGD + poly as in DeepLabv3+;
add --config.model.pretrained=resnet50.pth to start from torchvision's ImageNet weights.
"""

from configs import default


def get_config(arg=None):
    del arg
    config = default.get_config()
    config.data.name = "folder"
    config.data.crop_size = 512
    config.model.backbone = "resnet50"
    config.model.output_stride = 16
    config.batch_size = 8
    # Evaluation batches stack whole images, so images of one batch must share a size for now
    # (evaluation at any size by padding is still to come); the pipeline says so if they do not.
    config.eval_batch_size = 8
    config.num_train_steps = 30000
    config.optimizer.learning_rate = 0.01
    config.model.name = "deeplabv3plus"
    return config
