"""An independent float64 NumPy ViT, written from the paper's equations and the parameter layout alone.

The tests compare vit_jax's Flax modules against it; it shares no code with `vit_jax`.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from scipy.special import erf

Params = dict[str, Any]


def as_float64(tree: Any) -> Any:
    if isinstance(tree, dict):
        return {k: as_float64(v) for k, v in tree.items()}
    return np.asarray(tree, dtype=np.float64)


def layer_norm(x: np.ndarray, p: Params, eps: float = 1e-6) -> np.ndarray:
    mean = x.mean(-1, keepdims=True)
    var = ((x - mean) ** 2).mean(-1, keepdims=True)
    return (x - mean) / np.sqrt(var + eps) * p["scale"] + p["bias"]


def gelu(x: np.ndarray, approximate: bool) -> np.ndarray:
    if approximate:
        return 0.5 * x * (1 + np.tanh(np.sqrt(2 / np.pi) * (x + 0.044715 * x**3)))
    return 0.5 * x * (1 + erf(x / np.sqrt(2)))


def softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(-1, keepdims=True))
    return e / e.sum(-1, keepdims=True)


def _project(x: np.ndarray, p: Params, name: str) -> np.ndarray:
    return np.einsum("bnd,dhk->bnhk", x, p[name]["kernel"]) + p[name]["bias"]


def attention_weights(queries: np.ndarray, keys_values: np.ndarray, p: Params) -> np.ndarray:
    """softmax(q k^T / sqrt(head_dim)) per head: `(batch, heads, queries, keys)`."""
    q, k = _project(queries, p, "query"), _project(keys_values, p, "key")
    return softmax(np.einsum("bqhk,bshk->bhqs", q, k) / np.sqrt(q.shape[-1]))


def attention(queries: np.ndarray, keys_values: np.ndarray, p: Params) -> np.ndarray:
    """Multi-head attention; kernels `(D, heads, head_dim)`, output kernel `(heads, head_dim, D)`."""
    weights = attention_weights(queries, keys_values, p)
    heads = np.einsum("bhqs,bshk->bqhk", weights, _project(keys_values, p, "value"))
    return np.einsum("bqhk,hkd->bqd", heads, p["out"]["kernel"]) + p["out"]["bias"]


def mlp(x: np.ndarray, p: Params, gelu_approximate: bool) -> np.ndarray:
    """GELU MLP, or SwiGLU where `p` has a `Gate`: `silu(x Gate) * (x Dense_0)` (Shazeer 2020, eq. 6)."""
    h = x @ p["Dense_0"]["kernel"] + p["Dense_0"]["bias"]
    if "Gate" in p:
        g = x @ p["Gate"]["kernel"] + p["Gate"]["bias"]
        h = g / (1.0 + np.exp(-g)) * h
    else:
        h = gelu(h, gelu_approximate)
    return h @ p["Dense_1"]["kernel"] + p["Dense_1"]["bias"]


def encoder_block(x: np.ndarray, p: Params, gelu_approximate: bool = True) -> np.ndarray:
    y = layer_norm(x, p["LayerNorm_0"])
    x = x + attention(y, y, p["MultiHeadDotProductAttention_0"])
    return x + mlp(layer_norm(x, p["LayerNorm_1"]), p["MlpBlock_0"], gelu_approximate)


def patch_tokens(images: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """Token `k` = patch at grid (k // gw, k % gw), flattened (row, column, channel), times the kernel."""
    ph, pw, c, d = kernel.shape
    b, h, w, _ = images.shape
    gh, gw = h // ph, w // pw
    tokens = np.zeros((b, gh * gw, d))
    for row in range(gh):
        for col in range(gw):
            patch = images[:, row * ph : (row + 1) * ph, col * pw : (col + 1) * pw, :]
            tokens[:, row * gw + col] = patch.reshape(b, -1) @ kernel.reshape(-1, d) + bias
    return tokens


def sincos2d_table(gh: int, gw: int, width: int) -> np.ndarray:
    """Row `r * gw + c` holds [sin(c w_k) | cos(c w_k) | sin(r w_k) | cos(r w_k)], w_k = 1e4^(-k / (width/4 - 1))."""
    quarter = width // 4
    table = np.zeros((gh * gw, width))
    for r in range(gh):
        for c in range(gw):
            for k in range(quarter):
                omega = 10000.0 ** (-k / (quarter - 1))
                table[r * gw + c, k] = np.sin(c * omega)
                table[r * gw + c, quarter + k] = np.cos(c * omega)
                table[r * gw + c, 2 * quarter + k] = np.sin(r * omega)
                table[r * gw + c, 3 * quarter + k] = np.cos(r * omega)
    return table


def vit_forward(
    params: Params,
    images: np.ndarray,
    *,
    classifier: str = "token",
    posemb: str = "learn",
    gelu_approximate: bool = True,
    record_attention: list[np.ndarray] | None = None,
) -> np.ndarray:
    """Logits of the ViT paper's model (eval mode) for `params` in vision_transformer's layout; each block's
    attention weights are appended to `record_attention` if given."""
    params = as_float64(params)
    images = np.asarray(images, np.float64)
    kernel = params["embedding"]["kernel"]
    x = patch_tokens(images, kernel, params["embedding"]["bias"])
    gh, gw = images.shape[1] // kernel.shape[0], images.shape[2] // kernel.shape[1]
    has_cls = classifier == "token"
    if has_cls:
        x = np.concatenate([np.broadcast_to(params["cls"], (x.shape[0], 1, x.shape[2])), x], axis=1)
    encoder = params["Transformer"]
    if posemb == "learn":
        x = x + encoder["posembed_input"]["pos_embedding"]
    elif posemb == "sincos2d":
        table = sincos2d_table(gh, gw, x.shape[-1])
        x = x + np.concatenate([np.zeros((int(has_cls), x.shape[-1])), table])[None]
    layer = 0
    while f"encoderblock_{layer}" in encoder:
        block = encoder[f"encoderblock_{layer}"]
        if record_attention is not None:
            y = layer_norm(x, block["LayerNorm_0"])
            record_attention.append(attention_weights(y, y, block["MultiHeadDotProductAttention_0"]))
        x = encoder_block(x, block, gelu_approximate)
        layer += 1
    x = layer_norm(x, encoder["encoder_norm"])
    if classifier == "token":
        x = x[:, 0]
    elif classifier == "gap":
        x = x.mean(1)
    elif classifier == "map":
        x = map_head(x, params["MAPHead_0"], gelu_approximate)
    if "pre_logits" in params:
        x = np.tanh(x @ params["pre_logits"]["kernel"] + params["pre_logits"]["bias"])
    return x @ params["head"]["kernel"] + params["head"]["bias"]


def map_head(x: np.ndarray, p: Params, gelu_approximate: bool = True) -> np.ndarray:
    """Attention pooling: a learned probe attends over the tokens, then a residual MLP (big_vision's MAPHead)."""
    probe = np.broadcast_to(p["probe"], (x.shape[0], 1, x.shape[2]))
    y = attention(probe, x, p["MultiHeadDotProductAttention_0"])
    y = y + mlp(layer_norm(y, p["LayerNorm_0"]), p["MlpBlock_0"], gelu_approximate)
    return y[:, 0]
