"""Reading a finished run's workdir in tests (its checkpointed parameters, metrics.jsonl and
results), and the environment of a test's subprocess."""

import json
import os
import re

import numpy as np

import orbax.checkpoint as ocp

from seg_jax import checkpointing


def final_params(workdir, step):
    """The parameters of checkpoint `step` (the checkpoint's train-state item)."""
    path = os.path.join(workdir, "checkpoints", str(step), checkpointing.STATE_ITEM)
    return ocp.StandardCheckpointer().restore(path)["params"]


def read_jsonl(path):
    with open(path) as f:
        return [json.loads(line) for line in f]


def check_semantic_results(results, workdir, eval_source, info):
    """Asserts what a finished run's semantic evaluation must report whatever the model learnt.

    The evaluation split is read again here, independently of the evaluator: every labelled pixel
    of every image is counted exactly once (none of the padding, windows or resizing), a class
    with true pixels has an IoU, a class without any has none or 0 (predicted but absent), mIoU
    is the mean of the IoUs there are, and results.json holds what train_and_evaluate returned.
    `eval_source, info` are what `datasets.get_dataset` returns for the evaluation split.
    """
    ignore_label = info.ignore_label
    labels = [np.asarray(eval_source[i]["label"]) for i in range(len(eval_source))]
    assert results["num_examples"] == len(labels)
    assert results["num_pixels"] == sum(int((label != ignore_label).sum()) for label in labels)
    present = set()
    for label in labels:
        present.update(np.unique(label[label != ignore_label]).tolist())
    per_class = results["per_class_iou"]
    assert list(per_class) == list(info.class_names)
    for class_id, (name, value) in enumerate(per_class.items()):
        if class_id in present:
            assert value is not None, (name, value)
        else:
            assert value in (None, 0.0), (name, value)
    scored = [v for v in per_class.values() if v is not None]
    np.testing.assert_allclose(results["mean_iou"], np.mean(scored), rtol=1e-12)
    with open(os.path.join(workdir, "results.json")) as f:
        written = json.load(f)
    for key in ("step", "split", "num_examples", "num_pixels", "mean_iou", "pixel_accuracy",
                "per_class_iou"):
        assert written[key] == results[key], key


_COUNT_FLAG = "--xla_force_host_platform_device_count"


def child_env(devices: int, **extra) -> dict:
    """This process's environment for a subprocess with `devices` CPU devices, plus `extra`.

    conftest.py gives the test session 4 devices through XLA_FLAGS, which a child would inherit;
    here the count is replaced by the child's own (other XLA flags pass through, so the runner
    still adds its CPU convolution flag only where the caller has not set one). SEG_JAX_*
    variables are dropped: a child reads its distributed settings from `extra` alone.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEG_JAX_")}
    flags = re.sub(rf"{_COUNT_FLAG}=\S*", "", env.get("XLA_FLAGS", "")).split()
    env["XLA_FLAGS"] = " ".join([*flags, f"{_COUNT_FLAG}={devices}"])
    env.update(extra)
    return env
