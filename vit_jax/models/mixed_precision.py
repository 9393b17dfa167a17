"""bf16 matrix products that accumulate in float32, forward and backward.

Given bf16 operands, XLA's CPU backend turns a bf16 x bf16 -> bf16 dot into a float32 dot (no faster than float32),
and the backward of a bf16 x bf16 -> f32 dot into f32 x bf16 dots that it upcasts the same way. `mixed_dot_general`
keeps all three products of a dense layer (forward, input gradient, kernel gradient) bf16 x bf16 with float32
accumulation, the form the fast bf16 kernels take, and rounds each result once to the operands' dtype, as
PyTorch's bf16 autocast does. It serves any contraction of trailing input dimensions with leading kernel dimensions
(flax's `Dense` and `DenseGeneral`, the attention projections); other dimension numbers fall back to
`lax.dot_general`.
"""

from __future__ import annotations

import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax


def _product(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, a, b)` as one `[batch, m, k] x [batch, k, n]` bf16 product with float32 accumulation.

    The operands are transposed into that form behind an optimisation barrier: XLA would otherwise fold the
    transposes into the dot's dimension numbers, and XLA:CPU's fast bf16 kernels do not take a contraction over
    a leading dimension (the backward products), which then fail at run time ("Unsupported element type for
    DotThunk::Execute: BF16 x BF16 = F32")."""
    operands, out = spec.split("->")
    a_spec, b_spec = operands.split(",")
    batch = [i for i in out if i in a_spec and i in b_spec]
    contracted = [i for i in a_spec if i in b_spec and i not in out]
    a_free = [i for i in a_spec if i not in batch and i not in contracted]
    b_free = [i for i in b_spec if i not in batch and i not in contracted]
    sizes = {**dict(zip(a_spec, a.shape)), **dict(zip(b_spec, b.shape))}
    size = lambda indices: math.prod(sizes[i] for i in indices)

    def arranged(x: jax.Array, x_spec: str, order: list[str], shape: tuple[int, ...]) -> jax.Array:
        permutation = [x_spec.index(i) for i in order]
        if permutation != sorted(permutation):
            x = lax.optimization_barrier(jnp.transpose(x, permutation))
        return x.reshape(shape)

    lead = (size(batch),) if batch else ()
    a2 = arranged(a, a_spec, batch + a_free + contracted, (*lead, size(a_free), size(contracted)))
    b2 = arranged(b, b_spec, batch + contracted + b_free, (*lead, size(contracted), size(b_free)))
    dims = (((len(lead) + 1,), (len(lead),)), ((0,), (0,)) if batch else ((), ()))
    result = lax.dot_general(a2, b2, dims, preferred_element_type=jnp.float32)
    result = result.reshape([sizes[i] for i in batch + a_free + b_free])
    result = jnp.transpose(result, [(batch + a_free + b_free).index(i) for i in out])
    return result.astype(a.dtype)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def mixed_einsum(spec: str, a: jax.Array, b: jax.Array) -> jax.Array:
    """`jnp.einsum(spec, a, b)` for a two-operand product with no index summed inside one operand: bf16 x bf16
    with float32 accumulation, rounded to `a.dtype`; its gradients are the two transposed products, in the same
    form."""
    return _product(spec, a, b)


def _mixed_einsum_fwd(spec: str, a: jax.Array, b: jax.Array) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
    return mixed_einsum(spec, a, b), (a, b)


def _mixed_einsum_bwd(spec: str, residuals: tuple[jax.Array, jax.Array], g: jax.Array
                      ) -> tuple[jax.Array, jax.Array]:
    a, b = residuals
    operands, out = spec.split("->")
    a_spec, b_spec = operands.split(",")
    g = g.astype(a.dtype)
    return _product(f"{out},{b_spec}->{a_spec}", g, b), _product(f"{a_spec},{out}->{b_spec}", a, g).astype(b.dtype)


mixed_einsum.defvjp(_mixed_einsum_fwd, _mixed_einsum_bwd)


def _contracts_trailing_with_leading(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> int:
    """How many trailing `lhs` dimensions meet as many leading `rhs` dimensions, in order (0: another form)."""
    (lhs_contract, rhs_contract), (lhs_batch, rhs_batch) = dimension_numbers
    k = len(lhs_contract)
    if lhs_batch or rhs_batch or k == 0 or len(rhs_contract) != k:
        return 0
    if tuple(lhs_contract) != tuple(range(lhs.ndim - k, lhs.ndim)) or tuple(rhs_contract) != tuple(range(k)):
        return 0
    return k


def mixed_dot_general(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any, precision: Any = None,
                      preferred_element_type: Any = None, **kwargs: Any) -> jax.Array:
    """A drop-in `dot_general` for flax layers whose operands are bf16 (see the module docstring)."""
    k = _contracts_trailing_with_leading(lhs, rhs, dimension_numbers)
    if k == 0 or lhs.dtype != jnp.bfloat16 or rhs.dtype != jnp.bfloat16:
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kwargs)
    batch_shape, contracted = lhs.shape[: lhs.ndim - k], lhs.shape[lhs.ndim - k:]
    size = math.prod(contracted)
    out = mixed_einsum("mk,kn->mn", lhs.reshape(-1, size), rhs.reshape(size, -1))
    return out.reshape(*batch_shape, *rhs.shape[k:])


def mixed_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None,
                    **unused: Any) -> jax.Array:
    """Softmax attention over `(batch, length, heads, head_dim)` bf16 inputs: both products through
    `mixed_einsum`, the softmax in float32. For flax's `MultiHeadDotProductAttention(attention_fn=...)`; `mask`
    (broadcastable to `(batch, heads, queries, keys)`, True: attend) as flax's; no attention dropout (the
    encoder only picks this function without it)."""
    query = query / jnp.sqrt(query.shape[-1]).astype(query.dtype)
    logits = mixed_einsum("bqhd,bkhd->bhqk", query, key)
    if mask is not None:
        logits = jnp.where(mask, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
    weights = jax.nn.softmax(logits.astype(jnp.float32), axis=-1).astype(value.dtype)
    return mixed_einsum("bhqk,bkhd->bqhd", weights, value)


def is_bfloat16(dtype: Any) -> bool:
    """Whether a module's computation `dtype` asks for these products."""
    return dtype is not None and jnp.dtype(dtype) == jnp.bfloat16
