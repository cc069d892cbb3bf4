"""Many devices and many processes: the same losses as one device, and bad settings fail fast.

The runs go through the command line in subprocesses, because the number of CPU devices
(XLA_FLAGS) and the distributed runtime are fixed once per process. Two processes on localhost
with two CPU devices each stand in for two hosts; their collectives go through gloo.

How close is close enough: BatchNorm statistics are over the global batch under jit, so the
runs differ only in the order of float additions (per-shard partial sums, then an all-reduce).
The first loss (same parameters, same batch) agrees to float32 rounding. After that, the first
steps of training amplify rounding enormously: on ONE device, scaling the initial parameters by
(1 + 1e-7 * noise), about one ulp, moved the losses of steps 3, 4, 5 by up to 1.2e-5, 3.6e-4
and 2.1e-3 (relative, 4 noise draws; SGD as below) and the parameters after step 5 by ~0.2 of
the distance they travelled. Other device counts must do no worse than that one-ulp
perturbation: `LOSS_RTOL` is about ten times its spread. Plain SGD keeps the comparison
meaningful: Adam divides rounding noise in near-zero gradients by its own size and turns it into
full-size updates.
"""

import json
import os
import re
import signal
import socket
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from configs import shapes as shapes_config
from run_helpers import child_env
from seg_jax import distributed

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RUN_TIMEOUT_S = 600

STEPS = 5
OVERRIDES = {
    "num_train_steps": STEPS,
    "log_every_steps": 1,
    "checkpoint_every_steps": 3,  # a periodic (asynchronous) save as well as the final one
    "optimizer.name": "sgd",
    "optimizer.learning_rate": 0.01,
    "optimizer.warmup_steps": 0,
    "optimizer.schedule": "constant",
    "data.eval_split": "validation[:8]",
}


def _config(data_dir):
    """The config the command-line runs use, built in this process."""
    config = shapes_config.get_config("quick")
    config.data.data_dir = data_dir
    for path, value in OVERRIDES.items():
        *parents, name = path.split(".")
        node = config
        for parent in parents:
            node = node[parent]
        node[name] = value
    return config


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def _env(devices: int, **extra) -> dict:
    # Each child sets its own device count (the session's 4, from conftest, would otherwise pass).
    return child_env(devices, JAX_PLATFORMS="cpu", PYTHONUNBUFFERED="1", **extra)


class _Run:
    """One subprocess whose stdout and stderr go to files (no pipe can fill up and block it)."""

    def __init__(self, log_dir, name, args, env):
        self.name = name
        self.out_path = os.path.join(log_dir, f"{name}.out")
        self.err_path = os.path.join(log_dir, f"{name}.err")
        with open(self.out_path, "w") as out, open(self.err_path, "w") as err:
            self.proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=out, stderr=err)
        self.start = time.perf_counter()
        self.wall_s = None

    def wait(self, timeout=RUN_TIMEOUT_S) -> int:
        try:
            rc = self.proc.wait(timeout=max(1.0, timeout - (time.perf_counter() - self.start)))
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
            raise AssertionError(f"{self.name} ran past {timeout} s:\n{self.stderr[-3000:]}")
        self.wall_s = time.perf_counter() - self.start
        return rc

    @property
    def stderr(self) -> str:
        with open(self.err_path) as f:
            return f.read()


def _wait_all(runs, timeout=RUN_TIMEOUT_S) -> list[int]:
    try:
        return [run.wait(timeout) for run in runs]
    finally:
        for run in runs:  # after a failure, the others may wait for it forever
            if run.proc.poll() is None:
                run.proc.kill()
                run.proc.wait()


def _cli(log_dir, name, workdir, data_dir, *extra, devices=1, **env):
    args = [sys.executable, "-m", "seg_jax.main", "--config=configs/shapes.py:quick",
            f"--workdir={workdir}", f"--config.data.data_dir={data_dir}",
            *(f"--config.{k}={v}" for k, v in OVERRIDES.items()), *extra]
    return _Run(log_dir, name, args, _env(devices, **env))


def _two_processes(log_dir, name, workdir, data_dir, *extra, devices=2):
    address = f"localhost:{_free_port()}"
    return address, [
        _cli(log_dir, f"{name}.{i}", workdir, data_dir, f"--coordinator_address={address}",
             "--num_processes=2", f"--process_id={i}", *extra, devices=devices)
        for i in range(2)]


def _records(workdir):
    with open(os.path.join(workdir, "metrics.jsonl")) as f:
        return [json.loads(line) for line in f]


def _losses(workdir) -> np.ndarray:
    train = [r for r in _records(workdir) if r["kind"] == "train"]
    assert [r["step"] for r in train] == list(range(1, STEPS + 1))
    return np.array([r["loss"] for r in train])


def _assert_ok(run, rc):
    assert rc == 0, f"{run.name} exited with {rc}:\n{run.stderr[-4000:]}"


# Per step. Step 1 (no update yet) differs by rounding only: a BatchNorm over each device's
# part of the batch would move it by far more. Later steps: see the module docstring.
LOSS_RTOL = np.array([1e-6, 1e-5, 1e-4, 5e-3, 2e-2])


def _assert_same_losses(reference, other, what):
    relative = np.abs(other - reference) / np.abs(reference)
    print(f"\n{what}: relative loss differences per step {np.array2string(relative, precision=1)}")
    assert np.all(relative <= LOSS_RTOL), (
        f"{what}: relative loss differences {relative} exceed {LOSS_RTOL}")


@pytest.fixture(scope="module")
def device_runs(shapes_data_dir, tmp_path_factory):
    """Workdirs of the same training on 1 device and on 8 (two processes run side by side)."""
    base = tmp_path_factory.mktemp("devices")
    runs = {n: _cli(str(base), f"d{n}", str(base / f"d{n}"), shapes_data_dir, devices=n)
            for n in (1, 8)}
    for run, rc in zip(runs.values(), _wait_all(list(runs.values()))):
        _assert_ok(run, rc)
    return {n: str(base / f"d{n}") for n in runs}


@pytest.fixture(scope="module")
def process_runs(shapes_data_dir, tmp_path_factory):
    """The same training as one process with 4 devices and as 2 processes x 2 devices."""
    base = tmp_path_factory.mktemp("processes")
    single = _cli(str(base), "p1x4", str(base / "p1x4"), shapes_data_dir, devices=4)
    _, pair = _two_processes(str(base), "p2x2", str(base / "p2x2"), shapes_data_dir)
    for run, rc in zip([single, *pair], _wait_all([single, *pair])):
        _assert_ok(run, rc)
    return {"1x4": str(base / "p1x4"), "2x2": str(base / "p2x2"), "runs": pair}


def test_one_and_eight_devices_give_the_same_losses(device_runs):
    one, eight = _losses(device_runs[1]), _losses(device_runs[8])
    _assert_same_losses(one, eight, "1 device vs 8 devices")


def test_two_processes_give_the_same_losses_as_one(process_runs):
    _assert_same_losses(_losses(process_runs["1x4"]), _losses(process_runs["2x2"]),
                        "1 process x 4 devices vs 2 processes x 2 devices")


def test_only_process_zero_writes_and_logs(process_runs):
    workdir = process_runs["2x2"]
    records = _records(workdir)
    # One writer: every step logged once, one evaluation, one TensorBoard event file.
    assert [r["step"] for r in records if r["kind"] == "train"] == list(range(1, STEPS + 1))
    assert [r["step"] for r in records if r["kind"] == "eval"] == [STEPS]
    assert len(os.listdir(os.path.join(workdir, "tensorboard"))) == 1
    for name in ("config.json", "results.json", "results.md", "predictions.png"):
        assert os.path.isfile(os.path.join(workdir, name)), name
    assert not [n for n in os.listdir(workdir) if n.endswith(".tmp")]
    with open(os.path.join(workdir, "results.json")) as f:
        assert json.load(f)["step"] == STEPS
    first, second = process_runs["runs"]
    assert f"step {STEPS}/{STEPS}" in first.stderr and "Training from step 0" in first.stderr
    # Process 1 logs warnings and errors only: no progress lines from the training code.
    info = re.compile(r"^I\d{4} .*\b(train|metric_writer|reporting|checkpointing)\.py:", re.M)
    assert not info.search(second.stderr), second.stderr[-3000:]


def test_two_process_checkpoint_restores_in_another_topology(process_runs, shapes_data_dir):
    # The final checkpoint written by 2 processes x 2 devices restores in this process (its own
    # devices) and holds the trained state: evaluating it reproduces the run's own results.
    from seg_jax import checkpointing, train

    config = _config(shapes_data_dir)
    run = train.Experiment(config, process_runs["2x2"])
    state, step = checkpointing.restore_latest(run.manager, run.abstract_state)
    assert step == STEPS and state is not None
    results, _ = run.evaluate(state)
    with open(os.path.join(process_runs["2x2"], "results.json")) as f:
        saved = json.load(f)
    assert results["step"] == saved["step"] == STEPS
    for key in ("mean_iou", "pixel_accuracy", "mean_cost"):
        assert results[key] == pytest.approx(saved[key], abs=1e-4), key

    # And it is near what one process trained (loosely: see the module docstring).
    single = train.Experiment(config, process_runs["1x4"])
    other, _ = checkpointing.restore_latest(single.manager, single.abstract_state)

    def flat(tree):
        return np.concatenate([np.ravel(x) for x in jax.tree.leaves(jax.device_get(tree))])

    initial = flat(run._init().params)
    moved = np.linalg.norm(flat(other.params) - initial)
    apart = np.linalg.norm(flat(state.params) - flat(other.params))
    print(f"\nparameters after {STEPS} steps: |2x2 - 1x4| / |1x4 - initial| = {apart / moved:.1e}")
    assert 0 < moved and apart <= 0.5 * moved


def test_a_sigterm_to_one_process_stops_both_at_one_step_with_its_checkpoint(
        shapes_data_dir, tmp_path):
    """JAX's preemption service: the signalled process tells the coordinator, which picks one
    step for all; no collective per step. Both exit cleanly with that step checkpointed."""
    workdir = tmp_path / "run"
    _, pair = _two_processes(str(tmp_path), "pre", str(workdir), shapes_data_dir,
                             "--config.num_train_steps=3000", "--config.checkpoint_every_steps=3000")
    try:
        deadline = time.monotonic() + RUN_TIMEOUT_S
        while not (os.path.exists(workdir / "metrics.jsonl")
                   and len(_records(str(workdir))) >= 3):
            assert all(r.proc.poll() is None for r in pair) and time.monotonic() < deadline, \
                pair[0].stderr[-3000:]
            time.sleep(0.2)
        pair[1].proc.send_signal(signal.SIGTERM)
        codes = _wait_all(pair, timeout=RUN_TIMEOUT_S)
    finally:
        _wait_all([r for r in pair if r.proc.poll() is None], timeout=1)
    for run, rc in zip(pair, codes):
        _assert_ok(run, rc)
    agreed = [re.findall(r"every process saves a checkpoint at step (\d+)", r.stderr) for r in pair]
    assert agreed[0] and agreed[0] == agreed[1], [r.stderr[-2000:] for r in pair]
    step = int(agreed[0][0])
    assert 3 <= step < 3000
    assert f"at step {step} with a checkpoint" in pair[0].stderr
    saved = sorted(int(d) for d in os.listdir(workdir / "checkpoints") if d.isdigit())
    assert saved[-1] == step
    assert not os.path.exists(workdir / "results.json")  # stopped before evaluating


def test_process_slices_concatenate_to_the_global_batch(shapes_data_dir, tmp_path):
    # Each process builds only its slice of every global batch; placed on the mesh, the slices
    # must form exactly the batch one process builds, in order (training and evaluation), and
    # jit must see its global statistics (what BatchNorm normalises with).
    script = r"""
import sys
import numpy as np
from seg_jax import distributed
distributed.initialize()  # from the SEG_JAX_* variables
import jax
from jax.experimental import multihost_utils
from configs import shapes as shapes_config
from seg_jax import sharding
from seg_jax.data import datasets, pipeline

config = shapes_config.get_config("quick")
config.data.data_dir = sys.argv[1]
mesh = sharding.create_mesh()
assert mesh.devices.size == 4 and jax.process_count() == 2, (mesh.devices, jax.process_count())
source, info = datasets.get_dataset(config.data, "train")
common = dict(global_batch_size=8, seed=0, num_classes=info.num_classes)
mine = pipeline.TrainLoader(source, config.data, process_index=jax.process_index(),
                            process_count=2, **common)
whole = pipeline.TrainLoader(source, config.data, **common)

def gather(local):
    placed = sharding.put_batch(local, mesh)
    return {k: np.asarray(multihost_utils.process_allgather(v, tiled=True))
            for k, v in placed.items()}, placed

for step in (0, 7):
    expected = whole.batch(step)
    got, placed = gather(mine.batch(step))
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
    mean = float(jax.jit(lambda x: x.mean(axis=(0, 1, 2)).sum())(placed["image"]))
    np.testing.assert_allclose(mean, expected["image"].mean(axis=(0, 1, 2)).sum(), rtol=1e-5)

eval_source, _ = datasets.get_dataset(config.data, "validation[:12]")
common = dict(global_batch_size=8, num_classes=info.num_classes)
ours = pipeline.eval_batches(eval_source, config.data, process_index=jax.process_index(),
                             process_count=2, **common)
for local, expected in zip(ours, pipeline.eval_batches(eval_source, config.data, **common)):
    got, _ = gather(local)
    for key in expected:
        np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
print("slices ok on process", jax.process_index())
"""
    address = f"localhost:{_free_port()}"
    runs = [_Run(str(tmp_path), f"slices.{i}", [sys.executable, "-c", script, shapes_data_dir],
                 _env(2, SEG_JAX_COORDINATOR_ADDRESS=address, SEG_JAX_NUM_PROCESSES="2",
                      SEG_JAX_PROCESS_ID=str(i), PYTHONPATH=ROOT))
            for i in range(2)]
    for run, rc in zip(runs, _wait_all(runs, timeout=300)):
        _assert_ok(run, rc)
        with open(run.out_path) as f:
            assert "slices ok" in f.read()


def test_cluster_detection_joins_processes_from_slurm_variables(tmp_path):
    # --distributed=auto hands over to JAX's detection; two local processes posing as a SLURM
    # job step of two tasks must find each other.
    script = ("from seg_jax import distributed; "
              "info = distributed.initialize(method='auto', timeout_s=60); "
              "import jax; print('joined', info.process_id, info.num_processes, "
              "jax.device_count())")
    port = str(_free_port())
    runs = [_Run(str(tmp_path), f"slurm.{i}", [sys.executable, "-c", script],
                 _env(1, SLURM_JOB_ID="4242", SLURM_STEP_NODELIST="localhost", SLURM_NTASKS="2",
                      SLURM_PROCID=str(i), SLURM_LOCALID=str(i), JAX_COORDINATOR_PORT=port,
                      PYTHONPATH=ROOT))
            for i in range(2)]
    for i, (run, rc) in enumerate(zip(runs, _wait_all(runs, timeout=120))):
        _assert_ok(run, rc)
        with open(run.out_path) as f:
            assert f"joined {i} 2 2" in f.read()


def test_batch_not_divisible_by_all_devices_of_all_processes(shapes_data_dir, tmp_path):
    # 6 divides over 2 processes (3 each) but not over their 4 devices: the message counts all.
    _, runs = _two_processes(str(tmp_path), "bad_batch", str(tmp_path / "w"), shapes_data_dir,
                             "--config.batch_size=6")
    for run, rc in zip(runs, _wait_all(runs, timeout=300)):
        assert rc != 0, run.name
        assert "config.batch_size=6 is not divisible by the 4 devices (2 process(es))" in run.stderr
        assert "--config.batch_size=4 or --config.batch_size=8" in run.stderr
        assert "First step" not in run.stderr  # stopped before compiling anything


def test_coordinator_that_never_answers_fails_within_the_timeout(tmp_path):
    address = f"localhost:{_free_port()}"  # nothing listens there
    run = _cli(str(tmp_path), "orphan", str(tmp_path / "w"), "unused",
               f"--coordinator_address={address}", "--num_processes=2", "--process_id=1",
               "--distributed_timeout=5")
    rc = run.wait(timeout=120)
    assert rc != 0
    assert run.wall_s < 60, run.wall_s
    message = run.stderr
    assert f"coordinator at {address}" in message and "Process 1 of 2" in message
    assert "--distributed_timeout=5 s" in message and "got no answer" in message
    assert not os.path.exists(tmp_path / "w")  # nothing started


def test_inconsistent_flags_fail_before_anything_starts(tmp_path):
    started = time.perf_counter()
    run = _cli(str(tmp_path), "bad_id", str(tmp_path / "w"), "unused",
               "--coordinator_address=localhost:1234", "--num_processes=2", "--process_id=2")
    assert run.wait(timeout=120) != 0
    assert "--process_id=2 is out of range for --num_processes=2" in run.stderr
    assert "Traceback" not in run.stderr
    assert not os.path.exists(tmp_path / "w")
    assert time.perf_counter() - started < 60


@pytest.mark.parametrize("kwargs, env, message", [
    (dict(num_processes=2), {}, "but not --coordinator_address, --process_id"),
    (dict(coordinator_address="localhost:1", num_processes=2, process_id=-1), {},
     "--process_id must be >= 0"),
    (dict(coordinator_address="localhost:1", num_processes=0, process_id=0), {},
     "--num_processes must be at least 1"),
    (dict(coordinator_address="localhost", num_processes=2, process_id=0), {}, "must be host:port"),
    (dict(coordinator_address="h:99999", num_processes=2, process_id=0), {}, "must be host:port"),
    ({}, {"SEG_JAX_NUM_PROCESSES": "two", "SEG_JAX_PROCESS_ID": "0",
          "SEG_JAX_COORDINATOR_ADDRESS": "h:1"}, "SEG_JAX_NUM_PROCESSES='two'"),
    ({}, {"SEG_JAX_NUM_PROCESSES": "2", "SEG_JAX_PROCESS_ID": "2",
          "SEG_JAX_COORDINATOR_ADDRESS": "h:1"}, "--process_id=2 is out of range"),
    (dict(coordinator_address="h:1", num_processes=2, process_id=0, timeout_s=0), {},
     "--distributed_timeout must be positive"),
])
def test_settings_are_checked(monkeypatch, kwargs, env, message):
    for key in list(os.environ):
        if key.startswith("SEG_JAX_"):
            monkeypatch.delenv(key)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    with pytest.raises(distributed.DistributedInitError, match=re.escape(message)):
        distributed.resolve(**kwargs)


def test_settings_from_flags_environment_and_detection(monkeypatch):
    for key in list(os.environ):
        if key.startswith("SEG_JAX_"):
            monkeypatch.delenv(key)
    assert distributed.resolve() is None  # a single-process run: nothing to initialise
    assert distributed.initialize() == distributed.ProcessInfo(0, 1, None)
    monkeypatch.setenv("SEG_JAX_COORDINATOR_ADDRESS", "10.0.0.1:1234")
    monkeypatch.setenv("SEG_JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("SEG_JAX_PROCESS_ID", "3")
    settings = distributed.resolve(process_id=1, timeout_s=7)  # a flag wins over its variable
    assert (settings["coordinator_address"], settings["num_processes"], settings["process_id"],
            settings["timeout_s"]) == ("10.0.0.1:1234", 4, 1, 7.0)
    for key in ("SEG_JAX_COORDINATOR_ADDRESS", "SEG_JAX_NUM_PROCESSES", "SEG_JAX_PROCESS_ID"):
        monkeypatch.delenv(key)
    # Under detection, whatever is not given is left to JAX.
    settings = distributed.resolve(method="auto")
    assert settings["method"] == "auto" and settings["coordinator_address"] is None
    assert settings["timeout_s"] == distributed.DEFAULT_TIMEOUT_S
    assert distributed.resolve(method="off") is None


def test_a_taken_coordinator_port_is_named():
    with socket.socket() as busy:
        busy.bind(("0.0.0.0", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(distributed.DistributedInitError, match=f"port {port}"):
            distributed._check_port_free(port)
    distributed._check_port_free(port)  # free again
