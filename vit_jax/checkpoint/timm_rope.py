"""timm's rotary ViTs (its `Eva` class: the naver RoPE-ViTs, DINOv3) <-> vit_jax's `rope_*` options.

A rotary model's conventions are not in its tensors (axial frequencies are not stored), so they come from the
architecture name and `model_args` of `config.json`, for the two families whose logits vit_jax is tested to give:
- naver RoPE-ViT (`vit_*_rope_224`, `vit_*_rope_mixed_224`, `..._ape_224`): Eva's `cat` / `mixed` RoPE, column
  coordinates first (`rope_grid_indexing='xy'`), patch indices as coordinates, interleaved pairs, theta 100
  (axial) or 10 (mixed): vit_jax's defaults.
- DINOv3 (`vit_*_dinov3`): coordinates centred on the grid, rows first, pairs in halves (`rope_rotate_half`),
  theta 100.
Other Eva models (EVA-02: SwiGLU, reference-shape interpolation) are refused by name.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vit_jax.models.rope import DEFAULT_THETA

NAVER, DINOV3 = "naver", "dinov3"
# vit_jax conventions of each family (beyond the kind and theta)
CONVENTIONS = {
    NAVER: dict(rope_coordinates="index", rope_pairing="interleaved", rope_axis_order="xy", rope_grid=None),
    DINOV3: dict(rope_coordinates="centered", rope_pairing="halves", rope_axis_order="ij", rope_grid=None),
}


def rope_family(name: str, args: Mapping[str, Any], where: str) -> str | None:
    """`naver`, `dinov3`, or None for a model without rotary encodings; a ValueError for other rotary models."""
    base = name.split(".")[0]
    if args.get("rope_type") == "dinov3" or re.search(r"_dinov3(_qkvb)?$", base):
        return DINOV3
    if re.search(r"_rope_(mixed_)?(ape_)?224$", base):
        return NAVER
    if "_rope_" in base or "eva" in base or args.get("use_rot_pos_emb"):
        raise ValueError(f"{where}: {name or 'this model'} is a rotary model of timm's Eva class other than the naver "
                         f"RoPE-ViTs and DINOv3 (EVA-style RoPE with ref_feat_shape, theta 10000); vit_jax does not "
                         f"read it yet")
    return None


def rope_options_from_timm(name: str, args: Mapping[str, Any], state: Mapping[str, np.ndarray], where: str
                           ) -> dict[str, Any]:
    """The `VisionTransformer` options of a rotary timm model; {} for one without rotary encodings."""
    family = rope_family(name, args, where)
    if family is None:
        return {}
    mixed = "rope.freqs" in state
    rope_type = args.get("rope_type", DINOV3 if family == DINOV3 else "mixed" if mixed else "cat")
    expected = {NAVER: ("mixed" if mixed else "cat"), DINOV3: DINOV3}[family]
    if rope_type != expected:
        raise ValueError(f"{where}: rope_type {rope_type!r} in {name or 'this model'}; vit_jax reads timm's naver "
                         f"RoPE-ViTs ('cat', 'mixed') and DINOv3 ('dinov3')")
    if family == NAVER and (args.get("rope_grid_indexing", "xy") != "xy" or args.get("rope_grid_offset", 0)
                            or args.get("ref_feat_shape") or args.get("rope_rotate_half")):
        raise ValueError(f"{where}: a RoPE-ViT with rope_grid_indexing / rope_grid_offset / ref_feat_shape / "
                         f"rope_rotate_half other than the naver models' is not read by vit_jax")
    if family == DINOV3 and (args.get("rope_grid_offset", 0) or args.get("rope_rotate_half") is False):
        raise ValueError(f"{where}: a DINOv3 with rope_grid_offset or without rope_rotate_half is not read by vit_jax")
    default_theta = 100.0 if family == DINOV3 or not mixed else 10.0
    return dict(posemb="rope_mixed" if mixed else "rope_axial", rope_theta=float(args.get("rope_temperature",
                                                                                          default_theta)),
                rope_ape="pos_embed" in state, **CONVENTIONS[family])


def rope_architecture(options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """For export: timm's Eva architecture of a vit_jax rotary model and the Eva `model_args` for its rotary
    encoding (`attn_type` says the bias layout: `rope` a fused `qkv.bias`, `eva` `q_bias` and `v_bias`); a
    ValueError naming the convention timm has no counterpart for."""
    conventions = {k: options[k] for k in CONVENTIONS[NAVER]}
    family = next((f for f, c in CONVENTIONS.items() if c == conventions), None)
    if family is None:
        raise ValueError(f"rotary conventions {conventions} are neither the naver RoPE-ViTs' {CONVENTIONS[NAVER]} "
                         f"nor DINOv3's {CONVENTIONS[DINOV3]}: timm has no counterpart")
    mixed = options["posemb"] == "rope_mixed"
    theta = DEFAULT_THETA[options["posemb"]] if options["rope_theta"] is None else options["rope_theta"]
    if family == DINOV3:
        if mixed or options["rope_ape"]:
            raise ValueError("DINOv3's conventions with rope_mixed or rope_ape: timm has no counterpart")
        return "vit_small_patch16_dinov3", dict(attn_type="eva", rope_type="dinov3", rope_rotate_half=True, use_rot_pos_emb=True,
                                                use_abs_pos_emb=False, rope_temperature=theta)
    name = "vit_small_patch16_rope_" + ("mixed_" if mixed else "") + ("ape_" if options["rope_ape"] else "") + "224"
    return name, dict(attn_type="rope", rope_type="mixed" if mixed else "cat", rope_grid_indexing="xy", use_rot_pos_emb=True,
                      use_abs_pos_emb=bool(options["rope_ape"]), rope_temperature=theta)
