"""A vit_jax model as a Hugging Face transformers checkpoint: `ViTForImageClassification` in the Hub layout of
`google/vit-*` (`model.safetensors`, `config.json`, `preprocessor_config.json`).

    python -m vit_jax.main --config=configs/digits.py --config.model.classifier=token --workdir=workdirs/digits_token
    python -m vit_jax.checkpoint.transformers_export --checkpoint=workdirs/digits_token --out=exported/digits_hf
    python -c "from transformers import ViTForImageClassification as V; m = V.from_pretrained('exported/digits_hf')"

transformers' ViT is the original one: a class token read by the head after the final LayerNorm, a learned table
with the class token's row, biases everywhere, GELU (exact, tanh or QuickGELU). A model with anything else (other
pooling, registers, layer scale, pre-norm, a MAP head, RoPE, ...) is refused by name before anything is written;
`vit_jax.checkpoint.timm_export` writes most of those. The image processor's config says the evaluation view: the
size, resampling, the mean and std that reproduce vit_jax's value range, and a central crop where the model has one
(transformers floors an odd margin's half where timm rounds it: a timm checkpoint's view may move by a pixel).
`vit_jax.checkpoint.transformers_layout` reads the result back.
"""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.checkpoint.timm_export import at_export_grid, export_command, params_to_timm, unit_mean_std
from vit_jax.checkpoint.transformers_layout import PREPROCESSOR_CONFIG
from vit_jax.data.preprocessing import RESIZE_METHODS, Preprocess
from vit_jax.models.vit import VisionTransformer, token_grid

# what transformers' ViTForImageClassification runs: each option's only value there
PLAIN_VIT = dict(classifier="token", posemb="learn", representation_size=None, num_registers=0, layer_scale=None,
                 pre_norm=False, fc_norm=False, final_norm=True, gated_mlp=False, mlp_norm=False, attention_norm=False,
                 rms_norm=False, qk_norm=False, relative_position_bias=False, qkv_bias=True, proj_bias=True,
                 num_kv_heads=None, patch_norm=False, embedding_norm=False, pad="none", tubelet_size=None,
                 resnet_num_layers=None)


def check_exportable(model: VisionTransformer) -> None:
    for option, value in PLAIN_VIT.items():
        if getattr(model, option) != value:
            raise ValueError(f"{option}={getattr(model, option)!r}: transformers' ViT has only {option}={value!r} "
                             f"(vit_jax.checkpoint.timm_export writes timm's layout, which has more)")
    if model.qkv_dim not in (None, model.hidden_size):
        raise ValueError(f"qkv_dim={model.qkv_dim}: transformers' ViT attends at its width {model.hidden_size}")
    if model.num_classes is None:
        raise ValueError("a model without a classification head: ViTForImageClassification needs one")


def transformers_config(model: VisionTransformer, image_size: tuple[int, int], channels: int,
                        class_names: tuple[str, ...]) -> dict[str, Any]:
    """config.json of a `ViTForImageClassification`."""
    activation = "quick_gelu" if model.quick_gelu else "gelu_pytorch_tanh" if model.gelu_approximate else "gelu"
    return {
        "architectures": ["ViTForImageClassification"], "model_type": "vit",
        "hidden_size": model.hidden_size, "num_hidden_layers": model.num_layers,
        "num_attention_heads": model.num_heads, "intermediate_size": model.mlp_dim, "hidden_act": activation,
        "layer_norm_eps": model.layer_norm_epsilon, "image_size": _side_or_pair(image_size),
        "patch_size": _side_or_pair(tuple(model.patch_size)), "num_channels": channels, "qkv_bias": True,
        "hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0, "initializer_range": 0.02,
        "id2label": {str(i): name for i, name in enumerate(class_names)},
        "label2id": {name: i for i, name in enumerate(class_names)},
    }


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
    """vit_jax's tree -> ViTForImageClassification's state dict (through timm's names, one rename each)."""
    timm = params_to_timm(params, model)
    state = {"vit.embeddings.patch_embeddings.projection.weight": timm["patch_embed.proj.weight"],
             "vit.embeddings.patch_embeddings.projection.bias": timm["patch_embed.proj.bias"],
             "vit.embeddings.cls_token": timm["cls_token"], "vit.embeddings.position_embeddings": timm["pos_embed"],
             "vit.layernorm.weight": timm["norm.weight"], "vit.layernorm.bias": timm["norm.bias"],
             "classifier.weight": timm["head.weight"], "classifier.bias": timm["head.bias"]}
    for i in range(model.num_layers):
        b, layer = f"blocks.{i}.", f"vit.encoder.layer.{i}."
        query, key, value = np.split(timm[b + "attn.qkv.weight"], 3)
        query_bias, key_bias, value_bias = np.split(timm[b + "attn.qkv.bias"], 3)
        renamed = {"layernorm_before": "norm1", "attention.output.dense": "attn.proj", "layernorm_after": "norm2",
                   "intermediate.dense": "mlp.fc1", "output.dense": "mlp.fc2"}
        for theirs, ours in renamed.items():
            state.update({f"{layer}{theirs}.{kind}": timm[f"{b}{ours}.{kind}"] for kind in ("weight", "bias")})
        for name, weight, bias in (("query", query, query_bias), ("key", key, key_bias), ("value", value, value_bias)):
            state[f"{layer}attention.attention.{name}.weight"] = weight
            state[f"{layer}attention.attention.{name}.bias"] = bias
    return {k: np.ascontiguousarray(v, np.float32) for k, v in state.items()}


def export_transformers(checkpoint: str, out: str | Path, step: int | None = None) -> Path:
    """Writes `out/model.safetensors`, `out/config.json` and `out/preprocessor_config.json` for the model of
    `checkpoint` (anything `load_trained_model` reads). Checks everything before writing anything."""
    from safetensors.numpy import save_file

    from vit_jax.checkpoint.hub import CONFIG, WEIGHTS
    from vit_jax.checkpoint.trained_model import load_trained_model

    trained = load_trained_model(checkpoint, step=step)
    check_exportable(trained.model)
    image_size = tuple(trained.preprocess.image_size)
    token_grid(trained.model, image_size)  # the image size fits the patches
    model, params = at_export_grid(trained.model, trained.params, image_size)
    config = transformers_config(model, image_size, trained.channels, tuple(trained.class_names))
    processor = processor_config(trained.preprocess, trained.channels)
    state = params_to_transformers(params, model)
    out = Path(out).expanduser()
    out.mkdir(parents=True, exist_ok=True)
    save_file(state, str(out / WEIGHTS), metadata={"format": "pt"})
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    (out / PREPROCESSOR_CONFIG).write_text(json.dumps(processor, indent=2) + "\n")
    return out


def main(argv: list[str] | None = None) -> int:
    return export_command(argv, "vit_jax.checkpoint.transformers_export", __doc__, export_transformers,
                          ("model.safetensors", "config.json", PREPROCESSOR_CONFIG))


if __name__ == "__main__":
    sys.exit(main())
