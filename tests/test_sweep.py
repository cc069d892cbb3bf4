"""Sweeps: points and their names, validation before anything runs, results tables, and the CLI.

The end-to-end part runs the quick sweep of configs/shapes.py (2 x 2 points of 2 steps each, plus
one point that fails at run time) through `python -m seg_jax.main`, in three commands that share
one workdir: --sweep_index=1 (trained in that process), then --sweep --sweep_parallel=2 (which
skips point 1 and launches each other point as `... --sweep_index=i`), then --sweep again (which
skips everything finished). Four tiny runs in all.
"""

import csv
import glob
import importlib
import json
import os
import re
import subprocess
import sys
import textwrap
import warnings

import pytest

from seg_jax import sweep

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = ("--config.num_train_steps=2", "--config.checkpoint_every_steps=2")
LR, LOSS = "optimizer.learning_rate", "loss.name"
QUICK_NAMES = ["loss=cross_entropy_lr=0.002", "loss=cross_entropy_lr=0.005",
               "loss=dice_lr=0.002", "loss=dice_lr=0.005"]  # configs/shapes.py:quick's sweep


def _run(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "seg_jax.main", *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def _write_config(directory, name, body):
    """A config file deriving from configs/shapes.py (importable: the runner's cwd is the repo)."""
    path = os.path.join(directory, f"{name}.py")
    with open(path, "w") as f:
        f.write("from configs import shapes\nfrom seg_jax import sweep\n\n"
                "VARIANTS = shapes.VARIANTS\nget_config = shapes.get_config\n\n"
                + textwrap.dedent(body))
    return path


# --- declaring points ---------------------------------------------------------------------------


def test_product_varies_the_first_axis_slowest_and_names_read_well():
    points = sweep.product(**{LOSS: ["cross_entropy", "dice"], LR: [1e-3, 3e-3]})
    assert list(points) == [
        {LOSS: "cross_entropy", LR: 1e-3}, {LOSS: "cross_entropy", LR: 3e-3},
        {LOSS: "dice", LR: 1e-3}, {LOSS: "dice", LR: 3e-3}]
    assert sweep.point_names(points) == [
        "loss=cross_entropy_lr=0.001", "loss=cross_entropy_lr=0.003",
        "loss=dice_lr=0.001", "loss=dice_lr=0.003"]


def test_zip_pairs_values_and_combines_with_product_and_concat():
    paired = sweep.zip_(**{LR: [1e-3, 1e-2], "optimizer.warmup_steps": [0, 100]})
    assert list(paired) == [{LR: 1e-3, "optimizer.warmup_steps": 0},
                            {LR: 1e-2, "optimizer.warmup_steps": 100}]
    crossed = sweep.product(paired, **{LOSS: ["dice", "focal"]})
    assert len(crossed) == 4
    assert crossed[1] == {LR: 1e-3, "optimizer.warmup_steps": 0, LOSS: "focal"}
    # The same with a positional dict of axes and with the operators.
    assert sweep.product(paired, {LOSS: ["dice", "focal"]}) == crossed
    assert paired * sweep.product(**{LOSS: ["dice", "focal"]}) == crossed
    both = paired + [{LOSS: "dice"}]
    assert len(both) == 3 and both == sweep.concat(paired, [{LOSS: "dice"}])
    assert sweep.point_names(both)[2] == "loss=dice"  # labels cover every path, values only its own


@pytest.mark.parametrize("build, message", [
    (lambda: sweep.zip_(**{LR: [1, 2], LOSS: ["dice"]}), "different lengths"),
    (lambda: sweep.product(sweep.product(**{LR: [1]}), **{LR: [2]}), "two parts"),
    (lambda: sweep.product(**{LOSS: "dice"}), "list of values"),
    (lambda: sweep.product(**{LR: []}), "no values"),
    (lambda: sweep.Sweep([{"optimizer..lr": 1}]), "Not a config path"),
    (lambda: sweep.point_names([{LR: 0.1}, {LR: 0.1}]), "are the same"),
])
def test_declaration_mistakes_are_errors(build, message):
    with pytest.raises((TypeError, ValueError), match=message):
        build()


def test_labels_grow_until_they_tell_paths_apart():
    labels = sweep.short_labels(["loss.dice.smooth", "loss.jaccard.smooth", LR, "model.name"])
    assert labels == {"loss.dice.smooth": "dice.smooth", "loss.jaccard.smooth": "jaccard.smooth",
                      LR: "lr", "model.name": "model"}
    # Two leaves of one name are told apart by their parents (also after abbreviation).
    assert sweep.short_labels(["p.lr", "q.lr"]) == {"p.lr": "p.lr", "q.lr": "q.lr"}


def test_names_are_unique_filesystem_safe_and_stable(tmp_path):
    points = [{"data.root": v} for v in
              ["a/b", "a-b", "A-B", " spaced  out ", "ü", "", None, True, -1, 2.5e-7]]
    points += [{"model.atrous_rates": tuple(range(80))}, {"model.atrous_rates": tuple(range(81))},
               {}]
    names = sweep.point_names(points)
    assert names == sweep.point_names(points)  # a re-run finds the same workdirs
    assert len({n.lower() for n in names}) == len(names)
    for name in names:
        assert re.fullmatch(r"[A-Za-z0-9._+=~-]+", name) and len(name) <= sweep.MAX_NAME_LENGTH
        assert not name.startswith(("-", "."))
        os.mkdir(tmp_path / name)
    assert names[0].startswith("root=a-b~") and names[1].startswith("root=a-b~")  # told apart
    assert names[2].startswith("root=A-B~")  # differs from 'a-b' only in case
    assert names[6:9] == ["root=none", "root=true", "root=-1"]
    assert names[-1] == "base"


# --- validation against the config --------------------------------------------------------------


def test_resolve_gives_each_point_its_flags_and_steps():
    points = sweep.resolve("configs/shapes.py:quick", {"num_train_steps": 2, LR: 0.1})
    assert [p.name for p in points] == QUICK_NAMES
    assert points[3].config_args == ("--config.num_train_steps=2", "--config.loss.name=dice",
                                     "--config.optimizer.learning_rate=0.005")
    assert all(p.num_train_steps == 2 for p in points)


def test_values_of_every_field_type_reach_the_run_unchanged():
    points = sweep.resolve("configs/shapes.py:quick", points=[
        {"model.atrous_rates": (1, 2, 3), "data.hflip": False, "data.data_dir": "/a b/c",
         "decision.cost": ((0.0, 1.0), (1.0, 0.0)), "loss.term_weights": [1.0], "seed": 3}])
    assert "--config.model.atrous_rates=(1, 2, 3)" in points[0].config_args
    assert "--config.data.hflip=false" in points[0].config_args


def test_bad_points_are_reported_together_before_anything_runs():
    with pytest.raises(sweep.SweepError) as error:
        sweep.resolve("configs/shapes.py:quick", points=[
            {"optimizer.learning_rat": 0.1}, {"num_train_steps": 2.5}, {LOSS: 3}, {LR: 0.1}])
    message = str(error.value)
    assert "nothing was run" in message and "configs/shapes.py:quick" in message
    assert "'optimizer.learning_rat'" in message and 'Did you mean "learning_rate"' in message
    # Type errors are found once the keys are right.
    with pytest.raises(sweep.SweepError) as error:
        sweep.resolve("configs/shapes.py:quick", points=[{"num_train_steps": 2.5}, {LOSS: 3}])
    message = str(error.value)
    assert "point 0 (steps=2.5)" in message and "2.5" in message
    assert "point 1 (loss=3)" in message and "reads back as '3'" in message


@pytest.mark.parametrize("name", ["shapes"])
def test_declared_sweeps_resolve_for_every_variant(name):
    module = importlib.import_module(f"configs.{name}")
    for variant in [None, *getattr(module, "VARIANTS", ())]:
        points = sweep.resolve(f"configs/{name}.py" + (f":{variant}" if variant else ""))
        assert len(points) >= 4


def test_shapes_sweep_crosses_loss_families_with_learning_rates():
    points = sweep.load_sweep("configs/shapes.py")
    assert {p[LOSS] for p in points} == {"cross_entropy", "focal", "dice", "cross_entropy+dice"}
    assert len(points) == 8 and len(sweep.load_sweep("configs/shapes.py:quick")) == 4


def _parsed_flags(*args):
    """seg_jax.main's --config, --workdir and --mode flags parsed from `args`, as main parses them."""
    from absl import flags
    from ml_collections import config_flags

    argv = ["seg_jax.main", *args]
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values,
                                    lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "", flag_values=flag_values)
    flags.DEFINE_string("mode", "train", "", flag_values=flag_values)
    with warnings.catch_warnings():  # ml_collections loads config files with a deprecated call
        warnings.filterwarnings("ignore", "the load_module", DeprecationWarning)
        flag_values(argv)
    return flag_values


def test_a_point_sets_its_overrides_on_the_parsed_config_after_the_command_line(tmp_path):
    flag_values = _parsed_flags("--config=configs/shapes.py:quick", f"--workdir={tmp_path}",
                                f"--config.{LR}=0.1", "--config.num_train_steps=3")
    config = flag_values["config"].value
    run = sweep.prepare_point(flag_values, 3)
    assert run.point_dir == os.path.join(tmp_path, QUICK_NAMES[3])
    assert flag_values["config"].value is config  # set in place, on the config main trains
    assert config.loss.name == "dice" and config.optimizer.learning_rate == 0.005  # the point wins
    assert config.num_train_steps == 3  # the command line's other overrides stay
    assert not os.listdir(tmp_path)  # nothing written before training starts


def test_applying_a_point_gives_the_config_its_flags_give():
    points = sweep.resolve("configs/shapes.py:quick", {"num_train_steps": 2}, points=[
        {"model.atrous_rates": [1, 2, 3], "data.hflip": False, "data.data_dir": "/a b/c",
         LR: 1, "seed": 3}])
    from seg_jax.sweep.points import _parse_config

    applied = _parse_config("configs/shapes.py:quick", ["--config.num_train_steps=2"])
    sweep.apply_point(applied, points[0])
    parsed = _parse_config("configs/shapes.py:quick", points[0].config_args)
    assert applied.to_dict() == parsed.to_dict()
    assert applied.model.atrous_rates == (1, 2, 3) and isinstance(applied.optimizer.learning_rate,
                                                                   float)


@pytest.mark.parametrize("outcome, status, code", [
    ("results", "done", 0), ("preempted", "interrupted", 1), ("raises", "failed", 1)])
def test_a_point_records_how_its_training_ended(tmp_path, outcome, status, code):
    flag_values = _parsed_flags("--config=configs/shapes.py:quick", f"--workdir={tmp_path}",
                                "--config.num_train_steps=2")
    run = sweep.prepare_point(flag_values, 0)

    def train():  # stands in for train.train_and_evaluate
        if outcome == "raises":
            raise ValueError("Unknown loss")
        if outcome == "preempted":
            return {"preempted": True, "step": 1}
        with open(os.path.join(run.point_dir, "results.json"), "w") as f:
            json.dump({"step": 2, "mean_iou": 0.5}, f)
        return {"step": 2, "mean_iou": 0.5}

    if outcome == "raises":
        with pytest.raises(ValueError):
            run.run(train)
    else:
        assert run.run(train) == code
    record = _status(tmp_path, QUICK_NAMES[0])
    assert (record["status"], record["exit_code"], record["attempts"]) == (status, code, 1)
    assert record["pid"] == os.getpid() and record["num_train_steps"] == 2
    assert (record["error"] is not None) == (outcome == "raises")
    assert sweep.point_state(run.point_dir, 2)["status"] == status
    assert (tmp_path / sweep.RESULTS_MD).exists() and (tmp_path / sweep.MANIFEST).exists()


def test_the_launcher_imports_no_jax():
    code = ("import sys, seg_jax.main, seg_jax.sweep.run; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxlib')))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "[]", proc.stdout + proc.stderr


# --- results tables from workdirs -----------------------------------------------------------------


def _fake_point(workdir, name, *, results=None, status=None):
    os.makedirs(os.path.join(workdir, name))
    if results is not None:
        with open(os.path.join(workdir, name, "results.json"), "w") as f:
            json.dump(results, f)
    if status is not None:
        with open(os.path.join(workdir, name, sweep.STATUS_FILE), "w") as f:
            json.dump(status, f)


def test_collect_results_ranks_a_partial_sweep(tmp_path):
    points = sweep.product(**{LOSS: ["cross_entropy", "dice"], LR: [1e-3, 3e-3]})
    names = sweep.point_names(points)
    scores = dict(mean_iou=0.5, pixel_accuracy=0.9, boundary_f_score=0.4, step=10)
    _fake_point(tmp_path, names[0], results=scores, status={"status": "done", "wall_time_s": 65})
    _fake_point(tmp_path, names[1], status={"status": "failed", "exit_code": 1,
                                            "error": ["Traceback", "ValueError: boom"]})
    _fake_point(tmp_path, names[3], results={**scores, "mean_iou": 0.7})
    rows = sweep.collect_results(str(tmp_path), points)
    assert [(r["name"], r["rank"], r["status"]) for r in rows] == [
        (names[3], 1, "done"), (names[0], 2, "done"), (names[1], None, "failed"),
        (names[2], None, "pending")]
    table = (tmp_path / sweep.RESULTS_MD).read_text()
    assert "70.00%" in table and "1m05s" in table and "ValueError: boom" in table
    with open(tmp_path / sweep.RESULTS_CSV) as f:
        assert [r["mean_iou"] for r in csv.DictReader(f)] == ["0.7", "0.5", "", ""]
    assert (tmp_path / sweep.RESULTS_PNG).read_bytes()[:4] == b"\x89PNG"


def test_panoptic_sweeps_rank_by_pq(tmp_path):
    points = sweep.product(**{LR: [1e-3, 3e-3, 1e-2]})
    names = sweep.point_names(points)
    for name, (miou, pq) in zip(names, [(0.9, 0.2), (0.5, 0.6), (0.7, 0.4)]):
        _fake_point(tmp_path, name, results=dict(mean_iou=miou, pq=pq, pixel_accuracy=0.9,
                                                 boundary_f_score=0.3, step=5))
    rows = sweep.collect_results(str(tmp_path), points)
    assert [r["pq"] for r in rows] == [0.6, 0.4, 0.2]
    assert "| PQ |" in (tmp_path / sweep.RESULTS_MD).read_text()


# --- the runner's command line ------------------------------------------------------------------


def test_sweep_list_prints_index_status_and_name_and_runs_nothing(tmp_path):
    proc = _run("--config=configs/shapes.py", f"--workdir={tmp_path / 'w'}", "--sweep_list")
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert "8 point(s)" in lines[0]
    assert re.match(r"\s+0\s+pending\s+loss=cross_entropy_lr=0.001\s+loss.name=cross_entropy "
                    r"optimizer.learning_rate=0.001$", lines[2])
    assert re.match(r"\s+7\s+pending\s+loss=cross_entropy\+dice_lr=0.003\s", lines[9])
    assert not os.path.exists(tmp_path / "w")


def test_a_config_without_a_sweep_is_named(tmp_path):
    proc = _run("--config=configs/default.py", f"--workdir={tmp_path}", "--sweep")
    assert proc.returncode != 0
    assert "configs/default.py declares no sweep" in proc.stderr and "Traceback" not in proc.stderr


def test_unknown_sweep_keys_stop_the_sweep_before_it_starts(tmp_path):
    config = _write_config(tmp_path, "typo_sweep", """
        def get_sweep(arg=None):
            return sweep.product(**{"optimizer.learning_rat": [0.1, 0.2]})
        """)
    proc = _run(f"--config={config}:quick", f"--workdir={tmp_path / 'w'}", "--sweep")
    assert proc.returncode != 0 and "Traceback" not in proc.stderr
    assert "optimizer.learning_rat" in proc.stderr and 'Did you mean "learning_rate"' in proc.stderr
    assert not os.path.exists(tmp_path / "w")


USER_LOSS_POINT = "loss=log_cosh_dice"


@pytest.fixture(scope="module")
def sweep_runs(tmp_path_factory, shapes_data_dir):
    """The quick sweep plus a failing point and a point of a loss registered outside seg_jax
    (configs/shapes_custom_loss.py's config: its module listed in config.extra_modules), run as
    three commands on one workdir."""
    directory = tmp_path_factory.mktemp("sweep")
    config = _write_config(directory, "shapes_and_a_failure", """
        from configs import shapes_custom_loss

        get_config = shapes_custom_loss.get_config

        def get_sweep(arg=None):
            # Valid for the config (loss.name is a str), so it fails only when its run starts.
            return shapes.get_sweep(arg) + [{"loss.name": "no_such_loss"},
                                            {"loss.name": "log_cosh_dice"}]
        """)
    workdir = str(directory / "w")
    args = (f"--config={config}:quick", f"--workdir={workdir}", *TINY,
            f"--config.data.data_dir={shapes_data_dir}")
    runs = {"index": _run(*args, "--sweep_index=1")}
    runs["single_point_dirs"] = sorted(d for d in os.listdir(workdir)
                                       if os.path.isdir(os.path.join(workdir, d)))
    runs["parallel"] = _run(*args, "--sweep", "--sweep_parallel=2")
    runs["again"] = _run(*args, "--sweep")
    return workdir, runs


def _status(workdir, name):
    with open(os.path.join(workdir, name, sweep.STATUS_FILE)) as f:
        return json.load(f)


def test_sweep_index_runs_only_that_point(sweep_runs):
    workdir, runs = sweep_runs
    assert runs["index"].returncode == 0, runs["index"].stdout + runs["index"].stderr
    assert runs["single_point_dirs"] == [QUICK_NAMES[1]]


def test_sweep_index_trains_the_point_in_process_with_its_overrides(sweep_runs, shapes_data_dir):
    workdir, runs = sweep_runs
    with open(os.path.join(workdir, QUICK_NAMES[1], "config.json")) as f:
        trained = json.load(f)  # the config the run trained, as train.py wrote it
    assert trained["loss"]["name"] == "cross_entropy"
    assert trained["optimizer"]["learning_rate"] == 0.005
    assert trained["num_train_steps"] == 2 and trained["data"]["data_dir"] == shapes_data_dir
    record = _status(workdir, QUICK_NAMES[1])
    assert record["status"] == "done" and record["attempts"] == 1
    assert record["command"][-1] == "--sweep_index=1"
    # No child process: its output went to the command's own output, not to a sweep log.
    assert "Sweep point 1 of 6" in runs["index"].stdout
    assert not os.path.exists(os.path.join(workdir, QUICK_NAMES[1], sweep.LOG_FILE))


def test_sweep_launches_each_point_as_a_sweep_index_process(sweep_runs):
    workdir, _ = sweep_runs
    for index in (0, 2, 3):
        with open(os.path.join(workdir, QUICK_NAMES[index], sweep.LOG_FILE)) as f:
            command = next(line for line in f if line.startswith("$ "))
        assert " -m seg_jax.main --config=" in command and f"--workdir={workdir} " in command
        assert "--config.num_train_steps=2" in command and LR not in command
        assert command.rstrip().endswith(f"--sweep_index={index}")
        assert _status(workdir, QUICK_NAMES[index])["command"][-1] == f"--sweep_index={index}"


def test_sweep_runs_every_point_records_the_failure_and_goes_on(sweep_runs):
    workdir, runs = sweep_runs
    out = runs["parallel"].stdout
    assert runs["parallel"].returncode != 0, out
    assert f"skip  1 {QUICK_NAMES[1]}" in out
    # Two at a time: points 0 and 2 both started before any point finished.
    assert out.index("start 2") < out.index("] done")
    for name in QUICK_NAMES:
        with open(os.path.join(workdir, name, "results.json")) as f:
            assert json.load(f)["step"] == 2
        assert _status(workdir, name)["status"] == "done"
        if name != QUICK_NAMES[1]:  # point 1 ran on its own (--sweep_index), not from the sweep
            assert os.path.getsize(os.path.join(workdir, name, sweep.LOG_FILE)) > 0
    failed = _status(workdir, "loss=no_such_loss")
    assert failed["status"] == "failed" and failed["exit_code"] != 0
    assert any("ConfigError: Unknown loss config.loss.name='no_such_loss'" in line
               for line in failed["error"])
    assert "failed 4 loss=no_such_loss" in out
    # The registered loss trained in its point's own process: the config's extra_modules.
    assert _status(workdir, USER_LOSS_POINT)["status"] == "done"
    with open(os.path.join(workdir, USER_LOSS_POINT, "config.json")) as f:
        trained = json.load(f)
    assert trained["loss"]["name"] == "log_cosh_dice"
    assert trained["extra_modules"] == ["experiments.custom_losses"]


def test_results_table_csv_and_plot(sweep_runs):
    workdir, _ = sweep_runs
    with open(os.path.join(workdir, sweep.RESULTS_CSV)) as f:
        rows = list(csv.DictReader(f))
    assert [r["status"] for r in rows] == ["done"] * 5 + ["failed"]
    assert {r["name"] for r in rows[:5]} == {*QUICK_NAMES, USER_LOSS_POINT}
    assert rows[5][LOSS] == "no_such_loss"
    scores = [float(r["mean_iou"]) for r in rows[:5]]
    assert scores == sorted(scores, reverse=True)
    assert all(r["pixel_accuracy"] and r["boundary_f_score"] and r["wall_time_s"] for r in rows[:5])
    table = open(os.path.join(workdir, sweep.RESULTS_MD)).read()
    assert "| rank | point | loss.name | optimizer.learning_rate | mIoU |" in table
    assert "failed (exit 2)" in table and "Unknown loss" in table
    # On its own, from the points the runner recorded in the workdir (as from a notebook).
    assert [r["name"] for r in sweep.collect_results(workdir)] == [r["name"] for r in rows]
    from matplotlib import image

    height, width, _ = image.imread(os.path.join(workdir, sweep.RESULTS_PNG)).shape
    assert width > 400 and height > 300


def test_a_rerun_skips_finished_points_and_retries_the_failed_one(sweep_runs):
    workdir, runs = sweep_runs
    out = runs["again"].stdout
    assert runs["again"].returncode != 0
    assert "6 point(s) into" in out and "1 to run" in out
    assert all(f"skip  {i} {name}" in out for i, name in enumerate(QUICK_NAMES))
    assert all(_status(workdir, name)["attempts"] == 1 for name in QUICK_NAMES)
    assert _status(workdir, "loss=no_such_loss")["attempts"] == 2
    assert len(glob.glob(os.path.join(workdir, "*", sweep.STATUS_FILE))) == 6
