"""Flax modules of the ViT, in the order data flows through them.

patching (image -> tokens; tubelet for videos) -> posemb (where each token is) -> encoder (transformer blocks)
-> heads (pooling) -> vit (the whole model) -> variants (named sizes and `create_model`).
"""

from vit_jax.models.encoder import stack_encoder_blocks, unstack_encoder_blocks
from vit_jax.models.patching import PatchEmbed, patchify, unpatchify
from vit_jax.models.posemb import AddPositionEmbs, sincos2d, sincos3d
from vit_jax.models.tubelet import TubeletEmbed
from vit_jax.models.variants import SIZES, create_model, parse_variant
from vit_jax.models.vit import MODEL_OPTIONS, VisionTransformer

__all__ = [
    "MODEL_OPTIONS",
    "SIZES",
    "AddPositionEmbs",
    "PatchEmbed",
    "TubeletEmbed",
    "VisionTransformer",
    "create_model",
    "parse_variant",
    "patchify",
    "sincos2d",
    "sincos3d",
    "stack_encoder_blocks",
    "unpatchify",
    "unstack_encoder_blocks",
]
