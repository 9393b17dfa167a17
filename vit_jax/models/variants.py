"""Named model sizes ("Ti/16", "B/32", "S/8x16", hybrids "R50+B/16", ...) and `create_model`, the one way configs
build a ViT."""

from __future__ import annotations

import re
from typing import Any, NamedTuple

from vit_jax.models.navit import NaViT
from vit_jax.models.patching import as_patch_size
from vit_jax.models.vit import MODEL_OPTIONS, VisionTransformer


class Size(NamedTuple):
    hidden_size: int
    num_layers: int
    mlp_dim: int
    num_heads: int


# Width / depth / MLP / heads of the ViT paper (Ti, S from DeiT/AugReg) and big_vision's extra sizes.
SIZES: dict[str, Size] = {
    "mu": Size(32, 1, 128, 2),
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


def nearest_variant(hidden_size: int, patch_size: tuple[int, int]) -> str:
    """A variant name for sizes read off a checkpoint ("S/14"): the size of that width (B where no size has it);
    the checkpoint's own options set every size exactly anyway."""
    by_width = {size.hidden_size: name for name, size in SIZES.items()}
    ph, pw = patch_size
    return f"{by_width.get(hidden_size, 'B')}/{ph}" + (f"x{pw}" if pw != ph else "")


# The ViT paper's ResNet stems (`resnet_num_layers`) by name, then by stride. A hybrid's patch is in image pixels,
# as for plain variants: the stem takes the largest stride that divides it and the embedding cuts the rest, so
# "R50+B/16" is (3, 4, 9) with patch 1 (vision_transformer's R50+ViT-B_16) and "R50+L/32" is the real ResNet-50's
# (3, 4, 6, 3) with patch 1 (its R50+ViT-L_32).
RESNET_STEMS: dict[str, dict[int, tuple[int, ...]]] = {
    "R26": {32: (2, 2, 2, 2)},
    "R50": {16: (3, 4, 9), 32: (3, 4, 6, 3)},
}

_VARIANT = re.compile(r"^(?:(?P<stem>R\d+)\+)?(?P<size>[A-Za-z0-9]+)/(?P<ph>\d+)(?:x(?P<pw>\d+))?$")


def parse_variant(variant: str) -> dict[str, Any]:
    """`"B/16"` -> size fields and `patch_size=(16, 16)`; `"S/8x16"` -> `patch_size=(8, 16)` (height x width);
    `"R50+B/16"` -> B's sizes, `resnet_num_layers=(3, 4, 9)` and `patch_size=(1, 1)` on the stem's feature map."""
    match = _VARIANT.match(variant) if isinstance(variant, str) else None
    if not match:
        raise ValueError(
            f"variant must look like 'SIZE/PATCH' or 'SIZE/PHxPW' (e.g. 'B/16', 'S/8x16'), with an optional ResNet "
            f"stem in front ('R50+B/16'); got {variant!r}"
        )
    if match["size"] not in SIZES:
        raise ValueError(f"unknown model size {match['size']!r} in variant {variant!r}; valid sizes: {list(SIZES)}")
    ph = int(match["ph"])
    pw = int(match["pw"]) if match["pw"] else ph
    options = dict(SIZES[match["size"]]._asdict(), patch_size=as_patch_size((ph, pw)))
    if match["stem"]:
        options.update(_hybrid_options(match["stem"], (ph, pw), variant))
    return options


def _hybrid_options(stem: str, patch: tuple[int, int], variant: str) -> dict[str, Any]:
    """The stem's stages and the embedding's patch on its feature map, for a patch given in image pixels."""
    if stem not in RESNET_STEMS:
        raise ValueError(f"unknown ResNet stem {stem!r} in variant {variant!r}; valid stems: {list(RESNET_STEMS)}")
    fitting = [s for s in RESNET_STEMS[stem] if patch[0] % s == 0 and patch[1] % s == 0]
    if not fitting:
        strides = " or ".join(f"{s} with resnet_num_layers={n}" for s, n in RESNET_STEMS[stem].items())
        raise ValueError(f"variant {variant!r}: the {stem} stem downsamples by {strides}; the patch "
                         f"{patch[0]}x{patch[1]} (in image pixels) must be a multiple of that stride")
    stride = max(fitting)
    return dict(resnet_num_layers=RESNET_STEMS[stem][stride], patch_size=(patch[0] // stride, patch[1] // stride))


def create_model(variant: str, *, num_classes: int | None, packed: bool = False, **overrides: Any
                 ) -> VisionTransformer:
    """The ViT of a named variant; `overrides` set any `VisionTransformer` option, sizes included. `packed`: the
    NaViT over packed sequences (`vit_jax.models.navit`), same options and parameters.

    Example: `create_model("S/16", num_classes=10, posemb="sincos2d", classifier="gap", dtype=jnp.bfloat16)`.
    """
    unknown = sorted(set(overrides) - set(MODEL_OPTIONS))
    if unknown:
        raise ValueError(f"unknown model option(s) {unknown}; valid options: {sorted(MODEL_OPTIONS)}")
    options = {**parse_variant(variant), **overrides, "num_classes": num_classes}
    options["patch_size"] = as_patch_size(options["patch_size"])
    if isinstance(options.get("resnet_num_layers"), list):  # a saved (JSON) config's tuple comes back as a list
        options["resnet_num_layers"] = tuple(options["resnet_num_layers"])
    return (NaViT if packed else VisionTransformer)(**options)
