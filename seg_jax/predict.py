"""`--mode=predict`: class masks for a folder of images, from the newest checkpoint of a run.

  python -m seg_jax.main --mode=predict --config=configs/shapes.py --workdir=runs/shapes \
      --predict.input=photos/ [--predict.output_dir=out/] [--predict.rule=bayes]

For every image `<stem>.png|jpg` of the input folder (or the one image file given) it writes
into the output folder (default `<workdir>/predict/`):

  <stem>_mask.png      the predicted classes in the dataset's fixed palette
  <stem>_overlay.png   the image with the mask blended over it
  <stem>_labels.png    the class ids themselves (8-bit grey, 16-bit above 256 classes)

and `index.md`, a table of the images with the share of each predicted class, and the palette.
It needs only the workdir: its newest checkpoint (the model's variables) and the
`dataset_info.json` that training writes (class names, palette, ignore label), so a workdir copied
to another machine predicts without the training data.
Images of any size are predicted whole (or by sliding windows, with test-time augmentation) as
configured in `config.evaluation`, exactly as in evaluation; the decision is `config.decision.rule`
unless `rule` ('map' or 'bayes') overrides it.
"""

import os
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import logging
from jax.experimental import multihost_utils
from PIL import Image

from seg_jax import (checkpointing, decision, errors, extensions, inference, reporting, sharding,
                     steps, visualize, workdir_check)
from seg_jax.data import datasets, folder, pipeline
from seg_jax.models import create_model
from seg_jax.validation import validate_config

OVERLAY_ALPHA = 0.5


class ImageFolder:
    """The images of a folder (or one image file) as an evaluation source with no labels.

    Examples carry an all-`ignore_label` 'label' so that the evaluation batching can pad and
    group them; `image_sizes()` reads only the file headers.
    """

    def __init__(self, path: str, ignore_label: int):
        if os.path.isfile(path):
            self.paths = [path]
        elif os.path.isdir(path):
            self.paths = [os.path.join(path, n) for n in sorted(os.listdir(path))
                          if n.lower().endswith(folder.IMAGE_SUFFIXES)]
            if not self.paths:
                raise errors.MissingInputError(
                    f"--predict.input={path!r} holds no .png or .jpg images.")
        else:
            raise errors.MissingInputError(
                f"--predict.input={path!r} is neither an image file nor a folder of images.")
        self.ignore_label = ignore_label

    def __len__(self) -> int:
        return len(self.paths)

    def image_sizes(self) -> list[tuple[int, int]]:
        return [folder.image_size(path) for path in self.paths]

    def __getitem__(self, index) -> dict:
        pixels = folder.read_image(self.paths[int(index)])
        return {"image": pixels, "label": np.full(pixels.shape[:2], self.ignore_label, np.int32)}


def overlay(image: np.ndarray, colours: np.ndarray, alpha: float = OVERLAY_ALPHA) -> np.ndarray:
    """uint8 [H, W, 3]: `alpha` of the mask colours over `1 - alpha` of the image."""
    mixed = (1.0 - alpha) * image.astype(np.float32) + alpha * colours.astype(np.float32)
    return np.clip(np.round(mixed), 0, 255).astype(np.uint8)


def _write_prediction(output_dir: str, path: str, image: np.ndarray, prediction: np.ndarray,
                      info) -> str:
    stem = os.path.splitext(os.path.basename(path))[0]
    colours = visualize.colorize(prediction, info.palette, info.ignore_label)
    Image.fromarray(colours).save(os.path.join(output_dir, f"{stem}_mask.png"))
    Image.fromarray(overlay(image, colours)).save(os.path.join(output_dir, f"{stem}_overlay.png"))
    ids = prediction.astype(np.uint8 if info.num_classes <= 256 else np.uint16)
    Image.fromarray(ids).save(os.path.join(output_dir, f"{stem}_labels.png"))
    return stem


def _class_shares(prediction: np.ndarray, class_names, top: int = 5) -> str:
    """The `top` most frequent predicted classes with their share of the pixels."""
    counts = np.bincount(prediction.reshape(-1), minlength=len(class_names))
    return ", ".join(f"{class_names[c]} {counts[c] / prediction.size:.1%}"
                     for c in np.argsort(-counts, kind="stable")[:top] if counts[c])


def _index_markdown(rows: list, info, step: int, rule: str) -> str:
    lines = [f"# Predictions (checkpoint step {step}, {rule} decision)", "",
             "| image | mask | overlay | classes (share of pixels) |", "|---|---|---|---|"]
    for stem, path, classes in rows:
        lines.append(f"| {os.path.basename(path)} | ![]({stem}_mask.png) | "
                     f"![]({stem}_overlay.png) | {classes} |")
    lines += ["", "Palette: " + ", ".join(
        f"{name} `#{r:02x}{g:02x}{b:02x}`" for name, (r, g, b) in zip(info.class_names, info.palette))]
    return "\n".join(lines) + "\n"


def restore_for_inference(config, workdir: str, mesh=None, *, model=None, weights: str = "raw"):
    """`(InferenceState, step)` of the newest checkpoint in `workdir`: model and variables only.

    `config` is the run's (its model block builds the model, unless `model` is given: the module
    a notebook trained with `train_and_evaluate(model=...)`). In a notebook,
    `steps.inference_model_fn(state)(images).logits` are then the trained model's logits.
    `mesh`: the devices the variables are replicated over; by default only the first device, so
    that a notebook's calls run the model once (replicated over all devices, an unsharded call
    would compute the same thing on each of them). `weights`: 'raw' (the trained weights) or
    'ema' (their moving average, kept by a run trained with config.ema_decay > 0).
    """
    extensions.import_extra_modules(config)  # a model registered outside seg_jax
    config = datasets.with_dataset_info(config, _dataset_info(config, workdir))  # class count
    mesh = sharding.create_mesh(jax.local_devices()[:1]) if mesh is None else mesh
    model = create_model(config.model) if model is None else model
    size = config.data.crop_size
    abstract = jax.eval_shape(lambda: model.init(
        jax.random.key(0, impl="rbg"), jnp.zeros((1, size, size, 3), jnp.float32), train=False))
    replicated = sharding.replicated(mesh)
    abstract = jax.tree.map(
        lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=replicated),
        {"params": abstract["params"], "batch_stats": abstract.get("batch_stats", {})})
    manager = checkpointing.create_manager(workdir, keep=config.keep_checkpoints)
    try:
        variables, step = checkpointing.restore_model_variables(manager, abstract, weights=weights)
    except errors.IncompatibleWorkdirError as mismatch:  # say which settings differ
        raise workdir_check.explain_mismatch(workdir, config, mismatch) from mismatch
    if variables is None:
        raise errors.MissingCheckpointError(
            f"No checkpoint in {manager.directory}; train first (--mode=train) or pass the "
            "--workdir of a trained run.")
    return steps.InferenceState(apply_fn=model.apply, params=variables["params"],
                                batch_stats=variables.get("batch_stats", {})), step


def _dataset_info(config, workdir: str):
    """The info the training run stored in the workdir; for older runs, the dataset's own."""
    info = datasets.read_info(workdir)
    if info is None:
        logging.info("No %s in %s (a run from before it was written): reading the dataset's "
                     "info.", datasets.INFO_FILE, workdir)
        _, info = datasets.get_dataset(config.data, config.data.eval_split)
    return info


def predict_images(config, workdir: str, input_path: str, *, output_dir: str | None = None,
                   rule: str | None = None, weights: str = "raw") -> list[str]:
    """Writes mask, overlay and label PNGs for the images at `input_path`; returns the stems.

    `weights` ('raw' or 'ema') as for `restore_for_inference`.
    Needs only the workdir's newest checkpoint and its `dataset_info.json` (written by training):
    no dataset, optimizer or evaluation split. Raises FileNotFoundError when the workdir has no
    checkpoint or the input no image, and ValueError for a bad config or decision rule.
    """
    workdir = os.path.abspath(workdir)
    info = _dataset_info(config, workdir)
    config = datasets.with_dataset_info(config, info)
    mesh = sharding.create_mesh()
    rule = rule or config.decision.rule
    decision.check_rule(rule, "--predict.rule")
    validate_config(config, info, mesh, mode="predict")
    source = ImageFolder(input_path, info.ignore_label)  # checked before restoring
    state, step = restore_for_inference(config, workdir, mesh, weights=weights)
    if rule == "bayes" and config.decision.cost is None:
        logging.warning("--predict.rule=bayes with no config.decision.cost: the 0-1 cost, whose "
                        "Bayes decision is the MAP (argmax) decision.")
    output_dir = os.path.abspath(output_dir or os.path.join(workdir, "predict"))
    if jax.process_index() == 0:
        os.makedirs(output_dir, exist_ok=True)
    cost = decision.cost_matrix_from_config(config.decision.cost, info.num_classes)
    predict_step = jax.jit(
        steps.make_predict_step(cost=cost if rule == "bayes" else None,
                                inference_options=inference.InferenceOptions.from_config(config)),
        in_shardings=(sharding.replicated(mesh), sharding.batch_sharded(mesh)),
        out_shardings=sharding.batch_sharded(mesh))
    logging.info("Predicting %d image(s) from %s with the step-%d checkpoint's %s weights (%s "
                 "decision) into %s", len(source), input_path, step,
                 "moving-average" if weights == "ema" else "trained", rule, output_dir)
    rows = _predict_all(config, source, lambda images: predict_step(state, images), mesh,
                        output_dir, info)
    if jax.process_index() == 0:
        reporting.atomic_write(os.path.join(output_dir, "index.md"),
                               _index_markdown(rows, info, step, rule))
    return [row[0] for row in rows]


def _predict_all(config, source, predict, mesh, output_dir: str, info) -> list:
    """Predicts every image of `source` in padded batches and writes its PNGs (process 0).

    Returns the index rows `(stem, path, class shares)` sorted by path.
    """
    evaluation = config.evaluation
    plan = pipeline.plan_eval_batches(source, config.eval_batch_size,
                                      pad_multiple=evaluation.pad_multiple,
                                      pad_size=tuple(evaluation.pad_size))
    batches = pipeline.eval_batches(
        source, config.data, global_batch_size=config.eval_batch_size,
        num_classes=info.num_classes, process_index=jax.process_index(),
        process_count=jax.process_count(), plan=plan)
    rows, start, done = [], time.perf_counter(), 0
    for planned, batch in zip(plan, batches):
        images = sharding.put_batch({"image": batch["image"]}, mesh)["image"]
        predictions = np.asarray(multihost_utils.process_allgather(predict(images), tiled=True))
        for j, index in enumerate(planned.indices):
            if index < 0:
                continue
            done += 1
            if jax.process_index() != 0:
                continue
            image = source[index]["image"]
            prediction = predictions[j, :image.shape[0], :image.shape[1]]
            stem = _write_prediction(output_dir, source.paths[index], image, prediction, info)
            rows.append((stem, source.paths[index], _class_shares(prediction, info.class_names)))
        logging.info("Predicted %d/%d images (%.1f images/s).", done, len(source),
                     done / (time.perf_counter() - start))
    return sorted(rows, key=lambda row: row[1])
