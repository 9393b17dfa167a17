"""Which kernel computes softmax(QK^T / sqrt(d)) V inside each encoder block.

- `einsum`: flax's `dot_product_attention` (two einsums and a softmax XLA fuses as it can); in bf16, the two
  products go through `mixed_attention` (bf16 operands, float32 accumulation) instead. The only choice with
  attention dropout, and the one that can record attention weights (for `vit_jax.visualize`).
- `xla`: `jax.nn.dot_product_attention(implementation='xla')`, JAX's own formulation.
- `cudnn`: `jax.nn.dot_product_attention(implementation='cudnn')`, cuDNN's fused (flash) attention on NVIDIA
  GPUs; it needs bf16 or fp16 computation and a GPU backend.

All three take flax's `(batch, length, heads, head_dim)` layout and give the same numbers up to rounding.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.mixed_precision import is_bfloat16, mixed_attention
from vit_jax.native import onednn

AttentionImpl = Literal["einsum", "xla", "cudnn"]
ATTENTION_IMPLS: tuple[str, ...] = ("einsum", "xla", "cudnn")


def check_attention_impl(impl: str, dtype: Any, attention_dropout_rate: float, record_weights: bool = False
                         ) -> None:
    """Raise a ValueError naming the bad combination, before anything is traced."""
    if impl not in ATTENTION_IMPLS:
        raise ValueError(f"attention_impl must be one of {ATTENTION_IMPLS}; got {impl!r}")
    if record_weights and impl != "einsum":
        raise ValueError(f"recording attention weights needs attention_impl='einsum' (the fused kernels never "
                         f"form them); got attention_impl={impl!r}")
    if impl != "einsum" and attention_dropout_rate:
        raise ValueError(f"attention_impl={impl!r} has no attention dropout; got attention_dropout_rate "
                         f"{attention_dropout_rate}: use attention_impl='einsum' or attention_dropout_rate=0")
    if impl == "cudnn":
        if dtype is None or jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
            raise ValueError(f"attention_impl='cudnn' needs dtype bfloat16 or float16 (cuDNN's fused attention); "
                             f"got dtype {jnp.dtype(dtype or jnp.float32).name}")
        if jax.default_backend() != "gpu":
            raise ValueError(f"attention_impl='cudnn' needs an NVIDIA GPU; this process's JAX backend is "
                             f"{jax.default_backend()!r}: use attention_impl='xla' or 'einsum'")


def _fused(implementation: str) -> Callable[..., jax.Array]:
    def attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None,
                  bias: jax.Array | None = None, **unused: Any) -> jax.Array:
        bias = None if bias is None else bias.astype(query.dtype)
        return jax.nn.dot_product_attention(query, key, value, bias=bias, mask=mask, implementation=implementation)

    attention.__name__ = f"dot_product_attention_{implementation}"
    return attention


def attention_function(impl: AttentionImpl, dtype: Any, attention_dropout_rate: float, record_weights: bool = False
                       ) -> Callable[..., jax.Array]:
    """The `attention_fn` for flax's `MultiHeadDotProductAttention`; `record_weights` needs flax's own function,
    the one that sows the softmax weights."""
    if impl != "einsum":
        return _fused(impl)
    if (is_bfloat16(dtype) or onednn.usable()) and not attention_dropout_rate and not record_weights:
        return mixed_attention
    return nn.dot_product_attention
