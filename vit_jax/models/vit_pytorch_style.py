"""vit-pytorch's constructor for vit_jax: `ViT(image_size=..., patch_size=..., num_classes=..., dim=..., ...)`.

For users coming from lucidrains/vit-pytorch: the same keyword arguments build the vit_jax model with the same
architecture, as a `VisionTransformer` (vision_transformer's parameter names, so checkpoints and every vit_jax tool
work with it). Differences to know:

- Inputs are channels-last `(B, H, W, C)` (JAX's convention), not `(B, C, H, W)`.
- The architecture is vit-pytorch 1.x's, parameter for parameter: LayerNorms before and after the patch projection
  (`patch_norm`, `embedding_norm`), no query/key/value bias (`qkv_bias=False`), LayerNorm epsilon 1e-5 (PyTorch's),
  exact (erf) GELU, `dropout` on the attention weights too. `vit_jax.checkpoint.vit_pytorch.load_vit_pytorch`
  loads a vit-pytorch `state_dict` into it. Any other vit_jax option goes through `**options`.
"""

from __future__ import annotations

from typing import Any

from vit_jax.models.patching import grid_shape
from vit_jax.models.vit import VisionTransformer

POOLS = {"cls": "token", "mean": "gap"}


def vit_pytorch_options(*, image_size: int | tuple[int, int], patch_size: int | tuple[int, int], num_classes: int,
                        dim: int, depth: int, heads: int, mlp_dim: int, pool: str = "cls", channels: int = 3,
                        dim_head: int = 64, dropout: float = 0.0, emb_dropout: float = 0.0) -> dict[str, Any]:
    """The `VisionTransformer` options for vit-pytorch's `ViT` arguments (for configs: `model_config(...)`).

    `channels` is checked, not stored: a vit_jax model takes its channel count from the images it is initialised
    with. The learned position table is stored at `image_size`'s grid (`posemb_grid`), so other sizes run too.
    """
    if pool not in POOLS:
        raise ValueError(f"pool must be 'cls' (class token) or 'mean' (mean pooling); got {pool!r}")
    if not isinstance(channels, int) or channels <= 0:
        raise ValueError(f"channels must be a positive int; got {channels!r}")
    if not isinstance(dim_head, int) or dim_head <= 0:
        raise ValueError(f"dim_head must be a positive int; got {dim_head!r}")
    if heads == 1 and dim_head == dim:
        raise ValueError(f"heads=1 with dim_head=dim={dim}: vit-pytorch then drops the attention's output "
                         f"projection, which vit_jax's attention always has; use another dim_head")
    size, patch = _pair("image_size", image_size), _pair("patch_size", patch_size)
    if size[0] % patch[0] or size[1] % patch[1]:
        raise ValueError(f"Image dimensions must be divisible by the patch size: image_size {size[0]}x{size[1]}, "
                         f"patch_size {patch[0]}x{patch[1]}")
    return dict(
        num_classes=num_classes, patch_size=patch, hidden_size=dim, num_layers=depth, num_heads=heads,
        mlp_dim=mlp_dim, classifier=POOLS[pool], qkv_dim=heads * dim_head, dropout_rate=dropout,
        attention_dropout_rate=dropout, embedding_dropout_rate=emb_dropout, gelu_approximate=False,
        posemb_grid=grid_shape(size, patch), qkv_bias=False, patch_norm=True, embedding_norm=True,
        layer_norm_epsilon=1e-5,
    )


def _pair(name: str, value: int | tuple[int, int]) -> tuple[int, int]:
    """vit-pytorch's `pair`: an int or an (h, w) pair, checked."""
    pair = (value, value) if isinstance(value, int) else tuple(value)
    if len(pair) != 2 or not all(isinstance(v, int) and v > 0 for v in pair):
        raise ValueError(f"{name} must be a positive int or a pair (height, width) of them; got {value!r}")
    return pair  # type: ignore[return-value]


def ViT(*, image_size: int | tuple[int, int], patch_size: int | tuple[int, int], num_classes: int, dim: int,
        depth: int, heads: int, mlp_dim: int, pool: str = "cls", channels: int = 3, dim_head: int = 64,
        dropout: float = 0.0, emb_dropout: float = 0.0, **options: Any) -> VisionTransformer:  # noqa: N802
    """vit-pytorch's `ViT(...)`, as a vit_jax `VisionTransformer`; `options` set any other vit_jax option.

    Example: `model = ViT(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16,
    mlp_dim=2048, dropout=0.1, emb_dropout=0.1)`, then `model.init(key, jnp.zeros((1, 256, 256, 3)), train=False)`.
    """
    arguments = vit_pytorch_options(
        image_size=image_size, patch_size=patch_size, num_classes=num_classes, dim=dim, depth=depth, heads=heads,
        mlp_dim=mlp_dim, pool=pool, channels=channels, dim_head=dim_head, dropout=dropout, emb_dropout=emb_dropout)
    return VisionTransformer(**{**arguments, **options})
