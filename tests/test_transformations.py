"""The model under every JAX transformation a researcher applies to it, with vit_jax's own products and closed
forms in place (oneDNN's products where installed): forward mode agrees with reverse mode, Hessian-vector
products with finite differences of gradients, `vmap` of per-example gradients with a loop."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import create_model


def _flat(tree):
    return np.concatenate([np.asarray(x, np.float64).ravel() for x in jax.tree.leaves(tree)])


@functools.cache
def setup(scan: bool = False):
    """The encoder's blocks as layers, or scanned (where JAX's partial evaluation treats custom rules apart)."""
    rng = np.random.default_rng(0)
    model = create_model("mu/16", num_classes=10, scan=scan)
    images = jnp.asarray(rng.uniform(-1, 1, (3, 32, 32, 3)), jnp.float32)
    labels = jnp.asarray([1, 4, 7])
    params = model.init(jax.random.key(0), images, train=False)
    params = jax.tree.map(lambda p: p + 0.1 * jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    direction = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), p.dtype), params)
    return model, images, labels, params, direction


def _loss(model, images, labels):
    def loss(params):
        logits = model.apply(params, images, train=False).astype(jnp.float32)
        return -jnp.mean(jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1))
    return loss


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_forward_mode_equals_reverse_mode(dtype):
    model, images, labels, params, direction = setup()
    model = model.clone(dtype=jnp.dtype(dtype))
    loss = _loss(model, images, labels)
    _, directional = jax.jit(lambda p, v: jax.jvp(loss, (p,), (v,)))(params, direction)
    gradient = jax.jit(jax.grad(loss))(params)
    expected = float(np.dot(_flat(gradient), _flat(direction)))
    assert float(directional) == pytest.approx(expected, rel=1e-4 if dtype == "float32" else 3e-2)


@pytest.mark.parametrize("scan", [False, True], ids=["layers", "scan"])
def test_hessian_vector_products_equal_finite_differences_of_gradients(scan):
    model, images, labels, params, direction = setup(scan)
    grad = jax.jit(jax.grad(_loss(model, images, labels)))
    hvp = jax.jit(lambda p, v: jax.jvp(grad, (p,), (v,))[1])(params, direction)
    eps = 1e-3
    shifted = lambda sign: jax.tree.map(lambda p, v: p + sign * eps * v, params, direction)
    finite = (_flat(grad(shifted(1))) - _flat(grad(shifted(-1)))) / (2 * eps)
    got = _flat(hvp)
    assert np.linalg.norm(got - finite) <= 2e-2 * np.linalg.norm(finite)


def test_vmap_of_per_example_gradients_equals_a_loop():
    model, images, labels, params, _ = setup()
    per_example = lambda p, x, y: jax.grad(_loss(model, x[None], y[None]))(p)
    batched = jax.jit(jax.vmap(per_example, (None, 0, 0)))(params, images, labels)
    for i in range(images.shape[0]):
        one = jax.jit(per_example)(params, images[i], labels[i])
        np.testing.assert_allclose(_flat(jax.tree.map(lambda g, i=i: g[i], batched)), _flat(one), rtol=1e-4,
                                   atol=1e-5 * np.abs(_flat(one)).max())
