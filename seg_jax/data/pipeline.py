"""The numpy input pipeline: deterministic training batches and padded evaluation batches.

Training order and augmentation are pure functions of `(seed, step)`: the example at position
`j` of global batch `step` is element `(step * B + j) mod n` of the epoch's permutation (seeded by
the epoch number), and its augmentation uses a generator seeded by `(seed, step, j)`. So a resumed
run sees exactly the batches of an uninterrupted one, and the same global batch is produced
whatever the number of processes (each process builds only its own slice of positions).
"""

import concurrent.futures
from typing import Iterator

import numpy as np

from seg_jax.data import augment

# Distinct streams of randomness drawn from the one config seed.
_SHUFFLE_STREAM = 0
_AUGMENT_STREAM = 1


def check_labels(label: np.ndarray, num_classes: int, ignore_label: int, where: str) -> None:
    """Raises ValueError if `label` has an id outside [0, num_classes) that is not ignore_label."""
    bad = (label != ignore_label) & ((label < 0) | (label >= num_classes))
    if np.any(bad):
        values = sorted(set(np.unique(label[bad]).tolist()))[:10]
        raise ValueError(
            f"{where}: label ids {values} are outside [0, {num_classes}) and not the ignore label "
            f"{ignore_label}. Fix the dataset's labels, or set config.data.num_classes / "
            f"config.data.ignore_label to match the data."
        )


def _select(example: dict, instance_check, where: str) -> dict:
    """The arrays a batch needs from a source example: image, label (and instance, checked)."""
    selected = {"image": example["image"], "label": example["label"].astype(np.int32)}
    if instance_check is not None:
        if "instance" not in example:
            raise ValueError(f"{where} has no instance ids; a panoptic model needs a dataset "
                             "with instance masks.")
        selected["instance"] = example["instance"].astype(np.int32)
        instance_check(selected["label"], selected["instance"], where=where)
    return selected


def _local_positions(global_batch_size: int, process_index: int, process_count: int) -> range:
    if global_batch_size % process_count:
        raise ValueError(
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
    ):
        if len(source) == 0:
            raise ValueError("The training split is empty.")
        self._source = source
        self._config = data_config
        self._batch_size = global_batch_size
        self._seed = seed
        self._num_classes = num_classes
        self._positions = _local_positions(global_batch_size, process_index, process_count)
        self._permutations: dict[int, np.ndarray] = {}
        self._instance_check = instance_check

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:
            rng = np.random.default_rng([self._seed, _SHUFFLE_STREAM, epoch])
            # Only two epochs are ever live at once (a batch can straddle an epoch boundary).
            self._permutations = {e: p for e, p in self._permutations.items() if e >= epoch - 1}
            self._permutations[epoch] = rng.permutation(len(self._source))
        return self._permutations[epoch]

    def example_index(self, step: int, position: int) -> int:
        """The source index of the example at `position` of global batch `step`."""
        flat = step * self._batch_size + position
        epoch, offset = divmod(flat, len(self._source))
        return int(self._permutation(epoch)[offset])

    def _example(self, step: int, position: int, index: int) -> dict:
        example = self._source[index]
        check_labels(
            example["label"], self._num_classes, self._config.ignore_label,
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

        Up to `data_config.prefetch` batches are built concurrently by `num_workers` threads
        (PIL and numpy release the GIL), always yielded in step order.
        """
        end = None if num_steps is None else start_step + num_steps
        ahead = max(1, self._config.prefetch)
        workers = max(1, self._config.num_workers)
        with concurrent.futures.ThreadPoolExecutor(workers, thread_name_prefix="input") as pool:
            pending = []
            step = start_step
            while end is None or step < end or pending:
                while len(pending) < ahead and (end is None or step < end):
                    pending.append(pool.submit(self.batch, step))
                    step += 1
                yield pending.pop(0).result()


def eval_batches(
    source,
    data_config,
    *,
    global_batch_size: int,
    num_classes: int,
    process_index: int = 0,
    process_count: int = 1,
    instance_check=None,
) -> Iterator[dict]:
    """Yields this process's part of each evaluation batch, covering the split once, in order.

    The last batch is padded up to `global_batch_size` with examples whose labels are all
    `ignore_label`, so they count in no metric. Images are normalised and not augmented. With
    `instance_check`, batches also hold the checked 'instance' maps (as `TrainLoader`).
    """
    positions = _local_positions(global_batch_size, process_index, process_count)
    num_batches = -(-len(source) // global_batch_size)
    template = None
    for b in range(num_batches):
        examples = []
        for p in positions:
            index = b * global_batch_size + p
            if index < len(source):
                example = source[index]
                check_labels(
                    example["label"], num_classes, data_config.ignore_label,
                    where=f"evaluation example {index}",
                )
                template = template or example
                examples.append(_select(example, instance_check, f"evaluation example {index}"))
            else:
                template = template or source[0]
                padding = {"image": np.zeros_like(template["image"]),
                           "label": np.full(template["label"].shape, data_config.ignore_label, np.int32)}
                if instance_check is not None:
                    padding["instance"] = np.zeros(template["label"].shape, np.int32)
                examples.append(padding)
        sizes = sorted({e["image"].shape[:2] for e in examples})
        if len(sizes) > 1:
            raise ValueError(
                f"Evaluation batch {b} mixes image sizes {sizes}: evaluation stacks whole images, "
                "so they must share one size (resize the evaluation images, or use an "
                "eval_batch_size equal to the device count with same-size images per batch).")
        batch = {
            "image": augment.normalize_image(np.stack([e["image"] for e in examples]),
                                             data_config.mean, data_config.std),
            "label": np.stack([e["label"] for e in examples]),
        }
        if instance_check is not None:
            batch["instance"] = np.stack([e["instance"] for e in examples])
        yield batch
