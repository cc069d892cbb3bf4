"""Panoptic-DeepLab on the built-in `shapes` data (semantic + instance masks), scored with PQ.

  python -m seg_jax.main --config=configs/shapes_panoptic.py --workdir=runs/shapes_panoptic
  python -m seg_jax.main --config=configs/shapes_panoptic.py:quick --workdir=runs/pq_quick

The backbone and schedule are those of configs/shapes.py (a base-width-16 ResNet-18 at output
stride 8). The paper's heads are kept and thinned for a 2-core CPU (decoders 64 / 32 channels
instead of 256 / 128, dense rather than separable 5x5 convs); its loss weights (centre 200, offset 0.01), centre Gaussian (sigma 8 px) and
post-processing (threshold 0.1, 7x7 max-pool NMS) are config.panoptic's defaults. Evaluation adds
PQ / SQ / RQ (COCO rules) and the merge/split counts to the semantic metrics.
"""

from configs import models, shapes

VARIANTS = shapes.VARIANTS


def get_config(arg=None):
    config = shapes.get_config(arg)
    models.switch_model(
        config, "panoptic_deeplab",
        decoder_channels=64,
        low_level_channels=(32, 16),
        head_channels=64,
        instance_aspp_channels=config.model.aspp_channels,
        instance_decoder_channels=32,
        instance_low_level_channels=(16, 8),
        instance_head_channels=32,
        dropout_rate=0.1,
        # The paper's 5x5 convs are depthwise-separable; on XLA:CPU the depthwise 5x5 made a
        # train step 2.5x slower than dense 5x5 (1.36 against 3.44 steps/s, 2-core CPU).
        separable=False,
    )
    config.panoptic.max_instances = 16
    config.panoptic.top_k = 16
    if arg == "quick":
        config.model.decoder_channels = 16
        config.model.head_channels = 16
        config.model.instance_decoder_channels = 16
        config.model.instance_head_channels = 8
        config.model.low_level_channels = (8, 8)
        config.model.instance_low_level_channels = (8, 8)
    config.lock()
    return config
