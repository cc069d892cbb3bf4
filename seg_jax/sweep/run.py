"""Running a sweep: one point in this process (--sweep_index), or every point as a child process
(--sweep, --sweep_parallel), and --sweep_list.

One point is the primitive: `python -m seg_jax.main --config=X --workdir=W --sweep_index=i`
checks the whole sweep against the config, sets point i's overrides on the parsed config in place
(after the command line's --config.<path> flags: the point's value wins) and trains it through
seg_jax.main's own training path into W/<point name>/, recording its outcome in
W/<name>/sweep_status.json (`PointRun`).

`--sweep` launches `python -m seg_jax.main <the same flags> --sweep_index=i` for each point not
yet done, `--sweep_parallel` at a time, each in a session of its own with its output in
W/<name>/sweep_log.txt: a crash (or an XLA abort) in one point cannot take the others down, and
XLA flags and memory are per process. The launcher imports no JAX.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
import traceback
from collections import deque
from collections.abc import Sequence

from seg_jax.reporting import format_duration
from seg_jax.sweep import status as files
from seg_jax.sweep.declare import display_value
from seg_jax.sweep.points import (Point, SweepError, apply_point, config_flag_args, from_flags,
                                  swept_flag_notes)
from seg_jax.sweep.report import RESULTS_MD, collect_results

# Flags that belong to the sweep itself; every other flag given to the sweep reaches each point.
_SWEEP_FLAGS = frozenset({"config", "workdir", "sweep", "sweep_parallel", "sweep_index",
                          "sweep_list", "flagfile"})


def _passthrough_args(flag_values) -> list[str]:
    """The flags given to the sweep that each point's run gets too (--mode, logging, ...)."""
    args, seen = [], set()
    for name in list(flag_values):
        flag = flag_values[name]
        if (id(flag) in seen or not flag.present or flag.name in _SWEEP_FLAGS
                or flag.name.startswith("config.")):
            continue
        seen.add(id(flag))
        args += [line for line in flag.serialize().splitlines() if line]
    return args


def _point_args(flag_values, config_arg: str) -> list[str]:
    """Every point's flags besides --config, --workdir and --sweep_index: the sweep's other flags,
    then its --config.<path> overrides."""
    return _passthrough_args(flag_values) + config_flag_args(
        config_arg, flag_values["config"].override_values)


def _rebuild(workdir: str, points, say) -> None:
    # The tables are a convenience: a failure to draw them must not stop the sweep.
    try:
        collect_results(workdir, points)
    except Exception as e:  # noqa: BLE001
        say(f"  (could not rebuild the results files: {type(e).__name__}: {e})")


def _say(out=None):
    return lambda text: print(text, file=out or sys.stdout, flush=True)


def _summary(status: str, record: dict, results: dict | None) -> str:
    """What a point's progress line says after its status."""
    if status == "done":
        return files.main_metric_value(results)
    if record.get("error"):
        return f"exit {record.get('exit_code')}: {files.headline(record['error'])}"
    return "stopped with a checkpoint; running the sweep again resumes it"


# ----------------------------------------------------------------------------------------------
# One point, in this process


def _ended_by(error: BaseException) -> tuple[str, int, list[str]]:
    """(status, exit code, error lines) of a training that raised `error`."""
    if isinstance(error, SystemExit):
        code = error.code
        if code is None or isinstance(code, int):
            return ("interrupted" if not code else "failed"), int(code or 0), []
        return "failed", 1, [str(code)]
    lines = files.last_lines("".join(traceback.format_exception(error)))
    if isinstance(error, KeyboardInterrupt):
        return "interrupted", 130, lines
    return "failed", 1, lines


@dataclasses.dataclass
class PointRun:
    """Point `point` of a sweep, about to train in this process into `point_dir`."""
    point: Point
    points: list
    config_arg: str
    workdir: str  # the sweep's: the point trains in workdir/<point name>/
    point_args: list
    # What re-runs the point, for its status file; None: this process's own command line.
    command: list | None = None

    @property
    def point_dir(self) -> str:
        return os.path.join(self.workdir, self.point.name)

    def run(self, train, *, record: bool = True) -> int:
        """Calls `train()` (which trains into `point_dir`) and returns the exit code: 0 when the
        point is done, 1 when not (a failure, or a SIGTERM that left a checkpoint: results of
        train() with 'preempted'). With `record` (the primary process), writes W/sweep.json, the
        point's status file before and after, and rebuilds the results tables."""
        say, started = _say(), time.monotonic()
        os.makedirs(self.point_dir, exist_ok=True)
        begun = self._begin() if record else {}
        try:
            result = train()
        except BaseException as error:
            if record:
                status, code, lines = _ended_by(error)
                self._end(begun, status, code, time.monotonic() - started, lines, say)
            raise
        done = (not (isinstance(result, dict) and result.get("preempted"))
                and files.point_state(self.point_dir, self.point.num_train_steps)["status"] == "done")
        if record:
            self._end(begun, "done" if done else "interrupted", 0 if done else 1,
                      time.monotonic() - started, [], say)
        return 0 if done else 1

    def _begin(self) -> dict:
        files.write_manifest(self.workdir, self.config_arg, self.point_args, self.points)
        command = self.command or [sys.executable, "-m", "seg_jax.main", *sys.argv[1:]]
        record = files.begin_attempt(self.point_dir, self.point, pid=os.getpid(), command=command)
        files.write_json(os.path.join(self.point_dir, files.STATUS_FILE), record)
        return record

    def _end(self, begun: dict, status: str, code: int, elapsed: float, lines, say) -> None:
        record = files.finish_attempt(self.point_dir, begun, status=status, exit_code=code,
                                      elapsed=elapsed, error=lines)
        _rebuild(self.workdir, self.points, say)
        state = files.point_state(self.point_dir, self.point.num_train_steps)
        say(f"Sweep point {self.point.index} {self.point.name}: {status} in "
            f"{format_duration(elapsed)}: {_summary(status, record, state['results'])}")


def prepare_point(flag_values, index: int) -> PointRun:
    """seg_jax.main --sweep_index=i, before training: checks every point of the sweep against the
    config, then sets point i's overrides on flag_values['config'].value in place.

    Raises SweepError (a user error: seg_jax.main prints it as 'FATAL sweep: ...') for a sweep
    that does not fit its config, and exits with 0 (training nothing) when the point is done.
    """
    try:
        config_arg, points = from_flags(flag_values, index)
    except SweepError as e:
        raise SweepError(f"sweep: {e}") from e
    config_flag, say = flag_values["config"], _say()
    point = points[index]
    run = PointRun(point=point, points=points, config_arg=config_arg,
                   workdir=os.path.abspath(flag_values["workdir"].value),
                   point_args=_point_args(flag_values, config_arg))
    state = files.point_state(run.point_dir, point.num_train_steps)
    if state["status"] == "done":
        metric = files.main_metric_value(state["results"]) or "done"
        say(f"Sweep point {index} {point.name}: finished ({metric}); nothing to run.")
        sys.exit(0)
    for note in swept_flag_notes(config_flag.override_values, points):
        say(note)
    apply_point(config_flag.value, point)
    overrides = " ".join(f"{k}={display_value(v)}" for k, v in point.overrides.items())
    say(f"Sweep point {index} of {len(points)} ({config_arg}) into {run.point_dir}: {overrides}")
    return run


# ----------------------------------------------------------------------------------------------
# Every point, each as a child process


@dataclasses.dataclass
class _Job:
    point: Point
    proc: subprocess.Popen
    command: list
    started: float


def _child_env(parallel: int) -> dict:
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    # JAX takes 75% of an accelerator's memory up front: K processes sharing one device would
    # fail to start. Allocating on demand lets them share it (a user's own setting wins).
    if parallel > 1 and not any(k in env for k in ("XLA_PYTHON_CLIENT_PREALLOCATE",
                                                   "XLA_PYTHON_CLIENT_MEM_FRACTION",
                                                   "XLA_PYTHON_CLIENT_ALLOCATOR")):
        env["XLA_PYTHON_CLIENT_PREALLOCATE"] = "false"
    return env


def _start(workdir: str, p: Point, command: list, env: dict) -> _Job:
    point_dir = os.path.join(workdir, p.name)
    os.makedirs(point_dir, exist_ok=True)
    record = files.read_json(os.path.join(point_dir, files.STATUS_FILE)) or {}
    with open(os.path.join(point_dir, files.LOG_FILE), "a", encoding="utf-8") as log:
        separator = "\n" if log.tell() else ""
        log.write(f"{separator}===== sweep point {p.index} ({p.name}), attempt "
                  f"{int(record.get('attempts', 0)) + 1}, {files.now()} on "
                  f"{socket.gethostname()}\n$ {shlex.join(command)}\n")
        log.flush()
        # A session of its own: a Ctrl-C at the terminal reaches the sweep, which then asks each
        # point to checkpoint (SIGTERM) instead of every point dying mid-step.
        proc = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT,
                                stdin=subprocess.DEVNULL, env=env, start_new_session=True)
    return _Job(point=p, proc=proc, command=command, started=time.monotonic())


def _finish(workdir: str, job: _Job, code: int, stopping: bool) -> tuple[str, float, str]:
    """(status, seconds, summary) of a point whose process ended with `code`. The point records
    its own outcome; one that could not (killed, aborted, or ended before it began training) is
    recorded here, with the end of its log."""
    point_dir = os.path.join(workdir, job.point.name)
    elapsed = time.monotonic() - job.started
    state = files.point_state(point_dir, job.point.num_train_steps)
    record = state["record"] or {}
    ours = record.get("pid") == job.proc.pid
    if not ours or record.get("status") == "running":
        if not ours:
            record = files.begin_attempt(point_dir, job.point, pid=job.proc.pid,
                                         command=job.command)
        if state["status"] == "done":
            status = "done"
        else:  # code 0 without results: the run checkpointed on a SIGTERM
            status = "interrupted" if stopping or code == 0 else "failed"
        tail = files.log_tail(os.path.join(point_dir, files.LOG_FILE)) if (
            status != "done" and code != 0) else []
        record = files.finish_attempt(point_dir, record, status=status, exit_code=code,
                                      elapsed=elapsed, error=tail)
    elif record.get("exit_code") != code:  # the point's own guess; the launcher knows
        record["exit_code"] = code
        files.write_json(os.path.join(point_dir, files.STATUS_FILE), record)
    return record["status"], elapsed, _summary(record["status"], record, state["results"])


class _Launcher:
    """Runs points as child processes, `parallel` at a time. The first SIGINT / SIGTERM / SIGHUP
    asks the running points to checkpoint and stop (SIGTERM) and starts no more; a second one
    kills them."""

    def __init__(self, workdir: str, points: Sequence[Point], command, parallel: int, say):
        self.workdir, self.points, self.command = workdir, points, command
        self.parallel, self.say = parallel, say
        self.env = _child_env(parallel)
        self.queue: deque[Point] = deque()
        self.running: dict[int, _Job] = {}
        self.outcomes: dict[int, str] = {}
        self.durations: list[float] = []
        self.signals = self.finished = self.total = 0

    def on_signal(self, signum, frame) -> None:
        del frame
        self.signals += 1
        self.say(f"{signal.Signals(signum).name}: " + (
            "asking the running points to checkpoint and stop, starting no more (again: kill them)."
            if self.signals == 1 else "killing the running points."))
        for job in self.running.values():
            try:
                job.proc.send_signal(signal.SIGTERM if self.signals == 1 else signal.SIGKILL)
            except ProcessLookupError:
                pass

    def run(self, todo: Sequence[Point], done_before: int, total: int) -> dict[int, str]:
        """Runs `todo`; returns {index: status} of the points it ran."""
        self.queue, self.finished, self.total = deque(todo), done_before, total
        with _forwarding(self.on_signal):
            try:
                while self.queue or self.running:
                    self._start_more()
                    if self.signals and not self.running:
                        break
                    time.sleep(0.2)
                    self._reap()
            except BaseException:
                # The sweep itself broke: its points are in sessions of their own: stop them.
                for job in self.running.values():
                    job.proc.send_signal(signal.SIGTERM)
                raise
        return self.outcomes

    def _start_more(self) -> None:
        while self.queue and len(self.running) < self.parallel and not self.signals:
            p = self.queue.popleft()
            try:
                self.running[p.index] = _start(self.workdir, p, self.command(p), self.env)
            except OSError as e:  # e.g. its workdir cannot be made: that point fails alone
                self.outcomes[p.index] = "failed"
                self.finished += 1
                self.say(f"[{self.finished}/{self.total}] failed {p.index} {p.name}: could not "
                         f"start: {e}")
                continue
            self.say(f"  start {p.index} {p.name}")

    def _reap(self) -> None:
        for index, job in list(self.running.items()):
            code = job.proc.poll()
            if code is None:
                continue
            del self.running[index]
            status, elapsed, summary = _finish(self.workdir, job, code, bool(self.signals))
            self.outcomes[index] = status
            self.finished += 1
            if status == "done":
                self.durations.append(elapsed)
            _rebuild(self.workdir, self.points, self.say)
            failed = sum(s != "done" for s in self.outcomes.values())
            left = len(self.queue) + len(self.running)
            typical = (sum(self.durations) / len(self.durations)) if self.durations else elapsed
            eta = typical * math.ceil(left / self.parallel) if left else 0.0
            self.say(f"[{self.finished}/{self.total}{f', {failed} not done' if failed else ''}] "
                     f"{status} {job.point.index} {job.point.name} in {format_duration(elapsed)}: "
                     f"{summary}" + (f"; ETA {format_duration(eta)}"
                                     if left and not self.signals else ""))


@contextlib.contextmanager
def _forwarding(handler):
    """Installs `handler` for SIGINT, SIGTERM and SIGHUP while inside, then the previous ones."""
    previous = {}
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        try:
            previous[signum] = signal.signal(signum, handler)
        except ValueError:  # not the main thread (a notebook's worker): no forwarding
            pass
    try:
        yield
    finally:
        for signum, handler_before in previous.items():
            signal.signal(signum, handler_before)


def _plan(workdir: str, points: Sequence[Point], only, say, config_arg: str,
          parallel: int) -> tuple[list[Point], list[Point]]:
    """(the selected points, those of them not done yet), saying which are skipped."""
    selected = [p for p in points if only is None or p.index in set(only)]
    states = {p.index: files.point_state(os.path.join(workdir, p.name), p.num_train_steps)
              for p in selected}
    todo = [p for p in selected if states[p.index]["status"] != "done"]
    say(f"Sweep {config_arg}: {len(selected)} point(s) into {workdir}/<point>, {len(todo)} to "
        f"run, {parallel} at a time; each logs to <point>/{files.LOG_FILE}.")
    for p in selected:
        if states[p.index]["status"] == "done":
            metric = files.main_metric_value(states[p.index]["results"]) or "done"
            say(f"  skip  {p.index} {p.name}: finished ({metric})")
    return selected, todo


def _report_end(workdir: str, selected: Sequence[Point], ran: int, seconds: float, say) -> int:
    """Says how the sweep ended and which points are not done; returns the exit code."""
    states = {p.index: files.point_state(os.path.join(workdir, p.name), p.num_train_steps)
              for p in selected}
    not_done = [p for p in selected if states[p.index]["status"] != "done"]
    total = len(selected)
    say(f"Sweep ran {ran} point(s) in {format_duration(seconds)}: {total - len(not_done)} of "
        f"{total} done. Results: {os.path.join(workdir, RESULTS_MD)} (.csv, .png).")
    for p in not_done:
        state, record = states[p.index], states[p.index]["record"] or {}
        log = os.path.join(workdir, p.name, files.LOG_FILE)
        say(f"  not done: {p.index} {p.name}: {state['status']}"
            + (f" (exit {record['exit_code']}): {files.headline(record['error'])}"
               if record.get("error") else "")
            + (f"; log {log}" if os.path.exists(log) else ""))
    return 0 if not not_done else 1


def run_sweep(workdir: str, points: Sequence[Point], *, config_arg: str,
              point_args: Sequence[str] = (), parallel: int = 1,
              only: Sequence[int] | None = None, out=None) -> int:
    """Runs the points (those with index in `only`, default all), each as `python -m
    seg_jax.main --config=<config_arg> --workdir=<workdir> <point_args> --sweep_index=<i>`.

    Points already done are skipped; the others run (and resume from their checkpoints),
    `parallel` at a time. The results files are rebuilt after every point. SIGINT / SIGTERM
    asks the running points to checkpoint and stop (a second one kills them) and starts no more.
    Returns 0 when every selected point is done, else 1.
    """
    say = _say(out)
    workdir = os.path.abspath(workdir)
    os.makedirs(workdir, exist_ok=True)
    files.write_manifest(workdir, config_arg, point_args, points)
    selected, todo = _plan(workdir, points, only, say, config_arg, parallel)
    base = [sys.executable, "-m", "seg_jax.main", f"--config={config_arg}",
            f"--workdir={workdir}", *point_args]
    launcher = _Launcher(workdir, points, lambda p: [*base, f"--sweep_index={p.index}"],
                         parallel, say)
    started = time.monotonic()
    outcomes = launcher.run(todo, done_before=len(selected) - len(todo), total=len(selected))
    _rebuild(workdir, points, say)
    return _report_end(workdir, selected, len(outcomes), time.monotonic() - started, say)


def list_points(workdir: str, points: Sequence[Point], config_arg: str, out=None) -> None:
    out = out or sys.stdout
    width = max(len(p.name) for p in points)
    print(f"{config_arg}: {len(points)} point(s), each into {os.path.abspath(workdir)}/<name>",
          file=out)
    print(f"{'index':>5}  {'status':<11}  {'name':<{width}}  overrides", file=out)
    for p in points:
        status = files.point_state(os.path.join(workdir, p.name), p.num_train_steps)["status"]
        overrides = " ".join(f"{k}={display_value(v)}" for k, v in p.overrides.items())
        print(f"{p.index:>5}  {status:<11}  {p.name:<{width}}  {overrides}", file=out)
    out.flush()


def launch(flag_values, *, workdir: str, run_all: bool, parallel: int, index: int | None,
           list_only: bool) -> int:
    """seg_jax.main's --sweep / --sweep_parallel / --sweep_list; returns the exit code. With
    --sweep_index too, the sweep runs that point only."""
    try:
        if not (run_all or list_only or index is not None):
            raise SweepError("--sweep_parallel applies to --sweep; add --sweep.")
        config_arg, points = from_flags(flag_values, index)
    except SweepError as e:
        raise SweepError(f"sweep: {e}") from e
    if list_only:
        list_points(workdir, points, config_arg)
        return 0
    for note in swept_flag_notes(flag_values["config"].override_values, points):
        print(note, flush=True)
    return run_sweep(workdir, points, config_arg=config_arg,
                     point_args=_point_args(flag_values, config_arg), parallel=parallel,
                     only=None if index is None else [index])
