"""bf16 matrix products that accumulate in float32, forward and backward.

Given bf16 operands, XLA's CPU backend turns a bf16 x bf16 -> bf16 dot into a float32 dot (no faster than float32),
and the backward of a bf16 x bf16 -> f32 dot into f32 x bf16 dots that it upcasts the same way. `mixed_dot_general`
keeps all three products of a dense layer (forward, input gradient, kernel gradient) bf16 x bf16 with float32
accumulation, the form the fast bf16 kernels take, and rounds each result once to the operands' dtype, as
PyTorch's bf16 autocast does. It serves any contraction of trailing input dimensions with leading kernel dimensions
(flax's `Dense` and `DenseGeneral`, the attention projections); other dimension numbers fall back to
`lax.dot_general`. `MixedDense` / `MixedDenseGeneral` are flax's layers with bias gradients taken as products
(`add_bias`), the form XLA:CPU runs fast in bf16.

On one CPU device with oneDNN installed (`vit_jax.native.onednn`) every one of these products, in bf16 and in
float32, is oneDNN's instead: about twice XLA's speed on dense layers and four times on attention's batched
products (BENCHMARKS.md, experiment 19). Elsewhere they are XLA's, in the forms above.
"""

from __future__ import annotations

import functools
import math
import string
from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax
from jax.custom_derivatives import SymbolicZero

from vit_jax import native
from vit_jax.einsum_spec import EinsumSpec
from vit_jax.models.activations import ACTIVATIONS
from vit_jax.models.primitives import define_primitive
from vit_jax.models.softmax import softmax
from vit_jax.native import onednn


def _product(spec: str, a: jax.Array, b: jax.Array, out_dtype: Any, scale: float = 1.0) -> jax.Array:
    """`scale * jnp.einsum(spec, a, b)` as one `[batch, m, k] x [batch, k, n]` (or `[batch, n, k]`, when `b` comes that
    way) bf16 product with float32 accumulation.

    The operands are transposed into that form where XLA cannot fold the transposes into the dot's dimension
    numbers (XLA:CPU's fast bf16 kernels do not take a contraction over a leading dimension, as the weight
    gradients have): by vit_jax's native transpose (`vit_jax.native`) for a 2-D swap, after which the product
    stays bf16, else behind an optimisation barrier, after which XLA:CPU computes the product in float32
    (correct, about 2.5x slower: BENCHMARKS.md, experiment 17)."""
    library = onednn.einsum(spec, a, b, out_dtype, scale=scale)
    if library is not None:
        return library
    parsed = EinsumSpec.parse(spec)
    a_spec, b_spec, out, batch, contracted = parsed.a, parsed.b, parsed.out, parsed.batch, parsed.contracted
    a_free = [i for i in a_spec if i not in batch and i not in contracted]
    b_free = [i for i in b_spec if i not in batch and i not in contracted]
    sizes = {**dict(zip(a_spec, a.shape)), **dict(zip(b_spec, b.shape))}
    size = lambda indices: math.prod(sizes[i] for i in indices)

    def arranged(x: jax.Array, x_spec: str, order: list[str], shape: tuple[int, ...]) -> jax.Array:
        permutation = [x_spec.index(i) for i in order]
        if permutation == sorted(permutation):
            return x.reshape(shape)
        split = next((s for s in range(1, len(x_spec)) if order == list(x_spec[s:] + x_spec[:s])), None)
        if split is not None and native.available():  # a 2-D transpose XLA cannot see through: stays bf16
            return native.transpose(x.reshape(math.prod(x.shape[:split]), -1)).reshape(shape)
        return lax.optimization_barrier(jnp.transpose(x, permutation)).reshape(shape)

    lead = (size(batch),) if batch else ()
    a2 = arranged(a, a_spec, batch + a_free + contracted, (*lead, size(a_free), size(contracted)))
    if [b_spec.index(i) for i in batch + b_free + contracted] == list(range(len(b_spec))):
        # `b` already [batch, n, k]: contracting the trailing axes of both runs in bf16 as it is, while the
        # barrier would make XLA:CPU upcast the product to float32 (about 3x slower; BENCHMARKS.md, experiment 17)
        b2 = b.reshape(*lead, size(b_free), size(contracted))
        dims = (((len(lead) + 1,), (len(lead) + 1,)), ((0,), (0,)) if batch else ((), ()))
    else:
        b2 = arranged(b, b_spec, batch + contracted + b_free, (*lead, size(contracted), size(b_free)))
        dims = (((len(lead) + 1,), (len(lead),)), ((0,), (0,)) if batch else ((), ()))
    result = lax.dot_general(a2, b2, dims, preferred_element_type=jnp.float32)
    result = result.reshape([sizes[i] for i in batch + a_free + b_free])
    result = jnp.transpose(result, [(batch + a_free + b_free).index(i) for i in out])
    return (result if scale == 1.0 else result * jnp.float32(scale)).astype(out_dtype)


def mixed_einsum(spec: str, a: jax.Array, b: jax.Array, out_dtype: Any = None, scale: float = 1.0) -> jax.Array:
    """`scale * jnp.einsum(spec, a, b)` for a two-operand product with no index summed inside one operand: bf16 x
    bf16 with float32 accumulation, scaled in float32 and rounded to `out_dtype` (None: `a.dtype`); its gradients
    are the two transposed products, in the same form (and scale).

    A JAX primitive, bilinear like `lax.dot_general`: its derivative rules are products of the same kind, so every
    transformation applies to any order (forward mode, Hessian-vector products, `vmap`), where a `custom_vjp`
    would allow reverse mode only."""
    return _mixed_einsum_p.bind(a, b, spec=spec, out_dtype=jnp.dtype(out_dtype or a.dtype), scale=float(scale))


def _mixed_einsum_abstract(a: Any, b: Any, *, spec: str, out_dtype: Any, scale: float) -> jax.core.ShapedArray:
    parsed = EinsumSpec.parse(spec)
    sizes = {**dict(zip(parsed.a, a.shape)), **dict(zip(parsed.b, b.shape))}
    return jax.core.ShapedArray(tuple(sizes[i] for i in parsed.out), out_dtype)


def _mixed_einsum_lowered(a: jax.Array, b: jax.Array, *, spec: str, out_dtype: Any, scale: float) -> jax.Array:
    return _product(spec, a, b, out_dtype, scale)


def _transposed_product(spec: str, scale: float, ct: jax.Array, other: jax.Array, wanted: Any, lhs: bool
                        ) -> jax.Array:
    """The cotangent of one operand: the product of the output's cotangent with the other operand, unscaled, then
    scaled in float32 (as a post-op on a bf16 result oneDNN's products ran 10-30% slower; the logits' float32
    forward product takes it at no cost)."""
    s = EinsumSpec.parse(spec)
    ct = ct.astype(other.dtype)
    if lhs:
        grad = mixed_einsum(f"{s.out},{s.b}->{s.a}", ct, other, wanted.dtype)
    else:
        grad = mixed_einsum(f"{s.a},{s.out}->{s.b}", other, ct, wanted.dtype)
    if scale == 1.0:
        return grad
    return (grad.astype(jnp.float32) * jnp.float32(scale)).astype(grad.dtype)  # the forward pass's float32 scale


def _mixed_einsum_transpose_lhs(ct: jax.Array, a: Any, b: jax.Array, *, spec: str, out_dtype: Any, scale: float
                                ) -> jax.Array:
    return _transposed_product(spec, scale, ct, b, a.aval, lhs=True)


def _mixed_einsum_transpose_rhs(ct: jax.Array, a: jax.Array, b: Any, *, spec: str, out_dtype: Any, scale: float
                                ) -> jax.Array:
    return _transposed_product(spec, scale, ct, a, b.aval, lhs=False)


def _mixed_einsum_batched(args: tuple[jax.Array, jax.Array], dims: tuple[int | None, int | None], *, spec: str,
                          out_dtype: Any, scale: float) -> tuple[jax.Array, int]:
    """`vmap`: the mapped axis is one more index of the product (a batch index where both operands have it)."""
    parsed = EinsumSpec.parse(spec)
    letter = next(c for c in string.ascii_letters if c not in spec)
    moved = []
    for x, dim, x_spec in zip(args, dims, (parsed.a, parsed.b)):
        if dim is None:
            moved.append((x, x_spec))
        else:
            moved.append((jnp.moveaxis(x, dim, 0), letter + x_spec))
    (a, a_spec), (b, b_spec) = moved
    return mixed_einsum(f"{a_spec},{b_spec}->{letter}{parsed.out}", a, b, out_dtype, scale), 0


_mixed_einsum_p = define_primitive("vit_jax_mixed_einsum", _mixed_einsum_lowered, _mixed_einsum_abstract,
                                  _mixed_einsum_batched,
                                  transposes=(_mixed_einsum_transpose_lhs, _mixed_einsum_transpose_rhs))



def policy_seeing_products(policy: Callable[..., bool] | None) -> Callable[..., bool] | None:
    """`policy` (a `jax.checkpoint_policies` member, for `jax.checkpoint` / `nn.remat`) shown vit_jax's product as
    the `lax.dot_general` it computes, so that the dot policies (`dots_saveable`, `dots_with_no_batch_dims_saveable`,
    ...) save it as they save XLA's products instead of recomputing it."""
    if policy is None:
        return None

    def with_products(prim: Any, *args: Any, **params: Any) -> bool:
        if prim is not _mixed_einsum_p:
            return policy(prim, *args, **params)
        dims = EinsumSpec.parse(params["spec"]).dimension_numbers()
        return policy(lax.dot_general_p, *args, dimension_numbers=dims, precision=None,
                      preferred_element_type=params["out_dtype"], out_sharding=None)

    return with_products

def contracted_trailing_axes(lhs: jax.Array, rhs: jax.Array, dimension_numbers: Any) -> int:
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
    k = contracted_trailing_axes(lhs, rhs, dimension_numbers)
    library = lhs.dtype == rhs.dtype == jnp.float32 and onednn.usable()
    if k == 0 or not (library or lhs.dtype == rhs.dtype == jnp.bfloat16):
        return lax.dot_general(lhs, rhs, dimension_numbers, precision, preferred_element_type, **kwargs)
    batch_shape, contracted = lhs.shape[: lhs.ndim - k], lhs.shape[lhs.ndim - k:]
    size = math.prod(contracted)
    out = mixed_einsum("mk,kn->mn", lhs.reshape(-1, size), rhs.reshape(size, -1))
    return out.reshape(*batch_shape, *rhs.shape[k:])


def mixed_attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None = None,
                    bias: jax.Array | None = None, **unused: Any) -> jax.Array:
    """Softmax attention over `(batch, length, heads, head_dim)` bf16 inputs: both products through
    `mixed_einsum`, the softmax in float32. For flax's `MultiHeadDotProductAttention(attention_fn=...)`; `mask`
    (broadcastable to `(batch, heads, queries, keys)`, True: attend) as flax's; no attention dropout (the
    encoder only picks this function without it); `bias` (broadcastable likewise) added to the logits. Where only its
    value is wanted and nothing is masked or biased, oneDNN's fused form where it can (`onednn.attention`: the same
    primitives, the same bits, with the logits in cache)."""
    scale = 1.0 / math.sqrt(query.shape[-1])
    unfused = functools.partial(_attention, mask=mask, scale=scale, bias=bias)
    if mask is not None or bias is not None:
        return unfused(query, key, value)
    library = functools.partial(onednn.attention, scale=scale)
    return library_unless_differentiated(unfused, library, (query, key, value))


def _attention(query: jax.Array, key: jax.Array, value: jax.Array, mask: jax.Array | None, scale: float,
               bias: jax.Array | None = None) -> jax.Array:
    # float32 logits straight from the product, scaled by 1/sqrt(head_dim) on its float32 accumulator: no pass of
    # their own for the conversion (BENCHMARKS.md, exp. 28) or for scaling the queries (exp. 30)
    logits = mixed_einsum("bqhd,bkhd->bhqk", query, key, jnp.float32, scale)
    if bias is not None:
        logits = logits + bias.astype(jnp.float32)
    if mask is not None:
        logits = jnp.where(mask, logits, jnp.finfo(jnp.float32).min)
    weights = softmax(logits, value.dtype)
    return mixed_einsum("bhqk,bkhd->bqhd", weights, value)


def is_bfloat16(dtype: Any) -> bool:
    """Whether a module's computation `dtype` asks for these products."""
    return dtype is not None and jnp.dtype(dtype) == jnp.bfloat16


@jax.custom_jvp
def add_bias(y: jax.Array, bias: jax.Array) -> jax.Array:
    """`y + bias` (bias over `y`'s trailing axes) whose bias gradient is a product with a ones vector, accumulated
    in float32. XLA:CPU reduces a bf16 cotangent over the batch and tokens through a tree of `reduce-window`s:
    ~10x slower than the product (ViT-Ti/16 at batch 32: 9.6 vs 0.9 ms per bias; BENCHMARKS.md)."""
    return y + bias


def _add_bias_jvp(primals: tuple[jax.Array, jax.Array], tangents: tuple[Any, Any]) -> tuple[jax.Array, jax.Array]:
    (y, bias), (t_y, t_bias) = primals, tangents
    if isinstance(t_bias, SymbolicZero):  # the bias not differentiated: no broadcast of zeros kept for the backward
        return y + bias, jnp.zeros_like(y) if isinstance(t_y, SymbolicZero) else t_y
    t_y = jnp.zeros_like(y) if isinstance(t_y, SymbolicZero) else t_y
    # the bias broadcast over the rows as a product with a ones column: its transpose, the bias gradient, is then
    # a product with a ones row, the form that runs fast (above)
    ones = jnp.ones((math.prod(y.shape) // max(1, bias.size), 1), t_bias.dtype)
    broadcast = mixed_einsum("mk,kn->mn", ones, t_bias.reshape(1, -1), t_bias.dtype).reshape(y.shape)
    return y + bias, t_y + broadcast.astype(t_y.dtype)


add_bias.defjvp(_add_bias_jvp, symbolic_zeros=True)


@functools.partial(jax.custom_jvp, nondiff_argnums=(0, 1))
def library_unless_differentiated(unfused: Callable[..., Any], library: Callable[..., Any], operands: tuple) -> Any:
    """`library(*operands)` where nothing differentiates it and it is not None, else `unfused(*operands)`: the
    same function, computed in fewer passes where only its value is wanted (inference, evaluation), and in the
    form whose intermediates the derivatives need where it is differentiated (in either mode, to any order)."""
    out = library(*operands)
    return unfused(*operands) if out is None else out


@library_unless_differentiated.defjvp
def _library_jvp(unfused: Callable[..., Any], library: Callable[..., Any], primals: tuple, tangents: tuple
                 ) -> tuple[Any, Any]:
    return jax.jvp(lambda operands: unfused(*operands), primals, tangents)


def dense_product(inputs: jax.Array, kernel: jax.Array, bias: jax.Array | None, dot_general: Any,
                  contracted: int = 1, activation: str | None = None, precision: Any = None,
                  residual: jax.Array | None = None) -> jax.Array:
    """`activation(inputs @ kernel + bias)`, `inputs`' trailing `contracted` axes against `kernel`'s leading ones
    (`activation` a name in `vit_jax.models.activations.ACTIVATIONS`, or None), added to `residual` where given
    (the result's shape: a residual branch's last layer).

    Evaluated without gradients (inference, evaluation) with vit_jax's products on oneDNN, the bias, the
    activation and the residual are oneDNN post-ops on the float32 accumulator: the layer's output is written once,
    rounded once, instead of a product, a bias pass, an activation pass and an add over it (the erf GELU alone was
    ~9% of a ViT-Ti/16 bf16 inference step, the residual adds ~6%; BENCHMARKS.md, experiments 30, 32). So the sum
    with the residual is not rounded to the layer's dtype first. Differentiated, the forward pass is the unfused
    one, whose pre-activation the backward pass needs."""
    dims = ((tuple(range(inputs.ndim - contracted, inputs.ndim)), tuple(range(contracted))), ((), ()))

    def unfused(x: jax.Array, w: jax.Array, b: jax.Array | None, r: jax.Array | None) -> jax.Array:
        y = dot_general(x, w, dims, precision=precision)
        if b is not None:
            y = add_bias(y, b) if dot_general is mixed_dot_general else y + b
        y = y if activation is None else ACTIVATIONS[activation](y)
        return y if r is None else r + y

    if bias is None or dot_general is not mixed_dot_general:
        return unfused(inputs, kernel, bias, residual)

    def fused(x: jax.Array, w: jax.Array, b: jax.Array, r: jax.Array | None) -> jax.Array | None:
        size = math.prod(x.shape[x.ndim - contracted:])
        out_shape = (*x.shape[: x.ndim - contracted], *w.shape[contracted:])
        if r is not None and r.shape != out_shape:
            return None  # a residual broadcast over the result: XLA's add
        out = onednn.einsum("mk,kn->mn", x.reshape(-1, size), w.reshape(size, -1),
                            x.dtype if r is None else jnp.result_type(r, x), bias=b, activation=activation,
                            residual=None if r is None else r.reshape(-1, w.size // size))
        return None if out is None else out.reshape(out_shape)

    return library_unless_differentiated(unfused, fused, (inputs, kernel, bias, residual))


class MixedDense(nn.Dense):
    """flax's `Dense` (same parameters, initialisers and names) through `dense_product`: bias gradients as
    products, and `activation` (a name in `vit_jax.models.activations.ACTIVATIONS`) applied to its output, in
    the product's pass where it can be. For vit_jax's own products (`mixed_dot_general`)."""

    activation: str | None = None

    @nn.compact
    def __call__(self, inputs: jax.Array, residual: jax.Array | None = None) -> jax.Array:
        """The layer's output, plus `residual` where given (see `dense_product`)."""
        kernel = self.param("kernel", self.kernel_init, (inputs.shape[-1], self.features), self.param_dtype)
        bias = self.param("bias", self.bias_init, (self.features,), self.param_dtype) if self.use_bias else None
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return dense_product(inputs, kernel, bias, self.dot_general or lax.dot_general, activation=self.activation,
                             precision=self.precision, residual=residual)


def on_flat_shape(init: Any, flat: tuple[int, ...]) -> Any:
    """`init` applied to `flat` and reshaped to the parameter's shape: flax's `DenseGeneral` initialises its
    kernel as the 2-D matrix it multiplies by (fan-in and fan-out from that), whatever the kernel's own shape."""
    return lambda rng, shape, dtype: init(rng, flat, dtype).reshape(shape)


class MixedDenseGeneral(nn.DenseGeneral):
    """flax's `DenseGeneral` over trailing input axes (no batch dimensions), with `add_bias`: for bf16 layers.
    Parameters, initialisers (on the flattened kernel, as flax's) and names are flax's."""

    @nn.compact
    def __call__(self, inputs: jax.Array, residual: jax.Array | None = None) -> jax.Array:
        """The layer's output, plus `residual` where given (see `dense_product`)."""
        features = tuple(self.features) if isinstance(self.features, (tuple, list)) else (self.features,)
        axis = tuple(self.axis) if isinstance(self.axis, (tuple, list)) else (self.axis,)
        axis = tuple(a % inputs.ndim for a in axis)
        if axis != tuple(range(inputs.ndim - len(axis), inputs.ndim)) or self.batch_dims:
            raise ValueError(f"MixedDenseGeneral contracts trailing axes without batch dimensions; got axis="
                             f"{self.axis!r}, batch_dims={self.batch_dims!r} for inputs of shape {inputs.shape}")
        in_shape = tuple(inputs.shape[a] for a in axis)
        flat = (math.prod(in_shape), math.prod(features))
        kernel = self.param("kernel", on_flat_shape(self.kernel_init, flat), in_shape + features, self.param_dtype)
        bias = None
        if self.use_bias:
            bias = self.param("bias", on_flat_shape(self.bias_init, flat[1:]), features, self.param_dtype)
        inputs, kernel, bias = self.promote_dtype(inputs, kernel, bias, dtype=self.dtype)
        return dense_product(inputs, kernel, bias, self.dot_general or lax.dot_general, contracted=len(axis),
                             precision=self.precision, residual=residual)
