"""Position embeddings: learned (`learn`), fixed 2-D sin-cos (`sincos2d`), or `none`.

Tables are `(1, num_prefix + gh * gw, D)`: the prefix rows (the class token) come first, then the patch positions
in row-major grid order, matching the token order of `vit_jax.models.patching`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

PosembKind = Literal["learn", "sincos2d", "none"]
POSEMB_KINDS: tuple[str, ...] = ("learn", "sincos2d", "none")


def sincos2d(grid: Sequence[int], width: int, temperature: float = 10_000.0) -> np.ndarray:
    """Fixed 2-D sin-cos table `(gh * gw, width)`, row-major over the grid.

    Layout `[sin(x w) | cos(x w) | sin(y w) | cos(y w)]` with `w_k = temperature ** (-k / (width / 4 - 1))`,
    `k = 0 .. width/4 - 1`, x the column and y the row of a patch: big_vision's `posemb_sincos_2d` (vit-pytorch's
    SimpleViT computes the same table). Computed in float64 numpy, so it is a constant of the compiled program.
    """
    gh, gw = grid
    if width % 4 or width < 8:
        raise ValueError(
            f"sincos2d position embeddings need a width divisible by 4 and at least 8 "
            f"(a quarter each for sin x, cos x, sin y, cos y); got width {width}"
        )
    quarter = width // 4
    omega = 1.0 / temperature ** (np.arange(quarter) / (quarter - 1))
    y, x = np.mgrid[:gh, :gw]
    x_angles = np.outer(x.reshape(-1), omega)
    y_angles = np.outer(y.reshape(-1), omega)
    return np.concatenate([np.sin(x_angles), np.cos(x_angles), np.sin(y_angles), np.cos(y_angles)], axis=1)


class AddPositionEmbs(nn.Module):
    """Adds position embeddings to `(B, num_prefix + gh * gw, D)` tokens.

    Named `posembed_input` inside the encoder (`Transformer`). With `learn`, the parameter `pos_embedding`
    `(1, num_prefix + gh * gw, D)` is normal(0.02)-initialised and covers the class token too, exactly as
    google-research/vision_transformer. With `sincos2d`, the prefix rows are zeros (MAE's convention; equivalently
    big_vision, which adds the table before prepending the class token).
    """

    kind: PosembKind
    grid: tuple[int, int]
    num_prefix: int = 0
    posemb_init: nn.initializers.Initializer = nn.initializers.normal(stddev=0.02)
    param_dtype: jnp.dtype = jnp.float32

    @nn.compact
    def __call__(self, tokens: jax.Array) -> jax.Array:
        if self.kind not in POSEMB_KINDS:
            raise ValueError(f"posemb must be one of {POSEMB_KINDS}; got {self.kind!r}")
        gh, gw = self.grid
        num_tokens, width = tokens.shape[1:]
        if num_tokens != self.num_prefix + gh * gw:
            raise ValueError(
                f"got {num_tokens} tokens; expected {self.num_prefix} prefix token(s) + a {gh}x{gw} patch grid"
            )
        if self.kind == "none":
            return tokens
        if self.kind == "sincos2d":
            table = np.concatenate([np.zeros((self.num_prefix, width)), sincos2d(self.grid, width)])[None]
            return tokens + jnp.asarray(table, tokens.dtype)
        self._check_stored_table(num_tokens)
        table = self.param("pos_embedding", self.posemb_init, (1, num_tokens, width), self.param_dtype)
        return tokens + table.astype(tokens.dtype)

    def _check_stored_table(self, num_tokens: int) -> None:
        """A table restored from a checkpoint trained at another resolution: say so instead of a shape error."""
        if not self.has_variable("params", "pos_embedding"):
            return
        rows = jnp.shape(nn.unbox(self.get_variable("params", "pos_embedding")))[1]
        if rows != num_tokens:
            gh, gw = self.grid
            raise ValueError(
                f"pos_embedding has {rows} rows but the input has {num_tokens} tokens "
                f"({self.num_prefix} prefix + a {gh}x{gw} patch grid): the table was trained for another "
                f"resolution or patch size; resize it to the new grid before loading"
            )
