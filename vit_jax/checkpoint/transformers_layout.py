"""Hugging Face transformers' vision checkpoints (the Hub's `model.safetensors` + `config.json` with a `model_type`)
as timm checkpoints, which `timm_layout` then reads: one renaming per family, no second reader.

Researchers start from many backbones that live on the Hub in transformers' layout rather than timm's: Google's
ViTs (`google/vit-*`), DeiT, MSN, MAE and I-JEPA encoders, BEiT and data2vec, DINOv2 (with registers),
DINOv3, and the image towers of CLIP (MetaCLIP 2, Chinese CLIP, AltCLIP) and SigLIP. Their tensors map one to one
onto timm's names (`encoder.layer.N.attention.attention.query` -> `blocks.N.attn.q_proj`), and what their tensors
cannot say (heads, the activation, the LayerNorm's epsilon, the pooling, DINOv3's rotary conventions) is written
as the timm `model_args` that say it. A few tensors are deliberately left behind, each a part a vision backbone
never runs: the text tower and logit scale of a two-tower CLIP / SigLIP file (its image tower is the model, as
big_vision's `:img`), the pre-training mask tokens, MAE's decoder, and the attention-pooling head that
`SiglipForImageClassification` computes and ignores (it averages the tokens instead). Anything else unread is
refused by `timm_layout`, as for timm's own files.

`preprocessor_config.json` (the image processor's) gives the evaluation view: mean, std, resize, center crop.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np

from vit_jax.checkpoint.dinov3_layout import dinov3_rope_args

PREPROCESSOR_CONFIG = "preprocessor_config.json"
CLIP_MEAN, CLIP_STD = (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
HALF = (0.5, 0.5, 0.5)
# transformers' activation names (ACT2FN) -> timm's act_layer; the tanh forms are one formula written three ways
ACTIVATIONS = {"gelu": "gelu", "gelu_python": "gelu", "gelu_pytorch_tanh": "gelu_tanh", "gelu_new": "gelu_tanh",
               "gelu_fast": "gelu_tanh", "quick_gelu": "quick_gelu", "silu": "silu", "swish": "silu"}
PIL_RESAMPLE = {0: "nearest", 1: "lanczos", 2: "bilinear", 3: "bicubic", 4: "box", 5: "hamming"}  # PIL's numbers


def is_transformers_config(config: Mapping[str, Any]) -> bool:
    """transformers writes `model_type`; timm's `config.json` has `architecture` instead."""
    return "model_type" in config and "architecture" not in config


def as_timm(state: Mapping[str, np.ndarray], config: Mapping[str, Any], preprocessor: Mapping[str, Any] | None,
            where: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """The timm state dict and `config.json` (`model_args`, `pretrained_cfg`) of a transformers checkpoint."""
    model_type = str(config["model_type"])
    family = FAMILIES.get(model_type)
    if family is None:
        raise ValueError(f"{where}: transformers' model_type {model_type!r} is not one vit_jax reads; it reads "
                         f"{', '.join(sorted(FAMILIES))}")
    vision = (config.get("vision_config") or config) if model_type in TWO_TOWERS else config
    vision = {**CONFIG_DEFAULTS[model_type], **vision}  # what an older or hand-written config.json leaves out
    architectures = [str(a) for a in config.get("architectures") or []]
    state, args = family(dict(state), vision, architectures, where)
    # the table at another grid as `interpolate_pos_encoding` resizes it: PyTorch's bicubic, antialiased only in
    # DINOv2 with registers (SigLIP 2's NaFlex towers set their own)
    args.setdefault("pos_embed_interp_mode", "bicubic")
    args.setdefault("pos_embed_antialias", model_type == "dinov2_with_registers")
    if model_type in ("beit", "data2vec-vision"):  # its relative position tables: half-pixel bilinear too
        args["rel_pos_resize"] = "bilinear"
    args.update(num_heads=int(vision["num_attention_heads"]),
                norm_layer={"name": "LayerNorm", "eps": float(vision["layer_norm_eps"]), "bias": True})
    if "image_size" in vision:  # else the position table's grid says it (NaFlex towers have none)
        args["img_size"] = _size(vision["image_size"])
    act = str(vision["hidden_act"])
    args.setdefault("act_layer", ACTIVATIONS.get(act, act))
    pretrained_cfg = _evaluation(preprocessor or {}, DEFAULT_NORMALIZATION[model_type])
    labels = _label_names(config)
    if labels:
        pretrained_cfg["label_names"] = labels
    return state, {"architecture": "", "model_args": args, "pretrained_cfg": pretrained_cfg}


def _size(size: Any) -> list[int] | None:
    if size is None:
        return None
    return [int(size), int(size)] if isinstance(size, int | float) else [int(s) for s in size]


def _renamed(state: Mapping[str, np.ndarray], rules: list[tuple[str, Any]], where: str) -> dict[str, np.ndarray]:
    """Each tensor renamed by the first rule whose pattern matches it whole; one that none matches is kept under
    its own name, for `timm_layout` to refuse as a part vit_jax has no place for."""
    out = {}
    for name, value in state.items():
        for pattern, replacement in rules:
            renamed, count = re.subn(f"^(?:{pattern})$", replacement, name)
            if count:
                break
        else:
            renamed = name
        if renamed in out:
            raise ValueError(f"{where}: two tensors for {renamed!r} (one is {name!r})")
        out[renamed] = value
    return out


def _drop(state: dict[str, np.ndarray], *patterns: str) -> dict[str, np.ndarray]:
    return {k: v for k, v in state.items() if not any(re.match(p, k) for p in patterns)}


def _without_prefix(state: Mapping[str, np.ndarray], prefixes: tuple[str, ...]) -> dict[str, np.ndarray]:
    """The base model's tensors without the task model's attribute (`vit.`, `dinov2.`, `vision_model.`, ...)."""
    pattern = re.compile(rf"^(?:{'|'.join(re.escape(p) for p in prefixes)})\.")
    return {pattern.sub("", k): v for k, v in state.items()}


# BERT-style encoder blocks (ViT, DeiT, MSN, MAE, I-JEPA, DINOv2)
_LAYER = r"encoder\.layer\.(\d+)\."
_BERT_BLOCKS = [
    (_LAYER + r"attention\.attention\.(query|key|value)\.(weight|bias)",
     lambda m: f"blocks.{m[1]}.attn.{m[2][0]}_proj.{m[3]}"),
    (_LAYER + r"attention\.output\.dense\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_LAYER + r"layernorm_before\.(weight|bias)", r"blocks.\1.norm1.\2"),
    (_LAYER + r"layernorm_after\.(weight|bias)", r"blocks.\1.norm2.\2"),
    (_LAYER + r"intermediate\.dense\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),
    (_LAYER + r"output\.dense\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (_LAYER + r"(norm1|norm2)\.(weight|bias)", r"blocks.\1.\2.\3"),  # DINOv2's
    (_LAYER + r"layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (_LAYER + r"mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (_LAYER + r"mlp\.weights_in\.(weight|bias)", r"blocks.\1.mlp.fc1.\2"),  # DINOv2's SwiGLU, gate first
    (_LAYER + r"mlp\.weights_out\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    # BEiT's (and data2vec's): per-block relative position tables, layer scale, mean pooling's norm; a table shared
    # by the blocks (pre-training's) under timm's name, which timm_layout refuses
    (_LAYER + r"attention\.attention\.relative_position_bias\.relative_position_bias_table",
     r"blocks.\1.attn.relative_position_bias_table"),
    (_LAYER + r"lambda_([12])", r"blocks.\1.gamma_\2"),
    (r"encoder\.relative_position_bias\.relative_position_bias_table", "rel_pos_bias.relative_position_bias_table"),
    (r"pooler\.layernorm\.(weight|bias)", r"fc_norm.\1"),
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.distillation_token", "dist_token"),
    (r"embeddings\.register_tokens", "reg_token"),
    (r"embeddings\.position_embeddings", "pos_embed"),
    (r"embeddings\.patch_embeddings\.projection\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"layernorm\.(weight|bias)", r"norm.\1"),
    (r"pooler\.dense\.(weight|bias)", r"pre_logits.fc.\1"),
    (r"classifier\.(weight|bias)", r"head.\1"),
    (r"cls_classifier\.(weight|bias)", r"head.\1"),
    (r"distillation_classifier\.(weight|bias)", r"head_dist.\1"),
]


def _bert_family(state: dict[str, np.ndarray], config: Mapping[str, Any], architectures: list[str], where: str
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    state = _without_prefix(state, ("vit", "deit", "dinov2", "dinov2_with_registers", "ijepa", "beit",
                                    "data2vec_vision"))
    # pre-training's: masked patches, MAE's decoder; BEiT's index buffers (older files have them)
    state = _drop(state, r"embeddings\.mask_token$", r"decoder\.", r".*relative_position_index$")
    state = _renamed(state, _BERT_BLOCKS, where)
    args: dict[str, Any] = {"class_token": "cls_token" in state}
    if "pre_logits.fc.weight" in state and config.get("pooler_act", "tanh") != "tanh":
        raise ValueError(f"{where}: a pooler with {config['pooler_act']!r}; vit_jax's pre_logits has tanh")
    if config.get("use_swiglu_ffn"):  # Dinov2SwiGLUFFN: one packed projection, SiLU on its first half
        args.update(act_layer="SiLU", mlp_layer={"name": "GluMlp", "gate_last": False})
    if "dist_token" in state and "head_dist.weight" not in state:
        raise ValueError(f"{where}: a DeiT with a distillation token and {architectures or 'no'} head reading the "
                         f"class token alone; vit_jax reads DeiTForImageClassificationWithTeacher (both tokens' "
                         f"heads averaged)")
    if "reg_token" in state:  # DINOv2's registers enter after the position table is added: zero rows for them
        registers = state["reg_token"].shape[1]
        table = state["pos_embed"]
        state["pos_embed"] = np.concatenate([table[:, :1], np.zeros((1, registers, table.shape[2]), table.dtype),
                                             table[:, 1:]], axis=1)
    # I-JEPA: no class token, the tokens' mean; BEiT's mean pooling: the patch tokens' mean, then fc_norm; DINOv2's
    # classifiers: the class token and the mean patch token side by side
    args["global_pool"] = "token" if args["class_token"] and not config.get("use_mean_pooling") else "avg"
    if any(a.startswith("Dinov2") and a.endswith("ForImageClassification") for a in architectures):
        args["global_pool"] = "token_and_gap"
    return state, args


# CLIP / SigLIP encoder blocks (and their image towers in two-tower files)
_TOWER = r"encoder\.layers\.(\d+)\."
_CLIP_BLOCKS = [
    (_TOWER + r"self_attn\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
    (_TOWER + r"self_attn\.out_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (_TOWER + r"layer_norm([12])\.(weight|bias)", r"blocks.\1.norm\2.\3"),
    (_TOWER + r"mlp\.(fc1|fc2)\.(weight|bias)", r"blocks.\1.mlp.\2.\3"),
    (r"embeddings\.patch_embedding\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"embeddings\.position_embedding\.weight", "pos_embed"),
    (r"embeddings\.class_embedding", "cls_token"),
    (r"pre_layrnorm\.(weight|bias)", r"norm_pre.\1"),
    (r"post_layernorm\.(weight|bias)", r"norm.\1"),
    (r"head\.probe", "attn_pool.latent"),
    (r"head\.attention\.out_proj\.(weight|bias)", r"attn_pool.proj.\1"),
    (r"head\.layernorm\.(weight|bias)", r"attn_pool.norm.\1"),
    (r"head\.mlp\.(fc1|fc2)\.(weight|bias)", r"attn_pool.mlp.\1.\2"),
    (r"visual_projection\.weight", "head.weight"),
    (r"classifier\.(weight|bias)", r"head.\1"),
]


def _clip_family(state: dict[str, np.ndarray], config: Mapping[str, Any], architectures: list[str], where: str
                 ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    # a two-tower file's text tower and logit scale are not the image model's
    state = _drop(state, r"text_model\.", r"text_projection\.", r"logit_(scale|bias)$", r".*position_ids$")
    state = _without_prefix(state, ("vision_model",))
    if "CLIPForImageClassification" in architectures:
        raise ValueError(f"{where}: CLIPForImageClassification's classifier reads the mean patch token before the "
                         f"final LayerNorm, which is not one of vit_jax's classifiers; its image tower is")
    if {"SiglipForImageClassification", "Siglip2ForImageClassification"} & set(architectures):
        # logits of the tokens' mean; its vision head runs unused
        state = _drop(state, r"head\.(probe|attention|layernorm|mlp)")
    state = _renamed(state, _CLIP_BLOCKS, where)
    if "cls_token" in state:
        state["cls_token"] = state["cls_token"].reshape(1, 1, -1)
    if "pos_embed" in state:
        state["pos_embed"] = state["pos_embed"][None]
    if "head.attention.in_proj_weight" in state:  # nn.MultiheadAttention's packed q, k, v
        weight, bias = state.pop("head.attention.in_proj_weight"), state.pop("head.attention.in_proj_bias")
        width = weight.shape[1]
        state.update({"attn_pool.q.weight": weight[:width], "attn_pool.kv.weight": weight[width:],
                      "attn_pool.q.bias": bias[:width], "attn_pool.kv.bias": bias[width:]})
    if "head.weight" in state and "head.bias" not in state:  # CLIP's projection has no bias
        state["head.bias"] = np.zeros(state["head.weight"].shape[:1], state["head.weight"].dtype)
    args: dict[str, Any] = {"class_token": "cls_token" in state, "pre_norm": "norm_pre.weight" in state}
    args["global_pool"] = "token" if args["class_token"] else ("map" if "attn_pool.latent" in state else "avg")
    return state, args


def _siglip2_family(state: dict[str, np.ndarray], config: Mapping[str, Any], architectures: list[str], where: str
                    ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    """SigLIP 2's NaFlex towers: SigLIP's, but the patch projection is a Linear over flattened `(p, p, C)` patches
    and the square table is resized (bilinear, antialiased) to each image's grid: timm's NaFlexVit layout, which
    `naflex_layout` reads."""
    state, args = _clip_family(state, config, architectures, where)
    side = math.isqrt(int(config["num_patches"]))
    if side * side != int(config["num_patches"]):
        raise ValueError(f"{where}: num_patches {config['num_patches']} is not a square grid's")
    for name in [k for k in state if k.startswith("patch_embed.proj.")]:
        state["embeds.proj." + name.rsplit(".", 1)[1]] = state.pop(name)
    table = state.pop("pos_embed")
    state["embeds.pos_embed"] = table.reshape(1, side, side, table.shape[-1])
    args.update(patch_size=config["patch_size"], pos_embed_grid_size=[side, side], pos_embed_interp_mode="bilinear",
                pos_embed_antialias=True)
    return state, args


# DINOv3 (DINOv3ViTModel)
_DINOV3_BLOCKS = [
    (r"layer\.(\d+)\.attention\.(q|k|v)_proj\.(weight|bias)", r"blocks.\1.attn.\2_proj.\3"),
    (r"layer\.(\d+)\.attention\.o_proj\.(weight|bias)", r"blocks.\1.attn.proj.\2"),
    (r"layer\.(\d+)\.(norm1|norm2)\.(weight|bias)", r"blocks.\1.\2.\3"),
    (r"layer\.(\d+)\.layer_scale([12])\.lambda1", r"blocks.\1.ls\2.gamma"),
    (r"layer\.(\d+)\.mlp\.gate_proj\.(weight|bias)", r"blocks.\1.mlp.fc1_g.\2"),
    (r"layer\.(\d+)\.mlp\.down_proj\.(weight|bias)", r"blocks.\1.mlp.fc2.\2"),
    (r"embeddings\.cls_token", "cls_token"),
    (r"embeddings\.register_tokens", "reg_token"),
    (r"embeddings\.patch_embeddings\.(weight|bias)", r"patch_embed.proj.\1"),
    (r"norm\.(weight|bias)", r"norm.\1"),
]


def _dinov3_family(state: dict[str, np.ndarray], config: Mapping[str, Any], architectures: list[str], where: str
                   ) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
    gated = bool(config["use_gated_mlp"])
    if gated and ACTIVATIONS.get(str(config.get("hidden_act"))) != "silu":
        raise ValueError(f"{where}: a gated MLP with {config.get('hidden_act')!r} gates; vit_jax's gated MLP is "
                         f"SwiGLU (hidden_act 'silu')")
    # DINOv3ViTGatedMLP: down(act(gate(x)) * up(x)), timm's SwiGLU fc2(act(fc1_g(x)) * fc1_x(x)); else up is fc1
    up = (r"layer\.(\d+)\.mlp\.up_proj\.(weight|bias)", rf"blocks.\1.mlp.{'fc1_x' if gated else 'fc1'}.\2")
    state = _drop(_without_prefix(state, ("model", "dinov3")), r"embeddings\.mask_token$")
    state = _renamed(state, [*_DINOV3_BLOCKS, up], where)
    if "reg_token" in state and state["reg_token"].shape[1] == 0:
        del state["reg_token"]
    args = {"class_token": True, "global_pool": "token", **dinov3_rope_args(float(config["rope_theta"]))}
    if gated:
        args["act_layer"] = "SiLU"
    return state, args


Family = Callable[[dict[str, np.ndarray], Mapping[str, Any], list[str], str],
                  tuple[dict[str, np.ndarray], dict[str, Any]]]
FAMILIES: dict[str, Family] = {
    "vit": _bert_family, "deit": _bert_family, "vit_msn": _bert_family, "vit_mae": _bert_family,
    "ijepa": _bert_family, "dinov2": _bert_family, "dinov2_with_registers": _bert_family,
    "clip": _clip_family, "clip_vision_model": _clip_family, "siglip": _clip_family,
    "siglip_vision_model": _clip_family, "dinov3_vit": _dinov3_family, "beit": _bert_family,
    "data2vec-vision": _bert_family, "siglip2": _siglip2_family, "siglip2_vision_model": _siglip2_family,
}
# CLIP's image tower under other names: MetaCLIP 2, Chinese CLIP, AltCLIP (their text towers differ)
CLIP_ALIKE = ("metaclip_2", "chinese_clip", "altclip")
FAMILIES.update({name + suffix: _clip_family for name in CLIP_ALIKE for suffix in ("", "_vision_model")})
TWO_TOWERS = ("clip", "siglip", "siglip2", *CLIP_ALIKE)
# transformers' config classes' defaults (5.25) for the fields read here: a config.json need not hold them (the
# image size is not among them: without one, the position table's square grid says it)
_BERT_DEFAULTS = dict(num_attention_heads=12, layer_norm_eps=1e-12, hidden_act="gelu")
CONFIG_DEFAULTS: dict[str, dict[str, Any]] = {
    "vit": _BERT_DEFAULTS, "deit": _BERT_DEFAULTS, "vit_mae": _BERT_DEFAULTS, "ijepa": _BERT_DEFAULTS,
    "vit_msn": dict(_BERT_DEFAULTS, layer_norm_eps=1e-6),
    "beit": dict(_BERT_DEFAULTS, use_mean_pooling=True), "data2vec-vision": dict(_BERT_DEFAULTS, use_mean_pooling=True),
    "dinov2": dict(_BERT_DEFAULTS, layer_norm_eps=1e-6, use_swiglu_ffn=False),
    "dinov2_with_registers": dict(_BERT_DEFAULTS, layer_norm_eps=1e-6, use_swiglu_ffn=False),
    "dinov3_vit": dict(num_attention_heads=6, layer_norm_eps=1e-5, hidden_act="gelu", use_gated_mlp=False,
                       rope_theta=100.0),
    "clip": dict(num_attention_heads=12, layer_norm_eps=1e-5, hidden_act="quick_gelu"),
    "siglip": dict(num_attention_heads=12, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh"),
    "siglip2": dict(num_attention_heads=12, layer_norm_eps=1e-6, hidden_act="gelu_pytorch_tanh", patch_size=16,
                    num_patches=256),
}
CONFIG_DEFAULTS.update(clip_vision_model=CONFIG_DEFAULTS["clip"], siglip_vision_model=CONFIG_DEFAULTS["siglip"],
                       siglip2_vision_model=CONFIG_DEFAULTS["siglip2"])
CONFIG_DEFAULTS.update({name + end: CONFIG_DEFAULTS["clip"] for name in CLIP_ALIKE for end in ("", "_vision_model")})
# the mean and std each family's image processor uses when no preprocessor_config.json says
DEFAULT_NORMALIZATION = {
    "vit": (HALF, HALF), "deit": (IMAGENET_MEAN, IMAGENET_STD), "vit_msn": (IMAGENET_MEAN, IMAGENET_STD),
    "vit_mae": (IMAGENET_MEAN, IMAGENET_STD), "ijepa": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov2": (IMAGENET_MEAN, IMAGENET_STD), "dinov2_with_registers": (IMAGENET_MEAN, IMAGENET_STD),
    "dinov3_vit": (IMAGENET_MEAN, IMAGENET_STD), "clip": (CLIP_MEAN, CLIP_STD),
    "clip_vision_model": (CLIP_MEAN, CLIP_STD), "siglip": (HALF, HALF), "siglip_vision_model": (HALF, HALF),
    "siglip2": (HALF, HALF), "siglip2_vision_model": (HALF, HALF),
    "beit": (HALF, HALF), "data2vec-vision": (HALF, HALF),
    **{name + suffix: (CLIP_MEAN, CLIP_STD) for name in CLIP_ALIKE for suffix in ("", "_vision_model")},
}


def _evaluation(preprocessor: Mapping[str, Any], normalization: tuple[tuple[float, ...], tuple[float, ...]]
                ) -> dict[str, Any]:
    """timm's `pretrained_cfg` for the image processor's view: resize (the shorter side to `size.shortest_edge`,
    or to `size.height` x `size.width`), then the central `crop_size`; its mean, std and resampling. Without a
    size (or without the file) it is the model's resolution, squashed, bilinear: ViTImageProcessor's defaults."""
    mean, std = preprocessor.get("image_mean", normalization[0]), preprocessor.get("image_std", normalization[1])
    if preprocessor.get("do_normalize") is False:
        mean, std = (0.0, 0.0, 0.0), (1.0, 1.0, 1.0)
    cfg: dict[str, Any] = {"mean": [float(m) for m in mean], "std": [float(s) for s in std], "crop_pct": 1.0,
                           "crop_mode": "squash", "interpolation": "bilinear", "crop_rounding": "floor"}
    resample = preprocessor.get("resample")
    if resample is not None:
        cfg["interpolation"] = PIL_RESAMPLE.get(int(resample), "bicubic")
    if "max_num_patches" in preprocessor and "patch_size" in preprocessor:  # SigLIP 2's NaFlex: each image at its
        patch, most = int(preprocessor["patch_size"]), int(preprocessor["max_num_patches"])  # own aspect ratio
        side = math.isqrt(most) * patch  # a square photo's view: the model's resolution
        cfg.update(input_size=[3, side, side], max_patches=[patch, most])
        return cfg
    size, crop = preprocessor.get("size"), preprocessor.get("crop_size")
    cropped = bool(preprocessor.get("do_center_crop", crop is not None)) and crop is not None
    if isinstance(crop, int | float):
        crop = {"height": int(crop), "width": int(crop)}
    if isinstance(size, int | float):  # older configs: with a center crop the shorter side (CLIP's), else square
        size = {"shortest_edge": int(size)} if cropped else {"height": int(size), "width": int(size)}
    if isinstance(size, Mapping) and "shortest_edge" in size:
        edge = int(size["shortest_edge"])
        side = int(crop.get("height", edge)) if cropped else edge
        cfg.update(input_size=[3, side, int(crop.get("width", side)) if cropped else side],
                   crop_pct=_crop_pct(side, edge), crop_mode="center")
    elif isinstance(size, Mapping) and "height" in size:
        h, w = int(size["height"]), int(size["width"])
        ch, cw = (int(crop["height"]), int(crop["width"])) if cropped else (h, w)
        cfg.update(input_size=[3, ch, cw], crop_pct=_crop_pct(ch, h),
                   crop_mode="squash" if (h, w) == (ch, cw) else "center")
    return cfg


def _crop_pct(crop: int, resized: int) -> float:
    """timm's `crop_pct` for a crop of `crop` pixels out of `resized`: the view resizes to `floor(crop / crop_pct)`,
    which must come back to `resized` exactly (384 / (384 / 438) is 437.99999...)."""
    pct = crop / resized
    while math.floor(crop / pct) < resized:
        pct = math.nextafter(pct, 0.0)
    return pct


def _label_names(config: Mapping[str, Any]) -> list[str] | None:
    """`id2label`'s names in class order, unless they are transformers' placeholders (`LABEL_3`)."""
    labels = config.get("id2label") or {}
    try:
        names = [str(labels[str(i)] if str(i) in labels else labels[i]) for i in range(len(labels))]
    except KeyError:
        return None
    if not names or all(re.fullmatch(r"LABEL_\d+", n) for n in names):
        return None
    return names
