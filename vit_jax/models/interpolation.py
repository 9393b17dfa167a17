"""1-D linear interpolation as exact float64 matrices: the weights behind resizing position tables and patch
kernels, with each codebase's sampling convention named."""

from __future__ import annotations

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


def align_corners_matrix(size_in: int, size_out: int) -> np.ndarray:
    """Output `i` samples input coordinate `i * (size_in - 1) / (size_out - 1)`, the end points aligned
    (`scipy.ndimage.zoom(order=1)`'s mapping)."""
    positions = np.arange(size_out) * ((size_in - 1) / (size_out - 1)) if size_out > 1 else np.zeros(1)
    return linear_interpolation_matrix(positions, size_in)
