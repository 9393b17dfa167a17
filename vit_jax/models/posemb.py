"""Position embeddings: learned (`learn`), learned row + column tables (`factorized`), fixed 2-D sin-cos
(`sincos2d`), fixed space-time sin-cos (`sincos3d`, videos), or `none`.

Tables are `(1, num_prefix + gh * gw, D)`: the prefix rows (the class token) come first, then the patch positions
in row-major grid order, matching the token order of `vit_jax.models.patching`. Video grids are `(gt, gh, gw)`
and their tables `(1, num_prefix + gt * gh * gw, D)`, row-major over (t, h, w) as `vit_jax.models.tubelet`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.interpolation import resize_weights

PosembKind = Literal["learn", "factorized", "sincos2d", "sincos3d", "none"]
POSEMB_KINDS: tuple[str, ...] = ("learn", "factorized", "sincos2d", "sincos3d", "none")
FIXED_GRID_DIMS = {"sincos2d": 2, "sincos3d": 3, "factorized": 2}  # the grid each kind is defined on


# Fixed tables split the width evenly: (multiple, least width, how the width is split).
SINCOS_WIDTHS = {"sincos2d": (4, 8, "a quarter each for sin x, cos x, sin y, cos y"),
                 "sincos3d": (16, 32, "a quarter for time, three quarters split four ways for space")}


def check_sincos_width(kind: str, width: int, name: str = "width") -> None:
    """The width a fixed sin-cos table needs; `name` is what the width is called where it was set."""
    multiple, least, split = SINCOS_WIDTHS[kind]
    if width % multiple or width < least:
        raise ValueError(f"posemb={kind!r} needs {name} divisible by {multiple} and at least {least} ({split}); "
                         f"got {name} {width}")


def sincos2d(grid: Sequence[int], width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos table `(gh * gw, width)`, row-major over the grid.

    Layout `[sin(x w) | cos(x w) | sin(y w) | cos(y w)]` with `w_k = temperature ** (-k / (width / 4 - 1))`,
    `k = 0 .. width/4 - 1`, x the column and y the row of a patch: big_vision's `posemb_sincos_2d` (vit-pytorch's
    SimpleViT computes the same table). Computed in float64 numpy, so it is a constant of the compiled program.
    """
    gh, gw = grid
    check_sincos_width("sincos2d", width)
    quarter = width // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / (quarter - 1))
    y, x = np.mgrid[:gh, :gw]
    x_angles = np.outer(x.reshape(-1), omega)
    y_angles = np.outer(y.reshape(-1), omega)
    return np.concatenate([np.sin(x_angles), np.cos(x_angles), np.sin(y_angles), np.cos(y_angles)], axis=1)


def sincos3d(grid: Sequence[int], width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed space-time sin-cos table `(gt * gh * gw, width)`, row-major over (t, h, w).

    Layout `[sin(t w) | cos(t w) | sincos2d(h, w)]`: the first quarter of the width encodes the frame index t with
    `width / 8` frequencies `w_k = temperature ** (-k / (width / 8 - 1))`, the other three quarters are this
    module's `sincos2d` of the spatial position, the same for every frame. The quarter / three-quarters split is
    MAE-ST's (`get_3d_sincos_pos_embed`, Feichtenhofer et al. 2022), with big_vision's 2-D layout for space.
    """
    gt, gh, gw = grid
    check_sincos_width("sincos3d", width)
    eighth = width // 8
    omega = 1.0 / temperature ** (np.arange(eighth) / (eighth - 1))
    t_angles = np.outer(np.arange(gt), omega)
    time = np.concatenate([np.sin(t_angles), np.cos(t_angles)], axis=1)  # (gt, width / 4)
    space = sincos2d((gh, gw), width - width // 4, temperature)  # (gh * gw, 3 width / 4)
    return np.concatenate([np.repeat(time, gh * gw, axis=0), np.tile(space, (gt, 1))], axis=1)


def grid_text(grid: Sequence[int]) -> str:
    """`(4, 4)` -> `4x4 patch grid`, `(2, 4, 4)` -> `2x4x4 tubelet grid` (for messages)."""
    return f"{'x'.join(map(str, grid))} {'tubelet' if len(grid) == 3 else 'patch'} grid"


class AddPositionEmbs(nn.Module):
    """Adds position embeddings to `(B, num_prefix + gh * gw, D)` tokens (`(B, num_prefix + gt * gh * gw, D)` for a
    video's `(gt, gh, gw)` grid).

    Named `posembed_input` inside the encoder (`Transformer`). With `learn`, the parameter `pos_embedding`
    `(1, num_prefix + gh * gw, D)` is normal(0.02)-initialised and covers the class token too, exactly as
    google-research/vision_transformer. With `sincos2d`, the prefix rows are zeros (MAE's convention; equivalently
    big_vision, which adds the table before prepending the class token).

    With `factorized` (NaViT's factorised embeddings, here on the fixed grid), `pos_embedding_row` `(gh, D)` +
    `pos_embedding_col` `(gw, D)`: a patch gets its row's and its column's vectors, prefix tokens get none; for
    another grid each table is resized along its own axis (the same resize as `learn`'s).

    `table_grid`: the grid the learned table is stored at. Inputs with another grid get the table resized in the
    forward pass by `resize` (`resize_posemb`'s methods; `bilinear` and `bicubic` antialiased when shrinking
    unless `antialias=False`: half-pixel bilinear is FlexiViT's), so one table serves every patch size and
    resolution; each input shape compiles once. None: the table has the input's grid, and any other grid is an
    error. `aspect_preserving`: the table is resized to a square of the grid's longer side and its top-left cells
    are kept, so both axes scale alike (timm's `pos_embed_ar_preserving`: NaFlex's `par` models, RADIO).
    """

    kind: PosembKind
    grid: tuple[int, ...]
    num_prefix: int = 0
    table_grid: tuple[int, ...] | None = None
    resize: str = "bilinear"
    antialias: bool = True
    aspect_preserving: bool = False
    offset: float = 0.0
    posemb_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.02)
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        if self.kind not in POSEMB_KINDS:
            raise ValueError(f"posemb must be one of {POSEMB_KINDS}; got {self.kind!r}")
        num_tokens, width = tokens.shape[1:]
        if num_tokens != self.num_prefix + math.prod(self.grid):
            raise ValueError(
                f"got {num_tokens} tokens; expected {self.num_prefix} prefix token(s) + a {grid_text(self.grid)}"
            )
        if self.kind == "none":
            return tokens
        if self.kind in FIXED_GRID_DIMS and len(self.grid) != FIXED_GRID_DIMS[self.kind]:
            raise ValueError(f"posemb={self.kind!r} needs a {FIXED_GRID_DIMS[self.kind]}-D grid; got a "
                             f"{grid_text(self.grid)} (sincos2d, factorized: images; sincos3d: videos)")
        if self.kind == "factorized":
            return tokens + self._factorized(width).astype(tokens.dtype)
        if self.kind in ("sincos2d", "sincos3d"):
            fixed = (sincos2d if self.kind == "sincos2d" else sincos3d)(self.grid, width)
            table = np.concatenate([np.zeros((self.num_prefix, width)), fixed])[None]
            return tokens + jnp.asarray(table, tokens.dtype)
        table_grid = tuple(self.grid if self.table_grid is None else self.table_grid)
        table_rows = self.num_prefix + math.prod(table_grid)
        self._check_stored_table(table_rows, num_tokens)
        table = self.param("pos_embedding", self.posemb_init, (1, table_rows, width), self.param_dtype)
        if table_grid != tuple(self.grid):
            table = self._resized(table, table_grid, tuple(self.grid))
        return tokens + table.astype(tokens.dtype)

    def _resized(self, table: jax.Array, table_grid: tuple[int, ...], grid: tuple[int, ...]) -> jax.Array:
        return resize_posemb(table, table_grid, grid, self.num_prefix, method=self.resize,
                             antialias=antialiased(self.resize, self.antialias),
                             aspect_preserving=self.aspect_preserving, offset=self.offset)

    def _factorized(self, width: int) -> jax.Array:
        """`(1, num_prefix + gh * gw, D)`: zeros for the prefix, row + column vectors for the patches."""
        gh, gw = self.grid
        th, tw = tuple(self.grid if self.table_grid is None else self.table_grid)
        rows = self.param("pos_embedding_row", self.posemb_init, (th, width), self.param_dtype)
        cols = self.param("pos_embedding_col", self.posemb_init, (tw, width), self.param_dtype)
        # each table along its own axis (a 1-D grid); aspect_preserving: both to the longer side, then their first
        # cells
        lengths = (max(gh, gw),) * 2 if self.aspect_preserving and self.table_grid is not None else (gh, gw)
        antialias = antialiased(self.resize, self.antialias)
        if th != lengths[0]:
            rows = resize_posemb(rows[None], (th,), lengths[:1], 0, self.resize, antialias, offset=self.offset)[0]
        if tw != lengths[1]:
            cols = resize_posemb(cols[None], (tw,), lengths[1:], 0, self.resize, antialias, offset=self.offset)[0]
        rows, cols = rows[:gh], cols[:gw]
        patches = (rows[:, None, :] + cols[None, :, :]).reshape(gh * gw, width)
        return jnp.concatenate([jnp.zeros((self.num_prefix, width), patches.dtype), patches])[None]

    def _check_stored_table(self, table_rows: int, num_tokens: int) -> None:
        """A table restored from a checkpoint trained at another resolution: say so instead of a shape error."""
        if not self.has_variable("params", "pos_embedding"):
            return
        rows = jnp.shape(nn.unbox(self.get_variable("params", "pos_embedding")))[1]
        if rows != table_rows:
            raise ValueError(
                f"pos_embedding has {rows} rows but the input has {num_tokens} tokens "
                f"({self.num_prefix} prefix + a {grid_text(self.grid)}): the table was trained for another "
                f"resolution or patch size; resize it to the new grid before loading"
            )


POSEMB_RESIZE_METHODS: tuple[str, ...] = ("bilinear_align_corners", "bilinear", "bicubic")


def antialiased(method: str, antialias: bool) -> bool:
    """Whether a resize by `method` antialiases when `antialias` asks: the half-pixel methods do,
    `bilinear_align_corners` (vision_transformer's) never does."""
    return antialias and method != "bilinear_align_corners"


def check_resizing(method: str, antialias: bool, offset: float = 0.0) -> None:
    """A position table's resize rule (`resize_posemb`'s arguments), checked before anything is built."""
    if method not in POSEMB_RESIZE_METHODS:
        raise ValueError(f"posemb resize method must be one of {POSEMB_RESIZE_METHODS}; got {method!r}")
    if antialias and method == "bilinear_align_corners":
        raise ValueError("antialias applies to 'bilinear' and 'bicubic', not to 'bilinear_align_corners'")
    if not isinstance(offset, int | float) or offset < 0:
        raise ValueError(f"posemb resize offset must be a number >= 0 (DINOv2's interpolate_offset: 0.1); got "
                         f"{offset!r}")
    if offset and (antialias or method != "bicubic"):
        raise ValueError(f"posemb resize offset {offset} applies to 'bicubic' without antialiasing (DINOv2's); got "
                         f"method {method!r}, antialias={antialias}")


def resize_posemb(
    table: jax.Array,
    old_grid: Sequence[int],
    new_grid: Sequence[int],
    num_prefix: int = 1,
    method: str = "bilinear_align_corners",
    antialias: bool = False,
    aspect_preserving: bool = False,
    offset: float = 0.0,
) -> jax.Array:
    """A learned table `(1, num_prefix + gh * gw, D)` resized to a new `(gh', gw')` grid, prefix rows (the class
    token) unchanged. Grids may be non-square, and have any number of axes: a video's `(gt, gh, gw)` table is
    resized over time too (old and new grids must have as many axes).

    Methods, named for the convention they match (`vit_jax.models.interpolation.resize_weights` computes each):
      - `bilinear_align_corners` (default): what `scipy.ndimage.zoom(order=1)` computes in vision_transformer and
        big_vision when they fine-tune at a new resolution, so results are comparable with theirs.
      - `bilinear`: half-pixel bilinear, with or without `antialias` (which only acts when shrinking): PyTorch's
        and `jax.image.resize`'s alike.
      - `bicubic` with `antialias`: half-pixel Keys cubic (a = -0.5, as `jax.image.resize`, PIL and PyTorch's
        antialiased bicubic): timm's `resample_abs_pos_embed`. Without: PyTorch's plain bicubic (a = -0.75, taps
        clamped at the edges): transformers' `interpolate_pos_encoding`, DINOv2's own.

    `aspect_preserving`: resized to a square of the new grid's longest side, then its first cells along each axis
    kept: one scale for every axis (timm's `pos_embed_ar_preserving`). `offset`: DINOv2's `interpolate_offset`
    (each axis sampled as if resized to `n + offset` cells).
    """
    check_resizing(method, antialias, offset)
    old, new = tuple(old_grid), tuple(new_grid)
    width = table.shape[-1]
    if len(old) != len(new):
        raise ValueError(f"cannot resize a {grid_text(old)} table to a {grid_text(new)}: the grids need as many axes")
    if table.shape[1] != num_prefix + math.prod(old):
        raise ValueError(f"position table has {table.shape[1]} rows; expected {num_prefix} prefix + "
                         f"{'x'.join(map(str, old))} grid")
    if old == new:
        return table
    if aspect_preserving:
        square = (max(new),) * len(new)
        table = resize_posemb(table, old, square, num_prefix, method, antialias, offset=offset)
        cells = table[:, num_prefix:].reshape(1, *square, width)[(slice(None), *(slice(0, n) for n in new))]
        return jnp.concatenate([table[:, :num_prefix], cells.reshape(1, math.prod(new), width)], axis=1)
    prefix, resized = table[:, :num_prefix], table[:, num_prefix:].reshape(1, *old, width).astype(jnp.float32)
    for axis, (size_in, size_out) in enumerate(zip(old, new), start=1):  # separable: one matrix per axis
        # exact float64 weights from the static sizes: a constant of the compiled program, no JAX ops of its own
        matrix = resize_weights(np.arange(size_out), np.asarray(size_out), size_in, method, antialias, offset)
        resized = jnp.moveaxis(jnp.tensordot(matrix.astype(np.float32), resized, ((1,), (axis,)),
                                             precision=jax.lax.Precision.HIGHEST), 0, axis)
    resized = resized.astype(table.dtype).reshape(1, math.prod(new), width)
    return jnp.concatenate([jnp.asarray(prefix), resized], axis=1)
