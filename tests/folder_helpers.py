"""Small generated folder datasets and a tiny model config for end-to-end tests."""

import json
import os

import numpy as np
from PIL import Image

from configs import folder as folder_config
from configs import models as model_configs


def write_folder(root, sizes, classes=3):
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "masks"))
    rng = np.random.default_rng(0)
    for i, (h, w) in enumerate(sizes):
        yy, xx = np.mgrid[:h, :w]
        mask = ((yy // 7 + xx // 9 + i) % classes).astype(np.uint8)
        mask[:2, :3] = 255
        image = (rng.integers(0, 60, (h, w, 3)) + 60 * (mask[..., None] % 4)).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, "images", f"{i}.png"))
        Image.fromarray(mask).save(os.path.join(root, "masks", f"{i}.png"))
    with open(os.path.join(root, "classes.json"), "w") as f:
        json.dump({"classes": ["a", "b", "c"][:classes], "ignore_label": 255}, f)


def tiny_folder_config(root):
    config = folder_config.get_config()
    config.data.root = root  # classes.json says how many classes there are
    config.data.crop_size = 32
    model_configs.switch_model(config, "deeplabv3", backbone="resnet18", base_width=8,
                               aspp_channels=8, output_stride=8)
    config.batch_size = config.eval_batch_size = 4
    config.num_prediction_images = 3
    return config
