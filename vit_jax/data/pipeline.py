"""grain pipelines: an endless, seeded, checkpointable training iterator and a padded, masked evaluation pass.

Multi-host: every process builds the same globally shuffled stream and keeps its own contiguous block of each
global batch (process p of P: elements p*b .. (p+1)*b - 1 for a per-process batch b), so the processes' batches,
placed in process order as the global array is, are exactly the global batch a single process would read, in the
same order: whatever pairs or numbers examples by their row in the batch (Mixup's mirror, the step's per-row draws)
does the same on any process count. A position in that stream (examples consumed) means the same for any number of
processes, so a run resumes on another process count where an uninterrupted run on that layout would be.
Evaluation shards the split every `process_count`-th example and pads with masked examples so that every process
runs the same number of steps and every example is counted exactly once (sums: order does not matter there).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Any

import grain
import numpy as np
from absl import flags

from vit_jax.data.in_memory import batchable, batched_train_dataset
from vit_jax.data.preprocessing import Preprocess

Batch = dict[str, np.ndarray]


def train_iterator(
    source: Sequence[dict[str, Any]],
    preprocess: Preprocess,
    *,
    batch_size: int,
    seed: int,
    process_index: int = 0,
    process_count: int = 1,
    start: int = 0,
    num_threads: int = 2,
    num_workers: int = 0,
    uint8: bool = False,
    repeats: int = 1,
) -> grain.DatasetIterator:
    """Endless per-process batches `{'image', 'label'}` of `batch_size` (the global batch / process_count).

    Each epoch is reshuffled (seeded by `seed` and the epoch); augmentation randomness is seeded by the element's
    global index. `start`: examples of the global stream already consumed (a resumed run's position, saved under
    any process count): the batches are those an uninterrupted run would read next. `num_workers > 0` moves
    preprocessing to that many worker processes (which read absl flags: run from `app.run`, or mark flags as
    parsed first). `uint8`: per-image pipelines yield the augmented uint8 images, for the step to turn into the
    model's values (`Preprocess.pixels_on_device`); a split served a batch at a time yields float32 either way.
    `repeats > 1`: repeated augmentation (`RepeatedEpochs`).
    """
    if repeats < 1:
        raise ValueError(f"repeats must be an integer >= 1; got {repeats!r}")
    if batchable(source, preprocess):  # the same stream semantics, a batch at a time (vit_jax.data.in_memory)
        batches = batched_train_dataset(source, preprocess, batch_size=batch_size, seed=seed, repeats=repeats,
                                        process_index=process_index, process_count=process_count, start=start)
        return iter(read(batches, num_threads, num_workers))
    dataset = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    if repeats > 1:
        dataset = grain.MapDataset.range(2**62).seed(seed).map(RepeatedEpochs(dataset, len(source), repeats))
    dataset = dataset.random_map(preprocess.train_view if uint8 else preprocess.train)
    local = dataset[start:].batch(batch_size, drop_remainder=True)[process_index::process_count]  # lazy: only
    return iter(read(local, num_threads, num_workers))  # this process's block of each global batch is computed


class RepeatedEpochs:
    """Repeated augmentation (DeiT's RASampler, timm's `--aug-repeats`): epoch e of N examples is the first
    ceil(N / repeats) examples of the shuffled stream's epoch e, each `repeats` times in a row (augmented anew each
    time: draws are seeded by the position), so a batch sees each image under several augmentations and an epoch
    sees 1/repeats of the split. Maps a stream position to the example it reads."""

    def __init__(self, shuffled: grain.MapDataset, epoch_size: int, repeats: int):
        self.shuffled, self.epoch_size, self.repeats = shuffled, epoch_size, repeats

    def __call__(self, position: int) -> Any:
        epoch, within = divmod(int(position), self.epoch_size)
        return self.shuffled[epoch * self.epoch_size + within // self.repeats]


def read(dataset: grain.MapDataset, num_threads: int, num_workers: int = 0) -> grain.IterDataset:
    """`dataset` read by `num_threads` threads, prefetched, and with `num_workers > 0` in that many worker
    processes (which read absl flags: run from `app.run`, or flags are marked as parsed here)."""
    iterable = dataset.to_iter_dataset(grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads))
    if num_workers > 0:
        if not flags.FLAGS.is_parsed():  # grain's worker processes read absl flags
            flags.FLAGS.mark_as_parsed()
        iterable = iterable.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
    return iterable


def num_eval_steps(num_examples: int, batch_size: int, process_count: int = 1) -> int:
    """Steps for every process to see its whole shard (the largest shard decides) at `batch_size` per process."""
    return max(1, math.ceil(math.ceil(num_examples / process_count) / batch_size))


def pad_batch(examples: Sequence[Batch], batch_size: int) -> Batch:
    """Stacks `examples` and pads them to `batch_size` with zeros; `mask` is 1 for real examples, 0 for padding."""
    batch = {key: np.stack([e[key] for e in examples]) for key in examples[0]}
    num_pad = batch_size - len(examples)
    padded = {key: np.concatenate([v, np.zeros((num_pad, *v.shape[1:]), v.dtype)]) for key, v in batch.items()}
    padded["mask"] = np.concatenate([np.ones(len(examples), np.float32), np.zeros(num_pad, np.float32)])
    return padded


def eval_batches(
    source: Sequence[dict[str, Any]],
    preprocess: Preprocess,
    *,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
) -> Iterator[Batch]:
    """This process's share of `source`, once, in order, as `num_eval_steps` batches of `batch_size` with a `mask`."""
    local = grain.MapDataset.source(source)[process_index::process_count].map(preprocess.eval)
    batches = local.batch(batch_size, batch_fn=lambda examples: pad_batch(examples, batch_size))
    read_options = grain.ReadOptions(num_threads=num_threads, prefetch_buffer_size=2 * num_threads)
    num_steps = num_eval_steps(len(source), batch_size, process_count)
    yield from batches.to_iter_dataset(read_options)
    if len(batches) < num_steps:  # a shorter shard than another process's: all-padding batches keep steps in sync
        empty = pad_batch([preprocess.eval(source[0])], batch_size)
        empty = {key: np.zeros_like(v) for key, v in empty.items()}
        for _ in range(num_steps - len(batches)):
            yield empty


def rows_in_source_order(batches: Iterable[Batch], run: Callable[[Batch], tuple[Any, Any, Any]], local_batch: int,
                         process_count: int) -> tuple[Any, np.ndarray]:
    """Every real example's outputs and label in the order of the source `eval_batches` read, whatever the number
    of processes: `run(batch)` takes this process's batch and returns the global batch's outputs (a tree of arrays
    with a row per example), labels and mask, all processes' rows in process order."""
    import jax  # the data modules import no JAX at load (grain's worker processes import them)

    outputs, labels, order = [], [], []
    for step, batch in enumerate(batches):
        x, y, mask = jax.tree.map(np.asarray, run(batch))
        # global row g is row g % local_batch of process g // local_batch's batch `step`; process p reads the
        # examples p, p + process_count, ... (`eval_batches`)
        rows = np.arange(len(mask))
        index = rows // local_batch + process_count * (step * local_batch + rows % local_batch)
        real = mask > 0
        outputs.append(jax.tree.map(lambda a, keep=real: a[keep], x))
        labels.append(y[real])
        order.append(index[real])
    order = np.argsort(np.concatenate(order), kind="stable")
    gathered = jax.tree.map(lambda *parts: np.concatenate(parts)[order], *outputs)
    return gathered, np.concatenate(labels).astype(np.int32)[order]
