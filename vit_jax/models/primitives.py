"""vit_jax's own JAX primitives (the products, attention's softmax): computed by a function traced into the
caller's program (XLA ops or an FFI call), with derivative and batching rules of their own. A primitive, not a
`custom_vjp`: its rules hold under every transformation and at every order (forward mode, Hessian-vector
products, `vmap`, inside `scan`), as `lax.dot_general`'s do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax.extend
from jax.interpreters import ad, batching, mlir


def define_primitive(name: str, compute: Callable[..., Any], shape: Callable[..., Any], batched: Callable[..., Any],
                     *, jvp: Callable[..., Any] | None = None,
                     transposes: tuple[Callable[..., Any], Callable[..., Any]] | None = None) -> jax.extend.core.Primitive:
    """A one-output primitive: `compute(*operands, **params)` evaluates and lowers it, `shape` is its abstract
    evaluation, `batched` its `vmap` rule; then either `jvp`, or for a bilinear one `transposes` (of the left
    and right operand: `ad.defbilinear`, which derives the JVP)."""
    primitive = jax.extend.core.Primitive(name)
    primitive.def_impl(compute)
    primitive.def_abstract_eval(shape)
    mlir.register_lowering(primitive, mlir.lower_fun(compute, multiple_results=False))
    if transposes is not None:
        ad.defbilinear(primitive, *transposes)
    else:
        ad.primitive_jvps[primitive] = jvp
    batching.primitive_batchers[primitive] = batched
    return primitive
