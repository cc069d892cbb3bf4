"""Training with DeepLab's auxiliary FCN head: its loss is logged and added with loss.aux_weight."""

import json
import os

import pytest

from seg_jax import train


def test_aux_head_loss_is_trained_and_logged(quick_config, tmp_path):
    quick_config.model.aux_head = True
    quick_config.num_train_steps = 5
    quick_config.checkpoint_every_steps = 5
    train.train_and_evaluate(quick_config, str(tmp_path))
    with open(os.path.join(tmp_path, "metrics.jsonl")) as f:
        record = json.loads(f.readline())
    assert {"loss/semantic", "loss/aux"} <= set(record)
    total = record["loss/semantic"] + quick_config.loss.aux_weight * record["loss/aux"]
    assert record["loss"] == pytest.approx(total, rel=1e-5)
