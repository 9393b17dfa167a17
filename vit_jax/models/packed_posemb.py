"""Position embeddings for packed sequences (NaViT): each token is placed on its own image's patch grid.

A packed sequence holds the patches of several images of different sizes, so there is no one grid to add a table
for. Each token carries its `(row, column)` in its image and that image's `(rows, columns)` grid
(`TokenPositions`), and its embedding is computed for it alone:

- `learn`: one learned table `pos_embedding` `(1, gh * gw, D)` stored at `grid` (the same parameter as the
  fixed-grid ViT's, so its checkpoints load), sampled at the token's position on its image's grid: exactly the
  row of `resize_posemb(table, grid, image_grid, ...)` by the model's `posemb_resize`, `posemb_antialias` and
  `posemb_aspect_preserving` (each token weighs every table row and column as that resize does), and the table row
  itself when the image's grid is `grid`. A padded NaFlex batch (SigLIP 2's, timm's NaFlexVit) is such a sequence
  with one image in it.
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

from vit_jax.models.interpolation import resize_weights
from vit_jax.models.posemb import antialiased

PackedPosembKind = Literal["learn", "factorized", "sincos2d", "none"]
PACKED_POSEMB_KINDS: tuple[str, ...] = ("learn", "factorized", "sincos2d", "none")


class TokenPositions(NamedTuple):
    """Where each token of `(B, L)` packed tokens sits: `coords` `(B, L, 2)` its (row, column) in its image, and
    `grids` `(B, L, 2)` that image's (rows, columns). Padding tokens may hold anything in range (zeros)."""

    coords: jax.Array
    grids: jax.Array


def sample_table(table: jax.Array, table_grid: tuple[int, int], coords: jax.Array, grids: jax.Array, method: str,
                 antialias: bool, aspect_preserving: bool, offset: float = 0.0) -> jax.Array:
    """`(..., D)`: the row of `table` `(gh * gw, D)` resized to each token's image grid, at the token's cell."""
    th, tw = table_grid
    rows, cols = grids[..., 0], grids[..., 1]
    if aspect_preserving:  # a square of the longer side, its top-left cells kept; none at the table's own grid
        longer = jnp.maximum(rows, cols)
        at_table = (rows == th) & (cols == tw)
        rows, cols = jnp.where(at_table, rows, longer), jnp.where(at_table, cols, longer)
    row_weights = resize_weights(coords[..., 0], rows, th, method, antialias, offset)
    col_weights = resize_weights(coords[..., 1], cols, tw, method, antialias, offset)
    if offset:  # at the table's own grid the table itself, as resize_posemb leaves it
        at_table = ((rows == th) & (cols == tw))[..., None]
        row_weights = jnp.where(at_table, resize_weights(coords[..., 0], rows, th, method, antialias), row_weights)
        col_weights = jnp.where(at_table, resize_weights(coords[..., 1], cols, tw, method, antialias), col_weights)
    return jnp.einsum("...h,...w,hwd->...d", row_weights, col_weights, table.reshape(th, tw, -1),
                      precision=jax.lax.Precision.HIGHEST)


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
    resize: str = "bilinear"
    antialias: bool = True
    aspect_preserving: bool = False
    offset: float = 0.0
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
        embedding = sample_table(table, (gh, gw), positions.coords, positions.grids, self.resize,
                                 antialiased(self.resize, self.antialias), self.aspect_preserving, self.offset)
        return tokens + embedding.astype(tokens.dtype)
