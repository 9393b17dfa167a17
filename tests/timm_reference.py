"""timm's ViTs (VisionTransformer and Eva: RoPE-ViT, DINOv3) as references: their weights as vit_jax's tree."""

from __future__ import annotations

import numpy as np

from vit_jax.timm_compat import import_timm


def perturb_timm(model, scale: float = 0.2):
    """`model` (eval mode) with Gaussian noise on every parameter, so zero-initialised ones come alive; layer scale
    (`gamma_*`, which timm's RoPE-ViTs and DINO models have) is set to 1, the plain ViT block."""
    import_timm()
    import torch

    torch.manual_seed(0)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.fill_(1.0) if "gamma" in name else p.add_(scale * torch.randn_like(p))
    return model.eval()


def vit_jax_logits(model, params, images: np.ndarray) -> np.ndarray:
    """`model` (a vit_jax ViT) on `images`, compiled as one program: a hybrid's ResNet stem run op by op compiles
    each of its hundreds of operations on its own, five times slower."""
    import jax

    return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, images))


def timm_logits(model, images: np.ndarray) -> np.ndarray:
    """`model` on NHWC float32 `images`."""
    import torch

    with torch.no_grad():
        return model(torch.from_numpy(images.transpose(0, 3, 1, 2))).numpy()


def timm_vit_params(model, num_layers: int, num_heads: int) -> dict:
    """A timm ViT's (or Eva's) weights as vit_jax's tree: `(out, in)` Linear weights transposed, the fused qkv split
    into heads, `reg_token` -> `Transformer/registers`, a `pos_embed` without prefix rows (`no_embed_class`) given a
    zero row per class token, `rope.freqs` `(2, depth, heads, pairs)` split into each block's `rope_frequencies`."""
    w = {k: v.detach().numpy() for k, v in model.state_dict().items()}
    width = w["patch_embed.proj.bias"].shape[0]
    head_dim = width // num_heads
    encoder: dict = {"encoder_norm": {"scale": w["norm.weight"], "bias": w["norm.bias"]}}
    for i in range(num_layers):
        b = f"blocks.{i}."
        qkv_w = w[b + "attn.qkv.weight"].reshape(3, num_heads, head_dim, width)
        qkv_b = w[b + "attn.qkv.bias"].reshape(3, num_heads, head_dim)
        attention = {name: {"kernel": qkv_w[j].transpose(2, 0, 1), "bias": qkv_b[j]}
                     for j, name in enumerate(("query", "key", "value"))}
        attention["out"] = {"kernel": w[b + "attn.proj.weight"].T.reshape(num_heads, head_dim, width),
                            "bias": w[b + "attn.proj.bias"]}
        mlp = {f"Dense_{j}": {"kernel": w[b + f"mlp.fc{j + 1}.weight"].T, "bias": w[b + f"mlp.fc{j + 1}.bias"]}
               for j in range(2)}
        encoder[f"encoderblock_{i}"] = {
            "LayerNorm_0": {"scale": w[b + "norm1.weight"], "bias": w[b + "norm1.bias"]},
            "MultiHeadDotProductAttention_0": attention,
            "LayerNorm_1": {"scale": w[b + "norm2.weight"], "bias": w[b + "norm2.bias"]},
            "MlpBlock_0": mlp,
        }
        if "rope.freqs" in w:
            encoder[f"encoderblock_{i}"]["rope_frequencies"] = w["rope.freqs"][:, i]
    if "reg_token" in w:
        encoder["registers"] = w["reg_token"]
    params = {"embedding": {"kernel": w["patch_embed.proj.weight"].transpose(2, 3, 1, 0),
                            "bias": w["patch_embed.proj.bias"]},
              "Transformer": encoder, "head": {"kernel": w["head.weight"].T, "bias": w["head.bias"]}}
    if "cls_token" in w:
        params["cls"] = w["cls_token"]
    if "pos_embed" in w:
        table = w["pos_embed"]
        if getattr(model, "no_embed_class", False) and "cls_token" in w:  # vit_jax's table has the class row
            table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
        encoder["posembed_input"] = {"pos_embedding": table}
    return params
