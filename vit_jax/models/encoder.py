"""The transformer encoder: pre-LayerNorm blocks, optionally rematerialised and scanned over depth.

Parameter names follow google-research/vision_transformer's Linen model (`Transformer/encoderblock_{i}/LayerNorm_0`,
`.../MultiHeadDotProductAttention_0/{query,key,value,out}`, `.../LayerNorm_1`, `.../MlpBlock_0/Dense_{0,1}`,
`Transformer/encoder_norm`). With `scan=True` the blocks are one `nn.scan`ned module, `Transformer/encoderblock`,
whose parameters carry a leading depth axis (big_vision's layout); `stack_encoder_blocks` and
`unstack_encoder_blocks` convert a parameter tree between the two layouts.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from vit_jax.models.block import Encoder1DBlock
from vit_jax.models.encoder_options import EncoderOptions, kv_heads, remat_policy
from vit_jax.models.layer_norm import LayerNorm
from vit_jax.models.mixed_precision import policy_seeing_products
from vit_jax.models.packed_posemb import PackedPositionEmbs, TokenPositions
from vit_jax.models.posemb import AddPositionEmbs, PosembKind
from vit_jax.models.rope import augment_coordinates, grid_coordinates, is_rope, token_coordinates

ENCODER = "Transformer"
SCANNED_BLOCKS = "encoderblock"
_LAYER_BLOCK = re.compile(rf"^{SCANNED_BLOCKS}_(\d+)$")


def drop_patches(x: jax.Array, coords: jax.Array | None, num_prefix: int, rate: float, rng: jax.Array
                 ) -> tuple[jax.Array, jax.Array | None]:
    """Patch dropout: each example keeps a random `max(1, int(N (1 - rate)))` of its N patch tokens (timm's
    `PatchDropout` rule, in random order as timm's default), after its `num_prefix` prefix tokens; `coords`
    `(1 or B, N, axes)`, the tokens' rotary coordinates, are gathered alike."""
    b, n = x.shape[0], x.shape[1] - num_prefix
    keep = max(1, int(n * (1.0 - rate)))
    kept = jnp.argsort(jax.random.uniform(rng, (b, n)), axis=1)[:, :keep]
    patches = jnp.take_along_axis(x[:, num_prefix:], kept[..., None], axis=1)
    if coords is not None:
        coords = jnp.take_along_axis(jnp.broadcast_to(coords, (b, *coords.shape[1:])), kept[..., None], axis=1)
    return jnp.concatenate([x[:, :num_prefix], patches], axis=1), coords


def drop_path_rates(stochastic_depth: float, num_layers: int) -> np.ndarray:
    """Per-layer stochastic-depth rates, rising linearly from 0 to `stochastic_depth` (timm's and DeiT's rule)."""
    return np.linspace(0.0, stochastic_depth, num_layers, dtype=np.float32)


class Encoder(nn.Module):
    """Position embeddings, dropout, `num_layers` blocks and a final LayerNorm over `(B, N, D)` tokens.

    Named `Transformer` inside VisionTransformer. `grid` and `num_prefix` describe the token sequence for the
    position embeddings: `num_prefix` class-token rows, then a row-major `grid` of patches; `posemb_grid` is the
    grid a learned table is stored at, if that may differ (see `AddPositionEmbs.table_grid`).

    `options` (`EncoderOptions`) are the depth, widths, regularisation and memory options.

    `__call__(x, train, mask=None, positions=None)`: `mask` `(B, 1, N, N)` restricts attention (packed sequences);
    `positions` (a `vit_jax.models.packed_posemb.TokenPositions`) places each token of a packed sequence on its
    own image's grid instead of on `grid`.
    """

    options: EncoderOptions
    grid: tuple[int, ...]  # (gh, gw), or (gt, gh, gw) for videos
    num_prefix: int = 1
    posemb: PosembKind = "learn"
    posemb_grid: tuple[int, ...] | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, train: bool, mask: jax.Array | None = None,
                 positions: TokenPositions | None = None) -> jax.Array:
        rope = self.posemb if is_rope(self.posemb) else None
        o = self.options
        table = ("learn" if o.rope_ape else "none") if rope else self.posemb
        if positions is None:
            x = AddPositionEmbs(table, self.grid, self.num_prefix, self.posemb_grid, resize=o.posemb_resize,
                                antialias=o.posemb_antialias, aspect_preserving=o.posemb_aspect_preserving,
                                offset=o.posemb_resize_offset, name="posembed_input")(x)
        else:
            x = PackedPositionEmbs(table, self.grid, resize=o.posemb_resize, antialias=o.posemb_antialias,
                                   aspect_preserving=o.posemb_aspect_preserving, offset=o.posemb_resize_offset,
                                   name="posembed_input")(x, positions)
        if positions is not None and o.relative_position_bias:
            raise ValueError("relative_position_bias (BEiT's) is for one image's grid; packed sequences have many")
        coords = self._rotary_coordinates(positions, train) if rope else None
        if train and o.patch_dropout:
            x, coords = drop_patches(x, coords, self.num_prefix, o.patch_dropout, self.make_rng("dropout"))
        x = self._insert_registers(x)
        prefix = self.num_prefix + o.num_registers  # tokens before the patches: never rotated
        embedding_dropout = o.dropout_rate if o.embedding_dropout_rate is None else o.embedding_dropout_rate
        x = nn.Dropout(rate=embedding_dropout)(x, deterministic=not train)
        if o.pre_norm:
            x = LayerNorm(epsilon=o.layer_norm_epsilon, dtype=o.dtype, rms=o.rms_norm, name="pre_norm")(x)

        block_cls = self._block_class()
        rates = drop_path_rates(o.stochastic_depth, o.num_layers)
        if o.scan:
            blocks = nn.scan(
                block_cls,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=o.num_layers,
            )(o, rope, prefix, self.grid, kv_heads(o, 0), name=SCANNED_BLOCKS)
            x, _ = blocks(x, jnp.asarray(rates), not train, mask, coords)
        else:
            for layer in range(o.num_layers):
                block = block_cls(o, rope, prefix, self.grid, kv_heads(o, layer), name=f"{SCANNED_BLOCKS}_{layer}")
                x, _ = block(x, float(rates[layer]), not train, mask, coords)
        if o.final_norm and not o.fc_norm:  # else the model normalises after pooling, or not at all
            x = LayerNorm(epsilon=o.layer_norm_epsilon, dtype=o.dtype, rms=o.rms_norm, name="encoder_norm")(x)
        return jnp.concatenate([x[:, :self.num_prefix], x[:, prefix:]], axis=1) if o.num_registers else x

    def _insert_registers(self, x: jax.Array) -> jax.Array:
        """`num_registers` learned tokens after the prefix (the class token): `registers` `(1, R, D)`,
        normal(1e-6)-initialised as timm and DINOv2."""
        r = self.options.num_registers
        if not r:
            return x
        registers = self.param("registers", nn.initializers.normal(stddev=1e-6), (1, r, x.shape[-1]), jnp.float32)
        registers = jnp.tile(registers.astype(x.dtype), (x.shape[0], 1, 1))
        return jnp.concatenate([x[:, :self.num_prefix], registers, x[:, self.num_prefix:]], axis=1)

    def _rotary_coordinates(self, positions: TokenPositions | None, train: bool) -> jax.Array:
        """`(1, N_patches, axes)` coordinates of the patch tokens on `grid` (`(B, L, 2)`, each token on its own
        image's grid, for packed sequences), augmented in training when `rope_shift` / `_jitter` / `_rescale` ask."""
        o = self.options
        reference = None if o.rope_grid is None else tuple(o.rope_grid)
        if positions is None:
            coords = jnp.asarray(grid_coordinates(self.grid, o.rope_coordinates, reference, o.rope_offset),
                                 jnp.float32)[None]
        else:
            coords = token_coordinates(positions.coords, positions.grids, o.rope_coordinates, reference,
                                       o.rope_offset)
        if train and any(v is not None for v in (o.rope_shift, o.rope_jitter, o.rope_rescale)):
            coords = augment_coordinates(coords, self.make_rng("dropout"), o.rope_shift, o.rope_jitter,
                                         o.rope_rescale)
        return coords

    def _block_class(self) -> type[Encoder1DBlock]:
        o = self.options
        if not o.remat:
            return Encoder1DBlock
        policy = policy_seeing_products(remat_policy(o.remat_policy))  # vit_jax's products count as dots
        # static_argnums counts self: 0=self, 1=x, 2=drop_path_rate, 3=deterministic (4=mask, 5=coords: arrays).
        # CSE prevention is only needed outside scan (scan already keeps XLA from merging the recomputation back).
        return nn.remat(Encoder1DBlock, prevent_cse=not o.scan, static_argnums=(3,), policy=policy)


def stack_encoder_blocks(params: Mapping[str, Any]) -> dict[str, Any]:
    """Per-layer params (`Transformer/encoderblock_{i}`) -> the scanned layout (`Transformer/encoderblock`)."""
    encoder = dict(params[ENCODER])
    layers = sorted((int(m.group(1)), name) for name in encoder if (m := _LAYER_BLOCK.match(name)))
    if not layers:
        raise ValueError(f"no {ENCODER}/{SCANNED_BLOCKS}_N entries to stack; found {sorted(encoder)}")
    if [i for i, _ in layers] != list(range(len(layers))):
        raise ValueError(f"encoder blocks are not numbered 0..{len(layers) - 1}: {[n for _, n in layers]}")
    blocks = [encoder.pop(name) for _, name in layers]
    encoder[SCANNED_BLOCKS] = jax.tree.map(lambda *leaves: jnp.stack(leaves), *blocks)
    return {**params, ENCODER: encoder}


def unstack_encoder_blocks(params: Mapping[str, Any]) -> dict[str, Any]:
    """The scanned layout (`Transformer/encoderblock`) -> per-layer params (`Transformer/encoderblock_{i}`)."""
    encoder = dict(params[ENCODER])
    if SCANNED_BLOCKS not in encoder:
        raise ValueError(f"no {ENCODER}/{SCANNED_BLOCKS} entry to unstack; found {sorted(encoder)}")
    stacked = encoder.pop(SCANNED_BLOCKS)
    depth = jax.tree.leaves(stacked)[0].shape[0]
    for layer in range(depth):
        encoder[f"{SCANNED_BLOCKS}_{layer}"] = jax.tree.map(lambda leaf, i=layer: leaf[i], stacked)
    return {**params, ENCODER: encoder}
