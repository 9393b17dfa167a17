"""1-D interpolation weights: the weights behind resizing position tables and patch kernels, with each codebase's
sampling convention named. Linear ones as exact float64 matrices; `resize_weights` for every method a position
table or patch kernel is resized by, in NumPy (exact) or in JAX, where the sizes may be traced (NaViT samples a
table per token)."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np


def linear_interpolation_matrix(positions: np.ndarray, size_in: int) -> np.ndarray:
    """`(len(positions), size_in)`: row `i` interpolates linearly at input coordinate `positions[i]`, clamped to
    `[0, size_in - 1]` (an edge sample takes the edge value)."""
    positions = np.clip(positions, 0, size_in - 1)
    low = np.floor(positions).astype(int)
    high = np.minimum(low + 1, size_in - 1)
    frac = positions - low
    weights = np.zeros((len(positions), size_in))
    np.add.at(weights, (np.arange(len(positions)), low), 1 - frac)
    np.add.at(weights, (np.arange(len(positions)), high), frac)
    return weights


def half_pixel_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Output `i` samples input coordinate `(i + 0.5) * size_in / size_out - 0.5`: one axis of
    `jax.image.resize(..., "bilinear", antialias=False)` and of PyTorch's `interpolate(mode="bilinear",
    align_corners=False, antialias=False)`."""
    return linear_interpolation_matrix((np.arange(size_out) + 0.5) * size_in / size_out - 0.5, size_in)


def keys_cubic(x: Any, a: float) -> Any:
    """Keys' cubic convolution kernel at distance `x >= 0` (NumPy or JAX arrays): a = -0.5 in `jax.image.resize`,
    PIL and PyTorch's antialiased bicubic; a = -0.75 in PyTorch's plain (not antialiased) bicubic."""
    xp = np if isinstance(x, np.ndarray) else jnp
    near = ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    far = ((a * x - 5.0 * a) * x + 8.0 * a) * x - 4.0 * a
    return xp.where(x >= 2.0, 0.0, xp.where(x >= 1.0, far, near))


def resize_weights(index: Any, size: Any, table_size: int, method: str, antialias: bool, offset: float = 0.0) -> Any:
    """`(..., table_size)`: the weights with which cell `index` of an axis resized from `table_size` to `size` cells
    takes each table cell; NumPy arrays in float64 (exact matrices), JAX arrays (traced sizes too) in float32. The
    methods, each named for the code it matches:

      - `bilinear_align_corners`: the end points aligned (`scipy.ndimage.zoom(order=1)`: vision_transformer's and
        big_vision's fine-tuning resize).
      - `bilinear`, `bicubic` with `antialias`: `jax.image.resize`'s half-pixel kernels (Keys a = -0.5), widened by
        the scale when shrinking, renormalised at the edges: also PyTorch's and PIL's antialiased resizes (timm's
        `resample_abs_pos_embed`, transformers' DINOv2 with registers).
      - `bilinear` without: the same (half-pixel linear interpolation, which PyTorch computes alike).
      - `bicubic` without: PyTorch's `interpolate(mode="bicubic", antialias=False)`: Keys a = -0.75, the four taps
        clamped to the edge cells (transformers' `interpolate_pos_encoding`, DINOv2's own code).

    `offset`: the axis is sampled as if resized to `size + offset` cells (DINOv2's `interpolate_offset`, which
    passes PyTorch a scale factor of `(size + offset) / table_size`); only for `bicubic` without antialiasing.
    """
    xp, dtype = (np, np.float64) if isinstance(index, np.ndarray) else (jnp, jnp.float32)
    index, size = xp.asarray(index).astype(dtype)[..., None], xp.maximum(size, 1).astype(dtype)[..., None]
    cells = xp.arange(table_size, dtype=dtype)
    if method == "bilinear_align_corners":
        position = xp.where(size > 1, index * (table_size - 1) / xp.maximum(size - 1, 1), 0.0)
        return xp.maximum(0.0, 1.0 - xp.abs(position - cells))
    inverse = table_size / (size + offset)
    source = (index + 0.5) * inverse - 0.5
    if method == "bicubic" and not antialias:
        taps = xp.floor(source) + xp.arange(-1.0, 3.0, dtype=dtype)  # (..., 4)
        weights = keys_cubic(xp.abs(source - taps), -0.75)
        edge_clamped = xp.clip(taps, 0, table_size - 1)
        return xp.sum(weights[..., None] * (edge_clamped[..., None] == cells), axis=-2)
    width = xp.maximum(inverse, 1.0) if antialias else 1.0
    distance = xp.abs(source - cells) / width
    weights = keys_cubic(distance, -0.5) if method == "bicubic" else xp.maximum(0.0, 1.0 - distance)
    return weights / xp.sum(weights, axis=-1, keepdims=True)
