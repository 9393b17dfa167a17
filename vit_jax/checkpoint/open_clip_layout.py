"""OpenCLIP's checkpoints (the Hub's `open_clip_model.safetensors` + `open_clip_config.json`: LAION, DataComp, DFN,
MetaCLIP, the OpenAI weights as OpenCLIP serves them) as timm checkpoints, which `timm_layout` then reads.

OpenCLIP's image tower is OpenAI's CLIP ViT, which timm runs as its `vit_*_clip_*` architectures: the tensors are
renamed as timm's own `_convert_openai_clip` renames them (`visual.conv1` -> `patch_embed.proj`,
`visual.transformer.resblocks.N.attn.in_proj_*` -> `blocks.N.attn.qkv.*`, ..., the projection `visual.proj` -> a
head without bias), and `open_clip_config.json`'s `vision_cfg` says what the tensors cannot: heads (`width /
head_width`), QuickGELU (`quick_gelu`), the evaluation view (`preprocess_cfg`). The text tower, the logit scale and
bias are left behind (a two-tower file's image tower is the model, as for transformers' CLIP). A tower that is a
timm model (`timm_model_name`: OpenCLIP's SigLIP, ViT-SO400M) is that model's timm tensors under `visual.trunk.`,
with OpenCLIP's linear projection as its head. Towers built otherwise are refused in one line: attentional pooling,
mean pooling, the final norm after pooling, fixed sin-cos tables, an MLP projection or OpenCLIP's own attention
pools on a trunk.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np

from vit_jax.checkpoint.transformers_layout import CLIP_MEAN, CLIP_STD

OPEN_CLIP_WEIGHTS = "open_clip_model.safetensors"
OPEN_CLIP_CONFIG = "open_clip_config.json"
# timm's _convert_openai_clip, in its order
_SWAPS = (("conv1", "patch_embed.proj"), ("positional_embedding", "pos_embed"), ("transformer.resblocks.", "blocks."),
          ("ln_pre", "norm_pre"), ("ln_post", "norm"), ("ln_", "norm"), ("in_proj_", "qkv."), ("out_proj", "proj"),
          ("mlp.c_fc", "mlp.fc1"), ("mlp.c_proj", "mlp.fc2"), ("ls_1.", "ls1."), ("ls_2.", "ls2."))
# vision_cfg settings whose other values build a tower timm's CLIP ViT is not: setting -> its value here
_PLAIN = {"attentional_pool": False, "pool_type": "tok", "final_ln_after_pool": False, "pos_embed_type": "learnable"}
# open_clip's -> timm's crop_mode ('longest' pads with black, timm with the mean colour: not read)
_RESIZE_MODES = {"shortest": "center", "squash": "squash"}


def is_open_clip_config(config: Mapping[str, Any]) -> bool:
    return "model_cfg" in config and "vision_cfg" in config["model_cfg"]


def as_timm(state: Mapping[str, np.ndarray], config: Mapping[str, Any], where: str
            ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The timm state dict and `config.json` of an OpenCLIP checkpoint's image tower."""
    model_cfg = config["model_cfg"]
    vision = model_cfg["vision_cfg"]
    if vision.get("timm_model_name"):
        return _timm_trunk(state, vision, config.get("preprocess_cfg") or {}, where)
    for setting, plain in _PLAIN.items():
        if vision.get(setting, plain) != plain:
            raise ValueError(f"{where}: OpenCLIP vision_cfg.{setting}={vision[setting]!r}: vit_jax reads OpenCLIP's "
                             f"ViT towers with {setting}={plain!r} (timm's CLIP ViT)")
    out: dict[str, np.ndarray] = {}
    for name, value in state.items():
        if not name.startswith("visual."):
            continue  # the text tower, logit_scale, logit_bias
        name = name[len("visual."):]
        for old, new in _SWAPS:
            name = name.replace(old, new)
        if name == "proj":  # (width, embed_dim), applied as x @ proj
            out["head.weight"] = np.asarray(value).T
            out["head.bias"] = np.zeros(np.shape(value)[1], np.float32)
        elif name == "class_embedding":
            out["cls_token"] = np.reshape(value, (1, 1, -1))
        elif name == "pos_embed":
            out["pos_embed"] = np.asarray(value)[None]
        else:
            out[name] = value
    if "blocks.0.attn.qkv.weight" not in out:
        raise ValueError(f"{where}: no visual.transformer.resblocks.0.attn.in_proj_weight: not an OpenCLIP ViT tower")
    width = int(vision.get("width", np.shape(out["blocks.0.attn.qkv.weight"])[1]))
    heads, rest = divmod(width, int(vision.get("head_width", 64)))
    if rest:
        raise ValueError(f"{where}: OpenCLIP width {width} is not a whole number of heads of {vision.get('head_width')}")
    quick = bool(model_cfg.get("quick_gelu", False))
    args: dict[str, Any] = dict(num_heads=heads, pre_norm=not vision.get("no_ln_pre", False),
                                img_size=_pair(vision.get("image_size", 224)))
    if vision.get("ls_init_value") is not None:
        args["init_values"] = float(vision["ls_init_value"])
    norm = dict(vision.get("norm_kwargs") or {})
    if set(norm) - {"eps"} or vision.get("act_kwargs"):
        raise ValueError(f"{where}: OpenCLIP vision_cfg norm_kwargs={norm}, act_kwargs={vision.get('act_kwargs')}: "
                         f"vit_jax reads LayerNorm's epsilon only")
    if "eps" in norm:
        args["norm_layer"] = {"name": "LayerNorm", "eps": float(norm["eps"]), "bias": True}
    architecture = "vit_base_patch16_clip_quickgelu_224" if quick else "vit_base_patch16_clip_224"
    return out, {"architecture": architecture, "model_args": args,
                 "pretrained_cfg": _evaluation(config.get("preprocess_cfg") or {}, args["img_size"])}


def _timm_trunk(state: Mapping[str, np.ndarray], vision: Mapping[str, Any], preprocess: Mapping[str, Any], where: str
                ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """A tower that is a timm model (`timm_model_name`: OpenCLIP's SigLIP, ViT-SO400M, ...): timm's own tensors under
    `visual.trunk.`, pooled by `timm_pool`, then its own head or OpenCLIP's Linear projection (`visual.head.proj`)."""
    pool, projection = vision.get("timm_pool", "avg"), vision.get("timm_proj", "linear")
    if pool in ("abs_attn", "rot_attn") or projection not in ("linear", "none", "", None):
        raise ValueError(f"{where}: OpenCLIP timm_pool={pool!r}, timm_proj={projection!r}: vit_jax reads a timm trunk "
                         f"with timm's own pooling and a linear projection or none")
    out = {name[len("visual.trunk."):]: value for name, value in state.items() if name.startswith("visual.trunk.")}
    if projection == "linear":
        weight = state["visual.head.proj.weight"]
        out["head.weight"] = weight
        out["head.bias"] = state.get("visual.head.proj.bias", np.zeros(np.shape(weight)[0], np.float32))
    args: dict[str, Any] = dict(global_pool=pool, num_classes=int(np.shape(out["head.weight"])[0]) if "head.weight" in out
                                else 0)
    if vision.get("image_size"):
        args["img_size"] = _pair(vision["image_size"])
    size = args.get("img_size", [224, 224])
    return out, {"architecture": str(vision["timm_model_name"]), "model_args": args,
                 "pretrained_cfg": _evaluation(preprocess, size)}


def _pair(size: Any) -> list[int]:
    return [int(size), int(size)] if isinstance(size, int | float) else [int(s) for s in size]


def _evaluation(preprocess: Mapping[str, Any], image_size: list[int]) -> dict[str, Any]:
    """timm's `pretrained_cfg` for OpenCLIP's evaluation transform: the shorter side resized to the size, then its
    central crop (`resize_mode='shortest'`, the default), OpenAI's mean and std unless the config says others."""
    mode = str(preprocess.get("resize_mode", "shortest"))
    if mode not in _RESIZE_MODES:
        raise ValueError(f"OpenCLIP preprocess_cfg.resize_mode={mode!r}: expected one of {tuple(_RESIZE_MODES)}")
    size = _pair(preprocess.get("size", image_size))
    return {"mean": list(preprocess.get("mean", CLIP_MEAN)), "std": list(preprocess.get("std", CLIP_STD)),
            "interpolation": str(preprocess.get("interpolation", "bicubic")), "crop_pct": 1.0,
            "crop_mode": _RESIZE_MODES[mode], "input_size": [3, *size]}

