"""The encoder block's attention layer: query/key/value projections onto heads -> kernel -> output projection.

flax's `nn.MultiHeadDotProductAttention` computes the same with the same parameter names (`query`, `key`, `value`:
kernel `(D, H, hd)`, bias `(H, hd)`; `out`: kernel `(H, hd, D)`, bias `(D,)`), but its `use_bias` switches the
output bias off together with the query/key/value ones. vit-pytorch, OpenCLIP-style and timm `qkv_bias=False`
models have no query/key/value bias and do have an output bias, so this layer owns the projections and keeps flax's
name (`MultiHeadDotProductAttention_0`), its initialisers and its call convention for the kernel (`attention_fn`
gets only the keyword arguments in its signature; `module=self` when the weights are recorded).
"""

from __future__ import annotations

import inspect
import itertools
import math
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

from vit_jax.models.layer_norm import LayerNorm
from vit_jax.models.mixed_precision import (
    MixedDenseGeneral,
    dense_product,
    library_unless_differentiated,
    mixed_dot_general,
    on_flat_shape,
)
from vit_jax.models.relative_position import relative_position_logits
from vit_jax.native import onednn


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention over `(B, N, D)` tokens; the name gives the vision_transformer path
    `MultiHeadDotProductAttention_0`.

    Attributes:
      num_heads: H. qkv_features: H x hd (None: the token width D). qkv_bias: biases on query/key/value.
      attention_fn: the kernel (`vit_jax.models.attention.attention_function`), flax's signature.
      dropout_rate: dropout on the attention weights (the `einsum` kernel only).
      qkv_dot_general, out_dot_general: the projections' `dot_general` (bf16 operands, f32 accumulation in bf16).
      inner_norm: a LayerNorm `LayerNorm_0` over the heads' concatenated outputs before `out` (EVA-02 CLIP's
        sub-LN; timm's `scale_attn_inner`, `scale_attn_norm`), with epsilon `layer_norm_epsilon` (an RMSNorm with
        `rms_norm`). out_bias: False: the output projection has no bias (timm's `proj_bias=False`).
      qk_norm: each head's queries and keys normalised over the head's channels (`query_norm`, `key_norm`: one
        `(hd,)` scale (and bias) shared by the heads) before the kernel and any rotation (timm's `qk_norm`).
      relative_position_grid: BEiT's relative position biases on the logits, for `num_prefix` prefix tokens then
        this row-major patch grid (`vit_jax.models.relative_position`); None: none.
      num_kv_heads: grouped-query attention's key/value heads (`key`, `value` kernels `(D, num_kv_heads, hd)`),
        each repeated for its `num_heads / num_kv_heads` consecutive query heads; None: `num_heads`.
    """

    num_heads: int
    qkv_features: int | None = None
    qkv_bias: bool = True
    dtype: Any = None
    attention_fn: Callable[..., jax.Array] = nn.dot_product_attention
    dropout_rate: float = 0.0
    qkv_dot_general: Any = None
    out_dot_general: Any = None
    kernel_init: nn.initializers.Initializer = nn.initializers.xavier_uniform()
    bias_init: nn.initializers.Initializer = nn.initializers.zeros
    inner_norm: bool = False
    layer_norm_epsilon: float = 1e-6
    rms_norm: bool = False
    out_bias: bool = True
    qk_norm: bool = False
    relative_position_grid: tuple[int, int] | None = None
    relative_position_resize: str = "geometric"
    num_prefix: int = 0
    num_kv_heads: int | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool, mask: jax.Array | None = None,
                 sow_weights: bool = False, residual: jax.Array | None = None) -> jax.Array:
        """The attention's output, plus `residual` where given (added in the output projection's pass where it
        can be: `dense_product`)."""
        width = x.shape[-1]
        qkv_features = self.qkv_features or width
        head_shape = (self.num_heads, qkv_features // self.num_heads)
        # vit_jax's own products (bf16, or oneDNN's): bias gradients as products too (models/mixed_precision.py)
        mixed = self.qkv_dot_general is mixed_dot_general
        common = dict(dtype=self.dtype, kernel_init=self.kernel_init, bias_init=self.bias_init)
        kv_shape = (self.num_kv_heads or self.num_heads, head_shape[1])
        projections = [HeadsProjection(shape, self.qkv_bias, self.kernel_init, self.bias_init, name=name)(width)
                       for name, shape in (("query", head_shape), ("key", kv_shape), ("value", kv_shape))]
        query, key, value = fused_projection(x, projections, self.dtype, self.qkv_dot_general)
        if kv_shape[0] != self.num_heads:  # each key/value head serves its group of consecutive query heads
            group = self.num_heads // kv_shape[0]
            key, value = jnp.repeat(key, group, axis=-2), jnp.repeat(value, group, axis=-2)
        if self.qk_norm:
            norm = dict(epsilon=self.layer_norm_epsilon, dtype=self.dtype, rms=self.rms_norm)
            query, key = LayerNorm(**norm, name="query_norm")(query), LayerNorm(**norm, name="key_norm")(key)
        dropout = self.dropout_rate > 0.0 and not deterministic
        kwargs = dict(mask=mask, dropout_rng=self.make_rng("dropout") if dropout else None,
                      dropout_rate=self.dropout_rate, broadcast_dropout=False, deterministic=not dropout,
                      dtype=self.dtype)
        if self.relative_position_grid is not None:
            kwargs["bias"] = relative_position_logits(self, tuple(self.relative_position_grid), self.num_heads,
                                                      self.num_prefix, self.relative_position_resize)
        accepted = inspect.signature(self.attention_fn).parameters
        if "bias" in kwargs and "bias" not in accepted:
            raise ValueError(f"attention_fn {getattr(self.attention_fn, '__name__', self.attention_fn)} takes no "
                             f"logit bias (relative position biases)")
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        if sow_weights:
            kwargs["module"] = self
        y = self.attention_fn(query, key, value, **kwargs)
        if self.inner_norm:
            y = LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, rms=self.rms_norm)(
                y.reshape(*y.shape[:-2], qkv_features)).reshape(y.shape)
        out = MixedDenseGeneral if mixed else nn.DenseGeneral
        layer = out(width, axis=(-2, -1), use_bias=self.out_bias, dot_general=self.out_dot_general, name="out", **common)
        if mixed:
            return layer(y, residual)
        y = layer(y)
        return y if residual is None else residual + y


class HeadsProjection(nn.Module):
    """The parameters of one of the query/key/value projections, as flax's `DenseGeneral((H, hd))` creates them:
    kernel `(D, H, hd)` initialised on its flattened `(D, H x hd)` shape, bias `(H, hd)` (None without)."""

    head_shape: tuple[int, int]
    use_bias: bool
    kernel_init: nn.initializers.Initializer
    bias_init: nn.initializers.Initializer

    @nn.compact
    def __call__(self, width: int) -> tuple[jax.Array, jax.Array | None]:
        flat = (width, math.prod(self.head_shape))
        kernel = self.param("kernel", on_flat_shape(self.kernel_init, flat), (width, *self.head_shape), jnp.float32)
        if not self.use_bias:
            return kernel, None
        bias = self.param("bias", on_flat_shape(self.bias_init, flat[1:]), self.head_shape, jnp.float32)
        return kernel, bias


def fused_projection(x: jax.Array, projections: list[tuple[jax.Array, jax.Array | None]], dtype: Any,
                     dot_general: Any) -> list[jax.Array]:
    """`x @ kernel + bias` for each `(kernel (D, H, hd), bias)` as one product with the kernels side by side:
    on ViT-Ti's shapes one `6304 x 192 x 576` product runs at 1.7x the speed of three `6304 x 192 x 192` ones
    (XLA's products; BENCHMARKS.md, experiment 22). Not differentiated, with oneDNN's products, they are three
    products instead, each writing its own output: oneDNN's narrower products cost less than XLA's copies of
    the three column slices the attention's products need as whole buffers (experiment 30)."""
    x, *arrays = nn.dtypes.promote_dtype(x, *itertools.chain.from_iterable(
        (kernel.reshape(kernel.shape[0], -1), None if bias is None else bias.reshape(-1))
        for kernel, bias in projections), dtype=dtype)
    flat = list(zip(arrays[::2], arrays[1::2]))
    dot_general = dot_general or lax.dot_general
    shapes = [(*x.shape[:-1], *kernel.shape[1:]) for kernel, _ in projections]

    def side_by_side(x: jax.Array, flat: list[tuple[jax.Array, jax.Array | None]]) -> list[jax.Array]:
        kernel = jnp.concatenate([k for k, _ in flat], axis=1)
        bias = None if flat[0][1] is None else jnp.concatenate([b for _, b in flat])
        y = dense_product(x, kernel, bias, dot_general)
        splits = list(itertools.accumulate(k.shape[1] for k, _ in flat))[:-1]
        return [part.reshape(shape) for part, shape in zip(jnp.split(y, splits, axis=-1), shapes)]

    def one_by_one(x: jax.Array, flat: list[tuple[jax.Array, jax.Array | None]]) -> list[jax.Array] | None:
        rows = x.reshape(-1, x.shape[-1])
        parts = [onednn.einsum("mk,kn->mn", rows, k, x.dtype, bias=b) for k, b in flat]
        return None if any(p is None for p in parts) else [p.reshape(s) for p, s in zip(parts, shapes)]

    if dot_general is not mixed_dot_general:
        return side_by_side(x, flat)
    return library_unless_differentiated(side_by_side, one_by_one, (x, flat))
