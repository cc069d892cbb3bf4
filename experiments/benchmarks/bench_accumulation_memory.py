r"""Memory of one DeepLabV3-ResNet-50 update at batch 16, 512 x 512, with gradient accumulation.

    python -m experiments.benchmarks.bench_accumulation_memory                  # XLA's figures
    python -m experiments.benchmarks.bench_accumulation_memory --run --limit_gib=14

The update is the runner's (`seg_jax.steps.make_train_step`: cross-entropy, SGD with momentum,
BatchNorm in training mode), at `accumulate_steps` k in --ks, i.e. k micro-batches of 16 / k
images. Without --run it only compiles each variant and prints XLA's memory analysis (the
buffers the compiled program allocates: arguments, outputs and temporaries such as the
activations kept for the backward pass). With --run, each k runs one real update in a child
process whose address space is limited to --limit_gib (RLIMIT_AS), and the table says whether it
finished, with its peak resident memory and time.
"""

import argparse
import json
import os
import resource
import subprocess
import sys
import time

GIB = 1024 ** 3
BATCH, SIZE, CLASSES = 16, 512, 21


def build(k: int):
    """(jitted train step, abstract state, abstract batch) for accumulate_steps=k."""
    import jax
    import jax.numpy as jnp
    import optax

    from configs import models
    from seg_jax import losses, steps
    from seg_jax.models import create_model

    # torchvision's deeplabv3_resnet50: output stride 8, ASPP rates 12/24/36, 256 channels.
    model = create_model(models.deeplabv3(num_classes=CLASSES, backbone="resnet50",
                                          output_stride=8, atrous_rates=(12, 24, 36)))

    def objective(outputs, batch):
        loss = losses.cross_entropy(outputs.logits, batch["label"], ignore_label=255)
        return loss, {"semantic": loss}

    tx = optax.sgd(0.01, momentum=0.9)
    step = jax.jit(steps.make_train_step(objective, lambda s: 0.01, accumulate_steps=k),
                   donate_argnums=0)
    state = jax.eval_shape(lambda: steps.create_train_state(
        model, tx, seed=0, input_shape=(1, SIZE, SIZE, 3)))
    batch = {"image": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE, 3), jnp.float32),
             "label": jax.ShapeDtypeStruct((BATCH, SIZE, SIZE), jnp.int32)}
    return step, state, batch, (model, tx)


def analyse(k: int) -> dict:
    start = time.perf_counter()
    step, state, batch, _ = build(k)
    compiled = step.lower(state, batch).compile()
    memory = compiled.memory_analysis()
    return {"k": k, "compile_s": time.perf_counter() - start,
            "temp": memory.temp_size_in_bytes, "arguments": memory.argument_size_in_bytes,
            "outputs": memory.output_size_in_bytes, "aliased": memory.alias_size_in_bytes}


def run_one(k: int) -> dict:
    """One real update (in the child process that --child starts)."""
    import jax
    import numpy as np

    from seg_jax import steps

    step, _, _, (model, tx) = build(k)
    state = steps.create_train_state(model, tx, seed=0, input_shape=(1, SIZE, SIZE, 3))
    rng = np.random.default_rng(0)
    batch = {"image": rng.normal(size=(BATCH, SIZE, SIZE, 3)).astype(np.float32),
             "label": rng.integers(0, CLASSES, size=(BATCH, SIZE, SIZE)).astype(np.int32)}
    compiled = step.lower(state, batch).compile()
    start = time.perf_counter()
    state, out = compiled(state, batch)
    loss = float(jax.device_get(out.loss))
    return {"k": k, "loss": loss, "step_s": time.perf_counter() - start,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 / GIB}


def child(k: int, limit_gib: float) -> dict:
    limit = int(limit_gib * GIB)
    resource.setrlimit(resource.RLIMIT_AS, (limit, limit))
    return run_one(k)


def run_limited(k: int, limit_gib: float) -> dict:
    start = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-m", "experiments.benchmarks.bench_accumulation_memory",
         f"--child={k}", f"--limit_gib={limit_gib}"], capture_output=True, text=True)
    row = {"k": k, "limit_gib": limit_gib, "wall_s": time.perf_counter() - start}
    lines = proc.stdout.strip().splitlines()
    if proc.returncode == 0 and lines:
        row.update(json.loads(lines[-1]), outcome="finished")
    else:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        row.update(outcome=f"failed (exit {proc.returncode}): {tail[:160]}")
    return row


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ks", default="1,2,4", help="accumulate_steps values")
    parser.add_argument("--run", action="store_true", help="also run one update of each k")
    parser.add_argument("--limit_gib", type=float, default=14.0,
                        help="address-space limit of each --run child")
    parser.add_argument("--child", type=int, default=0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        print(json.dumps(child(args.child, args.limit_gib)))
        return
    ks = [int(k) for k in args.ks.split(",")]
    print(f"DeepLabV3-ResNet-50 (output stride 8), batch {BATCH} at {SIZE} x {SIZE}, {CLASSES} "
          f"classes, one SGD update; XLA's memory analysis of the compiled step:\n")
    print("| accumulate_steps | micro-batch | temporaries (GiB) | arguments (GiB) | "
          "outputs (GiB) | compile (s) |")
    print("|---:|---:|---:|---:|---:|---:|")
    for k in ks:
        r = analyse(k)
        print(f"| {k} | {BATCH // k} | {r['temp'] / GIB:.2f} | {r['arguments'] / GIB:.2f} | "
              f"{r['outputs'] / GIB:.2f} | {r['compile_s']:.0f} |", flush=True)
    if not args.run:
        return
    print(f"\nOne update per k, each in a process limited to {args.limit_gib:g} GiB of address "
          f"space (RLIMIT_AS):\n")
    print("| accumulate_steps | outcome | update (s) | peak resident memory (GiB) |")
    print("|---:|---|---:|---:|")
    for k in ks:
        r = run_limited(k, args.limit_gib)
        finished = "step_s" in r
        print(f"| {k} | {r['outcome']} | {r['step_s']:.0f} |" if finished else
              f"| {k} | {r['outcome']} | - |", f"{r['peak_rss_gib']:.2f} |" if finished else "- |",
              flush=True)


if __name__ == "__main__":
    main()
