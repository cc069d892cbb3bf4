"""What every study's command shares: its flags, training its sweep, and the config helpers.

A study module (experiments/studies/<name>.py) is itself a config file for the runner: it
defines `get_config(arg)` and `get_sweep(arg)` (arg None for the study, 'quick' for its smoke
test), so `python -m seg_jax.main --config=experiments/studies/<name>.py --workdir=W --sweep`
(with --sweep_parallel, --sweep_index, --sweep_list) trains it like any sweep. Its `main()` calls
`run_study`, which parses the study's flags, trains the points not done yet and hands the runs to
the study's report function:

    python -m experiments.studies.<name> [--quick] [--out DIR] [--workdir W] [--parallel K]
                                         [--data_dir D] [--report_only]

The full study trains each point in its own process (`seg_jax.sweep.run_sweep`: a rerun resumes,
a crash loses one point); `--quick` trains its tiny points in this process
(`seg_jax.sweep.run_in_process`), which saves a JAX start-up per point. Nothing here imports
JAX: a study module must stay cheap to load as a config.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shlex
import sys
import time
from collections.abc import Callable, Mapping, Sequence

from experiments.studies import archive, report
from seg_jax import sweep
from seg_jax.sweep import status as sweep_files

SEEDS = (0, 1, 2)  # every full study: mean ± std over these
QUICK_SEEDS = (0,)  # --quick: every arm once
QUICK_STEPS = 3


@dataclasses.dataclass(frozen=True)
class StudyArgs:
    name: str
    quick: bool
    out: str  # the folder of <name>.md and <name>.png
    workdir: str  # the sweep's workdir
    data_dir: str | None  # tfds data_dir; None: tfds' default
    parallel: int
    report_only: bool
    command: str  # the command line that makes the study's files, as the page states it

    @property
    def seeds(self) -> tuple[int, ...]:
        return QUICK_SEEDS if self.quick else SEEDS

    @property
    def archive(self) -> str | None:
        """Where the full study keeps its finished points (`experiments.studies.archive`),
        beside its page; None for --quick, whose points are minutes away."""
        return None if self.quick else os.path.join(self.out, "runs", self.name)


def parse_args(name: str, argv: Sequence[str] | None = None, description: str = "") -> StudyArgs:
    parser = argparse.ArgumentParser(prog=f"python -m experiments.studies.{name}",
                                     description=description)
    parser.add_argument("--quick", action="store_true",
                        help="a smoke test: every arm for a few steps of a tiny model (minutes)")
    parser.add_argument("--out", default="docs/studies",
                        help=f"folder for {name}.md and {name}.png (default docs/studies)")
    parser.add_argument("--workdir", default=None,
                        help=f"the sweep's workdir (default runs/studies/{name}, "
                             f"runs/studies/{name}_quick with --quick)")
    parser.add_argument("--data_dir", default=None, help="tfds data_dir (default tfds')")
    parser.add_argument("--parallel", type=int, default=1,
                        help="points trained at a time (the runner's --sweep_parallel)")
    parser.add_argument("--report_only", action="store_true",
                        help="rewrite the report from the runs as they stand; train nothing")
    args = parser.parse_args(argv)
    if args.parallel < 1:
        parser.error(f"--parallel={args.parallel}: give 1 or more points at a time.")
    workdir = args.workdir or os.path.join("runs", "studies", name + ("_quick" if args.quick
                                                                      else ""))
    flags = ["--quick"] if args.quick else []
    if args.parallel > 1:
        flags.append(f"--parallel={args.parallel}")
    return StudyArgs(name=name, quick=args.quick, out=args.out, workdir=workdir,
                     data_dir=args.data_dir, parallel=args.parallel,
                     report_only=args.report_only,
                     command=shlex.join(["python", "-m", f"experiments.studies.{name}", *flags]))


def config_arg(study_file: str, quick: bool) -> str:
    """The runner's --config for the study: its file (relative to the working directory when
    inside it), ':quick' for the smoke test."""
    path = os.path.relpath(study_file) if not os.path.relpath(study_file).startswith("..") \
        else os.path.abspath(study_file)
    return f"{path}:quick" if quick else path


def _load_config(config_file: str, arg: str | None):
    from seg_jax.sweep.points import _load_module  # the runner's own loader of config files

    return _load_module(config_file).get_config(arg)


def _share_compilation_cache(workdir: str) -> None:
    """JAX's persistent compilation cache beside the study's workdir, for this process and the
    points' processes (they inherit the environment), unless the caller chose one. The points of
    a study compile the same programs again and again (every seed; every arm for the programs
    the swept option does not change); a hit is the executable a compilation would give."""
    cache = os.path.join(os.path.dirname(os.path.abspath(workdir)), ".jax_compilation_cache")
    os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", cache)


QUICK_XLA_FLAG = "--xla_backend_optimization_level=0"


def _compile_fast() -> None:
    """For --quick, XLA:CPU without LLVM's optimisations, unless JAX has started already (then
    XLA_FLAGS are read) or the caller set the level: a smoke test's programs run a few steps of
    a tiny model, so compiling them is nearly all its time, and this halves that (a DeepLabV3
    train step: 23 s to 12 s on the 2-core CPU)."""
    flags = os.environ.get("XLA_FLAGS", "")
    if "jax" not in sys.modules and "xla_backend_optimization_level" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} {QUICK_XLA_FLAG}".strip()


def _config_of(study_file: str, base: Mapping):
    """point -> the config the point trains with, as its config.json records it (a dict)."""
    from seg_jax.sweep import apply_point
    from ml_collections.config_flags import config_path

    def config_of(point) -> dict:
        config = _load_config(study_file, None)
        for path, value in base.items():
            config_path.set_value(path, config, value)
        apply_point(config, point)
        return json.loads(config.to_json_best_effort())

    return config_of


def train(study_file: str, args: StudyArgs, out=None) -> bool:
    """Trains the study's points that are not done (none with --report_only); True when every
    point is done. A failed point is recorded in its status file and the others still train.

    The full study first takes the finished points of its archive (`args.archive`) that are
    still the same points, and afterwards archives every finished point, so that it continues
    on another machine from its committed archive."""
    say = lambda text: print(text, file=out or sys.stdout, flush=True)  # noqa: E731
    _share_compilation_cache(args.workdir)  # a report step may compile too (re-evaluations)
    arg = config_arg(study_file, args.quick)
    base = {"data.data_dir": args.data_dir} if args.data_dir else {}
    if not args.quick:
        points = sweep.resolve(arg, base)
        restored = archive.restore(args.archive, args.workdir, points,
                                   _config_of(study_file, base))
        if restored:
            say(f"{args.name}: {len(restored)} finished points taken from {args.archive}.")
        manifest = os.path.join(args.workdir, sweep.MANIFEST)
        if args.report_only and restored and not os.path.exists(manifest):
            sweep_files.write_manifest(args.workdir, arg, [], points)  # a report from the archive
    if args.report_only:
        return all(r.status == "done" for r in report.load_runs(args.workdir))
    if args.quick:
        _compile_fast()
        config = _load_config(study_file, "quick")
        if args.data_dir:
            config.data.data_dir = args.data_dir
        try:
            sweep.run_in_process(config, sweep.load_sweep(arg), args.workdir, out=out)
        except sweep.SweepError as e:
            say(f"{args.name}: {e}")
            return False
        return True
    point_args = [f"--config.{path}={value}" for path, value in base.items()]
    try:
        return sweep.run_sweep(args.workdir, points, config_arg=arg, point_args=point_args,
                               parallel=args.parallel, out=out) == 0
    finally:  # an interrupted study keeps what it finished
        archive.save(args.workdir, args.archive)


def run_study(study_file: str, name: str, make_report: Callable[[list, StudyArgs, float], None],
              argv: Sequence[str] | None = None, description: str = "") -> int:
    """A study's command: parse its flags, train, then `make_report(runs, args, seconds)` with
    every point's Run (`report.load_runs`) and this command's wall time (None with --report_only).
    Returns the exit code:
    0 when every point is done and the report written, 1 when some point is not (the report is
    written all the same, listing it)."""
    args = parse_args(name, argv, description)
    started = time.monotonic()
    complete = train(study_file, args)
    runs = report.load_runs(args.workdir)
    # A report rebuilt from finished runs knows their own wall times, not the study's.
    make_report(runs, args, None if args.report_only else time.monotonic() - started)
    if args.archive:  # again: the report step cached its evaluations in the points' folders
        archive.save(args.workdir, args.archive)
    print(f"{name}: wrote {os.path.join(args.out, name)}.md and .png "
          f"({sum(r.status == 'done' for r in runs)} of {len(runs)} runs done).", flush=True)
    return 0 if complete else 1


# ----------------------------------------------------------------------------------------------
# Sweeps and configs


def sized(config, arg: str | None, *, steps: int, name: str):
    """A study's config for its variant `arg`: None, the study (`shorten` to `steps` updates),
    or 'quick', the smoke test (`shrink_for_quick`); any other is an error naming the study."""
    if arg == "quick":
        return shrink_for_quick(config)
    if arg:
        raise ValueError(f"Unknown variant {arg!r} of the {name} study; known: 'quick'.")
    return shorten(config, steps)


def seeds_for(arg: str | None) -> tuple[int, ...]:
    """The seeds of a study's sweep for its variant `arg`."""
    return QUICK_SEEDS if arg == "quick" else SEEDS


def with_seeds(arms: Sequence[Mapping], seeds: Sequence[int]) -> sweep.Sweep:
    """Every arm at every seed, seed-major: a study stopped early has each arm at the first
    seeds rather than the first arms at every seed."""
    return sweep.product({"seed": list(seeds)}, sweep.Sweep(arms))


def shorten(config, steps: int):
    """The config trained for `steps` updates, evaluated once at the end and checkpointed four
    times (so that a study resumes); schedules that scale with the run (cosine) follow."""
    config.num_train_steps = steps
    config.eval_every_steps = 0
    config.checkpoint_every_steps = max(1, steps // 4)
    config.log_every_steps = min(config.log_every_steps, max(1, steps // 8))
    config.optimizer.warmup_steps = min(config.optimizer.warmup_steps, steps // 10)
    return config


def shrink_for_quick(config):
    """The smoke test's size: the config's model family at the smallest widths on 32 px crops,
    QUICK_STEPS updates of batch 8, scored on 8 validation images, no prediction figure."""
    from configs import default

    default.shrink_for_smoke_test(config)
    config.data.crop_size = 32
    config.num_train_steps = QUICK_STEPS
    config.checkpoint_every_steps = QUICK_STEPS
    config.optimizer.warmup_steps = 0
    config.data.eval_split = "validation[:8]"
    config.num_prediction_images = 0
    return config
