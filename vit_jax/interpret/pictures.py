"""Everything `vit_jax.visualize` draws, computed for one model and a few images; shared with the trainer's
TensorBoard pictures."""

from __future__ import annotations

import dataclasses
from typing import Any

import numpy as np
from matplotlib.figure import Figure

from vit_jax.interpret import figures
from vit_jax.interpret.attention import (
    attention_rollout,
    attention_weights,
    mean_attention_distance,
    query_row,
    token_map,
)
from vit_jax.interpret.patch_filters import principal_filters
from vit_jax.interpret.posemb_similarity import posemb_similarity
from vit_jax.models.encoder import ENCODER
from vit_jax.models.heads import num_prefix_tokens
from vit_jax.models.posemb import sincos2d
from vit_jax.models.vit import VisionTransformer, pixel_patch_size, token_grid

MAX_FILTER_COMPONENTS = 28  # as many as the ViT paper shows


@dataclasses.dataclass(frozen=True)
class Pictures:
    """The arrays behind each picture. `images`: `(B, h, w, C)` preprocessed; maps follow `images[0]`."""

    images: np.ndarray
    value_range: tuple[float, float]
    grid: tuple[int, int]
    patch_size: tuple[int, int]
    num_prefix: int  # tokens before the patches: the class token, then any registers
    class_token: bool
    posemb_grid: tuple[int, int] | None  # the grid the similarity map is drawn at; None: no position embeddings
    similarity: np.ndarray | None  # (gh, gw, gh, gw)
    filter_components: np.ndarray  # (k, ph, pw, C)
    filter_explained: np.ndarray  # (k,)
    weights: np.ndarray  # (layers, B, heads, tokens, tokens)
    rollout: np.ndarray  # (tokens, tokens), images[0]
    distances: np.ndarray  # (layers, heads), pixels, averaged over all images

    @property
    def query(self) -> str:
        return "class token" if self.class_token else "mean token"

    def attention_maps(self) -> np.ndarray:
        """`(layers, heads, gh, gw)`: the query's attention onto the patches, for images[0]."""
        rows = query_row(self.weights[:, 0], self.num_prefix, self.class_token)  # (layers, heads, tokens)
        return np.asarray(rows)[..., self.num_prefix:].reshape(*rows.shape[:2], *self.grid)

    def rollout_map(self) -> np.ndarray:
        return token_map(query_row(self.rollout, self.num_prefix, self.class_token), self.grid, self.num_prefix)

    def figures(self, title_suffix: str = "") -> dict[str, Figure]:
        """File stem -> figure."""
        suffix = f" - {title_suffix}" if title_suffix else ""
        shown = figures.display_image(self.images[0], self.value_range)
        out = {}
        if self.similarity is not None:
            out["posemb_similarity"] = figures.posemb_similarity_figure(
                self.similarity, f"Position embedding similarity{suffix}")
        out["patch_filters"] = figures.patch_filters_figure(self.filter_components, self.filter_explained)
        out["patch_grid"] = figures.patch_grid_figure(shown, self.grid, self.patch_size, self.num_prefix)
        out["attention_maps"] = figures.attention_maps_figure(self.attention_maps(), self.query)
        out["attention_rollout"] = figures.attention_rollout_figure(shown, self.rollout_map(), self.query)
        out["mean_attention_distance"] = figures.mean_distance_figure(
            self.distances, self.images.shape[1:3],
            f"Mean attention distance per head ({len(self.images)} image{'s' * (len(self.images) > 1)}){suffix}")
        return out


def position_table(model: VisionTransformer, params: Any, grid: tuple[int, int]
                   ) -> tuple[np.ndarray, tuple[int, int]] | None:
    """The table the model adds and the grid it is laid out on: the learned one as stored (row + column for
    `factorized`), the fixed sin-cos one at the input grid; None for `none` and RoPE (no table)."""
    if model.posemb == "learn":
        table = np.asarray(params[ENCODER]["posembed_input"]["pos_embedding"])
        return table, tuple(model.posemb_grid) if model.posemb_grid is not None else grid
    if model.posemb == "factorized":
        tables = params[ENCODER]["posembed_input"]
        rows, cols = np.asarray(tables["pos_embedding_row"]), np.asarray(tables["pos_embedding_col"])
        return (rows[:, None] + cols[None]).reshape(-1, rows.shape[-1]), (len(rows), len(cols))
    if model.posemb == "sincos2d":
        return np.asarray(sincos2d(grid, model.hidden_size)), grid
    return None


def compute_pictures(model: VisionTransformer, params: Any, images: np.ndarray,
                     value_range: tuple[float, float]) -> Pictures:
    """All the arrays, from a (possibly scanned) model and its parameters, on preprocessed `images`."""
    images = np.asarray(images, np.float32)
    grid = token_grid(model, images.shape[1:3])
    patch_size = pixel_patch_size(model)  # image pixels per token (the ResNet stem's stride times the patch)
    class_tokens = num_prefix_tokens(model.classifier)
    num_prefix = class_tokens + model.num_registers  # registers sit between the class token and the patches
    table = position_table(model, params, grid)
    similarity = posemb_similarity(*table) if table is not None else None
    # A hybrid's embedding sees the stem's feature map, not pixels: its root conv is the layer that sees the image.
    first_layer = params["conv_root"] if "conv_root" in params else params["embedding"]
    components, explained = principal_filters(np.asarray(first_layer["kernel"]), MAX_FILTER_COMPONENTS)
    weights = attention_weights(model, params, images)
    return Pictures(
        images=images, value_range=tuple(value_range), grid=grid, patch_size=patch_size,
        num_prefix=num_prefix, class_token=bool(class_tokens), posemb_grid=None if table is None else table[1],
        similarity=similarity,
        filter_components=components, filter_explained=explained, weights=weights,
        rollout=attention_rollout(weights[:, 0]),
        distances=mean_attention_distance(weights, grid, patch_size, num_prefix),
    )
