"""Rotary position encodings (RoPE) over a 2-D image grid (3-D for videos, axial only).

Each encoder block rotates its queries and keys, one pair of channels at a time, by angles proportional to the
token's coordinates. A rotation preserves norms, and the logit `q_i . k_j` depends on the coordinates only through
their difference `c_i - c_j`, so the model sees relative positions at any grid size. Prefix tokens (the class token,
registers) are not rotated; they come before the patch tokens and keep their plain `q . k`.

Kinds (the model's `posemb`):
- `rope_axial` (RoPE-Axial: Heo et al. 2024, naver-ai/rope-vit, timm's `vit_*_rope_224`; EVA-02): fixed
  frequencies `w_k = theta ** (-k / P)`, `k < P`, where each of the grid's axes owns `P = head_dim / (2 * axes)` of
  the head's channel pairs (pairs left over when `head_dim / 2` does not split evenly, as 3-D with head_dim 64, are
  not rotated). An axis's pairs turn by `coordinate * w_k`.
- `rope_mixed` (RoPE-Mixed, same paper; timm's `vit_*_rope_mixed_224`): every block learns its own frequencies,
  parameter `rope_frequencies` `(2, num_heads, head_dim / 2)` in each `encoderblock`: pair `j` of head `h` turns by
  `x * f[0, h, j] + y * f[1, h, j]` (x the column, y the row), so a pair can follow any direction in the image.
  Initialised as the paper: magnitudes `theta ** (-4k / head_dim)` and a random direction per head and block, the
  second half of the pairs at right angles to the first.

Conventions (the model's `rope_*` options, in `vit_jax.models.encoder.EncoderOptions`):
- `rope_coordinates`: `index` (the patch's row and column, 0 at the top-left patch: rope-vit, EVA, timm's
  RoPE-ViTs) or `centered` (DINOv3: patch centres normalised per axis to [-1, 1], `2 (i + 0.5) / n - 1`, times
  `2 pi`, DINOv3's angle being `2 pi c / period`). `index` coordinates grow with the grid; `centered` ones span the
  same range at every resolution.
- `rope_pairing`: `interleaved` (channels (0, 1), (2, 3), ...: rope-vit, EVA, timm's default) or `halves`
  ((i, i + head_dim / 2): DINOv3, timm's `rotate_half`, GPT-NeoX/LLaMA).
- `rope_axis_order`: `xy` (the first channel pairs follow the column x, then the row y: rope-vit and timm's
  RoPE-ViTs) or `ij` (rows first: DINOv3, and time first for videos in both orders' frame axis).
- `rope_theta`: the frequencies' base: rope-vit uses 100 (axial) and 10 (mixed), DINOv3 100; None: those defaults.
- `rope_grid` (interpolated RoPE): `index` coordinates rescaled so that any input grid spans this grid, the one
  the model was trained at (EVA's `ref_feat_shape`); None: a patch's coordinates are its row and column at every
  resolution (extrapolation, as rope-vit evaluates).
- `rope_offset`: a constant added to every cell index before any rescaling (Perception Encoder's `rope_grid_offset`
  of 1: patches are turned against the unrotated class token as if it sat at (-1, -1)); 0 by default.
- train-time augmentation of the coordinates (DINOv3's, each off by default; one draw per batch, as DINOv3):
  `rope_shift` adds a uniform offset in [-s, s] per axis, `rope_jitter` scales each axis by a log-uniform factor in
  [1/J, J], `rope_rescale` scales all axes by one log-uniform factor in [1/R, R] (in the coordinates' own units).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, Literal

import jax
import jax.numpy as jnp
import numpy as np

ROPE_KINDS: tuple[str, ...] = ("rope_axial", "rope_mixed")
RopeCoordinates = Literal["index", "centered"]
ROPE_COORDINATES: tuple[str, ...] = ("index", "centered")
RopePairing = Literal["interleaved", "halves"]
ROPE_PAIRINGS: tuple[str, ...] = ("interleaved", "halves")
RopeAxisOrder = Literal["xy", "ij"]
ROPE_AXIS_ORDERS: tuple[str, ...] = ("xy", "ij")
DEFAULT_THETA = {"rope_axial": 100.0, "rope_mixed": 10.0}  # rope-vit's


def is_rope(posemb: str) -> bool:
    return posemb in ROPE_KINDS


def check_rope_options(posemb: str, head_dim: int, grid_axes: int, options: Any) -> None:
    """Reject RoPE settings that cannot work, when the model is built; `options` holds the `rope_*` fields."""
    choices = dict(rope_coordinates=ROPE_COORDINATES, rope_pairing=ROPE_PAIRINGS, rope_axis_order=ROPE_AXIS_ORDERS)
    for field, allowed in choices.items():
        if getattr(options, field) not in allowed:
            raise ValueError(f"{field} must be one of {allowed}; got {getattr(options, field)!r}")
    if options.rope_theta is not None and not options.rope_theta > 0:
        raise ValueError(f"rope_theta must be positive (or None for the kind's default); got {options.rope_theta!r}")
    for field, least in (("rope_shift", 0.0), ("rope_jitter", 1.0), ("rope_rescale", 1.0)):
        value = getattr(options, field)
        if value is not None and not (math.isfinite(value) and value >= least):
            raise ValueError(f"{field} must be None (off) or a number >= {least:g}; got {value!r}")
    if options.rope_grid is not None and (len(options.rope_grid) != grid_axes or not all(
            isinstance(g, int) and g > 0 for g in options.rope_grid)):
        raise ValueError(f"rope_grid must be None or {grid_axes} positive ints (the training grid); got "
                         f"{options.rope_grid!r}")
    if not (isinstance(options.rope_offset, float | int) and math.isfinite(options.rope_offset)):
        raise ValueError(f"rope_offset must be a finite number; got {options.rope_offset!r}")
    if not is_rope(posemb):
        unused = [f for f in ("rope_theta", "rope_grid", "rope_shift", "rope_jitter", "rope_rescale")
                  if getattr(options, f) is not None] + (["rope_ape"] if options.rope_ape else []) + (
                  ["rope_offset"] if options.rope_offset else [])
        if unused:
            raise ValueError(f"{', '.join(unused)} set, but posemb={posemb!r} is not a rotary encoding "
                             f"({', '.join(ROPE_KINDS)})")
        return
    if head_dim % 4:
        raise ValueError(f"posemb={posemb!r} needs a head dimension (hidden_size / num_heads, or qkv_dim / num_heads) "
                         f"divisible by 4 (channel pairs split over the two axes); got head dimension {head_dim}")
    if posemb == "rope_mixed" and grid_axes != 2:
        raise ValueError(f"posemb='rope_mixed' is for images (a 2-D grid); a video model's {grid_axes}-D grid takes "
                         f"'rope_axial'")
    if posemb == "rope_mixed" and options.rope_pairing != "interleaved":
        raise ValueError("posemb='rope_mixed' pairs channels 'interleaved' (rope-vit's layout); got "
                         f"rope_pairing={options.rope_pairing!r}")


def grid_coordinates(grid: Sequence[int], convention: RopeCoordinates, reference_grid: Sequence[int] | None = None,
                     offset: float = 0.0) -> np.ndarray:
    """`(prod(grid), len(grid))` coordinates of a row-major grid's cells, in grid axis order (row, column; or frame,
    row, column). `reference_grid` (interpolated RoPE) rescales `index` coordinates so the grid spans it; `offset`
    is added to every cell index first."""
    axes = []
    for i, size in enumerate(grid):
        if convention == "index":
            values = np.arange(size, dtype=np.float64) + offset
            if reference_grid is not None:
                values = values * reference_grid[i] / size
        else:
            values = 2 * math.pi * (2 * (np.arange(size) + 0.5 + offset) / size - 1)
        axes.append(values)
    mesh = np.meshgrid(*axes, indexing="ij")
    return np.stack([m.reshape(-1) for m in mesh], axis=-1)


def token_coordinates(positions_coords: jax.Array, grids: jax.Array, convention: RopeCoordinates,
                      reference_grid: Sequence[int] | None = None, offset: float = 0.0) -> jax.Array:
    """`grid_coordinates` for tokens that each carry their own cell `(..., axes)` in their own grid `(..., axes)`
    (packed sequences)."""
    cells = positions_coords.astype(jnp.float32) + offset
    sizes = jnp.maximum(grids, 1).astype(jnp.float32)
    if convention == "index":
        if reference_grid is None:
            return cells
        return cells * jnp.asarray(reference_grid, jnp.float32) / sizes
    return 2 * math.pi * (2 * (cells + 0.5) / sizes - 1)


def augment_coordinates(coords: jax.Array, rng: jax.Array, shift: float | None, jitter: float | None,
                        rescale: float | None) -> jax.Array:
    """DINOv3's train-time coordinate augmentation, one draw for all tokens: shift, then per-axis jitter, then one
    shared rescale (see the module docstring)."""
    axes = coords.shape[-1]
    shift_key, jitter_key, rescale_key = jax.random.split(rng, 3)
    if shift is not None:
        coords = coords + jax.random.uniform(shift_key, (axes,), minval=-shift, maxval=shift)
    if jitter is not None:
        coords = coords * jnp.exp(jax.random.uniform(jitter_key, (axes,), minval=-math.log(jitter),
                                                     maxval=math.log(jitter)))
    if rescale is not None:
        coords = coords * jnp.exp(jax.random.uniform(rescale_key, (), minval=-math.log(rescale),
                                                     maxval=math.log(rescale)))
    return coords


def axial_frequencies(head_dim: int, axes: int, theta: float, axis_order: RopeAxisOrder) -> np.ndarray:
    """`(axes, head_dim / 2)`: how fast each channel pair turns per unit of each grid axis (coordinates in grid
    order). Each axis owns a contiguous block of `head_dim // (2 axes)` pairs with frequencies
    `theta ** (-k / block)`; `xy` gives the first block to the column, then the row (then, for videos, frames come
    first in either order)."""
    pairs = head_dim // 2
    block = pairs // axes
    frequencies = np.zeros((axes, pairs))
    order = list(range(axes))
    if axis_order == "xy":  # (row, column) -> column first; videos: (frame, column, row)
        order[-2], order[-1] = order[-1], order[-2]
    for slot, axis in enumerate(order):
        frequencies[axis, slot * block:(slot + 1) * block] = theta ** (-np.arange(block) / block)
    return frequencies


def init_mixed_frequencies(theta: float) -> Callable[..., jax.Array]:
    """RoPE-Mixed's initialiser for `(2, num_heads, head_dim / 2)` (x, y) frequencies (rope-vit's
    `init_random_2d_freqs`): magnitudes `theta ** (-4k / head_dim)`, one random direction per head, the second half
    of the pairs at right angles to the first."""

    def init(key: jax.Array, shape: Sequence[int], dtype: Any = jnp.float32) -> jax.Array:
        _, num_heads, pairs = shape
        head_dim = 2 * pairs
        magnitude = theta ** (-jnp.arange(0, head_dim, 4, dtype=jnp.float32) / head_dim)  # (head_dim / 4,)
        angle = jax.random.uniform(key, (num_heads, 1), jnp.float32) * 2 * jnp.pi
        fx = jnp.concatenate([magnitude * jnp.cos(angle), magnitude * jnp.cos(angle + jnp.pi / 2)], axis=-1)
        fy = jnp.concatenate([magnitude * jnp.sin(angle), magnitude * jnp.sin(angle + jnp.pi / 2)], axis=-1)
        return jnp.stack([fx, fy]).astype(dtype)

    return init


def rotate(x: jax.Array, angles: jax.Array, pairing: RopePairing) -> jax.Array:
    """`x` `(B, N, H, head_dim)` with channel pair j turned by `angles` `(..., N, H or 1, head_dim / 2)`, computed in
    float32 and returned in `x`'s dtype."""
    cos, sin = jnp.cos(angles), jnp.sin(angles)
    y = x.astype(jnp.float32)
    if pairing == "interleaved":
        a, b = y[..., 0::2], y[..., 1::2]
        rotated = jnp.stack([a * cos - b * sin, a * sin + b * cos], axis=-1).reshape(y.shape)
    else:
        half = y.shape[-1] // 2
        a, b = y[..., :half], y[..., half:]
        rotated = jnp.concatenate([a * cos - b * sin, a * sin + b * cos], axis=-1)
    return rotated.astype(x.dtype)


def rotating_attention(attention_fn: Callable[..., jax.Array], angles: jax.Array, num_prefix: int,
                       pairing: RopePairing) -> Callable[..., jax.Array]:
    """`attention_fn` (flax's `(query, key, value, ...)` signature, `(B, N, H, head_dim)`) with the queries and keys
    of the tokens after the `num_prefix` prefix tokens rotated first: every attention kernel sees rotated inputs."""

    def turn(x: jax.Array) -> jax.Array:
        return jnp.concatenate([x[:, :num_prefix], rotate(x[:, num_prefix:], angles, pairing)], axis=1)

    # `wraps`: flax passes only the keyword arguments in the function's signature (the mask among them), and
    # `inspect.signature` follows `__wrapped__` to the kernel's own.
    @functools.wraps(attention_fn)
    def attention(query: jax.Array, key: jax.Array, value: jax.Array, *args: Any, **kwargs: Any) -> jax.Array:
        return attention_fn(turn(query), turn(key), value, *args, **kwargs)

    return attention
