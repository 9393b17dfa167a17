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


def weight_standardize(w: jax.Array, axis: Sequence[int], eps: float) -> jax.Array:
    """`(w - mean) / (std + eps)` over `axis`: vision_transformer's form. (timm's `StdConv2d` divides by
    `sqrt(var + eps)` with eps=1e-8 instead; the two agree to about `eps / std` relative.)"""
    w = w - jnp.mean(w, axis=axis)
    return w / (jnp.std(w, axis=axis) + eps)


class StdConv(nn.Conv):
    """A convolution whose kernel is standardised per output channel, so GroupNorm needs no batch statistics
    (BiT's recipe for transfer learning without BatchNorm)."""

    def param(self, name: str, init_fn: Any, *init_args: Any, **init_kwargs: Any) -> Any:
        param = super().param(name, init_fn, *init_args, **init_kwargs)
        if name == "kernel":
            param = weight_standardize(param, axis=[0, 1, 2], eps=1e-5)
        return param


class ResidualUnit(nn.Module):
    """Bottleneck unit (1x1 -> 3x3 with the stride -> 1x1 to `4 * features`); the last GroupNorm starts at zero
    scale so every unit starts as the identity (plus its projection)."""

    features: int
    strides: tuple[int, int] = (1, 1)
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        strides = tuple(self.strides)
        conv = lambda features, kernel, strides, name: StdConv(
            features, kernel, strides=strides, use_bias=False, dtype=self.dtype, name=name)
        residual = x
        if x.shape[-1] != self.features * 4 or strides != (1, 1):
            residual = conv(self.features * 4, (1, 1), strides, "conv_proj")(residual)
            residual = nn.GroupNorm(dtype=self.dtype, name="gn_proj")(residual)
        y = nn.relu(nn.GroupNorm(dtype=self.dtype, name="gn1")(conv(self.features, (1, 1), (1, 1), "conv1")(x)))
        y = nn.relu(nn.GroupNorm(dtype=self.dtype, name="gn2")(conv(self.features, (3, 3), strides, "conv2")(y)))
        y = conv(self.features * 4, (1, 1), (1, 1), "conv3")(y)
        y = nn.GroupNorm(scale_init=nn.initializers.zeros, dtype=self.dtype, name="gn3")(y)
        return nn.relu(residual + y)


class ResNetStage(nn.Module):
    """`block_size` units `unit1..unitN`; only the first one strides."""

    block_size: int
    nout: int
    first_stride: tuple[int, int]
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x = ResidualUnit(self.nout, strides=tuple(self.first_stride), dtype=self.dtype, name="unit1")(x)
        for i in range(1, self.block_size):
            x = ResidualUnit(self.nout, strides=(1, 1), dtype=self.dtype, name=f"unit{i + 1}")(x)
        return x


def resnet_stem(images: jax.Array, num_layers: Sequence[int], width_factor: float, dtype: Any = None) -> jax.Array:
    """Root conv + GroupNorm + ReLU + max pool, then a stage of `num_layers[i]` units per entry. Call it inside
    a compact method: its modules take that module as parent, hence root-level names (`conv_root`, `block1`)."""
    width = stem_width(width_factor)
    x = StdConv(width, (7, 7), strides=(2, 2), use_bias=False, dtype=dtype, name="conv_root")(images)
    x = nn.relu(nn.GroupNorm(dtype=dtype, name="gn_root")(x))
    x = nn.max_pool(x, window_shape=(3, 3), strides=(2, 2), padding="SAME")
    for i, block_size in enumerate(num_layers):
        x = ResNetStage(block_size, nout=width * 2**i, first_stride=(1, 1) if i == 0 else (2, 2), dtype=dtype,
                        name=f"block{i + 1}")(x)
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


def check_stem_options(num_layers: Any, width_factor: Any) -> None:
    """Clear errors for a bad `resnet_num_layers` / `resnet_width_factor` before anything is traced."""
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
    if num_layers is None and width_factor != 1.0:
        raise ValueError(f"resnet_width_factor {width_factor!r} has no effect without a stem: "
                         f"set resnet_num_layers (e.g. (3, 4, 9)) or leave the width factor at 1.0")
