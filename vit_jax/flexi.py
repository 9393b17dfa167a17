"""FlexiViT (Beyer et al. 2023): one model trained at a patch size drawn at random each step.

The model keeps one patch kernel and one position-embedding table (`posemb_grid`) and resizes them on the fly
(PI-resize for the kernel, bilinear for the table: see `VisionTransformer.__call__(patch_size=...)`). The draw
depends only on the seed and the step, so a resumed run draws the same sizes; the train step is compiled once per
patch size and reused.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from vit_jax.models.patching import as_patch_size

PatchSize = tuple[int, int]


def flexi_patch_sizes(sizes: Sequence[int | Sequence[int]]) -> tuple[PatchSize, ...]:
    """`(1, 2, (4, 8))` -> `((1, 1), (2, 2), (4, 8))`."""
    return tuple(as_patch_size(tuple(s) if isinstance(s, list) else s) for s in sizes)


def flexi_probabilities(sizes: Sequence[PatchSize], probabilities: Sequence[float]) -> np.ndarray:
    """The draw's probabilities: uniform when none are given, else normalised (must be non-negative, one per size)."""
    if not probabilities:
        return np.full(len(sizes), 1.0 / len(sizes))
    p = np.asarray(probabilities, np.float64)
    if p.shape != (len(sizes),) or (p < 0).any() or p.sum() <= 0:
        raise ValueError(f"probabilities {tuple(probabilities)} must be {len(sizes)} non-negative numbers, one per "
                         f"patch size {tuple(sizes)}, not all zero")
    return p / p.sum()


def draw_patch_size(seed: int, step: int, sizes: Sequence[PatchSize], probabilities: np.ndarray) -> PatchSize:
    """The patch size of `step`: a function of (seed, step) only."""
    index = np.random.default_rng([seed, step]).choice(len(sizes), p=probabilities)
    return sizes[int(index)]


def patch_label(patch_size: PatchSize) -> str:
    """`(4, 4)` -> `"4"`, `(4, 8)` -> `"4x8"`: the name of a patch size in metric keys (`eval/p4/accuracy`)."""
    ph, pw = patch_size
    return str(ph) if ph == pw else f"{ph}x{pw}"
