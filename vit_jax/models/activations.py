"""The MLP's activations, computed in float32 whatever the input dtype, with hand-written derivatives.

XLA:CPU evaluates a bf16 elementwise chain op by op, rounding to bf16 after each one: flax's bf16 GELU takes
2.6x as long as the same GELU computed in float32 and rounded once (ViT-Ti/16's MLP, 32 x 197 x 768: 6.5 vs
2.5 ms; BENCHMARKS.md), and is less accurate. The derivative is the closed form, evaluated in one float32 pass
from the pre-activation (in its own dtype), the only thing the backward pass keeps; as a JVP rule, so forward mode
and higher orders work too.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable

import jax
import jax.numpy as jnp

_SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
_TANH_CUBIC = 0.044715
_QUICK = 1.702


def _in_float32(x: jax.Array) -> jax.Array:
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def _gelu_and_slope(h: jax.Array, approximate: bool) -> tuple[jax.Array, jax.Array]:
    """GELU(h) and its derivative, float32."""
    if approximate:
        t = jnp.tanh(_SQRT_2_OVER_PI * (h + _TANH_CUBIC * h * h * h))
        slope = 0.5 * (1.0 + t) + 0.5 * h * (1.0 - t * t) * _SQRT_2_OVER_PI * (1.0 + 3.0 * _TANH_CUBIC * h * h)
        return 0.5 * h * (1.0 + t), slope
    cdf = 0.5 * (1.0 + jax.lax.erf(h * (1.0 / math.sqrt(2.0))))
    return h * cdf, cdf + h * jnp.exp(-0.5 * h * h) * (1.0 / math.sqrt(2.0 * math.pi))


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def gelu(x: jax.Array, approximate: bool = True) -> jax.Array:
    """GELU: `approximate=True` the tanh form (flax's default, vision_transformer's and big_vision's), `False`
    the exact erf form (timm's and PyTorch's); in `x`'s dtype."""
    h = _in_float32(x)
    if approximate:
        return (0.5 * h * (1.0 + jnp.tanh(_SQRT_2_OVER_PI * (h + _TANH_CUBIC * h * h * h)))).astype(x.dtype)
    return (h * 0.5 * (1.0 + jax.lax.erf(h * (1.0 / math.sqrt(2.0))))).astype(x.dtype)


@functools.partial(jax.checkpoint, prevent_cse=False, static_argnums=(2,))
def _gelu_tangent(x: jax.Array, t: jax.Array, approximate: bool) -> jax.Array:
    """`gelu'(x) t`, recomputed from `x` where it is needed (checkpointed: the backward pass keeps only the
    pre-activation, in its own dtype). The barrier keeps XLA from sharing the forward pass's tanh / erf with this
    one: shared, it is written out as a float32 tensor (ViT-Ti/16: 19 MB per block) instead of being recomputed
    in registers."""
    _, slope = _gelu_and_slope(_in_float32(jax.lax.optimization_barrier(x)), approximate)
    return (_in_float32(t) * slope).astype(x.dtype)


@gelu.defjvp
def _gelu_jvp(approximate: bool, primals: tuple[jax.Array], tangents: tuple[jax.Array]
              ) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    return gelu(x, approximate), _gelu_tangent(x, t, approximate)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1,))
def sigmoid_weighted(x: jax.Array, beta: float) -> jax.Array:
    """`x * sigmoid(beta x)`: SiLU / swish at `beta=1` (SwiGLU's gate), OpenAI CLIP's QuickGELU at 1.702 (its
    checkpoints were trained with it)."""
    h = _in_float32(x)
    return (h * jax.nn.sigmoid(beta * h)).astype(x.dtype)


@functools.partial(jax.checkpoint, prevent_cse=False, static_argnums=(2,))
def _sigmoid_weighted_tangent(x: jax.Array, t: jax.Array, beta: float) -> jax.Array:
    h = _in_float32(x)
    s = jax.nn.sigmoid(beta * h)
    return (_in_float32(t) * (s + beta * h * s * (1.0 - s))).astype(x.dtype)


@sigmoid_weighted.defjvp
def _sigmoid_weighted_jvp(beta: float, primals: tuple[jax.Array], tangents: tuple[jax.Array]
                          ) -> tuple[jax.Array, jax.Array]:
    (x,), (t,) = primals, tangents
    return sigmoid_weighted(x, beta), _sigmoid_weighted_tangent(x, t, beta)


quick_gelu = functools.partial(sigmoid_weighted, beta=_QUICK)
silu = functools.partial(sigmoid_weighted, beta=1.0)


# by name: what a dense layer's fused epilogue (`vit_jax.models.mixed_precision.dense_product`) and oneDNN's
# post-ops (`vit_jax.native.onednn.ACTIVATIONS`) call them
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "gelu_erf": functools.partial(gelu, approximate=False),
    "gelu_tanh": functools.partial(gelu, approximate=True),
    "quick_gelu": quick_gelu,
    "silu": silu,  # SwiGLU's gate (`vit_jax.models.block.MlpBlock`, gated)
}


def activation_name(approximate: bool, quick: bool) -> str:
    """The MLP's activation in `ACTIVATIONS`, from the encoder's options."""
    return "quick_gelu" if quick else ("gelu_tanh" if approximate else "gelu_erf")
