"""DINOv3's own checkpoints (facebookresearch/dinov3: `dinov3_vit*16*_pretrain_*.pth`) as timm checkpoints, which
`timm_layout` then reads with DINOv3's rotary conventions.

DINOv3's backbone differs from timm's DINOv3 layout in names and in what it stores: `storage_tokens` are timm's
registers; the fused `qkv` bias comes with a `bias_mask` that zeroes the key's third (timm's `q_bias`, `v_bias`);
the SwiGLU MLP of S+/H+/7B is `w1` (gated by SiLU), `w2`, `w3` (timm's `fc1_g`, `fc1_x`, `fc2`); its rotary
`periods` are stored, `base ** (4 k / head_dim)`, so the base (100 in every release) and the head count (the
periods are a quarter of a head) are read off them, and the file needs no config.json (its evaluation size is
DINOv3's 224, at which any other runs too). Its pre-training mask token
and the 7B's local-crop class norm are not the backbone's. The LayerNorms are DINOv3's `layernormbf16`, epsilon
1e-5, as timm's and transformers' DINOv3 have them.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

PERIODS = "rope_embed.periods"
_SWIGLU = {"w1": "fc1_g", "w2": "fc1_x", "w3": "fc2"}


def is_dinov3_state(state: Mapping[str, np.ndarray]) -> bool:
    return PERIODS in state and "storage_tokens" in state


def dinov3_rope_args(theta: float) -> dict[str, Any]:
    """timm's arguments of DINOv3's rotary encoding (the conventions `timm_rope` reads as DINOv3's)."""
    return {"rope_type": "dinov3", "use_rot_pos_emb": True, "rope_rotate_half": True, "rope_temperature": theta}


def as_timm(state: Mapping[str, np.ndarray], config: Mapping[str, Any], where: str
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    periods = np.asarray(state[PERIODS], np.float64)
    head_dim, width = 4 * len(periods), int(state["patch_embed.proj.weight"].shape[0])
    theta = float(periods[-1] ** (head_dim / (4 * (len(periods) - 1)))) if len(periods) > 1 else 100.0
    if not np.allclose(periods, theta ** (4 * np.arange(len(periods)) / head_dim), rtol=1e-4):
        raise ValueError(f"{where}: DINOv3 rotary periods that are not base ** (4 k / head_dim) (its min_period / "
                         f"max_period form); vit_jax's DINOv3 encoding has a base")
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if name in (PERIODS, "mask_token") or name.startswith("local_cls_norm.") or name.endswith(".bias_mask"):
            continue
        if name.endswith("attn.qkv.bias") and name + "_mask" in state:
            mask, third = np.asarray(state[name + "_mask"]), len(value) // 3
            if np.any(mask[third:2 * third]) or not np.all(mask[:third]) or not np.all(mask[2 * third:]):
                raise ValueError(f"{where}: {name}_mask masks other than the key's bias")
            out[name.replace("qkv.bias", "q_bias")], out[name.replace("qkv.bias", "v_bias")] = (
                value[:third], value[2 * third:])
            continue
        name = re.sub(r"\.mlp\.(w[123])\.", lambda m: f".mlp.{_SWIGLU[m[1]]}.", name)
        out["reg_token" if name == "storage_tokens" else name] = value
    args = {"num_heads": width // head_dim, "class_token": True, "global_pool": "token", "img_size": [224, 224],
            "norm_layer": {"name": "LayerNorm", "eps": 1e-5, "bias": True}, **dinov3_rope_args(theta),
            **(config.get("model_args") or {})}
    if any(".mlp.fc1_g." in name for name in out):
        args.setdefault("act_layer", "SiLU")
    return out, {**config, "model_args": args}
