"""Why a workdir's checkpoint does not fit this run: the config it was written with, compared.

A checkpoint whose arrays do not fit this run's model fails deep inside orbax with a message about
tree structures or shapes. Every run records its config in `<workdir>/config.json`, so the
difference that matters (a changed model, a class count, a key renamed between versions of
seg_jax) can be named instead: `explain_mismatch` turns the restore error into an
`IncompatibleWorkdirError` that lists it.
"""

import json
import os
from typing import Any, Mapping

from seg_jax import errors

# Settings that change the shapes of a checkpoint's arrays, listed first when they differ.
_SHAPE_KEYS = ("model.", "data.num_classes", "optimizer.name", "ema_decay")
_MAX_LISTED = 8


def _flatten(tree: Any, prefix: str = "") -> dict[str, Any]:
    if not isinstance(tree, Mapping):
        return {prefix: tree}
    flat = {}
    for key, value in tree.items():
        flat.update(_flatten(value, f"{prefix}{key}" if not prefix else f"{prefix}.{key}"))
    return flat


def config_differences(saved: Mapping, current: Mapping) -> list[str]:
    """Readable differences between two configs (nested dicts), shape-changing settings first:
    'model.backbone: resnet50 (workdir) -> resnet18 (now)', 'loss.old_name: only in the
    workdir's config (renamed or removed?)', 'data.new_key: only in this config'."""
    old, new = _flatten(saved), _flatten(current)
    lines = []
    for key in sorted(set(old) | set(new)):
        if key not in new:
            lines.append(f"{key}: only in the workdir's config (renamed or removed since?)")
        elif key not in old:
            lines.append(f"{key}: only in this config (new since the workdir was written?)")
        elif old[key] != new[key]:
            lines.append(f"{key}: {old[key]!r} (workdir) -> {new[key]!r} (now)")
    return sorted(lines, key=lambda line: not line.startswith(_SHAPE_KEYS))


def _as_plain(config) -> dict:
    return json.loads(config.to_json_best_effort()) if hasattr(config, "to_json_best_effort") \
        else dict(config)


def explain_mismatch(workdir: str, config, error: Exception) -> errors.IncompatibleWorkdirError:
    """An error for a checkpoint in `workdir` that does not fit `config`'s model, naming what
    differs between `<workdir>/config.json` and `config` (the restore `error` in brief)."""
    path = os.path.join(workdir, "config.json")
    cause = str(error).splitlines()[0][:300] if str(error) else type(error).__name__
    try:
        with open(path, encoding="utf-8") as f:
            saved = json.load(f)
    except (OSError, ValueError):
        return errors.IncompatibleWorkdirError(
            f"The checkpoints in {workdir} do not fit this config's model, and the workdir has "
            f"no readable config.json to compare with ({cause}). Pass the config it was trained "
            f"with, or a new --workdir.")
    differences = config_differences(saved, _as_plain(config))
    if not differences:
        listed = "config.json and this config agree, so the code that builds the model differs"
    else:
        listed = "; ".join(differences[:_MAX_LISTED])
        if len(differences) > _MAX_LISTED:
            listed += f"; and {len(differences) - _MAX_LISTED} more"
    return errors.IncompatibleWorkdirError(
        f"The checkpoints in {workdir} were written by another config or version of seg_jax than "
        f"this run's: {listed}. Pass the config it was trained with (its config.json), or a new "
        f"--workdir. (Restore error: {cause})")
