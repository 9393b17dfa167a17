"""Attention weights of a ViT on images, attention rollout, and mean attention distance.

- `attention_weights`: every block's softmax weights `(layers, batch, heads, tokens, tokens)`, recorded by the
  model itself (`record_attention=True`), so they are the weights the trained model uses.
- `attention_rollout` (Abnar & Zuidema, 2020): how much each input token flows into each output token through
  all layers, counting the residual connection as half of each layer's mixing.
- `mean_attention_distance` (ViT paper, Figure 7 right): per layer and head, the image distance between a query
  patch and the patches it attends to, weighted by attention and averaged over query patches.
"""

from __future__ import annotations

import functools
from typing import Any

import jax
import numpy as np

from vit_jax.models.encoder import SCANNED_BLOCKS
from vit_jax.models.vit import VisionTransformer

_WEIGHTS = ("MultiHeadDotProductAttention_0", "attention_weights")


def recording_model(model: VisionTransformer) -> VisionTransformer:
    """The same model, recording its attention weights (float32 einsum attention, no activation sharding)."""
    return model.clone(record_attention=True, attention_impl="einsum", dtype=None, activation_sharding=None)


@functools.partial(jax.jit, static_argnums=0)  # compiled once per model and input shape
def _intermediates(model: VisionTransformer, params: Any, images: jax.Array) -> Any:
    _, state = recording_model(model).apply({"params": params}, images, train=False, mutable=["intermediates"])
    return state["intermediates"]


def attention_weights(model: VisionTransformer, params: Any, images: jax.Array) -> np.ndarray:
    """`(layers, batch, heads, tokens, tokens)`: row q of `[l, b, h]` is query token q's softmax over keys."""
    encoder = _intermediates(model, params, images)["Transformer"]
    if SCANNED_BLOCKS in encoder:  # scanned: already stacked over depth
        return np.asarray(_leaf(encoder[SCANNED_BLOCKS]), np.float32)
    return np.stack([np.asarray(_leaf(encoder[f"{SCANNED_BLOCKS}_{i}"]), np.float32)
                     for i in range(model.num_layers)])


def _leaf(block: Any) -> jax.Array:
    (weights,) = block[_WEIGHTS[0]][_WEIGHTS[1]]  # sow keeps a tuple of the calls; one call per block
    return weights


def attention_rollout(weights: np.ndarray, residual: bool = True) -> np.ndarray:
    """Rollout over `(layers, ..., tokens, tokens)` weights: heads are averaged (a head axis just before the two
    token axes is expected), `0.5 * A + 0.5 * I` per layer when `residual`, rows renormalised, and the layers
    multiplied, last layer on the left. Returns `(..., tokens, tokens)`; row q is how much each input token
    contributes to output token q (each row sums to 1)."""
    weights = np.asarray(weights, np.float64).mean(axis=-3)  # over heads
    tokens = weights.shape[-1]
    rollout = np.broadcast_to(np.eye(tokens), weights.shape[1:]).copy()
    for layer in weights:
        mixed = 0.5 * layer + 0.5 * np.eye(tokens) if residual else layer
        mixed = mixed / mixed.sum(axis=-1, keepdims=True)
        rollout = mixed @ rollout
    return rollout


def patch_centres(grid: tuple[int, int], patch_size: tuple[int, int]) -> np.ndarray:
    """`(gh * gw, 2)` pixel coordinates (row, column) of each patch's centre, in token order (row-major)."""
    (gh, gw), (ph, pw) = grid, patch_size
    rows, cols = np.meshgrid((np.arange(gh) + 0.5) * ph, (np.arange(gw) + 0.5) * pw, indexing="ij")
    return np.stack([rows.ravel(), cols.ravel()], axis=-1)


def mean_attention_distance(weights: np.ndarray, grid: tuple[int, int], patch_size: tuple[int, int],
                            num_prefix: int) -> np.ndarray:
    """`(layers, heads)` distances in pixels from `(layers, batch, heads, tokens, tokens)` weights.

    Only patch-to-patch attention counts: prefix (class-token) queries and keys are dropped and each query's
    weights over the patches renormalised to sum to 1, so the figure is the average distance, over the image,
    that information is gathered from. Averaged over query patches and images."""
    weights = np.asarray(weights, np.float64)[..., num_prefix:, num_prefix:]
    weights = weights / np.maximum(weights.sum(axis=-1, keepdims=True), 1e-300)
    centres = patch_centres(grid, patch_size)
    distances = np.linalg.norm(centres[:, None, :] - centres[None, :, :], axis=-1)  # (patches, patches)
    per_query = (weights * distances).sum(axis=-1)  # (layers, batch, heads, queries)
    return per_query.mean(axis=(1, 3))


def token_map(row: np.ndarray, grid: tuple[int, int], num_prefix: int) -> np.ndarray:
    """A row over tokens (e.g. one query's attention) as a `(gh, gw)` map over the patches."""
    return np.asarray(row)[num_prefix:].reshape(grid)


def query_row(matrix: np.ndarray, num_prefix: int, class_token: bool | None = None) -> np.ndarray:
    """The row the pictures follow: the class token's when there is one, else the mean over the patch tokens'
    rows (for `gap` models, whose output is that mean; register tokens, among the `num_prefix` prefix tokens, are
    left out). `class_token` None: there is one when there are prefix tokens. `matrix`: `(..., tokens, tokens)`;
    returns `(..., tokens)`."""
    matrix = np.asarray(matrix)
    class_token = bool(num_prefix) if class_token is None else class_token
    return matrix[..., 0, :] if class_token else matrix[..., num_prefix:, :].mean(axis=-2)
