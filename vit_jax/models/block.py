"""One encoder block: LayerNorm -> self-attention -> residual; LayerNorm -> MLP -> residual (pre-norm ViT).

Parameter names are vision_transformer's (`LayerNorm_0`, `MultiHeadDotProductAttention_0/{query,key,value,out}`,
`LayerNorm_1`, `MlpBlock_0/Dense_{0,1}`), plus `LayerScale_{0,1}/scale` when the model has layer scale,
`MlpBlock_0/Gate` when its MLP is gated (SwiGLU), and `MlpBlock_0/LayerNorm_0` and
`MultiHeadDotProductAttention_0/LayerNorm_0` when the MLP and the attention are normalised inside (sub-LN).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from vit_jax.models.activations import ACTIVATIONS, activation_name
from vit_jax.models.attention import attention_function
from vit_jax.models.blas import dense_dot_general
from vit_jax.models.encoder_options import EncoderOptions
from vit_jax.models.layer_norm import LayerNorm
from vit_jax.models.mixed_precision import MixedDense, mixed_dot_general
from vit_jax.models.partitioning import ActivationSharding, constrain_hidden, constrain_tokens
from vit_jax.models.rope import DEFAULT_THETA, axial_frequencies, init_mixed_frequencies, rotating_attention
from vit_jax.models.self_attention import MultiHeadDotProductAttention


class MlpBlock(nn.Module):
    """Dense -> GELU -> dropout -> Dense -> dropout, xavier-uniform kernels and normal(1e-6) biases as in ViT.

    `gelu_approximate=True` is the tanh approximation (flax's default, used by vision_transformer and big_vision);
    `False` is the exact erf GELU of timm/PyTorch. The two differ by at most 4.7e-4 per activation.
    `gated`: SwiGLU (Shazeer 2020; DINOv2-g, DINOv3 S+/H+/7B, EVA-02), `silu(x Gate) * (x Dense_0)` in place of
    `gelu(x Dense_0)`: the hidden width `mlp_dim` is the gated product's. `norm`: a LayerNorm on the hidden
    units before `Dense_1` (EVA-02's sub-LN, NormFormer; timm's `scale_mlp`).
    """

    mlp_dim: int
    out_dim: int | None = None
    dropout_rate: float = 0.0
    gelu_approximate: bool = True
    quick_gelu: bool = False
    gated: bool = False
    norm: bool = False
    layer_norm_epsilon: float = 1e-6
    rms_norm: bool = False
    use_bias: bool = True
    dtype: Any = None
    matmul: str = "xla"  # see vit_jax.models.blas
    activation_sharding: ActivationSharding | None = None

    @nn.compact
    def __call__(self, x: jax.Array, *, deterministic: bool, residual: jax.Array | None = None) -> jax.Array:
        """The MLP's output, plus `residual` where given (added in the last product's pass where it can be:
        `dense_product`)."""
        dot_general = dense_dot_general(self.dtype, self.matmul)

        def dense(features: int, name: str, activation: str | None = None) -> Callable[..., jax.Array]:
            kwargs = dict(dtype=self.dtype, kernel_init=nn.initializers.xavier_uniform(), use_bias=self.use_bias,
                          bias_init=nn.initializers.normal(stddev=1e-6), dot_general=dot_general, name=name)
            if dot_general is mixed_dot_general:  # vit_jax's own products (as in the attention layer): bias
                # gradients as products, the activation in the product's pass where it can be (`dense_product`)
                return MixedDense(features, activation=activation, **kwargs)
            layer = nn.Dense(features, **kwargs)
            return layer if activation is None else lambda x: ACTIVATIONS[activation](layer(x))

        out_dim = x.shape[-1] if self.out_dim is None else self.out_dim
        if self.gated:
            x = dense(self.mlp_dim, "Gate", "silu")(x) * dense(self.mlp_dim, "Dense_0")(x)
        else:
            x = dense(self.mlp_dim, "Dense_0", activation_name(self.gelu_approximate, self.quick_gelu))(x)
        x = constrain_hidden(x, self.activation_sharding)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        if self.norm:
            x = LayerNorm(epsilon=self.layer_norm_epsilon, dtype=self.dtype, rms=self.rms_norm)(x)
        if residual is not None and (deterministic or self.dropout_rate == 0) and dot_general is mixed_dot_general:
            return dense(out_dim, "Dense_1")(x, residual)  # no dropout between the layer and the residual
        x = dense(out_dim, "Dense_1")(x)
        x = nn.Dropout(rate=self.dropout_rate)(x, deterministic=deterministic)
        return x if residual is None else residual + x


class LayerScale(nn.Module):
    """A learned per-channel factor on a residual branch (CaiT; timm's `ls1` / `ls2`, their `gamma`)."""

    init_value: float

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        scale = self.param("scale", nn.initializers.constant(self.init_value), (x.shape[-1],), jnp.float32)
        return x * scale.astype(x.dtype)


def drop_path(x: jax.Array, rate: float | jax.Array, rng: jax.Array) -> jax.Array:
    """Stochastic depth: zero a whole example's residual branch with probability `rate`, rescale the rest."""
    keep = 1.0 - rate
    mask = jax.random.bernoulli(rng, keep, (x.shape[0],) + (1,) * (x.ndim - 1))
    return jnp.where(mask, x / jnp.asarray(keep, x.dtype), jnp.zeros_like(x))


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
    grid: tuple[int, ...] | None = None  # the patch grid (for relative position biases)
    num_kv_heads: int | None = None  # this block's key/value heads (grouped-query attention); None: num_heads

    @nn.compact
    def __call__(self, x: jax.Array, drop_path_rate: float | jax.Array, deterministic: bool,
                 mask: jax.Array | None = None, coords: jax.Array | None = None) -> tuple[jax.Array, None]:
        o = self.options
        x = constrain_tokens(x, o.activation_sharding)
        y = LayerNorm(epsilon=o.layer_norm_epsilon, dtype=o.dtype, rms=o.rms_norm)(x)
        dot_general = dense_dot_general(o.dtype, o.matmul)
        attention_fn = attention_function(o.attention_impl, o.dtype, o.attention_dropout_rate, o.record_attention)
        if self.rope is not None:
            attention_fn = rotating_attention(attention_fn, self._rotary_angles(coords, x.shape[-1]),
                                              self.num_prefix, o.rope_pairing)
        # the residual added in the branch's last product's pass (inference on oneDNN: `dense_product`) where
        # nothing acts between them
        plain = deterministic or (o.dropout_rate == 0 and not o.stochastic_depth)
        direct = o.layer_scale is None and plain
        direct_mlp = (o.layer_scale is None or o.layer_scale_attention_only) and plain
        attention = MultiHeadDotProductAttention(
            num_heads=o.num_heads,
            qkv_features=o.qkv_dim,
            qkv_bias=o.qkv_bias,
            dtype=o.dtype,
            qkv_dot_general=dot_general,
            out_dot_general=dot_general,
            attention_fn=attention_fn,
            dropout_rate=o.attention_dropout_rate,
            inner_norm=o.attention_norm,
            layer_norm_epsilon=o.layer_norm_epsilon,
            rms_norm=o.rms_norm,
            out_bias=o.proj_bias,
            qk_norm=o.qk_norm,
            relative_position_grid=self._relative_position_grid(),
            relative_position_resize=o.relative_position_resize,
            num_prefix=self.num_prefix,
            num_kv_heads=self.num_kv_heads,
        )
        attend = dict(deterministic=deterministic, mask=mask, sow_weights=o.record_attention)
        if direct:
            x = attention(y, residual=x, **attend)
        else:
            y = nn.Dropout(rate=o.dropout_rate)(attention(y, **attend), deterministic=deterministic)
            x = x + self._maybe_drop_path(self._maybe_scale(y, 0), drop_path_rate, deterministic)

        y = LayerNorm(epsilon=o.layer_norm_epsilon, dtype=o.dtype, rms=o.rms_norm)(x)
        mlp = MlpBlock(
            mlp_dim=o.mlp_dim,
            dropout_rate=o.dropout_rate,
            gelu_approximate=o.gelu_approximate,
            quick_gelu=o.quick_gelu,
            gated=o.gated_mlp,
            norm=o.mlp_norm,
            layer_norm_epsilon=o.layer_norm_epsilon,
            rms_norm=o.rms_norm,
            use_bias=o.proj_bias,
            dtype=o.dtype,
            matmul=o.matmul,
            activation_sharding=o.activation_sharding,
        )
        if direct_mlp:
            return mlp(y, deterministic=deterministic, residual=x), None
        return x + self._maybe_drop_path(self._maybe_scale(mlp(y, deterministic=deterministic), 1), drop_path_rate,
                                         deterministic), None

    def _relative_position_grid(self) -> tuple[int, int] | None:
        if not self.options.relative_position_bias:
            return None
        if self.grid is None or len(self.grid) != 2:
            raise ValueError(f"relative_position_bias is for images on a patch grid (BEiT's); got grid {self.grid}")
        return tuple(self.grid)

    def _maybe_scale(self, y: jax.Array, branch: int) -> jax.Array:
        """Branch 0 (attention) or 1 (MLP) times its `LayerScale_{branch}`, where the model has one."""
        o = self.options
        if o.layer_scale is None or (branch == 1 and o.layer_scale_attention_only):
            return y
        return LayerScale(o.layer_scale, name=f"LayerScale_{branch}")(y)

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
