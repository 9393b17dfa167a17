"""Training batches of a split held in memory at the training size, augmented a whole batch at a time in NumPy.

The per-image pipeline (`pipeline.train_iterator`) spends about 0.3 ms of Python per image in grain's element
machinery (an index shuffle, a random generator and a map per image): 20-40 ms per batch of 64, as long as the
digits model's step on 2 cores, on the same cores. When the split is already in memory as equal-size images at
the training size (`InMemorySource` with the resize done once) and the augmentation is a shift (pad and crop)
and/or a flip, a batch is one gather and a few array operations instead (`batchable` says when).

The stream is the per-image pipeline's in everything but the draws: each epoch is a seeded permutation of the
split, global element q is image `permutation(q // N)[q % N]`, its shift and flip are drawn from `(seed, q)`
alone, and process p of P keeps the block p*b .. (p+1)*b - 1 of each global batch. With repeated augmentation
(`repeats`: see `pipeline.RepeatedEpochs`) element q is `permutation(q // N)[(q % N) // repeats]`. So any process
count reads the same global batches, in the same order, and a run resumed at `start` examples reads what an uninterrupted one would.
"""

from __future__ import annotations

from typing import Any

import grain
import numpy as np

from vit_jax.data.preprocessing import Preprocess
from vit_jax.data.sources import InMemorySource

MASK64 = (1 << 64) - 1


def batchable(source: Any, preprocess: Preprocess) -> bool:
    """Whether `source` can be served a batch at a time: in memory, images (not videos) all at the training size,
    and augmentation that does not resample (no Inception or simple crop) or work image by image (RandAugment,
    AutoAugment, 3-Augment, ColorJitter)."""
    if (not isinstance(source, InMemorySource) or not len(source) or preprocess.train_crop not in ("none", "pad")
            or preprocess.rand_augment is not None or preprocess.auto_augment is not None
            or preprocess.three_augment or preprocess.color_jitter):
        return False
    shapes = {np.shape(example["image"]) for example in source}
    return len(shapes) == 1 and len(next(iter(shapes))) == 3 and next(iter(shapes))[:2] == tuple(preprocess.image_size)


def mix64(values: np.ndarray) -> np.ndarray:
    """SplitMix64's finaliser on uint64: well-mixed bits from a counter, vectorised."""
    z = values.astype(np.uint64)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
    return z ^ (z >> np.uint64(31))


def element_bits(seed: int, positions: np.ndarray) -> np.ndarray:
    """64 random bits per global stream position, a function of `(seed, position)` only."""
    key = int(mix64(np.array([seed & MASK64], np.uint64))[0])
    with np.errstate(over="ignore"):
        return mix64(positions.astype(np.uint64) ^ np.uint64(key))


def shift(images: np.ndarray, top: np.ndarray, left: np.ndarray, padding: int) -> np.ndarray:
    """`out[b, i, j] = images[b, i + top[b], j + left[b]]`, zero outside: `pad_and_random_crop` for a batch."""
    b, h, w = images.shape[:3]
    padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
    rows = (top + padding)[:, None] + np.arange(h)
    cols = (left + padding)[:, None] + np.arange(w)
    return padded[np.arange(b)[:, None, None], rows[:, :, None], cols[:, None, :]]


class InMemoryBatches:
    """`batch(k)`: this process's share of global batch k of the stream that starts `start` examples in."""

    def __init__(self, source: InMemorySource, preprocess: Preprocess, *, batch_size: int, seed: int,
                 process_index: int, process_count: int, start: int, repeats: int = 1):
        self.images = np.stack([example["image"] for example in source])
        self.labels = np.asarray([example["label"] for example in source], np.int32)
        self.preprocess, self.seed, self.start, self.repeats = preprocess, seed, start, repeats
        self.global_batch = batch_size * process_count
        self.offsets = process_index * batch_size + np.arange(batch_size)  # this process's block of a global batch
        self._permutations: dict[int, np.ndarray] = {}

    def permutation(self, epoch: int) -> np.ndarray:
        if epoch not in self._permutations:  # threads may race here: both compute the same array
            if len(self._permutations) > 2:
                self._permutations.clear()
            self._permutations[epoch] = np.random.default_rng([self.seed, epoch]).permutation(len(self.labels))
        return self._permutations[epoch]

    def batch(self, k: int) -> dict[str, np.ndarray]:
        positions = self.start + k * self.global_batch + self.offsets
        epochs, within = np.divmod(positions, len(self.labels))
        indices = np.empty_like(within)
        for epoch in np.unique(epochs):
            at = epochs == epoch
            indices[at] = self.permutation(int(epoch))[within[at] // self.repeats]
        images = self.images[indices]
        bits = element_bits(self.seed, positions)
        pp = self.preprocess
        if pp.train_crop == "pad" and pp.crop_padding:
            span = np.uint64(2 * pp.crop_padding + 1)
            top = (bits % span).astype(np.int64) - pp.crop_padding
            left = ((bits >> np.uint64(21)) % span).astype(np.int64) - pp.crop_padding
            images = shift(images, top, left, pp.crop_padding)
        if pp.flip:
            flipped = ((bits >> np.uint64(42)) & np.uint64(1)).astype(bool)
            images[flipped] = images[flipped, :, ::-1]
        return {"image": pp.pixels(images), "label": self.labels[indices]}


def batched_train_dataset(source: InMemorySource, preprocess: Preprocess, *, batch_size: int, seed: int,
                          process_index: int = 0, process_count: int = 1, start: int = 0,
                          repeats: int = 1) -> grain.MapDataset:
    """An endless grain dataset of this process's batches (its position checkpoints like any grain iterator's)."""
    batches = InMemoryBatches(source, preprocess, batch_size=batch_size, seed=seed, process_index=process_index,
                              process_count=process_count, start=start, repeats=repeats)
    return grain.MapDataset.range(2**62).map(batches.batch)
