"""`import_extra_modules(config)`: the modules of `config.extra_modules`, imported before a run.

Losses and metrics written outside seg_jax register themselves when their module is imported
(`@seg_jax.losses.register_loss`, `@seg_jax.metrics.register_metric`). A config file can import
that module itself; `config.extra_modules` is the other way, for a module chosen on the command
line (`--config.extra_modules="('my_project.losses',)"`) or a file outside any package. Every
run (training, evaluation, prediction, each point of a sweep) imports them before it reads the
loss or metric names, so all of them see the same registrations.
"""

import hashlib
import importlib
import importlib.util
import os
import sys

from seg_jax.errors import ConfigError


def _import_file(path: str) -> None:
    path = os.path.abspath(path)
    if not os.path.isfile(path):
        raise ConfigError(f"config.extra_modules names {path!r}, which is not a file.")
    # One module per file, whatever the working directory: importing it twice registers twice.
    name = f"_seg_jax_extra_{hashlib.sha1(path.encode()).hexdigest()[:12]}"
    if name in sys.modules:
        return
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        del sys.modules[name]
        raise


def import_extra_modules(config) -> None:
    """Imports each entry of `config.extra_modules`: a dotted module name (found on sys.path or in
    the working directory) or a path to a .py file."""
    for entry in config.get("extra_modules", ()) or ():
        if str(entry).endswith(".py"):
            _import_file(str(entry))
            continue
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.append(os.getcwd())
        try:
            importlib.import_module(entry)
        except ModuleNotFoundError as error:
            if error.name and str(entry).startswith(error.name):
                raise ConfigError(
                    f"config.extra_modules names {entry!r}, which cannot be imported ({error}); "
                    f"give a module on the Python path or a path to a .py file.") from error
            raise
