"""Inflation: an image ViT's parameters as a video ViT's (ViViT, Arnab et al. 2021, section 3.4).

Only two parameters change shape; every other one (encoder, heads, class token) is the image model's as is:

- the patch kernel `(ph, pw, C, D)` becomes a tubelet kernel `(t, ph, pw, C, D)`:
  - `central` ("central frame initialisation", ViViT's best): the 2-D kernel at frame `t // 2`, zeros elsewhere.
    Each tubelet token is then the image model's token of the tubelet's central frame; other frames are ignored
    until training moves the zeros.
  - `average` ("filter inflation", as I3D): `kernel / t` at every frame. Each tubelet token is the image token of
    the tubelet's mean frame, so a static video gets exactly the image's tokens.
- the learned position table `(1, prefix + gh * gw, D)` becomes `(1, prefix + gt * gh * gw, D)`: the spatial table
  (resized with `resize_posemb` when the spatial grid differs) repeated for every temporal position, row-major
  over (t, h, w) as the tubelet tokens; the prefix (class token) rows are kept once.

With `average`, tiled position embeddings and `classifier='gap'`, a video of one repeated frame gives exactly the
image model's logits on that frame: every token appears `gt` times, which leaves softmax attention's weighted
average and the mean pooling unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import numpy as np

from vit_jax.models.posemb import resize_posemb

InflationMethod = Literal["central", "average"]
INFLATION_METHODS: tuple[str, ...] = ("central", "average")


def inflate_kernel(kernel: np.ndarray, frames: int, method: InflationMethod = "central") -> np.ndarray:
    """An image patch kernel `(ph, pw, C, D)` as a tubelet kernel `(frames, ph, pw, C, D)` (see the module doc)."""
    if method not in INFLATION_METHODS:
        raise ValueError(f"inflation must be one of {INFLATION_METHODS}; got {method!r}")
    kernel = np.asarray(kernel)
    if kernel.ndim != 4:
        raise ValueError(f"expected an image patch kernel (ph, pw, C, D); got shape {kernel.shape}")
    if not isinstance(frames, int) or frames <= 0:
        raise ValueError(f"frames must be a positive int; got {frames!r}")
    if method == "average":
        return np.repeat(kernel[None] / frames, frames, axis=0).astype(kernel.dtype)
    inflated = np.zeros((frames, *kernel.shape), kernel.dtype)
    inflated[frames // 2] = kernel
    return inflated


def inflate_posemb(
    table: np.ndarray,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    num_prefix: int = 1,
    method: str = "bilinear_align_corners",
    antialias: bool = False,
    aspect_preserving: bool = False,
    offset: float = 0.0,
) -> np.ndarray:
    """An image table `(1, num_prefix + gh * gw, D)` for a `(gt, gh', gw')` video grid: resized to `(gh', gw')`
    (`resize_posemb`'s `method`), then repeated over the `gt` temporal positions; prefix rows kept once."""
    old_grid, new_grid = tuple(old_grid), tuple(new_grid)
    if len(old_grid) != 2 or len(new_grid) != 3:
        raise ValueError(f"inflation takes an image table's (gh, gw) grid to a video's (gt, gh, gw) grid; got "
                         f"{old_grid} -> {new_grid}")
    spatial = np.asarray(resize_posemb(table, old_grid, new_grid[1:], num_prefix, method, antialias,
                                       aspect_preserving, offset))
    prefix, grid = spatial[:, :num_prefix], spatial[:, num_prefix:]
    return np.concatenate([prefix, np.tile(grid, (1, new_grid[0], 1))], axis=1)
