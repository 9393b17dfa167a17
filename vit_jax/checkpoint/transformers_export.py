"""A vit_jax model as a Hugging Face transformers checkpoint (`model.safetensors`, `config.json`,
`preprocessor_config.json`): `ViTForImageClassification` in the Hub layout of `google/vit-*`, DINOv2's
`Dinov2ForImageClassification` / `Dinov2WithRegistersForImageClassification`, or `SiglipForImageClassification`.

    python -m vit_jax.main --config=configs/digits.py --workdir=workdirs/digits
    python -m vit_jax.checkpoint.transformers_export --checkpoint=workdirs/digits --out=exported/digits_hf
    python -c "from transformers import AutoModelForImageClassification as A; A.from_pretrained('exported/digits_hf')"

The classifier picks the family. transformers' ViT (`classifier='token'`) is the original one: a class token read
by the head after the final LayerNorm, a learned table with the class token's row, biases everywhere, GELU (exact,
tanh or QuickGELU). Its DINOv2 (`'token_and_gap'`: the class token and the mean patch token side by side) is that
with layer scale (ones where vit_jax has none), optional registers (after the table is added, as vit_jax's) and an
MLP or SwiGLU (DINOv2-g's) of a width transformers' whole `mlp_ratio` gives. Its SigLIP classifier (`'gap'`, the
README's digits model) is the same blocks without a class token, the mean of the final LayerNorm's tokens. A fixed
sin-cos table (big_vision's plain ViTs) is written as the learned table of its values. DINOv2
and SigLIP have square images and patches (one side in their configs). A model with anything else (pre-norm, a MAP
head, RoPE, ...) is refused by name before anything is written; `vit_jax.checkpoint.timm_export` writes most of
those. The image processor's config says the evaluation view: the size, resampling, the mean and std that reproduce
vit_jax's value range, and a central crop where the model has one (transformers floors an odd margin's half where
timm rounds it: a timm checkpoint's view may move by a pixel). `vit_jax.checkpoint.transformers_layout` reads the
result back.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.checkpoint.timm_export import (
    at_export_grid,
    export_command,
    fixed_table_as_learned,
    params_to_timm,
    unit_mean_std,
    write_export,
)
from vit_jax.checkpoint.transformers_layout import PREPROCESSOR_CONFIG
from vit_jax.data.preprocessing import RESIZE_METHODS, Preprocess
from vit_jax.models.vit import VisionTransformer, token_grid

# what transformers' ViTForImageClassification runs: each option's only value there
PLAIN_VIT = dict(classifier="token", posemb="learn", representation_size=None, num_registers=0, layer_scale=None,
                 pre_norm=False, fc_norm=False, final_norm=True, gated_mlp=False, mlp_norm=False, attention_norm=False,
                 rms_norm=False, qk_norm=False, relative_position_bias=False, qkv_bias=True, proj_bias=True,
                 num_kv_heads=None, patch_norm=False, embedding_norm=False, pad="none", tubelet_size=None,
                 resnet_num_layers=None)
# DINOv2's: the same blocks with layer scale (any), registers (any number) and its classifier's pooling
DINOV2 = {**{k: v for k, v in PLAIN_VIT.items() if k not in ("num_registers", "layer_scale", "gated_mlp")},
          "classifier": "token_and_gap"}
# SigLIP's classifier: no class token, the mean of the final LayerNorm's tokens (vit_jax's gap: the README's model)
SIGLIP = {**PLAIN_VIT, "classifier": "gap"}
FAMILIES = {"token": ("ViT", PLAIN_VIT), "token_and_gap": ("DINOv2", DINOV2), "gap": ("SigLIP", SIGLIP)}
SQUARE = ("DINOv2", "SigLIP")  # families whose config has one side for the image and the patch


def check_exportable(model: VisionTransformer) -> str:
    """The transformers family `model` is written as ("ViT", "DINOv2" or "SigLIP"), or a ValueError naming what it
    lacks."""
    if model.classifier not in FAMILIES:
        raise ValueError(f"classifier={model.classifier!r}: transformers' ViT reads the class token (classifier="
                         f"'token'), its DINOv2 the class token and the mean patch token ('token_and_gap'), its "
                         f"SigLIP the mean token ('gap') (vit_jax.checkpoint.timm_export writes timm's layout, which "
                         f"has more)")
    family, options = FAMILIES[model.classifier]
    for option, value in options.items():
        if getattr(model, option) != value:
            raise ValueError(f"{option}={getattr(model, option)!r}: transformers' {family} has only {option}={value!r} "
                             f"(vit_jax.checkpoint.timm_export writes timm's layout, which has more)")
    if model.qkv_dim not in (None, model.hidden_size):
        raise ValueError(f"qkv_dim={model.qkv_dim}: transformers' {family} attends at its width {model.hidden_size}")
    if model.num_classes is None:
        raise ValueError(f"a model without a classification head: transformers' {family} classifier needs one")
    if family == "DINOv2":
        dinov2_mlp_ratio(model)
    if family in SQUARE and len(set(model.patch_size)) != 1:
        raise ValueError(f"patch_size={tuple(model.patch_size)}: transformers' {family} takes square patches")
    return family


def dinov2_mlp_ratio(model: VisionTransformer) -> int:
    """The integer `mlp_ratio` transformers' DINOv2 sizes `model`'s MLP from: `int(hidden_size x ratio)` units, or
    for SwiGLU (`use_swiglu_ffn`) two thirds of them rounded up to a multiple of 8 (DINOv2-g: 1536 x 4 -> 4096)."""
    def units(ratio: int) -> int:
        hidden = int(model.hidden_size * ratio)
        return (int(hidden * 2 / 3) + 7) // 8 * 8 if model.gated_mlp else hidden
    for ratio in range(1, 65):
        if units(ratio) == model.mlp_dim:
            return ratio
    kind = "SwiGLU MLP as two thirds of hidden_size x mlp_ratio, rounded up to a multiple of 8" if model.gated_mlp \
        else "MLP as hidden_size x mlp_ratio"
    raise ValueError(f"mlp_dim={model.mlp_dim}: transformers' DINOv2 sizes its {kind}, for a whole mlp_ratio; "
                     f"no ratio gives {model.mlp_dim} at hidden_size {model.hidden_size}")


def _check_square_grid(family: str, image_size: tuple[int, int]) -> None:
    if family in SQUARE and image_size[0] != image_size[1]:
        raise ValueError(f"image size {image_size[0]}x{image_size[1]}: transformers' {family} has square images "
                         f"(one side in its config); export a model of square images")


def transformers_config(model: VisionTransformer, image_size: tuple[int, int], channels: int,
                        class_names: tuple[str, ...]) -> dict[str, Any]:
    """config.json of `model`'s family: a `ViTForImageClassification`, a DINOv2 classifier (with registers where the
    model has them) or a `SiglipForImageClassification`."""
    activation = "quick_gelu" if model.quick_gelu else "gelu_pytorch_tanh" if model.gelu_approximate else "gelu"
    common = {
        "hidden_size": model.hidden_size, "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads, "hidden_act": activation,
        "layer_norm_eps": model.layer_norm_epsilon, "image_size": _side_or_pair(image_size),
        "patch_size": _side_or_pair(tuple(model.patch_size)), "num_channels": channels, "qkv_bias": True,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
        "id2label": {str(i): name for i, name in enumerate(class_names)},
        "label2id": {name: i for i, name in enumerate(class_names)},
    }
    family = check_exportable(model)
    if family == "ViT":
        return {"architectures": ["ViTForImageClassification"], "model_type": "vit", **common,
                "intermediate_size": model.mlp_dim}
    if family == "SigLIP":  # the two-tower config's image tower; the text tower's defaults are not written
        vision = {"model_type": "siglip_vision_model", "hidden_size": model.hidden_size,
                  "intermediate_size": model.mlp_dim, "num_hidden_layers": model.num_layers,
                  "num_attention_heads": model.num_heads, "num_channels": channels,
                  "image_size": image_size[0], "patch_size": model.patch_size[0], "hidden_act": activation,
                  "layer_norm_eps": model.layer_norm_epsilon, "attention_dropout": 0.0, "vision_use_head": False}
        return {"architectures": ["SiglipForImageClassification"], "model_type": "siglip", "vision_config": vision,
                "id2label": common["id2label"], "label2id": common["label2id"]}
    dinov2 = {**common, "mlp_ratio": dinov2_mlp_ratio(model), "layerscale_value": 1.0, "drop_path_rate": 0.0,
              "use_swiglu_ffn": model.gated_mlp}
    if model.num_registers:
        return {"architectures": ["Dinov2WithRegistersForImageClassification"],
                "model_type": "dinov2_with_registers", **dinov2, "num_register_tokens": model.num_registers}
    return {"architectures": ["Dinov2ForImageClassification"], "model_type": "dinov2", **dinov2}


def _side_or_pair(hw: tuple[int, int]) -> int | list[int]:
    """ViTConfig's way to say a size: one side when square."""
    return hw[0] if hw[0] == hw[1] else list(hw)


def processor_config(preprocess: Preprocess, channels: int) -> dict[str, Any]:
    """preprocessor_config.json: ViTImageProcessor's resize (squashed), or, with a central crop, the shorter side
    resized then the crop (BitImageProcessor's, DINOv2's and CLIP's view)."""
    if preprocess.crop_mode not in ("squash", "center") or (preprocess.crop_mode == "squash" and preprocess.crop_pct
                                                            != 1.0):
        raise ValueError(f"crop_mode={preprocess.crop_mode!r} with crop_pct={preprocess.crop_pct}: transformers' "
                         f"image processors squash or resize the shorter side and crop the centre")
    h, w = preprocess.image_size
    mean, std = unit_mean_std(preprocess, channels)
    config: dict[str, Any] = {
        "do_resize": True, "resample": int(RESIZE_METHODS[preprocess.resize_method]), "do_rescale": True,
        "rescale_factor": 1 / 255, "do_normalize": True, "image_mean": mean, "image_std": std,
    }
    if preprocess.crop_mode == "squash":
        return {**config, "image_processor_type": "ViTImageProcessor", "size": {"height": h, "width": w}}
    if h != w:
        raise ValueError(f"a central {h}x{w} crop: transformers' processors resize the shorter side to one length "
                         f"for a square crop")
    return {**config, "image_processor_type": "BitImageProcessor", "do_center_crop": True,
            "size": {"shortest_edge": math.floor(h / preprocess.crop_pct)}, "crop_size": {"height": h, "width": w},
            "do_convert_rgb": channels == 3}


def params_to_transformers(params: dict[str, Any], model: VisionTransformer) -> dict[str, np.ndarray]:
    """vit_jax's tree -> the transformers model's state dict (through timm's names, one rename each), in the
    names the Hub's files have (those `save_pretrained` writes)."""
    timm = params_to_timm(params, model)
    family = check_exportable(model)
    if family == "SigLIP":
        return _siglip_state(timm, model)
    dinov2 = family == "DINOv2"
    base = ("dinov2_with_registers" if model.num_registers else "dinov2") if dinov2 else "vit"
    table = timm["pos_embed"]
    if model.num_registers:  # timm's zero rows for the registers: transformers adds its table before them
        table = np.concatenate([table[:, :1], table[:, 1 + model.num_registers:]], axis=1)
    state = {f"{base}.embeddings.patch_embeddings.projection.weight": timm["patch_embed.proj.weight"],
             f"{base}.embeddings.patch_embeddings.projection.bias": timm["patch_embed.proj.bias"],
             f"{base}.embeddings.cls_token": timm["cls_token"], f"{base}.embeddings.position_embeddings": table,
             f"{base}.layernorm.weight": timm["norm.weight"], f"{base}.layernorm.bias": timm["norm.bias"],
             "classifier.weight": timm["head.weight"], "classifier.bias": timm["head.bias"]}
    if dinov2:  # masked image modelling's token: unused by the classifier, present in every DINOv2 file
        state[f"{base}.embeddings.mask_token"] = np.zeros((1, model.hidden_size), np.float32)
    if model.num_registers:
        state[f"{base}.embeddings.register_tokens"] = timm["reg_token"]
    mlp = ("weights_in", "weights_out") if model.gated_mlp else ("fc1", "fc2")  # SwiGLU: gate and value packed,
    # the gate's half first, in both layouts
    renamed = ({"norm1": "norm1", "attention.output.dense": "attn.proj", "norm2": "norm2", f"mlp.{mlp[0]}": "mlp.fc1",
                f"mlp.{mlp[1]}": "mlp.fc2"} if dinov2 else
               {"layernorm_before": "norm1", "attention.output.dense": "attn.proj", "layernorm_after": "norm2",
                "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"})
    state.update(_blocks(timm, model.num_layers, f"{base}.encoder.layer.{{}}.", renamed,
                         [f"attention.attention.{name}" for name in ("query", "key", "value")]))
    if dinov2:  # no layer scale in vit_jax: ones
        state.update({f"{base}.encoder.layer.{i}.layer_scale{k}.lambda1":
                      timm.get(f"blocks.{i}.ls{k}.gamma", np.ones(model.hidden_size))
                      for i in range(model.num_layers) for k in (1, 2)})
    return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


def _blocks(timm: dict[str, np.ndarray], num_layers: int, layer: str, renamed: dict[str, str],
            qkv: list[str]) -> dict[str, np.ndarray]:
    """Every block's tensors under transformers' names: `layer` (with `{}` for the index) + `renamed`'s keys for
    timm's names, and timm's packed `attn.qkv` split into the three `qkv` projections."""
    state = {}
    for i in range(num_layers):
        b, prefix = f"blocks.{i}.", layer.format(i)
        for kind in ("weight", "bias"):
            state.update({f"{prefix}{theirs}.{kind}": timm[f"{b}{ours}.{kind}"] for theirs, ours in renamed.items()})
            state.update({f"{prefix}{name}.{kind}": part
                          for name, part in zip(qkv, np.split(timm[f"{b}attn.qkv.{kind}"], 3))})
    return state


def _siglip_state(timm: dict[str, np.ndarray], model: VisionTransformer) -> dict[str, np.ndarray]:
    """SiglipForImageClassification's names (`vision_model.` and the classifier), from timm's."""
    tower = "vision_model."
    state = {tower + "embeddings.patch_embedding.weight": timm["patch_embed.proj.weight"],
             tower + "embeddings.patch_embedding.bias": timm["patch_embed.proj.bias"],
             tower + "embeddings.position_embedding.weight": timm["pos_embed"][0],
             tower + "post_layernorm.weight": timm["norm.weight"], tower + "post_layernorm.bias": timm["norm.bias"],
             "classifier.weight": timm["head.weight"], "classifier.bias": timm["head.bias"]}
    renamed = {"layer_norm1": "norm1", "self_attn.out_proj": "attn.proj", "layer_norm2": "norm2", "mlp.fc1": "mlp.fc1",
               "mlp.fc2": "mlp.fc2"}
    state.update(_blocks(timm, model.num_layers, tower + "encoder.layers.{}.", renamed,
                         [f"self_attn.{name}_proj" for name in "qkv"]))
    return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


def export_transformers(checkpoint: str, out: str | Path, step: int | None = None,
                        image_size: tuple[int, int] | None = None) -> Path:
    """Writes `out/model.safetensors`, `out/config.json` and `out/preprocessor_config.json` for the model of
    `checkpoint` (anything `load_trained_model` reads; `image_size` for an `.npz` file whose table does not say
    it). Checks everything before writing anything."""
    from vit_jax.checkpoint.hub import CONFIG
    from vit_jax.checkpoint.trained_model import load_trained_model

    trained = load_trained_model(checkpoint, step=step, image_size=image_size)
    image_size = tuple(trained.preprocess.image_size)
    token_grid(trained.model, image_size)  # the image size fits the patches
    model, params = fixed_table_as_learned(trained.model, trained.params, image_size)
    family = check_exportable(model)
    _check_square_grid(family, image_size)
    model, params = at_export_grid(model, params, image_size)
    config = transformers_config(model, image_size, trained.channels, tuple(trained.class_names))
    processor = processor_config(trained.preprocess, trained.channels)
    return write_export(out, params_to_transformers(params, model), {CONFIG: config, PREPROCESSOR_CONFIG: processor},
                        metadata={"format": "pt"})


def main(argv: list[str] | None = None) -> int:
    return export_command(argv, "vit_jax.checkpoint.transformers_export", __doc__, export_transformers,
                          ("model.safetensors", "config.json", PREPROCESSOR_CONFIG))


if __name__ == "__main__":
    sys.exit(main())
