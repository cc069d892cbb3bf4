"""The files of a sweep's workdir W: W/sweep.json (the manifest: the config and its points), and
for each point W/<name>/sweep_status.json (its outcome) and W/<name>/sweep_log.txt (its output
when the sweep launched it); what state a point is in; and one attempt's status record.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from collections.abc import Sequence

from seg_jax.reporting import atomic_write

MANIFEST = "sweep.json"
STATUS_FILE = "sweep_status.json"
LOG_FILE = "sweep_log.txt"


def read_json(path: str):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def write_json(path: str, value) -> None:
    atomic_write(path, json.dumps(value, indent=2, default=repr) + "\n")


def now() -> str:
    return time.strftime("%Y-%m-%d %H:%M:%S")


def write_manifest(workdir: str, config_arg: str, extra_args: Sequence[str], points) -> None:
    """W/sweep.json: what `collect_results(W)` needs to rebuild the tables without the config."""
    write_json(os.path.join(workdir, MANIFEST), {
        "config": config_arg, "extra_args": list(extra_args),
        "points": [{"index": p.index, "name": p.name, "overrides": p.overrides,
                    "num_train_steps": p.num_train_steps, "config_args": list(p.config_args)}
                   for p in points]})


def point_state(point_dir: str, num_train_steps: int | None = None) -> dict:
    """{'status', 'results', 'record'} of one point's workdir.

    status: 'done' (results.json at step num_train_steps, or a status file saying done for that
    many steps; any step when num_train_steps is None), else what the status file says
    ('failed', 'interrupted', 'running'), 'incomplete' (a run left results or checkpoints for
    fewer steps) or 'pending'.
    """
    record = read_json(os.path.join(point_dir, STATUS_FILE))
    results = read_json(os.path.join(point_dir, "results.json"))
    if not isinstance(results, dict) or "step" not in results:
        results = None
    done = results is not None and num_train_steps in (None, results["step"])
    if not done and isinstance(record, dict) and record.get("status") == "done":
        done = num_train_steps in (None, record.get("num_train_steps"))
    if done:
        status = "done"
    elif isinstance(record, dict) and record.get("status") in ("failed", "interrupted", "running"):
        status = record["status"]
    elif results is not None or os.path.isdir(os.path.join(point_dir, "checkpoints")):
        status = "incomplete"
    else:
        status = "pending"
    return {"status": status, "results": results if done else None,
            "record": record if isinstance(record, dict) else None}


def log_tail(path: str, lines: int = 20) -> list[str]:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.path.getsize(path) - 65536))
            text = f.read().decode("utf-8", "replace")
    except OSError:
        return []
    return last_lines(text, lines)


def last_lines(text: str, lines: int = 20) -> list[str]:
    """The last `lines` non-empty lines of `text`, as a status record keeps a run's error."""
    return [line.rstrip() for line in text.splitlines() if line.strip()][-lines:]


def headline(tail: list[str]) -> str:
    """The line of a failed run's log that says why: its exception or FATAL line, else the last."""
    for line in reversed(tail):
        if re.match(r"^(FATAL|[A-Za-z_.]*(Error|Exception|Interrupt)\b)", line):
            return line[:300]
    return tail[-1][:300] if tail else "(empty log)"


def main_metric_value(results: dict | None) -> str:
    if not results:
        return ""
    key = "pq" if results.get("pq") is not None else "mean_iou"
    value = results.get(key)
    return f"{key} {value:.4f}" if isinstance(value, (int, float)) else ""


def begin_attempt(point_dir: str, point, *, pid: int, command: Sequence[str]) -> dict:
    """The status record of a new attempt at `point` (the previous record's attempts + 1, its
    wall time kept), status 'running'. Not written: the caller writes it."""
    record = read_json(os.path.join(point_dir, STATUS_FILE))
    record = record if isinstance(record, dict) else {}
    record.update(index=point.index, name=point.name, overrides=point.overrides,
                  status="running", num_train_steps=point.num_train_steps,
                  attempts=int(record.get("attempts", 0)) + 1, started=now(), finished=None,
                  host=socket.gethostname(), pid=pid, exit_code=None, error=None,
                  command=list(command))
    return record


def finish_attempt(point_dir: str, record: dict, *, status: str, exit_code: int,
                   elapsed: float, error: list[str] | None) -> dict:
    """Writes the outcome of the attempt `record` began into the point's status file."""
    record = dict(record)
    record.update(status=status, exit_code=exit_code, finished=now(),
                  last_attempt_s=round(elapsed, 1),
                  wall_time_s=round(float(record.get("wall_time_s") or 0.0) + elapsed, 1),
                  error=error or None)
    write_json(os.path.join(point_dir, STATUS_FILE), record)
    return record
