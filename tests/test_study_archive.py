"""experiments.studies.archive: a study's finished points saved beside its page and restored into
a fresh workdir only while they are still the same points."""

import json
import os

from experiments.studies import archive, report
from seg_jax.sweep import status as files
from tests import study_runs

OVERRIDES = [{"seed": 0, "loss.name": "dice"}, {"seed": 1, "loss.name": "dice"},
             {"seed": 0, "loss.name": "focal"}]


def config_of(point):
    """What the study gives each point today: config.json as study_runs writes it."""
    return {"seed": point.overrides["seed"], "num_train_steps": study_runs.STEPS}


def finished_and_unfinished(workdir):
    """Point 0 done (with a cached evaluation), point 1 failed, point 2 still running."""
    points = study_runs.write_manifest(workdir, OVERRIDES)
    study_runs.write_point(workdir, points[0], status="done", config_seed=0,
                           results={"mean_iou": 0.5, "step": study_runs.STEPS})
    with open(os.path.join(workdir, points[0].name, "decisions_scores.json"), "w") as f:
        json.dump({"step": study_runs.STEPS}, f)
    os.makedirs(os.path.join(workdir, points[0].name, "checkpoints", "100"))
    study_runs.write_point(workdir, points[1], status="failed", config_seed=1)
    study_runs.write_point(workdir, points[2], status="running", config_seed=0)
    with open(os.path.join(workdir, "truth_cache.json"), "w") as f:
        json.dump({"curves": [1, 2]}, f)
    return points


def test_save_keeps_only_finished_points_and_their_json(tmp_path):
    workdir, saved = tmp_path / "run", tmp_path / "archive"
    points = finished_and_unfinished(workdir)
    assert archive.save(str(workdir), str(saved)) == 1
    assert sorted(os.listdir(saved)) == sorted([points[0].name, files.MANIFEST,
                                                "truth_cache.json"])
    assert sorted(os.listdir(saved / points[0].name)) == [
        "config.json", "decisions_scores.json", "results.json", files.STATUS_FILE]


def test_save_of_a_workdir_without_a_sweep_writes_nothing(tmp_path):
    assert archive.save(str(tmp_path / "none"), str(tmp_path / "archive")) == 0
    assert not os.path.exists(tmp_path / "archive")


def test_restore_makes_archived_points_done_in_a_fresh_workdir(tmp_path):
    workdir, saved, fresh = tmp_path / "run", tmp_path / "archive", tmp_path / "fresh"
    points = finished_and_unfinished(workdir)
    archive.save(str(workdir), str(saved))
    restored = archive.restore(str(saved), str(fresh), points, config_of)
    assert restored == [points[0].name]
    assert not os.path.exists(fresh / files.MANIFEST)  # the sweep writes its own
    files.write_manifest(str(fresh), "configs/study.py", [], points)
    runs = report.load_runs(str(fresh))
    assert [r.status for r in runs] == ["done", "pending", "pending"]
    assert runs[0].results["mean_iou"] == 0.5
    assert runs[0].wall_time_s == 60.0  # the time it took where it trained
    assert os.path.exists(fresh / points[0].name / "decisions_scores.json")
    assert json.load(open(fresh / "truth_cache.json")) == {"curves": [1, 2]}


def test_restore_skips_points_whose_study_changed(tmp_path):
    workdir, saved = tmp_path / "run", tmp_path / "archive"
    points = finished_and_unfinished(workdir)
    archive.save(str(workdir), str(saved))
    longer = study_runs.write_manifest(tmp_path / "other", OVERRIDES, steps=2 * study_runs.STEPS)
    assert archive.restore(str(saved), str(tmp_path / "a"), longer, config_of) == []

    def changed_config(point):  # the same keys, one value changed since the run
        return {**config_of(point), "num_train_steps": study_runs.STEPS + 1}

    assert archive.restore(str(saved), str(tmp_path / "b"), points, changed_config) == []


def test_restore_leaves_a_point_done_in_the_workdir_alone(tmp_path):
    workdir, saved = tmp_path / "run", tmp_path / "archive"
    points = finished_and_unfinished(workdir)
    archive.save(str(workdir), str(saved))
    assert archive.restore(str(saved), str(workdir), points, config_of) == []


def test_restore_from_no_archive_restores_nothing(tmp_path):
    points = study_runs.write_manifest(tmp_path / "run", OVERRIDES)
    assert archive.restore(str(tmp_path / "absent"), str(tmp_path / "run"), points,
                           config_of) == []


def test_same_config_lets_the_run_fill_what_the_study_leaves_to_the_data():
    today = {"seed": 1, "data": {"num_classes": None, "data_dir": "/a"}, "loss": {"name": "ce"}}
    trained = {"seed": 1, "data": {"num_classes": 7, "data_dir": "/b"}, "loss": {"name": "ce"}}
    assert archive.same_config(trained, today)
    assert not archive.same_config({**trained, "seed": 2}, today)
    assert not archive.same_config({**trained, "loss": {"name": "dice"}}, today)
    assert not archive.same_config({**trained, "extra": 1}, {**today, "extra": 2})
    # A setting added to seg_jax after the run: not a change. One removed since: a change.
    assert archive.same_config(trained, {**today, "new_setting": 3})
    assert not archive.same_config({**trained, "old_setting": 3}, today)


def test_same_config_ignores_how_the_run_computed():
    # Input threads and read-ahead do not change any batch, nor steps in flight a result; the
    # default input threads changed from 2 to 'auto' after points were archived.
    trained = {"seed": 1, "steps_in_flight": 2, "data": {"num_workers": 2, "prefetch": 2}}
    today = {"seed": 1, "steps_in_flight": 4, "data": {"num_workers": 0, "prefetch": 8}}
    assert archive.same_config(trained, today)
    assert not archive.same_config(trained, {**today, "seed": 2})


def test_a_study_report_is_rebuilt_from_its_archive_alone(tmp_path):
    """--report_only on a fresh machine: the committed archive is the study's whole record."""
    from experiments.studies import decisions, driver
    from seg_jax import sweep

    study = decisions.__file__
    arg = driver.config_arg(study, quick=False)
    points = sweep.resolve(arg)
    config_of = driver._config_of(study, {})
    saved = tmp_path / "docs" / "runs" / "decisions"
    saved.mkdir(parents=True)
    files.write_manifest(str(saved), arg, [], points)
    for p in points:
        study_runs.write_point(saved, p, status="done",
                               results={"mean_iou": 0.5, "step": p.num_train_steps})
        with open(saved / p.name / "config.json", "w") as f:
            json.dump(config_of(p), f)
    args = driver.parse_args("decisions", ["--report_only", f"--out={tmp_path / 'docs'}",
                                           f"--workdir={tmp_path / 'fresh'}"])
    assert args.archive == str(saved)
    assert driver.train(study, args)
    assert {r.status for r in report.load_runs(args.workdir)} == {"done"}


def test_the_default_archive_is_not_ignored_by_git():
    """The archive exists to be committed (a fresh machine has nothing else of the runs)."""
    import shutil
    import subprocess

    import pytest
    from experiments.studies import driver

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if shutil.which("git") is None or not os.path.exists(os.path.join(root, ".git")):
        pytest.skip("not a git checkout")
    archive_dir = driver.parse_args("decisions", [], "").archive
    probe = os.path.join(archive_dir, "seed=0", "results.json")
    ignored = subprocess.run(["git", "check-ignore", "-q", probe], cwd=root)
    assert ignored.returncode == 1, f"{probe} is ignored by .gitignore"
