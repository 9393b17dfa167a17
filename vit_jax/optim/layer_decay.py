"""Layer-wise learning-rate decay (fine-tuning): each parameter's multiplier by its depth, as timm's."""

from __future__ import annotations

import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
import optax

from vit_jax.param_paths import path_string

# What acts before the first block, in layer-wise decay's layer 0 (timm's `group_matcher` stem: cls_token, reg_token,
# pos_embed, patch_embed, norm_pre): the patch embedding and a hybrid's ResNet stem, the class and distillation
# tokens, the position table, registers, the pre-norm. Blocks are layers 1..L, the final norm joins the last block
# (timm's MATCH_PREV_GROUP), and everything after it (pooling, heads) is one last layer at the full rate, as are
# RoPE-Mixed's learned frequencies (one model-level tensor in timm, which its matcher leaves in no block).
STEM = re.compile(r"^(embedding|cls|dist|conv_root|gn_root|block\d+)(/|$)|^Transformer/(posembed_input|registers|pre_norm)(/|$)")
FINAL_NORM = re.compile(r"^Transformer/encoder_norm(/|$)")
FULL_RATE = re.compile(r"/rope_frequencies$")
_BLOCK = re.compile(r"^Transformer/encoderblock(?:_(\d+))?/")


def layer_scales(params: Any, decay: float) -> Any:
    """Each parameter's learning-rate multiplier under layer-wise decay, as timm's `param_groups_layer_decay`:
    `decay ** (last - layer)`, so the head learns at the full rate, block i (of L) at `decay ** (L - i)` and the
    patch embedding at `decay ** (L + 1)` (BEiT's and MAE's rule, except that their final norm keeps the full rate).
    Scanned blocks (one stacked `Transformer/encoderblock`) get one multiplier per layer along their leading axis."""
    leaves = [(path_string(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    blocks = {int(m.group(1)) for name, _ in leaves if (m := _BLOCK.match(name)) and m.group(1) is not None}
    stacked = {leaf.shape[0] for name, leaf in leaves if (m := _BLOCK.match(name)) and m.group(1) is None}
    num_layers = max(blocks, default=-1) + 1 + max(stacked, default=0)

    def layer(name: str) -> int:
        if STEM.search(name):
            return 0
        return num_layers if FINAL_NORM.search(name) else num_layers + 1

    last = max([num_layers, *(layer(name) for name, _ in leaves if not _BLOCK.match(name))])

    def scale(path: Any, leaf: Any) -> Any:
        name = path_string(path)
        if FULL_RATE.search(name):
            return 1.0
        if (m := _BLOCK.match(name)) is None:
            return decay ** (last - layer(name))
        if m.group(1) is not None:
            return decay ** (last - 1 - int(m.group(1)))
        layers = np.arange(leaf.shape[0], dtype=np.float64)
        return (decay ** (last - 1 - layers)).astype(np.float32).reshape(-1, *(1,) * (leaf.ndim - 1))

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer(decay: float) -> optax.GradientTransformation:
    """Updates times `layer_scales` (after the optimizer: AdamW's decoupled weight decay is scaled with them, as a
    per-group learning rate scales it in PyTorch)."""
    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        scales = layer_scales(updates, decay)
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)
