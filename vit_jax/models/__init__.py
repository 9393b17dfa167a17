"""Flax modules of the ViT, in the order data flows through them.

patching (image -> tokens) -> posemb (where each token is) -> encoder (transformer blocks) -> heads (pooling)
-> vit (the whole model) -> variants (named sizes and `create_model`).
"""

from vit_jax.models.encoder import stack_encoder_blocks, unstack_encoder_blocks
from vit_jax.models.patching import PatchEmbed, patchify, unpatchify
from vit_jax.models.posemb import AddPositionEmbs, sincos2d
from vit_jax.models.variants import SIZES, create_model, parse_variant
from vit_jax.models.vit import MODEL_OPTIONS, VisionTransformer

__all__ = [
    "MODEL_OPTIONS",
    "SIZES",
    "AddPositionEmbs",
    "PatchEmbed",
    "VisionTransformer",
    "create_model",
    "parse_variant",
    "patchify",
    "sincos2d",
    "stack_encoder_blocks",
    "unpatchify",
    "unstack_encoder_blocks",
]
