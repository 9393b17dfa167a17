"""BEiT's relative position biases: a learned `(heads,)` bias on the attention logit of every pair of tokens,
looked up by the pair's offset on the patch grid (Bao et al. 2022; timm's `Beit`, `use_rel_pos_bias`).

Each block's attention layer holds `relative_position_bias` `(2 gh - 1, 2 gw - 1, heads)`, one entry per
(row offset, column offset) from `-(g - 1)` to `g - 1`, and, with a class token, `relative_position_bias_prefix`
`(3, heads)`: class -> patch, patch -> class and class -> class (timm's flat table is these two, the grid row-major
then the three). The table's shape says the grid it was trained on; another grid (another resolution or patch size)
gets the grid part resized, by default as BEiT's fine-tuning resizes it (`geometric`: unilm's
`run_class_finetuning.py`, timm's `resize_rel_pos_bias_table`): the old offsets placed on a geometric progression
that spans the new range, then interpolated linearly (timm's default, without scipy); or (`bilinear`) by half-pixel
bilinear interpolation over the offsets, as transformers' BEiT and data2vec resize it in the forward pass
(`interpolate_pos_encoding`). Either resize is linear in the table, with weights that depend only on the two sizes,
so it is two small matrices, applied in the forward pass or to a checkpoint alike.
"""

from __future__ import annotations

import functools
import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.interpolation import half_pixel_matrix

SPECIAL = 3  # class -> patch, patch -> class, class -> class
RELATIVE_POSITION_RESIZES: tuple[str, ...] = ("geometric", "bilinear")


@functools.cache
def _offset_positions(source: int, target: int) -> tuple[np.ndarray, np.ndarray]:
    """unilm's positions of a `source`-entry axis of offsets once stretched to span a `target`-entry one (a
    geometric progression, found by bisection as unilm's code finds it), and the target's integer offsets."""
    left, right = 1.01, 1.5
    while right - left > 1e-6:
        q = (left + right) / 2.0
        if (1.0 - q ** (source // 2)) / (1.0 - q) > target // 2:
            right = q
        else:
            left = q
    distances, current = [], 1.0
    for i in range(source // 2):
        distances.append(current)
        current += q ** (i + 1)
    positions = np.asarray([-d for d in reversed(distances)] + [0.0] + distances)
    half = target // 2
    return positions, np.arange(-half, half + 0.1, 1.0)


@functools.cache
def resize_matrix(source: int, target: int) -> np.ndarray:
    """`(target, source)`: linear interpolation of a `source`-entry offset axis at the `target` offsets (identity
    when the sizes agree); outside the stretched range, the nearest end's value (timm's interpolator's)."""
    if source == target:
        return np.eye(source)
    if source == 1:  # a one-patch axis has one offset: the same bias at every new one
        return np.ones((target, 1))
    positions, wanted = _offset_positions(source, target)
    matrix = np.zeros((target, source))
    for row, x in enumerate(wanted):
        j = int(np.clip(np.searchsorted(positions, x, side="right") - 1, 0, source - 2))
        t = np.clip((x - positions[j]) / (positions[j + 1] - positions[j]), 0.0, 1.0)
        matrix[row, j], matrix[row, j + 1] = 1.0 - t, t
    return matrix


def resize_relative_position_bias(table: np.ndarray | jax.Array, grid: tuple[int, int], method: str = "geometric"
                                  ) -> np.ndarray | jax.Array:
    """A `(2 h - 1, 2 w - 1, heads)` table for a `grid` `(gh, gw)`, resized by `method` (`RELATIVE_POSITION_RESIZES`:
    BEiT's fine-tuning's, or transformers' half-pixel bilinear)."""
    if method not in RELATIVE_POSITION_RESIZES:
        raise ValueError(f"relative position resize must be one of {RELATIVE_POSITION_RESIZES}; got {method!r}")
    matrix = resize_matrix if method == "geometric" else half_pixel_matrix
    rows, columns = matrix(table.shape[0], 2 * grid[0] - 1), matrix(table.shape[1], 2 * grid[1] - 1)
    xp = jnp if isinstance(table, jax.Array) else np
    return xp.einsum("ri,cj,ijh->rch", rows.astype(np.float32), columns.astype(np.float32), table)


def _patch_offsets(grid: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices into the table for every (query patch, key patch) pair, row-major patches."""
    gh, gw = grid
    r, c = np.meshgrid(np.arange(gh), np.arange(gw), indexing="ij")
    r, c = r.reshape(-1), c.reshape(-1)
    return r[:, None] - r[None, :] + gh - 1, c[:, None] - c[None, :] + gw - 1


def relative_position_logits(module: nn.Module, grid: tuple[int, int], num_heads: int, num_prefix: int,
                             resize: str = "geometric") -> jax.Array:
    """The `(1, heads, N, N)` logit bias for `num_prefix` (0 or 1: the class token) prefix tokens and a row-major
    `grid` of patches, from `module`'s parameters (created for the grid of the first call, truncated normal(0.02)
    as BEiT's); called in `module`'s compact `__call__`."""
    if num_prefix not in (0, 1):
        raise ValueError(f"relative position biases take a class token or none (BEiT's); got {num_prefix} prefix "
                         f"tokens")
    init = nn.initializers.truncated_normal(0.02)
    if module.has_variable("params", "relative_position_bias"):  # its shape says the grid it was made for
        table = module.get_variable("params", "relative_position_bias")
    else:
        table = module.param("relative_position_bias", init, (2 * grid[0] - 1, 2 * grid[1] - 1, num_heads),
                             jnp.float32)
    if table.shape[:2] != (2 * grid[0] - 1, 2 * grid[1] - 1):
        table = resize_relative_position_bias(table, grid, resize)
    rows, columns = _patch_offsets(tuple(grid))
    bias = jnp.transpose(table[rows, columns], (2, 0, 1))  # (heads, patches, patches)
    if num_prefix:
        prefix = module.param("relative_position_bias_prefix", init, (SPECIAL, num_heads), jnp.float32)
        n = math.prod(grid)
        from_class = jnp.broadcast_to(prefix[0][:, None, None], (num_heads, 1, n))
        to_class = jnp.broadcast_to(prefix[1][:, None, None], (num_heads, n, 1))
        bias = jnp.concatenate([jnp.concatenate([prefix[2][:, None, None], from_class], axis=2),
                                jnp.concatenate([to_class, bias], axis=2)], axis=1)
    return bias[None]
