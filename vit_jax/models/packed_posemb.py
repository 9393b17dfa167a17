"""Position embeddings for packed sequences (NaViT): each token is placed on its own image's patch grid.

A packed sequence holds the patches of several images of different sizes, so there is no one grid to add a table
for. Each token carries its `(row, column)` in its image and that image's `(rows, columns)` grid
(`TokenPositions`), and its embedding is computed for it alone:

- `learn`: one learned table `pos_embedding` `(1, gh * gw, D)` stored at `grid` (the same parameter as the
  fixed-grid ViT's, so its checkpoints load), sampled at the token's position on its image's grid: exactly the
  row of `resize_posemb(table, grid, image_grid, method="bilinear")` without antialiasing (half-pixel bilinear,
  `jax.image.resize`), and the table row itself when the image's grid is `grid`.
- `factorized`: NaViT's factorised embeddings, `pos_embedding_row` `(gh, D)` + `pos_embedding_col` `(gw, D)`
  indexed by the token's row and column; `grid` is the largest grid allowed.
- `sincos2d`: the fixed table of `vit_jax.models.posemb.sincos2d` at the token's row and column.
- `none`: nothing added.
"""

from __future__ import annotations

from typing import Literal, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

PackedPosembKind = Literal["learn", "factorized", "sincos2d", "none"]
PACKED_POSEMB_KINDS: tuple[str, ...] = ("learn", "factorized", "sincos2d", "none")


class TokenPositions(NamedTuple):
    """Where each token of `(B, L)` packed tokens sits: `coords` `(B, L, 2)` its (row, column) in its image, and
    `grids` `(B, L, 2)` that image's (rows, columns). Padding tokens may hold anything in range (zeros)."""

    coords: jax.Array
    grids: jax.Array


def bilinear_sample_rows(table_grid: tuple[int, int], coords: jax.Array, grids: jax.Array
                         ) -> tuple[jax.Array, jax.Array]:
    """Indices `(..., 4)` into a row-major `table_grid` table and their bilinear weights `(..., 4)`, sampling the
    table resized to each token's grid at the token's cell: output cell `i` of a resize from `n` to `m` reads
    input coordinate `(i + 0.5) * n / m - 0.5`, clamped to the table (what `jax.image.resize` computes)."""
    th, tw = table_grid

    def axis(index: jax.Array, size: jax.Array, table_size: int) -> tuple[jax.Array, jax.Array, jax.Array]:
        position = (index.astype(jnp.float32) + 0.5) * (table_size / jnp.maximum(size, 1).astype(jnp.float32)) - 0.5
        position = jnp.clip(position, 0.0, table_size - 1)
        low = jnp.floor(position).astype(jnp.int32)
        high = jnp.minimum(low + 1, table_size - 1)
        return low, high, position - low

    r0, r1, fr = axis(coords[..., 0], grids[..., 0], th)
    c0, c1, fc = axis(coords[..., 1], grids[..., 1], tw)
    indices = jnp.stack([r0 * tw + c0, r0 * tw + c1, r1 * tw + c0, r1 * tw + c1], axis=-1)
    weights = jnp.stack([(1 - fr) * (1 - fc), (1 - fr) * fc, fr * (1 - fc), fr * fc], axis=-1)
    return indices, weights


def sincos2d_at(coords: jax.Array, width: int, temperature: float = 10_000.0) -> jax.Array:
    """`sincos2d`'s rows for tokens at `coords` `(..., 2)` (row, column): `[sin(x w) | cos(x w) | sin(y w) |
    cos(y w)]`, x the column, y the row, `w_k = temperature ** (-k / (width / 4 - 1))`."""
    quarter = width // 4
    omega = 1.0 / temperature ** (jnp.arange(quarter, dtype=jnp.float32) / (quarter - 1))
    x = coords[..., 1:2].astype(jnp.float32) * omega
    y = coords[..., 0:1].astype(jnp.float32) * omega
    return jnp.concatenate([jnp.sin(x), jnp.cos(x), jnp.sin(y), jnp.cos(y)], axis=-1)


class PackedPositionEmbs(nn.Module):
    """Adds position embeddings to packed `(B, L, D)` tokens. Named `posembed_input` inside the encoder.

    `grid`: the learned table's grid (`learn`), or the largest image grid (`factorized`).
    """

    kind: PackedPosembKind
    grid: tuple[int, int]
    posemb_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.02)

    @nn.compact
    def __call__(self, tokens: jax.Array, positions: TokenPositions) -> jax.Array:
        if self.kind not in PACKED_POSEMB_KINDS:
            raise ValueError(f"packed posemb must be one of {PACKED_POSEMB_KINDS}; got {self.kind!r}")
        width = tokens.shape[-1]
        gh, gw = self.grid
        if self.kind == "none":
            return tokens
        if self.kind == "sincos2d":
            return tokens + sincos2d_at(positions.coords, width).astype(tokens.dtype)
        if self.kind == "factorized":
            rows = self.param("pos_embedding_row", self.posemb_init, (gh, width), jnp.float32)
            cols = self.param("pos_embedding_col", self.posemb_init, (gw, width), jnp.float32)
            embedding = rows[positions.coords[..., 0]] + cols[positions.coords[..., 1]]
            return tokens + embedding.astype(tokens.dtype)
        table = self.param("pos_embedding", self.posemb_init, (1, gh * gw, width), jnp.float32)[0]
        indices, weights = bilinear_sample_rows((gh, gw), positions.coords, positions.grids)
        embedding = jnp.einsum("blk,blkd->bld", weights, table[indices])
        return tokens + embedding.astype(tokens.dtype)
