"""Training steps/s with at most K steps in flight (`config.steps_in_flight`), bounded against
effectively unbounded, in the main job itself.

    python -m experiments.benchmarks.bench_in_flight                  # both cases, ~10 min on 2 cores
    python -m experiments.benchmarks.bench_in_flight --cases shapes --repeats 3

The runner waits for the oldest of `steps_in_flight` dispatched steps before dispatching another,
so that a preemption notice never waits behind a queue of steps (and the queue's batches are not
all held on the device). The question is whether that costs throughput: with K = 2 the host
prepares step s + 1 while the device runs step s, which should be enough. K = 1000 (more than the
steps timed) is the behaviour before the bound: the host only waited at logging steps.

Each measurement is one `python -m seg_jax.main` run of --steps steps with log_every_steps =
steps, so the one logged steps/s covers steps 2 .. steps (compilation excluded: the runner starts
its clock after the first step); the run is stopped once that line is logged. K values alternate
within each repeat (load from elsewhere can only slow a run down); the table gives the best and
the median of the repeats, and the ratio bounded / unbounded of the bests. A persistent
compilation cache in a temporary folder makes every run after the first skip compilation.

Cases:
  shapes  configs/shapes.py as it is (DeepLabV3, ResNet-18 width 16, OS 8, batch 16, crop 96).
  slow    configs/shapes.py with a ResNet-50 of base width 64 at output stride 8, crop 128,
          batch 8: a step of seconds on a 2-core CPU, as a large model on a slow device.
"""

import argparse
import os
import platform
import re
import subprocess
import sys
import tempfile
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
CASES = {
    "shapes": {"args": [], "steps": 60},
    "slow": {"args": ["--config.model.backbone=resnet50", "--config.model.base_width=64",
                      "--config.data.crop_size=128", "--config.batch_size=8"], "steps": 12},
}
RATE = re.compile(r"step (\d+)/(\d+) .* ([\d.]+) steps/s")


def steps_per_second(case: str, in_flight: int, steps: int, data_dir: str | None, env) -> float:
    """One run of `case` with `in_flight`; the steps/s it logs over steps 2 .. steps."""
    with tempfile.TemporaryDirectory() as workdir:
        args = [sys.executable, "-m", "seg_jax.main", "--config=configs/shapes.py",
                f"--workdir={workdir}", *CASES[case]["args"],
                f"--config.num_train_steps={steps}", f"--config.log_every_steps={steps}",
                f"--config.checkpoint_every_steps={steps}", "--config.eval_every_steps=0",
                f"--config.steps_in_flight={in_flight}"]
        if data_dir:
            args.append(f"--config.data.data_dir={data_dir}")
        proc = subprocess.Popen(args, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        try:
            for line in proc.stdout:
                match = RATE.search(line)
                if match and int(match.group(1)) == steps:
                    return float(match.group(3))
        finally:
            proc.kill()
            proc.wait()
    raise RuntimeError(f"{case} (steps_in_flight={in_flight}) ended without logging steps/s.")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="shapes,slow")
    parser.add_argument("--in-flight", default="2,1000",
                        help="comma-separated steps_in_flight values (the first is the bounded "
                             "one, the last the reference)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--data-dir", default=None, help="tfds data_dir of the shapes dataset")
    args = parser.parse_args()
    values = [int(v) for v in args.in_flight.split(",")]
    cache = tempfile.mkdtemp(prefix="bench_in_flight_xla_cache_")
    env = dict(os.environ, JAX_COMPILATION_CACHE_DIR=cache,
               JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS="0")
    print(f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores; "
          f"repeats {args.repeats}, values alternate within each repeat", flush=True)
    rows = []
    for case in args.cases.split(","):
        steps = CASES[case]["steps"]
        rates = {v: [] for v in values}
        started = time.perf_counter()
        steps_per_second(case, values[0], 2, args.data_dir, env)  # compile once, into the cache
        for repeat in range(args.repeats):
            for v in values:
                rates[v].append(steps_per_second(case, v, steps, args.data_dir, env))
                print(f"  {case} steps_in_flight={v} repeat {repeat}: "
                      f"{rates[v][-1]:.3f} steps/s", flush=True)
        best = {v: max(r) for v, r in rates.items()}
        rows.append((case, steps, {v: (best[v], float(np.median(r))) for v, r in rates.items()},
                     best[values[0]] / best[values[-1]], time.perf_counter() - started))
    header = " | ".join(f"K={v}: best / median steps/s" for v in values)
    print(f"\n| case | timed steps | {header} | ratio K={values[0]} / K={values[-1]} | wall |")
    print("|---|---:|" + "---:|" * len(values) + "---:|---:|")
    for case, steps, stats, ratio, wall in rows:
        cells = " | ".join(f"{b:.3f} / {m:.3f}" for b, m in stats.values())
        print(f"| {case} | {steps - 1} | {cells} | {ratio:.3f} | {wall:.0f} s |")


if __name__ == "__main__":
    main()
