"""NaViT (Dehghani et al. 2023, "Patch n' Pack"): a ViT over packed sequences of images at native resolution.

Several images of different sizes and aspect ratios are patchified and packed into one fixed-length sequence
(`vit_jax.data.packing`). The model sees, per sequence of length L holding up to K images:

- `patches` `(B, L, ph * pw * C)`: each image's patches, flattened (row-in-patch, column-in-patch, channel) as
  `vit_jax.models.patching.patchify`, the images one after another, then padding;
- `image_ids` `(B, L)`: 1..K for the image a token belongs to, 0 for padding;
- `coords` `(B, L, 2)`: the token's (row, column) on its image's patch grid;
- `image_grids` `(B, K, 2)`: each image's (rows, columns) grid (zeros for an empty slot).

Attention is masked so that tokens only see their own image; pooling (`gap` or `map`) is per image; the output is
`(B, K, num_classes)`, one row per image slot. The parameters are the ViT's, with the same names (`embedding`,
`Transformer/...`, `MAPHead_0`, `head`), so a fixed-grid checkpoint (with `posemb='learn'`) loads into NaViT and
the two give the same outputs on an image alone at the table's grid.
"""

from __future__ import annotations

from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.heads import pool_segments
from vit_jax.models.packed_posemb import PACKED_POSEMB_KINDS, TokenPositions
from vit_jax.models.patching import as_patch_size
from vit_jax.models.rope import ROPE_KINDS
from vit_jax.models.vit import VisionTransformer


class PatchProjection(nn.Module):
    """Embeds already-patchified `(..., ph * pw * C)` patches with the `(ph, pw, C, D)` kernel of
    `vit_jax.models.patching.PatchEmbed`: the same parameters (`embedding/kernel`, `bias`), the same tokens as its
    `reshape` implementation."""

    hidden_size: int
    patch_size: tuple[int, int]
    dtype: jnp.dtype | None = None
    use_bias: bool = True

    @nn.compact
    def __call__(self, patches: jax.Array) -> jax.Array:
        ph, pw = as_patch_size(self.patch_size)
        if patches.shape[-1] % (ph * pw):
            raise ValueError(f"patches have {patches.shape[-1]} values each, not a multiple of the {ph}x{pw} patch "
                             f"size's {ph * pw} pixels")
        channels = patches.shape[-1] // (ph * pw)
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (ph, pw, channels, self.hidden_size),
                            jnp.float32)
        bias = (self.param("bias", nn.initializers.zeros, (self.hidden_size,), jnp.float32) if self.use_bias
                else jnp.zeros((self.hidden_size,), jnp.float32))
        patches, kernel, bias = nn.dtypes.promote_dtype(patches, kernel, bias, dtype=self.dtype)
        return jnp.dot(patches, kernel.reshape(-1, self.hidden_size)) + bias


def attention_mask(image_ids: jax.Array) -> jax.Array:
    """`(B, 1, L, L)`: token q may attend to token k iff they belong to the same image (padding sees padding, so
    no softmax row is empty)."""
    return (image_ids[:, :, None] == image_ids[:, None, :])[:, None]


def image_segments(image_ids: jax.Array, num_images: int) -> jax.Array:
    """`(B, K, L)`: True where token l belongs to image slot k (ids 1..K)."""
    return image_ids[:, None, :] == jnp.arange(1, num_images + 1, dtype=image_ids.dtype)[None, :, None]


def token_grids(image_ids: jax.Array, image_grids: jax.Array) -> jax.Array:
    """Each token's image grid `(B, L, 2)` from the per-image grids `(B, K, 2)` (padding reads slot 1's)."""
    slots = jnp.maximum(image_ids - 1, 0)[..., None]
    return jnp.take_along_axis(image_grids, slots, axis=1)


class NaViT(VisionTransformer):
    """The ViT over packed sequences; `__call__(patches, image_ids, coords, image_grids, train=...)` returns
    `(B, K, num_classes)` logits (see the module docstring).

    Options are `VisionTransformer`'s, with these differences:
      posemb: `learn` (a table stored at `posemb_grid`, sampled at each image's own grid), `factorized`
        (row + column tables up to `posemb_grid`), `sincos2d` or `none` (see `vit_jax.models.packed_posemb`), or
        `rope_axial` / `rope_mixed` (each token rotated by its place in its own image: `vit_jax.models.rope`).
      posemb_grid: required for `learn` and `factorized`.
      classifier: `gap` or `map` (per image); there is no class token.
      patch_embed, pad, resnet stem, tubelets: not used (the data pipeline patchifies).
    """

    posemb_kinds: ClassVar[tuple[str, ...]] = PACKED_POSEMB_KINDS + ROPE_KINDS
    classifier_kinds: ClassVar[tuple[str, ...]] = ("gap", "map")

    def __post_init__(self) -> None:
        if (self.posemb in ("learn", "factorized") or self.rope_ape) and self.posemb_grid is None:
            raise ValueError(f"NaViT with posemb={self.posemb!r} needs posemb_grid (rows, columns): the grid the "
                             f"learned table is stored at ('learn') or the largest image grid ('factorized')")
        if getattr(self, "resnet_num_layers", None) is not None or getattr(self, "tubelet_size", None) is not None:
            raise ValueError("NaViT packs image patches; a ResNet stem or video tubelets are not supported with it")
        if self.num_registers:
            raise ValueError(f"num_registers={self.num_registers}: registers are prefix tokens of one image; NaViT's "
                             f"packed sequences hold several images and no prefix tokens")
        if self.patch_dropout:
            raise ValueError(f"patch_dropout={self.patch_dropout}: NaViT drops tokens as it packs them "
                             f"(config.packing.drop_rate)")
        super().__post_init__()

    def inputs(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        """A packed batch's sequences (`vit_jax.data.packing`), in `__call__`'s order."""
        return batch["patches"], batch["image_ids"], batch["coords"], batch["image_grids"]

    @nn.compact
    def __call__(self, patches: jax.Array, image_ids: jax.Array, coords: jax.Array, image_grids: jax.Array, *,
                 train: bool) -> jax.Array:
        x = PatchProjection(self.hidden_size, self.patch_size, dtype=self.dtype, use_bias=self.patch_bias,
                            name="embedding")(patches)
        num_images = image_grids.shape[1]
        grid = tuple(self.posemb_grid) if self.posemb_grid is not None else (1, 1)
        positions = TokenPositions(coords, token_grids(image_ids, image_grids))
        x = self.encoder(grid, 0)(x, train=train, mask=attention_mask(image_ids), positions=positions)
        self.sow("intermediates", "encoded", x)

        segments = image_segments(image_ids, num_images)
        if self.classifier == "map":
            x = self.map_head()(x, segments)
        else:
            x = pool_segments(x, segments)
        return self.classify(x)
