"""The Vision Transformer: patch embedding -> class token -> encoder -> pooling -> pre_logits -> head.

The parameter tree has exactly the names of google-research/vision_transformer's Linen model (`embedding`, `cls`,
`Transformer/...`, `pre_logits`, `head`), so its published checkpoints load by name.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Sequence
from typing import ClassVar

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.encoder import ENCODER, Encoder
from vit_jax.models.encoder_options import EncoderOptions, check_encoder_options
from vit_jax.models.heads import CLASSIFIERS, MAP_CLASSIFIERS, Classifier, MAPHead, num_prefix_tokens, pool_tokens
from vit_jax.models.layer_norm import LayerNorm
from vit_jax.models.patching import (
    PATCH_EMBED_KINDS,
    PATCH_PADDINGS,
    PatchEmbed,
    PatchEmbedKind,
    PatchPadding,
    as_patch_size,
    grid_shape,
)
from vit_jax.models.posemb import POSEMB_KINDS, SINCOS_WIDTHS, PosembKind, check_sincos_width
from vit_jax.models.resnet_stem import check_stem_options, resnet_stem, stem_output_hw, stem_stride
from vit_jax.models.rope import ROPE_KINDS, check_rope_options
from vit_jax.models.tubelet import TubeletEmbed, as_tubelet_size, tubelet_grid

# The collection `classifier='token_distilled'` sows its two heads' logits into (`model.apply(...,
# mutable=[DISTILLATION_HEADS])`): distillation trains the class token's head on the labels and the distillation
# token's on the teacher (vit_jax.distillation).
DISTILLATION_HEADS = "distillation_heads"


class VisionTransformer(nn.Module, EncoderOptions):
    """ViT over `(B, H, W, C)` images; returns `(B, num_classes)` logits (`(B, N, ...)` for `*unpooled`).

    Attributes:
      num_classes: logits per example; `None` or 0 for no `head` (the representation is returned).
      patch_size: `(ph, pw)` or an int. Image height/width must be multiples of it unless `pad='zeros'`. With a
        ResNet stem it is in feature-map pixels: R50+ViT-B/16 has patch (1, 1) on a map 16 times smaller.
      resnet_num_layers: units per stage of the hybrid's ResNet stem, run on the images before the patch
        embedding (see `vit_jax.models.resnet_stem`): (3, 4, 9) for R50, (2, 2, 2, 2) for R26, () for the root
        conv alone; None: no stem.
      resnet_width_factor: the stem's width is `64 * resnet_width_factor` channels (a multiple of 32).
      resnet_numerics: whose epsilons the stem's weight standardisation and GroupNorms use: `vision_transformer`
        (its released hybrids') or `timm` (timm's ports of them, `vit_*_r50_*`, `vit_*_r26_*`).
      hidden_size: the token width D.
      num_layers, mlp_dim, num_heads, dropout and stochastic depth, GELU, dtype, attention, remat, scan,
        activation sharding: the encoder's options, inherited from `EncoderOptions`
        (`vit_jax.models.encoder`), where each is declared and documented once; keyword-only.
      patch_embed: `conv` or `reshape`; same parameters, same outputs (see `vit_jax.models.patching`).
      patch_bias: False: the patch embedding has no bias (CLIP, whose `pre_norm` follows it).
      patch_norm, embedding_norm: LayerNorms before the patch projection (over each patch's pixels) and after it
        (on each token), as vit-pytorch has (`embedding/patch_norm`, `embedding/embedding_norm`; see
        `vit_jax.models.patching.PatchEmbed`).
      tubelet_size: frames per tubelet, for a video model (ViViT's tubelet embedding, spatio-temporal attention
        over all tokens): inputs are `(B, T, H, W, C)` and `embedding` is a `TubeletEmbed` with kernel
        `(tubelet_size, ph, pw, C, D)` (see `vit_jax.models.tubelet`); the token grid is `(gt, gh, gw)`. None:
        images.
      posemb: `learn`, `factorized`, `sincos2d`, `sincos3d` (videos) or `none` (added tables: see
        `vit_jax.models.posemb`), or
        `rope_axial` / `rope_mixed` (rotary encodings in every block: see `vit_jax.models.rope`).
      posemb_grid: the grid the learned tables (`learn`, `factorized`) are stored at; inputs with another grid
        (another resolution, or another `patch_size` at call time) get them resized in the forward pass. None: the
        grid of the input the model is initialised with, fixed. (RoPE's counterpart is `rope_grid`.)
      classifier: `token`, `gap`, `token_gap`, `token_and_gap`, `map`, `token_map`, `unpooled`, `token_unpooled`
        or `token_distilled` (see `vit_jax.models.heads`).
      map_num_heads, map_mlp_dim: the attention-pooling head's heads and MLP width (`map`, `token_map`); None: the
        encoder's (big_vision's MAP head). Perception Encoder's core models pool with 8 heads and a 4x MLP.
      representation_size: if set, a `pre_logits` Dense of this width + tanh before the head.
      head_bias_init: the head's bias initial value.
      head_init_std: the head's kernel starts at zero (0, vision_transformer's: a fine-tuned head starts from the
        pre-trained representation alone) or normal with this std (timm's and DeiT's 0.02: LAMB's trust ratio, for
        one, adapts a tensor by its norm, so a zero head starts slowly).
    """

    num_classes: int | None
    patch_size: tuple[int, int]
    hidden_size: int
    patch_embed: PatchEmbedKind = "conv"
    patch_bias: bool = True
    patch_norm: bool = False
    embedding_norm: bool = False
    pad: PatchPadding = "none"
    tubelet_size: int | None = None
    posemb: PosembKind = "learn"
    posemb_grid: tuple[int, ...] | None = None
    classifier: Classifier = "token"
    map_num_heads: int | None = None
    map_mlp_dim: int | None = None
    representation_size: int | None = None
    head_bias_init: float = 0.0
    head_init_std: float = 0.0
    resnet_num_layers: tuple[int, ...] | None = None
    resnet_width_factor: float = 1.0
    resnet_numerics: str = "vision_transformer"

    posemb_kinds: ClassVar[tuple[str, ...]] = POSEMB_KINDS + ROPE_KINDS
    classifier_kinds: ClassVar[tuple[str, ...]] = CLASSIFIERS

    def __post_init__(self) -> None:
        check_options(self)
        super().__post_init__()

    @nn.compact
    def __call__(self, images: jax.Array, *, train: bool, patch_size: int | tuple[int, int] | None = None
                 ) -> jax.Array:
        """`patch_size` (static) runs the model with another patch size than its stored kernel's, PI-resizing
        the kernel on the fly (FlexiViT); pair it with `posemb_grid` for learned position embeddings."""
        if self.resnet_num_layers is not None:
            images = resnet_stem(images, tuple(self.resnet_num_layers), self.resnet_width_factor, self.dtype,
                                 self.resnet_numerics)
        if self.tubelet_size is None:
            grid = PatchEmbed(
                self.hidden_size,
                self.patch_size,
                kind=self.patch_embed,
                pad=self.pad,
                output_format="grid",
                dtype=self.dtype,
                use_bias=self.patch_bias,
                patch_norm=self.patch_norm,
                embedding_norm=self.embedding_norm,
                norm_epsilon=self.layer_norm_epsilon,
                rms_norm=self.rms_norm,
                name="embedding",
            )(images, patch_size)
        elif patch_size is not None:
            raise ValueError(f"patch_size={patch_size!r} at call time (FlexiViT) is for images; this is a video "
                             f"model (tubelet_size={self.tubelet_size})")
        else:
            grid = TubeletEmbed(self.hidden_size, self.tubelet_size, self.patch_size, kind=self.patch_embed,
                                output_format="grid", dtype=self.dtype, name="embedding")(images)
        b, *token_grid_shape, d = grid.shape  # (gh, gw), or (gt, gh, gw) for videos
        x = grid.reshape(b, -1, d)

        num_prefix = num_prefix_tokens(self.classifier)
        if num_prefix:
            prefix = [self.param("cls", nn.initializers.zeros, (1, 1, d), jnp.float32)]
            if num_prefix == 2:  # DeiT's distillation token, truncated normal(0.02) as DeiT's
                prefix.append(self.param("dist", nn.initializers.truncated_normal(0.02), (1, 1, d), jnp.float32))
            x = jnp.concatenate([jnp.tile(t.astype(x.dtype), [b, 1, 1]) for t in prefix] + [x], axis=1)

        x = self.encoder(tuple(token_grid_shape), num_prefix)(x, train=train)
        self.sow("intermediates", "encoded", x)

        x = self.map_head()(x) if self.classifier in MAP_CLASSIFIERS else pool_tokens(x, self.classifier)
        return self.classify(x)

    def inputs(self, batch: dict[str, jax.Array]) -> tuple[jax.Array, ...]:
        """The positional arguments of `__call__` in a data batch, so a trainer needs no per-model branch."""
        return (batch["image"],)

    def encoder(self, grid: tuple[int, ...], num_prefix: int) -> Encoder:
        """The `Transformer` over tokens laid out as `num_prefix` prefix tokens then a row-major `grid`; called
        from a compact `__call__` (of this class or a subclass), where it binds."""
        options = EncoderOptions(**{f.name: getattr(self, f.name) for f in dataclasses.fields(EncoderOptions)})
        posemb_grid = None if self.posemb_grid is None else tuple(self.posemb_grid)
        return Encoder(options, grid=grid, num_prefix=num_prefix, posemb=self.posemb, posemb_grid=posemb_grid,
                       name=ENCODER)

    def map_head(self) -> MAPHead:
        """The attention-pooling head of `classifier='map'` (or `token_map`), with the encoder's MLP and LayerNorm
        conventions, and its heads and MLP width (the encoder's unless `map_num_heads` / `map_mlp_dim` say)."""
        return MAPHead(num_heads=self.map_num_heads or self.num_heads, mlp_dim=self.map_mlp_dim or self.mlp_dim,
                       gelu_approximate=self.gelu_approximate,
                       quick_gelu=self.quick_gelu, layer_norm_epsilon=self.layer_norm_epsilon, dtype=self.dtype,
                       name="MAPHead_0")

    def classify(self, representation: jax.Array) -> jax.Array:
        """pooled representation -> `fc_norm` (with that option) -> optional `pre_logits` (Dense + tanh) -> `head`
        logits (float32)."""
        x = representation
        if self.fc_norm:
            x = LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, rms=self.rms_norm, name="fc_norm")(x)
        if self.representation_size is not None:
            x = nn.tanh(nn.Dense(self.representation_size, dtype=self.dtype, name="pre_logits")(x))
        kernel_init = nn.initializers.normal(self.head_init_std) if self.head_init_std else nn.initializers.zeros
        head = functools.partial(nn.Dense, self.num_classes, dtype=jnp.float32, kernel_init=kernel_init,
                                 bias_init=nn.initializers.constant(self.head_bias_init))
        if self.classifier == "token_distilled":  # DeiT: the two tokens' logits (or representations) averaged
            if not self.num_classes:
                x = (x[:, 0] + x[:, 1]) / 2
                self.sow("intermediates", "representation", x)
                return x
            self.sow("intermediates", "representation", (x[:, 0] + x[:, 1]) / 2)
            logits, distilled = head(name="head")(x[:, 0]), head(name="head_dist")(x[:, 1])
            self.sow(DISTILLATION_HEADS, "logits", (logits, distilled))  # each head's, for distillation training
            return (logits + distilled) / 2
        self.sow("intermediates", "representation", x)
        if not self.num_classes:
            return x
        return head(name="head")(x)


def check_options(model: VisionTransformer) -> None:
    """Reject inconsistent options when the module is built, before any tracing or compilation."""
    as_patch_size(model.patch_size)
    choices = dict(patch_embed=PATCH_EMBED_KINDS, pad=PATCH_PADDINGS, posemb=model.posemb_kinds,
                   classifier=model.classifier_kinds)
    for field, allowed in choices.items():
        if getattr(model, field) not in allowed:
            raise ValueError(f"{field} must be one of {allowed}; got {getattr(model, field)!r}")
    check_encoder_options(model)
    std = model.head_init_std
    if isinstance(std, bool) or not isinstance(std, int | float) or not 0 <= std < float("inf"):
        raise ValueError(f"head_init_std must be a number >= 0 (0: a zero head); got {std!r}")
    if not isinstance(model.hidden_size, int) or model.hidden_size <= 0:
        raise ValueError(f"hidden_size must be a positive int; got {model.hidden_size!r}")
    if model.hidden_size % model.num_heads:
        raise ValueError(
            f"hidden_size {model.hidden_size} is not divisible by num_heads {model.num_heads}; "
            f"each head gets hidden_size / num_heads channels"
        )
    check_stem_options(model.resnet_num_layers, model.resnet_width_factor, model.resnet_numerics)
    for option, default in (("patch_bias", True), ("patch_norm", False), ("embedding_norm", False)):
        if getattr(model, option) != default and model.tubelet_size is not None:
            raise ValueError(f"{option}={getattr(model, option)!r} is for images; this is a video model "
                             f"(tubelet_size={model.tubelet_size})")
    if model.relative_position_bias and (model.tubelet_size is not None or model.classifier == "token_distilled"):
        got = (f"tubelet_size={model.tubelet_size}" if model.tubelet_size is not None
               else f"classifier={model.classifier!r}")
        raise ValueError(f"relative_position_bias (BEiT's) is for images with a class token or none; got {got}")
    if model.classifier in MAP_CLASSIFIERS and (model.rms_norm or not model.proj_bias):
        raise ValueError(f"classifier={model.classifier!r} is big_vision's MAP head (LayerNorm, biased "
                         f"projections); rms_norm and proj_bias=False are for the encoder")
    for option in ("map_num_heads", "map_mlp_dim"):
        value = getattr(model, option)
        if value is not None and (model.classifier not in MAP_CLASSIFIERS or not isinstance(value, int) or value <= 0):
            raise ValueError(f"{option}={value!r}: a positive int for the attention-pooling head (classifier 'map' "
                             f"or 'token_map'; got {model.classifier!r}), or None for the encoder's")
    if model.map_num_heads is not None and model.hidden_size % model.map_num_heads:
        raise ValueError(f"hidden_size {model.hidden_size} is not divisible by map_num_heads {model.map_num_heads}")
    if model.classifier == "token_distilled" and (model.fc_norm or model.representation_size is not None):
        raise ValueError("classifier='token_distilled' reads its two tokens with two heads; fc_norm and "
                         "representation_size (pre_logits) are for one pooled representation")
    if model.fc_norm and model.classifier in ("unpooled", "token_unpooled"):
        raise ValueError(f"fc_norm normalises the pooled representation; classifier={model.classifier!r} pools "
                         f"nothing")
    if model.resnet_num_layers is not None and model.tubelet_size is not None:
        raise ValueError(f"resnet_num_layers={model.resnet_num_layers!r}: the ResNet stem is for images; this is a "
                         f"video model (tubelet_size={model.tubelet_size})")
    check_video_options(model)
    grid_axes = 2 if model.tubelet_size is None else 3
    check_rope_options(model.posemb, (model.qkv_dim or model.hidden_size) // model.num_heads, grid_axes, model)
    if model.posemb in SINCOS_WIDTHS:  # after the image / video split, which says which table applies
        check_sincos_width(model.posemb, model.hidden_size, "hidden_size")
    axes = "(rows, columns)" if model.tubelet_size is None else "(frames, rows, columns) for a video model"
    if model.posemb_grid is not None and (len(model.posemb_grid) != axes.count(",") + 1 or not all(
            isinstance(g, int) and g > 0 for g in model.posemb_grid)):
        raise ValueError(f"posemb_grid must be None or {axes} of positive ints; got {model.posemb_grid!r}")
    if model.representation_size is not None and model.representation_size <= 0:
        raise ValueError(f"representation_size must be a positive int or None; got {model.representation_size!r}")
    if model.num_classes is not None and model.num_classes < 0:
        raise ValueError(f"num_classes must be a positive int (or None/0 for no head); got {model.num_classes!r}")


def check_video_options(model: VisionTransformer) -> None:
    """Options that only make sense for images (pad, sincos2d) or only for videos (sincos3d); the ResNet stem's
    own check above rejects it for videos."""
    if model.tubelet_size is None:
        if model.posemb == "sincos3d":
            raise ValueError("posemb='sincos3d' is the space-time table of video models (set tubelet_size); "
                             "images use 'sincos2d'")
        return
    as_tubelet_size(model.tubelet_size, model.patch_size)
    video = f"a video model (tubelet_size={model.tubelet_size})"
    if model.pad != "none":
        raise ValueError(f"pad={model.pad!r} is for images; {video} needs frame sizes and a number of frames that "
                         f"are multiples of the tubelet size")
    if model.posemb in ("sincos2d", "factorized"):
        raise ValueError(f"posemb={model.posemb!r} is for images; {video} takes 'sincos3d', 'learn', 'rope_axial' "
                         f"or 'none'")


def pixel_patch_size(model: VisionTransformer) -> tuple[int, int]:
    """The image pixels one token covers: the patch size times the ResNet stem's stride (16x16 for R50+B/16)."""
    stride = stem_stride(model.resnet_num_layers)
    ph, pw = as_patch_size(model.patch_size)
    return ph * stride, pw * stride


def token_grid(model: VisionTransformer, image_hw: tuple[int, int]) -> tuple[int, int]:
    """The `(gh, gw)` token grid of an image: the patch grid of the stem's feature map (of the image itself
    without a stem), or a ValueError naming the sizes when the patch does not divide it."""
    if model.resnet_num_layers is None:
        return grid_shape(image_hw, model.patch_size, model.pad)
    feature_map = stem_output_hw(image_hw, model.resnet_num_layers)
    try:
        return grid_shape(feature_map, model.patch_size, model.pad)
    except ValueError as error:
        raise ValueError(f"the ResNet stem turns {image_hw[0]}x{image_hw[1]} images into {feature_map[0]}x"
                         f"{feature_map[1]} feature maps (stride {stem_stride(model.resnet_num_layers)}): "
                         f"{error}") from None


def input_grid(model: VisionTransformer, input_shape: Sequence[int]) -> tuple[int, ...]:
    """The token grid of one input without its batch axis: `(gh, gw)` for an `(H, W, C)` image, `(gt, gh, gw)`
    for a video model's `(T, H, W, C)` video; a ValueError naming the sizes when they do not divide."""
    if model.tubelet_size is None:
        return token_grid(model, tuple(input_shape[:2]))
    if len(input_shape) != 4:
        raise ValueError(f"a video model (tubelet_size={model.tubelet_size}) takes (frames, height, width, "
                         f"channels) inputs; got shape {tuple(input_shape)}")
    return tubelet_grid(input_shape[:3], as_tubelet_size(model.tubelet_size, model.patch_size))


MODEL_OPTIONS: tuple[str, ...] = tuple(
    f.name for f in dataclasses.fields(VisionTransformer) if f.name not in ("parent", "name")
)
