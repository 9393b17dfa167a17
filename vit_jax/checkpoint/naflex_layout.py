"""timm's NaFlexVit checkpoints (`timm/naflexvit_*`: SigLIP 2's NaFlex towers, the NaFlex ImageNet models,
C-RADIOv3/v4) as timm VisionTransformer checkpoints, which `timm_layout` then reads.

NaFlexVit is timm's ViT for native aspect ratios and resolutions (NaViT + FlexiViT). Its blocks, norms and heads
carry VisionTransformer's names; what differs is its embedding module `embeds`:
- the patch projection is a Linear over flattened `(ph, pw, C)` patches (`patchify_channels_last`; `(C, ph, pw)`
  otherwise), which is a strided convolution's kernel reshaped;
- the position table covers the patches only, stored as a grid `(1, h, w, D)` (`pos_embed_grid_size`), or as a
  row table and a column table (`factorized`); it is resized to every input's grid in the forward pass, by the
  checkpoint's own rule (`pos_embed_interp_mode`, `_antialias`, `_align_corners`, `_ar_preserving`), which
  becomes vit_jax's `posemb_resize`, `posemb_antialias` and `posemb_aspect_preserving`, so the model runs any
  input grid as timm does.
The architecture's settings come from timm's `NaFlexVitCfg`: its defaults (`NAFLEX_DEFAULTS`), the architecture's
own (timm_architectures.json) and `model_args`. vit_jax runs an input grid per call (the fixed-grid ViT, any grid);
timm's NaFlex batches (several images of different grids, padded, with `patch_coord`) compute each image as that
call does.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

# timm 1.0.31's `NaFlexVitCfg` defaults for the fields read here (tests check them against timm)
NAFLEX_DEFAULTS: dict[str, Any] = dict(
    patch_size=16, num_heads=12, class_token=False, pos_embed_grid_size=[16, 16],
    pos_embed_interp_mode="bicubic", pos_embed_ar_preserving=False, pos_embed_antialias=True,
    pos_embed_align_corners=False, rope_type="", attn_type="standard", swiglu_mlp=False, attn_gated=False,
    attn_only_layer_scale=False, num_kv_heads=None, dynamic_img_pad=False,
    patchify_channels_last=True, input_norm_layer=None, embed_norm_layer=None,
    norm_layer=None, act_layer=None, block_fn=None, mlp_layer=None, attn_layer=None, global_pool="map",
    pool_include_prefix=False, attn_pool_num_heads=None,
)
EMBEDS = "embeds."
# NaFlexVitCfg settings that build timm's EvaBlock (other tensor names and wiring) or a rotary encoding
_EVA_SETTINGS = ("rope_type", "attn_type", "swiglu_mlp", "attn_gated", "attn_only_layer_scale", "num_kv_heads")


def is_naflex_state(state: Mapping[str, np.ndarray]) -> bool:
    return EMBEDS + "proj.weight" in state


def naflex_settings(config: Mapping[str, Any]) -> dict[str, Any]:
    """NaFlexVitCfg as the checkpoint was built: the defaults, the architecture's own, then `model_args`."""
    from vit_jax.checkpoint.timm_layout import architecture_args

    return {**NAFLEX_DEFAULTS, **architecture_args(str(config.get("architecture", "")), config)}


def as_vision_transformer(state: Mapping[str, np.ndarray], config: Mapping[str, Any], where: str
                          ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The timm VisionTransformer state dict and `config.json` of a NaFlexVit checkpoint (position tables as
    `pos_embed` `(1, h * w, D)`, or `pos_embed_y` / `pos_embed_x` for factorized ones, which `timm_layout` reads)."""
    if not config:
        raise ValueError(f"{where}: a NaFlexVit state dict (embeds.*) without its config.json; how its position table "
                         f"is resized and its tokens pooled are not in the tensors: put the config.json beside it")
    args = naflex_settings(config)
    _check_supported(args, state, where)
    ph, pw = _pair(args["patch_size"])
    out = {k: v for k, v in state.items() if not k.startswith(EMBEDS)}
    embeds = {k[len(EMBEDS):]: v for k, v in state.items() if k.startswith(EMBEDS)}
    out["patch_embed.proj.weight"] = _conv_kernel(embeds.pop("proj.weight"), (ph, pw),
                                                  bool(args["patchify_channels_last"]), where)
    for name, timm_name in (("proj.bias", "patch_embed.proj.bias"), ("cls_token", "cls_token"),
                            ("reg_token", "reg_token")):
        if name in embeds:
            out[timm_name] = embeds.pop(name)
    for name in [k for k in embeds if k.startswith("norm.")]:  # embed_norm_layer: after the projection
        out["patch_embed." + name] = embeds.pop(name)
    grid = None
    if "pos_embed" in embeds:
        table = embeds.pop("pos_embed")
        grid = tuple(int(s) for s in table.shape[1:3])
        out["pos_embed"] = table.reshape(1, grid[0] * grid[1], table.shape[-1])
    elif "pos_embed_y" in embeds:
        out["pos_embed_y"], out["pos_embed_x"] = embeds.pop("pos_embed_y"), embeds.pop("pos_embed_x")
        grid = (int(out["pos_embed_y"].shape[1]), int(out["pos_embed_x"].shape[1]))
    out.update({EMBEDS + k: v for k, v in embeds.items()})  # anything else: refused by timm_layout as unread
    keep = ("num_heads", "act_layer", "norm_layer", "embed_norm_layer", "block_fn", "global_pool",
            "pool_include_prefix", "attn_pool_num_heads", "class_token", "dynamic_img_pad", "pos_embed_interp_mode",
            "pos_embed_antialias", "pos_embed_align_corners", "pos_embed_ar_preserving", "num_classes")
    model_args = {k: args[k] for k in keep if k in args and args[k] is not None}
    if grid is None:  # no table: the image size is only the evaluation view's default
        grid = _pair(args["pos_embed_grid_size"] or [1, 1])
    model_args.update(img_size=[grid[0] * ph, grid[1] * pw], pos_embed_grid_size=list(grid))  # NaFlex: any size
    return out, {**config, "model_args": model_args}


def _check_supported(args: Mapping[str, Any], state: Mapping[str, np.ndarray], where: str) -> None:
    eva = [f"{k}={args[k]!r}" for k in _EVA_SETTINGS if args.get(k) not in (None, False, "", "none", "standard")]
    if eva:
        raise ValueError(f"{where}: a NaFlexVit with {', '.join(eva)} (timm's EvaBlock, rotary encodings); vit_jax "
                         f"reads NaFlexVit's standard blocks with learned or factorized position tables")
    if args.get("mlp_layer") is not None or args.get("attn_layer") is not None:
        raise ValueError(f"{where}: a NaFlexVit with its own mlp_layer / attn_layer ({args.get('mlp_layer')!r}, "
                         f"{args.get('attn_layer')!r}); vit_jax's blocks are timm's Block with its Mlp and Attention")
    if args.get("input_norm_layer") or any(k.startswith(EMBEDS + "norm_input.") for k in state):
        raise ValueError(f"{where}: a norm on the raw patch pixels before the projection (NaFlexVit's "
                         f"input_norm_layer) is not one of vit_jax's options")


def _pair(size: Any) -> tuple[int, int]:
    return (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[-1]))


def _conv_kernel(weight: np.ndarray, patch: tuple[int, int], channels_last: bool, where: str) -> np.ndarray:
    """A Linear over flattened patches `(D, ph * pw * C)` as the convolution `(D, C, ph, pw)` computing the same."""
    if weight.ndim == 4:  # embed_proj_type='conv'
        return weight
    width, inputs = weight.shape
    channels, rest = divmod(inputs, math.prod(patch))
    if rest:
        raise ValueError(f"{where}: embeds.proj.weight has {inputs} inputs, not a multiple of the {patch[0]}x"
                         f"{patch[1]} patch's {math.prod(patch)} pixels")
    if channels_last:
        return weight.reshape(width, *patch, channels).transpose(0, 3, 1, 2)
    return weight.reshape(width, channels, *patch)
