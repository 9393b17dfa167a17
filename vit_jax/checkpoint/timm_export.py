"""A vit_jax model as a timm checkpoint: `model.safetensors` + `config.json` in the Hugging Face Hub layout.

    python -m vit_jax.checkpoint.timm_export --checkpoint=workdirs/digits --out=exported/digits
    python -c "import timm; m = timm.create_model('local-dir:exported/digits', pretrained=True)"

The config names a timm architecture and every `model_args` that differ from it, so timm builds exactly this model
and loads the weights strictly; its `pretrained_cfg` carries the preprocessing (input size, mean and std that
reproduce vit_jax's value range, interpolation). Where timm's layout lacks a vit_jax parameter the mapping uses an
exact identity instead: register tokens get zero position rows, a patch bias before a pre-norm folds into the
position table, no patch bias where timm keeps one is a zero bias. What timm's `VisionTransformer` cannot run
(ResNet stems, videos, `pre_logits`, sin-cos or factorized position encodings) is refused by name. Rotary models
are written as timm's `Eva` (the naver RoPE-ViTs, DINOv3: `vit_jax.checkpoint.timm_rope`).
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from vit_jax.checkpoint.timm_layout import ATTENTION, BLOCK, MAP_HEAD
from vit_jax.checkpoint.timm_rope import rope_architecture
from vit_jax.data.preprocessing import Preprocess
from vit_jax.image_size_flag import add_image_size_option, image_size_argument
from vit_jax.models.encoder import ENCODER
from vit_jax.models.heads import num_prefix_tokens
from vit_jax.models.posemb import antialiased, resize_posemb, sincos2d
from vit_jax.models.rope import ROPE_KINDS, is_rope
from vit_jax.models.vit import VisionTransformer, token_grid

if TYPE_CHECKING:
    from vit_jax.checkpoint.trained_model import TrainedModel

_POOLS = {"token": "token", "gap": "avg", "token_gap": "avg", "map": "map", "token_map": "map", "unpooled": "",
          "token_unpooled": "", "token_distilled": "token"}


def timm_config(model: VisionTransformer, preprocess: Preprocess, channels: int) -> dict[str, Any]:
    """config.json: `architecture`, `model_args` (everything that makes timm's model this one) and
    `pretrained_cfg`."""
    refuse = {"tubelet_size": model.tubelet_size is not None,
              "representation_size": model.representation_size is not None,
              "posemb": model.posemb not in ("learn", "none", *ROPE_KINDS),
              "qkv_dim": model.qkv_dim not in (None, model.hidden_size),
              "patch_norm": model.patch_norm, "classifier": model.classifier not in _POOLS,
              "map_num_heads": model.map_num_heads is not None, "map_mlp_dim": model.map_mlp_dim is not None,
              "num_kv_heads": model.num_kv_heads is not None}
    for option, refused in refuse.items():
        if refused:
            raise ValueError(f"{option}={getattr(model, option)!r}: timm's VisionTransformer has no counterpart")
    # timm's fc1 width: a VisionTransformer's SwiGLUPacked counts the gate's half in mlp_ratio, SwiGLU (Eva, AIMv2) not
    packed = model.gated_mlp and not is_rope(model.posemb) and not _aimv2(model)
    hidden = 2 * model.mlp_dim if packed else model.mlp_dim
    if int(model.hidden_size * (hidden / model.hidden_size)) != hidden:  # timm's rule for the width
        raise ValueError(f"mlp_dim {model.mlp_dim} is not int({model.hidden_size} * mlp_ratio) for a float mlp_ratio")
    if model.layer_norm_epsilon not in (1e-6, 1e-5):
        raise ValueError(f"layer_norm_epsilon={model.layer_norm_epsilon}: timm's ViTs use 1e-6 or (CLIP) 1e-5")
    if model.embedding_norm and model.layer_norm_epsilon != 1e-6 and not _aimv2(model):
        raise ValueError(f"embedding_norm with layer_norm_epsilon={model.layer_norm_epsilon}: timm's "
                         f"embed_norm_layer='layernorm' has epsilon 1e-6")
    image_size = tuple(preprocess.image_size)
    token_grid(model, image_size)  # the image size fits the patches
    activation = ("silu" if model.gated_mlp else "quick_gelu" if model.quick_gelu else
                  "gelu_tanh" if model.gelu_approximate else "gelu")
    model_args = dict(
        img_size=list(image_size), patch_size=list(model.patch_size), in_chans=channels,
        num_classes=model.num_classes or 0, global_pool=_POOLS[model.classifier], embed_dim=model.hidden_size,
        depth=model.num_layers, num_heads=model.num_heads, mlp_ratio=hidden / model.hidden_size,
        qkv_bias=model.qkv_bias, init_values=model.layer_scale, class_token=num_prefix_tokens(model.classifier) > 0,
        pos_embed="learn" if model.posemb == "learn" else "none", no_embed_class=False,
        reg_tokens=model.num_registers, pre_norm=model.pre_norm, fc_norm=model.fc_norm, act_layer=activation,
    )
    if model.classifier == "token_map":  # the class token pooled with the patches (Eva's attention pooling always)
        if model.num_registers:
            raise ValueError("classifier='token_map' with registers: timm's attention pooling over the prefix "
                             "takes the registers too, vit_jax's does not")
        model_args["pool_include_prefix"] = True
    if model.embedding_norm:
        model_args["embed_norm_layer"] = "layernorm"
    if model.mlp_norm:
        model_args["scale_mlp_norm"] = True
    if not model.proj_bias:
        model_args["proj_bias"] = False
    if model.rms_norm and not _aimv2(model):  # timm's 'rmsnorm' has epsilon 1e-6
        model_args["norm_layer"] = "rmsnorm"
        if model.embedding_norm:
            model_args["embed_norm_layer"] = "rmsnorm"
    if model.attention_norm:
        model_args["scale_attn_norm"] = True
    if model.qk_norm:
        model_args["qk_norm"] = True
    if model.layer_scale_attention_only and not is_rope(model.posemb):
        raise ValueError("layer_scale_attention_only: timm's VisionTransformer scales both branches (only its Eva "
                         "has attn_only_layer_scale)")
    if not model.final_norm:  # only then: older timm versions do not know the argument
        model_args["final_norm"] = False
    architecture = "vit_base_patch16_clip_224" if model.layer_norm_epsilon == 1e-5 else "vit_base_patch16_224"
    if model.resnet_num_layers is not None:
        architecture = _hybrid(model)
    elif model.relative_position_bias:
        architecture, model_args = _beit(model, model_args)
    elif model.classifier == "token_distilled":
        architecture = _distilled_vit(model)
    elif is_rope(model.posemb):
        architecture, model_args = _eva(model, model_args)
    elif _aimv2(model):
        architecture = "aimv2_large_patch14_224"
        model_args["proj_bias"] = model.proj_bias  # the architecture's is False
        if model.embedding_norm:  # the architecture's own: an RMSNorm of epsilon 1e-5
            del model_args["embed_norm_layer"]
        else:
            model_args["embed_norm_layer"] = None
    elif model.rms_norm and model.layer_norm_epsilon != 1e-6:
        raise ValueError(f"rms_norm with layer_norm_epsilon={model.layer_norm_epsilon} and no SwiGLU: timm has "
                         f"RMSNorms of epsilon 1e-6 ('rmsnorm'), or of 1e-5 in AIMv2's SwiGLU architecture only")
    elif model.gated_mlp:
        architecture = _swiglu_vit(model)
    mean, std = unit_mean_std(preprocess, channels)
    pretrained_cfg = dict(
        input_size=[channels, *image_size], interpolation=preprocess.resize_method, crop_pct=preprocess.crop_pct,
        crop_mode=preprocess.crop_mode, mean=mean, std=std, num_classes=model.num_classes or 0,
        first_conv="patch_embed.proj", classifier="head",
    )
    return dict(architecture=architecture, num_classes=model.num_classes or 0, num_features=model.hidden_size,
                global_pool=model_args["global_pool"], model_args=model_args, pretrained_cfg=pretrained_cfg)


def _beit(model: VisionTransformer, vit_args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """Relative position biases are timm's `Beit` (one table per block, a class token, q/v biases)."""
    refuse = {"classifier": model.classifier not in ("token", "token_gap"), "num_registers": model.num_registers,
              "posemb": model.posemb not in ("learn", "none"), "pre_norm": model.pre_norm,
              "embedding_norm": model.embedding_norm, "patch_bias": not model.patch_bias,
              "gelu_approximate": model.gelu_approximate and not model.gated_mlp, "quick_gelu": model.quick_gelu,
              "gated_mlp": model.gated_mlp, "mlp_norm": model.mlp_norm, "attention_norm": model.attention_norm,
              "qk_norm": model.qk_norm, "rms_norm": model.rms_norm, "proj_bias": not model.proj_bias,
              "layer_scale_attention_only": model.layer_scale_attention_only, "final_norm": not model.final_norm,
              "layer_norm_epsilon": model.layer_norm_epsilon != 1e-6}
    for option, refused in refuse.items():
        if refused:
            raise ValueError(f"{option}={getattr(model, option)!r} with relative_position_bias: timm's Beit "
                             f"(beit_base_patch16_224) has no counterpart")
    keep = ("img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
            "mlp_ratio", "qkv_bias", "init_values")
    return "beit_base_patch16_224", dict({k: vit_args[k] for k in keep}, use_abs_pos_emb=model.posemb == "learn",
                                         use_rel_pos_bias=True, use_shared_rel_pos_bias=False,
                                         use_fc_norm=model.fc_norm)


def _aimv2(model: VisionTransformer) -> bool:
    """AIMv2's architecture (RMSNorms of epsilon 1e-5, SwiGLU as timm's `SwiGLU`: `fc1_g`, `fc1_x`) is the one
    timm has for RMSNorms of that epsilon; its other arguments are set by `model_args`."""
    return (model.rms_norm and model.layer_norm_epsilon == 1e-5 and model.gated_mlp and not is_rope(model.posemb)
            and model.classifier != "token_distilled")


def _distilled_vit(model: VisionTransformer) -> str:
    """DeiT's distillation token is timm's `VisionTransformerDistilled`, a VisionTransformer with the same
    arguments; its own table layout has no registers, rotary encodings or SwiGLU."""
    refuse = {"num_registers": model.num_registers, "posemb": is_rope(model.posemb), "gated_mlp": model.gated_mlp,
              "layer_norm_epsilon": model.layer_norm_epsilon != 1e-6}
    for option, refused in refuse.items():
        if refused:
            raise ValueError(f"{option}={getattr(model, option)!r} with classifier='token_distilled': timm's "
                             f"VisionTransformerDistilled (deit_base_distilled_patch16_224) has no counterpart")
    return "deit_base_distilled_patch16_224"


def _swiglu_vit(model: VisionTransformer) -> str:
    """A SwiGLU ViT is DINOv2-g's architecture, the one that sets timm's `mlp_layer=SwiGLUPacked` (a class,
    which `model_args` cannot carry); `model_args` set everything else."""
    refuse = {"layer_norm_epsilon": model.layer_norm_epsilon != 1e-6,
              "classifier": model.classifier in ("map", "token_map")}
    for option, refused in refuse.items():
        if refused:
            raise ValueError(f"{option}={getattr(model, option)!r} with gated_mlp: timm's SwiGLU VisionTransformer "
                             f"(vit_giant_patch14_dinov2) has no counterpart")
    return "vit_giant_patch14_dinov2"


def _eva(model: VisionTransformer, vit_args: dict[str, Any]) -> tuple[str, dict[str, Any]]:
    """A rotary model is timm's `Eva` (the naver RoPE-ViTs, DINOv3): its architecture and `model_args`."""
    architecture, rope_args = rope_architecture(_rope_options(model))
    epsilon = 1e-5 if "dinov3" in architecture else 1e-6
    refuse = {"layer_norm_epsilon": model.layer_norm_epsilon != epsilon,
              "gelu_approximate": model.gelu_approximate and not model.gated_mlp,
              "quick_gelu": model.quick_gelu, "embedding_norm": model.embedding_norm,
              "classifier": model.classifier == "map" or (model.classifier == "token_map" and model.num_registers),
              "final_norm": not model.final_norm,
              "rms_norm": model.rms_norm, "proj_bias": not model.proj_bias}
    for option, refused in refuse.items():
        if refused:
            raise ValueError(f"{option}={getattr(model, option)!r}: timm's Eva ({architecture}) has no counterpart")
    keep = ("img_size", "patch_size", "in_chans", "num_classes", "global_pool", "embed_dim", "depth", "num_heads",
            "mlp_ratio", "qkv_bias", "init_values", "class_token", "no_embed_class")
    swiglu = dict(swiglu_mlp=True, swiglu_align_to=1) if model.gated_mlp else {}  # timm's SwiGLU: fc1_g, fc1_x
    return architecture, dict({k: vit_args[k] for k in keep}, num_reg_tokens=model.num_registers,
                              use_pre_transformer_norm=model.pre_norm, use_fc_norm=model.fc_norm,
                              scale_mlp=model.mlp_norm, scale_attn_inner=model.attention_norm, qk_norm=model.qk_norm,
                              attn_only_layer_scale=model.layer_scale_attention_only, **swiglu, **rope_args)


def fixed_table_as_learned(model: VisionTransformer, params: dict[str, Any], image_size: tuple[int, int]
                           ) -> tuple[VisionTransformer, dict[str, Any]]:
    """A model with a fixed sin-cos table (big_vision's plain ViTs) as the same model with a learned table of its
    values at `image_size`'s grid (zero rows for the class token, as vit_jax adds it): timm's and transformers'
    ViTs learn their tables. Other models as they are."""
    if model.posemb != "sincos2d":
        return model, params
    grid = token_grid(model, image_size)
    rows = [np.zeros((num_prefix_tokens(model.classifier), model.hidden_size)), sincos2d(grid, model.hidden_size)]
    table = np.concatenate(rows)[None].astype(np.float32)
    encoder = {**params[ENCODER], "posembed_input": {"pos_embedding": table}}
    return model.clone(posemb="learn", posemb_grid=grid), {**params, ENCODER: encoder}


def at_export_grid(model: VisionTransformer, params: dict[str, Any], image_size: tuple[int, int]
                   ) -> tuple[VisionTransformer, dict[str, Any]]:
    """A model whose table is stored at another grid (`posemb_grid`) as the model at `image_size`'s grid, its table
    resized by the model's own rule: timm's VisionTransformer at `img_size` then computes what vit_jax computes."""
    grid = token_grid(model, image_size)
    embeddings = params.get(ENCODER, {}).get("posembed_input", {})
    if model.posemb_grid is None or tuple(model.posemb_grid) == grid or "pos_embedding" not in embeddings:
        return model, params
    table = resize_posemb(embeddings["pos_embedding"], tuple(model.posemb_grid), grid,
                          num_prefix_tokens(model.classifier), method=model.posemb_resize,
                          antialias=antialiased(model.posemb_resize, model.posemb_antialias),
                          aspect_preserving=model.posemb_aspect_preserving, offset=model.posemb_resize_offset)
    encoder = {**params[ENCODER], "posembed_input": {**embeddings, "pos_embedding": np.asarray(table)}}
    return model.clone(posemb_grid=None), {**params, ENCODER: encoder}


def unit_mean_std(preprocess: Preprocess, channels: int) -> tuple[list[float], list[float]]:
    """The per-channel `(mean', std')` with which `(x - mean') / std'` of pixels `x` in [0, 1] is what vit_jax
    feeds, `(lo + (hi - lo) x - mean) / std` (timm's and transformers' preprocessing)."""
    lo, hi = preprocess.value_range
    mean = np.zeros(channels) if preprocess.mean is None else np.asarray(preprocess.mean, float)
    std = np.ones(channels) if preprocess.std is None else np.asarray(preprocess.std, float)
    return np.broadcast_to((mean - lo) / (hi - lo), channels).tolist(), np.broadcast_to(std / (hi - lo), channels).tolist()


def params_to_timm(params: dict[str, Any], model: VisionTransformer) -> dict[str, np.ndarray]:
    """vit_jax's tree (per-layer blocks) -> timm's state dict, float32 numpy; the inverse of
    `vit_jax.checkpoint.timm_layout.params_from_timm` for the layouts timm_config writes."""
    p = _numpy(params)
    encoder = p[ENCODER]
    width = model.hidden_size
    state: dict[str, np.ndarray] = {"patch_embed.proj.weight": p["embedding"]["kernel"].transpose(3, 2, 0, 1)}
    patch_bias = p["embedding"].get("bias", np.zeros(width, np.float32))
    if model.pre_norm and model.embedding_norm and np.any(patch_bias):
        raise ValueError("a patch bias before embedding_norm and pre_norm has no timm layout (timm's pre-norm models "
                         "have no patch bias)")
    prefix = num_prefix_tokens(model.classifier)
    if "posembed_input" in encoder:
        table = encoder["posembed_input"]["pos_embedding"]
        if model.pre_norm:  # timm has no patch bias before its pre-norm: the constant moves into the patch rows
            table = np.concatenate([table[:, :prefix], table[:, prefix:] + patch_bias], axis=1)
        if model.num_registers:  # vit_jax's registers get no position: zero rows in timm's table
            zeros = np.zeros((1, model.num_registers, width), np.float32)
            table = np.concatenate([table[:, :prefix], zeros, table[:, prefix:]], axis=1)
        state["pos_embed"] = table
    if model.embedding_norm:
        state.update(_norm("patch_embed.norm", p["embedding"]["embedding_norm"]))
    if "posembed_input" not in encoder and model.pre_norm and np.any(patch_bias):
        raise ValueError("a patch bias before pre_norm without a position table to fold it into has no timm layout")
    if not model.pre_norm:
        state["patch_embed.proj.bias"] = patch_bias
    if prefix:
        state["cls_token"] = p["cls"]
    if prefix == 2:
        state["dist_token"] = p["dist"]
    if model.num_registers:
        state["reg_token"] = encoder["registers"]
    if model.pre_norm:
        state.update(_norm("norm_pre", encoder["pre_norm"]))
    for i in range(model.num_layers):
        state.update(_block_to_timm(encoder[BLOCK.format(i)], f"blocks.{i}.", width, _attention_layout(model),
                                    split_swiglu=_aimv2(model)))
    if model.posemb == "rope_mixed":  # Eva's (2, depth, heads, pairs)
        state["rope.freqs"] = np.stack([encoder[BLOCK.format(i)]["rope_frequencies"]
                                        for i in range(model.num_layers)], axis=1)
    if model.fc_norm:
        state.update(_norm("fc_norm", p["fc_norm"]))
    elif model.final_norm:
        state.update(_norm("norm", encoder["encoder_norm"]))
    if model.classifier in ("map", "token_map"):
        state.update(_map_head_to_timm(p[MAP_HEAD], width))
    for head in ("head", "head_dist"):
        if head in p:
            state.update(_dense(head, p[head]))
    if model.resnet_num_layers is not None:
        state.update(_stem_to_timm(p, tuple(model.resnet_num_layers)))
    return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


# timm's hybrid architectures by their ResNetV2 stem's units per stage (the ViT paper's R50, R26, root only)
TIMM_HYBRIDS = {(3, 4, 9): "vit_base_r50_s16_224", (3, 4, 6, 3): "vit_large_r50_s32_224",
                (2, 2, 2, 2): "vit_small_r26_s32_224", (): "vit_tiny_r_s16_p8_224"}


def _hybrid(model: VisionTransformer) -> str:
    """timm's hybrid whose entrypoint builds this stem (its ViT sizes come from model_args)."""
    layers = tuple(model.resnet_num_layers)
    if layers not in TIMM_HYBRIDS or model.resnet_width_factor != 1 or model.resnet_numerics != "timm":
        raise ValueError(f"resnet_num_layers={layers}, resnet_width_factor={model.resnet_width_factor}, "
                         f"resnet_numerics={model.resnet_numerics!r}: timm's hybrids have the stems "
                         f"{sorted(TIMM_HYBRIDS)} at width factor 1 with timm's epsilons (resnet_numerics='timm'; "
                         f"vision_transformer's give other features)")
    return TIMM_HYBRIDS[layers]


def _stem_to_timm(p: dict[str, Any], num_layers: tuple[int, ...]) -> dict[str, np.ndarray]:
    """vision_transformer's stem names -> timm's ResNetV2 (`patch_embed.backbone.`; the root alone is the backbone
    of `vit_tiny_r_*`)."""
    stem = "patch_embed.backbone."
    conv = lambda name, q: {f"{stem}{name}.weight": q["kernel"].transpose(3, 2, 0, 1)}
    root = "stem." if num_layers else ""
    state = {**conv(root + "conv", p["conv_root"]), **_norm(stem + root + "norm", p["gn_root"])}
    for i, units in enumerate(num_layers):
        for j in range(units):
            unit, b = p[f"block{i + 1}"][f"unit{j + 1}"], f"stages.{i}.blocks.{j}."
            for k in (1, 2, 3):
                state.update({**conv(f"{b}conv{k}", unit[f"conv{k}"]), **_norm(f"{stem}{b}norm{k}", unit[f"gn{k}"])})
            if "conv_proj" in unit:
                state.update({**conv(b + "downsample.conv", unit["conv_proj"]),
                              **_norm(stem + b + "downsample.norm", unit["gn_proj"])})
    return state


def _numpy(tree: Any) -> Any:
    return {k: _numpy(v) for k, v in tree.items()} if isinstance(tree, dict) else np.asarray(tree, np.float32)


def _norm(name: str, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """A LayerNorm's weight and bias; an RMSNorm's weight."""
    return {f"{name}.weight": p["scale"], **({f"{name}.bias": p["bias"]} if "bias" in p else {})}


def _dense(name: str, p: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return {f"{name}.weight": p["kernel"].T, **({f"{name}.bias": p["bias"]} if "bias" in p else {})}


def _heads_in(p: dict[str, np.ndarray], width: int) -> tuple[np.ndarray, np.ndarray | None]:
    """kernel `(D, H, hd)`, bias `(H, hd)` -> a `(H * hd, D)` weight and its bias (None without one)."""
    return p["kernel"].reshape(width, -1).T, p["bias"].reshape(-1) if "bias" in p else None


def _heads_out(name: str, p: dict[str, np.ndarray], width: int) -> dict[str, np.ndarray]:
    weight = {f"{name}.weight": p["kernel"].reshape(-1, width).T}
    return {**weight, f"{name}.bias": p["bias"]} if "bias" in p else weight


def _attention_layout(model: VisionTransformer) -> str:
    """`vit` (timm's VisionTransformer), or an Eva's `attn_type`: `rope` (fused `qkv.bias`) or `eva` (`q_bias`,
    `v_bias`); Eva's layer scales are `gamma_1` / `gamma_2`."""
    if model.relative_position_bias:
        return "eva"  # Beit's: q_bias, v_bias, gamma_1, gamma_2
    return rope_architecture(_rope_options(model))[1]["attn_type"] if is_rope(model.posemb) else "vit"


def _rope_options(model: VisionTransformer) -> dict[str, Any]:
    return {f: getattr(model, f) for f in ("posemb", "rope_theta", "rope_ape", "rope_coordinates", "rope_pairing",
                                           "rope_axis_order", "rope_grid", "rope_offset")}


def _block_to_timm(block: dict[str, Any], b: str, width: int, layout: str = "vit", split_swiglu: bool = False
                   ) -> dict[str, np.ndarray]:
    """timm's block names in `layout` (see `_attention_layout`); `split_swiglu`: SwiGLU as `fc1_g`, `fc1_x` (Eva's
    always are)."""
    attention = block[ATTENTION]
    q, k, v = (_heads_in(attention[name], width) for name in ("query", "key", "value"))
    state = {b + "attn.qkv.weight": np.concatenate([q[0], k[0], v[0]]),
             **_heads_out(b + "attn.proj", attention["out"], width),
             **_norm(b + "norm1", block["LayerNorm_0"]), **_norm(b + "norm2", block["LayerNorm_1"]),
             **_mlp_to_timm(block["MlpBlock_0"], b + "mlp.", packed=layout == "vit" and not split_swiglu)}
    if q[1] is not None and layout == "eva":
        if np.any(k[1]):  # Eva has none; under RoPE a key bias is not softmax-invariant
            raise ValueError(f"{b}: a non-zero key bias has no place in timm's Eva layout (q_bias, v_bias only)")
        state[b + "attn.q_bias"], state[b + "attn.v_bias"] = q[1], v[1]
    elif q[1] is not None:
        state[b + "attn.qkv.bias"] = np.concatenate([q[1], k[1], v[1]])
    if "LayerNorm_0" in attention:
        state.update(_norm(b + "attn.norm", attention["LayerNorm_0"]))
    if "relative_position_bias" in attention:  # Beit's flat table: the offsets row-major, then the class token's
        heads = attention["relative_position_bias"].shape[-1]
        state[b + "attn.relative_position_bias_table"] = np.concatenate(
            [attention["relative_position_bias"].reshape(-1, heads), attention["relative_position_bias_prefix"]])
    if "query_norm" in attention:
        state.update({**_norm(b + "attn.q_norm", attention["query_norm"]),
                      **_norm(b + "attn.k_norm", attention["key_norm"])})
    names = ("ls1.gamma", "ls2.gamma") if layout == "vit" else ("gamma_1", "gamma_2")
    for j, name in enumerate(names):
        if f"LayerScale_{j}" in block:
            state[b + name] = block[f"LayerScale_{j}"]["scale"]
    return state


def _mlp_to_timm(mlp: dict[str, Any], m: str, packed: bool) -> dict[str, np.ndarray]:
    """`fc1`, `fc2` (and `norm` between them); a SwiGLU MLP's gate and value as one packed `fc1`, the gate's half
    first (timm's GluMlp, for a VisionTransformer), or as `fc1_g`, `fc1_x` (timm's SwiGLU, for an Eva)."""
    state = _dense(m + "fc2", mlp["Dense_1"])
    if "LayerNorm_0" in mlp:
        state.update(_norm(m + "norm", mlp["LayerNorm_0"]))
    if "Gate" not in mlp:
        return {**_dense(m + "fc1", mlp["Dense_0"]), **state}
    if not packed:
        return {**_dense(m + "fc1_g", mlp["Gate"]), **_dense(m + "fc1_x", mlp["Dense_0"]), **state}
    fc1 = {name: np.concatenate([mlp["Gate"][name], mlp["Dense_0"][name]], axis=-1) for name in mlp["Dense_0"]}
    return {**_dense(m + "fc1", fc1), **state}


def _map_head_to_timm(head: dict[str, Any], width: int) -> dict[str, np.ndarray]:
    attention = head[ATTENTION]
    q, k, v = (_heads_in(attention[name], width) for name in ("query", "key", "value"))
    return {"attn_pool.latent": head["probe"], "attn_pool.q.weight": q[0], "attn_pool.q.bias": q[1],
            "attn_pool.kv.weight": np.concatenate([k[0], v[0]]), "attn_pool.kv.bias": np.concatenate([k[1], v[1]]),
            **_heads_out("attn_pool.proj", attention["out"], width), **_norm("attn_pool.norm", head["LayerNorm_0"]),
            **_dense("attn_pool.mlp.fc1", head["MlpBlock_0"]["Dense_0"]),
            **_dense("attn_pool.mlp.fc2", head["MlpBlock_0"]["Dense_1"])}


def export_timm(checkpoint: str, out: str | Path, step: int | None = None,
                image_size: tuple[int, int] | None = None) -> Path:
    """Writes `out/model.safetensors` and `out/config.json` for the model of `checkpoint` (anything
    `load_trained_model` reads; `image_size` for an `.npz` file whose table does not say it). Checks before writing
    anything."""
    from vit_jax.checkpoint.trained_model import load_trained_model

    return export_trained_timm(load_trained_model(checkpoint, step=step, image_size=image_size), out)


def export_trained_timm(trained: TrainedModel, out: str | Path) -> Path:
    """`export_timm` of a model already loaded (or made: a soup of several)."""
    from vit_jax.checkpoint.hub import CONFIG

    image_size = tuple(trained.preprocess.image_size)
    model, params = at_export_grid(*fixed_table_as_learned(trained.model, trained.params, image_size), image_size)
    config = timm_config(model, trained.preprocess, trained.channels)
    return write_export(out, params_to_timm(params, model), {CONFIG: config})


def write_export(out: str | Path, state: dict[str, np.ndarray], configs: dict[str, dict[str, Any]],
                 metadata: dict[str, str] | None = None) -> Path:
    """Writes `model.safetensors` and the JSON `configs` into `out`, all whole or none (`vit_jax.whole_files`): an
    export that fails or is interrupted leaves an earlier one in `out` as it was."""
    from safetensors.numpy import save_file

    from vit_jax.checkpoint.hub import WEIGHTS
    from vit_jax.whole_files import written_whole

    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    with written_whole([out / WEIGHTS, *(out / name for name in configs)]) as (weights, *texts):
        save_file(state, str(weights), metadata=metadata)
        for path, config in zip(texts, configs.values()):
            path.write_text(json.dumps(config, indent=2) + "\n")
    return out


def export_command(argv: list[str] | None, module: str, doc: str, export: Callable[..., Path],
                   files: tuple[str, ...]) -> int:
    """An export's command line: `--checkpoint`, `--out`, `--step`, `--image-size`; a one-line error (exit status 2)
    for bad input."""
    parser = argparse.ArgumentParser(prog=f"python -m {module}", description=doc.split("\n")[0])
    parser.add_argument("--checkpoint", required=True, help="a vit_jax workdir, an .npz or a Hub checkpoint")
    parser.add_argument("--out", required=True, help=f"the directory to write {', '.join(files)} to")
    parser.add_argument("--step", type=int, default=None, help="workdir checkpoint step (default: the latest)")
    add_image_size_option(parser, "the image size the export takes (default: the checkpoint's own; needed for an "
                                  ".npz file whose table does not say it, a fixed sin-cos table)")
    args = parser.parse_args(argv)
    try:
        from vit_jax.entry import check_output

        earlier = [name for name in files if (check_output(args.out, "--out", directory=True) / name).exists()]
        out = export(args.checkpoint, args.out, args.step, image_size_argument(args.image_size))
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"wrote {', '.join(str(out / name) for name in files)}"
          + (f" (replacing the earlier {', '.join(earlier)})" if earlier else ""))
    return 0


def main(argv: list[str] | None = None) -> int:
    return export_command(argv, "vit_jax.checkpoint.timm_export", __doc__, export_timm,
                          ("model.safetensors", "config.json"))


if __name__ == "__main__":
    sys.exit(main())
