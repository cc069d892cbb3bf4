r"""Class imbalance: which losses still find the rare class, and what pixel accuracy hides.

    python -m experiments.studies.imbalance [--quick] [--out docs/studies] [--parallel K]

The design text's claims: cross-entropy is maximum likelihood but, averaged over pixels, is
dominated by the frequent classes; class weights, focal loss (hard pixels) and the region losses
(Dice, Jaccard, Tversky, Lovasz: each class counts as a set, whatever its size) resist the
imbalance; and pixel accuracy misleads under imbalance. Each loss of the design trains the
`shapes` main job's model on `shapes` (the rare class `bar` is 1.2% of pixels) and on
`shapes_rare` (bar ten times rarer per object, 0.08% of pixels), over 3 seeds; the page reports
mIoU, pixel accuracy, and the IoU, precision and recall of `bar`. Two baselines that train
nothing show what pixel accuracy hides: the most frequent class everywhere, and an oracle that
is right on every pixel except those of `bar`, which it never predicts.

The claim holds where the imbalance-aware losses beat cross-entropy on bar's IoU or recall, and
more so on `shapes_rare`; it fails where they do not.
"""

from __future__ import annotations

import sys

import numpy as np

from configs import shapes
from experiments.studies import driver, report

NAME = "imbalance"
RARE = "bar"
STEPS = 1200  # the main job's 2400, halved to fit 54 runs on a 2-core CPU
DATASETS = ("shapes", "shapes_rare")

# Each loss of the design, with its published default options.
LOSSES = (
    {"loss.name": "cross_entropy"},
    {"loss.name": "cross_entropy", "loss.cross_entropy.class_weights": "median_frequency"},
    {"loss.name": "focal", "loss.focal.gamma": 2.0},
    {"loss.name": "dice"},
    {"loss.name": "cross_entropy+dice"},
    {"loss.name": "jaccard"},
    {"loss.name": "lovasz"},
    {"loss.name": "cross_entropy", "loss.cross_entropy.top_k_percent": 0.2},
    {"loss.name": "tversky", "loss.tversky.alpha": 0.3, "loss.tversky.beta": 0.7},
)

METRICS = [
    report.Metric("mean_iou", "mIoU", percent=True),
    report.Metric("pixel_accuracy", "pixel acc.", percent=True),
    report.Metric(f"per_class_iou/{RARE}", f"{RARE} IoU", percent=True),
    report.Metric(f"per_class_precision/{RARE}", f"{RARE} precision", percent=True),
    report.Metric(f"per_class_recall/{RARE}", f"{RARE} recall", percent=True),
]


def get_config(arg=None):
    config = shapes.get_config()
    return driver.sized(config, arg, steps=STEPS, name=NAME)


def get_sweep(arg=None):
    seeds = driver.seeds_for(arg)
    from seg_jax import sweep

    arms = sweep.product({"data.name": list(DATASETS)}, sweep.Sweep(LOSSES))
    return driver.with_seeds(arms, seeds)


# ----------------------------------------------------------------------------------------------
# The baselines that train nothing


def _confusion(pred: np.ndarray, label: np.ndarray, num_classes: int, ignore: int) -> np.ndarray:
    valid = label != ignore
    return np.bincount(label[valid].astype(np.int64) * num_classes + pred[valid],
                       minlength=num_classes ** 2).reshape(num_classes, num_classes)


def baseline_scores(dataset: str, data_dir: str | None, split: str) -> dict[str, dict]:
    """{baseline: {metric path: value}} on the split's labels: the most frequent class of the
    split everywhere, and the labels with every `bar` pixel predicted as that class."""
    from seg_jax.data import datasets
    from seg_jax.metrics import confusion

    config = get_config()
    config.data.name, config.data.data_dir = dataset, data_dir
    source, info = datasets.get_dataset(config.data, split)
    labels = np.stack([np.asarray(source[i]["label"]) for i in range(len(source))])
    num_classes, ignore = info.num_classes, info.ignore_label
    counts = np.bincount(labels[labels != ignore].ravel(), minlength=num_classes)
    majority = int(counts.argmax())
    rare = info.class_names.index(RARE)
    oracle = np.where(labels == rare, majority, labels)
    oracle = np.where(labels == ignore, 0, oracle)
    baselines = {
        f"`{info.class_names[majority]}` everywhere": np.full_like(labels, majority),
        f"oracle without `{RARE}` (every other pixel right)": oracle,
    }
    scores = {}
    for name, pred in baselines.items():
        cm = _confusion(pred.astype(np.int64), labels, num_classes, ignore)
        scores[name] = {
            "mean_iou": float(confusion.mean_iou(cm)),
            "pixel_accuracy": float(confusion.pixel_accuracy(cm)),
            f"per_class_iou/{RARE}": float(confusion.iou(cm)[rare]),
            f"per_class_precision/{RARE}": float(confusion.class_precision(cm)[rare]),
            f"per_class_recall/{RARE}": float(confusion.class_accuracy(cm)[rare]),
            "rare_share": float(counts[rare] / counts.sum()),
        }
    return scores


def _baseline_section(scores_by_dataset: dict[str, dict[str, dict]], split: str) -> str:
    lines = ["## Baselines that train nothing", "",
             f"Scored like the runs, on the `{split}` labels. `bar`'s precision is undefined "
             "(n/a) for a rule that never predicts it.", "",
             "| dataset | baseline | `bar` share of pixels | " +
             " | ".join(f"{m.label} (%)" for m in METRICS) + " |",
             "|---|---|---:|" + "---:|" * len(METRICS)]
    for dataset, scores in scores_by_dataset.items():
        for name, values in scores.items():
            cells = ["n/a" if not np.isfinite(values[m.path]) else f"{100 * values[m.path]:.2f}"
                     for m in METRICS]
            lines.append(f"| `{dataset}` | {name} | {100 * values['rare_share']:.3f}% | " +
                         " | ".join(cells) + " |")
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------
# The report


def _verdict(rows: list[report.Row]) -> str:
    """Which losses beat cross-entropy on bar's IoU on each dataset, by more than the seeds'
    spread (mean difference > the larger std)."""
    lines = ["## Against plain cross-entropy", "",
             "Difference in `bar` IoU to plain cross-entropy on the same data, in points (a "
             "difference within either arm's seed std is marked *within noise*).", "",
             "| loss | " + " | ".join(f"`{d}`" for d in DATASETS) + " |",
             "|---|" + "---:|" * len(DATASETS)]
    by_label = {row.label: row for row in rows}
    path = f"per_class_iou/{RARE}"
    for loss in LOSSES[1:]:
        cells = []
        for dataset in DATASETS:
            row = by_label.get(_arm_label(dataset, loss))
            base = by_label.get(_arm_label(dataset, LOSSES[0]))
            a, b = (row.stat(path) if row else None), (base.stat(path) if base else None)
            if not a or not b or not a.n or not b.n:
                cells.append("no results")
                continue
            diff = 100 * (a.mean - b.mean)
            noise = 100 * max(a.std or 0.0, b.std or 0.0)
            cells.append(f"{diff:+.2f}" + (" (within noise)" if abs(diff) <= noise else ""))
        lines.append(f"| {_loss_label(loss)} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _loss_label(loss: dict) -> str:
    options = ", ".join(f"{k.rsplit('.', 1)[-1]}={v}" for k, v in loss.items()
                        if k != "loss.name")
    return loss["loss.name"] + (f" ({options})" if options else "")


def _arm_label(dataset: str, loss: dict) -> str:
    return f"{dataset}: {_loss_label(loss)}"


def _relabel(groups: dict[str, list]) -> dict[str, list]:
    """Arms named '<dataset>: <loss (options)>' in the sweep's order."""
    out = {}
    for runs in groups.values():
        overrides = {k: v for k, v in runs[0].overrides.items() if k != "seed"}
        dataset = overrides.pop("data.name")
        out[_arm_label(dataset, overrides)] = runs
    return out


def make_report(runs, args: driver.StudyArgs, seconds: float) -> None:
    rows = report.summarise(_relabel(report.group_by_arm(runs)), METRICS)
    split = "validation[:8]" if args.quick else "validation"
    baselines = {d: baseline_scores(d, args.data_dir, split) for d in DATASETS}
    config = get_config("quick" if args.quick else None)
    share = {d: next(iter(b.values()))["rare_share"] for d, b in baselines.items()}
    notes = [
        f"Every run is the `shapes` main job's model and optimiser (configs/shapes.py: "
        f"DeepLabV3, ResNet-18, output stride 8, AdamW, cosine schedule; here base width "
        f"{config.model.base_width} on {config.data.crop_size} px crops) trained for "
        f"{config.num_train_steps} updates of batch {config.batch_size} with one loss (the main "
        f"job trains 2,400; the study halves that so that its 54 runs fit a 2-core CPU), and "
        f"scored on `{split}` (the full split is 200 images of `shapes` and 1,000 of "
        f"`shapes_rare`, so that both hold about as many bars). `bar` is the rarest class: "
        f"{100 * share['shapes']:.3f}% of the scored `shapes` pixels and "
        f"{100 * share['shapes_rare']:.3f}% of the `shapes_rare` ones.",
        "Loss options are the published defaults: focal gamma 2 (Lin et al.), top-k 20% of each "
        "image's pixels (deeplab2), Tversky alpha 0.3 / beta 0.7 (Salehi et al.), median-"
        "frequency weights from the training split (Eigen & Fergus), Dice / Jaccard per image "
        "with every class, Lovasz-softmax over the classes present.",
    ]
    report.write_report(
        args.out, NAME, "Class imbalance: losses against a rare class", rows, METRICS,
        command=args.command, notes=notes, smoke=args.quick,
        sections=[_baseline_section(baselines, split), _verdict(rows)])


def main(argv=None) -> int:
    return driver.run_study(__file__, NAME, make_report, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
