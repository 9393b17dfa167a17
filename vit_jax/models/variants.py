"""Named model sizes ("Ti/16", "B/32", "S/8x16", ...) and `create_model`, the one way configs build a ViT."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from vit_jax.models.patching import as_patch_size
from vit_jax.models.vit import MODEL_OPTIONS, VisionTransformer


class Size(NamedTuple):
    hidden_size: int
    num_layers: int
    mlp_dim: int
    num_heads: int


# Width / depth / MLP / heads of the ViT paper (Ti, S from DeiT/AugReg) and big_vision's extra sizes.
SIZES: dict[str, Size] = {
    "mu": Size(144, 6, 576, 2),
    "Ti": Size(192, 12, 768, 3),
    "S": Size(384, 12, 1536, 6),
    "M": Size(512, 12, 2048, 8),
    "B": Size(768, 12, 3072, 12),
    "L": Size(1024, 24, 4096, 16),
    "So400m": Size(1152, 27, 4304, 16),
    "H": Size(1280, 32, 5120, 16),
    "g": Size(1408, 40, 6144, 16),
    "G": Size(1664, 48, 8192, 16),
    "e": Size(1792, 56, 15360, 16),
}

_VARIANT = re.compile(r"^(?P<size>[A-Za-z0-9]+)/(?P<ph>\d+)(?:x(?P<pw>\d+))?$")


def parse_variant(variant: str) -> dict[str, Any]:
    """`"B/16"` -> size fields and `patch_size=(16, 16)`; `"S/8x16"` -> `patch_size=(8, 16)` (height x width)."""
    match = _VARIANT.match(variant) if isinstance(variant, str) else None
    if not match:
        raise ValueError(
            f"variant must look like 'SIZE/PATCH' or 'SIZE/PHxPW' (e.g. 'B/16', 'S/8x16'); got {variant!r}"
        )
    if match["size"] not in SIZES:
        raise ValueError(f"unknown model size {match['size']!r} in variant {variant!r}; valid sizes: {list(SIZES)}")
    ph = int(match["ph"])
    pw = int(match["pw"]) if match["pw"] else ph
    return dict(SIZES[match["size"]]._asdict(), patch_size=as_patch_size((ph, pw)))


def create_model(variant: str, *, num_classes: int | None, **overrides: Any) -> VisionTransformer:
    """The ViT of a named variant; `overrides` set any `VisionTransformer` option, sizes included.

    Example: `create_model("S/16", num_classes=10, posemb="sincos2d", classifier="gap", dtype=jnp.bfloat16)`.
    """
    unknown = sorted(set(overrides) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid options: {sorted(MODEL_OPTIONS)}")
    options = {**parse_variant(variant), **overrides, "num_classes": num_classes}
    options["patch_size"] = as_patch_size(options["patch_size"])
    return VisionTransformer(**options)
