"""DeepLabV3+ (ResNet-50, output stride 8) on ADE20K's 150 SceneParsing classes.

  python -m seg_jax.main --config=configs/ade20k.py --workdir=runs/ade20k \
      --config.data.root=/path/to/ADEChallengeData2016 \
      --config.model.pretrained=resnet50.pth
  python -m seg_jax.main --config=configs/ade20k.py:quick ...        # tiny smoke test
  python -m seg_jax.main --config=configs/ade20k.py:tfds --workdir=... \
      --config.data.data_dir=/path/to/tensorflow_datasets          # tfds scene_parse150 instead

Data: the benchmark's release, ADEChallengeData2016 (seg_jax/data/ade20k.py: 20,210 training and
2,000 validation images; annotation 0 is ignored, 1..150 are the classes). This machine cannot
download it, so no result is claimed here.

Variant `tfds` (and `tfds_quick`) reads tfds `scene_parse150` instead, prepared once with
`tfds build scene_parse150 --file_format=array_record` where TensorFlow is installed; its 'test'
split is ADE20K's validation images. Caveat: tfds builds it from the Places Challenge *instance*
annotations, which label only the 100 instance categories (mapped here onto their SceneParsing
ids); the 50 stuff classes (wall, sky, floor, ...) are unlabelled (ignored), so its scores are not
comparable with published ADE20K mIoU.

Schedule: mmsegmentation's deeplabv3plus_r50-d8_512x512_160k_ade20k: output stride 8, crops of
512 from images rescaled by [0.5, 2.0] and flipped, PhotoMetricDistortion-like jitter, batch 16,
SGD momentum 0.9, lr 0.01 with poly decay (power 0.9), weight decay 5e-4, 160k steps, an
auxiliary FCN head on stage 3 with loss weight 0.4. Evaluation slides 512 px windows with a
third of overlap (stride 341), logits averaged (mmsegmentation tests ADE20K on whole images
resized to 512 short side; sliding covers the same pixels at training resolution).
"""

from configs import default, models

VARIANTS = ("quick", "tfds", "tfds_quick")


def get_config(arg=None):
    config = default.get_config()
    config.data.name = "ade20k"
    config.data.train_split = "train"
    config.data.eval_split = "validation"
    if arg in ("tfds", "tfds_quick"):
        config.data.name = "scene_parse150"
        config.data.eval_split = "test"  # tfds' name for ADE20K's validation images
    config.data.crop_size = 512
    config.data.min_scale = 0.5
    config.data.max_scale = 2.0
    config.data.jitter.brightness = 0.125
    config.data.jitter.contrast = 0.5
    config.data.jitter.saturation = 0.5
    config.data.jitter.hue = 0.05

    models.switch_model(config, "deeplabv3plus")
    config.model.backbone = "resnet50"
    config.model.output_stride = 8
    config.model.aux_head = True
    config.loss.aux_weight = 0.4

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

    if arg in ("quick", "tfds_quick"):
        # Tests: a tiny model on 64 px crops (and 64 px windows), two steps, evaluation at the end.
        default.shrink_for_smoke_test(config)
        config.model.output_stride = 16
        config.model.aux_head = False
        config.model.decoder_channels = 16
        config.model.low_level_channels = 8
    elif arg not in (None, "", "tfds"):
        raise ValueError(f"Unknown variant {arg!r} of configs/ade20k.py; known: {VARIANTS}.")
    return config
