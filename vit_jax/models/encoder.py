"""The transformer encoder: pre-LayerNorm blocks, optionally rematerialised and scanned over depth.

Parameter names follow google-research/vision_transformer's Linen model (`Transformer/encoderblock_{i}/LayerNorm_0`,
`.../MultiHeadDotProductAttention_0/{query,key,value,out}`, `.../LayerNorm_1`, `.../MlpBlock_0/Dense_{0,1}`,
`Transformer/encoder_norm`). With `scan=True` the blocks are one `nn.scan`ned module, `Transformer/encoderblock`,
whose parameters carry a leading depth axis (big_vision's layout); `stack_encoder_blocks` and
`unstack_encoder_blocks` convert a parameter tree between the two layouts.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from vit_jax.models.attention import AttentionImpl, attention_function, check_attention_impl
from vit_jax.models.mixed_precision import is_bfloat16, mixed_dot_general
from vit_jax.models.packed_posemb import PackedPositionEmbs, TokenPositions
from vit_jax.models.partitioning import ActivationSharding, constrain_hidden, constrain_tokens
from vit_jax.models.posemb import AddPositionEmbs, PosembKind
from vit_jax.models.rope import (
    DEFAULT_THETA,
    RopeAxisOrder,
    RopeCoordinates,
    RopePairing,
    augment_coordinates,
    axial_frequencies,
    grid_coordinates,
    init_mixed_frequencies,
    is_rope,
    rotating_attention,
    token_coordinates,
)

ENCODER = "Transformer"
SCANNED_BLOCKS = "encoderblock"
_LAYER_BLOCK = re.compile(rf"^{SCANNED_BLOCKS}_(\d+)$")


class MlpBlock(nn.Module):
    """Dense -> GELU -> dropout -> Dense -> dropout, xavier-uniform kernels and normal(1e-6) biases as in ViT.

    `gelu_approximate=True` is the tanh approximation (flax's default, used by vision_transformer and big_vision);
    `False` is the exact erf GELU of timm/PyTorch. The two differ by at most 4.7e-4 per activation.
    """

    mlp_dim: int
    out_dim: int | None = None
    dropout_rate: float = 0.0
    gelu_approximate: bool = True
    dtype: Any = None
    activation_sharding: ActivationSharding | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool) -> jax.Array:
        dense = lambda features: nn.Dense(
            features,
            dtype=self.dtype,
            kernel_init=nn.initializers.xavier_uniform(),
            bias_init=nn.initializers.normal(stddev=1e-6),
            dot_general=mixed_dot_general if is_bfloat16(self.dtype) else lax.dot_general,
        )
        out_dim = x.shape[-1] if self.out_dim is None else self.out_dim
        x = constrain_hidden(dense(self.mlp_dim)(x), self.activation_sharding)
        x = nn.gelu(x, approximate=self.gelu_approximate)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        x = dense(out_dim)(x)
        return nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)


def drop_path(x: jax.Array, rate: float | jax.Array, rng: jax.Array) -> jax.Array:
    """Stochastic depth: zero a whole example's residual branch with probability `rate`, rescale the rest."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


@dataclasses.dataclass(kw_only=True, unsafe_hash=True)
class EncoderOptions:
    """The encoder's options, declared once: `VisionTransformer` inherits them as its own fields (so a config and
    the command line set them by name), and hands the encoder and each block one `EncoderOptions` of them. An
    option added here is a model option everywhere: configs, `create_model`, the command line.

    Keyword-only and hashable rather than frozen: a frozen dataclass cannot be the base of a flax Module, and
    Modules freeze their attributes themselves.

    Attributes:
      num_layers, mlp_dim, num_heads: depth, MLP hidden units, attention heads.
      dropout_rate, attention_dropout_rate: dropout after attention and in the MLP; on the attention weights.
      stochastic_depth: the drop-path rate of the last block, rising linearly from 0 at the first.
      gelu_approximate: tanh GELU (vision_transformer, big_vision) or exact erf GELU (timm, PyTorch).
      dtype: computation dtype (e.g. `jnp.bfloat16`); parameters stay float32 and logits are float32.
      attention_impl: `einsum`, `xla` or `cudnn` (see `vit_jax.models.attention`).
      record_attention: sow every block's attention weights into `intermediates` (for pictures; `einsum` only).
      qkv_dim: the attention's inner width (heads x head dim, vit-pytorch's `heads * dim_head`); None: the token
        width.
      embedding_dropout_rate: dropout after the position embeddings (vit-pytorch's `emb_dropout`); None:
        `dropout_rate`.
      remat: rematerialise each block in the backward pass (less memory, ~1/3 more compute); `remat_policy` names
        a `jax.checkpoint_policies` member to save some intermediates anyway.
      scan: one `nn.scan` over depth instead of a Python loop: compile time independent of depth.
      activation_sharding: keeps activations split across devices (set by the trainer from its mesh; see
        `vit_jax.models.partitioning`); None on one device.
      num_registers: learned register tokens (Darcet et al. 2024; timm's `reg_tokens`, DINOv2-reg, DINOv3), parameter
        `Transformer/registers` `(1, R, D)`: placed after the class token once the position embeddings are added
        (they get none, and RoPE leaves them unrotated), attended to in every block, and dropped after the final
        LayerNorm, so pooling and the patch maps never see them.
      patch_dropout: the fraction of patch tokens dropped in training (FLIP, Li et al. 2023; timm's
        `PatchDropout`): each example keeps its own random `max(1, int(N (1 - rate)))` patches, prefix tokens always,
        and each kept token keeps its own position (table row or rotary coordinates); off at evaluation.
      rope_theta, rope_coordinates, rope_pairing, rope_axis_order: the conventions of rotary position encodings
        (`posemb='rope_axial'` or `'rope_mixed'`), each named for the codebase it matches in
        `vit_jax.models.rope`; rope_grid: interpolated RoPE, `index` coordinates rescaled so every input grid
        spans this grid (EVA's `ref_feat_shape`; None: a patch's coordinates are its row and column at any
        resolution); rope_shift, rope_jitter, rope_rescale: DINOv3's train-time augmentation of the rotary
        coordinates (None: off); rope_ape: a learned absolute table (as `posemb='learn'`) added as well, timm's
        `vit_*_rope_*_ape` models.
    """

    num_layers: int
    mlp_dim: int
    num_heads: int
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    gelu_approximate: bool = True
    dtype: Any = None
    attention_impl: AttentionImpl = "einsum"
    record_attention: bool = False
    qkv_dim: int | None = None
    embedding_dropout_rate: float | None = None
    remat: bool = False
    remat_policy: str | None = None
    scan: bool = False
    activation_sharding: ActivationSharding | None = None
    num_registers: int = 0
    patch_dropout: float = 0.0
    rope_theta: float | None = None
    rope_coordinates: RopeCoordinates = "index"
    rope_pairing: RopePairing = "interleaved"
    rope_axis_order: RopeAxisOrder = "xy"
    rope_grid: tuple[int, ...] | None = None
    rope_ape: bool = False
    rope_shift: float | None = None
    rope_jitter: float | None = None
    rope_rescale: float | None = None


def check_encoder_options(options: EncoderOptions) -> None:
    """Reject inconsistent encoder options when a model is built, before any tracing or compilation."""
    for field in ("num_layers", "mlp_dim", "num_heads"):
        value = getattr(options, field)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{field} must be a positive int; got {value!r}")
    for field in ("dropout_rate", "attention_dropout_rate", "stochastic_depth", "embedding_dropout_rate",
                  "patch_dropout"):
        value = getattr(options, field)
        if value is not None and not 0.0 <= value < 1.0:
            raise ValueError(f"{field} must be in [0, 1); got {value!r}")
    check_attention_impl(options.attention_impl, options.dtype, options.attention_dropout_rate,
                         options.record_attention)
    if options.qkv_dim is not None and (options.qkv_dim <= 0 or options.qkv_dim % options.num_heads):
        raise ValueError(f"qkv_dim must be a positive multiple of num_heads {options.num_heads} (heads x head dim) "
                         f"or None; got {options.qkv_dim!r}")
    remat_policy(options.remat_policy)
    if not isinstance(options.num_registers, int) or options.num_registers < 0:
        raise ValueError(f"num_registers must be an int >= 0; got {options.num_registers!r}")


def remat_policy(name: str | None) -> Any:
    """The `jax.checkpoint_policies` member called `name` (None: save nothing), or a ValueError listing them."""
    if name is None:
        return None
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None:
        valid = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
        raise ValueError(f"remat_policy {name!r} is not a jax.checkpoint_policies member: {valid}")
    return policy


class Encoder1DBlock(nn.Module):
    """LayerNorm -> self-attention -> residual; LayerNorm -> MLP -> residual.

    `__call__` returns `(x, None)` so that the same module serves as an `nn.scan` body; `drop_path_rate` is a call
    argument (a float, or this layer's entry of a scanned array) because stochastic depth grows with depth.
    `record_attention` sows each call's softmax weights, `(batch, heads, queries, keys)`, into the
    `intermediates` collection (`MultiHeadDotProductAttention_0/attention_weights`). `mask` `(B, 1, N, N)`
    (True: may attend) keeps the images of a packed sequence apart; `qkv_dim` is the attention's inner width
    (heads x head dim), the token width when None.
    """

    options: EncoderOptions
    rope: str | None = None  # `rope_axial` or `rope_mixed`: rotate the patch tokens' queries and keys
    num_prefix: int = 0  # tokens before the patches (class token, registers), never rotated

    @nn.compact
    def __call__(self, x: jax.Array, drop_path_rate: float | jax.Array, deterministic: bool,
                 mask: jax.Array | None = None, coords: jax.Array | None = None) -> tuple[jax.Array, None]:
        o = self.options
        x = constrain_tokens(x, o.activation_sharding)
        y = nn.LayerNorm(dtype=o.dtype)(x)
        mixed = is_bfloat16(o.dtype)
        attention_fn = attention_function(o.attention_impl, o.dtype, o.attention_dropout_rate, o.record_attention)
        if self.rope is not None:
            attention_fn = rotating_attention(attention_fn, self._rotary_angles(coords, x.shape[-1]),
                                              self.num_prefix, o.rope_pairing)
        y = nn.MultiHeadDotProductAttention(
            num_heads=o.num_heads,
            qkv_features=o.qkv_dim,
            dtype=o.dtype,
            qkv_dot_general=mixed_dot_general if mixed else None,
            out_dot_general=mixed_dot_general if mixed else None,
            attention_fn=attention_fn,
            kernel_init=nn.initializers.xavier_uniform(),
            broadcast_dropout=False,
            dropout_rate=o.attention_dropout_rate,
            deterministic=deterministic,
        )(y, y, mask=mask, sow_weights=o.record_attention)
        y = nn.Dropout(rate=o.dropout_rate)(y, deterministic=deterministic)
        x = x + self._maybe_drop_path(y, drop_path_rate, deterministic)

        y = nn.LayerNorm(dtype=o.dtype)(x)
        y = MlpBlock(
            mlp_dim=o.mlp_dim,
            dropout_rate=o.dropout_rate,
            gelu_approximate=o.gelu_approximate,
            dtype=o.dtype,
            activation_sharding=o.activation_sharding,
        )(y, deterministic=deterministic)
        return x + self._maybe_drop_path(y, drop_path_rate, deterministic), None

    def _rotary_angles(self, coords: jax.Array, width: int) -> jax.Array:
        """`(B or 1, N_patches, H or 1, head_dim / 2)`: how far each patch token's channel pairs turn in this
        block; `rope_mixed` learns this block's `rope_frequencies` `(2, num_heads, head_dim / 2)` over (x, y)."""
        o = self.options
        head_dim = (o.qkv_dim or width) // o.num_heads
        theta = DEFAULT_THETA[self.rope] if o.rope_theta is None else o.rope_theta
        if self.rope == "rope_axial":
            frequencies = jnp.asarray(axial_frequencies(head_dim, coords.shape[-1], theta, o.rope_axis_order),
                                      jnp.float32)[:, None, :]  # (axes, 1, pairs): the same for every head
        else:
            xy = self.param("rope_frequencies", init_mixed_frequencies(theta), (2, o.num_heads, head_dim // 2),
                            jnp.float32)
            frequencies = xy[::-1]  # (x, y) -> grid order (row, column)
        return jnp.einsum("bna,ahp->bnhp", coords, frequencies)

    def _maybe_drop_path(self, y: jax.Array, rate: float | jax.Array, deterministic: bool) -> jax.Array:
        if deterministic or not self.options.stochastic_depth:
            return y
        return drop_path(y, rate, self.make_rng("dropout"))


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
            x = AddPositionEmbs(table, self.grid, self.num_prefix, self.posemb_grid, name="posembed_input")(x)
        else:
            x = PackedPositionEmbs(table, self.grid, name="posembed_input")(x, positions)
        coords = self._rotary_coordinates(positions, train) if rope else None
        if train and o.patch_dropout:
            x, coords = drop_patches(x, coords, self.num_prefix, o.patch_dropout, self.make_rng("dropout"))
        x = self._insert_registers(x)
        prefix = self.num_prefix + o.num_registers  # tokens before the patches: never rotated
        embedding_dropout = o.dropout_rate if o.embedding_dropout_rate is None else o.embedding_dropout_rate
        x = nn.Dropout(rate=embedding_dropout)(x, deterministic=not train)

        block_cls = self._block_class()
        rates = drop_path_rates(o.stochastic_depth, o.num_layers)
        if o.scan:
            blocks = nn.scan(
                block_cls,
                variable_axes={"params": 0, "intermediates": 0},
                split_rngs={"params": True, "dropout": True},
                in_axes=(0, nn.broadcast, nn.broadcast, nn.broadcast),
                length=o.num_layers,
            )(o, rope, prefix, name=SCANNED_BLOCKS)
            x, _ = blocks(x, jnp.asarray(rates), not train, mask, coords)
        else:
            for layer in range(o.num_layers):
                block = block_cls(o, rope, prefix, name=f"{SCANNED_BLOCKS}_{layer}")
                x, _ = block(x, float(rates[layer]), not train, mask, coords)
        x = nn.LayerNorm(dtype=o.dtype, name="encoder_norm")(x)
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
            coords = jnp.asarray(grid_coordinates(self.grid, o.rope_coordinates, reference), jnp.float32)[None]
        else:
            coords = token_coordinates(positions.coords, positions.grids, o.rope_coordinates, reference)
        if train and any(v is not None for v in (o.rope_shift, o.rope_jitter, o.rope_rescale)):
            coords = augment_coordinates(coords, self.make_rng("dropout"), o.rope_shift, o.rope_jitter,
                                         o.rope_rescale)
        return coords

    def _block_class(self) -> type[Encoder1DBlock]:
        o = self.options
        if not o.remat:
            return Encoder1DBlock
        policy = remat_policy(o.remat_policy)
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
