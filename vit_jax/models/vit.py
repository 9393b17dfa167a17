"""The Vision Transformer: patch embedding -> class token -> encoder -> pooling -> pre_logits -> head.

The parameter tree has exactly the names of google-research/vision_transformer's Linen model (`embedding`, `cls`,
`Transformer/...`, `pre_logits`, `head`), so its published checkpoints load by name.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.attention import AttentionImpl, check_attention_impl
from vit_jax.models.encoder import ENCODER, Encoder
from vit_jax.models.heads import CLASSIFIERS, Classifier, MAPHead, num_prefix_tokens, pool_tokens
from vit_jax.models.partitioning import ActivationSharding
from vit_jax.models.patching import (
    PATCH_EMBED_KINDS,
    PATCH_PADDINGS,
    PatchEmbed,
    PatchEmbedKind,
    PatchPadding,
    as_patch_size,
)
from vit_jax.models.posemb import POSEMB_KINDS, PosembKind


class VisionTransformer(nn.Module):
    """ViT over `(B, H, W, C)` images; returns `(B, num_classes)` logits (`(B, N, ...)` for `*unpooled`).

    Attributes:
      num_classes: logits per example; `None` or 0 for no `head` (the representation is returned).
      patch_size: `(ph, pw)` or an int. Image height/width must be multiples of it unless `pad='zeros'`.
      hidden_size, num_layers, mlp_dim, num_heads: width D, depth, MLP hidden units, attention heads.
      patch_embed: `conv` or `reshape`; same parameters, same outputs (see `vit_jax.models.patching`).
      posemb: `learn`, `sincos2d` or `none` (see `vit_jax.models.posemb`).
      posemb_grid: the grid the learned table is stored at; inputs with another grid (another resolution, or
        another `patch_size` at call time) get it resized in the forward pass. None: the grid of the input the
        model is initialised with, fixed.
      classifier: `token`, `gap`, `map`, `unpooled` or `token_unpooled` (see `vit_jax.models.heads`).
      representation_size: if set, a `pre_logits` Dense of this width + tanh before the head.
      head_bias_init: the head's bias initial value (its kernel starts at zero, as in ViT fine-tuning).
      dropout_rate, attention_dropout_rate, stochastic_depth: regularisation; stochastic depth is the drop-path
        rate of the last block, rising linearly from 0 at the first.
      gelu_approximate: tanh GELU (vision_transformer, big_vision) or exact erf GELU (timm, PyTorch).
      dtype: computation dtype (e.g. `jnp.bfloat16`); parameters stay float32 and logits are float32.
      attention_impl: `einsum`, `xla` or `cudnn` (see `vit_jax.models.attention`).
      record_attention: sow every block's attention weights into `intermediates` (for pictures; `einsum` only).
      remat, remat_policy, scan: memory/compile-time options of the encoder (see `vit_jax.models.encoder`).
      activation_sharding: keeps activations split across devices (set by the trainer from its mesh; see
        `vit_jax.models.partitioning`); None on one device.
    """

    num_classes: int | None
    patch_size: tuple[int, int]
    hidden_size: int
    num_layers: int
    mlp_dim: int
    num_heads: int
    patch_embed: PatchEmbedKind = "conv"
    pad: PatchPadding = "none"
    posemb: PosembKind = "learn"
    posemb_grid: tuple[int, int] | None = None
    classifier: Classifier = "token"
    representation_size: int | None = None
    head_bias_init: float = 0.0
    dropout_rate: float = 0.0
    attention_dropout_rate: float = 0.0
    stochastic_depth: float = 0.0
    gelu_approximate: bool = True
    dtype: Any = None
    attention_impl: AttentionImpl = "einsum"
    record_attention: bool = False
    remat: bool = False
    remat_policy: str | None = None
    scan: bool = False
    activation_sharding: ActivationSharding | None = None

    def __post_init__(self) -> None:
        check_options(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool, patch_size: int | tuple[int, int] | None = None
                 ) -> jax.Array:
        """`patch_size` (static) runs the model with another patch size than its stored kernel's, PI-resizing
        the kernel on the fly (FlexiViT); pair it with `posemb_grid` for learned position embeddings."""
        grid = PatchEmbed(
            self.hidden_size,
            self.patch_size,
            kind=self.patch_embed,
            pad=self.pad,
            output_format="grid",
            dtype=self.dtype,
            name="embedding",
        )(images, patch_size)
        b, gh, gw, d = grid.shape
        x = grid.reshape(b, gh * gw, d)

        num_prefix = num_prefix_tokens(self.classifier)
        if num_prefix:
            cls = self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)
            x = jnp.concatenate([jnp.tile(cls.astype(x.dtype), [b, 1, 1]), x], axis=1)

        x = Encoder(
            num_layers=self.num_layers,
            mlp_dim=self.mlp_dim,
            num_heads=self.num_heads,
            grid=(gh, gw),
            num_prefix=num_prefix,
            posemb=self.posemb,
            posemb_grid=None if self.posemb_grid is None else tuple(self.posemb_grid),
            dropout_rate=self.dropout_rate,
            attention_dropout_rate=self.attention_dropout_rate,
            stochastic_depth=self.stochastic_depth,
            gelu_approximate=self.gelu_approximate,
            dtype=self.dtype,
            attention_impl=self.attention_impl,
            record_attention=self.record_attention,
            remat=self.remat,
            remat_policy=self.remat_policy,
            scan=self.scan,
            activation_sharding=self.activation_sharding,
            name=ENCODER,
        )(x, train=train)
        self.sow("intermediates", "encoded", x)

        if self.classifier == "map":
            x = MAPHead(num_heads=self.num_heads, mlp_dim=self.mlp_dim, gelu_approximate=self.gelu_approximate,
                        dtype=self.dtype, name="MAPHead_0")(x)
        else:
            x = pool_tokens(x, self.classifier)

        if self.representation_size is not None:
            x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits")(x))
        self.sow("intermediates", "representation", x)

        if not self.num_classes:
            return x
        return nn.Dense(
            self.num_classes,
            dtype=jnp.float32,
            kernel_init=nn.initializers.zeros,
            bias_init=nn.initializers.constant(self.head_bias_init),
            name="head",
        )(x)


def check_options(model: VisionTransformer) -> None:
    """Reject inconsistent options when the module is built, before any tracing or compilation."""
    as_patch_size(model.patch_size)
    choices = dict(patch_embed=PATCH_EMBED_KINDS, pad=PATCH_PADDINGS, posemb=POSEMB_KINDS, classifier=CLASSIFIERS)
    for field, allowed in choices.items():
        if getattr(model, field) not in allowed:
            raise ValueError(f"{field} must be one of {allowed}; got {getattr(model, field)!r}")
    for field in ("hidden_size", "num_layers", "mlp_dim", "num_heads"):
        value = getattr(model, field)
        if not isinstance(value, int) or value <= 0:
            raise ValueError(f"{field} must be a positive int; got {value!r}")
    if model.hidden_size % model.num_heads:
        raise ValueError(
            f"hidden_size {model.hidden_size} is not divisible by num_heads {model.num_heads}; "
            f"each head gets hidden_size / num_heads channels"
        )
    if model.posemb == "sincos2d" and (model.hidden_size % 4 or model.hidden_size < 8):
        raise ValueError(
            f"posemb='sincos2d' needs hidden_size divisible by 4 and at least 8; got hidden_size {model.hidden_size}"
        )
    for field in ("dropout_rate", "attention_dropout_rate", "stochastic_depth"):
        value = getattr(model, field)
        if not 0.0 <= value < 1.0:
            raise ValueError(f"{field} must be in [0, 1); got {value!r}")
    check_attention_impl(model.attention_impl, model.dtype, model.attention_dropout_rate, model.record_attention)
    if model.posemb_grid is not None and (len(model.posemb_grid) != 2 or not all(
            isinstance(g, int) and g > 0 for g in model.posemb_grid)):
        raise ValueError(f"posemb_grid must be None or (rows, columns) of positive ints; got {model.posemb_grid!r}")
    if model.representation_size is not None and model.representation_size <= 0:
        raise ValueError(f"representation_size must be a positive int or None; got {model.representation_size!r}")
    if model.num_classes is not None and model.num_classes < 0:
        raise ValueError(f"num_classes must be a positive int (or None/0 for no head); got {model.num_classes!r}")


MODEL_OPTIONS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(VisionTransformer) if f.name not in ("parent", "name")
)
