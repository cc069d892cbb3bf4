"""What a notebook passes to a run: its own losses, models, metrics and callbacks.

End to end on the quick `shapes` config: a run with registered losses and metrics reports the
metrics beside the built-in ones (which cross-check them), its callbacks see exactly the lines
metrics.jsonl gets, a loss passed as a function trains exactly as the same loss named in the
config, a model passed as a module trains and evaluates, and a callback that raises leaves a
checkpoint the run resumes from.
"""

import functools
import json
import os

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from configs import default as default_config
from seg_jax import callbacks, extensions, losses, metrics, reporting, sweep, train
from seg_jax.metrics import extra
from seg_jax.models import ModelOutput
import run_helpers


def halved_ce(logits, labels, *, ignore_label, weights=None, factor=0.5):
    return factor * losses.cross_entropy(logits, labels, ignore_label=ignore_label,
                                         weights=weights)


def _recall_sums(predictions, labels, *, num_classes, ignore_label):
    """Per-class true positives and true-pixel counts of a batch (sums: batches add)."""
    valid = labels != ignore_label
    classes = jnp.arange(num_classes)
    truth = (labels[..., None] == classes) & valid[..., None]
    hits = truth & (predictions[..., None] == classes)
    return {"hits": hits.sum((0, 1, 2)), "truth": truth.sum((0, 1, 2))}


RECALL_FROM_BATCHES = metrics.BatchMetric(
    "recall_from_batches", statistics=_recall_sums,
    score=lambda sums: sums["hits"] / np.maximum(sums["truth"], 1))


@pytest.fixture
def registrations():
    """The test's registered loss and metrics, removed afterwards."""
    losses.register_loss("halved_ce", halved_ce, override=True)
    metrics.register_metric("accuracy_again", lambda cm: np.trace(cm) / cm.sum(), override=True)
    metrics.register_batch_metric(
        "valid_pixels", statistics=lambda p, y, *, num_classes, ignore_label: jnp.sum(
            y != ignore_label), score=lambda total: total, override=True)
    yield
    losses.unregister_loss("halved_ce")
    metrics.unregister_metric("accuracy_again")
    metrics.unregister_metric("valid_pixels")


def test_registered_losses_and_metrics_reach_results_metrics_jsonl_and_callbacks(
        quick_config, tmp_path, registrations):
    config = default_config.add_loss_options(quick_config, "halved_ce", factor=0.25)
    config.loss.name = "cross_entropy+halved_ce"
    config.evaluation.metrics = ("accuracy_again", "valid_pixels")
    config.eval_every_steps = 20  # an evaluation mid-run and one at the end
    history = callbacks.History()
    recall_from_confusion = lambda cm: np.diag(cm) / np.maximum(cm.sum(1), 1)  # noqa: E731
    workdir = str(tmp_path)
    results = train.train_and_evaluate(
        config, workdir, callbacks=[history],
        extra_metrics={"recall_from_confusion": recall_from_confusion,
                       "recall_from_batches": RECALL_FROM_BATCHES})

    # The user metrics agree with the evaluation's own numbers and with each other.
    assert results["accuracy_again"] == pytest.approx(results["pixel_accuracy"], rel=1e-12)
    assert results["valid_pixels"] == results["num_pixels"]
    names = list(results["per_class_iou"])
    assert list(results["recall_from_batches"]) == names
    for name in names:
        assert results["recall_from_batches"][name] == pytest.approx(
            results["recall_from_confusion"][name], abs=1e-12)
    with open(os.path.join(workdir, "results.json")) as f:
        written = json.load(f)
    for key in ("accuracy_again", "valid_pixels", "recall_from_batches"):
        assert written[key] == results[key]
    with open(os.path.join(workdir, "results.md")) as f:
        table = f.read()
    assert f"| accuracy_again | {results['accuracy_again']:.4f} |" in table
    assert ("| class | IoU | precision | recall | boundary F | recall_from_confusion | "
            "recall_from_batches |") in table

    # The callback got every line metrics.jsonl has, with the same values.
    lines = run_helpers.read_jsonl(os.path.join(workdir, "metrics.jsonl"))
    assert [(l["step"], l["kind"]) for l in lines] == [(s, k) for s, k, _ in history.lines]
    assert [s for s, k, _ in history.lines if k == "eval"] == [20, 30]
    for line, (_, _, scalars) in zip(lines, history.lines):
        assert set(line) - {"step", "kind", "time"} == set(scalars)
        for key, value in scalars.items():
            assert isinstance(value, float)
            assert line[key] == value or (np.isnan(value) and line[key] == "nan"), key
    final = lines[-1]
    assert final["accuracy_again"] == results["accuracy_again"]
    assert final[f"recall_from_batches/{names[1]}"] == results["recall_from_batches"][names[1]]
    steps, losses_logged = history.series("loss", kind="train")
    assert list(steps) == [5, 10, 15, 20, 25, 30] and np.isfinite(losses_logged).all()
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["loss"]["name"] == "cross_entropy+halved_ce"


def test_every_result_key_of_a_run_is_reserved_from_user_metrics(finished_run):
    _, workdir, results = finished_run
    assert set(results) <= reporting.RESULT_KEYS
    with pytest.raises(ValueError, match=r"\['mean_iou'\] are results the evaluation"):
        extra.check_names(extra.resolve_metrics((), {"mean_iou": lambda cm: 0.0}))


def test_a_loss_function_trains_exactly_as_the_same_loss_named_in_the_config(
        quick_config, finished_run, tmp_path):
    config, workdir, _ = finished_run
    mine = str(tmp_path)
    train.train_and_evaluate(quick_config, mine, loss_fn=losses.cross_entropy)
    step = config.num_train_steps
    named = run_helpers.final_params(workdir, step)
    passed = run_helpers.final_params(mine, step)
    assert jax.tree.structure(named) == jax.tree.structure(passed)
    for a, b in zip(jax.tree.leaves(named), jax.tree.leaves(passed)):
        np.testing.assert_allclose(a, b, rtol=2e-5, atol=1e-6)
    with open(os.path.join(mine, "config.json")) as f:
        assert json.load(f)["loss"]["name"] == "<loss_fn cross_entropy>"


class TinyNet(nn.Module):
    """A model written in a notebook: two convolutions, returning the one output type."""

    num_classes: int

    @nn.compact
    def __call__(self, images, train: bool = False):
        x = nn.relu(nn.Conv(8, (3, 3))(images))
        return ModelOutput(logits=nn.Conv(self.num_classes, (1, 1))(x))


def test_a_model_module_trains_and_a_raising_callback_leaves_a_checkpoint_to_resume(
        quick_config, tmp_path):
    config = quick_config
    config.num_train_steps, config.log_every_steps, config.checkpoint_every_steps = 6, 2, 6
    workdir = str(tmp_path)
    model = TinyNet(num_classes=4)

    def fails_at_step_4(step, scalars, kind):
        if step == 4:
            raise RuntimeError("plot window closed")

    with pytest.raises(callbacks.CallbackError, match=r"fails_at_step_4 raised at step 4 .*"
                                                      r"RuntimeError: plot window closed.*"
                                                      r"checkpoint of step 4"):
        train.train_and_evaluate(config, workdir, model=model, callbacks=[fails_at_step_4])
    assert sorted(os.listdir(os.path.join(workdir, "checkpoints"))) == ["4"]
    assert {"Conv_0", "Conv_1"} == set(run_helpers.final_params(workdir, 4))

    history = callbacks.History()
    results = train.train_and_evaluate(config, workdir, model=model, callbacks=[history])
    assert [s for s, k, _ in history.lines] == [6, 6]  # resumed at 4: one train line, one eval
    assert results["step"] == 6
    with open(os.path.join(workdir, "config.json")) as f:
        assert json.load(f)["model"]["name"] == "<model TinyNet>"
    again = train.evaluate_checkpoint(config, workdir, model=model)
    assert again["mean_iou"] == pytest.approx(results["mean_iou"], abs=1e-12)


def test_a_model_that_returns_an_array_is_told_what_to_return(quick_config, tmp_path):
    class ArrayNet(nn.Module):
        @nn.compact
        def __call__(self, images, train: bool = False):
            return nn.Conv(4, (1, 1))(images)

    with pytest.raises(TypeError, match=r"ArrayNet returns an array of shape \(1, 64, 64, 4\); .*ModelOutput\(logits=...\)"):
        train.Experiment(quick_config, str(tmp_path), model=ArrayNet())


def test_in_process_sweep_of_a_loss_function_records_and_ranks_its_points(quick_config, tmp_path):
    config = quick_config
    config.num_train_steps, config.checkpoint_every_steps = 2, 2
    # Two seeds: the points share their compiled steps (the seed sets only the initialisation).
    points = sweep.product(seed=[0, 1])
    run = functools.partial(train.train_and_evaluate, loss_fn=halved_ce)
    rows = sweep.run_in_process(config, points, str(tmp_path), train=run)
    assert {r["name"] for r in rows} == {"seed=0", "seed=1"}
    assert all(r["status"] == "done" and r["mean_iou"] is not None for r in rows)
    assert os.path.exists(tmp_path / sweep.RESULTS_MD)
    for row in rows:
        with open(tmp_path / row["name"] / "config.json") as f:
            assert json.load(f)["loss"]["name"] == "<loss_fn halved_ce>"
    # Again: nothing to run; a point that does not fit the config stops it before it starts.
    assert [r["name"] for r in sweep.run_in_process(config, points, str(tmp_path), train=None)
            ] == [r["name"] for r in rows]
    with pytest.raises(sweep.SweepError, match="point 0 .*optimizer.learning_rat"):
        sweep.run_in_process(config, [{"optimizer.learning_rat": 1.0}], str(tmp_path / "bad"))


# --- Small parts --------------------------------------------------------------------------------


def test_extra_modules_import_dotted_names_and_files_once(tmp_path):
    path = tmp_path / "my_losses.py"
    path.write_text("from seg_jax import losses\nCOUNT = [0]\n"
                    "@losses.register_loss('from_a_file')\n"
                    "def from_a_file(logits, labels, *, ignore_label):\n"
                    "    return losses.cross_entropy(logits, labels, ignore_label=ignore_label)\n")
    config = default_config.get_config()
    config.extra_modules = ("experiments.custom_losses", str(path))
    try:
        extensions.import_extra_modules(config)
        extensions.import_extra_modules(config)  # a second run in the same process: no error
        assert {"log_cosh_dice", "from_a_file"} <= set(losses.registered_losses())
    finally:
        losses.unregister_loss("from_a_file")
    config.extra_modules = ("no_such_package.losses",)
    with pytest.raises(ValueError, match="'no_such_package.losses', which cannot be imported"):
        extensions.import_extra_modules(config)
    config.extra_modules = (str(tmp_path / "missing.py"),)
    with pytest.raises(ValueError, match="missing.py', which is not a file"):
        extensions.import_extra_modules(config)


def test_metric_registry_errors_and_value_shapes():
    metrics.register_metric("taken", lambda cm: 1.0, override=True)
    try:
        with pytest.raises(ValueError, match="'taken' is already registered"):
            metrics.register_metric("taken", lambda cm: 2.0)
        with pytest.raises(ValueError, match=r"Unknown metric 'takn'.*'taken'"):
            extra.resolve_metrics(("takn",))
        with pytest.raises(ValueError, match="selected twice"):
            extra.resolve_metrics(("taken",), {"taken": lambda cm: 0.0})
    finally:
        metrics.unregister_metric("taken")
    with pytest.raises(ValueError, match="Python identifier"):
        metrics.register_metric("my metric", lambda cm: 1.0)
    accumulator = extra.ExtraMetricAccumulator(
        extra.resolve_metrics((), {"number": lambda cm: cm.sum(), "per_class": lambda cm: cm[0],
                                   "named": lambda cm: {"a": 1, "b": np.nan},
                                   "matrix": lambda cm: cm}), ("x", "y"))
    confusion = np.array([[3, 1], [0, 2]])
    with pytest.raises(ValueError, match=r"'matrix' returned shape \(2, 2\)"):
        accumulator.result(confusion)
    accumulator.metrics.pop()
    assert accumulator.result(confusion) == {"number": 6.0, "per_class": {"x": 3.0, "y": 1.0},
                                             "named": {"a": 1.0, "b": None}}


def test_history_series_and_callback_errors_name_the_callback():
    history = callbacks.History()
    history(5, {"loss": 2.0}, "train")
    history(10, {"loss": 1.0}, "train")
    history(10, {"mean_iou": 0.5}, "eval")
    steps, values = history.series("loss")
    assert list(steps) == [5, 10] and list(values) == [2.0, 1.0]
    assert list(history.series("mean_iou", kind="eval")[1]) == [0.5]

    def broken(step, scalars, kind):
        raise KeyError("mean_iou")

    with pytest.raises(callbacks.CallbackError, match="broken raised at step 7 .*KeyError"):
        callbacks.notify([history, broken], 7, {"loss": np.float32(1.5)}, "train")
    assert history.lines[-1] == (7, "train", {"loss": 1.5})
