"""The numpy input pipeline: deterministic training batches and padded evaluation batches.

Training order and augmentation are pure functions of `(seed, step)`. With the shuffled epochs
(the default), the example at position `j` of global batch `step` is element `(step * B + j) mod
n` of the epoch's permutation (seeded by the epoch number). With rare-class sampling
(`config.data.rare_class_sampling.temperature > 0`, DAFormer's recipe,
`seg_jax.data.class_balance.RareClassSampler`), it is drawn, class first and then an image holding
that class, with a generator seeded by `(seed, step, j)` from the training split's per-example
class pixel counts. Either way its augmentation uses a generator seeded by `(seed, step, j)`. So a
resumed run sees exactly the batches of an uninterrupted one, and the same global batch is
produced whatever the number of processes (each process builds only its own slice of positions).
"""

import concurrent.futures
import dataclasses
import os
from typing import Iterator

import numpy as np

from seg_jax.data import augment, class_balance, datasets
from seg_jax.errors import ConfigError, DataError

# Distinct streams of randomness drawn from the one config seed.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1
_RARE_CLASS_STREAM = 2


def check_labels(label: np.ndarray, num_classes: int, ignore_label: int, where: str) -> None:
    """Raises DataError if `label` has an id outside [0, num_classes) that is not ignore_label."""
    bad = (label != ignore_label) & ((label < 0) | (label >= num_classes))
    if np.any(bad):
        values = sorted(set(np.unique(label[bad]).tolist()))[:10]
        raise DataError(
            f"{where}: label ids {values} are outside [0, {num_classes}) and not the ignore label "
            f"{ignore_label}. Fix the dataset's labels, or set config.data.num_classes / "
            f"config.data.ignore_label to match the data."
        )


def read_example(source, index: int, where: str) -> dict:
    """`source[index]`; an example that cannot be read is a DataError naming it (and the file,
    where the source's own error does: a folder image, a tfds record)."""
    try:
        return source[index]
    except DataError:
        raise
    except Exception as error:  # whatever the storage raises: a truncated file, a bad image
        path = _file_of(source, index)
        raise DataError(
            f"{where} of {type(source).__name__}{f' (in {path})' if path else ''} could not be "
            f"read ({type(error).__name__}: {str(error).strip()[:300]}). Repair or remove it "
            f"(or its file) from the dataset.") from error


def _file_of(source, index: int) -> str | None:
    """The file holding record `index` of a tfds ArrayRecord source. array_record keeps it in
    private fields, read defensively: any surprise gives None (the message then names the
    example only)."""
    try:
        records = source.data_source
        reader, _ = records._reader_idx_and_position(index)
        return str(records._read_instructions[reader].filename)
    except Exception:  # another source, or another array_record version
        return None


def _select(example: dict, instance_check, where: str) -> dict:
    """The arrays a batch needs from a source example: image, label (and instance, checked)."""
    selected = {"image": example["image"], "label": example["label"].astype(np.int32)}
    if instance_check is not None:
        if "instance" not in example:
            raise DataError(f"{where} has no instance ids; a panoptic model needs a dataset "
                            "with instance masks.")
        selected["instance"] = example["instance"].astype(np.int32)
        instance_check(selected["label"], selected["instance"], where=where)
    return selected


def _local_positions(global_batch_size: int, process_index: int, process_count: int) -> range:
    if global_batch_size % process_count:
        raise ConfigError(
            f"Global batch size {global_batch_size} is not divisible by the process count "
            f"{process_count}; choose config.batch_size as a multiple of {process_count}."
        )
    per_process = global_batch_size // process_count
    return range(process_index * per_process, (process_index + 1) * per_process)


class TrainLoader:
    """An endless, resumable stream of augmented, normalised training batches (this process's part).

    Batches are dicts `{'image': float32 [b, S, S, 3], 'label': int32 [b, S, S]}` where
    b = global_batch_size / process_count and S = data_config.crop_size. With `instance_check`
    (for panoptic training) they also hold 'instance' int32 [b, S, S], augmented with the labels,
    and every example's labels and instances go through `instance_check(label, instance, where)`
    first (e.g. `panoptic_targets.check_instances`).

    Examples come from the shuffled epochs, or, when `data_config.rare_class_sampling.temperature`
    is above 0, from DAFormer's rare-class sampling over `class_counts` (int [n, C], the
    per-example class pixel counts of `source`: `class_balance.load_or_compute_counts`), which it
    then requires.
    """

    def __init__(
        self,
        source,
        data_config,
        *,
        global_batch_size: int,
        seed: int,
        num_classes: int,
        process_index: int = 0,
        process_count: int = 1,
        instance_check=None,
        class_counts=None,
    ):
        if len(source) == 0:
            raise DataError("The training split is empty; check config.data.train_split and the "
                            "dataset's files.")
        # A bad config.data.jitter strength stops here, before any batch is built.
        augment.check_jitter(data_config)
        self._source = source
        self._config = data_config
        self._batch_size = global_batch_size
        self._seed = seed
        self._num_classes = num_classes
        self._positions = _local_positions(global_batch_size, process_index, process_count)
        self._permutations: dict[int, np.ndarray] = {}
        self._instance_check = instance_check
        self._sampler = self._rare_class_sampler(class_counts)

    def _rare_class_sampler(self, class_counts):
        """The rare-class sampler the config asks for (None: the shuffled epochs)."""
        settings = self._config.get("rare_class_sampling", None)
        temperature = 0.0 if settings is None else float(settings.temperature)
        if temperature < 0:
            raise ConfigError(f"config.data.rare_class_sampling.temperature={temperature} must "
                              "be >= 0 (0 turns rare-class sampling off; DAFormer uses 0.01).")
        if temperature == 0:
            return None
        if class_counts is None:
            raise ValueError(
                f"config.data.rare_class_sampling.temperature={temperature} needs the training "
                "split's class pixel counts: pass TrainLoader(..., class_counts="
                "class_balance.load_or_compute_counts(...)), or set the temperature to 0.")
        counts = np.asarray(class_counts)
        if counts.shape != (len(self._source), self._num_classes):
            raise ValueError(
                f"class_counts has shape {counts.shape}, but the training split has "
                f"{len(self._source)} examples of {self._num_classes} classes; compute them "
                "from this split (class_balance.class_pixel_counts).")
        return class_balance.RareClassSampler(counts, temperature, int(settings.min_pixels))

    @property
    def sampler(self) -> "class_balance.RareClassSampler | None":
        """The rare-class sampler drawing the examples, or None for the shuffled epochs."""
        return self._sampler

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            rng = np.random.default_rng([self._seed, _SHUFFLE_STREAM, epoch])
            # Only two epochs are ever live at once (a batch can straddle an epoch boundary).
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = rng.permutation(len(self._source))
        return self._permutations[epoch]

    def example_index(self, step: int, position: int) -> int:
        """The source index of the example at `position` of global batch `step`."""
        if self._sampler is not None:
            rng = np.random.default_rng([self._seed, _RARE_CLASS_STREAM, step, position])
            return self._sampler.example_index(rng)
        flat = step * self._batch_size + position
        epoch, offset = divmod(flat, len(self._source))
        return int(self._permutation(epoch)[offset])

    def data_state(self, step: int) -> dict:
        """The stream's position after `step` batches, and everything its order depends on.

        Saved with each checkpoint: the next batch a resumed run builds is batch `step`, whose
        first example is `position_in_epoch` of epoch `epoch` of the shuffled split (with
        rare-class sampling, epochs only count examples: each is drawn anew). `sampling` is
        'shuffled_epochs' or 'rare_class' (then with its temperature and min_pixels).
        """
        epoch, position = divmod(step * self._batch_size, len(self._source))
        state = {"step": int(step), "epoch": int(epoch), "position_in_epoch": int(position),
                 "examples_seen": int(step * self._batch_size), "num_examples": len(self._source),
                 "global_batch_size": int(self._batch_size), "seed": int(self._seed),
                 "sampling": "shuffled_epochs"}
        if self._sampler is not None:
            state.update(sampling="rare_class",
                         rare_class_temperature=float(self._sampler.temperature),
                         rare_class_min_pixels=int(self._sampler.min_pixels))
        return state

    def check_resume(self, saved: dict | None, step: int) -> list[str]:
        """Differences between a checkpoint's `data_state` and this loader at `step` (none: []).

        A checkpoint saved before the sampling mode was recorded counts as 'shuffled_epochs'.
        """
        if saved is None:
            return []
        current = self.data_state(step)
        saved = dict(saved)
        saved.setdefault("sampling", "shuffled_epochs")
        return [f"{key} {saved.get(key, '(none)')} -> {current[key]}" for key in current
                if (key in saved or key.startswith("rare_class_"))
                and saved.get(key) != current[key]]

    def _example(self, step: int, position: int, index: int) -> dict:
        example = read_example(self._source, index, f"training example {index}")
        check_labels(
            example["label"], self._num_classes, datasets.void_label(self._config),
            where=f"training example {index}",
        )
        example = _select(example, self._instance_check, f"training example {index}")
        rng = np.random.default_rng([self._seed, _AUGMENT_STREAM, step, position])
        return augment.train_augment(example, rng, self._config)

    def batch(self, step: int) -> dict:
        """This process's part of global batch `step` (deterministic)."""
        indices = [self.example_index(step, p) for p in self._positions]
        examples = [self._example(step, p, i) for p, i in zip(self._positions, indices)]
        images = np.stack([e["image"] for e in examples])
        batch = {
            "image": augment.normalize_image(images, self._config.mean, self._config.std),
            "label": np.stack([e["label"] for e in examples]).astype(np.int32),
        }
        if self._instance_check is not None:
            batch["instance"] = np.stack([e["instance"] for e in examples]).astype(np.int32)
        return batch

    def iterate(self, start_step: int, num_steps: int | None = None) -> Iterator[dict]:
        """Yields batches for steps start_step, start_step + 1, ..., prepared ahead in threads.

        Up to max(`data_config.prefetch`, workers) batches are built concurrently by
        `worker_count(num_workers)` threads (PIL and numpy release the GIL), always yielded in
        step order.
        """
        end = None if num_steps is None else start_step + num_steps
        workers = worker_count(self._config.num_workers)
        ahead = max(workers, self._config.prefetch)
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="input") as pool:
            pending = []
            step = start_step
            try:
                while end is None or step < end or pending:
                    while len(pending) < ahead and (end is None or step < end):
                        pending.append(pool.submit(self.batch, step))
                        step += 1
                    # A worker's exception (an unreadable example) is raised here, in step order.
                    yield pending.pop(0).result()
            finally:  # stopped (an error, or the consumer closed us): build nothing more
                for future in pending:
                    future.cancel()


def available_cores() -> int:
    """CPU cores this process may run on: its affinity mask where the OS has one (a job
    scheduler's or `taskset`'s limit), else the machine's count."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def worker_count(num_workers: int) -> int:
    """Input threads for `config.data.num_workers`: that many, or with 0 ('auto', the default)
    one per core available to this process (`available_cores`), so an accelerator host's cores
    all decode and augment while the device computes."""
    check_num_workers(num_workers)
    return int(num_workers) or available_cores()


def check_num_workers(num_workers: int) -> None:
    if num_workers < 0:
        raise ValueError(f"config.data.num_workers must be >= 0 (0: one input thread per CPU "
                         f"core available, {available_cores()} here), got {num_workers}.")


def padded_size(height: int, width: int, *, pad_multiple: int, pad_size=()) -> tuple[int, int]:
    """The canvas an image of (height, width) is padded to for whole-image prediction.

    `pad_size` (H, W) if given (the image must fit: an error says which setting to change),
    else each side rounded up to a multiple of `pad_multiple` (1 or 0: no padding).
    """
    if pad_size:
        target = tuple(int(s) for s in pad_size)
        if height > target[0] or width > target[1]:
            raise ConfigError(
                f"An image of {height}x{width} does not fit config.evaluation.pad_size={target}; "
                f"raise pad_size to at least ({height}, {width}), or set pad_size=() to pad each "
                "image to a multiple of config.evaluation.pad_multiple.")
        return target
    multiple = max(1, int(pad_multiple))
    return (-(-height // multiple) * multiple, -(-width // multiple) * multiple)


@dataclasses.dataclass(frozen=True)
class PlannedBatch:
    """One evaluation batch: the source indices of its global batch (-1: padding) and its canvas."""

    indices: tuple[int, ...]
    canvas: tuple[int, int]


def example_sizes(source) -> list[tuple[int, int]]:
    """(H, W) of every example: from `source.image_sizes()` if it has one, else by reading each."""
    if hasattr(source, "image_sizes"):
        return [tuple(s) for s in source.image_sizes()]
    return [tuple(source[i]["label"].shape[:2]) for i in range(len(source))]


def plan_eval_batches(source, global_batch_size: int, *, pad_multiple: int = 1,
                      pad_size=()) -> list[PlannedBatch]:
    """Groups the split into batches of one padded size each, covering every example once.

    With `pad_size` every image shares that canvas and the split is batched in order, without
    reading it first. Otherwise each image's canvas is its size rounded up to `pad_multiple`
    (`padded_size`); images are grouped by canvas (groups in order of first
    appearance, source order inside a group), so an image's prediction never depends on which
    images share its batch, and each distinct canvas compiles the evaluation step once. The last
    batch of each group is filled up with padding entries (-1).
    """
    if pad_size:
        canvas = tuple(int(v) for v in pad_size)
        groups = {canvas: list(range(len(source)))}
    else:
        groups = {}
        for index, (height, width) in enumerate(example_sizes(source)):
            canvas = padded_size(height, width, pad_multiple=pad_multiple)
            groups.setdefault(canvas, []).append(index)
    plan = []
    for canvas, indices in groups.items():
        for first in range(0, len(indices), global_batch_size):
            chunk = indices[first:first + global_batch_size]
            chunk = chunk + [-1] * (global_batch_size - len(chunk))
            plan.append(PlannedBatch(tuple(chunk), canvas))
    return plan


def _pad_example(example: dict, canvas, ignore_label: int, where: str) -> dict:
    """Pads bottom/right to `canvas`: labels with ignore_label, instances with 0; keeps the size."""
    height, width = example["label"].shape
    if example["image"].shape[:2] != (height, width):
        raise DataError(f"{where}: image is {example['image'].shape[:2]} but its labels are "
                        f"{(height, width)}; they must have the same height and width.")
    padded_size(height, width, pad_multiple=1, pad_size=canvas)  # raises if it does not fit
    pad = ((0, canvas[0] - height), (0, canvas[1] - width))
    padded = {
        "image": np.pad(example["image"], pad + ((0, 0),)),  # normalised later: see eval_batches
        "label": np.pad(example["label"], pad, constant_values=ignore_label),
        "size": np.array([height, width], np.int32),
    }
    if "instance" in example:
        padded["instance"] = np.pad(example["instance"], pad)
    return padded


def eval_batches(
    source,
    data_config,
    *,
    global_batch_size: int,
    num_classes: int,
    process_index: int = 0,
    process_count: int = 1,
    instance_check=None,
    plan: list[PlannedBatch] | None = None,
) -> Iterator[dict]:
    """Yields this process's part of each evaluation batch of `plan`, covering the split once.

    `plan` defaults to `plan_eval_batches(source, global_batch_size)` (exact sizes, no padding
    beyond the grouping). Each batch holds 'image' float32 [b, H, W, 3] (normalised, padded with
    0, the normalised mean colour), 'label' int32 [b, H, W] (padded with `ignore_label`, so
    padding counts in no metric), 'size' int32 [b, 2] (each image's own height and width, to
    crop predictions back) and 'index' int32 [b] (source indices, -1 for padding entries, whose
    labels are all ignore_label). Images are not augmented. With `instance_check`, batches also
    hold the checked 'instance' maps (as `TrainLoader`), padded with 0.
    """
    positions = _local_positions(global_batch_size, process_index, process_count)
    if plan is None:
        plan = plan_eval_batches(source, global_batch_size)
    ignore = datasets.void_label(data_config)
    for planned in plan:
        if len(planned.indices) != global_batch_size:
            raise ValueError(f"A planned batch has {len(planned.indices)} entries but the global "
                             f"batch size is {global_batch_size}; plan with the same batch size.")
        examples = []
        for p in positions:
            index = planned.indices[p]
            if index >= 0:
                where = f"evaluation example {index}"
                example = read_example(source, index, where)
                check_labels(example["label"], num_classes, ignore, where=where)
                example = _select(example, instance_check, where)
                example["image"] = augment.normalize_image(
                    example["image"], data_config.mean, data_config.std)
                examples.append(_pad_example(example, planned.canvas, ignore, where))
            else:
                padding = {"image": np.zeros(planned.canvas + (3,), np.float32),
                           "label": np.full(planned.canvas, ignore, np.int32),
                           "size": np.zeros(2, np.int32)}
                if instance_check is not None:
                    padding["instance"] = np.zeros(planned.canvas, np.int32)
                examples.append(padding)
        batch = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
        batch["index"] = np.array([planned.indices[p] for p in positions], np.int32)
        yield batch
