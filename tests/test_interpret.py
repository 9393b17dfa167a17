import math

import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import live_params
from tests.numpy_reference import vit_forward
from vit_jax.interpret.attention import (
    attention_rollout,
    attention_weights,
    mean_attention_distance,
    patch_centres,
    query_row,
    token_map,
)
from vit_jax.interpret.patch_filters import principal_filters
from vit_jax.interpret.posemb_similarity import posemb_similarity
from vit_jax.models import create_model
from vit_jax.models.encoder import stack_encoder_blocks


def test_posemb_similarity_of_a_row_plus_column_table_is_known():
    """Position (i, j) embedded as onehot(i) ++ onehot(j): cosine 1 with itself, 1/2 with its row or column,
    0 elsewhere."""
    gh, gw = 3, 4
    rows = [np.concatenate([np.eye(gh)[i], np.eye(gw)[j]]) for i in range(gh) for j in range(gw)]
    table = np.concatenate([np.full((1, gh + gw), 9.0), np.stack(rows)])[None]  # a class-token row first
    sim = posemb_similarity(table, (gh, gw))
    i, j, k, l = np.meshgrid(range(gh), range(gw), range(gh), range(gw), indexing="ij")
    expected = ((i == k).astype(float) + (j == l)) / 2
    np.testing.assert_allclose(sim, expected, atol=1e-12)


def test_posemb_similarity_rejects_a_table_smaller_than_the_grid():
    with pytest.raises(ValueError, match="position table has 5 rows; a 3x3 grid needs at least 9"):
        posemb_similarity(np.zeros((5, 8)), (3, 3))


def test_principal_filters_recover_planted_directions_in_order_with_their_variance():
    rng = np.random.default_rng(0)
    u, v = np.linalg.qr(rng.standard_normal((2 * 2 * 3, 2)))[0].T  # orthonormal 2x2x3 patterns
    amplitudes = rng.standard_normal((500, 2))
    amplitudes, _ = np.linalg.qr(amplitudes - amplitudes.mean(0))  # zero-mean, uncorrelated amplitude series
    a, b = 3.0 * amplitudes.T
    b = b / 3.0
    kernel = (np.outer(u, a) + np.outer(v, b) + 0.5).reshape(2, 2, 3, 500)  # + a constant mean filter
    components, explained = principal_filters(kernel, count=2)
    assert components.shape == (2, 2, 2, 3)
    for component, planted in zip(components.reshape(2, -1), (u, v)):
        assert abs(abs(component @ planted) - 1) < 1e-12
        assert component[np.abs(component).argmax()] > 0
    np.testing.assert_allclose(explained, [0.9, 0.1], atol=1e-12)  # variances 9 : 1


def test_principal_filters_match_the_covariance_eigenvectors():
    kernel = np.random.default_rng(1).standard_normal((4, 4, 1, 64))
    components, explained = principal_filters(kernel)
    filters = kernel.reshape(16, 64).T
    eigenvalues, eigenvectors = np.linalg.eigh(np.cov(filters, rowvar=False))
    order = np.argsort(eigenvalues)[::-1]
    for c, e in zip(components.reshape(16, 16)[:5], eigenvectors[:, order].T[:5]):
        assert abs(abs(c @ e) - 1) < 1e-9
    np.testing.assert_allclose(explained, eigenvalues[order] / eigenvalues.sum(), atol=1e-12)


def test_rollout_of_identity_and_of_uniform_attention():
    eye = np.broadcast_to(np.eye(5), (3, 1, 2, 5, 5))  # layers, batch, heads
    np.testing.assert_allclose(attention_rollout(eye), np.eye(5)[None])
    uniform = np.full((3, 1, 2, 5, 5), 0.2)
    np.testing.assert_allclose(attention_rollout(uniform, residual=False), np.full((1, 5, 5), 0.2))


def test_rollout_is_the_product_of_half_attention_half_identity_by_hand():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 4, 3, 3))  # layers, heads, tokens, tokens (no batch axis)
    weights = np.exp(logits) / np.exp(logits).sum(-1, keepdims=True)
    first, second = (0.5 * weights[layer].mean(0) + 0.5 * np.eye(3) for layer in range(2))
    np.testing.assert_allclose(attention_rollout(weights), second @ first, rtol=1e-12)
    np.testing.assert_allclose(attention_rollout(weights).sum(-1), 1.0)


def test_mean_attention_distance_by_hand():
    grid, patch = (2, 2), (4, 4)
    np.testing.assert_allclose(patch_centres(grid, patch), [[2, 2], [2, 6], [6, 2], [6, 6]])
    tokens = 1 + 4
    uniform = np.full((1, 1, 1, tokens, tokens), 1 / tokens)  # class token gets weight too, then is dropped
    # each patch sees 0, 4, 4 and 4*sqrt(2) pixels away with weight 1/4 each
    np.testing.assert_allclose(mean_attention_distance(uniform, grid, patch, num_prefix=1), [[(8 + 4 * math.sqrt(2)) / 4]])
    to_self = np.broadcast_to(np.eye(4), (2, 3, 2, 4, 4))  # layers, batch, heads
    np.testing.assert_allclose(mean_attention_distance(to_self, grid, patch, num_prefix=0), np.zeros((2, 2)))
    # head 0 always looks one patch to the right/left (4 px), head 1 at the diagonal opposite (4*sqrt(2) px)
    neighbour = np.eye(4)[[1, 0, 3, 2]]
    opposite = np.eye(4)[[3, 2, 1, 0]]
    weights = np.stack([neighbour, opposite])[None, None]
    np.testing.assert_allclose(mean_attention_distance(weights, grid, patch, 0), [[4.0, 4 * math.sqrt(2)]])


def test_query_row_follows_the_class_token_or_the_mean_token_and_maps_to_the_grid():
    matrix = np.arange(25.0).reshape(5, 5)
    np.testing.assert_allclose(query_row(matrix, 1), matrix[0])
    np.testing.assert_allclose(query_row(matrix[1:, 1:], 0), matrix[1:, 1:].mean(0))
    np.testing.assert_allclose(token_map(matrix[0], (2, 2), 1), [[1, 2], [3, 4]])
    # registers (prefix tokens that are not a class token): the mean over the patch queries, registers left out
    np.testing.assert_allclose(query_row(matrix, 1, class_token=False), matrix[1:].mean(0))


def test_pictures_of_a_model_with_registers_map_the_patches_only(rng):
    from vit_jax.interpret.pictures import compute_pictures

    model = create_model("Ti/4", num_classes=3, classifier="gap", num_registers=2, hidden_size=16, num_layers=1,
                         mlp_dim=32, num_heads=2)
    images = rng.standard_normal((2, 8, 12, 3)).astype(np.float32)  # a 2x3 grid
    pictures = compute_pictures(model, live_params(model, jnp.asarray(images)), images, (-1.0, 1.0))
    assert pictures.weights.shape[-1] == 2 + 6 and pictures.query == "mean token"
    weights = pictures.weights[0, 0]  # (heads, tokens, tokens) of images[0], layer 0
    np.testing.assert_allclose(pictures.attention_maps()[0], weights[:, 2:, 2:].mean(1).reshape(2, 2, 3), rtol=1e-6)
    assert pictures.rollout_map().shape == (2, 3)


@pytest.mark.parametrize("scan", [False, True])
def test_attention_weights_are_the_models_own_softmax(scan):
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 8, 12, 1)), jnp.float32)
    model = create_model("Ti/4", num_classes=3, hidden_size=16, num_layers=3, mlp_dim=32, num_heads=2)
    params = live_params(model, images)
    expected = []
    vit_forward(params, np.asarray(images), record_attention=expected)
    if scan:
        model, params = model.clone(scan=True), stack_encoder_blocks(params)
    weights = attention_weights(model, params, images)
    assert weights.shape == (3, 2, 2, 7, 7)  # layers, batch, heads, 1 + 2x3 tokens, keys
    np.testing.assert_allclose(weights, np.stack(expected), rtol=1e-4, atol=1e-6)
