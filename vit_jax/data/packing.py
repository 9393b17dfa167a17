"""Patch n' pack (NaViT): images at their own sizes become token sets, packed greedily into fixed-length sequences.

Per image: a size (drawn from `image_sizes`, or the image's own, shrunk to fit `max_grid`), the base
`Preprocess` at that size (crop, flip, value range), then patches (flattened as `vit_jax.models.patching.patchify`),
their grid coordinates, and in training random token dropping. The token sets are packed by grain's first-fit
packer (`FirstFitPackIterDataset`: `num_bins` sequences open at once, each image into the first with room for it,
at most `max_images` per sequence), so the iterator stays deterministic and checkpointable. A packed example is

    patches (L, ph*pw*C) float32, image_ids (L,) int32 (1..K, 0 = padding), coords (L, 2) int32,
    image_grids (K, 2) int32, label (K,) int32, mask (K,) float32 (1 = a real image in that slot),

the inputs of `vit_jax.models.navit.NaViT`. Padding is counted per batch by `padding_fraction` (the trainer logs
it as `train/padding_fraction`).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import grain
import numpy as np

from vit_jax.data.pipeline import read
from vit_jax.data.preprocessing import Preprocess
from vit_jax.models.patching import patchify

Batch = dict[str, np.ndarray]
# A training drop rate: one rate for every image, (rate at the fewest tokens, rate at the most) linear in the
# image's token count (NaViT's resolution-dependent dropping), or any function of the token count.
DropRate = float | tuple[float, float] | Callable[[int], float]
_EVAL_SIZE_SEED = 20_231_013  # eval images get their size from (this, index): the same every evaluation


@dataclasses.dataclass(frozen=True)
class PackedPreprocess:
    """One image -> its token set `{patches (n, P), coords (n, 2), grid (1, 2), label (1,)}`.

    Attributes:
      base: crop / flip / value range; its `image_size` is replaced by each image's own size.
      patch_size: `(ph, pw)`.
      image_sizes: `(h, w)` sizes (multiples of the patch size) drawn uniformly per image, in training at random
        and in evaluation by the example's index; `()`: each image's own size, shrunk to fit `max_grid` with its
        aspect ratio kept and rounded down to whole patches.
      max_grid: the largest `(rows, columns)` grid an image may have.
      drop_rate: training token dropping (see `DropRate`); evaluation keeps every token.
    """

    base: Preprocess
    patch_size: tuple[int, int]
    max_grid: tuple[int, int]
    image_sizes: tuple[tuple[int, int], ...] = ()
    drop_rate: DropRate = 0.0

    def __post_init__(self) -> None:
        ph, pw = self.patch_size
        for h, w in self.image_sizes:
            if h % ph or w % pw or h <= 0 or w <= 0:
                raise ValueError(f"image size {h}x{w} is not a positive multiple of the patch size {ph}x{pw}")
            if h // ph > self.max_grid[0] or w // pw > self.max_grid[1]:
                raise ValueError(f"image size {h}x{w} makes a {h // ph}x{w // pw} grid, larger than the largest "
                                 f"allowed grid {self.max_grid[0]}x{self.max_grid[1]}")
        rates = self.drop_rate if isinstance(self.drop_rate, tuple) else (self.drop_rate,)
        if not callable(self.drop_rate) and not all(0.0 <= r < 1.0 for r in rates):
            raise ValueError(f"drop_rate must be in [0, 1) (or a pair of such rates); got {self.drop_rate!r}")

    @property
    def max_tokens(self) -> int:
        """The most tokens one image can have."""
        if self.image_sizes:
            return max((h // self.patch_size[0]) * (w // self.patch_size[1]) for h, w in self.image_sizes)
        return self.max_grid[0] * self.max_grid[1]

    def train(self, example: dict[str, Any], rng: np.random.Generator) -> Batch:
        size = self._size(example["image"], rng)
        processed = dataclasses.replace(self.base, image_size=size).train(example, rng)
        return self._tokens(processed, rng)

    def eval(self, index: int, example: dict[str, Any]) -> Batch:
        size = self._size(example["image"], np.random.default_rng([_EVAL_SIZE_SEED, index]))
        processed = dataclasses.replace(self.base, image_size=size).eval(example)
        return self._tokens(processed, None)

    def _size(self, image: np.ndarray, rng: np.random.Generator) -> tuple[int, int]:
        if self.image_sizes:
            return tuple(self.image_sizes[int(rng.integers(len(self.image_sizes)))])
        return native_size(image.shape[:2], self.patch_size, self.max_grid)

    def _tokens(self, processed: dict[str, np.ndarray], rng: np.random.Generator | None) -> Batch:
        image = processed["image"]
        patches = patchify(image[None], self.patch_size)[0]
        gh, gw = patches.shape[:2]
        rows, cols = np.divmod(np.arange(gh * gw), gw)
        keep = np.arange(gh * gw)
        if rng is not None:
            rate = drop_rate_for(self.drop_rate, gh * gw, self._token_range())
            keep = np.sort(rng.permutation(gh * gw)[: tokens_kept(gh * gw, rate)])
        return {
            "patches": patches.reshape(gh * gw, -1)[keep],
            "coords": np.stack([rows, cols], axis=1)[keep].astype(np.int32),
            "grid": np.array([[gh, gw]], np.int32),
            "label": np.array([processed["label"]], np.int32),
        }

    def _token_range(self) -> tuple[int, int]:
        if self.image_sizes:
            counts = [(h // self.patch_size[0]) * (w // self.patch_size[1]) for h, w in self.image_sizes]
            return min(counts), max(counts)
        return 1, self.max_tokens


def native_size(image_hw: Sequence[int], patch_size: tuple[int, int], max_grid: tuple[int, int]) -> tuple[int, int]:
    """An image's own size in whole patches, scaled down (aspect ratio kept) to fit `max_grid`, at least 1x1."""
    (h, w), (ph, pw) = image_hw, patch_size
    scale = min(1.0, max_grid[0] * ph / h, max_grid[1] * pw / w)
    return max(1, int(h * scale) // ph) * ph, max(1, int(w * scale) // pw) * pw


def drop_rate_for(drop_rate: DropRate, num_tokens: int, token_range: tuple[int, int]) -> float:
    """The drop rate of an image with `num_tokens` tokens."""
    if callable(drop_rate):
        return float(drop_rate(num_tokens))
    if isinstance(drop_rate, tuple):
        low, high = token_range
        t = 0.0 if high == low else (num_tokens - low) / (high - low)
        return drop_rate[0] + min(max(t, 0.0), 1.0) * (drop_rate[1] - drop_rate[0])
    return float(drop_rate)


def tokens_kept(num_tokens: int, rate: float) -> int:
    """How many of an image's tokens survive dropping at `rate`: `floor(rate * n)` are dropped, one always stays."""
    return max(1, num_tokens - math.floor(rate * num_tokens))


def packer(parent: grain.IterDataset, *, seq_len: int, max_images: int, num_bins: int, seed: int, shuffle: bool
           ) -> grain.IterDataset:
    """First-fit packing of token sets into `seq_len`-token sequences of at most `max_images` images."""
    lengths = {"patches": seq_len, "coords": seq_len, "grid": max_images, "label": max_images}
    packed = grain.experimental.FirstFitPackIterDataset(
        parent, length_struct=lengths, num_packing_bins=num_bins, seed=seed, shuffle_bins=shuffle,
        max_sequences_per_bin=max_images,
    )
    return packed.map(model_inputs)


def model_inputs(packed: dict[str, np.ndarray]) -> Batch:
    """grain's packed features (with `*_segment_ids`) -> NaViT's inputs, labels and the image-slot mask."""
    return {
        "patches": packed["patches"].astype(np.float32),
        "image_ids": packed["patches_segment_ids"].astype(np.int32),
        "coords": packed["coords"].astype(np.int32),
        "image_grids": packed["grid"].astype(np.int32),
        "label": packed["label"].astype(np.int32),
        "mask": (packed["label_segment_ids"] > 0).astype(np.float32),
    }


def empty_sequences(count: int, *, seq_len: int, max_images: int, patch_dim: int) -> Batch:
    """`count` all-padding sequences (mask 0): to pad an evaluation batch or keep processes in step."""
    return {
        "patches": np.zeros((count, seq_len, patch_dim), np.float32),
        "image_ids": np.zeros((count, seq_len), np.int32),
        "coords": np.zeros((count, seq_len, 2), np.int32),
        "image_grids": np.zeros((count, max_images, 2), np.int32),
        "label": np.zeros((count, max_images), np.int32),
        "mask": np.zeros((count, max_images), np.float32),
    }


def padding_fraction(image_ids: np.ndarray) -> float:
    """The fraction of a batch's token slots that hold padding."""
    return float(np.mean(np.asarray(image_ids) == 0))


def packed_train_iterator(
    source: Sequence[dict[str, Any]],
    preprocess: PackedPreprocess,
    *,
    batch_size: int,
    seq_len: int,
    max_images: int,
    seed: int,
    num_bins: int = 0,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
    num_workers: int = 0,
) -> grain.DatasetIterator:
    """Endless per-process batches of `batch_size` packed sequences; reshuffled every epoch, seeded, resumable
    with `get_state()`/`set_state()` like `vit_jax.data.pipeline.train_iterator`. Each process packs its own
    share of the images. `num_bins`: sequences filled at once (0: `batch_size`); more bins, less padding."""
    if preprocess.max_tokens > seq_len:
        raise ValueError(f"an image can have {preprocess.max_tokens} tokens, more than a packed sequence's "
                         f"{seq_len}: raise seq_len or shrink the largest image size")
    dataset = grain.MapDataset.source(source).seed(seed).shuffle().repeat()
    dataset = dataset.random_map(preprocess.train)[process_index::process_count]
    packed = packer(read(dataset, num_threads, num_workers), seq_len=seq_len, max_images=max_images, num_bins=num_bins or batch_size, seed=seed,
                    shuffle=True)
    return iter(packed.batch(batch_size, drop_remainder=True))


def packed_eval_batches(
    source: Sequence[dict[str, Any]],
    preprocess: PackedPreprocess,
    *,
    batch_size: int,
    seq_len: int,
    max_images: int,
    process_index: int = 0,
    process_count: int = 1,
    num_threads: int = 2,
) -> Iterator[Batch]:
    """This process's share of `source`, every image once, packed in order into batches of `batch_size`
    sequences (the last padded with empty sequences). The number of batches depends on the images' sizes; the
    trainer keeps processes in step (`vit_jax.data.pipeline.in_step`)."""
    local = grain.MapDataset.source(source)[process_index::process_count]
    tokens = local.map_with_index(lambda i, example: preprocess.eval(process_index + i * process_count, example))
    packed = packer(read(tokens, num_threads), seq_len=seq_len, max_images=max_images, num_bins=batch_size, seed=0, shuffle=False)
    for batch in packed.batch(batch_size, drop_remainder=False):
        missing = batch_size - len(batch["mask"])
        if missing:
            patch_dim = batch["patches"].shape[-1]
            empty = empty_sequences(missing, seq_len=seq_len, max_images=max_images, patch_dim=patch_dim)
            batch = {key: np.concatenate([value, empty[key]]) for key, value in batch.items()}
        yield batch

