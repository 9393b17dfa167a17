"""DINOv2's own checkpoints (facebookresearch/dinov2: `torch.hub.load`'s `dinov2_vit*14[_reg4]_pretrain.pth`) as
timm checkpoints, which `timm_layout` then reads.

DINOv2's backbone has timm's tensor names but for three things, each renamed as timm's `_convert_dinov2` does:
its pre-training `mask_token` (a backbone never runs it), its giant's fused SwiGLU (`mlp.w12`, gate half first,
and `mlp.w3`: timm's `SwiGLUPacked` fc1 / fc2), and its registers (`register_tokens`), which enter after the
position table is added: the table's class row folds into the class token and the rest is timm's class-free
table. Everything else (heads from the width, the 518-pixel grid from the table, layer scale) is read off the
tensors as for any timm file; the file needs no `config.json`. At another grid the table is resized as DINOv2's own
code resizes it (`interpolate_offset` and `interpolate_antialias`: `vit_jax.models.posemb.resize_posemb`).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

_FUSED_SWIGLU = re.compile(r"^(blocks\.\d+\.mlp\.)w(12|3)\.(weight|bias)$")


def is_dinov2_state(state: Mapping[str, np.ndarray]) -> bool:
    """DINOv2's backbone keeps its pre-training mask token beside timm's names (timm's converted files drop it)."""
    return "mask_token" in state and "patch_embed.proj.weight" in state and "blocks.0.ls1.gamma" in state


def as_timm(state: Mapping[str, np.ndarray], config: Mapping[str, Any]) -> tuple[dict[str, np.ndarray],
                                                                                dict[str, Any]]:
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if name == "mask_token":
            continue
        match = _FUSED_SWIGLU.match(name)
        out[f"{match[1]}{'fc1' if match[2] == '12' else 'fc2'}.{match[3]}" if match else name] = value
    if "register_tokens" in out:
        table = out.pop("pos_embed")
        out["reg_token"] = out.pop("register_tokens")
        out["cls_token"] = out["cls_token"] + table[:, :1]
        out["pos_embed"] = table[:, 1:]
    args = dict(config.get("model_args") or {})
    # DINOv2's own `interpolate_pos_encoding`: bicubic with antialiasing in the register models, else PyTorch's plain
    # bicubic at a scale of (n + 0.1) / table cells (hub/backbones.py's `interpolate_offset=0.1`)
    if "reg_token" not in out:
        args.update(pos_embed_interp_mode="bicubic", pos_embed_antialias=False, interpolate_offset=0.1)
    if any(_FUSED_SWIGLU.match(name) for name in state):  # SwiGLUFFNFused: silu(first half) * second half
        args.setdefault("act_layer", "SiLU")
        args.setdefault("mlp_layer", {"name": "GluMlp", "gate_last": False})
    return out, {**config, "model_args": args}
