"""Forward + backward time of every seg_jax loss (jitted) against PyTorch / MONAI on the same inputs.

    python -m experiments.benchmarks.bench_losses [--size N,H,W,C] [--repeats R]

Prints a Markdown table: seg_jax ms, reference ms, and the ratio reference / seg_jax (> 1 means
seg_jax is faster). The reference column is empty where no PyTorch/MONAI implementation exists.
"""

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from experiments.benchmarks.timing import median_ms
from seg_jax import losses


def _references(num_classes, cost):
    """name -> loss(torch logits NCHW, torch labels NHW) for the losses with a reference."""
    try:
        import torch
        import torch.nn.functional as F
    except ImportError:
        return {}
    refs = {
        "cross_entropy": lambda x, y: F.cross_entropy(x, y, ignore_index=255),
        "expected_cost": lambda x, y: (
            torch.softmax(x, 1) * torch.as_tensor(cost)[:, y].permute(1, 0, 2, 3)
        ).sum(1).mean(),
    }
    try:
        from monai import losses as monai_losses
    except ImportError:
        return refs
    dice = monai_losses.DiceLoss(softmax=True, to_onehot_y=True)
    jaccard = monai_losses.DiceLoss(softmax=True, to_onehot_y=True, jaccard=True)
    tversky = monai_losses.TverskyLoss(softmax=True, to_onehot_y=True, alpha=0.3, beta=0.7)
    focal = monai_losses.FocalLoss(use_softmax=True, to_onehot_y=True, gamma=2.0)
    refs.update({
        "focal": lambda x, y: focal(x, y[:, None]),
        "dice": lambda x, y: dice(x, y[:, None]),
        "jaccard": lambda x, y: jaccard(x, y[:, None]),
        "tversky": lambda x, y: tversky(x, y[:, None]),
    })
    return refs


def main():
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size", default="8,512,512,21", help="N,H,W,C of the logits.")
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    n, h, w, c = (int(v) for v in args.size.split(","))
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(n, h, w, c)).astype(np.float32)
    labels = rng.integers(0, c, size=(n, h, w)).astype(np.int32)
    cost = (1.0 - np.eye(c)).astype(np.float32)
    ours = {
        "cross_entropy": losses.cross_entropy,
        "focal": losses.focal_loss,
        "dice": losses.dice_loss,
        "jaccard": losses.jaccard_loss,
        "tversky": lambda x, y: losses.tversky_loss(x, y, alpha=0.3, beta=0.7),
        "lovasz": losses.lovasz_softmax_loss,
        "expected_cost": lambda x, y: losses.expected_cost_loss(x, y, cost=cost),
    }
    refs = _references(c, cost)
    jx, jy = jnp.asarray(logits), jnp.asarray(labels)
    print(f"logits {n}x{h}x{w}x{c}, forward + backward, median of {args.repeats}, "
          f"jax {jax.default_backend()}\n")
    print("| loss | seg_jax (ms) | reference | reference (ms) | ratio ref/seg_jax |")
    print("|---|---|---|---|---|")
    for name, fn in ours.items():
        step = jax.jit(jax.value_and_grad(fn))
        ours_ms = median_ms(lambda: jax.block_until_ready(step(jx, jy)), args.repeats)
        if name in refs:
            import torch

            tx = torch.tensor(logits).permute(0, 3, 1, 2).contiguous()
            ty = torch.tensor(labels, dtype=torch.long)

            def ref_step():
                x = tx.detach().requires_grad_(True)
                refs[name](x, ty).backward()

            ref_ms = median_ms(ref_step, args.repeats)
            ref_name = "PyTorch" if name in ("cross_entropy", "expected_cost") else "MONAI"
            print(f"| {name} | {ours_ms:.1f} | {ref_name} | {ref_ms:.1f} | {ref_ms / ours_ms:.2f} |")
        else:
            print(f"| {name} | {ours_ms:.1f} | none | | |")


if __name__ == "__main__":
    main()
