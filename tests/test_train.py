"""End-to-end training of the quick variant: outputs, falling loss, exact resume, bad input."""

import glob
import json
import os
import shutil

import jax
import numpy as np
import pytest

from run_helpers import final_params, read_jsonl
from seg_jax import checkpointing, train
from seg_jax.data import datasets, pipeline


def test_quick_run_writes_every_output_and_the_loss_falls(finished_run):
    config, workdir, results = finished_run
    for name in ("results.json", "results.md", "metrics.jsonl", "config.json", "predictions.png",
                 "dataset_info.json"):
        assert os.path.getsize(os.path.join(workdir, name)) > 0, name
    info = datasets.read_info(workdir)  # what --mode=predict reads instead of the dataset
    assert info.class_names[:2] == ("sky", "ground") and info.thing_classes == (2, 3, 4, 5, 6)
    assert info.ignore_label == 255 and info.palette.shape == (7, 3)
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["data"]["num_classes"] == 7  # the dataset's count, resolved
    assert glob.glob(os.path.join(workdir, "tensorboard", "events.out.tfevents.*"))
    steps = sorted(int(d) for d in os.listdir(os.path.join(workdir, "checkpoints")) if d.isdigit())
    assert steps == [10, 20, 30]

    with open(os.path.join(workdir, "results.json")) as f:
        saved = json.load(f)
    assert saved == json.loads(json.dumps(results))
    assert saved["step"] == config.num_train_steps
    assert set(saved["per_class_iou"]) == {"sky", "ground", "disc", "square", "triangle", "ring", "bar"}
    # 30 steps reach mIoU 0.103 and pixel accuracy 0.386 (measured). Predicting the majority
    # class ('ground', 40.85% of the pixels) everywhere would give mIoU 0.4085 / 7 = 0.058; chance
    # over 7 classes gives pixel accuracy 0.14.
    assert saved["mean_iou"] > 0.07 and saved["pixel_accuracy"] > 0.3
    # Under the default 0-1 cost the realised cost per pixel is the error rate.
    assert saved["mean_cost"] == pytest.approx(1.0 - saved["pixel_accuracy"], abs=1e-6)

    records = read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    train_records = [r for r in records if r["kind"] == "train"]
    assert [r["step"] for r in train_records] == [5, 10, 15, 20, 25, 30]
    assert {"loss", "learning_rate", "steps_per_sec", "grad_norm"} <= set(train_records[0])
    assert train_records[-1]["loss"] < 0.8 * train_records[0]["loss"]
    assert [r["step"] for r in records if r["kind"] == "eval"] == [30]


def test_rerun_of_a_finished_run_only_reports(finished_run):
    config, workdir, results = finished_run
    lines_before = len(read_jsonl(os.path.join(workdir, "metrics.jsonl")))
    again = train.train_and_evaluate(config, workdir)
    assert again == json.loads(json.dumps(results))
    assert len(read_jsonl(os.path.join(workdir, "metrics.jsonl"))) == lines_before


def test_resume_after_first_checkpoint_matches_uninterrupted_run(finished_run, tmp_path):
    config, workdir, _ = finished_run
    # The state a run leaves when stopped right after its first checkpoint (step 10).
    resumed_dir = str(tmp_path / "resumed")
    os.makedirs(os.path.join(resumed_dir, "checkpoints"))
    shutil.copytree(os.path.join(workdir, "checkpoints", "10"),
                    os.path.join(resumed_dir, "checkpoints", "10"))
    train.train_and_evaluate(config, resumed_dir)

    expected, got = final_params(workdir, 30), final_params(resumed_dir, 30)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), expected, got)
    uninterrupted = {r["step"]: r["loss"] for r in read_jsonl(os.path.join(workdir, "metrics.jsonl"))
                     if r["kind"] == "train"}
    resumed = {r["step"]: r["loss"] for r in read_jsonl(os.path.join(resumed_dir, "metrics.jsonl"))
               if r["kind"] == "train"}
    assert sorted(resumed) == [15, 20, 25, 30]
    for step, loss in resumed.items():
        assert loss == pytest.approx(uninterrupted[step], rel=1e-5)


def test_checkpoints_record_the_input_position(finished_run):
    config, workdir, _ = finished_run
    manager = checkpointing.create_manager(workdir, keep=3)
    source, _ = datasets.get_dataset(config.data, config.data.train_split)
    saved = checkpointing.read_data_state(manager, 20)
    assert saved == {"step": 20, "epoch": 20 * 8 // len(source),
                     "position_in_epoch": 20 * 8 % len(source), "examples_seen": 160,
                     "num_examples": len(source), "global_batch_size": 8, "seed": config.seed,
                     "sampling": "shuffled_epochs"}
    same = pipeline.TrainLoader(source, config.data, global_batch_size=8, seed=config.seed,
                                num_classes=7)
    assert same.check_resume(saved, 20) == []
    other = pipeline.TrainLoader(source, config.data, global_batch_size=16, seed=config.seed,
                                 num_classes=7)
    assert other.check_resume(saved, 20)[0].startswith("position_in_epoch 160 -> 320")
    assert "global_batch_size 8 -> 16" in other.check_resume(saved, 20)


def test_unwritable_workdir_is_a_clear_error(quick_config, tmp_path):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    with pytest.raises(PermissionError, match="Cannot write to workdir .*pass a writable --workdir"):
        train.train_and_evaluate(quick_config, str(blocker / "run"))


def test_batch_not_divisible_by_devices_fails_before_compiling(quick_config, tmp_path):
    n = jax.device_count()
    assert n >= 2, "conftest.py gives the tests 4 host devices"
    quick_config.batch_size = n + 1
    with pytest.raises(ValueError, match=f"config.batch_size={n + 1} is not divisible by the {n} devices"):
        train.train_and_evaluate(quick_config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_evaluate_checkpoint_without_checkpoint_is_a_clear_error(quick_config, tmp_path):
    with pytest.raises(FileNotFoundError, match="No checkpoint in"):
        train.evaluate_checkpoint(quick_config, str(tmp_path))


def test_eval_mode_reproduces_the_final_evaluation(finished_run, tmp_path):
    config, workdir, results = finished_run
    evaluated = train.evaluate_checkpoint(config, workdir)
    assert evaluated == json.loads(json.dumps(results))


def test_default_mean_cost_is_the_pixel_error_rate(finished_run):
    _, _, results = finished_run
    assert results["decision_rule"] == "map"
    assert results["mean_cost"] == pytest.approx(1.0 - results["pixel_accuracy"], abs=1e-12)
    assert 0.0 <= results["ece"] <= 1.0


def test_bayes_decision_with_zero_one_cost_reproduces_map(finished_run):
    config, workdir, results = finished_run
    config = config.copy_and_resolve_references()
    config.decision.rule = "bayes"
    config.decision.cost = tuple(tuple(float(i != j) for j in range(7)) for i in range(7))
    bayes = train.evaluate_checkpoint(config, workdir)
    for key in ("mean_iou", "pixel_accuracy", "mean_cost", "per_class_iou"):
        assert bayes[key] == results[key]
    assert bayes["decision_rule"] == "bayes"


def test_bad_cost_matrix_is_a_clear_error_before_compiling(quick_config, tmp_path):
    quick_config.decision.rule = "bayes"
    quick_config.decision.cost = ((0.0, 1.0), (1.0, 0.0))
    with pytest.raises(ValueError, match="decision.cost"):
        train.train_and_evaluate(quick_config, str(tmp_path))
    assert not os.path.exists(tmp_path / "checkpoints")


def test_temperature_scaling_at_evaluation(finished_run):
    config, workdir, results = finished_run
    config = config.copy_and_resolve_references()
    config.decision.temperature_stride = 4
    scaled = train.evaluate_checkpoint(config, workdir)
    assert scaled["mean_iou"] == results["mean_iou"]  # scaling never changes the argmax
    # 16 images of 128x128 sampled every 4th row and column (shapes has no void pixels).
    assert scaled["temperature_pixels"] == 16 * 32 * 32
    assert 1e-2 <= scaled["temperature"] <= 1e2
    assert scaled["ece_sampled"] >= 0.0 and scaled["ece_sampled_scaled"] >= 0.0
