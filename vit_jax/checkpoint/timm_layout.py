"""timm's ViT weights (the Hugging Face Hub's `model.safetensors` of `timm/vit_*`) <-> vit_jax's tree.

timm's `VisionTransformer` state dict maps tensor by tensor onto vision_transformer's names: `(out, in)` Linear
weights transposed, the fused `qkv` split into query/key/value heads, `(D, C, ph, pw)` convolutions to
`(ph, pw, C, D)`. Every architectural difference between the families is a `VisionTransformer` option read off the
tensors (layer scale, registers, pre-norm, patch bias, `fc_norm`, MAP head, class token) or, for what tensors
cannot say (heads, LayerNorm epsilon, the GELU's flavour), off the architecture's own keyword arguments
(timm_architectures.json: `config.json` records only what its caller added) and `model_args` of `config.json`.
A tensor left unread, or needed and missing, is refused: nothing in a checkpoint is dropped silently.

Two timm layouts become vit_jax's by exact identities rather than options: a table without class rows
(`no_embed_class`, DeiT-III, DINOv2-reg) is a zero class row, because the class token then gets no position;
and the position rows of register tokens are constants added to constant tokens, so they fold into the registers.
A hybrid's ResNetV2 stem (`patch_embed.backbone`) becomes vit_jax's `resnet_stem` with timm's epsilons
(`resnet_numerics='timm'`). Families vit_jax cannot run yet are refused with the tensor that says why (other CNN
stems, SAM's relative positions, BEiT's shared pre-training table, ...).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.checkpoint.timm_rope import DINOV3, rope_family, rope_options_from_timm
from vit_jax.models.encoder import ENCODER
from vit_jax.models.heads import num_prefix_tokens
from vit_jax.models.resnet_stem import stem_output_hw, stem_stride
from vit_jax.models.variants import nearest_variant

BLOCK = "encoderblock_{}"
ATTENTION = "MultiHeadDotProductAttention_0"
MAP_HEAD = "MAPHead_0"
PRE_LOGITS = "pre_logits.fc"
FACTORIZED = ("pos_embed_y", "pos_embed_x")  # NaFlexVit's row and column tables (not VisionTransformer's)
STEM = "patch_embed.backbone."  # a hybrid's ResNet stem
# Tensors (or modules: a prefix of tensors) of families vit_jax does not run (yet), and the one-line reason.
_REFUSED = {
    "blocks.0.mlp.w12.weight": "a SwiGLU MLP in xformers' fused layout (w12, w3)",
    "blocks.0.norm.weight": "a norm of the block's own (blocks.N.norm: not timm's pre-norm Block's norm1/norm2)",
    "attn_pool.pos_embed": "a position table inside the attention-pooling head",
    "rel_pos_bias": "a relative position bias shared by the blocks (BEiT's pre-training; its fine-tuned models "
                    "have one per block)",
    "blocks.0.attn.rel_pos_h": "relative position biases (SAM)",
}
# timm's heads per width for its standard ViT sizes (ti, s, m, b, l, h, g, G, so400m, dinov2-g), for checkpoints
# whose config.json does not record `num_heads`.
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)  # timm's defaults
HEADS_BY_WIDTH = {192: 3, 384: 6, 512: 8, 768: 12, 1024: 16, 1152: 16, 1280: 16, 1408: 16, 1536: 24, 1664: 16}


@dataclasses.dataclass(frozen=True)
class TimmArchitecture:
    """A timm ViT as vit_jax builds it: `options` are `VisionTransformer` keyword arguments; `image_size` is the
    resolution the weights were made for; `no_embed_class` and `register_rows` say how timm's table is laid out."""

    name: str  # timm's architecture, e.g. "vit_small_patch14_reg4_dinov2"
    options: dict[str, Any]
    image_size: tuple[int, int]
    channels: int
    no_embed_class: bool = False
    pretrained_cfg: Mapping[str, Any] = dataclasses.field(default_factory=dict)
    any_resolution: bool = False  # NaFlexVit's: trained at many grids, its table's grid is none of them in particular

    @property
    def fine_tuning_size(self) -> tuple[int, int]:
        """The resolution to fine-tune at unless told: the training resolution, or for a model trained at any
        resolution (NaFlex) the one it is evaluated at (`pretrained_cfg`'s: 384 for SigLIP 2, 512 for C-RADIO)."""
        return tuple(self.evaluation["image_size"]) if self.any_resolution else self.image_size

    @property
    def grid(self) -> tuple[int, int]:
        """The patch grid of `image_size`: the one the position table and relative position tables are for."""
        return _grid(self.image_size, self.options["patch_size"], self.options.get("resnet_num_layers"))

    @property
    def variant(self) -> str:
        """The nearest vit_jax variant name ("S/14"); `options` set every size exactly anyway."""
        return nearest_variant(self.options["hidden_size"], self.options["patch_size"])

    @property
    def model_options(self) -> dict[str, Any]:
        """`options` for a model config to fine-tune: without the class count (the dataset's), the table's grid (the
        input's; the loaded table is resized to it) and a `pre_logits` layer (dropped, as vision_transformer's
        fine-tuning drops it)."""
        return {k: v for k, v in self.options.items()
                if k not in ("num_classes", "posemb_grid", "representation_size")}

    @property
    def evaluation(self) -> dict[str, Any]:
        """`Preprocess` fields for the view timm evaluates at (`resolve_data_config`): `input_size`,
        `interpolation`, `crop_pct` and `crop_mode` from `pretrained_cfg`, timm's defaults where it has none (0.875,
        center, bicubic; the training resolution for the size); a NaFlex image processor's `max_patches`."""
        cfg = self.pretrained_cfg
        size = cfg.get("input_size")
        view = dict(image_size=tuple(int(s) for s in size[1:]) if size else self.image_size,
                    resize_method=cfg.get("interpolation") or "bicubic", crop_pct=float(cfg.get("crop_pct") or 0.875),
                    crop_mode=cfg.get("crop_mode") or "center")
        if cfg.get("max_patches"):  # SigLIP 2's NaFlex processor: each image at its own aspect ratio
            view["max_patches"] = tuple(int(n) for n in cfg["max_patches"])
        if cfg.get("crop_rounding"):  # transformers' processors floor an odd margin
            view["crop_rounding"] = cfg["crop_rounding"]
        return view

    @property
    def preprocessing(self) -> dict[str, Any]:
        """`config.pp` fields the weights expect: timm's mean and std (`pretrained_cfg`) on 0..1 pixels."""
        cfg = self.pretrained_cfg
        mean, std = cfg.get("mean", IMAGENET_MEAN), cfg.get("std", IMAGENET_STD)
        return dict(value_range=(0.0, 1.0), mean=tuple(mean), std=tuple(std))


def architecture_from_timm(state: Mapping[str, np.ndarray], config: Mapping[str, Any], where: str
                           ) -> TimmArchitecture:
    """The vit_jax model of a timm checkpoint: tensor names and shapes, plus `config` (the Hub's `config.json`:
    `architecture`, `model_args`, `pretrained_cfg`; may be empty). `where` names the checkpoint in errors."""
    name = str(config.get("architecture", ""))
    args = architecture_args(name, config)
    for key, reason in _REFUSED.items():
        found = key if key in state else next((k for k in state if k.startswith(key + ".")), None)
        if found:
            raise ValueError(f"{where}: {reason} (tensor {found!r}) is not supported by vit_jax's ViT")
    gated = _gated_mlp(state, args, name, where)
    _check_what_tensors_cannot_say(args, name, where, gated)
    if "fc_norm.weight" in state and "norm.weight" in state:
        raise ValueError(f"{where}: a final norm both before and after pooling (norm and fc_norm)")
    if "patch_embed.proj.weight" not in state or not any(f"blocks.0.attn.{p}.weight" in state
                                                          for p in ("qkv", "q_proj")):
        found = ", ".join(sorted(state)[:6])
        transformers = any(re.search(r"(^|\.)(embeddings|encoder\.layers?)\.", k) for k in state)
        hint = ("; its names are transformers': put its config.json (with its model_type) beside the weights"
                if transformers and not config else "")
        raise ValueError(f"{where} is not a timm VisionTransformer (or Eva) state dict: expected "
                         f"'patch_embed.proj.weight' and 'blocks.0.attn.qkv.weight'; found {found}, ...{hint}")
    if args.get("use_post_norm"):
        raise ValueError(f"{where}: Eva's use_post_norm (a norm after each branch) is not a vit_jax option")
    rope = rope_options_from_timm(name, args, state, where)
    eva = [k for k in ("blocks.0.gamma_1", "blocks.0.attn.q_bias", "rope.freqs", "blocks.0.attn.q_proj.weight")
           if k in state]
    relative = "blocks.0.attn.relative_position_bias_table" in state  # BEiT's
    if not rope and not relative and "pos_embed" not in state and (eva or not config):
        raise ValueError(f"{where}: no position table{f' and Eva tensors ({eva[0]!r})' if eva else ''}, so a rotary "
                         f"encoding whose conventions are not in the tensors; put its config.json (architecture, "
                         f"model_args) beside the weights")
    pretrained_cfg = dict(config.get("pretrained_cfg") or {})
    width, channels, ph, pw = state["patch_embed.proj.weight"].shape
    stem = _resnet_stem(state, where)
    if stem:  # the patch embedding reads the stem's feature map: the image's channels are the stem's
        channels = state[STEM + _stem_root(state) + "conv.weight"].shape[1]
    depth = 1 + max(int(m.group(1)) for k in state if (m := re.match(r"blocks\.(\d+)\.", k)))
    has_cls = "cls_token" in state
    prefix = has_cls + ("dist_token" in state)  # DeiT's distillation token follows the class token
    registers = int(state["reg_token"].shape[1]) if "reg_token" in state else 0
    # Eva's attention pooling attends over every token; a VisionTransformer's over the patch tokens only, unless
    # pool_include_prefix
    eva_class = bool(rope or eva) or any(k in args for k in ("use_rot_pos_emb", "use_abs_pos_emb", "num_reg_tokens"))
    classifier = _classifier(state, config, args, has_cls, where, pool_includes_prefix=eva_class)
    options: dict[str, Any] = dict(
        num_classes=int(state["head.weight"].shape[0]) if "head.weight" in state else None,
        patch_size=(int(ph), int(pw)), hidden_size=int(width), num_layers=depth,
        mlp_dim=int(state["blocks.0.mlp.fc2.weight"].shape[1]), gated_mlp=gated,
        mlp_norm="blocks.0.mlp.norm.weight" in state, attention_norm="blocks.0.attn.norm.weight" in state,
        rms_norm=_norm_kind(args.get("norm_layer")) == "RmsNorm", proj_bias="blocks.0.attn.proj.bias" in state,
        num_heads=_num_heads(args, int(width), name, where),
        classifier=classifier, gelu_approximate=args.get("act_layer") == "gelu_tanh",
        quick_gelu=_quick_gelu(name, args), layer_norm_epsilon=_layer_norm_epsilon(name, args, where),
        layer_scale=1e-5 if "blocks.0.ls1.gamma" in state or "blocks.0.gamma_1" in state else None,
        layer_scale_attention_only=(any(f"blocks.0.{n}" in state for n in ("ls1.gamma", "gamma_1"))
                                    and not any(f"blocks.0.{n}" in state for n in ("ls2.gamma", "gamma_2"))),
        qk_norm="blocks.0.attn.q_norm.weight" in state, relative_position_bias=relative,
        **({"relative_position_resize": args["rel_pos_resize"]} if relative and "rel_pos_resize" in args else {}),
        pre_norm="norm_pre.weight" in state, patch_bias="patch_embed.proj.bias" in state,
        embedding_norm="patch_embed.norm.weight" in state,
        qkv_bias=any(f"blocks.0.attn.{b}" in state for b in ("qkv.bias", "q_bias", "q_proj.bias")),
        fc_norm="fc_norm.weight" in state, final_norm="norm.weight" in state or "fc_norm.weight" in state,
        # older timm's (and transformers' ViT pooler's) representation layer: Dense + tanh
        representation_size=int(state[PRE_LOGITS + ".weight"].shape[0]) if PRE_LOGITS + ".weight" in state else None,
        num_registers=registers,
        posemb="learn" if "pos_embed" in state else "factorized" if FACTORIZED[0] in state else "none",
        **_posemb_resizing(args, factorized=FACTORIZED[0] in state, where=where),
    )
    if kv := _kv_heads(state, depth, options["num_heads"]):
        options["num_kv_heads"] = kv
    if args.get("dynamic_img_pad"):  # bottom / right to a multiple of the patch
        options["pad"] = "zeros"
    options.update(rope)
    options.update(stem)
    stride = stem_stride(stem.get("resnet_num_layers"))
    pixel_patch = (int(ph) * stride, int(pw) * stride)
    image_size = _image_size(args, pretrained_cfg, state, pixel_patch, prefix + registers, where)
    grid = _grid(image_size, (int(ph), int(pw)), stem.get("resnet_num_layers"))
    no_embed_class = False
    if "pos_embed" in state:
        rows, patches = state["pos_embed"].shape[1], grid[0] * grid[1]
        if rows not in (patches, patches + prefix + registers):
            raise ValueError(f"{where}: the position table has {rows} rows; a {image_size[0]}x{image_size[1]} image "
                             f"in {ph}x{pw} patches has {patches} (+ {prefix + registers} prefix tokens)")
        no_embed_class = rows == patches and prefix + registers > 0
        options["posemb_grid"] = grid
    if FACTORIZED[0] in state:
        lengths = tuple(int(state[name].shape[1]) for name in FACTORIZED)
        if lengths != grid:
            raise ValueError(f"{where}: factorized tables of {lengths[0]} rows and {lengths[1]} columns; a "
                             f"{image_size[0]}x{image_size[1]} image in {ph}x{pw} patches is a {grid[0]}x{grid[1]} grid")
        options["posemb_grid"] = grid
    if gated and classifier in ("map", "token_map"):
        raise ValueError(f"{where}: an attention-pooling head in a SwiGLU model (timm's head MLP is a plain one with "
                         f"the model's SiLU); vit_jax's MAP head has a GELU MLP")
    if relative:
        _check_relative_table(state["blocks.0.attn.relative_position_bias_table"], grid, has_cls, where)
    if classifier in ("map", "token_map"):  # its own heads (timm's attn_pool_num_heads) and MLP width
        pool_heads = int(args.get("attn_pool_num_heads") or options["num_heads"])
        pool_mlp = int(state["attn_pool.mlp.fc1.weight"].shape[0])
        options.update(map_num_heads=None if pool_heads == options["num_heads"] else pool_heads,
                       map_mlp_dim=None if pool_mlp == options["mlp_dim"] else pool_mlp)
    arch = TimmArchitecture(name, options, image_size, int(channels), no_embed_class, pretrained_cfg,
                            any_resolution="pos_embed_grid_size" in args)
    try:
        unread = _unread_tensors(state, arch)
    except KeyError as error:
        missing = str(error.args[0])
        why = ("a bias there (its bias-free norms are RMSNorms, and its projections without bias are the attention "
               "output's and the MLP's together: proj_bias=False)" if missing.endswith(".bias") else "it")
        raise ValueError(f"{where}: no tensor {missing!r}; vit_jax's ViT needs {why}") from None
    if unread:
        listed = ", ".join(unread[:4]) + (f" and {len(unread) - 4} more" if len(unread) > 4 else "")
        raise ValueError(f"{where}: tensors vit_jax's ViT has no place for ({listed}): {name or 'this model'} has "
                         f"parts vit_jax does not run")
    return arch


class _Reads(dict):
    """A state dict that remembers which tensors were read."""

    def __init__(self, tensors: Mapping[str, np.ndarray]):
        super().__init__(tensors)
        self.read: set[str] = set()

    def __getitem__(self, key: str) -> np.ndarray:
        self.read.add(key)
        return super().__getitem__(key)

    def get(self, key: str, default: Any = None) -> Any:
        if key in self:
            self.read.add(key)
        return super().get(key, default)


def _unread_tensors(state: Mapping[str, np.ndarray], arch: TimmArchitecture) -> list[str]:
    """The tensors `params_from_timm` leaves unread (`blocks.N.` for any block), mapped over zero-byte stand-ins:
    each is a part of the model vit_jax would silently drop (CaiT's class-attention blocks, relative-position
    MLPs, BEiT's biases, a hybrid's ResNet, ...)."""
    stand_ins = _Reads({k: np.broadcast_to(np.float32(0), np.shape(v)) for k, v in state.items()})
    _params(stand_ins, arch)
    return sorted({re.sub(r"^blocks\.\d+\.", "blocks.N.", k) for k in state if k not in stand_ins.read})


def params_from_timm(state: Mapping[str, np.ndarray], arch: TimmArchitecture) -> dict[str, Any]:
    """timm tensors -> vit_jax's parameter tree (per-layer encoder blocks), float32 numpy."""
    return _params(_Reads({k: np.asarray(v, np.float32) for k, v in state.items()}), arch)


def architecture_args(name: str, config: Mapping[str, Any]) -> dict[str, Any]:
    """The keyword arguments timm built `name` with: its architecture's own (timm_architectures.json, written
    from timm by scripts/timm_architecture_defaults.py: what `config.json` does not record), then `model_args`."""
    return {**_architecture_defaults().get(name.split(".")[0], {}), **(config.get("model_args") or {})}


@functools.cache
def _architecture_defaults() -> dict[str, dict[str, Any]]:
    return json.loads((Path(__file__).parent / "timm_architectures.json").read_text())


def _gated_mlp(state: Mapping[str, np.ndarray], args: Mapping[str, Any], name: str, where: str) -> bool:
    """Whether the blocks' MLPs are SwiGLU: timm's `SwiGLU` (`fc1_g`, `fc1_x`), or one `fc1` of twice `fc2`'s inputs,
    the gate's half first (`SwiGLUPacked`, DINOv2-g; Eva's `swiglu_mlp` without alignment). Eva's gate is always
    SiLU; a VisionTransformer's is its `act_layer`."""
    model = name or "this model"
    gate = "SiLU" if args.get("swiglu_mlp") else _activation(args)
    if "blocks.0.mlp.fc1_g.weight" in state:
        if gate != "SiLU":
            raise ValueError(f"{where}: a gated MLP with {gate!r} gates ({model}); vit_jax's gated MLP is SwiGLU")
        return True
    fc1, fc2 = state.get("blocks.0.mlp.fc1.weight"), state.get("blocks.0.mlp.fc2.weight")
    if fc1 is None or fc2 is None or fc1.shape[0] == fc2.shape[1]:
        return False
    layer = args.get("mlp_layer")
    packed = args.get("swiglu_mlp") or (isinstance(layer, Mapping) and layer.get("name") == "GluMlp"
                                        and layer.get("gate_last") is False)
    if not packed or fc1.shape[0] != 2 * fc2.shape[1] or gate != "SiLU":
        raise ValueError(f"{where}: a gated MLP (mlp.fc1 has {fc1.shape[0]} outputs, mlp.fc2 {fc2.shape[1]} inputs) "
                         f"whose gating {model}'s arguments do not say is SwiGLU's (timm's SwiGLUPacked, Eva's "
                         f"swiglu_mlp); put its config.json beside the weights")
    return True


def _check_relative_table(table: np.ndarray, grid: tuple[int, int], has_cls: bool, where: str) -> None:
    """BEiT's flat table: `(2 gh - 1) (2 gw - 1)` offsets of the training grid, then the class token's three."""
    expected = (2 * grid[0] - 1) * (2 * grid[1] - 1) + 3
    if table.shape[0] != expected or not has_cls:
        raise ValueError(f"{where}: a relative position table of {table.shape[0]} rows"
                         f"{'' if has_cls else ' without a class token'}; BEiT's for a {grid[0]}x{grid[1]} grid has "
                         f"{expected} (the offsets, then the class token's three)")


def _resnet_stem(state: Mapping[str, np.ndarray], where: str) -> dict[str, Any]:
    """A hybrid's ResNet stem in timm's layout (`patch_embed.backbone`: its `ResNetV2` without pre-activation, the
    ViT paper's R50 / R26 / root-only stems, as timm ports them): vit_jax's `resnet_num_layers` (units per stage),
    `resnet_width_factor` and timm's epsilons. {} without a stem; other backbones (ResNet-D, MobileCLIP's) are
    refused."""
    names = [k[len(STEM):] for k in state if k.startswith(STEM)]
    if not names:
        return {}
    root = _stem_root(state)
    root_names = {root + n for n in ("conv.weight", "norm.weight", "norm.bias")}
    unit = re.compile(r"stages\.(\d+)\.blocks\.(\d+)\.(conv[123]|norm[123]|downsample\.(?:conv|norm))\.(weight|bias)")
    odd = next((n for n in names if n not in root_names and not unit.fullmatch(n)), None)
    if odd or not root_names <= set(names) or (not root and len(names) > 3):
        raise ValueError(f"{where}: a hybrid's CNN stem other than the ViT paper's ResNet (tensor "
                         f"{STEM + (odd or names[0])!r}); vit_jax's hybrids have timm's ResNetV2 stems (vit_*_r50_*, "
                         f"vit_*_r26_*, vit_tiny_r_*)")
    stages: dict[int, int] = {}
    for match in filter(None, map(unit.fullmatch, names)):
        stages[int(match[1])] = max(stages.get(int(match[1]), 0), int(match[2]) + 1)
    return dict(resnet_num_layers=tuple(stages[i] for i in range(len(stages))),
                resnet_width_factor=state[STEM + root + "conv.weight"].shape[0] / 64, resnet_numerics="timm")


def _kv_heads(state: Mapping[str, np.ndarray], depth: int, heads: int) -> int | tuple[int, ...] | None:
    """Grouped-query attention's key/value heads off the separate projections' rows (Sapiens2: per block): None
    where every block has as many as query heads, one count where all blocks share it."""
    if "blocks.0.attn.k_proj.weight" not in state:
        return None
    groups = [state[f"blocks.{i}.attn.q_proj.weight"].shape[0] // state[f"blocks.{i}.attn.k_proj.weight"].shape[0]
              for i in range(depth)]
    if all(g == 1 for g in groups):
        return None
    counts = tuple(heads // g for g in groups)
    return counts[0] if len(set(counts)) == 1 else counts


def _grid(image_size: tuple[int, int], patch: tuple[int, int], stem_layers: tuple[int, ...] | None
          ) -> tuple[int, int]:
    """The patch grid of an image: a hybrid's patches are on its stem's feature map (each side `ceil(side /
    stride)`: its strided layers pad 'SAME')."""
    feature = stem_output_hw(image_size, stem_layers)
    return feature[0] // patch[0], feature[1] // patch[1]


def _stem_root(state: Mapping[str, np.ndarray]) -> str:
    """Where the stem's root conv and norm are: `stem.` in a ResNetV2, nowhere deeper when the root alone is the
    backbone (`vit_tiny_r_s16_p8_*`)."""
    return "stem." if STEM + "stem.conv.weight" in state else ""


def _posemb_resizing(args: Mapping[str, Any], factorized: bool, where: str) -> dict[str, Any]:
    """How the table meets another grid in the forward pass, as timm resizes it: NaFlexVit's `pos_embed_*`
    settings (its factorized tables: 1-D linear, never antialiased), else `resample_abs_pos_embed`'s bicubic with
    antialiasing (timm's dynamic image size, and its loading at another resolution). The layouts read as timm's
    say their own rule in the same arguments (transformers', DINOv2's `interpolate_offset`)."""
    if factorized:
        return dict(posemb_resize="bilinear", posemb_antialias=False,
                    posemb_aspect_preserving=bool(args.get("pos_embed_ar_preserving", False)))
    mode = args.get("pos_embed_interp_mode", "bicubic")
    align, antialias = bool(args.get("pos_embed_align_corners", False)), bool(args.get("pos_embed_antialias", True))
    if mode not in ("bilinear", "bicubic") or (align and (mode != "bilinear" or antialias)):
        raise ValueError(f"{where}: position tables resized by {mode!r} (align_corners={align}, antialias="
                         f"{antialias}); vit_jax resizes by half-pixel 'bilinear' or 'bicubic' (antialiased or not), "
                         f"or 'bilinear' with align_corners and no antialiasing")
    options: dict[str, Any] = dict(posemb_resize="bilinear_align_corners" if align else mode)
    if not antialias:
        options["posemb_antialias"] = False
    if args.get("pos_embed_ar_preserving"):
        options["posemb_aspect_preserving"] = True
    if args.get("interpolate_offset"):  # DINOv2's own (dinov2_layout)
        options["posemb_resize_offset"] = float(args["interpolate_offset"])
    return options


def _activation(args: Mapping[str, Any]) -> str:
    """`act_layer` as timm_architectures.json names it: SiLU by its class name, as timm's entrypoints pass it,
    also where a config.json's `model_args` say `silu` / `swish` (timm's names for `get_act_layer`)."""
    act = args.get("act_layer") or "gelu"
    return "SiLU" if str(act).lower() in ("silu", "swish") else act


def _check_what_tensors_cannot_say(args: Mapping[str, Any], name: str, where: str, gated: bool) -> None:
    """Refuses what leaves no tensor of its own but changes the model: the activation, the block's wiring, the
    norm's kind (pooling that includes prefix tokens: `_classifier`)."""
    model = name or "this model"
    act = args.get("act_layer") or "gelu"
    if act not in ("gelu", "gelu_tanh", "quick_gelu") and not (gated and _activation(args) == "SiLU"):
        raise ValueError(f"{where}: the activation {act!r} of {model}; vit_jax's MLP has GELU (exact or tanh), "
                         f"QuickGELU, or SwiGLU's SiLU gates")
    if args.get("block_fn") not in (None, "Block"):
        raise ValueError(f"{where}: timm's {args['block_fn']} blocks ({model}); vit_jax's block is the pre-norm "
                         f"residual one (timm's Block)")
    kinds = {_norm_kind(args.get("norm_layer")) or "LayerNorm"}
    if args.get("embed_norm_layer"):
        kinds.add(_norm_kind(args["embed_norm_layer"]))
    for norm in (args.get("norm_layer"), args.get("embed_norm_layer")):
        kind = _norm_kind(norm)
        biased = not isinstance(norm, Mapping) or norm.get("bias", kind == "LayerNorm")
        if kind not in (None, "LayerNorm", "RmsNorm") or (kind == "LayerNorm" and not biased):
            raise ValueError(f"{where}: {kind}{'' if biased else ' without bias'} norms ({model}); vit_jax's are "
                             f"LayerNorms or RMSNorms")
    if len(kinds) > 1:
        raise ValueError(f"{where}: {' and '.join(sorted(kinds))} norms in one model ({model}); vit_jax's norms are "
                         f"all of one kind (rms_norm)")


def _norm_kind(norm: Any) -> str | None:
    """timm's norm class name: timm_architectures.json's `{"name": ...}`, or `model_args`' string for
    `get_norm_layer` ('layernorm', 'rmsnorm')."""
    if isinstance(norm, Mapping):
        return norm.get("name")
    if isinstance(norm, str):
        return {"layernorm": "LayerNorm", "rmsnorm": "RmsNorm"}.get(norm.lower(), norm)
    return None


def _layer_norm_epsilon(name: str, args: Mapping[str, Any], where: str) -> float:
    """The norm's epsilon where timm's arguments say it; else by family (CLIP and DINOv3: PyTorch's 1e-5)."""
    norm = args.get("norm_layer")
    if isinstance(norm, Mapping) and "eps" in norm:
        return float(norm["eps"])
    clip = "_clip_" in name and not name.startswith("eva")  # Eva's LayerNorms have timm's 1e-6 by default
    return 1e-5 if clip or rope_family(name, args, where) == DINOV3 else 1e-6


def _classifier(state: Mapping[str, np.ndarray], config: Mapping[str, Any], args: Mapping[str, Any], has_cls: bool,
                where: str, pool_includes_prefix: bool) -> str:
    if "dist_token" in state:
        if not has_cls or args.get("global_pool", "token") != "token" or "reg_token" in state:
            raise ValueError(f"{where}: a distillation token without a class token, with registers or with "
                             f"global_pool {args.get('global_pool')!r}; DeiT's reads both tokens (global_pool 'token')")
        return "token_distilled"
    if "attn_pool.latent" in state:
        if state["attn_pool.latent"].shape[1] != 1:
            raise ValueError(f"{where}: an attention-pooling head with {state['attn_pool.latent'].shape[1]} latent "
                             f"queries; vit_jax's MAP head has one")
        if not (pool_includes_prefix or args.get("pool_include_prefix")):  # the patch tokens only
            if has_cls:
                raise ValueError(f"{where}: an attention-pooling head over the patch tokens beside a class token; "
                                 f"vit_jax's MAP head pools models without one, or every token (token_map)")
            return "map"
        if "reg_token" in state:  # the head attends over them; vit_jax's encoder hands on no registers
            raise ValueError(f"{where}: an attention-pooling head over register tokens too; vit_jax's MAP head pools "
                             f"the class and patch tokens")
        return "token_map" if has_cls else "map"  # over the class token too: Perception Encoder's core models
    if args.get("pool_include_prefix"):
        raise ValueError(f"{where}: pooling over the prefix tokens too (pool_include_prefix) is not one of vit_jax's "
                         f"classifiers")
    pool = args.get("global_pool", config.get("global_pool", "token" if has_cls else "avg"))
    if pool == "token_and_gap" and has_cls:  # not timm's: transformers' DINOv2 classifiers (transformers_layout)
        return pool
    if pool == "token":
        if not has_cls:
            raise ValueError(f"{where}: global_pool 'token' without a class token")
        return "token"
    if pool == "avg":
        return "token_gap" if has_cls else "gap"
    if pool == "" and not args.get("num_classes", 1):
        return "token_unpooled" if has_cls else "unpooled"
    raise ValueError(f"{where}: global_pool {pool!r} {'with' if has_cls else 'without'} a class token is not one of "
                     f"vit_jax's classifiers (token, avg, map)")


def _num_heads(args: Mapping[str, Any], width: int, name: str, where: str) -> int:
    if "num_heads" in args:
        return int(args["num_heads"])
    if width in HEADS_BY_WIDTH:
        return HEADS_BY_WIDTH[width]
    raise ValueError(f"{where}: the number of attention heads of {name or 'this'} width-{width} ViT is neither in "
                     f"a config.json's model_args nor known for a standard timm size; put a config.json with "
                     f'{{"model_args": {{"num_heads": H}}}} beside the weights')


def _quick_gelu(name: str, args: Mapping[str, Any]) -> bool:
    return "quickgelu" in name or args.get("act_layer") == "quick_gelu"


def _image_size(args: Mapping[str, Any], pretrained_cfg: Mapping[str, Any], state: Mapping[str, np.ndarray],
                patch: tuple[int, int], num_prefix: int, where: str) -> tuple[int, int]:
    """The training resolution: `model_args.img_size`, else `pretrained_cfg.input_size`, else the square grid of
    the position table."""
    size = args.get("img_size") or (pretrained_cfg.get("input_size") or [None])[1:]
    if size:
        return (int(size), int(size)) if isinstance(size, int | float) else (int(size[0]), int(size[-1]))
    if "pos_embed" not in state:
        raise ValueError(f"{where}: no image size in a config.json and no position table to read it from; put a "
                         f'config.json with {{"model_args": {{"img_size": [H, W]}}}} beside the weights')
    rows = state["pos_embed"].shape[1]
    for patch_rows in (rows, rows - num_prefix):
        side = math.isqrt(patch_rows)
        if side * side == patch_rows:
            return side * patch[0], side * patch[1]
    raise ValueError(f"{where}: the position table's {rows} rows are not a square grid; put a config.json with "
                     f'{{"model_args": {{"img_size": [H, W]}}}} beside the weights')


def _params(w: _Reads, arch: TimmArchitecture) -> dict[str, Any]:
    o = arch.options
    heads, width = o["num_heads"], o["hidden_size"]
    encoder: dict[str, Any] = {}
    for i in range(o["num_layers"]):
        encoder[BLOCK.format(i)] = _block_from_timm(w, f"blocks.{i}.", heads, o, arch.grid)
        if "rope.freqs" in w:  # rope_mixed: (2, depth, heads, pairs), each block's (x, y) frequencies
            encoder[BLOCK.format(i)]["rope_frequencies"] = w["rope.freqs"][:, i]
    rms = o["rms_norm"]
    if o["final_norm"] and not o["fc_norm"]:
        encoder["encoder_norm"] = norm_params(w, "norm", rms)
    if o["pre_norm"]:
        encoder["pre_norm"] = norm_params(w, "norm_pre", rms)
    params: dict[str, Any] = {"embedding": {"kernel": w["patch_embed.proj.weight"].transpose(2, 3, 1, 0)},
                              ENCODER: encoder, **_stem_params(w, o.get("resnet_num_layers"))}
    if o["patch_bias"]:
        params["embedding"]["bias"] = w["patch_embed.proj.bias"]
    if o["embedding_norm"]:
        params["embedding"]["embedding_norm"] = norm_params(w, "patch_embed.norm", rms)
    prefix = num_prefix_tokens(o["classifier"])
    if prefix:
        params["cls"] = w["cls_token"]
    if prefix == 2:
        params["dist"] = w["dist_token"]
    registers = w.get("reg_token")
    if "pos_embed" in w:
        table = w["pos_embed"]
        if arch.no_embed_class:  # the class token gets no position: a zero row
            table = np.concatenate([np.zeros_like(table[:, :prefix]), table], axis=1)
        elif registers is not None:  # register rows are constants added to constant tokens: fold them in
            r = registers.shape[1]
            registers = registers + table[:, prefix:prefix + r]
            table = np.concatenate([table[:, :prefix], table[:, prefix + r:]], axis=1)
        encoder["posembed_input"] = {"pos_embedding": table}
    elif FACTORIZED[0] in w:  # NaFlexVit's row and column tables (naflex_layout)
        encoder["posembed_input"] = {"pos_embedding_row": w[FACTORIZED[0]][0], "pos_embedding_col": w[FACTORIZED[1]][0]}
    if registers is not None:
        encoder["registers"] = registers
    if o["fc_norm"]:
        params["fc_norm"] = norm_params(w, "fc_norm", rms)
    if o["classifier"] in ("map", "token_map"):
        params[MAP_HEAD] = _map_head_from_timm(w, o.get("map_num_heads") or heads, width)
    if o.get("representation_size") is not None:
        params["pre_logits"] = dense_params(w, PRE_LOGITS)
    for head in ("head", "head_dist"):
        if f"{head}.weight" in w:
            params[head] = dense_params(w, head)
    return params


def _stem_params(w: Mapping[str, np.ndarray], num_layers: tuple[int, ...] | None) -> dict[str, Any]:
    """timm's ResNetV2 stem in vision_transformer's names: `conv_root`, `gn_root`, `block{i}/unit{j}/conv1..3,
    gn1..3, conv_proj, gn_proj` (convolutions `(out, in, kh, kw)` -> `(kh, kw, in, out)`)."""
    if num_layers is None:
        return {}
    conv = lambda name: {"kernel": w[STEM + name + ".weight"].transpose(2, 3, 1, 0)}
    norm = lambda name: {"scale": w[STEM + name + ".weight"], "bias": w[STEM + name + ".bias"]}
    root = _stem_root(w)
    params: dict[str, Any] = {"conv_root": conv(root + "conv"), "gn_root": norm(root + "norm")}
    for i, units in enumerate(num_layers):
        stage = {}
        for j in range(units):
            b = f"stages.{i}.blocks.{j}."
            unit = {f"{kind}{k}": (conv if kind == "conv" else norm)(f"{b}{'conv' if kind == 'conv' else 'norm'}{k}")
                    for k in (1, 2, 3) for kind in ("conv", "gn")}
            if STEM + b + "downsample.conv.weight" in w:
                unit.update(conv_proj=conv(b + "downsample.conv"), gn_proj=norm(b + "downsample.norm"))
            stage[f"unit{j + 1}"] = unit
        params[f"block{i + 1}"] = stage
    return params


def norm_params(w: Mapping[str, np.ndarray], name: str, rms: bool = False) -> dict[str, np.ndarray]:
    """A LayerNorm's `scale` and `bias`; an RMSNorm's `scale`."""
    return {"scale": w[f"{name}.weight"]} if rms else {"scale": w[f"{name}.weight"], "bias": w[f"{name}.bias"]}


def dense_params(w: Mapping[str, np.ndarray], name: str, bias: bool = True) -> dict[str, np.ndarray]:
    kernel = {"kernel": w[f"{name}.weight"].T}
    return {**kernel, "bias": w[f"{name}.bias"]} if bias else kernel


def heads_in(weight: np.ndarray, bias: np.ndarray | None, heads: int) -> dict[str, np.ndarray]:
    """A `(H * hd, D)` projection onto heads: kernel `(D, H, hd)`, bias `(H, hd)`."""
    out = {"kernel": weight.T.reshape(weight.shape[1], heads, -1)}
    if bias is not None:
        out["bias"] = bias.reshape(heads, -1)
    return out


def heads_out(w: Mapping[str, np.ndarray], name: str, heads: int, bias: bool = True) -> dict[str, np.ndarray]:
    """A `(D, H * hd)` projection from heads: kernel `(H, hd, D)`."""
    weight = w[f"{name}.weight"]
    kernel = {"kernel": weight.T.reshape(heads, -1, weight.shape[0])}
    return {**kernel, "bias": w[f"{name}.bias"]} if bias else kernel


def _block_from_timm(w: Mapping[str, np.ndarray], b: str, heads: int, o: Mapping[str, Any], grid: tuple[int, int]
                     ) -> dict[str, Any]:
    qkv_w, qkv_b = _qkv(w, b + "attn.")
    group = qkv_w[0].shape[0] // qkv_w[1].shape[0]  # grouped-query attention: fewer key/value heads
    attention = {name: heads_in(qkv_w[j], qkv_b[j], heads // (group if j else 1))
                 for j, name in enumerate(("query", "key", "value"))}
    attention["out"] = heads_out(w, b + "attn.proj", heads, o["proj_bias"])
    rms = o["rms_norm"]
    if b + "attn.norm.weight" in w:
        attention["LayerNorm_0"] = norm_params(w, b + "attn.norm", rms)
    if o["relative_position_bias"]:  # timm's flat (offsets row-major, then the class token's three, heads)
        table = w[b + "attn.relative_position_bias_table"]
        attention["relative_position_bias"] = table[:-3].reshape(2 * grid[0] - 1, 2 * grid[1] - 1, heads)
        attention["relative_position_bias_prefix"] = table[-3:]
    if o["qk_norm"]:
        attention["query_norm"] = norm_params(w, b + "attn.q_norm", rms)
        attention["key_norm"] = norm_params(w, b + "attn.k_norm", rms)
    block = {"LayerNorm_0": norm_params(w, b + "norm1", rms), ATTENTION: attention,
             "LayerNorm_1": norm_params(w, b + "norm2", rms), "MlpBlock_0": _mlp_from_timm(w, b + "mlp.", o)}
    for j, (timm_name, eva_name) in enumerate((("ls1.gamma", "gamma_1"), ("ls2.gamma", "gamma_2"))):
        if b + timm_name in w or b + eva_name in w:
            block[f"LayerScale_{j}"] = {"scale": w.get(b + timm_name, w.get(b + eva_name))}
    return block


def _mlp_from_timm(w: Mapping[str, np.ndarray], m: str, o: Mapping[str, Any]) -> dict[str, Any]:
    """`fc1`, `fc2` (and `norm` between them); SwiGLU's gate and value from `fc1_g`, `fc1_x`, or a packed `fc1`'s
    two halves (gate first)."""
    bias = o["proj_bias"]
    mlp = {"Dense_1": dense_params(w, m + "fc2", bias)}
    if m + "norm.weight" in w:
        mlp["LayerNorm_0"] = norm_params(w, m + "norm", o["rms_norm"])
    if m + "fc1_g.weight" in w:
        return {"Gate": dense_params(w, m + "fc1_g", bias), "Dense_0": dense_params(w, m + "fc1_x", bias), **mlp}
    fc1 = dense_params(w, m + "fc1", bias)
    if not o["gated_mlp"]:
        return {"Dense_0": fc1, **mlp}
    half = fc1["kernel"].shape[1] // 2
    return {"Gate": {name: value[..., :half] for name, value in fc1.items()},
            "Dense_0": {name: value[..., half:] for name, value in fc1.items()}, **mlp}


def _qkv(w: Mapping[str, np.ndarray], a: str) -> tuple[list[np.ndarray], list[np.ndarray | None]]:
    """Query, key and value weights `(H * hd, D)` and biases (None without): timm's fused `qkv` (+ `qkv.bias`),
    or Eva's fused `qkv` with `q_bias` / `v_bias` (the key's bias is zero), or Eva's `q_proj` / `k_proj` / `v_proj`."""
    if a + "q_proj.weight" in w:
        weights = [w[f"{a}{p}_proj.weight"] for p in "qkv"]
        biases = [w.get(f"{a}{p}_proj.bias") for p in "qkv"]
    else:
        weights = list(np.split(w[a + "qkv.weight"], 3))
        biases = list(np.split(w[a + "qkv.bias"], 3)) if a + "qkv.bias" in w else [w.get(a + "q_bias"), None,
                                                                                     w.get(a + "v_bias")]
    if biases[0] is not None and biases[1] is None:
        biases[1] = np.zeros_like(biases[0])
    if weights[1].shape != weights[2].shape or weights[0].shape[0] % weights[1].shape[0]:
        raise ValueError(f"{a}: keys of {weights[1].shape[0]} rows, values of {weights[2].shape[0]} and queries of "
                         f"{weights[0].shape[0]}: not grouped-query attention's whole groups of heads")
    return weights, biases


def _map_head_from_timm(w: Mapping[str, np.ndarray], heads: int, width: int) -> dict[str, Any]:
    kv_w = w["attn_pool.kv.weight"].reshape(2, -1, width)
    kv_b = w["attn_pool.kv.bias"].reshape(2, -1)
    attention = {"query": heads_in(w["attn_pool.q.weight"], w["attn_pool.q.bias"], heads),
                 "key": heads_in(kv_w[0], kv_b[0], heads), "value": heads_in(kv_w[1], kv_b[1], heads),
                 "out": heads_out(w, "attn_pool.proj", heads)}
    return {"probe": w["attn_pool.latent"], ATTENTION: attention, "LayerNorm_0": norm_params(w, "attn_pool.norm"),
            "MlpBlock_0": {"Dense_0": dense_params(w, "attn_pool.mlp.fc1"), "Dense_1": dense_params(w, "attn_pool.mlp.fc2")}}
