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
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax

from vit_jax.models.mixed_precision import MixedDenseGeneral, mixed_dot_general


class MultiHeadDotProductAttention(nn.Module):
    """Self-attention over `(B, N, D)` tokens; the name gives the vision_transformer path
    `MultiHeadDotProductAttention_0`.

    Attributes:
      num_heads: H. qkv_features: H x hd (None: the token width D). qkv_bias: biases on query/key/value.
      attention_fn: the kernel (`vit_jax.models.attention.attention_function`), flax's signature.
      dropout_rate: dropout on the attention weights (the `einsum` kernel only).
      qkv_dot_general, out_dot_general: the projections' `dot_general` (bf16 operands, f32 accumulation in bf16).
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

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool, mask: jax.Array | None = None,
                 sow_weights: bool = False) -> jax.Array:
        width = x.shape[-1]
        qkv_features = self.qkv_features or width
        # bf16 projections (a `dot_general` given): bias gradients as products (vit_jax.models.mixed_precision)
        heads = MixedDenseGeneral if self.qkv_dot_general is mixed_dot_general else nn.DenseGeneral
        common = dict(dtype=self.dtype, kernel_init=self.kernel_init, bias_init=self.bias_init)
        query, key, value = (
            heads((self.num_heads, qkv_features // self.num_heads), axis=-1, use_bias=self.qkv_bias,
                  dot_general=self.qkv_dot_general, name=name, **common)(x)
            for name in ("query", "key", "value"))
        dropout = self.dropout_rate > 0.0 and not deterministic
        kwargs = dict(mask=mask, dropout_rng=self.make_rng("dropout") if dropout else None,
                      dropout_rate=self.dropout_rate, broadcast_dropout=False, deterministic=not dropout,
                      dtype=self.dtype)
        accepted = inspect.signature(self.attention_fn).parameters
        kwargs = {k: v for k, v in kwargs.items() if k in accepted}
        if sow_weights:
            kwargs["module"] = self
        y = self.attention_fn(query, key, value, **kwargs)
        return heads(width, axis=(-2, -1), use_bias=True, dot_general=self.out_dot_general, name="out",
                     **common)(y)
