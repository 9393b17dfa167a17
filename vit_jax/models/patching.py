"""Patch embedding: an image becomes a grid of tokens.

Two implementations share one parameter, `kernel` of shape `(ph, pw, C, D)` (and `bias` `(D,)`), so a checkpoint
trained with one runs with the other:

- `conv`: a strided VALID convolution, as google-research/vision_transformer's `embedding` `nn.Conv`.
- `reshape`: cut the image into non-overlapping patches, flatten each patch in (row-in-patch, column-in-patch,
  channel) order and multiply by the kernel reshaped to `(ph * pw * C, D)`. That flatten order is exactly the
  row-major order of the kernel's first three axes, which is why the two agree ("We can merge s2d+emb into a single
  conv; it's the same.", vision_transformer).

Tokens come out row-major over the patch grid: token `k` is the patch at grid row `k // gw`, column `k % gw`.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import Literal

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.interpolation import half_pixel_matrix, resize_weights
from vit_jax.models.layer_norm import LayerNorm

PatchEmbedKind = Literal["conv", "reshape"]
PatchPadding = Literal["none", "zeros"]
PATCH_EMBED_KINDS: tuple[str, ...] = ("conv", "reshape")
PATCH_PADDINGS: tuple[str, ...] = ("none", "zeros")


def as_patch_size(patch_size: int | Sequence[int]) -> tuple[int, int]:
    """`16` or `(8, 16)` -> `(ph, pw)`, checked to be positive integers."""
    size = (patch_size, patch_size) if isinstance(patch_size, int) else tuple(patch_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise ValueError(f"patch_size must be a positive int or a pair (ph, pw) of them; got {patch_size!r}")
    return size  # type: ignore[return-value]


def grid_shape(image_hw: Sequence[int], patch_size: int | Sequence[int], pad: PatchPadding = "none") -> tuple[int, int]:
    """The `(gh, gw)` patch grid of an image, or a ValueError naming both sizes when they do not divide."""
    ph, pw = as_patch_size(patch_size)
    h, w = image_hw
    if pad == "zeros":
        return -(-h // ph), -(-w // pw)
    if pad != "none":
        raise ValueError(f"pad must be one of {PATCH_PADDINGS}; got {pad!r}")
    if h % ph or w % pw:
        raise ValueError(
            f"image size {h}x{w} (height x width) is not a multiple of the patch size {ph}x{pw}; "
            f"resize the image to a multiple of it, or pass pad='zeros' to pad bottom/right to "
            f"{-(-h // ph) * ph}x{-(-w // pw) * pw}"
        )
    return h // ph, w // pw


def pad_to_patch_multiple(images: jax.Array, patch_size: tuple[int, int]) -> jax.Array:
    """Zero-pad `(B, H, W, C)` images at the bottom and right up to the next multiple of the patch size."""
    ph, pw = patch_size
    h, w = images.shape[1:3]
    pad_h, pad_w = -h % ph, -w % pw
    if not (pad_h or pad_w):
        return images
    return jnp.pad(images, ((0, 0), (0, pad_h), (0, pad_w), (0, 0)))


def patchify(images: jax.Array, patch_size: tuple[int, int]) -> jax.Array:
    """`(B, H, W, C)` -> `(B, gh, gw, ph * pw * C)`, each patch flattened (row-in-patch, column-in-patch, channel)."""
    b, h, w, c = images.shape
    ph, pw = patch_size
    gh, gw = grid_shape((h, w), patch_size)
    x = images.reshape(b, gh, ph, gw, pw, c)
    x = x.transpose(0, 1, 3, 2, 4, 5)  # (B, gh, gw, ph, pw, C)
    return x.reshape(b, gh, gw, ph * pw * c)


def unpatchify(patches: jax.Array, patch_size: tuple[int, int], channels: int) -> jax.Array:
    """Inverse of `patchify`: `(B, gh, gw, ph * pw * C)` -> `(B, gh * ph, gw * pw, C)`."""
    b, gh, gw, _ = patches.shape
    ph, pw = patch_size
    x = patches.reshape(b, gh, gw, ph, pw, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(b, gh * ph, gw * pw, channels)


CONV_LAYOUTS = {2: ("NHWC", "HWIO", "NHWC"), 3: ("NDHWC", "DHWIO", "NDHWC")}  # by the kernel's window rank


def embed_patches_conv(
    images: jax.Array, kernel: jax.Array, bias: jax.Array, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
    """Strided VALID convolution whose stride is its window: `(B, H, W, C)` -> `(B, gh, gw, D)`; with a
    `(t, ph, pw, C, D)` tubelet kernel, `(B, T, H, W, C)` videos -> `(B, gt, gh, gw, D)`."""
    y = jax.lax.conv_general_dilated(
        images,
        kernel,
        window_strides=kernel.shape[:-2],
        padding="VALID",
        dimension_numbers=CONV_LAYOUTS[kernel.ndim - 2],
        precision=precision,
    )
    return y + bias


def embed_patches_reshape(
    images: jax.Array, kernel: jax.Array, bias: jax.Array, precision: jax.lax.PrecisionLike = None
) -> jax.Array:
    """Patchify then one matmul with the same kernel: `(B, H, W, C)` -> `(B, gh, gw, D)`."""
    ph, pw, c, d = kernel.shape
    patches = patchify(images, (ph, pw))
    y = jnp.dot(patches, kernel.reshape(ph * pw * c, d), precision=precision)
    return y + bias


class PatchEmbed(nn.Module):
    """Embeds `(B, H, W, C)` images as `(B, gh * gw, D)` tokens (or the `(B, gh, gw, D)` grid).

    Named `embedding` inside VisionTransformer, with the parameters `kernel` `(ph, pw, C, D)` and `bias` `(D,)` of
    vision_transformer's `nn.Conv`, lecun-normal and zeros initialised as there.

    Attributes:
      hidden_size: D, the token width.
      patch_size: `(ph, pw)`, or an int for square patches.
      kind: `conv` or `reshape`; the same parameters give the same output (to float rounding).
      pad: `none` rejects images whose size is not a multiple of the patch size; `zeros` pads bottom/right.
      output_format: `tokens` for `(B, gh * gw, D)` in row-major grid order, `grid` for `(B, gh, gw, D)`.
      dtype: computation dtype (inputs and kernel are cast to it); parameters stay `param_dtype`.
      use_bias: False for no `bias` parameter (CLIP, whose patch embedding is followed by a LayerNorm).
      patch_norm: a LayerNorm `patch_norm` over each patch's `ph * pw * C` pixels (flattened as `patchify` does)
        before the projection, as vit-pytorch's `to_patch_embedding`; its parameters are per pixel of the stored
        patch, so the patch size is fixed.
      embedding_norm: a LayerNorm `embedding_norm` on each token right after the projection (vit-pytorch; timm's
        `embed_norm_layer`). norm_epsilon: both norms' epsilon; rms_norm: both are RMSNorms.
    """

    hidden_size: int
    patch_size: int | Sequence[int]
    kind: PatchEmbedKind = "conv"
    pad: PatchPadding = "none"
    output_format: Literal["tokens", "grid"] = "tokens"
    dtype: jnp.dtype | None = None
    param_dtype: jnp.dtype = jnp.float32
    precision: jax.lax.PrecisionLike = None
    kernel_init: nn.initializers.Initializer = nn.initializers.lecun_normal()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    use_bias: bool = True
    patch_norm: bool = False
    embedding_norm: bool = False
    norm_epsilon: float = 1e-6
    rms_norm: bool = False

    @nn.compact
    def __call__(self, images: jax.Array, patch_size: int | Sequence[int] | None = None) -> jax.Array:
        """`patch_size` (static) embeds with another patch size than the stored kernel's: the kernel is
        PI-resized on the fly (FlexiViT), so one set of parameters serves every patch size."""
        if images.ndim != 4:
            raise ValueError(f"PatchEmbed expects (batch, height, width, channels) images; got shape {images.shape}")
        if self.kind not in PATCH_EMBED_KINDS:
            raise ValueError(f"patch_embed must be one of {PATCH_EMBED_KINDS}; got {self.kind!r}")
        if self.output_format not in ("tokens", "grid"):
            raise ValueError(f"output_format must be 'tokens' or 'grid'; got {self.output_format!r}")
        stored = as_patch_size(self.patch_size)
        patch_size = stored if patch_size is None else as_patch_size(patch_size)
        grid_shape(images.shape[1:3], patch_size, self.pad)  # the clear error, before anything else
        if self.pad == "zeros":
            images = pad_to_patch_multiple(images, patch_size)

        channels = images.shape[-1]
        if self.patch_norm:
            if patch_size != stored:
                raise ValueError(f"patch_size {patch_size} at call time: this patch embedding normalises the pixels "
                                 f"of its stored {stored} patches (patch_norm), so it takes no other patch size")
            patches = LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, rms=self.rms_norm, name="patch_norm")(
                patchify(images, patch_size))
            images = unpatchify(patches, patch_size, channels)
        kernel = self.param("kernel", self.kernel_init, (*stored, channels, self.hidden_size), self.param_dtype)
        bias = (self.param("bias", self.bias_init, (self.hidden_size,), self.param_dtype) if self.use_bias
                else jnp.zeros((self.hidden_size,), self.param_dtype))
        kernel = pi_resize_kernel(kernel, patch_size)
        images, kernel, bias = nn.dtypes.promote_dtype(images, kernel, bias, dtype=self.dtype)

        embed = embed_patches_conv if self.kind == "conv" else embed_patches_reshape
        grid = embed(images, kernel, bias, self.precision)
        if self.embedding_norm:
            grid = LayerNorm(epsilon=self.norm_epsilon, dtype=self.dtype, rms=self.rms_norm,
                             name="embedding_norm")(grid)
        if self.output_format == "grid":
            return grid
        b, gh, gw, d = grid.shape
        return grid.reshape(b, gh * gw, d)


def bilinear_resize_matrix(old_hw: tuple[int, int], new_hw: tuple[int, int]) -> np.ndarray:
    """`B` with `vec(resize(x)) = B @ vec(x)` (row-major `vec`) for half-pixel bilinear resizing without
    antialiasing, exact in float64. Bilinear resizing is separable: `B = B_h (x) B_w`, the Kronecker product of the
    1-D factors."""
    return np.kron(half_pixel_matrix(old_hw[0], new_hw[0]), half_pixel_matrix(old_hw[1], new_hw[1]))


# the resize a PI-resize inverts: FlexiViT's and big_vision's half-pixel bilinear, or timm's `resample_patch_embed`
# (bicubic, antialiased)
PATCH_RESIZE_METHODS: tuple[str, ...] = ("bilinear", "bicubic")


def _axis_resize(size_in: int, size_out: int, method: str) -> np.ndarray:
    if method not in PATCH_RESIZE_METHODS:
        raise ValueError(f"patch kernel resize method must be one of {PATCH_RESIZE_METHODS}; got {method!r}")
    if method == "bilinear":
        return half_pixel_matrix(size_in, size_out)
    return resize_weights(np.arange(size_out), np.asarray(size_out), size_in, "bicubic", antialias=True)


@functools.lru_cache(maxsize=64)
def pi_resize_matrix(old_hw: tuple[int, int], new_hw: tuple[int, int], method: str = "bilinear") -> np.ndarray:
    """`pinv(B^T)`, `(ph' pw', ph pw)`: maps a flattened `(ph, pw)` kernel slice to its PI-resized `(ph', pw')` one.

    `pinv(B_h^T (x) B_w^T) = pinv(B_h^T) (x) pinv(B_w^T)`, so each axis is inverted alone. One side shrinking while
    the other grows makes `B` rank-deficient; inverting the whole float32-built matrix then amplified rounding noise
    by ~1e9. Each exact 1-D factor has full rank (its smaller side), so its pseudo-inverse is well conditioned.
    Evaluated eagerly even while tracing: it is a constant of the compiled program."""
    pinv_h = np.linalg.pinv(_axis_resize(old_hw[0], new_hw[0], method).T)
    pinv_w = np.linalg.pinv(_axis_resize(old_hw[1], new_hw[1], method).T)
    return np.kron(pinv_h, pinv_w)


def pi_resize_kernel(kernel: jax.Array, new_patch_size: int | Sequence[int], method: str = "bilinear") -> jax.Array:
    """PI-resize (FlexiViT, Beyer et al. 2023): the patch kernel `(ph, pw, C, D)` for a new patch size.

    With `B` the resize matrix from `(ph, pw)` to `(ph', pw')` (`method`: FlexiViT's half-pixel bilinear, or timm's
    antialiased bicubic), the new kernel is `pinv(B^T) w` for each input and output channel. Upsampling
    (`ph' >= ph`, `pw' >= pw`) keeps every token exactly: `<x, w> = <resize(x), w_new>` for any patch `x`;
    downsampling gives the least-squares fit. Works on NumPy arrays (in float64) and inside `jit` (the matrix is a
    constant).
    """
    ph, pw, c, d = kernel.shape
    new_hw = as_patch_size(new_patch_size)
    if new_hw == (ph, pw):
        return kernel
    matrix = pi_resize_matrix((ph, pw), new_hw, method)
    if isinstance(kernel, np.ndarray):
        flat = kernel.astype(np.float64).reshape(ph * pw, c * d)
        return (matrix @ flat).reshape(*new_hw, c, d).astype(kernel.dtype)
    flat = kernel.reshape(ph * pw, c * d)
    return (jnp.asarray(matrix, kernel.dtype) @ flat).reshape(*new_hw, c, d)
