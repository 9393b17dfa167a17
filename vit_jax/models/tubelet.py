"""Tubelet embedding: a video becomes a 3-D grid of tokens (ViViT, Arnab et al. 2021, "tubelet embedding").

The video counterpart of `vit_jax.models.patching`. A tubelet is `t` consecutive frames of a `ph x pw` patch. Two
implementations share one parameter, `kernel` of shape `(t, ph, pw, C, D)` (and `bias` `(D,)`):

- `conv`: a 3-D strided VALID convolution (NDHWC input, DHWIO kernel).
- `reshape`: cut the video into non-overlapping tubelets, flatten each in (frame-in-tubelet, row-in-patch,
  column-in-patch, channel) order and multiply by the kernel reshaped to `(t * ph * pw * C, D)`. That flatten
  order is the row-major order of the kernel's first four axes, which is why the two agree.

Tokens come out row-major over the `(gt, gh, gw)` grid: token `k` is tubelet `(k // (gh gw), k // gw % gh, k % gw)`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.patching import (
    PATCH_EMBED_KINDS,
    PatchEmbedKind,
    as_patch_size,
    embed_patches_conv,
    grid_shape,
)


def as_tubelet_size(frames: int, patch_size: int | Sequence[int]) -> tuple[int, int, int]:
    """`(2, 4)` or `(2, (4, 8))` -> `(t, ph, pw)`, checked to be positive integers."""
    if not isinstance(frames, int) or isinstance(frames, bool) or frames <= 0:
        raise ValueError(f"tubelet_size (frames per tubelet) must be a positive int; got {frames!r}")
    return (frames, *as_patch_size(patch_size))


def tubelet_grid(video_thw: Sequence[int], tubelet: Sequence[int]) -> tuple[int, int, int]:
    """The `(gt, gh, gw)` tubelet grid of a video, or a ValueError naming both sizes when they do not divide."""
    t, ph, pw = tubelet
    frames, h, w = video_thw
    if frames % t or h % ph or w % pw:
        raise ValueError(
            f"video size {frames}x{h}x{w} (frames x height x width) is not a multiple of the tubelet size "
            f"{t}x{ph}x{pw}; resize the frames to a multiple of the patch size and use a number of frames "
            f"divisible by tubelet_size"
        )
    return (frames // t, *grid_shape((h, w), (ph, pw)))


def tubeletify(videos: jax.Array, tubelet: Sequence[int]) -> jax.Array:
    """`(B, T, H, W, C)` -> `(B, gt, gh, gw, t * ph * pw * C)`, each tubelet flattened (frame, row, column,
    channel)."""
    b, frames, h, w, c = videos.shape
    t, ph, pw = tubelet
    gt, gh, gw = tubelet_grid((frames, h, w), tubelet)
    x = videos.reshape(b, gt, t, gh, ph, gw, pw, c)
    x = x.transpose(0, 1, 3, 5, 2, 4, 6, 7)  # (B, gt, gh, gw, t, ph, pw, C)
    return x.reshape(b, gt, gh, gw, t * ph * pw * c)


embed_tubelets_conv = embed_patches_conv  # one strided convolution serves patches and tubelets


def embed_tubelets_reshape(
    videos: jax.Array, kernel: jax.Array, bias: jax.Array, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
    """Tubeletify then one matmul with the same kernel: `(B, T, H, W, C)` -> `(B, gt, gh, gw, D)`."""
    t, ph, pw, c, d = kernel.shape
    tubelets = tubeletify(videos, (t, ph, pw))
    y = jnp.dot(tubelets, kernel.reshape(t * ph * pw * c, d), precision=precision)
    return y + bias


class TubeletEmbed(nn.Module):
    """Embeds `(B, T, H, W, C)` videos as `(B, gt * gh * gw, D)` tokens (or the `(B, gt, gh, gw, D)` grid).

    Named `embedding` inside a video VisionTransformer, like `PatchEmbed`, with `kernel` `(t, ph, pw, C, D)` and
    `bias` `(D,)`, lecun-normal (fan-in `t ph pw C`) and zeros initialised. An image checkpoint's 4-D kernel is
    inflated to this shape by `vit_jax.checkpoint.inflate`.

    Attributes:
      hidden_size: D, the token width.
      tubelet_size: t, frames per tubelet.
      patch_size: `(ph, pw)`, or an int for square patches.
      kind: `conv` or `reshape`; the same parameters give the same output (to float rounding).
      output_format: `tokens` for `(B, gt * gh * gw, D)` row-major over (t, h, w), `grid` for `(B, gt, gh, gw, D)`.
      dtype: computation dtype (inputs and kernel are cast to it); parameters stay `param_dtype`.
    """

    hidden_size: int
    tubelet_size: int
    patch_size: int | Sequence[int]
    kind: PatchEmbedKind = "conv"
    output_format: Literal["tokens", "grid"] = "tokens"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.PrecisionLike = None
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros

    @nn.compact
    def __call__(self, videos: jax.Array) -> jax.Array:
        if videos.ndim != 5:
            raise ValueError(f"TubeletEmbed expects (batch, frames, height, width, channels) videos; got shape "
                             f"{videos.shape}")
        if self.kind not in PATCH_EMBED_KINDS:
            raise ValueError(f"patch_embed must be one of {PATCH_EMBED_KINDS}; got {self.kind!r}")
        if self.output_format not in ("tokens", "grid"):
            raise ValueError(f"output_format must be 'tokens' or 'grid'; got {self.output_format!r}")
        tubelet = as_tubelet_size(self.tubelet_size, self.patch_size)
        tubelet_grid(videos.shape[1:4], tubelet)  # the clear error, before anything else

        channels = videos.shape[-1]
        kernel = self.param("kernel", self.kernel_init, (*tubelet, channels, self.hidden_size), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.hidden_size,), self.param_dtype)
        videos, kernel, bias = nn.dtypes.promote_dtype(videos, kernel, bias, dtype=self.dtype)

        embed = embed_tubelets_conv if self.kind == "conv" else embed_tubelets_reshape
        grid = embed(videos, kernel, bias, self.precision)
        if self.output_format == "grid":
            return grid
        b, gt, gh, gw, d = grid.shape
        return grid.reshape(b, gt * gh * gw, d)
