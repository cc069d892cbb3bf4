"""A workdir whose checkpoints another config or version wrote: the error names what differs."""

import json
import os
import shutil

import pytest

from seg_jax import errors, predict, train, workdir_check


def test_differences_list_shape_settings_first_and_renamed_keys():
    saved = {"model": {"name": "deeplabv3", "width": 16}, "loss": {"old_key": 1}, "seed": 0}
    current = {"model": {"name": "deeplabv3", "width": 32}, "loss": {"new_key": 1}, "seed": 1}
    lines = workdir_check.config_differences(saved, current)
    assert lines[0] == "model.width: 16 (workdir) -> 32 (now)"
    assert set(lines[1:]) == {
        "loss.old_key: only in the workdir's config (renamed or removed since?)",
        "loss.new_key: only in this config (new since the workdir was written?)",
        "seed: 0 (workdir) -> 1 (now)"}
    assert workdir_check.config_differences(saved, saved) == []


@pytest.fixture
def copied_run(finished_run, tmp_path):
    config, workdir, _ = finished_run
    copy = str(tmp_path / "run")
    shutil.copytree(workdir, copy)
    return config, copy


def test_resuming_with_another_model_names_the_setting_not_an_orbax_error(copied_run):
    config, workdir = copied_run
    config = config.copy_and_resolve_references()
    config.model.aspp_channels = 24  # the checkpoint's ASPP has 16 channels
    with open(os.path.join(workdir, "config.json")) as f:
        recorded = json.load(f)
    recorded["model"]["renamed_in_an_old_version"] = 1
    with open(os.path.join(workdir, "config.json"), "w") as f:
        json.dump(recorded, f)
    checkpoints = sorted(os.listdir(os.path.join(workdir, "checkpoints")))
    with pytest.raises(errors.IncompatibleWorkdirError) as raised:
        train.Experiment(config, workdir).restore()
    message = str(raised.value)
    assert "model.aspp_channels: 16 (workdir) -> 24 (now)" in message
    assert "model.renamed_in_an_old_version: only in the workdir's config" in message
    assert message.index("model.aspp_channels") < message.index("Restore error")
    # Nothing was moved aside or rewritten: the run resumes with its own config.
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == checkpoints


def test_predicting_with_another_model_names_the_setting(copied_run):
    config, workdir = copied_run
    config = config.copy_and_resolve_references()
    config.model.base_width = 4
    with pytest.raises(errors.IncompatibleWorkdirError, match=r"model.base_width: 8 \(workdir\) "
                                                             r"-> 4 \(now\)"):
        predict.restore_for_inference(config, workdir)
