"""Attention's softmax, with a backward pass that needs only its output.

`jax.nn.softmax` (unless `jax_softmax_custom_jvp` is set, which is off by default in this JAX) differentiates
`exp(x - max) / sum`: its backward keeps the exponentials and the sums, and XLA:CPU materialises the broadcasts
of `1 / sum²` over the whole `(batch, heads, queries, keys)` tensor. The softmax's own derivative,
`dx = y * (g - sum(g * y))`, is one pass over the saved output `y`: for bf16 attention that output is the bf16
weights the value product keeps anyway. It is a JVP rule (self-transposing), so forward mode and higher orders
work too.

Where oneDNN is in use (`vit_jax.native.onednn`), the forward pass is its softmax: one pass over each row, where
XLA:CPU takes the row maxima and sums through trees of `reduce-window`s, a pass each (ViT-Ti/16 bf16 inference:
34 of ~270 ms of op time; BENCHMARKS.md, experiment 30).
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax.interpreters import ad

from vit_jax.models.primitives import define_primitive
from vit_jax.native import onednn


def softmax(logits: jax.Array, dtype: Any = None) -> jax.Array:
    """Softmax over the last axis, computed in float32 (at least) and returned in `dtype` (None: the logits')."""
    return _softmax_p.bind(logits, dtype=jnp.dtype(dtype or logits.dtype))


def _softmax_lowered(logits: jax.Array, *, dtype: Any) -> jax.Array:
    library = onednn.softmax(logits, dtype)
    if library is not None:
        return library
    x = logits.astype(jnp.promote_types(logits.dtype, jnp.float32))
    unnormalized = jnp.exp(x - jnp.max(x, axis=-1, keepdims=True))
    return (unnormalized / jnp.sum(unnormalized, axis=-1, keepdims=True)).astype(dtype)


@functools.partial(jax.checkpoint, prevent_cse=False)
def _softmax_tangent(weights: jax.Array, t: jax.Array) -> jax.Array:
    """`y (t - sum(t y))`: linear in `t`, its transpose is the same formula, so the backward pass keeps only the
    weights `y` (checkpointed: nothing computed from them is saved)."""
    compute = jnp.promote_types(weights.dtype, jnp.float32)
    y, t = weights.astype(compute), t.astype(compute)
    return (y * (t - jnp.sum(t * y, axis=-1, keepdims=True))).astype(weights.dtype)


def _softmax_jvp(primals: tuple[jax.Array], tangents: tuple[Any], *, dtype: Any) -> tuple[jax.Array, Any]:
    (logits,), (t,) = primals, tangents
    weights = _softmax_p.bind(logits, dtype=dtype)
    if type(t) is ad.Zero:
        return weights, ad.Zero.from_primal_value(weights)
    return weights, _softmax_tangent(weights, t)


def _softmax_batched(args: tuple[jax.Array], dims: tuple[int], *, dtype: Any) -> tuple[jax.Array, int]:
    (logits,), (dim,) = args, dims
    logits = jnp.moveaxis(logits, dim, 0)  # off the last axis, which the softmax runs along
    return softmax(logits, dtype), 0


# A primitive with its own JVP rule (rather than a `custom_jvp` function): inside `scan` JAX's partial evaluation
# keeps a primitive's rules at every order, where it inlines a custom function's primal, here an FFI call.
_softmax_p = define_primitive("vit_jax_rowwise_softmax", _softmax_lowered,
                              lambda logits, *, dtype: jax.core.ShapedArray(logits.shape, dtype), _softmax_batched,
                              jvp=_softmax_jvp)
