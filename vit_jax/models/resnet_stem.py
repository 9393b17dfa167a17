"""The ResNet stem of the ViT paper's hybrids (R50+ViT-B/16, R26+ViT-B/32): a ResNet-v1.5 with GroupNorm and
weight-standardised convolutions (BiT) whose feature map, not the image, is cut into patches.

Parameter names and numerics are those of google-research/vision_transformer's `models_resnet.py`, and the stem
(`resnet_stem`) creates its modules in the calling module's scope, so `conv_root`, `gn_root` and `block1/unit1/...`
sit at the root of the ViT's tree as in vision_transformer's `VisionTransformer` and its released `.npz` files.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

ROOT_STRIDE = 4  # the 7x7 stride-2 root conv, then a stride-2 max pool
GROUP_NORM_GROUPS = 32  # flax's nn.GroupNorm default, which vision_transformer uses everywhere
# The stem's two epsilons as each codebase has them (weight standardisation's, GroupNorm's): vision_transformer's
# `(w - mean) / (std + 1e-5)` and flax's GroupNorm default 1e-6; timm's `StdConv2d(eps=1e-8)`,
# `(w - mean) / sqrt(var + 1e-8)`, and its GroupNorm's 1e-5 (its hybrids' weights are vision_transformer's, ported)
RESNET_NUMERICS = {"vision_transformer": (1e-5, 1e-6), "timm": (1e-8, 1e-5)}


def weight_standardize(w: jax.Array, axis: Sequence[int], eps: float, numerics: str = "vision_transformer"
                       ) -> jax.Array:
    """`(w - mean) / (std + eps)` over `axis` (vision_transformer's form), or `(w - mean) / sqrt(var + eps)`
    (timm's `StdConv2d`)."""
    w = w - jnp.mean(w, axis=axis)
    if numerics == "timm":
        return w / jnp.sqrt(jnp.var(w, axis=axis) + eps)
    return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
    """A convolution whose kernel is standardised per output channel, so GroupNorm needs no batch statistics
    (BiT's recipe for transfer learning without BatchNorm)."""

    numerics: str = "vision_transformer"

    def param(self, name: str, init_fn: Any, *init_args: Any, **init_kwargs: Any) -> Any:
        param = super().param(name, init_fn, *init_args, **init_kwargs)
        if name == "kernel":
            param = weight_standardize(param, axis=[0, 1, 2], eps=RESNET_NUMERICS[self.numerics][0],
                                       numerics=self.numerics)
        return param


def group_norm(numerics: str, dtype: Any, name: str, **kwargs: Any) -> nn.GroupNorm:
    """flax's GroupNorm with `numerics`' epsilon; timm's (PyTorch's) variance is the two-pass one, which stays
    accurate where the variance is small against the mean (a small feature map)."""
    return nn.GroupNorm(epsilon=RESNET_NUMERICS[numerics][1], dtype=dtype, name=name,
                        use_fast_variance=numerics != "timm", **kwargs)


class ResidualUnit(nn.Module):
    """Bottleneck unit (1x1 -> 3x3 with the stride -> 1x1 to `4 * features`); the last GroupNorm starts at zero
    scale so every unit starts as the identity (plus its projection)."""

    features: int
    strides: tuple[int, int] = (1, 1)
    dtype: Any = None
    numerics: str = "vision_transformer"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        strides = tuple(self.strides)
        conv = lambda features, kernel, strides, name: StdConv(
            features, kernel, strides=strides, use_bias=False, dtype=self.dtype, name=name, numerics=self.numerics)
        norm = lambda name, **kwargs: group_norm(self.numerics, self.dtype, name, **kwargs)
        residual = x
        if x.shape[-1] != self.features * 4 or strides != (1, 1):
            residual = conv(self.features * 4, (1, 1), strides, "conv_proj")(residual)
            residual = norm("gn_proj")(residual)
        y = nn.relu(norm("gn1")(conv(self.features, (1, 1), (1, 1), "conv1")(x)))
        y = nn.relu(norm("gn2")(conv(self.features, (3, 3), strides, "conv2")(y)))
        y = conv(self.features * 4, (1, 1), (1, 1), "conv3")(y)
        y = norm("gn3", scale_init=nn.initializers.zeros)(y)
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    """`block_size` units `unit1..unitN`; only the first one strides."""

    block_size: int
    nout: int
    first_stride: tuple[int, int]
    dtype: Any = None
    numerics: str = "vision_transformer"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        for i in range(self.block_size):
            x = ResidualUnit(self.nout, strides=tuple(self.first_stride) if i == 0 else (1, 1), dtype=self.dtype,
                             numerics=self.numerics, name=f"unit{i + 1}")(x)
        return x


def resnet_stem(images: jax.Array, num_layers: Sequence[int], width_factor: float, dtype: Any = None,
                numerics: str = "vision_transformer") -> jax.Array:
    """Root conv + GroupNorm + ReLU + max pool, then a stage of `num_layers[i]` units per entry. Call it inside
    a compact method: its modules take that module as parent, hence root-level names (`conv_root`, `block1`).
    `numerics`: whose epsilons (`RESNET_NUMERICS`)."""
    width = stem_width(width_factor)
    x = StdConv(width, (7, 7), strides=(2, 2), use_bias=False, dtype=dtype, name="conv_root",
                numerics=numerics)(images)
    x = nn.relu(group_norm(numerics, dtype, "gn_root")(x))
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
    for i, block_size in enumerate(num_layers):
        x = ResNetStage(block_size, nout=width * 2**i, first_stride=(1, 1) if i == 0 else (2, 2), dtype=dtype,
                        numerics=numerics, name=f"block{i + 1}")(x)
    return x


def stem_width(width_factor: float) -> int:
    """Channels of the root conv (`64 * width_factor`, truncated as vision_transformer does); stage i's units are
    `width * 2**i` wide inside and 4 times that at their output."""
    return int(64 * width_factor)


def stem_stride(num_layers: Sequence[int] | None) -> int:
    """How much the stem downsamples: 4 for the root, times 2 per stage after the first (16 for R50's (3, 4, 9));
    1 without a stem."""
    return 1 if num_layers is None else ROOT_STRIDE * 2 ** max(len(num_layers) - 1, 0)


def stem_output_hw(image_hw: Sequence[int], num_layers: Sequence[int] | None) -> tuple[int, int]:
    """The feature map's `(h, w)`: every strided op pads 'SAME', so each side is `ceil(side / stride)`."""
    stride = stem_stride(num_layers)
    return tuple(-(-int(side) // stride) for side in image_hw)  # type: ignore[return-value]


def check_stem_options(num_layers: Any, width_factor: Any, numerics: Any = "vision_transformer") -> None:
    """Clear errors for a bad `resnet_num_layers` / `resnet_width_factor` / `resnet_numerics` before anything is
    traced."""
    if numerics not in RESNET_NUMERICS:
        raise ValueError(f"resnet_numerics must be one of {tuple(RESNET_NUMERICS)}; got {numerics!r}")
    if num_layers is not None and (not isinstance(num_layers, tuple) or not all(
            isinstance(n, int) and not isinstance(n, bool) and n > 0 for n in num_layers)):
        raise ValueError(f"resnet_num_layers must be None (no stem) or a tuple of positive ints, units per stage "
                         f"(e.g. (3, 4, 9) for R50, () for the root conv only); got {num_layers!r}")
    if isinstance(width_factor, bool) or not isinstance(width_factor, (int, float)) or width_factor <= 0:
        raise ValueError(f"resnet_width_factor must be a positive number; got {width_factor!r}")
    width = stem_width(width_factor)
    if width % GROUP_NORM_GROUPS:
        raise ValueError(
            f"resnet_width_factor {width_factor!r} gives a stem width of int(64 * {width_factor!r}) = {width} "
            f"channels; GroupNorm's {GROUP_NORM_GROUPS} groups need a multiple of {GROUP_NORM_GROUPS} "
            f"(width factor 0.5, 1, 1.5, ...)"
        )
    if num_layers is None and numerics != "vision_transformer":
        raise ValueError(f"resnet_numerics {numerics!r} has no effect without a stem: set resnet_num_layers or leave "
                         f"it at 'vision_transformer'")
    if num_layers is None and width_factor != 1.0:
        raise ValueError(f"resnet_width_factor {width_factor!r} has no effect without a stem: "
                         f"set resnet_num_layers (e.g. (3, 4, 9)) or leave the width factor at 1.0")
