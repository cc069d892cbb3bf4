"""seg_jax against PyTorch on the same network, the same weights and the same CPU, in one process.

    python -m experiments.benchmarks.bench_vs_pytorch                       # both models, ~25 min
    python -m experiments.benchmarks.bench_vs_pytorch --models shapes --repeats 3 --no-compile

Models (`--models`):
- `deeplabv3_resnet50`: torchvision's `deeplabv3_resnet50(num_classes=21)` (output stride 8, ASPP
  rates 12/24/36 of width 256, dropout 0.5, no auxiliary head; 39,638,869 parameters), batch 4 of
  256 x 256.
- `shapes`: the `shapes` main job's model (configs/shapes.py: DeepLabV3 on a ResNet-18 of base
  width 16 at output stride 8, ASPP 6/12/18 of width 64, 7 classes) at its batch, 16 crops of 96 px.

The PyTorch network is experiments/torch_reference.py (torchvision's module names; for ResNet-18 at
output stride 8 it dilates BasicBlocks as this package does, which torchvision refuses). seg_jax
starts from the PyTorch weights, converted by `seg_jax.models.weights`; before timing, the
benchmark checks that both compute the same eval-mode logits, so the two sides run one function.

What is timed, float32, compilation excluded:
- train: one optimizer update = forward in training mode (BatchNorm batch statistics, dropout) +
  pixel-wise cross-entropy (ignore label 255) + backward + SGD with momentum 0.9. seg_jax runs
  the runner's own step (`seg_jax.steps.make_train_step`, jitted with the state donated as
  `seg_jax.train` does: experiments/benchmarks/step_programs.py); PyTorch runs
  `F.cross_entropy`, `backward()` and `torch.optim.SGD`.
- inference: forward in eval mode + argmax over classes (`torch.inference_mode` for PyTorch).
PyTorch settings, each timed: eager NCHW, eager channels_last, and (unless --no-compile)
`torch.compile` (inductor) in both layouts. seg_jax: the runner's XLA:CPU flags (set below
before JAX starts, as `seg_jax.main` does).

Every setting runs `--steps` calls per round; the settings alternate round by round (A B C A B C
...), so load from elsewhere on the machine falls on all alike; the table gives the best and the
median round in images/s and the ratio seg_jax / PyTorch's best setting, on bests and on medians.
"""

import argparse
import os
import time

from seg_jax import xla_flags  # JAX-free

xla_flags.use_cpu_fast_conv()  # the runner's XLA:CPU flags, before JAX starts

import jax  # noqa: E402
import numpy as np  # noqa: E402
import optax  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from configs import models as model_configs  # noqa: E402
from configs import shapes as shapes_config  # noqa: E402
from experiments import torch_reference  # noqa: E402
from experiments.benchmarks import step_programs  # noqa: E402
from seg_jax.data.shapes_render import CLASS_NAMES as SHAPES_CLASSES  # noqa: E402
from seg_jax.models import create_model, weights  # noqa: E402

IGNORE_LABEL = step_programs.IGNORE_LABEL
LEARNING_RATE = 0.01
MOMENTUM = 0.9


def _shapes_model() -> dict:
    model = shapes_config.get_config().model.to_dict()
    return dict(model, num_classes=len(SHAPES_CLASSES))


MODELS = {
    # name: (model fields, batch, size)
    "deeplabv3_resnet50": (
        lambda: model_configs.deeplabv3(
            num_classes=21, backbone="resnet50", output_stride=8, atrous_rates=(12, 24, 36),
            aspp_channels=256, dropout_rate=0.5),
        4, 256),
    "shapes": (_shapes_model, 16, 96),
}


def torch_twin(fields) -> torch.nn.Module:
    """The PyTorch network of a seg_jax DeepLabV3 config."""
    if fields["name"] != "deeplabv3" or fields["stem"] != "imagenet" or fields["separable"]:
        raise ValueError(f"no PyTorch reference for {fields}")
    if tuple(fields["multi_grid"]) != (1, 1, 1) or fields.get("aux_head") or \
            fields.get("aspp", "full") != "full":
        raise ValueError(f"no PyTorch reference for {fields}")
    return torch_reference.DeepLabV3(
        fields["num_classes"], backbone=fields["backbone"], base=fields["base_width"],
        output_stride=fields["output_stride"], rates=tuple(fields["atrous_rates"]),
        channels=fields["aspp_channels"], dropout=fields["dropout_rate"])


def jax_variables(module: torch.nn.Module) -> dict:
    """The PyTorch network's weights as seg_jax variables."""
    state_dict = {k: v.detach().numpy() for k, v in module.state_dict().items()}
    return weights.deeplabv3_variables_from_torchvision(state_dict, aux_head=False)


def check_same_function(model, variables, module, images) -> float:
    """Max |logits difference| / max |logit|, eval mode; raises if the networks differ."""
    logits = np.asarray(jax.jit(lambda v, x: model.apply(v, x, train=False).logits)(
        variables, images))
    module.eval()
    with torch.no_grad():
        expected = module(torch.from_numpy(images).permute(0, 3, 1, 2))["out"]
    expected = expected.permute(0, 2, 3, 1).numpy()
    error = float(np.max(np.abs(logits - expected)) / np.max(np.abs(expected)))
    if error > 1e-3:
        raise AssertionError(f"seg_jax and PyTorch logits differ: max relative error {error:.2e}")
    return error


def torch_programs(module, images, labels, *, channels_last: bool, compiled: bool) -> dict:
    memory_format = torch.channels_last if channels_last else torch.contiguous_format
    module = module.to(memory_format=memory_format)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(memory_format=memory_format)
    y = torch.from_numpy(labels.astype(np.int64))
    optimizer = torch.optim.SGD(module.parameters(), lr=LEARNING_RATE, momentum=MOMENTUM)

    # torch.compile compiles the forward and its backward; the optimizer step runs eager
    # (compiling it too is torch's separate `torch.compile(optimizer.step)` recipe).
    forward = torch.compile(module) if compiled else module

    def train_step():
        module.train()
        loss = F.cross_entropy(forward(x)["out"], y, ignore_index=IGNORE_LABEL)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        return loss

    def infer_step():
        module.eval()
        with torch.inference_mode():
            return forward(x)["out"].argmax(dim=1)

    return {"train": train_step, "inference": infer_step}


def time_rounds(programs: dict, steps_per_round: int, repeats: int, images_per_step: int,
                log) -> dict:
    """{setting: [images/s of each round]}, settings alternating round by round."""
    rates = {name: [] for name in programs}
    for round_index in range(repeats):
        for name, run in programs.items():
            start = time.perf_counter()
            for _ in range(steps_per_round):
                run()
            rates[name].append(steps_per_round * images_per_step / (time.perf_counter() - start))
        log(f"  round {round_index + 1}/{repeats}: " + ", ".join(
            f"{name} {rates[name][-1]:.2f}" for name in programs))
    return rates


def bench(name: str, *, repeats: int, steps_per_round: int, compile_torch: bool, batch: int,
          size: int, log) -> list[str]:
    make_fields, default_batch, default_size = MODELS[name]
    fields = make_fields()
    batch, size = batch or default_batch, size or default_size
    rng = np.random.default_rng(0)
    images = rng.normal(size=(batch, size, size, 3)).astype(np.float32)
    labels = rng.integers(0, fields["num_classes"], size=(batch, size, size)).astype(np.int32)
    labels[:, :4] = IGNORE_LABEL  # a few ignored pixels, as real labels have

    torch.manual_seed(0)
    module = torch_twin(fields)
    model = create_model(fields)
    variables = jax_variables(module)
    count = sum(p.numel() for p in module.parameters())
    error = check_same_function(model, variables, module, images[:1])
    log(f"{name}: {count:,} parameters; batch {batch} x {size} x {size}; eval logits agree to "
        f"{error:.1e} (max relative difference)")

    settings = {"seg_jax": None, "torch eager NCHW": (False, False),
                "torch eager channels_last": (True, False)}
    if compile_torch:
        settings |= {"torch.compile NCHW": (False, True),
                     "torch.compile channels_last": (True, True)}
    programs = {}
    for setting, options in settings.items():
        start = time.perf_counter()
        if options is None:
            programs_jax = step_programs.compile_programs(
                model, variables, images, labels,
                optax.sgd(LEARNING_RATE, momentum=MOMENTUM), LEARNING_RATE)
            made = {"train": programs_jax.train, "inference": programs_jax.inference}
        else:
            # Each setting trains its own copy, so all start from the same weights.
            twin = torch_twin(fields)
            twin.load_state_dict(module.state_dict())
            made = torch_programs(twin, images, labels, channels_last=options[0],
                                  compiled=options[1])
        for kind, run in made.items():
            run()  # compiles (JAX, torch.compile) or warms up (eager)
            programs[kind, setting] = run
        log(f"  {setting}: ready (first calls {time.perf_counter() - start:.1f} s)")

    rows = []
    for kind in ("train", "inference"):
        log(f"  timing {kind}: {repeats} rounds of {steps_per_round} steps")
        rates = time_rounds({s: programs[kind, s] for s in settings}, steps_per_round, repeats,
                            batch, log)
        best = {s: max(r) for s, r in rates.items()}
        median = {s: float(np.median(r)) for s, r in rates.items()}
        torch_settings = [s for s in settings if s != "seg_jax"]
        fastest = max(torch_settings, key=lambda s: median[s])
        for setting in settings:
            if setting == "seg_jax":
                ratio = (f"{best[setting] / max(best[s] for s in torch_settings):.2f} / "
                         f"{median[setting] / median[fastest]:.2f}")
            else:
                ratio = ""
            rows.append(f"| {name} | {kind} | {setting} | {best[setting]:.2f} | "
                        f"{median[setting]:.2f} | {ratio} |")
    return rows


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="*", default=list(MODELS), choices=list(MODELS))
    parser.add_argument("--repeats", type=int, default=5, help="rounds per setting")
    parser.add_argument("--steps", type=int, default=2, help="steps per round")
    parser.add_argument("--batch", type=int, default=0, help="batch size (0: the model's)")
    parser.add_argument("--size", type=int, default=0, help="image side (0: the model's)")
    parser.add_argument("--no-compile", dest="compile", action="store_false",
                        help="leave out the torch.compile settings")
    args = parser.parse_args()

    log = lambda line: print(line, flush=True)
    log(f"jax {jax.__version__} ({jax.default_backend()}), torch {torch.__version__} "
        f"({torch.get_num_threads()} threads), {os.cpu_count()} CPUs, 1-min load "
        f"{os.getloadavg()[0]:.1f} at start")
    log(f"XLA_FLAGS={os.environ['XLA_FLAGS']!r}")
    rows = []
    for name in args.models:
        rows += bench(name, repeats=args.repeats, steps_per_round=args.steps,
                      compile_torch=args.compile, batch=args.batch, size=args.size, log=log)
    log("\n| model | program | setting | best images/s | median images/s "
        "| seg_jax / PyTorch's best (best / median) |")
    log("|---|---|---|---|---|---|")
    for row in rows:
        log(row)
    log(f"\n1-min load at the end: {os.getloadavg()[0]:.1f}")


if __name__ == "__main__":
    main()
