r"""Tversky's beta: does weighting false negatives trade the rare class's precision for recall?

    python -m experiments.studies.tversky [--quick] [--out docs/studies] [--parallel K]

The design text: the Tversky index TP / (TP + alpha FP + beta FN) generalises Dice (alpha = beta
= 0.5); beta > alpha penalises false negatives more, so a model trained with it should predict a
class more liberally, raising recall at the expense of precision. Five arms, beta in {0.5, 0.6,
0.7, 0.8, 0.9} with alpha = 1 - beta, each training the `shapes` main job's model with the
Tversky loss alone, 3 seeds. The claim holds for the rare class `bar` if its recall rises and its
precision falls monotonically with beta (compared on the seed means, and beyond the seeds'
spread between the ends of the range); the page says where it does not.
"""

from __future__ import annotations

import sys

from experiments.studies import driver, report
from experiments.studies.imbalance import RARE, STEPS
from configs import shapes

NAME = "tversky"
BETAS = (0.5, 0.6, 0.7, 0.8, 0.9)

METRICS = [
    report.Metric(f"per_class_recall/{RARE}", f"{RARE} recall", percent=True),
    report.Metric(f"per_class_precision/{RARE}", f"{RARE} precision", percent=True),
    report.Metric(f"per_class_iou/{RARE}", f"{RARE} IoU", percent=True),
    report.Metric("mean_iou", "mIoU", percent=True),
]


def get_config(arg=None):
    config = shapes.get_config()
    config.loss.name = "tversky"
    return driver.sized(config, arg, steps=STEPS, name=NAME)


def get_sweep(arg=None):
    from seg_jax import sweep

    arms = sweep.zip_(**{"loss.tversky.beta": list(BETAS),
                         "loss.tversky.alpha": [round(1 - b, 10) for b in BETAS]})
    return driver.with_seeds(arms, driver.seeds_for(arg))


def monotone(means: list[float | None], direction: int) -> bool | None:
    """Whether the means move strictly in `direction` (+1 up, -1 down) from each arm to the
    next; None when some arm has no value."""
    if any(m is None for m in means) or len(means) < 2:
        return None
    return all(direction * (b - a) > 0 for a, b in zip(means, means[1:]))


def trend_verdict(rows: list[report.Row]) -> str:
    """The verdict on the claim from the seed means: recall up and precision down with beta,
    step by step, and the change from the first to the last beta against the seed spread.

    An arm whose finished runs have no precision predicted no rare-class pixel at all (0 / 0);
    that is a result, not a missing run: the claim then stands or falls on what can be measured,
    and the page says which arms predicted nothing."""
    recall, precision = (f"per_class_recall/{RARE}", f"per_class_precision/{RARE}")
    lines = ["## Verdict", ""]
    pending = any(not row.done for row in rows)
    findings = {}
    for path, word, direction in ((recall, "recall", +1), (precision, "precision", -1)):
        stats = [row.stat(path) for row in rows]
        means = [s.mean if s.n else None for s in stats]
        steady = monotone(means, direction)
        if steady is None:
            undefined = [f"{b:g}" for b, row, s in zip(BETAS, rows, stats) if row.done and not s.n]
            if pending or not undefined:
                lines.append(f"- `{RARE}` {word}: not every beta has results yet; no verdict.")
            else:
                lines.append(
                    f"- `{RARE}` {word}: undefined at beta {', '.join(undefined)}, whose models "
                    f"predict no `{RARE}` pixel in any validation image (0 / 0); no trend to "
                    f"judge.")
            findings[word] = None
            continue
        first, last = stats[0], stats[-1]
        change = last.mean - first.mean
        noise = max(first.std or 0.0, last.std or 0.0)
        beyond = abs(change) > noise and min(first.n, last.n) > 1
        wanted = direction * change > 0
        lines.append(
            f"- `{RARE}` {word} from beta {BETAS[0]} to {BETAS[-1]}: "
            f"{100 * first.mean:.2f}% to {100 * last.mean:.2f}% ({100 * change:+.2f} points; "
            f"the larger seed std of the two ends is {100 * noise:.2f}); "
            f"{'monotone' if steady else 'not monotone'} in "
            f"{'rising' if direction > 0 else 'falling'} direction over the {len(rows)} betas.")
        findings[word] = steady and wanted and beyond
    judged = [v for v in findings.values() if v is not None]
    if pending:
        verdict = "not enough runs"
    elif judged and not any(judged):
        verdict = "does not hold"  # what can be measured contradicts it
    elif len(judged) < len(findings):
        verdict = "not determined" if all(judged) else "mixed"
    elif all(judged):
        verdict = "holds"
    else:
        verdict = "mixed"
    lines += ["", f"**{verdict}**: the claim needs recall rising and precision falling "
                  f"monotonically with beta, with the change across the range larger than the "
                  f"seeds' spread."]
    return "\n".join(lines)


def make_report(runs, args: driver.StudyArgs, seconds: float) -> None:
    del seconds
    groups = report.group_by_arm(runs)
    by_beta = {runs_[0].overrides["loss.tversky.beta"]: runs_ for runs_ in groups.values()}
    rows = report.summarise({f"beta={b:g}, alpha={1 - b:g}": by_beta.get(b, []) for b in BETAS},
                            METRICS)
    config = get_config("quick" if args.quick else None)
    notes = [f"Each arm trains the `shapes` main job's model (configs/shapes.py; here base width "
             f"{config.model.base_width} on {config.data.crop_size} px crops) with the Tversky "
             f"loss alone (per image, every class, smooth 1e-5) for {config.num_train_steps} "
             f"updates of batch {config.batch_size}, half the main job's 2,400, as in the "
             f"imbalance study; scored on `{config.data.eval_split}`. alpha weighs false "
             f"positives, beta false negatives; beta = 0.5 is the Dice loss."]
    report.write_report(args.out, NAME, "Tversky beta: precision against recall of the rare "
                        "class", rows, METRICS, command=args.command, notes=notes,
                        smoke=args.quick, x_values=list(BETAS), x_label="beta (alpha = 1 - beta)",
                        sections=[trend_verdict(rows)])


def main(argv=None) -> int:
    return driver.run_study(__file__, NAME, make_report, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
