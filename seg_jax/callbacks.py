"""Callbacks of `train_and_evaluate(..., callbacks=[...])`: every logged line of scalars, live.

A callback is `callback(step: int, scalars: dict, kind: str)`. `kind` is 'train' at every
`config.log_every_steps` (loss, its terms, grad_norm, learning_rate, steps_per_sec, ...) and 'eval'
after every evaluation (mean_iou, pixel_accuracy, iou/<class>, the extra metrics, ...): the same
scalars as metrics.jsonl's lines, as plain floats, after they are written there. A callback that
raises stops the run with a checkpoint of that step and raises `CallbackError` naming it;
re-running resumes from that checkpoint.

`History` records the lines; `LiveCurves` redraws them in a notebook cell as training goes.
"""

from typing import Callable, Sequence

import numpy as np


class CallbackError(RuntimeError):
    """A callback raised; the message names it, the step and the checkpoint the run kept."""


def _name(callback) -> str:
    return getattr(callback, "__qualname__", None) or type(callback).__name__


def notify(callbacks: Sequence[Callable], step: int, scalars: dict, kind: str) -> None:
    """Calls each callback; wraps the first error in CallbackError (the caller checkpoints)."""
    scalars = {key: float(value) for key, value in scalars.items()}
    for callback in callbacks:
        try:
            callback(step, dict(scalars), kind)
        except Exception as error:  # the user's code: any exception stops the run the same way
            raise CallbackError(
                f"Callback {_name(callback)} raised at step {step} ({kind} scalars): "
                f"{type(error).__name__}: {error}") from error


class History:
    """A callback keeping every line: `history.series('loss')` -> (steps, values) arrays."""

    def __init__(self):
        self.lines: list[tuple[int, str, dict]] = []

    def __call__(self, step: int, scalars: dict, kind: str) -> None:
        self.lines.append((step, kind, dict(scalars)))

    def series(self, key: str, kind: str | None = None) -> tuple[np.ndarray, np.ndarray]:
        """The steps and values of `key` (from lines of `kind`, if given) in logged order."""
        points = [(step, scalars[key]) for step, k, scalars in self.lines
                  if key in scalars and (kind is None or k == kind)]
        steps = np.array([p[0] for p in points], np.int64)
        return steps, np.array([p[1] for p in points], np.float64)


class LiveCurves(History):
    """A `History` that redraws its curves in a Jupyter cell at each line (one axis per key).

    `LiveCurves(["loss", "mean_iou"])`: train loss and evaluation mIoU as they are logged. Other
    runs' histories passed as `compare={label: history}` are drawn beside, for a side-by-side
    comparison. Outside IPython it only records.
    """

    def __init__(self, keys: Sequence[str] = ("loss", "mean_iou"), *, label: str = "this run",
                 compare: dict | None = None, every: int = 1):
        super().__init__()
        self.keys = tuple(keys)
        self.label = label
        self.compare = dict(compare or {})
        self.every = max(int(every), 1)
        self._display = None

    def __call__(self, step: int, scalars: dict, kind: str) -> None:
        super().__call__(step, scalars, kind)
        if len(self.lines) % self.every == 0 or kind == "eval":
            self.draw()

    def figure(self):
        """A matplotlib figure of the curves so far (this run and the compared ones)."""
        import matplotlib.pyplot as plt

        fig, axes = plt.subplots(1, len(self.keys), figsize=(4.2 * len(self.keys), 3.2),
                                 squeeze=False)
        runs = {**self.compare, self.label: self}
        for ax, key in zip(axes[0], self.keys):
            for label, history in runs.items():
                steps, values = history.series(key)
                if len(steps):
                    ax.plot(steps, values, marker="o" if len(steps) < 8 else None,
                            markersize=3, label=label)
            ax.set_title(key)
            ax.set_xlabel("step")
            ax.grid(alpha=0.3)
        axes[0][0].legend(fontsize=8)
        fig.tight_layout()
        return fig

    def draw(self) -> None:
        try:
            from IPython import display
            from IPython import get_ipython
        except ImportError:
            return
        if get_ipython() is None:
            return
        import matplotlib.pyplot as plt

        fig = self.figure()
        if self._display is None:
            self._display = display.display(fig, display_id=True)
        else:
            self._display.update(fig)
        plt.close(fig)
