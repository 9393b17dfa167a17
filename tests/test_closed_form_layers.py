"""LayerNorm, GELU and softmax with hand-written backward passes (`vit_jax.models.layer_norm`, `.activations`,
`.softmax`): values against the formulas in float64, gradients (reverse and forward mode, second order) against
JAX's autodiff of the plain formulas."""

import math

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.special

from vit_jax.models.activations import gelu, quick_gelu, silu
from vit_jax.models.layer_norm import LayerNorm, layer_norm
from vit_jax.models.softmax import softmax


def _vjp_pair(ours, reference, args, cotangent):
    """Values and input gradients of `ours` and of `reference` (JAX autodiff) at `args`."""
    (a, vjp_a), (b, vjp_b) = jax.vjp(ours, *args), jax.vjp(reference, *args)
    return (a, b), (vjp_a(cotangent), vjp_b(cotangent))


def test_layer_norm_is_flaxs_layer_with_two_pass_statistics(rng):
    x = jnp.asarray(rng.standard_normal((3, 5, 16)) * 3 + 2, jnp.float32)
    ours, theirs = LayerNorm(epsilon=1e-6), nn.LayerNorm(epsilon=1e-6, use_fast_variance=False)
    params = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(np.shape, ours.init(jax.random.key(0), x)) == jax.tree.map(np.shape, params)
    params = jax.tree.map(lambda p: p + jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    x64 = np.asarray(x, np.float64)
    scale, bias = (np.asarray(params["params"][k], np.float64) for k in ("scale", "bias"))
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6) * scale + bias
    np.testing.assert_allclose(ours.apply(params, x), expected, rtol=1e-5, atol=1e-5)

    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    (_, _), (got, want) = _vjp_pair(lambda p, x: ours.apply(p, x), lambda p, x: theirs.apply(p, x), (params, x),
                                    cotangent)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves(want)):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.abs(w).max()))


def test_layer_norm_in_bfloat16_keeps_float32_statistics(rng):
    x = jnp.asarray(rng.standard_normal((4, 32)) + 100, jnp.bfloat16)  # a large mean: bf16 statistics would fail
    layer = LayerNorm(dtype=jnp.bfloat16)
    params = layer.init(jax.random.key(0), x)
    y = layer.apply(params, x)
    assert y.dtype == jnp.bfloat16
    x64 = np.asarray(x, np.float64)
    expected = (x64 - x64.mean(-1, keepdims=True)) / np.sqrt(x64.var(-1, keepdims=True) + 1e-6)
    np.testing.assert_allclose(np.asarray(y, np.float64), expected, atol=2e-2)
    dx = jax.grad(lambda x: jnp.sum(layer.apply(params, x).astype(jnp.float32) * jnp.arange(32.0)))(x)
    assert dx.dtype == jnp.bfloat16 and np.isfinite(np.asarray(dx, np.float32)).all()


@pytest.mark.parametrize("approximate", [True, False])
def test_gelu_values_and_gradients(rng, approximate):
    x = jnp.asarray(rng.standard_normal(1000) * 3, jnp.float32)
    x64 = np.asarray(x, np.float64)
    if approximate:
        expected = 0.5 * x64 * (1 + np.tanh(math.sqrt(2 / math.pi) * (x64 + 0.044715 * x64**3)))
    else:
        expected = 0.5 * x64 * (1 + scipy.special.erf(x64 / math.sqrt(2)))
    np.testing.assert_allclose(gelu(x, approximate), expected, rtol=1e-5, atol=1e-6)
    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    _, (got, want) = _vjp_pair(lambda x: gelu(x, approximate), lambda x: jax.nn.gelu(x, approximate), (x,),
                               cotangent)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)
    low = gelu(x.astype(jnp.bfloat16), approximate)  # computed in float32, rounded once
    assert low.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(low, np.float64), gelu(x.astype(jnp.bfloat16).astype(jnp.float32),
                                                                 approximate), rtol=8e-3, atol=1e-6)


@pytest.mark.parametrize("ours, beta", [(quick_gelu, 1.702), (silu, 1.0)])
def test_quick_gelu_and_silu_values_and_gradients(rng, ours, beta):
    x = jnp.asarray(rng.standard_normal(500) * 3, jnp.float32)
    x64 = np.asarray(x, np.float64)
    np.testing.assert_allclose(ours(x), x64 * scipy.special.expit(beta * x64), rtol=1e-5, atol=1e-6)
    cotangent = jnp.asarray(rng.standard_normal(x.shape), jnp.float32)
    _, (got, want) = _vjp_pair(ours, lambda x: x * jax.nn.sigmoid(beta * x), (x,), cotangent)
    np.testing.assert_allclose(got[0], want[0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_softmax_values_and_gradients(rng, dtype):
    logits = jnp.asarray(rng.standard_normal((3, 4, 9)) * 4, dtype)
    logits64 = np.asarray(logits, np.float64)
    got = softmax(logits)
    assert got.dtype == dtype
    np.testing.assert_allclose(np.asarray(got, np.float64), scipy.special.softmax(logits64, axis=-1),
                               atol=1e-6 if dtype == jnp.float32 else 4e-3)
    cotangent = jnp.asarray(rng.standard_normal(logits.shape), dtype)
    reference = lambda x: jax.nn.softmax(x.astype(jnp.float32), axis=-1).astype(dtype)
    _, (ours, theirs) = _vjp_pair(softmax, reference, (logits,), cotangent)
    tolerance = 1e-5 if dtype == jnp.float32 else 3e-2
    np.testing.assert_allclose(np.asarray(ours[0], np.float32), np.asarray(theirs[0], np.float32),
                               atol=tolerance * float(jnp.abs(theirs[0].astype(jnp.float32)).max()))


def _plain_layer_norm(x, scale, bias):
    mean = jnp.mean(x, axis=-1, keepdims=True)
    return (x - mean) / jnp.sqrt(jnp.mean((x - mean) ** 2, axis=-1, keepdims=True) + 1e-6) * scale + bias


CLOSED_FORMS = {  # (ours, the plain formula), functions of (x, scale, bias)
    "gelu_tanh": (lambda x, s, b: gelu(x, True), lambda x, s, b: jax.nn.gelu(x, True)),
    "gelu_erf": (lambda x, s, b: gelu(x, False), lambda x, s, b: jax.nn.gelu(x, False)),
    "quick_gelu": (lambda x, s, b: quick_gelu(x), lambda x, s, b: x * jax.nn.sigmoid(1.702 * x)),
    "silu": (lambda x, s, b: silu(x), lambda x, s, b: jax.nn.silu(x)),
    "softmax": (lambda x, s, b: softmax(x), lambda x, s, b: jax.nn.softmax(x, axis=-1)),
    "layer_norm": (lambda x, s, b: layer_norm(x, s, b, 1e-6, jnp.float32), _plain_layer_norm),
}


@pytest.mark.parametrize("name", CLOSED_FORMS)
def test_forward_mode_and_hessian_vector_products_match_autodiff_of_the_formula(rng, name):
    ours, plain = CLOSED_FORMS[name]
    args = tuple(jnp.asarray(rng.standard_normal(shape) * 2, jnp.float32) for shape in ((3, 4, 16), (16,), (16,)))
    tangents = tuple(jnp.asarray(rng.standard_normal(x.shape), jnp.float32) for x in args)
    weights = jnp.asarray(rng.standard_normal(args[0].shape), jnp.float32)
    for f in (ours, plain):  # the reference is the second
        _, jvp = jax.jvp(f, args, tangents)
        loss = lambda *args, f=f: jnp.sum(f(*args) * weights)
        _, hvp = jax.jvp(jax.grad(loss, argnums=(0, 1, 2)), args, tangents)
        if f is ours:
            got = (jvp, hvp)
    for g, w in zip(jax.tree.leaves(got), jax.tree.leaves((jvp, hvp))):
        np.testing.assert_allclose(g, w, rtol=1e-4, atol=1e-4 * float(jnp.abs(w).max()))
