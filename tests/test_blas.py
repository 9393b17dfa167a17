"""The library GEMM (`vit_jax.models.blas`): the FFI call against float64 NumPy, forward and backward; the layers
and the whole model against XLA's products; the fallbacks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from tests.conftest import MINI
from vit_jax.models import blas, create_model


def test_the_extension_builds_and_finds_numpys_openblas():
    assert blas.available()  # built by `pip install -e .`; numpy's wheels bundle OpenBLAS


@pytest.mark.parametrize("trans_a, trans_b", [(False, False), (True, False), (False, True), (True, True)])
def test_sgemm_is_the_matrix_product_of_its_operands(rng, trans_a, trans_b):
    a, b = rng.standard_normal((37, 11)), rng.standard_normal((11, 23))
    a_in, b_in = (a.T if trans_a else a), (b.T if trans_b else b)
    out = jax.jit(blas.sgemm, static_argnums=(2, 3))(jnp.asarray(a_in, jnp.float32), jnp.asarray(b_in, jnp.float32),
                                                     trans_a, trans_b)
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)


def test_blas_matmul_gradients_are_the_transposed_products(rng):
    a, b, g = rng.standard_normal((9, 5)), rng.standard_normal((5, 7)), rng.standard_normal((9, 7))
    out, pullback = jax.vjp(blas.blas_matmul, jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32))
    da, db = pullback(jnp.asarray(g, jnp.float32))
    np.testing.assert_allclose(out, a @ b, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(da, g @ b.T, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(db, a.T @ g, rtol=1e-5, atol=1e-5)


def test_blas_matmul_forward_mode_second_order_and_vmap(rng):
    """L = sum(tanh(A B) W): dL = <G, TA B + A TB> with G = (1 - tanh²(AB)) W; the Hessian-vector product's A part
    is dG B^T + G TB^T with dG = -2 tanh (1 - tanh²) W (TA B + A TB), against float64 NumPy."""
    a, b, ta, tb = (rng.standard_normal(s) * 0.3 for s in ((9, 5), (5, 7), (9, 5), (5, 7)))
    w = rng.standard_normal((9, 7))
    f32 = lambda *xs: [jnp.asarray(x, jnp.float32) for x in xs]
    loss = lambda a, b: jnp.sum(jnp.tanh(blas.blas_matmul(a, b)) * w)
    th = np.tanh(a @ b)
    g, dc = (1 - th**2) * w, ta @ b + a @ tb
    dg = -2 * th * (1 - th**2) * w * dc
    _, dl = jax.jvp(loss, f32(a, b), f32(ta, tb))
    np.testing.assert_allclose(dl, np.sum(g * dc), rtol=1e-4)
    _, (hva, hvb) = jax.jvp(jax.grad(loss, argnums=(0, 1)), f32(a, b), f32(ta, tb))
    np.testing.assert_allclose(hva, dg @ b.T + g @ tb.T, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(hvb, a.T @ dg + ta.T @ g, rtol=1e-4, atol=1e-4)
    # reverse over reverse (the transposed products, transposed again): the same, the Hessian being symmetric
    along = lambda a, b: sum(jnp.vdot(d, t) for d, t in zip(jax.grad(loss, argnums=(0, 1))(a, b), f32(ta, tb)))
    for got, want in zip(jax.grad(along, argnums=(0, 1))(*f32(a, b)), (hva, hvb)):
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    stacked = np.stack([a, ta])
    np.testing.assert_allclose(jax.vmap(blas.blas_matmul, (0, None))(*f32(stacked, b)), stacked @ b, rtol=1e-5,
                               atol=1e-5)


def test_other_products_and_dtypes_stay_with_xla(rng):
    x, y = jnp.asarray(rng.standard_normal((2, 6, 4)), jnp.float32), jnp.asarray(rng.standard_normal((2, 4, 3)),
                                                                                   jnp.float32)
    batched = (((2,), (1,)), ((0,), (0,)))
    lowered = jax.jit(lambda x, y: blas.blas_dot_general(x, y, batched)).lower(x, y).as_text()
    assert blas.TARGET not in lowered
    np.testing.assert_array_equal(blas.blas_dot_general(x, y, batched), lax.dot_general(x, y, batched))
    dense = (((2,), (0,)), ((), ()))
    x16, k16 = x.astype(jnp.bfloat16), jnp.ones((4, 5), jnp.bfloat16)
    assert blas.TARGET not in jax.jit(lambda a, b: blas.blas_dot_general(a, b, dense)).lower(x16, k16).as_text()


def test_a_model_with_blas_products_equals_the_xla_model(rng):
    images = jnp.asarray(rng.standard_normal((2, 8, 8, 1)), jnp.float32)
    labels = jnp.asarray([1, 3])
    ours, reference = (create_model("Ti/4", num_classes=5, matmul=m, **MINI) for m in ("blas", "xla"))
    params = reference.init(jax.random.key(0), images, train=False)["params"]

    def loss(model):
        def fn(p):
            logits = model.apply({"params": p}, images, train=False)
            return -jnp.mean(jax.nn.log_softmax(logits)[jnp.arange(2), labels])
        return jax.jit(jax.value_and_grad(fn))

    (value, grads), (expected, expected_grads) = loss(ours)(params), loss(reference)(params)
    np.testing.assert_allclose(value, expected, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6), grads, expected_grads)
    lowered = jax.jit(lambda p: ours.apply({"params": p}, images, train=False)).lower(params).as_text()
    assert lowered.count(blas.TARGET) == 4 * ours.num_layers  # q, k, v (one product), out, the MLP's two


def test_without_the_library_blas_falls_back_to_xla(rng, monkeypatch):
    monkeypatch.setattr(blas, "available", lambda: False)
    x, kernel = jnp.asarray(rng.standard_normal((3, 4)), jnp.float32), jnp.asarray(rng.standard_normal((4, 2)),
                                                                                   jnp.float32)
    dense = (((1,), (0,)), ((), ()))
    assert blas.TARGET not in jax.jit(lambda a, b: blas.blas_dot_general(a, b, dense)).lower(x, kernel).as_text()


@pytest.mark.parametrize("kwargs, message", [
    (dict(matmul="mkl"), "matmul must be one of"),
    (dict(matmul="blas", dtype=jnp.bfloat16), "matmul='blas' is float32"),
])
def test_bad_matmul_options_are_refused_when_the_model_is_built(kwargs, message):
    with pytest.raises(ValueError, match=message):
        create_model("Ti/4", num_classes=5, **MINI, **kwargs)
