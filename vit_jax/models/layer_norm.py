"""LayerNorm over the last axis with a hand-written backward pass; flax's parameters (`scale`, `bias`), names and
initial values, so checkpoints are unchanged.

Autodiff of flax's `LayerNorm` keeps several full-size intermediates and, on XLA:CPU, materialises the broadcast
of `rsqrt(var) * scale` over every token before the fused reductions of the backward pass (about 5% of a bf16
ViT-Ti/16 training step; BENCHMARKS.md). The closed form, `dx = rstd * (g s - mean(g s) - x̂ mean(g s x̂))`,
needs only the input and two numbers per token; it is the transpose of the JVP rule below, so forward mode and
higher orders work too. Statistics are float32 (at least) whatever the input dtype, and
the variance is the two-pass one, `mean((x - mean)²)` (PyTorch's; flax's default takes `mean(x²) - mean²`).
`rms=True` is RMSNorm (Zhang & Sennrich 2019; AIMv2, timm's `RmsNorm`): `x / sqrt(mean(x²) + epsilon) * scale`, no
centring and no bias, under the same names.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.native import onednn


class LayerNorm(nn.Module):
    """`nn.LayerNorm(epsilon=..., dtype=...)` over the last axis, its parameters float32; `rms`: RMSNorm (`scale`
    only)."""

    epsilon: float = 1e-6
    dtype: Any = None
    use_bias: bool = True
    use_scale: bool = True
    rms: bool = False

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        features = (x.shape[-1],)
        scale = self.param("scale", nn.initializers.ones, features, jnp.float32) if self.use_scale else None
        scale = jnp.ones(features, jnp.float32) if scale is None else scale
        dtype = jnp.dtype(self.dtype or jnp.result_type(x, jnp.float32))
        if self.rms:
            return rms_norm(x, scale, self.epsilon, dtype)
        bias = self.param("bias", nn.initializers.zeros, features, jnp.float32) if self.use_bias else None
        bias = jnp.zeros(features, jnp.float32) if bias is None else bias
        return layer_norm(x, scale, bias, self.epsilon, dtype)


def rms_norm(x: jax.Array, scale: jax.Array, epsilon: float, dtype: Any) -> jax.Array:
    """`x / sqrt(mean(x²) + epsilon) * scale` over the last axis, statistics in (at least) float32, in `dtype`."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    return (x * jax.lax.rsqrt(jnp.mean(jnp.square(x), axis=-1, keepdims=True) + epsilon) * scale).astype(dtype)


def _statistics(x: jax.Array, epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """`x` in (at least) float32, its mean and 1 / standard deviation over the last axis (kept)."""
    x = x.astype(jnp.promote_types(x.dtype, jnp.float32))
    mean = jnp.mean(x, axis=-1, keepdims=True)
    rstd = jax.lax.rsqrt(jnp.mean(jnp.square(x - mean), axis=-1, keepdims=True) + epsilon)
    return x, mean, rstd


@functools.partial(jax.custom_jvp, nondiff_argnums=(3, 4))
def layer_norm(x: jax.Array, scale: jax.Array, bias: jax.Array, epsilon: float, dtype: Any) -> jax.Array:
    """`(x - mean) / sqrt(var + epsilon) * scale + bias` over the last axis, returned in `dtype`; where only its
    value is wanted, oneDNN's where it can (one primitive in place of XLA's reduction and elementwise passes)."""
    library = onednn.layer_norm(x, scale, bias, epsilon, dtype)
    if library is not None:
        return library
    x, mean, rstd = _statistics(x, epsilon)
    return ((x - mean) * rstd * scale + bias).astype(dtype)


@functools.partial(jax.checkpoint, prevent_cse=False, static_argnums=(7,))
def _layer_norm_tangent(x: jax.Array, mean: jax.Array, rstd: jax.Array, scale: jax.Array, t_x: jax.Array,
                        t_scale: jax.Array, t_bias: jax.Array, dtype: Any) -> jax.Array:
    """The closed form's JVP, `rstd (t - mean(t) - x̂ mean(t x̂)) scale + x̂ t_scale + t_bias`; its transpose is
    the module docstring's backward pass (the operator on `t` is symmetric). Checkpointed: the backward pass keeps the input
    and two numbers per token, nothing computed from them."""
    compute = jnp.promote_types(t_x.dtype, jnp.float32)
    normalized = (x.astype(compute) - mean) * rstd
    t = t_x.astype(compute)
    t_normalized = rstd * (t - jnp.mean(t, axis=-1, keepdims=True)
                           - normalized * jnp.mean(t * normalized, axis=-1, keepdims=True))
    return (t_normalized * scale + normalized * t_scale + t_bias).astype(dtype)


@layer_norm.defjvp
def _layer_norm_jvp(epsilon: float, dtype: Any, primals: tuple[jax.Array, ...], tangents: tuple[jax.Array, ...]
                    ) -> tuple[jax.Array, jax.Array]:
    x, scale, bias = primals
    x32, mean, rstd = _statistics(x, epsilon)
    y = ((x32 - mean) * rstd * scale + bias).astype(dtype)
    return y, _layer_norm_tangent(x, mean, rstd, scale, *tangents, dtype)
