"""Classifier heads: how the encoded tokens become one representation, then logits.

- `token`: the class token (parameter `cls`, prepended before the encoder), as the ViT paper.
- `gap`: the mean over all tokens (no class token).
- `token_gap`: a class token in the sequence, but the mean over the patch tokens pooled (timm's `global_pool='avg'`
  with `class_token=True`; timm's DINOv3 default).
- `map`: multi-head attention pooling with a learned probe (big_vision's `MAPHead`, named `MAPHead_0`).
- `token_map`: a class token in the sequence, and the probe attends over every token, the class token included
  (Perception Encoder's core models: timm's `global_pool='map'` with a class token).
- `unpooled`: every token (no class token); `token_unpooled`: every token, class token included.
- `token_and_gap`: the class token and the mean patch token side by side (`2 * hidden_size` features): DINOv2's
  linear classifiers (transformers' `Dinov2ForImageClassification`).
- `token_distilled`: DeiT's class and distillation tokens (parameters `cls`, `dist`), each read by its own head
  (`head`, `head_dist`), the two logits averaged: DeiT's inference, and timm's training and fine-tuning unless it
  distils from a teacher (which vit_jax does not do).
"""

from __future__ import annotations

from typing import Any, Literal

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.block import MlpBlock
from vit_jax.models.layer_norm import LayerNorm

Classifier = Literal["token", "gap", "token_gap", "token_and_gap", "map", "token_map", "unpooled",
                     "token_unpooled", "token_distilled"]
CLASSIFIERS: tuple[str, ...] = ("token", "gap", "token_gap", "token_and_gap", "map", "token_map", "unpooled",
                                "token_unpooled", "token_distilled")
MAP_CLASSIFIERS = ("map", "token_map")  # pooled by `MAPHead_0`


def num_prefix_tokens(classifier: str) -> int:
    """How many tokens the model prepends to the patch tokens (the class token, DeiT's distillation token after it,
    or none)."""
    if classifier == "token_distilled":
        return 2
    return 1 if classifier in ("token", "token_gap", "token_and_gap", "token_map", "token_unpooled") else 0


class MAPHead(nn.Module):
    """Multihead attention pooling: a learned probe attends over the tokens, then a residual MLP (big_vision).

    `segments` `(B, K, N)` (True where token n belongs to image k of a packed sequence) pools each of K images
    with its own copy of the probe, attending only to that image's tokens: `(B, K, D)` instead of `(B, D)`.
    """

    num_heads: int
    mlp_dim: int | None = None
    gelu_approximate: bool = True
    quick_gelu: bool = False
    layer_norm_epsilon: float = 1e-6
    dtype: Any = None

    @nn.compact
    def __call__(self, x: jax.Array, segments: jax.Array | None = None) -> jax.Array:
        b, _, d = x.shape
        num_queries = 1 if segments is None else segments.shape[1]
        probe = self.param("probe", nn.initializers.xavier_uniform(), (1, 1, d), jnp.float32)
        probe = jnp.tile(probe.astype(x.dtype), [b, num_queries, 1])
        x = nn.MultiHeadDotProductAttention(
            num_heads=self.num_heads, dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform()
        )(probe, x, mask=None if segments is None else segments[:, None])
        y = LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype)(x)
        mlp_dim = 4 * d if self.mlp_dim is None else self.mlp_dim
        x = x + MlpBlock(mlp_dim=mlp_dim, gelu_approximate=self.gelu_approximate, quick_gelu=self.quick_gelu,
                         dtype=self.dtype)(y, deterministic=True)
        return x[:, 0] if segments is None else x


def pool_tokens(x: jax.Array, classifier: str) -> jax.Array:
    """The representation for non-learned pools: `token` -> `x[:, 0]`, `gap` -> mean, `token_gap` -> mean after the
    class token, `token_and_gap` -> both concatenated, `*unpooled` -> `x`."""
    if classifier == "token":
        return x[:, 0]
    if classifier == "gap":
        return jnp.mean(x, axis=1)
    if classifier == "token_gap":
        return jnp.mean(x[:, 1:], axis=1)
    if classifier == "token_and_gap":
        return jnp.concatenate([x[:, 0], jnp.mean(x[:, 1:], axis=1)], axis=-1)
    if classifier in ("unpooled", "token_unpooled"):
        return x
    if classifier == "token_distilled":
        return x[:, :2]
    raise ValueError(f"classifier must be one of {CLASSIFIERS}; got {classifier!r}")


def pool_segments(x: jax.Array, segments: jax.Array) -> jax.Array:
    """Mean of each image's tokens in packed `(B, N, D)` tokens: `segments` `(B, K, N)` -> `(B, K, D)`
    (zeros for an empty image slot)."""
    weights = segments.astype(jnp.float32)
    counts = jnp.maximum(weights.sum(-1, keepdims=True), 1.0)
    return (jnp.einsum("bkn,bnd->bkd", weights, x.astype(jnp.float32)) / counts).astype(x.dtype)
