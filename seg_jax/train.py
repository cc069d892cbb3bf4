"""Training and evaluation: `train_and_evaluate(config, workdir)` and `evaluate_checkpoint`.

Importable from a notebook; `seg_jax.main` only parses flags and calls in here. A run writes into
`workdir`: config.json, metrics.jsonl, tensorboard/, checkpoints/, results.json, results.md and
predictions.png. Re-running on the same workdir resumes from the newest checkpoint.

A notebook can pass what a config cannot name: a loss function (`loss_fn=`), a Flax model
(`model=`), metrics (`extra_metrics=`) and callbacks that receive every logged line of scalars
(`callbacks=`, e.g. to draw live curves); the run is otherwise the command line's.
"""

import collections
import functools
import math
import os
import signal
import time
import uuid

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils

from seg_jax import (
    checkpointing, decision, errors, extensions, faults, inference, metric_writer, objectives,
    optim, reporting, sharding, steps, visualize, workdir_check,
)
from seg_jax import callbacks as callback_lib
from seg_jax import metrics
from seg_jax.data import class_balance, datasets, panoptic_targets, pipeline
from seg_jax.metrics import SemanticEvaluator, extra
from seg_jax.models import ModelOutput, create_model, load_pretrained_backbone
from seg_jax.panoptic_eval import PanopticEvalOptions
from seg_jax.validation import validate_config

def prepare_workdir(workdir: str) -> str:
    """Creates `workdir` if needed and proves it writable; returns its absolute path."""
    workdir = os.path.abspath(workdir)
    try:
        os.makedirs(workdir, exist_ok=True)
        probe = os.path.join(workdir, f".write_test_{uuid.uuid4().hex}")
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as e:
        raise PermissionError(
            f"Cannot write to workdir {workdir!r} ({e.strerror or e}); pass a writable "
            f"--workdir."
        ) from e
    return workdir


class Experiment:
    """What a run builds once: mesh, eval data, model, optimizer, jitted steps, checkpoints.

    The modules of `config.extra_modules` are imported first (where user losses and metrics
    register); the config is then completed with the dataset's class count and ignore label
    (`datasets.with_dataset_info`; `self.config` is that copy) and checked in one pass
    (`validate_config`), before any compilation. `mesh` defaults to all devices of all processes.
    `model`, `loss_fn` and `extra_metrics` replace or add to what the config names (see
    `train_and_evaluate`); the train step is built in 'train' mode only.
    """

    def __init__(self, config, workdir: str, *, mesh=None, mode: str = "train", model=None,
                 loss_fn=None, extra_metrics=None):
        extensions.import_extra_modules(config)
        self.workdir = prepare_workdir(workdir)
        self.mesh = sharding.create_mesh() if mesh is None else mesh
        self.eval_source, self.info = datasets.get_dataset(config.data, config.data.eval_split)
        self.config = config = datasets.with_dataset_info(config, self.info)
        validate_config(config, self.info, self.mesh, mode=mode,
                        config_loss=loss_fn is None, config_model=model is None)
        self.train_source = self.class_counts = None
        if mode == "train" and objectives.needs_class_counts(config, config_loss=loss_fn is None):
            # Class weights named by a scheme and rare-class sampling read the training split's
            # class pixel counts, computed once per workdir.
            self.train_source, _ = datasets.get_dataset(config.data, config.data.train_split)
            self.class_counts = class_balance.load_or_compute_counts(
                self.workdir, self.train_source, dataset=class_balance.dataset_id(config.data),
                split=config.data.train_split, num_classes=self.info.num_classes,
                ignore_label=self.info.ignore_label)
        self.model = create_model(config.model) if model is None else model
        self.custom = {"loss_fn": objectives.describe(loss_fn) if loss_fn else None,
                       "model": type(model).__name__ if model is not None else None}
        self.metrics = extra.resolve_metrics(config.evaluation.metrics, extra_metrics)
        extra.check_names(self.metrics)
        self.tx, self.schedule = optim.create_optimizer(config.optimizer, config.num_train_steps)
        self.cost = decision.cost_matrix_from_config(config.decision.cost, self.info.num_classes)
        self.inference_options = inference.InferenceOptions.from_config(config)
        self._init_state_functions()
        self.panoptic = self.output_structure.is_panoptic
        self.panoptic_options = None
        self.instance_check = None  # panoptic runs check instance ids against the targets' bound
        if self.panoptic:
            self.panoptic_options = PanopticEvalOptions.from_config(config, self.info)
            self.instance_check = functools.partial(
                panoptic_targets.check_instances, thing_classes=self.info.thing_classes,
                num_classes=self.info.num_classes, ignore_label=self.info.ignore_label,
                max_instances=config.panoptic.max_instances)
        self.train_step = self._jit_train_step(loss_fn) if mode == "train" else None
        self.eval_step = self._jit_eval_step()
        self.manager = checkpointing.create_manager(self.workdir, keep=config.keep_checkpoints)
        self._eval_plan = None

    def _init_state_functions(self) -> None:
        """The jitted initialisation, the abstract state and the model's output structure."""
        replicated = sharding.replicated(self.mesh)
        input_shape = (1, self.config.data.crop_size, self.config.data.crop_size, 3)
        init = functools.partial(steps.create_train_state, self.model, self.tx,
                                 seed=self.config.seed, input_shape=input_shape,
                                 ema=self.config.ema_decay > 0)
        self._init = jax.jit(init, out_shardings=replicated)
        abstract = jax.eval_shape(init)
        self.abstract_state = jax.tree.map(
            lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated), abstract)
        self.output_structure = jax.eval_shape(
            lambda state, images: steps.inference_model_fn(state)(images), abstract,
            jax.ShapeDtypeStruct(input_shape, jnp.float32))
        if not isinstance(self.output_structure, ModelOutput):
            got = self.output_structure
            got = (f"an array of shape {got.shape}" if hasattr(got, "shape")
                   else type(got).__name__)
            raise TypeError(
                f"The model {type(self.model).__name__} returns {got}; a seg_jax model returns "
                f"seg_jax.models.ModelOutput(logits=...) from __call__(images, train).")

    def _jit_train_step(self, loss_fn):
        config = self.config
        objective = objectives.make_objective(
            config, self.info, panoptic=self.panoptic,
            loss=objectives.semantic_loss(config, self.info, loss_fn,
                                          class_counts=self.class_counts))
        return jax.jit(
            steps.make_train_step(objective, self.schedule,
                                  skip_nonfinite=config.nan_policy == "skip",
                                  accumulate_steps=config.optimizer.accumulate_steps,
                                  ema_decay=config.ema_decay),
            in_shardings=(sharding.replicated(self.mesh), sharding.batch_sharded(self.mesh)),
            out_shardings=(sharding.replicated(self.mesh), sharding.replicated(self.mesh)),
            donate_argnums=0,
        )

    def _jit_eval_step(self):
        config = self.config
        step = steps.make_eval_step(
            self.info.num_classes, self.info.ignore_label,
            # None keeps the MAP decision (and the 0-1 cost for scoring).
            cost=self.cost if config.decision.rule == "bayes" else None,
            logits_stride=config.decision.temperature_stride,
            boundary_tolerance=(
                config.eval_boundary_tolerance if config.eval_boundary_f_score else None),
            panoptic=self.panoptic_options,
            inference_options=self.inference_options,
            batch_metrics=[m for m in self.metrics if isinstance(m, extra.BatchMetric)],
        )
        return jax.jit(step, in_shardings=(sharding.replicated(self.mesh),
                                           sharding.batch_sharded(self.mesh)),
                       out_shardings=(sharding.replicated(self.mesh),
                                      sharding.batch_sharded(self.mesh)))

    def restore(self):
        """`(state, step)` of the newest readable checkpoint, or `(None, 0)`.

        A checkpoint written with the moving average of the weights on while config.ema_decay
        now turns it off (or the other way round) still restores: the average is dropped, or
        starts at the restored weights, with a warning.
        """
        try:
            return checkpointing.restore_latest(self.manager, self.abstract_state)
        except ValueError as error:
            try:
                return self._restore_with_other_ema(error)
            except errors.IncompatibleWorkdirError as mismatch:  # say which settings differ
                raise workdir_check.explain_mismatch(
                    self.workdir, _recorded_config(self), mismatch) from mismatch

    def initial_state(self):
        """The newest checkpoint if there is one (`restore`), else a fresh initialisation:
        `(state, step)`."""
        state, step = self.restore()
        if state is None:
            state = self._init()
            if self.config.model.pretrained:
                state = self._load_pretrained(state)
        return state, step

    def _restore_with_other_ema(self, error: ValueError):
        """Restores a checkpoint whose train state has (or lacks) the moving average that this
        run's lacks (or has); re-raises `error` if that is not the mismatch."""
        abstract = self.abstract_state
        wanted = abstract.ema is not None
        other = abstract.replace(ema=None if wanted else {
            "params": abstract.params, "batch_stats": abstract.batch_stats})
        try:
            state, step = checkpointing.restore_latest(self.manager, other)
        except ValueError:
            raise error from None
        if wanted:
            logging.warning("The step-%d checkpoint has no moving average of the weights; it "
                            "starts at the restored weights (config.ema_decay=%g).", step,
                            self.config.ema_decay)
            return steps.start_ema(state), step
        logging.warning("The step-%d checkpoint's moving average of the weights is dropped "
                        "(config.ema_decay=0).", step)
        return state.replace(ema=None), step

    def _load_pretrained(self, state):
        """A fresh state whose backbone holds the torchvision weights of config.model.pretrained."""
        path = self.config.model.pretrained
        variables = load_pretrained_backbone(
            {"params": state.params, "batch_stats": state.batch_stats}, path,
            preset=self.config.model.backbone)
        logging.info("Backbone initialised from %s.", path)
        # Optimizer moments start at zero whatever the parameters, so only the weights (and their
        # moving average, which starts at them) change.
        replicated = sharding.replicated(self.mesh)
        weights = {"params": variables["params"], "batch_stats": variables["batch_stats"]}
        state = state.replace(**jax.device_put(weights, replicated))
        return steps.start_ema(state) if state.ema is not None else state

    @property
    def eval_plan(self) -> list:
        """The evaluation batches (grouped by padded size); made once, on first use."""
        if self._eval_plan is None:
            evaluation = self.config.evaluation
            start = time.perf_counter()
            self._eval_plan = pipeline.plan_eval_batches(
                self.eval_source, self.config.eval_batch_size,
                pad_multiple=evaluation.pad_multiple, pad_size=tuple(evaluation.pad_size))
            canvases = sorted({b.canvas for b in self._eval_plan})
            logging.info("Evaluation: %d examples in %d batches of %d padded size(s) %s (planned "
                         "in %.1f s).", len(self.eval_source), len(self._eval_plan), len(canvases),
                         canvases[:4] + (["..."] if len(canvases) > 4 else []),
                         time.perf_counter() - start)
            if len(canvases) > 8:
                logging.warning(
                    "The evaluation images have %d padded sizes and each compiles the evaluation "
                    "step once; set config.evaluation.pad_size=(H, W) (or a larger pad_multiple) "
                    "to compile fewer.", len(canvases))
        return self._eval_plan

    def evaluate(self, state, *, interrupted=None) -> tuple[dict, list]:
        """Scores `state` on the eval split; returns (results, predictions of the first images).

        The predictions are cropped back to each image's size: a list of int32 [H, W] for source
        indices 0, 1, ... up to config.num_prediction_images. A state with a moving average of
        its weights (config.ema_decay) is scored twice: `results['ema']` holds the scores of the
        average (the same keys, less the run's facts such as 'step'); predictions are the raw
        weights'.

        `interrupted`: a no-argument callable asked before each batch; once it returns True the
        evaluation stops with `EvaluationInterrupted` (a preemption notice during a periodic
        evaluation must not wait for the whole split).
        """
        results, predictions = self._evaluate(state, interrupted)
        if getattr(state, "ema", None) is not None:
            ema_results, _ = self._evaluate(steps.ema_weights(state), interrupted)
            results["ema"] = {k: v for k, v in ema_results.items() if k not in _RUN_FACTS}
        return results, predictions

    def _evaluate(self, state, interrupted=None) -> tuple[dict, list]:
        config = self.config
        evaluator = SemanticEvaluator(self.info.class_names, cost=self.cost)
        user_metrics = extra.ExtraMetricAccumulator(self.metrics, self.info.class_names)
        panoptic_evaluator = None
        if self.panoptic:
            options = self.panoptic_options
            panoptic_evaluator = metrics.PanopticEvaluator(
                options.thing_classes, options.stuff_classes,
                class_names=self.info.class_names, ignore_label=self.info.ignore_label,
                max_segments=options.max_segments, preset=options.preset)
        wanted = min(config.num_prediction_images, len(self.eval_source))
        predictions, sampled = {}, []
        plan = self.eval_plan
        batches = pipeline.eval_batches(
            self.eval_source, config.data, global_batch_size=config.eval_batch_size,
            num_classes=self.info.num_classes, process_index=jax.process_index(),
            process_count=jax.process_count(), instance_check=self.instance_check, plan=plan,
        )
        for planned, batch in zip(plan, batches):
            if interrupted is not None and interrupted():
                raise EvaluationInterrupted()
            del batch["index"]  # host-side bookkeeping; the plan has the global indices
            stats, pred = self.eval_step(state, sharding.put_batch(batch, self.mesh))
            stats = jax.device_get(stats)
            evaluator.update(stats["confusion"], stats["calibration"],
                             batch_per_image_iou=stats["per_image_iou"],
                             batch_boundary=stats.get("boundary"))
            user_metrics.update(stats.get("extra", {}))
            if panoptic_evaluator is not None:
                panoptic_evaluator.add_statistics(stats["panoptic"], num_images=len(batch["label"]))
            if "logits" in stats:
                sampled.append((stats["logits"], stats["labels"]))
            shown = [(j, i) for j, i in enumerate(planned.indices) if 0 <= i < wanted]
            if shown:
                pred = np.asarray(multihost_utils.process_allgather(pred, tiled=True))
                sizes = np.asarray(multihost_utils.process_allgather(batch["size"], tiled=True))
                for j, i in shown:
                    predictions[i] = pred[j, :sizes[j, 0], :sizes[j, 1]]
        results = evaluator.result()
        if panoptic_evaluator is not None:
            results.update(_panoptic_results(panoptic_evaluator.result()))
        if sampled:
            results.update(_temperature_scaling(sampled, self.info.ignore_label))
        results.update(user_metrics.result(evaluator.confusion))
        results.update(
            decision_rule=config.decision.rule,
            step=int(jax.device_get(state.step)),
            split=config.data.eval_split,
            num_examples=len(self.eval_source),
        )
        return results, [predictions[i] for i in range(wanted)]

    def write_outputs(self, results: dict, predictions: list) -> None:
        if jax.process_index() != 0:
            return
        reporting.write_results(self.workdir, results)
        if len(predictions):
            examples = [self.eval_source[i] for i in range(len(predictions))]
            visualize.save_prediction_grid(
                os.path.join(self.workdir, "predictions.png"),
                [e["image"] for e in examples],
                [e["label"] for e in examples],
                predictions,
                palette=self.info.palette,
                ignore_label=self.info.ignore_label,
                class_names=self.info.class_names,
            )


class EvaluationInterrupted(Exception):
    """An evaluation stopped before the end of its split (`Experiment.evaluate(interrupted=)`)."""


# Keys of an evaluation's results that describe the run rather than score the weights.
_RUN_FACTS = ("decision_rule", "step", "split", "num_examples")


def _panoptic_results(pq: dict) -> dict:
    """PQ's scores under flat names beside the semantic ones (NaN as None, JSON-ready)."""
    flat = {"pq": pq["all"]["pq"], "sq": pq["all"]["sq"], "rq": pq["all"]["rq"],
            "pq_things": pq["things"]["pq"], "pq_stuff": pq["stuff"]["pq"],
            **{k: pq[k] for k in ("tp", "fp", "fn", "over_merge", "over_split")},
            "per_class_pq": {name: v["pq"] for name, v in pq["per_class"].items()}}
    return reporting.json_ready(flat)


def _temperature_scaling(sampled, ignore_label: int) -> dict:
    """Fits a temperature on sampled (logits, labels) pairs; reports it and the ECE it gives."""
    logits = np.concatenate([l for l, _ in sampled])
    labels = np.concatenate([y for _, y in sampled])
    temperature = metrics.fit_temperature(logits, labels, ignore_label=ignore_label)

    def ece(t):
        probs = jax.nn.softmax(logits / t, axis=-1)
        bins = metrics.calibration_bins(probs, labels, ignore_label=ignore_label)
        return float(metrics.expected_calibration_error(bins))

    return {"temperature": float(temperature), "temperature_pixels": int((labels != ignore_label).sum()),
            "ece_sampled": ece(1.0), "ece_sampled_scaled": ece(temperature)}


def _recorded_config(run: Experiment):
    """The config as config.json records it: a loss or model passed to train_and_evaluate shows
    in place of the config's (in angle brackets, which no config name can be)."""
    if not any(run.custom.values()):
        return run.config
    config = run.config.copy_and_resolve_references()
    if run.custom["loss_fn"]:
        config.loss.name = f"<loss_fn {run.custom['loss_fn']}>"
    if run.custom["model"]:
        config.model.name = f"<model {run.custom['model']}>"
    return config


def train_and_evaluate(config, workdir: str, *, loss_fn=None, model=None, callbacks=(),
                       extra_metrics=None) -> dict:
    """Trains `config` in `workdir` (resuming if it holds checkpoints), evaluates, returns results.

    A SIGTERM (preemption notice) during training saves a checkpoint at the current step and
    returns `{'preempted': True, 'step': ...}` without evaluating; re-running resumes there.

    For notebooks (all optional; the rest of the run is what the command line does):
      loss_fn: `fn(logits, labels, *, ignore_label) -> scalar` used as the semantic loss instead
        of config.loss.name (bind other options with functools.partial); probed before training
        (`seg_jax.losses.check_loss`). config.json records it as `loss.name = "<loss_fn NAME>"`.
      model: a Flax module `__call__(images, train) -> ModelOutput` used instead of
        `create_model(config.model)` (config.json: `model.name = "<model CLASS>"`).
      callbacks: `callback(step, scalars, kind)` for every line metrics.jsonl gets
        (`seg_jax.callbacks`; `LiveCurves` draws them). One that raises stops the run with a
        checkpoint of that step and raises `CallbackError`.
      extra_metrics: {name: confusion fn or `seg_jax.metrics.BatchMetric`}, evaluated beside
        config.evaluation.metrics and reported in results.json and metrics.jsonl.
    """
    run = Experiment(config, workdir, model=model, loss_fn=loss_fn, extra_metrics=extra_metrics)
    config = run.config  # with the dataset's class count and ignore label
    callbacks = tuple(callbacks)
    total = config.num_train_steps
    state, start_step = run.initial_state()
    if jax.process_index() == 0:  # what --mode=predict needs besides the checkpoint
        reporting.write_config(run.workdir, _recorded_config(run))
        datasets.write_info(run.workdir, run.info)

    if start_step >= total:
        logging.info("Training already finished (step %d of %d) in %s.", start_step, total, run.workdir)
        results = reporting.read_results(run.workdir)
        if results is None or results.get("step") != start_step:
            results, predictions = run.evaluate(state)
            run.write_outputs(results, predictions)
        logging.info("\n%s", reporting.summary_table(results))
        return results

    train_source = run.train_source
    if train_source is None:
        train_source, _ = datasets.get_dataset(config.data, config.data.train_split)
    loader = pipeline.TrainLoader(
        train_source, config.data, global_batch_size=config.batch_size, seed=config.seed,
        num_classes=run.info.num_classes, process_index=jax.process_index(),
        process_count=jax.process_count(), instance_check=run.instance_check,
        class_counts=run.class_counts,
    )
    if run.class_counts is not None:
        logging.info("%s", class_balance.format_summary(run.class_counts, run.info.class_names,
                                                        sampler=loader.sampler))
    if start_step:
        changed = loader.check_resume(
            checkpointing.read_data_state(run.manager, start_step), start_step)
        if changed:
            logging.warning(
                "The input stream differs from the one the checkpoint was trained on (%s): the "
                "resumed run will not see the batches an uninterrupted run would have seen.",
                "; ".join(changed))
    # Lines a killed run logged after its last checkpoint are dropped: the resumed run logs them.
    writer = metric_writer.MetricWriter(run.workdir, resume_step=start_step)
    logging.info(
        "%s from step %d to %d on %d device(s): %d examples, batch %d, %d input thread(s), "
        "workdir %s", "Resuming" if start_step else "Training", start_step, total,
        jax.device_count(), len(train_source), config.batch_size,
        pipeline.worker_count(config.data.num_workers), run.workdir,
    )
    start_time = time.perf_counter()
    with faults.PreemptionWatch() as preemption:
        state, stopped_at = _train_loop(run, state, start_step, loader, writer, preemption,
                                        callbacks)
    if stopped_at is not None:
        writer.close()
        logging.info("Stopped by %s at step %d with a checkpoint; re-run the same command to "
                     "resume.", signal.Signals(preemption.received).name if preemption.received
                     else "a signal on another process", stopped_at)
        return {"preempted": True, "step": stopped_at}
    logging.info("Trained %d steps in %s.", total - start_step,
                 metric_writer.format_duration(time.perf_counter() - start_time))
    results, predictions = run.evaluate(state)
    scalars = _eval_scalars(results, run.metrics)
    writer.write_scalars(total, scalars, kind="eval")
    writer.close()
    run.write_outputs(results, predictions)
    logging.info("\n%s", reporting.summary_table(results))
    callback_lib.notify(callbacks, total, scalars, "eval")  # the last checkpoint is step `total`
    return results


def _train_loop(run: Experiment, state, start_step: int, loader, writer, preemption,
                callbacks=()):
    """Steps start_step + 1 .. num_train_steps; returns (state, step it stopped at or None).

    Logs every `log_every_steps`, checkpoints every `checkpoint_every_steps` and at the end (and
    when preempted), evaluates every `eval_every_steps`. Losses are checked (`config.nan_policy`)
    before anything is logged or checkpointed, so no checkpoint ever holds a diverged state.
    `callbacks` get each logged line; one that raises leaves a checkpoint of that step.
    """
    config = run.config
    total = config.num_train_steps
    guard = faults.NonFiniteGuard(config.nan_policy, config.nan_max_consecutive_skips)
    keeper = faults.CheckpointKeeper(run.manager, run.workdir,
                                     last_complete=start_step if start_step else None)
    progress = metric_writer.Progress(start_step, total)
    pending = []  # outputs of the steps not yet checked, still on device
    pending_from = start_step
    interval = []  # checked outputs of this logging interval
    first_time = time.perf_counter()

    def check_pending():
        nonlocal pending, pending_from
        outs = jax.device_get(pending)
        guard.check([o.loss for o in outs], [o.skipped for o in outs], pending_from,
                    keeper.last_saved)
        interval.extend(outs)
        pending, pending_from = [], pending_from + len(outs)

    def checkpoint_now(step):
        """Before the loop stops early (a callback's or the input's error, a notice during an
        evaluation): `step` checkpointed, unless it already is, and the write finished."""
        if step > keeper.last_saved:
            check_pending()  # never checkpoint a diverged state
            keeper.save(step, state, loader.data_state(step), wait=True)
        keeper.wait()

    def notify(step, scalars, kind):
        try:
            callback_lib.notify(callbacks, step, scalars, kind)
        except callback_lib.CallbackError as error:
            checkpoint_now(step)
            raise callback_lib.CallbackError(
                f"{error} The run stopped with a checkpoint of step {step} in {run.workdir}; "
                f"fix the callback and run again to resume.") from error.__cause__

    batches = loader.iterate(start_step, total - start_step)
    in_flight = collections.deque()  # outputs of the steps dispatched and maybe not finished
    step = start_step  # the last step dispatched
    try:
        while step < total:
            try:
                batch = next(batches)
            except errors.DataError as error:  # keep what the run has done: a checkpoint of it
                checkpoint_now(step)
                raise errors.DataError(
                    f"{error} The run stopped with a checkpoint of step {step} in "
                    f"{run.workdir}; fix or remove the example, then re-run to resume.") from error
            step += 1
            if step == start_step + 1:
                state, out = _first_step(run, state, batch)
                # It includes compilation: report it, and keep it out of steps/s.
                logging.info("First step (with compilation) took %.1f s.",
                             time.perf_counter() - first_time)
                progress.reset_clock(step)
            else:
                state, out = run.train_step(state, sharding.put_batch(batch, run.mesh))
            pending.append(out)
            # JAX dispatches steps without waiting for them; left alone, the host would queue
            # the whole run (and its batches) on the device, and a preemption notice would wait
            # for all of it. Waiting for the oldest of `steps_in_flight` keeps the device fed
            # while the host prepares the next step, no more.
            in_flight.append(out.loss)
            if len(in_flight) >= config.steps_in_flight:
                jax.block_until_ready(in_flight.popleft())

            is_last = step == total
            if step % config.log_every_steps == 0 or is_last:
                check_pending()
                keeper.check_workdir(step)
                rates = progress.update(step)
                scalars = _train_scalars(interval, guard, rates)
                writer.write_scalars(step, scalars, kind="train")
                metric_writer.log_progress(step, total, scalars, rates)
                interval = []
                notify(step, scalars, "train")

            stop = preemption.should_stop(step)
            if step % config.checkpoint_every_steps == 0 or is_last or stop:
                check_pending()  # never checkpoint a diverged state
                keeper.save(step, state, loader.data_state(step), wait=stop or is_last)
                progress.reset_clock(step)
            if stop:
                return state, step

            if config.eval_every_steps and step % config.eval_every_steps == 0 and not is_last:
                try:
                    results, _ = run.evaluate(state, interrupted=preemption.interrupts_evaluation)
                except EvaluationInterrupted:  # a notice arrived: stop now, this step kept
                    logging.warning("The preemption notice interrupted the evaluation of step "
                                    "%d, which is not recorded.", step)
                    checkpoint_now(step)
                    return state, step
                scalars = _eval_scalars(results, run.metrics)
                writer.write_scalars(step, scalars, kind="eval")
                logging.info("step %d: eval mIoU %.4f, pixel accuracy %.4f%s",
                             step, results["mean_iou"], results["pixel_accuracy"],
                             f" (EMA weights: mIoU {results['ema']['mean_iou']:.4f})"
                             if "ema" in results else "")
                notify(step, scalars, "eval")
                progress.reset_clock(step)
        keeper.wait()
    except BaseException:
        keeper.finish_quietly()  # the last checkpoint is whole however the run ends
        raise
    return state, None


def _is_out_of_memory(error: BaseException) -> bool:
    text = str(error)
    return "RESOURCE_EXHAUSTED" in text or "out of memory" in text.lower()


def _first_step(run: Experiment, state, batch):
    """The first train step (compiled here), waited for; running out of accelerator or host
    memory in it is an error naming the batch, the crop and what to lower."""
    try:
        state, out = run.train_step(state, sharding.put_batch(batch, run.mesh))
        jax.block_until_ready(out)
    except (jax.errors.JaxRuntimeError, MemoryError) as error:
        if not _is_out_of_memory(error):
            raise
        config = run.config
        per_device = config.batch_size // (config.optimizer.accumulate_steps * jax.device_count())
        first_line = str(error).strip().splitlines()[0][:300] if str(error).strip() else ""
        raise errors.ResourceError(
            f"The first train step ran out of memory on {jax.devices()[0].device_kind} with "
            f"config.batch_size={config.batch_size} (config.optimizer.accumulate_steps="
            f"{config.optimizer.accumulate_steps}: {max(per_device, 1)} image(s) per device at "
            f"a time) and config.data.crop_size={config.data.crop_size}. Raise "
            f"config.optimizer.accumulate_steps (the same batch in smaller pieces) or lower "
            f"config.data.crop_size or config.batch_size. ({first_line})") from error
    return state, out


def _train_scalars(outs: list, guard, rates: dict) -> dict:
    """Means over a logging interval's applied steps (+ steps/s, and skips under 'skip')."""
    applied = [o for o in outs if not o.skipped] or outs  # all skipped: show the non-finite values
    scalars = {
        "loss": float(np.mean([o.loss for o in applied])),
        "grad_norm": float(np.mean([o.grad_norm for o in applied])),
        "learning_rate": float(outs[-1].learning_rate),
        "steps_per_sec": rates["steps_per_sec"],
    }
    if len(outs[-1].parts) > 1:  # a sum of terms: log each
        scalars.update({f"loss/{name}": float(np.mean([o.parts[name] for o in applied]))
                        for name in outs[-1].parts})
    if guard.policy == "skip":
        scalars["skipped_steps"] = guard.total_skipped
    return scalars


def _eval_scalars(results: dict, extra_metrics=()) -> dict:
    scalars = {k: results[k] for k in ("mean_iou", "pixel_accuracy", "mean_accuracy", "mean_cost", "ece")}
    for key in ("boundary_f_score", "pq", "sq", "rq"):
        if results.get(key) is not None:
            scalars[key] = results[key]
    for name, value in results["per_class_iou"].items():
        scalars[f"iou/{name}"] = math.nan if value is None else value
    scalars.update(extra.scalars(results, extra_metrics))
    if results.get("ema"):
        ema = _eval_scalars(results["ema"], extra_metrics)
        scalars.update({f"ema/{name}": value for name, value in ema.items()})
    return scalars


def evaluate_checkpoint(config, workdir: str, *, model=None, extra_metrics=None) -> dict:
    """Evaluates the newest checkpoint in `workdir` and writes results.json and predictions.png.

    `model` and `extra_metrics` as for `train_and_evaluate` (a run trained with `model=` is
    evaluated with the same module)."""
    run = Experiment(config, workdir, mode="eval", model=model, extra_metrics=extra_metrics)
    state, step = run.restore()
    if state is None:
        raise errors.MissingCheckpointError(
            f"No checkpoint in {run.manager.directory}; train first (--mode=train) or pass the "
            f"--workdir of a trained run."
        )
    results, predictions = run.evaluate(state)
    run.write_outputs(results, predictions)
    logging.info("\n%s", reporting.summary_table(results))
    return results
