import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.conftest import MINI, live_params
from tests.numpy_reference import vit_forward
from vit_jax.models import create_model
from vit_jax.models.attention import attention_function
from vit_jax.models.encoder import unstack_encoder_blocks

TINY = {**MINI, "num_layers": 2, "num_heads": 4}


def _setup(**options):
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3)), jnp.float32)
    model = create_model("Ti/8", num_classes=5, **TINY, **options)
    params = live_params(model, images)
    return model, params, images


def _loss_and_grads(model, params, images):
    loss = lambda p: jnp.sum(model.apply({"params": p}, images, train=False) ** 2)
    return jax.jit(jax.value_and_grad(loss))(params)


def test_xla_attention_gives_the_einsum_models_outputs_and_gradients():
    einsum, params, images = _setup()
    fused = einsum.clone(attention_impl="xla")
    loss, grads = _loss_and_grads(einsum, params, images)
    fused_loss, fused_grads = _loss_and_grads(fused, params, images)
    np.testing.assert_allclose(fused_loss, loss, rtol=1e-5)
    for (path, g), f in zip(traverse_util.flatten_dict(grads).items(), traverse_util.flatten_dict(fused_grads).values()):
        np.testing.assert_allclose(f, g, rtol=2e-4, atol=1e-5, err_msg="/".join(path))
    np.testing.assert_allclose(einsum.apply({"params": params}, images, train=False),
                               vit_forward(params, np.asarray(images)), rtol=1e-4, atol=1e-5)


def test_xla_attention_in_bfloat16_stays_within_bf16_rounding_of_float32():
    model, params, images = _setup()
    reference = model.apply({"params": params}, images, train=False)
    fused = model.clone(attention_impl="xla", dtype=jnp.bfloat16).apply({"params": params}, images, train=False)
    np.testing.assert_allclose(fused, reference, atol=0.05 * float(jnp.abs(reference).max()))


def test_record_attention_sows_each_blocks_softmax_weights():
    model, params, images = _setup()
    logits, state = model.clone(record_attention=True).apply(
        {"params": params}, images, train=False, mutable=["intermediates"])
    encoder = state["intermediates"]["Transformer"]
    expected = []
    vit_forward(params, np.asarray(images), record_attention=expected)
    for layer, reference in enumerate(expected):
        (weights,) = encoder[f"encoderblock_{layer}"]["MultiHeadDotProductAttention_0"]["attention_weights"]
        assert weights.shape == (2, 4, 5, 5)  # batch, heads, 1 + 2x2 tokens, keys
        np.testing.assert_allclose(weights, reference, rtol=1e-4, atol=1e-6)


def test_record_attention_under_scan_stacks_the_weights_over_depth():
    model, params, images = _setup(scan=True)
    _, state = model.clone(record_attention=True).apply({"params": params}, images, train=False,
                                                        mutable=["intermediates"])
    (weights,) = state["intermediates"]["Transformer"]["encoderblock"]["MultiHeadDotProductAttention_0"][
        "attention_weights"]
    assert weights.shape == (2, 2, 4, 5, 5)  # depth, batch, heads, queries, keys
    np.testing.assert_allclose(weights.sum(-1), 1.0, rtol=1e-5)


@pytest.mark.parametrize("kv_heads, scan", [((2, 1), False), (2, True)])
def test_grouped_query_attention_is_full_attention_with_each_key_value_head_repeated(kv_heads, scan):
    """Grouped-query attention is multi-head attention whose key/value projections repeat each of their heads for
    its group of consecutive query heads (timm's `repeat_interleave`): the numpy reference, fed those repeated
    weights, gives the grouped model's logits; under scan as per layer."""
    images = jnp.asarray(np.random.default_rng(0).standard_normal((2, 16, 16, 3)), jnp.float32)
    grouped = create_model("Ti/8", num_classes=5, **TINY, num_kv_heads=kv_heads, scan=scan)
    params = live_params(grouped, images)
    full = traverse_util.flatten_dict(unstack_encoder_blocks(params) if scan else params)
    for path, value in list(full.items()):
        if path[-3:-1] in (("MultiHeadDotProductAttention_0", "key"), ("MultiHeadDotProductAttention_0", "value")):
            full[path] = np.repeat(value, 4 // value.shape[-2], axis=-2)  # (D, kv, hd) or (kv, hd) -> 4 heads
    expected = vit_forward(traverse_util.unflatten_dict(full), np.asarray(images))
    np.testing.assert_allclose(grouped.apply({"params": params}, images, train=False), expected, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("options, message", [
    (dict(num_kv_heads=2), r"num_kv_heads must be None, a divisor of num_heads 3, or one per block \(12\); got 2"),
    (dict(num_kv_heads=(4, 2)), r"one per block \(12\); got \(4, 2\)"),
    (dict(num_kv_heads=(3,) * 11 + (1,), scan=True), "cannot be one scan; set scan=False"),
    (dict(attention_impl="flash"), "attention_impl must be one of"),
    (dict(attention_impl="xla", attention_dropout_rate=0.1), "attention_dropout_rate 0.1"),
    (dict(attention_impl="cudnn"), "dtype bfloat16 or float16"),
    (dict(attention_impl="cudnn", dtype=jnp.bfloat16), "needs an NVIDIA GPU; this process's JAX backend is 'cpu'"),
    (dict(attention_impl="xla", record_attention=True), "recording attention weights needs attention_impl='einsum'"),
])
def test_bad_attention_options_are_named_when_the_model_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("Ti/16", num_classes=5, **options)


def test_cudnn_choice_calls_jax_with_the_cudnn_implementation(monkeypatch):
    """The GPU path on CPU: the same function, asked for cuDNN, reaches jax.nn.dot_product_attention."""
    seen = {}

    def spy(*args, implementation=None, **kwargs):
        seen["implementation"] = implementation
        return original(*args, **kwargs)

    original = jax.nn.dot_product_attention
    monkeypatch.setattr(jax.nn, "dot_product_attention", spy)
    q = jnp.ones((1, 3, 2, 4), jnp.bfloat16)
    out = attention_function("cudnn", jnp.bfloat16, 0.0)(q, q, q)
    assert seen["implementation"] == "cudnn" and out.shape == q.shape
    np.testing.assert_allclose(np.asarray(out, np.float32), 1.0)
