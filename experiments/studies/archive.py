"""A study's finished points kept beside its page, so that a study spreads over several machines.

A study's workdir (runs/studies/<name>) holds checkpoints and is not committed; a session on a
fresh machine would start the study again from nothing. The archive is the part worth keeping:
for every finished point, the JSON files of its workdir (results.json, config.json, the sweep's
status record with the point's wall time, and the report step's cached evaluations of its final
checkpoint), and the sweep's own JSON files (its manifest, caches shared by the points). That is
everything a report reads, a few tens of kB per point.

    save(workdir, archive_dir)      after training: every done point's JSON files into the archive
    restore(archive_dir, workdir, points, config_of)
                                    before training: archived points that are still the same
                                    point (name, overrides, steps and the whole config) become
                                    done points of the workdir, so the sweep skips them

A point is restored only when the config it was trained with (its config.json) equals the
config the study gives that point today; a changed study trains it again. A restored point has
no checkpoints: its report reads the cached evaluations, so a report whose cache format changed
since needs the point retrained (`--workdir` on a fresh folder, or delete its archive).
"""

from __future__ import annotations

import glob
import os
import shutil
from collections.abc import Callable, Sequence

from seg_jax.sweep import status as files


def _json_files(folder: str) -> list[str]:
    return sorted(glob.glob(os.path.join(folder, "*.json")))


def _copy(source: str, folder: str) -> None:
    os.makedirs(folder, exist_ok=True)
    target = os.path.join(folder, os.path.basename(source))
    shutil.copyfile(source, target + ".tmp")
    os.replace(target + ".tmp", target)


def _done_points(manifest: dict, root: str) -> list[dict]:
    return [entry for entry in manifest.get("points", [])
            if files.point_state(os.path.join(root, entry["name"]),
                                 entry.get("num_train_steps"))["status"] == "done"]


def save(workdir: str, archive_dir: str) -> int:
    """Copies the sweep's JSON files and every done point's into `archive_dir`; returns the
    number of points archived. Points not done are left out (an archived point is a finished
    one); the archive's points from earlier runs stay."""
    manifest = files.read_json(os.path.join(workdir, files.MANIFEST))
    if not isinstance(manifest, dict):
        return 0
    for path in _json_files(workdir):
        _copy(path, archive_dir)
    done = _done_points(manifest, workdir)
    for entry in done:
        for path in _json_files(os.path.join(workdir, entry["name"])):
            _copy(path, os.path.join(archive_dir, entry["name"]))
    return len(done)


# Settings that say how a run computes, not what: the data's folder, the input threads and how
# far they read ahead (every batch is a pure function of seed and step), the steps kept in
# flight, the compilation cache. They are not compared.
EXECUTION_ONLY_KEYS = frozenset(
    {"data_dir", "num_workers", "prefetch", "steps_in_flight", "compilation_cache_dir"})


def same_config(trained, today) -> bool:
    """Whether a point's recorded config (`trained`, its config.json) is the config the study
    gives it `today`. Fields `today` leaves None are ones the run fills from the data (the
    number of classes, the ignore label), so any recorded value matches them; the
    EXECUTION_ONLY_KEYS are not compared. A key the recorded config lacks was added to
    seg_jax after the run; new settings default to the old behaviour (a study arm that sets one
    is another point, by name), so it does not count as a change. A key only the recorded config
    has was removed or renamed since: that does."""
    if isinstance(today, dict) and isinstance(trained, dict):
        for key in set(today) | set(trained):
            if key in EXECUTION_ONLY_KEYS or key not in trained:
                continue
            if key not in today or not same_config(trained[key], today[key]):
                return False
        return True
    return today is None or trained == today


def restore(archive_dir: str, workdir: str, points: Sequence,
            config_of: Callable[[object], dict]) -> list[str]:
    """Makes the archived points of `points` done in `workdir`; returns their names.

    Args:
      archive_dir: a folder `save` wrote (absent: nothing to restore).
      workdir: the study's sweep workdir.
      points: the sweep's points today (`seg_jax.sweep.Point`s).
      config_of: the config a point trains with today, as config.json records it (a dict).

    A point is restored when it is not done in `workdir`, its archived copy is done for the same
    number of steps with the same overrides, and its archived config.json equals
    `config_of(point)` (the data folder aside). The sweep's own JSON files are copied where the
    workdir has none.
    """
    manifest = files.read_json(os.path.join(archive_dir, files.MANIFEST))
    if not isinstance(manifest, dict):
        return []
    archived = {entry["name"]: entry for entry in _done_points(manifest, archive_dir)}
    restored = []
    for point in points:
        entry = archived.get(point.name)
        if (entry is None or entry.get("overrides") != point.overrides
                or entry.get("num_train_steps") != point.num_train_steps):
            continue
        target = os.path.join(workdir, point.name)
        if files.point_state(target, point.num_train_steps)["status"] == "done":
            continue
        source = os.path.join(archive_dir, point.name)
        trained = files.read_json(os.path.join(source, "config.json"))
        if not isinstance(trained, dict) or not same_config(trained, config_of(point)):
            continue
        for path in _json_files(source):
            _copy(path, target)
        restored.append(point.name)
    for path in _json_files(archive_dir):
        if os.path.basename(path) != files.MANIFEST and not os.path.exists(
                os.path.join(workdir, os.path.basename(path))):
            _copy(path, workdir)
    return restored
