"""bf16 products with float32 accumulation: values and gradients against float64 NumPy, and a bf16 model that
trains on XLA:CPU's default flags (where an unsupported bf16 dot form fails at run time)."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from vit_jax.models import create_model
from vit_jax.models.mixed_precision import (
    MixedDense,
    MixedDenseGeneral,
    add_bias,
    mixed_attention,
    mixed_dot_general,
    mixed_einsum,
)

SPECS = [
    ("mk,kn->mn", (24, 16), (16, 8)),  # a dense layer
    ("bqhd,bkhd->bhqk", (2, 5, 3, 8), (2, 7, 3, 8)),  # attention logits
    ("bhqk,bkhd->bqhd", (2, 3, 5, 7), (2, 7, 3, 8)),  # attention-weighted values
]


def _bf16(rng, shape):
    return jnp.asarray(rng.standard_normal(shape), jnp.bfloat16)


@pytest.mark.parametrize("spec, a_shape, b_shape", SPECS)
def test_mixed_einsum_and_its_gradients_match_float64(rng, spec, a_shape, b_shape):
    a, b = _bf16(rng, a_shape), _bf16(rng, b_shape)
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    out = mixed_einsum(spec, a, b)
    assert out.dtype == jnp.bfloat16
    expected = np.einsum(spec, a64, b64)
    np.testing.assert_allclose(np.asarray(out, np.float64), expected, rtol=1e-2, atol=1e-2 * np.abs(expected).max())

    cotangent = rng.standard_normal(expected.shape)
    da, db = jax.vjp(lambda a, b: mixed_einsum(spec, a, b), a, b)[1](jnp.asarray(cotangent, jnp.bfloat16))
    operands, result = spec.split("->")
    a_spec, b_spec = operands.split(",")
    g = np.asarray(jnp.asarray(cotangent, jnp.bfloat16), np.float64)
    for got, want in ((da, np.einsum(f"{result},{b_spec}->{a_spec}", g, b64)),
                      (db, np.einsum(f"{a_spec},{result}->{b_spec}", a64, g))):
        assert got.dtype == jnp.bfloat16
        np.testing.assert_allclose(np.asarray(got, np.float64), want, rtol=1e-2, atol=1e-2 * np.abs(want).max())


def test_mixed_dot_general_serves_dense_layers_and_leaves_other_forms_to_xla(rng):
    x, kernel = _bf16(rng, (2, 5, 6)), _bf16(rng, (6, 3, 4))  # DenseGeneral: (D) -> (heads, head_dim)
    dense = (((2,), (0,)), ((), ()))
    expected = np.einsum("bld,dhk->blhk", np.asarray(x, np.float64), np.asarray(kernel, np.float64))
    np.testing.assert_allclose(np.asarray(mixed_dot_general(x, kernel, dense), np.float64), expected,
                               rtol=1e-2, atol=1e-2 * np.abs(expected).max())
    x32 = jnp.asarray(x, jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    y32 = jnp.asarray(rng.standard_normal((2, 6, 4)), jnp.float32)
    np.testing.assert_array_equal(mixed_dot_general(x32, y32, batched), lax.dot_general(x32, y32, batched))


def test_add_bias_gradient_is_the_sum_over_the_leading_axes(rng):
    y, bias = _bf16(rng, (4, 9, 2, 3)), _bf16(rng, (2, 3))
    g = _bf16(rng, (4, 9, 2, 3))
    out, pullback = jax.vjp(add_bias, y, bias)
    np.testing.assert_array_equal(out, y + bias)
    dy, dbias = pullback(g)
    np.testing.assert_array_equal(dy, g)
    assert dbias.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(dbias, np.float64), np.asarray(g, np.float64).sum((0, 1)), rtol=1e-2,
                               atol=2e-2)


@pytest.mark.parametrize("ours, flax_layer, kwargs, shape", [
    (MixedDense, nn.Dense, dict(features=5), (3, 4, 6)),
    (MixedDenseGeneral, nn.DenseGeneral, dict(features=(2, 3), axis=-1), (3, 4, 6)),  # query/key/value
    (MixedDenseGeneral, nn.DenseGeneral, dict(features=6, axis=(-2, -1)), (3, 4, 2, 3)),  # out
])
def test_mixed_dense_layers_are_flax_layers_with_product_bias_gradients(rng, ours, flax_layer, kwargs, shape):
    kwargs = dict(kwargs, kernel_init=nn.initializers.xavier_uniform(), bias_init=nn.initializers.normal(0.5))
    x = jnp.asarray(rng.standard_normal(shape), jnp.float32)
    reference = flax_layer(**kwargs).init(jax.random.key(3), x)
    params = ours(**kwargs).init(jax.random.key(3), x)
    jax.tree.map(np.testing.assert_array_equal, params, reference)  # the same names, shapes and initial values
    loss = lambda layer: lambda p: jnp.sum(jnp.sin(layer.apply(p, x)))
    np.testing.assert_allclose(ours(**kwargs).apply(params, x), flax_layer(**kwargs).apply(params, x), rtol=1e-6)
    grads, expected = jax.grad(loss(ours(**kwargs)))(params), jax.grad(loss(flax_layer(**kwargs)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), grads, expected)
    with pytest.raises(ValueError, match="trailing axes"):
        MixedDenseGeneral(features=2, axis=0).init(jax.random.key(0), x)


def test_mixed_attention_is_softmax_attention(rng):
    q, k, v = (_bf16(rng, (2, 6, 3, 8)) for _ in range(3))
    q64, k64, v64 = (np.asarray(t, np.float64) for t in (q, k, v))
    logits = np.einsum("bqhd,bkhd->bhqk", q64, k64) / np.sqrt(8)
    weights = np.exp(logits - logits.max(-1, keepdims=True))
    weights /= weights.sum(-1, keepdims=True)
    expected = np.einsum("bhqk,bkhd->bqhd", weights, v64)
    np.testing.assert_allclose(np.asarray(mixed_attention(q, k, v), np.float64), expected, atol=3e-2)


def test_a_bfloat16_model_trains_with_gradients_close_to_float32(rng):
    tiny = dict(hidden_size=32, num_layers=2, num_heads=4, mlp_dim=64)
    f32 = create_model("Ti/4", num_classes=5, **tiny)
    bf16 = create_model("Ti/4", num_classes=5, **tiny, dtype=jnp.bfloat16)
    images = jnp.asarray(rng.uniform(-1, 1, (8, 16, 16, 3)), jnp.float32)
    labels = jnp.asarray(rng.integers(0, 5, 8))
    params = f32.init(jax.random.key(0), images[:1], train=False)["params"]

    def loss(model, p):
        logits = model.apply({"params": p}, images, train=False)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], 1))

    grads = [jax.jit(jax.grad(lambda p, m=m: loss(m, p)))(params) for m in (f32, bf16)]
    for path, g32 in jax.tree_util.tree_leaves_with_path(grads[0]):
        g16 = dict(jax.tree_util.tree_leaves_with_path(grads[1]))[path]
        assert g16.dtype == jnp.float32
        scale = float(jnp.abs(g32).max()) + 1e-6
        assert float(jnp.abs(g16 - g32).max()) <= 0.1 * scale, jax.tree_util.keystr(path)


def test_scaled_logits_and_their_gradients_carry_the_exact_scale(rng):
    """1/sqrt(48) is not a bf16 number: the scale must act in float32, forward and backward. Over many elements
    bf16 rounding averages out, so a scale rounded to bf16 (0.2% off) would show as a biased ratio."""
    q, k = _bf16(rng, (4, 64, 3, 48)), _bf16(rng, (4, 64, 3, 48))
    scale = 1.0 / np.sqrt(48.0)
    spec = "bqhd,bkhd->bhqk"
    out, pullback = jax.vjp(lambda q, k: mixed_einsum(spec, q, k, jnp.float32, scale), q, k)
    q64, k64 = np.asarray(q, np.float64), np.asarray(k, np.float64)
    np.testing.assert_allclose(np.asarray(out), scale * np.einsum(spec, q64, k64), rtol=1e-5, atol=1e-4)
    g = rng.standard_normal(out.shape).astype(np.float32)
    dq, dk = pullback(jnp.asarray(g))
    g64 = np.asarray(jnp.asarray(g, jnp.bfloat16), np.float64)  # the backward products take the cotangent in bf16
    for got, want in ((dq, scale * np.einsum("bhqk,bkhd->bqhd", g64, k64)),
                      (dk, scale * np.einsum("bhqk,bqhd->bkhd", g64, q64))):
        got = np.asarray(got, np.float64)
        ratio = np.sum(got * want) / np.sum(want * want)  # least-squares scale of got against want
        assert abs(ratio - 1.0) < 5e-4, ratio


@pytest.mark.parametrize("dtype", [jnp.float32, jnp.bfloat16])
def test_forward_mode_hessian_vector_products_and_vmap_of_the_products(rng, dtype):
    """The product is a primitive with derivative rules of its own kind (as `lax.dot_general`): forward mode,
    second order and `vmap` work, against float64 NumPy. L(A, B) = sum(tanh(A B) W): with G = (1 - tanh²(C)) W,
    dL = <G, dC>, dC = TA B + A TB, and the Hessian-vector product's A part is dG B^T + G TB^T, where
    dG = -2 tanh(C) (1 - tanh²(C)) W dC."""
    a, b = (jnp.asarray(rng.standard_normal(s) * 0.3, dtype) for s in ((24, 16), (16, 8)))
    ta, tb = (jnp.asarray(rng.standard_normal(x.shape), dtype) for x in (a, b))
    w = rng.standard_normal((24, 8))
    loss = lambda a, b: jnp.sum(jnp.tanh(mixed_einsum("mk,kn->mn", a, b).astype(jnp.float32)) * w)
    a64, b64, ta64, tb64 = (np.asarray(x, np.float64) for x in (a, b, ta, tb))
    c = a64 @ b64
    th = np.tanh(c)
    g = (1 - th**2) * w
    dc = ta64 @ b64 + a64 @ tb64
    dg = -2 * th * (1 - th**2) * w * dc
    tolerance = 1e-4 if dtype == jnp.float32 else 3e-2

    def close(got, want):
        np.testing.assert_allclose(np.asarray(got, np.float64), want, atol=tolerance * np.abs(want).max())

    _, dl = jax.jvp(loss, (a, b), (ta, tb))
    close(dl, np.sum(g * dc))
    _, (hva, hvb) = jax.jvp(jax.grad(loss, argnums=(0, 1)), (a, b), (ta, tb))
    close(hva, dg @ b64.T + g @ tb64.T)
    close(hvb, a64.T @ dg + ta64.T @ g)

    stacked = jnp.stack([a, ta])  # vmap over one operand, then over both
    close(jax.vmap(lambda x: mixed_einsum("mk,kn->mn", x, b))(stacked), np.stack([a64 @ b64, ta64 @ b64]))
    close(jax.vmap(lambda x, y: mixed_einsum("mk,kn->mn", x, y))(stacked, jnp.stack([b, tb])),
          np.stack([a64 @ b64, ta64 @ tb64]))
