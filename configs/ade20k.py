"""DeepLabV3+ (ResNet-50, output stride 8) on ADE20K's 150 SceneParsing classes (tfds data).

  python -m seg_jax.main --config=configs/ade20k.py --workdir=runs/ade20k \\
      --config.data.data_dir=/path/to/tensorflow_datasets \\
      --config.model.pretrained=resnet50.pth
  python -m seg_jax.main --config=configs/ade20k.py:quick ...   # tiny smoke test

Data: tfds `scene_parse150`, prepared once as ArrayRecord with `tfds build scene_parse150
--file_format=array_record` where TensorFlow is installed (seg_jax/data/tfds_sources.py);
reading it needs no TensorFlow. Its 'train' split has 20210 images and its 'test' split is
ADE20K's 2000 validation images, so that is the evaluation split. This machine cannot download
the data, so no result is claimed here.

Caveat: tfds builds scene_parse150 from the Places Challenge *instance* annotations, which label
only the 100 instance categories (mapped here onto their SceneParsing ids); the 50 stuff classes
(wall, sky, floor, ...) are unlabelled (ignored). Scores on it are therefore not comparable with
published ADE20K mIoU, for which the ADEChallengeData2016 semantic maps are needed.

Schedule: mmsegmentation's deeplabv3plus_r50-d8_512x512_160k_ade20k: output stride 8, crops of
512 from images rescaled by [0.5, 2.0] and flipped, PhotoMetricDistortion-like jitter, batch 16,
SGD momentum 0.9, lr 0.01 with poly decay (power 0.9), weight decay 5e-4, 160k steps, an
auxiliary FCN head on stage 3 with loss weight 0.4. Evaluation slides 512 px windows with a
third of overlap (stride 341), logits averaged (mmsegmentation tests ADE20K on whole images
resized to 512 short side; sliding covers the same pixels at training resolution).
"""

from configs import default

VARIANTS = ("quick",)


def get_config(arg=None):
    config = default.get_config()
    config.data.name = "scene_parse150"
    config.data.num_classes = 150
    config.data.train_split = "train"
    config.data.eval_split = "test"  # tfds' name for ADE20K's validation images
    config.data.crop_size = 512
    config.data.min_scale = 0.5
    config.data.max_scale = 2.0
    config.data.jitter.brightness = 0.125
    config.data.jitter.contrast = 0.5
    config.data.jitter.saturation = 0.5
    config.data.jitter.hue = 0.05

    config.model.name = "deeplabv3plus"
    config.model.backbone = "resnet50"
    config.model.output_stride = 8
    config.model.aux_head = True
    config.loss.aux_weight = 0.4
    with config.unlocked():  # DeepLabV3+'s decoder fields, settable from the command line
        config.model.low_level_channels = 48
        config.model.decoder_channels = 256

    config.batch_size = 16
    config.eval_batch_size = 16
    config.num_train_steps = 160000
    config.optimizer.name = "sgd"
    config.optimizer.learning_rate = 0.01
    config.optimizer.momentum = 0.9
    config.optimizer.schedule = "poly"
    config.optimizer.poly_power = 0.9
    config.optimizer.weight_decay = 5e-4
    config.eval_every_steps = 16000
    config.checkpoint_every_steps = 4000
    config.log_every_steps = 100

    config.evaluation.mode = "sliding"
    config.evaluation.window = ()  # the training crop
    config.evaluation.window_overlap = 1.0 / 3.0

    if arg == "quick":
        # Tests: a tiny model on 64 px crops (and 64 px windows), two steps, evaluation at the end.
        config.model.backbone = "resnet18"
        config.model.base_width = 8
        config.model.output_stride = 16
        config.model.aux_head = False
        config.model.aspp_channels = 16
        config.model.decoder_channels = 16
        config.model.low_level_channels = 8
        config.data.crop_size = 64
        config.batch_size = 8
        config.eval_batch_size = 8
        config.num_train_steps = 2
        config.log_every_steps = 1
        config.checkpoint_every_steps = 2
        config.eval_every_steps = 0
        config.num_prediction_images = 2
    elif arg:
        raise ValueError(f"Unknown variant {arg!r} of configs/ade20k.py; known: {VARIANTS}.")
    return config
