"""vit_jax's native custom calls (`vit_jax.native`): built by `pip install -e .`, checked against NumPy."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax import native
from vit_jax.models.mixed_precision import mixed_einsum
from vit_jax.native import onednn


def test_the_extension_is_built_and_registered():
    assert native.available()  # `pip install -e .` compiles vit_jax/native/gemm.cc


@pytest.mark.parametrize("shape", [(1, 1), (37, 70), (64, 33), (130, 257)])
@pytest.mark.parametrize("dtype", [jnp.bfloat16, jnp.float32, jnp.int16])
def test_transpose_is_numpys(rng, shape, dtype):
    x = jnp.asarray(rng.integers(-1000, 1000, shape), dtype)
    np.testing.assert_array_equal(jax.jit(native.transpose)(x), np.asarray(x).T)


def test_transpose_refuses_what_it_cannot_do():
    with pytest.raises(ValueError, match="2-D array of 2- or 4-byte"):
        native.transpose(jnp.zeros((2, 3, 4), jnp.float32))
    with pytest.raises(ValueError, match="2-D array of 2- or 4-byte"):
        native.transpose(jnp.zeros((2, 3), jnp.int8))


def test_bf16_weight_gradients_transpose_natively(rng, monkeypatch):
    """Without oneDNN, the weight gradient contracts the tokens, a leading axis: its operand is transposed by the
    custom call, so XLA keeps the product in bf16 instead of folding the transpose and computing in float32."""
    monkeypatch.setattr(onednn, "usable", lambda: False)
    a, b = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in ((40, 8), (8, 6)))
    loss = lambda a, b: jnp.sum(mixed_einsum("mk,kn->mn", a, b).astype(jnp.float32) ** 2)
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(a, b).as_text()
    assert native.TRANSPOSE in lowered
    _, db = jax.grad(loss, argnums=(0, 1))(a, b)
    a64, b64 = np.asarray(a, np.float64), np.asarray(b, np.float64)
    expected = a64.T @ (2 * (a64 @ b64))
    np.testing.assert_allclose(np.asarray(db, np.float64), expected, rtol=3e-2, atol=3e-2 * np.abs(expected).max())


def test_without_the_extension_bf16_gradients_are_the_same(rng, monkeypatch):
    """Where the extension did not build, the transposes go behind an optimisation barrier: same values."""
    monkeypatch.setattr(onednn, "usable", lambda: False)
    a, b = (jnp.asarray(rng.standard_normal(s), jnp.bfloat16) for s in ((24, 8), (8, 5)))
    loss = lambda a, b: jnp.sum(jnp.sin(mixed_einsum("mk,kn->mn", a, b).astype(jnp.float32)))
    with_native = jax.grad(loss, argnums=(0, 1))(a, b)
    monkeypatch.setattr(native, "available", lambda: False)
    lowered = jax.jit(jax.grad(loss, argnums=(0, 1))).lower(a, b).as_text()
    assert native.TRANSPOSE not in lowered and "optimization_barrier" in lowered
    without = jax.grad(loss, argnums=(0, 1))(a, b)
    jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x, np.float32), np.asarray(y, np.float32),
                                                         rtol=1e-2, atol=1e-2), without, with_native)
