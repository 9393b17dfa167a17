"""vit-pytorch (lucidrains, 1.x's current layout) state dicts -> the vit_jax model `vit_pytorch_style.ViT` builds.

The same arguments build the same architecture on both sides, so the mapping is name by name:
`to_patch_embedding.{1,2,3}` (norm, projection, norm) -> `embedding/{patch_norm,kernel+bias,embedding_norm}`,
`transformer.layers.N.0` (norm, fused `to_qkv`, `to_out.0`) -> `encoderblock_N/{LayerNorm_0,
MultiHeadDotProductAttention_0}`, `transformer.layers.N.1.net.{0,1,4}` -> `LayerNorm_1`, `MlpBlock_0/Dense_{0,1}`,
`transformer.norm` -> `encoder_norm`, `mlp_head` -> `head`. Patches are flattened `(p1 p2 c)` on both sides, so
the projection is a reshape; vit_jax's inputs are channels-last.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.checkpoint.hub import read_weights
from vit_jax.checkpoint.timm_layout import ATTENTION, BLOCK, dense_params, heads_in, heads_out, norm_params
from vit_jax.models.encoder import ENCODER
from vit_jax.models.heads import num_prefix_tokens
from vit_jax.models.vit import VisionTransformer


def load_vit_pytorch(model: VisionTransformer, source: str | Path | Mapping[str, Any]) -> dict[str, Any]:
    """The parameters of `model` (built by `vit_pytorch_style.ViT` with the arguments the PyTorch model was built
    with) from vit-pytorch's `state_dict`: a `.safetensors` file, a `.pt`/`.pth` (read with
    `torch.load(weights_only=True)`), or the dict itself (tensors or arrays)."""
    if isinstance(source, Mapping):
        state = {k: np.asarray(v.detach().float().numpy() if hasattr(v, "detach") else v, np.float32)
                 for k, v in source.items()}
        where = "the state dict"
    else:
        state, where = read_weights(Path(source).expanduser()), str(source)
    params = params_from_vit_pytorch(state, model, where)
    _check_shapes(params, model, state, where)
    return params


def params_from_vit_pytorch(state: Mapping[str, np.ndarray], model: VisionTransformer, where: str = "the state dict"
                            ) -> dict[str, Any]:
    """vit-pytorch tensor names -> vit_jax's tree (float32 numpy), or a one-line error naming a missing tensor."""
    missing = [k for k in ("to_patch_embedding.2.weight", "transformer.layers.0.0.to_qkv.weight") if k not in state]
    if missing:
        found = ", ".join(sorted(state)[:4])
        raise ValueError(f"{where} is not a vit-pytorch ViT state dict (1.x layout): no {missing[0]!r}; found "
                         f"{found}, ...")
    w = {k: np.asarray(v, np.float32) for k, v in state.items()}
    heads, width = model.num_heads, model.hidden_size
    projection = w["to_patch_embedding.2.weight"]  # (D, ph * pw * C), patches flattened (p1 p2 c)
    ph, pw = model.patch_size
    embedding: dict[str, Any] = {"kernel": projection.T.reshape(ph, pw, -1, projection.shape[0]),
                                 "bias": w["to_patch_embedding.2.bias"]}
    if "to_patch_embedding.1.weight" in w:
        embedding["patch_norm"] = norm_params(w, "to_patch_embedding.1")
    if "to_patch_embedding.3.weight" in w:
        embedding["embedding_norm"] = norm_params(w, "to_patch_embedding.3")
    encoder: dict[str, Any] = {"posembed_input": {"pos_embedding": w["pos_embedding"][None]},
                               "encoder_norm": norm_params(w, "transformer.norm")}
    for i in range(model.num_layers):
        b = f"transformer.layers.{i}."
        qkv = _tensor(w, b + "0.to_qkv.weight", where).reshape(3, -1, width)
        attention = {name: heads_in(qkv[j], None, heads) for j, name in enumerate(("query", "key", "value"))}
        attention["out"] = heads_out(w, b + "0.to_out.0", heads)
        encoder[BLOCK.format(i)] = {
            "LayerNorm_0": norm_params(w, b + "0.norm"), ATTENTION: attention,
            "LayerNorm_1": norm_params(w, b + "1.net.0"),
            "MlpBlock_0": {"Dense_0": dense_params(w, b + "1.net.1"), "Dense_1": dense_params(w, b + "1.net.4")}}
    params: dict[str, Any] = {"embedding": embedding, ENCODER: encoder}
    if num_prefix_tokens(model.classifier):
        params["cls"] = w["cls_token"][None]
    if "mlp_head.weight" in w:
        params["head"] = dense_params(w, "mlp_head")
    return params


def _tensor(w: Mapping[str, np.ndarray], name: str, where: str) -> np.ndarray:
    if name not in w:
        raise ValueError(f"{where} has no {name!r}: the model has more layers than the state dict")
    return w[name]


def _check_shapes(params: dict[str, Any], model: VisionTransformer, state: Mapping[str, np.ndarray], where: str
                  ) -> None:
    """Every parameter the model has, at its shape: else one line naming the first that differs."""
    prefix, rows = num_prefix_tokens(model.classifier), np.shape(state.get("cls_token", np.zeros((0,))))[0]
    if rows != prefix:
        raise ValueError(f"{where} has {rows} class token(s) (pool={'cls' if rows else 'mean'!r}); the model has "
                         f"{prefix} (classifier={model.classifier!r})")
    extra = f"transformer.layers.{model.num_layers}.0.norm.weight"
    if extra in state:
        raise ValueError(f"{where} has more than the model's {model.num_layers} layers ({extra!r})")
    kernel = params["embedding"]["kernel"]
    grid = model.posemb_grid or (1, 1)
    image = jnp.zeros((1, grid[0] * kernel.shape[0], grid[1] * kernel.shape[1], kernel.shape[2]))
    expected = jax.eval_shape(lambda: model.init(jax.random.key(0), image, train=False))["params"]
    path = lambda keys: "/".join(str(k.key) for k in keys)
    got = {path(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(params)}
    want = {path(k): v.shape for k, v in jax.tree_util.tree_leaves_with_path(expected)}
    for name in sorted(set(got) | set(want)):
        if got.get(name) != want.get(name):
            raise ValueError(f"{where} does not fit this model at {name}: the state dict gives "
                             f"{got.get(name, 'nothing')}, the model has {want.get(name, 'nothing')} (build the "
                             f"model with the arguments the PyTorch model was built with)")
