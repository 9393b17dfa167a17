"""timm's rotary ViTs (its `Eva` class: the naver RoPE-ViTs, EVA-02, DINOv3, timm's SBB RoPE models) <-> vit_jax's
`rope_*` options.

A rotary model's conventions are not in its tensors (axial frequencies are not stored), so they come from the
architecture's own arguments and `model_args` of `config.json`, for the three kinds of rotary encoding whose logits
vit_jax is tested to give:
- Eva's `cat` RoPE (naver's RoPE-Axial `vit_*_rope_224`, EVA-02, timm's `vit_*_rope_reg*_gap_256`): patch indices
  as coordinates, interleaved pairs (`rope_rotate_half`: halves), rows first unless `rope_grid_indexing='xy'`
  (naver's), theta `rope_temperature` (Eva's default 10000; naver's 100), and `ref_feat_shape` as `rope_grid`
  (EVA's interpolated RoPE).
- naver's RoPE-Mixed (`vit_*_rope_mixed_224`): learned frequencies, columns first, interleaved pairs, theta 10.
- DINOv3 (`vit_*_dinov3`): coordinates centred on the grid, rows first, pairs in halves (`rope_rotate_half`),
  theta 100.
A constant `rope_grid_offset` (Perception Encoder's 1) is `rope_offset`; `mrope` is another scheme, refused.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import numpy as np

from vit_jax.models.rope import DEFAULT_THETA

CAT, MIXED, DINOV3 = "cat", "mixed", "dinov3"
EVA_THETA = 10000.0  # Eva's rope_temperature default
# vit_jax conventions of the two families with fixed ones (beyond the kind and theta)
CONVENTIONS = {
    MIXED: dict(rope_coordinates="index", rope_pairing="interleaved", rope_axis_order="xy", rope_grid=None),
    DINOV3: dict(rope_coordinates="centered", rope_pairing="halves", rope_axis_order="ij", rope_grid=None),
}


def rope_family(name: str, args: Mapping[str, Any], where: str) -> str | None:
    """`cat`, `mixed`, `dinov3`, or None for a model without rotary encodings; a ValueError for other rotary
    schemes."""
    base = name.split(".")[0]
    if args.get("rope_type") == DINOV3 or re.search(r"_dinov3(_qkvb)?$", base):
        return DINOV3
    rotary = args.get("use_rot_pos_emb") or re.search(r"_rope_(mixed_)?(ape_)?224$", base)
    if not rotary:
        if "_rope_" in base:
            raise ValueError(f"{where}: {name} is a rotary model, and its config.json does not say how it turns "
                             f"(use_rot_pos_emb, rope_type); put timm's config.json beside the weights")
        return None
    rope_type = args.get("rope_type", CAT)
    if rope_type not in (CAT, MIXED):
        raise ValueError(f"{where}: rope_type {rope_type!r} in {name or 'this model'}; vit_jax reads timm's 'cat' "
                         f"(naver RoPE-Axial, EVA-02), 'mixed' (naver RoPE-Mixed) and 'dinov3' rotary encodings")
    return rope_type


def rope_options_from_timm(name: str, args: Mapping[str, Any], state: Mapping[str, np.ndarray], where: str
                           ) -> dict[str, Any]:
    """The `VisionTransformer` options of a rotary timm model; {} for one without rotary encodings."""
    family = rope_family(name, args, where)
    if family is None:
        return {}
    model = name or "this model"
    mixed = "rope.freqs" in state
    if mixed != (family == MIXED):
        raise ValueError(f"{where}: rope_type {family!r} in {model} {'with' if mixed else 'without'} learned "
                         f"frequencies (rope.freqs)")
    if family == MIXED and (args.get("rope_grid_indexing", "ij") != "xy" or args.get("ref_feat_shape")
                            or args.get("rope_rotate_half")):
        raise ValueError(f"{where}: a RoPE-Mixed with rope_grid_indexing / ref_feat_shape / rope_rotate_half other "
                         f"than the naver models' is not read by vit_jax")
    if family == DINOV3 and args.get("rope_rotate_half") is False:
        raise ValueError(f"{where}: a DINOv3 without rope_rotate_half is not read by vit_jax")
    if family == CAT:
        reference = args.get("ref_feat_shape")
        conventions = dict(rope_coordinates="index",
                           rope_pairing="halves" if args.get("rope_rotate_half") else "interleaved",
                           rope_axis_order=args.get("rope_grid_indexing", "ij"),
                           rope_grid=None if reference is None else tuple(int(r) for r in (
                               (reference, reference) if isinstance(reference, int) else reference)))
        theta = args.get("rope_temperature", EVA_THETA)
    else:
        conventions = CONVENTIONS[family]
        theta = args.get("rope_temperature", 100.0 if family == DINOV3 else 10.0)
    offset = float(args.get("rope_grid_offset", 0.0))
    if offset and family == MIXED:
        raise ValueError(f"{where}: rope_grid_offset {offset} with RoPE-Mixed ({model}) is not read by vit_jax")
    return dict(posemb="rope_mixed" if mixed else "rope_axial", rope_theta=float(theta),
                rope_ape="pos_embed" in state, rope_offset=offset, **conventions)


def rope_architecture(options: Mapping[str, Any]) -> tuple[str, dict[str, Any]]:
    """For export: timm's Eva architecture of a vit_jax rotary model and the Eva `model_args` for its rotary
    encoding (`attn_type` says the bias layout: `rope` a fused `qkv.bias`, `eva` `q_bias` and `v_bias`); a
    ValueError naming the convention timm has no counterpart for."""
    conventions = {k: options[k] for k in CONVENTIONS[MIXED]}
    mixed = options["posemb"] == "rope_mixed"
    theta = DEFAULT_THETA[options["posemb"]] if options["rope_theta"] is None else options["rope_theta"]
    ape = "ape_" if options["rope_ape"] else ""
    if conventions == CONVENTIONS[DINOV3] and not mixed:
        if options["rope_ape"]:
            raise ValueError("DINOv3's conventions with rope_ape: timm has no counterpart")
        return "vit_small_patch16_dinov3", dict(attn_type="eva", rope_type="dinov3", rope_rotate_half=True,
                                                use_rot_pos_emb=True, use_abs_pos_emb=False, rope_temperature=theta,
                                                rope_grid_offset=options["rope_offset"])
    if mixed:
        if conventions != CONVENTIONS[MIXED] or options["rope_offset"]:
            raise ValueError(f"rope_mixed with conventions {conventions}: timm's RoPE-Mixed has naver's "
                             f"{CONVENTIONS[MIXED]}")
        return f"vit_small_patch16_rope_mixed_{ape}224", dict(
            attn_type="rope", rope_type="mixed", rope_grid_indexing="xy", use_rot_pos_emb=True,
            use_abs_pos_emb=bool(options["rope_ape"]), rope_temperature=theta)
    if options["rope_coordinates"] != "index":
        raise ValueError(f"rope_coordinates={options['rope_coordinates']!r} with {conventions}: timm's centred "
                         f"coordinates are DINOv3's {CONVENTIONS[DINOV3]}")
    grid = options["rope_grid"]
    return f"vit_small_patch16_rope_{ape}224", dict(
        attn_type="rope", rope_type="cat", rope_grid_indexing=options["rope_axis_order"], use_rot_pos_emb=True,
        use_abs_pos_emb=bool(options["rope_ape"]), rope_temperature=theta,
        rope_rotate_half=options["rope_pairing"] == "halves", ref_feat_shape=None if grid is None else list(grid),
        rope_grid_offset=options["rope_offset"])
