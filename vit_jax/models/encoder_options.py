"""The encoder's options, declared once: depth and widths, regularisation, memory, attention, rotary encodings,
and the architectural switches that published checkpoint families differ by (layer scale, pre-norm, QuickGELU...).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax

from vit_jax.models.attention import AttentionImpl, check_attention_impl
from vit_jax.models.blas import check_matmul
from vit_jax.models.partitioning import ActivationSharding
from vit_jax.models.posemb import POSEMB_RESIZE_METHODS, antialiased, check_resizing
from vit_jax.models.relative_position import RELATIVE_POSITION_RESIZES
from vit_jax.models.rope import RopeAxisOrder, RopeCoordinates, RopePairing


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
      quick_gelu: the MLPs use OpenAI CLIP's QuickGELU, `x * sigmoid(1.702 x)`, instead of a GELU.
      gated_mlp: the blocks' MLPs are SwiGLU (Shazeer 2020): `silu(x Gate) * (x Dense_0)`, then `Dense_1`, with
        `mlp_dim` the gated width (DINOv2-g, DINOv3 S+/H+/7B, EVA-02, AIMv2; timm's `SwiGLU`, `SwiGLUPacked`); a
        MAP head's MLP stays a GELU one.
      mlp_norm: a LayerNorm `MlpBlock_0/LayerNorm_0` on the MLPs' hidden units before `Dense_1` (EVA-02's sub-LN,
        NormFormer; timm's `scale_mlp`).
      rms_norm: every norm is an RMSNorm, `x / sqrt(mean(x²) + eps) * scale` with no bias (AIMv2; timm's
        `RmsNorm`), under the same names (`LayerNorm_0/scale`, `encoder_norm/scale`, ...).
      proj_bias: False: the attention's output projection and the MLP's layers have no bias (AIMv2; timm's
        `proj_bias=False`).
      relative_position_bias: BEiT's relative position biases in every block's attention
        (`relative_position_bias` `(2 gh - 1, 2 gw - 1, heads)` and, with a class token,
        `relative_position_bias_prefix` `(3, heads)`; resized for another grid as BEiT's fine-tuning does; see
        `vit_jax.models.relative_position`). Images only, without registers or patch dropout.
        relative_position_resize: how those tables meet another grid: `geometric` (BEiT's fine-tuning, timm's) or
        `bilinear` (half-pixel over the offsets: transformers' BEiT and data2vec).
      qk_norm: queries and keys normalised per head before attention (`query_norm`, `key_norm` in the attention
        layer; timm's `qk_norm`), LayerNorms or, with `rms_norm`, RMSNorms.
      attention_norm: a LayerNorm `MultiHeadDotProductAttention_0/LayerNorm_0` on the heads' concatenated outputs
        before the output projection (EVA-02 CLIP's sub-LN; timm's `scale_attn_inner`).
      layer_norm_epsilon: every LayerNorm's epsilon (1e-6 as vision_transformer and timm; CLIP's is 1e-5).
      layer_scale: LayerScale (CaiT, DeiT-III, DINOv2/v3): each residual branch is multiplied channel-wise by a
        learned `LayerScale_{0,1}/scale` `(D,)` initialised to this value; None: no layer scale.
        layer_scale_attention_only: only the attention branch's (`LayerScale_0`; Sapiens2, timm's
        `attn_only_layer_scale`).
      pre_norm: a LayerNorm `Transformer/pre_norm` on the tokens before the first block (CLIP; timm's `norm_pre`).
      fc_norm: the final LayerNorm moves after pooling, as `fc_norm` (MAE / BEiT-style average pooling; timm's
        `fc_norm`): no `Transformer/encoder_norm`.
      final_norm: False: no final LayerNorm at all, neither `encoder_norm` nor `fc_norm` (NVIDIA's RADIO,
        InternViT; timm's `final_norm=False`).
      dtype: computation dtype (e.g. `jnp.bfloat16`); parameters stay float32 and logits are float32.
      attention_impl: `einsum`, `xla` or `cudnn` (see `vit_jax.models.attention`).
      matmul: the dense layers' products (MLPs, attention projections): `xla` (the default: on one CPU device
        with oneDNN installed, oneDNN's products for these and attention's, see `vit_jax.native.onednn`; XLA's
        elsewhere), or `blas` (float32 through the OpenBLAS numpy ships, an XLA FFI call; one CPU device; see
        `vit_jax.models.blas`).
      record_attention: sow every block's attention weights into `intermediates` (for pictures; `einsum` only).
      qkv_bias: False: the query/key/value projections have no bias (vit-pytorch; timm's `qkv_bias=False`); the
        output projection keeps its own.
      qkv_dim: the attention's inner width (heads x head dim, vit-pytorch's `heads * dim_head`); None: the token
        width.
      num_kv_heads: grouped-query attention (Ainslie et al. 2023): key and value heads, each shared by
        `num_heads / num_kv_heads` query heads (`key`, `value` kernels `(D, num_kv_heads, hd)`); one count for
        every block, or one per block (Sapiens2 keeps full attention in its first and last blocks; timm's
        `num_kv_heads`); None: as many as the query heads.
      embedding_dropout_rate: dropout after the position embeddings (vit-pytorch's `emb_dropout`); None:
        `dropout_rate`.
      remat: rematerialise each block in the backward pass (less memory, ~1/3 more compute); `remat_policy` names
        a `jax.checkpoint_policies` member to save some intermediates anyway.
      scan: one `nn.scan` over depth instead of a Python loop: compile time independent of depth.
      activation_sharding: keeps activations split across devices (set by the trainer from its mesh; see
        `vit_jax.models.partitioning`); None on one device.
      posemb_resize: how a learned table (`learn`, `factorized`, RoPE's `rope_ape`) stored at `posemb_grid` is resized
        in the forward pass for another grid: `bilinear` or `bicubic` (half-pixel, antialiased when shrinking;
        timm's resample is `bicubic`), or `bilinear_align_corners` (vision_transformer's fine-tuning resize).
        posemb_antialias: False: `bilinear` and `bicubic` do not antialias when shrinking either (RADIO's table;
        NaFlex's factorized tables). NaViT samples its table per token by these three options, as the fixed-grid
        model resizes it (`vit_jax.models.packed_posemb`). posemb_aspect_preserving: the table is
        resized to a square of the grid's longer side and its top-left cells kept, one scale for both axes (timm's
        `pos_embed_ar_preserving`: NaFlex's `par` models, RADIO). posemb_resize_offset: DINOv2's
        `interpolate_offset` (0.1 in its models without registers): each axis sampled as if resized to `n + offset`
        cells; only without antialiasing.
      num_registers: learned register tokens (Darcet et al. 2024; timm's `reg_tokens`, DINOv2-reg, DINOv3), parameter
        `Transformer/registers` `(1, R, D)`: placed after the class token once the position embeddings are added
        (they get none, and RoPE leaves them unrotated), attended to in every block, and dropped after the final
        LayerNorm, so pooling and the patch maps never see them.
      patch_dropout: the fraction of patch tokens dropped in training (FLIP, Li et al. 2023; timm's
        `PatchDropout`): each example keeps its own random `max(1, int(N (1 - rate)))` patches, prefix tokens always,
        and each kept token keeps its own position (table row or rotary coordinates); off at evaluation.
      rope_theta, rope_coordinates, rope_pairing, rope_axis_order: the conventions of rotary position encodings
        (`posemb='rope_axial'` or `'rope_mixed'`), each named for the codebase it matches in
        `vit_jax.models.rope`; rope_offset: a constant added to the cell indices (Perception Encoder's
        `rope_grid_offset`); rope_grid: interpolated RoPE, `index` coordinates rescaled so every input grid
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
    quick_gelu: bool = False
    gated_mlp: bool = False
    mlp_norm: bool = False
    attention_norm: bool = False
    rms_norm: bool = False
    proj_bias: bool = True
    qk_norm: bool = False
    relative_position_bias: bool = False
    relative_position_resize: str = "geometric"
    layer_norm_epsilon: float = 1e-6
    layer_scale: float | None = None
    layer_scale_attention_only: bool = False
    pre_norm: bool = False
    fc_norm: bool = False
    final_norm: bool = True
    dtype: Any = None
    attention_impl: AttentionImpl = "einsum"
    matmul: str = "xla"
    record_attention: bool = False
    qkv_bias: bool = True
    qkv_dim: int | None = None
    num_kv_heads: int | tuple[int, ...] | None = None
    embedding_dropout_rate: float | None = None
    remat: bool = False
    remat_policy: str | None = None
    scan: bool = False
    activation_sharding: ActivationSharding | None = None
    posemb_resize: str = "bilinear"
    posemb_antialias: bool = True
    posemb_aspect_preserving: bool = False
    posemb_resize_offset: float = 0.0
    num_registers: int = 0
    patch_dropout: float = 0.0
    rope_theta: float | None = None
    rope_coordinates: RopeCoordinates = "index"
    rope_pairing: RopePairing = "interleaved"
    rope_axis_order: RopeAxisOrder = "xy"
    rope_grid: tuple[int, ...] | None = None
    rope_offset: float = 0.0
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
    check_matmul(options.matmul, options.dtype)
    if options.qkv_dim is not None and (options.qkv_dim <= 0 or options.qkv_dim % options.num_heads):
        raise ValueError(f"qkv_dim must be a positive multiple of num_heads {options.num_heads} (heads x head dim) "
                         f"or None; got {options.qkv_dim!r}")
    check_kv_heads(options)
    remat_policy(options.remat_policy)
    if not isinstance(options.layer_norm_epsilon, float | int) or not options.layer_norm_epsilon > 0:
        raise ValueError(f"layer_norm_epsilon must be a positive number; got {options.layer_norm_epsilon!r}")
    if options.layer_scale is not None and not isinstance(options.layer_scale, float | int):
        raise ValueError(f"layer_scale must be a number (LayerScale's initial value) or None; got "
                         f"{options.layer_scale!r}")
    if options.relative_position_bias and (options.num_registers or options.patch_dropout):
        raise ValueError("relative_position_bias (BEiT's) indexes the whole patch grid after the class token: "
                         "num_registers and patch_dropout change that sequence; set them to 0")
    if options.layer_scale_attention_only and options.layer_scale is None:
        raise ValueError("layer_scale_attention_only needs layer_scale (the attention branch's initial value)")
    if options.gated_mlp and options.quick_gelu:
        raise ValueError("gated_mlp's MLP gates with SiLU; quick_gelu names another activation for it: set at most "
                         "one")
    if options.fc_norm and not options.final_norm:
        raise ValueError("fc_norm is where the final norm goes; final_norm=False has none: set at most one")
    if options.relative_position_resize not in RELATIVE_POSITION_RESIZES:
        raise ValueError(f"relative_position_resize must be one of {RELATIVE_POSITION_RESIZES}; got "
                         f"{options.relative_position_resize!r}")
    if options.posemb_resize not in POSEMB_RESIZE_METHODS:
        raise ValueError(f"posemb_resize must be one of {POSEMB_RESIZE_METHODS}; got {options.posemb_resize!r}")
    check_resizing(options.posemb_resize, antialiased(options.posemb_resize, options.posemb_antialias),
                   options.posemb_resize_offset)
    if not isinstance(options.num_registers, int) or options.num_registers < 0:
        raise ValueError(f"num_registers must be an int >= 0; got {options.num_registers!r}")


def kv_heads(options: EncoderOptions, layer: int) -> int | None:
    """Block `layer`'s key/value heads (None: the query heads')."""
    heads = options.num_kv_heads
    return heads[layer] if isinstance(heads, tuple) else heads


def blocks_alike(options: EncoderOptions) -> bool:
    """Whether every block has the same shapes and work (what one scan needs): only per-block key/value head
    counts make them differ."""
    heads = options.num_kv_heads
    return not isinstance(heads, tuple) or len(set(heads)) <= 1


def check_kv_heads(options: EncoderOptions) -> None:
    heads = options.num_kv_heads
    if heads is None:
        return
    counts = heads if isinstance(heads, tuple) else (heads,)
    if (isinstance(heads, tuple) and len(heads) != options.num_layers) or not all(
            isinstance(h, int) and not isinstance(h, bool) and h > 0 and options.num_heads % h == 0 for h in counts):
        raise ValueError(f"num_kv_heads must be None, a divisor of num_heads {options.num_heads}, or one per block "
                         f"({options.num_layers}); got {heads!r}")
    if options.scan and not blocks_alike(options):
        raise ValueError(f"num_kv_heads {heads}: blocks of different key/value widths cannot be one scan; set "
                         f"scan=False")


def remat_policy(name: str | None) -> Any:
    """The `jax.checkpoint_policies` member called `name` (None: save nothing), or a ValueError listing them."""
    if name is None:
        return None
    policy = getattr(jax.checkpoint_policies, name, None)
    if policy is None:
        valid = sorted(n for n in dir(jax.checkpoint_policies) if not n.startswith("_"))
        raise ValueError(f"remat_policy {name!r} is not a jax.checkpoint_policies member: {valid}")
    return policy
