"""User metrics added to the evaluation: from the confusion matrix, or from each batch's predictions.

Two kinds, because metrics here are sufficient statistics that add across batches and devices:

- A **confusion metric** is `fn(confusion) -> value`, where `confusion` is the whole evaluation's
  [C, C] int64 matrix (rows = ground truth, columns = prediction):

      @metrics.register_metric("bar_recall")
      def bar_recall(confusion):
          return confusion[3, 3] / max(confusion[3].sum(), 1)

- A **batch metric** is a pair: `statistics(predictions, labels, *, num_classes, ignore_label)`,
  a jnp function run inside the jitted eval step that returns a pytree of *sums* over the batch
  (so that batches and devices add), and `score(sums) -> value` on the host, given those sums
  accumulated over the whole split in float64:

      metrics.register_batch_metric("thin_recall", statistics=thin_sums, score=thin_score)

A value is a number, a length-C sequence (reported per class, by class name) or a dict of
numbers. Registered metrics are selected by name with `config.evaluation.metrics`; a notebook
can instead pass `train_and_evaluate(..., extra_metrics={name: fn_or_BatchMetric})`. Each appears
under its name in results.json and results.md, and in metrics.jsonl's eval lines (a per-class or
dict value as `name/<key>`).
"""

import dataclasses
from typing import Callable

import jax
import numpy as np

from seg_jax.reporting import RESULT_KEYS


@dataclasses.dataclass(frozen=True)
class ConfusionMetric:
    name: str
    fn: Callable  # (confusion [C, C] int64) -> value


@dataclasses.dataclass(frozen=True)
class BatchMetric:
    name: str
    statistics: Callable  # (predictions, labels, *, num_classes, ignore_label) -> pytree of sums
    score: Callable  # (pytree of float64 sums) -> value


_REGISTRY: dict[str, ConfusionMetric | BatchMetric] = {}


def _add(metric, override: bool) -> None:
    if not isinstance(metric.name, str) or not metric.name.isidentifier():
        raise ValueError(f"Metric name {metric.name!r} must be a Python identifier "
                         f"(letters, digits, '_'): it is a key of results.json.")
    if metric.name in _REGISTRY and not override:
        raise ValueError(f"A metric named {metric.name!r} is already registered; pass "
                         f"override=True to replace it, or choose another name.")
    _REGISTRY[metric.name] = metric


def register_metric(name: str, fn: Callable | None = None, *, override: bool = False):
    """Registers a confusion metric `fn(confusion [C, C] int64) -> value` as `name` (a decorator
    returning `fn` unchanged, or called with `fn`). A taken name is a ValueError unless
    `override=True`."""

    def register(function: Callable) -> Callable:
        _add(ConfusionMetric(name, function), override)
        return function

    return register if fn is None else register(fn)


def register_batch_metric(name: str, *, statistics: Callable, score: Callable,
                          override: bool = False) -> BatchMetric:
    """Registers a batch metric (see the module docstring) as `name`; returns it."""
    metric = BatchMetric(name, statistics, score)
    _add(metric, override)
    return metric


def unregister_metric(name: str) -> None:
    if name not in _REGISTRY:
        raise KeyError(f"No metric named {name!r} is registered; registered: "
                       f"{registered_metrics()}.")
    del _REGISTRY[name]


def registered_metrics() -> tuple[str, ...]:
    return tuple(sorted(_REGISTRY))


def resolve_metrics(names=(), extra=None) -> list:
    """The metrics to compute: the registered `names` (config.evaluation.metrics), then `extra`
    ({name: confusion fn or BatchMetric}, as passed to train_and_evaluate)."""
    metrics = []
    for name in names:
        if name not in _REGISTRY:
            raise ValueError(
                f"Unknown metric {name!r} in config.evaluation.metrics; registered metrics: "
                f"{list(registered_metrics())}. Register one with "
                f"@seg_jax.metrics.register_metric(name) in a module that the config imports "
                f"(or that config.extra_modules lists).")
        metrics.append(_REGISTRY[name])
    for name, metric in (extra or {}).items():
        if isinstance(metric, BatchMetric):
            metric = dataclasses.replace(metric, name=name)
        elif callable(metric):
            metric = ConfusionMetric(name, metric)
        else:
            raise TypeError(f"extra_metrics[{name!r}] is {metric!r}; pass a function of the "
                            f"confusion matrix or a seg_jax.metrics.BatchMetric.")
        metrics.append(metric)
    seen = set()
    for metric in metrics:
        if metric.name in seen:
            raise ValueError(f"Metric {metric.name!r} is selected twice.")
        seen.add(metric.name)
    return metrics


def check_names(metrics: list) -> None:
    """Raises ValueError if a metric's name is one of the evaluation's own result keys."""
    clashes = sorted({m.name for m in metrics} & RESULT_KEYS)  # reporting.RESULT_KEYS
    if clashes:
        raise ValueError(f"Metric name(s) {clashes} are results the evaluation already reports; "
                         f"register them under other names.")


def batch_statistics(metrics: list, predictions, labels, *, num_classes: int,
                     ignore_label: int) -> dict:
    """The batch metrics' statistics of one batch (inside the jitted eval step)."""
    return {m.name: m.statistics(predictions, labels, num_classes=num_classes,
                                 ignore_label=ignore_label)
            for m in metrics if isinstance(m, BatchMetric)}


class ExtraMetricAccumulator:
    """Sums the batch metrics' statistics on the host (float64) and scores every metric once."""

    def __init__(self, metrics: list, class_names):
        self.metrics = list(metrics)
        self.class_names = tuple(class_names)
        self.sums = {}

    def update(self, batch_stats: dict) -> None:
        for name, stats in batch_stats.items():
            stats = jax.tree.map(lambda a: np.asarray(a, np.float64), stats)
            previous = self.sums.get(name)
            self.sums[name] = stats if previous is None else jax.tree.map(np.add, previous, stats)

    def result(self, confusion: np.ndarray) -> dict:
        """{name: JSON-ready value}; `confusion` is the whole split's [C, C] matrix."""
        num_classes = len(self.class_names)
        results = {}
        for metric in self.metrics:
            if isinstance(metric, ConfusionMetric):
                value = metric.fn(np.asarray(confusion[:, :num_classes], np.int64))
            else:
                if metric.name not in self.sums:
                    raise ValueError(f"Batch metric {metric.name!r} received no batch.")
                value = metric.score(self.sums[metric.name])
            results[metric.name] = self._ready(metric.name, value)
        return results

    def _ready(self, name: str, value):
        """A number, a per-class dict (for length-C values) or a dict of numbers."""
        if isinstance(value, dict):
            return {str(k): _number(v, name) for k, v in value.items()}
        array = np.asarray(value)
        if array.ndim == 0:
            return _number(array, name)
        if array.shape == (len(self.class_names),):
            return {c: _number(v, name) for c, v in zip(self.class_names, array)}
        raise ValueError(f"Metric {name!r} returned shape {array.shape}; return a number, one "
                         f"value per class ({len(self.class_names)}), or a dict of numbers.")


def _number(value, name: str):
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"Metric {name!r} returned {value!r}, not a number.") from None
    return None if np.isnan(number) else number


def scalars(results: dict, metrics: list) -> dict:
    """The metrics' values as metrics.jsonl scalars: `name`, or `name/<key>` for dict values."""
    out = {}
    for metric in metrics:
        value = results[metric.name]
        if isinstance(value, dict):
            out.update({f"{metric.name}/{k}": (np.nan if v is None else v)
                        for k, v in value.items()})
        else:
            out[metric.name] = np.nan if value is None else value
    return out
