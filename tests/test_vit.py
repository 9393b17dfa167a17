import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.conftest import MINI, perturbed
from tests.numpy_reference import vit_forward
from vit_jax.models import create_model, stack_encoder_blocks
from vit_jax.models.posemb import resize_posemb

TINY = {**MINI, "num_layers": 2, "num_heads": 4}


def init(model, images, seed=0):
    return perturbed(model.init(jax.random.key(seed), images, train=False)["params"], seed=seed)


def test_parameter_names_are_vision_transformers_linen_tree():
    model = create_model("Ti/16", num_classes=10, **TINY, representation_size=8)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 48, 3)), train=False))
    names = set(traverse_util.flatten_dict(shapes["params"], sep="/"))
    block = [
        "LayerNorm_0/bias", "LayerNorm_0/scale", "LayerNorm_1/bias", "LayerNorm_1/scale",
        "MlpBlock_0/Dense_0/bias", "MlpBlock_0/Dense_0/kernel", "MlpBlock_0/Dense_1/bias", "MlpBlock_0/Dense_1/kernel",
        *[f"MultiHeadDotProductAttention_0/{p}/{w}" for p in ("query", "key", "value", "out") for w in ("kernel", "bias")],
    ]
    expected = {
        "embedding/kernel", "embedding/bias", "cls", "Transformer/posembed_input/pos_embedding",
        *[f"Transformer/encoderblock_{i}/{b}" for i in range(2) for b in block],
        "Transformer/encoder_norm/scale", "Transformer/encoder_norm/bias",
        "pre_logits/kernel", "pre_logits/bias", "head/kernel", "head/bias",
    }
    assert names == expected
    flat = traverse_util.flatten_dict(shapes["params"], sep="/")
    assert flat["embedding/kernel"].shape == (16, 16, 3, 16)
    assert flat["Transformer/posembed_input/pos_embedding"].shape == (1, 1 + 2 * 3, 16)
    assert flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/query/kernel"].shape == (16, 4, 4)
    assert flat["Transformer/encoderblock_0/MultiHeadDotProductAttention_0/out/kernel"].shape == (4, 4, 16)


@pytest.mark.parametrize(
    "options",
    [
        dict(),
        dict(classifier="gap", posemb="sincos2d"),
        dict(classifier="map", posemb="none", gelu_approximate=False),
        dict(representation_size=12, patch_embed="reshape"),
    ],
    ids=["token-learn", "gap-sincos2d", "map-none-exactgelu", "token-prelogits-reshape"],
)
def test_logits_match_an_independent_numpy_vit(options, rng):
    model = create_model("Ti/8x4", num_classes=5, **TINY, **options)
    images = rng.standard_normal((2, 16, 12, 3)).astype(np.float32)
    params = init(model, images)
    logits = model.apply({"params": params}, images, train=False)
    reference_options = {k: v for k, v in options.items() if k in ("classifier", "posemb", "gelu_approximate")}
    np.testing.assert_allclose(logits, vit_forward(params, images, **reference_options), atol=2e-4, rtol=1e-4)


def test_conv_and_reshape_models_share_a_checkpoint(rng):
    model = create_model("Ti/4x8", num_classes=5, **TINY, patch_embed="conv")
    images = rng.standard_normal((2, 16, 24, 1)).astype(np.float32)
    params = init(model, images)
    conv = model.apply({"params": params}, images, train=False)
    reshape = model.clone(patch_embed="reshape").apply({"params": params}, images, train=False)
    assert np.abs(np.asarray(conv) - np.asarray(reshape)).max() < 1e-5


def test_scanned_and_layered_models_give_the_same_logits(rng):
    layered = create_model("Ti/4", num_classes=5, **{**TINY, "num_layers": 3})
    images = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    params = init(layered, images)
    scanned = layered.clone(scan=True)
    np.testing.assert_allclose(scanned.apply({"params": stack_encoder_blocks(params)}, images, train=False),
                               layered.apply({"params": params}, images, train=False), atol=1e-5)


def test_bfloat16_computation_keeps_float32_parameters_and_logits(rng):
    model = create_model("Ti/4", num_classes=5, **TINY, dtype=jnp.bfloat16)
    images = rng.standard_normal((2, 8, 8, 3)).astype(np.float32)
    variables = model.init(jax.random.key(0), images, train=False)
    assert {leaf.dtype for leaf in jax.tree.leaves(variables)} == {jnp.dtype(jnp.float32)}
    params = perturbed(variables["params"])
    logits, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
    assert state["intermediates"]["encoded"][0].dtype == jnp.bfloat16
    assert logits.dtype == jnp.float32
    full = model.clone(dtype=None).apply({"params": params}, images, train=False)
    assert np.abs(np.asarray(logits) - np.asarray(full)).max() < 0.05 * np.abs(np.asarray(full)).max()


def test_zero_padding_lets_any_image_size_through(rng):
    model = create_model("Ti/4", num_classes=5, **TINY, pad="zeros")
    images = rng.standard_normal((2, 9, 10, 3)).astype(np.float32)
    params = init(model, images)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 3 * 3, 16)
    padded = np.zeros((2, 12, 12, 3), np.float32)
    padded[:, :9, :10] = images
    np.testing.assert_allclose(model.apply({"params": params}, images, train=False),
                               vit_forward(params, padded), atol=2e-4, rtol=1e-4)


def test_training_needs_dropout_rng_and_gives_gradients_for_every_parameter(rng):
    model = create_model("Ti/4", num_classes=5, **TINY, dropout_rate=0.1, stochastic_depth=0.1)
    images = rng.standard_normal((4, 8, 8, 3)).astype(np.float32)
    params = init(model, images)
    loss = lambda p: jnp.mean(model.apply({"params": p}, images, train=True, rngs={"dropout": jax.random.key(1)}) ** 2)
    grads = jax.jit(jax.grad(loss))(params)
    assert all(float(jnp.abs(g).max()) > 0 for g in jax.tree.leaves(grads))


@pytest.mark.parametrize(
    "overrides, message",
    [
        (dict(num_heads=5), "hidden_size 16 is not divisible by num_heads 5"),
        (dict(posemb="rope"), "posemb must be one of .*'learn'.*'sincos2d'.*'none'.* got 'rope'"),
        (dict(classifier="cls"), "classifier must be one of .*'token'.*'gap'.*'map'.* got 'cls'"),
        (dict(patch_embed="linear"), "patch_embed must be one of .* got 'linear'"),
        (dict(posemb="sincos2d", hidden_size=18, num_heads=2), "sincos2d' needs hidden_size divisible by 4.* got hidden_size 18"),
        (dict(dropout_rate=1.0), r"dropout_rate must be in \[0, 1\); got 1.0"),
        (dict(stochastic_depth=-0.1), r"stochastic_depth must be in \[0, 1\); got -0.1"),
        (dict(num_layers=0), "num_layers must be a positive int; got 0"),
        (dict(patch_size=(4, 0)), r"patch_size must be a positive int .* got \(4, 0\)"),
    ],
)
def test_inconsistent_options_fail_when_the_model_is_built(overrides, message):
    with pytest.raises(ValueError, match=message):
        create_model("Ti/4", num_classes=5, **{**TINY, **overrides})


def test_any_resolution_model_resizes_its_table_in_the_forward_pass(rng):
    """`posemb_grid` makes one model run at every input size: the same as the fixed-grid model at the training
    size, and as the NumPy reference with the resized table (and the zero-padded image) elsewhere."""
    model = create_model("Ti/4", num_classes=5, **TINY, posemb_grid=(3, 3), pad="zeros")
    train_size = rng.standard_normal((2, 12, 12, 3)).astype(np.float32)
    params = init(model, train_size)
    fixed = model.clone(posemb_grid=None)
    np.testing.assert_array_equal(model.apply({"params": params}, train_size, train=False),
                                  fixed.apply({"params": params}, train_size, train=False))

    other = rng.standard_normal((2, 18, 13, 3)).astype(np.float32)  # padded to 20x16: a 5x4 grid
    padded = np.zeros((2, 20, 16, 3), np.float32)
    padded[:, :18, :13] = other
    resized = jax.tree.map(np.asarray, params)
    table = resized["Transformer"]["posembed_input"]["pos_embedding"]
    resized["Transformer"]["posembed_input"]["pos_embedding"] = np.asarray(
        resize_posemb(table, (3, 3), (5, 4), num_prefix=1, method="bilinear", antialias=True))
    np.testing.assert_allclose(model.apply({"params": params}, other, train=False), vit_forward(resized, padded),
                               atol=2e-4, rtol=1e-4)

    traces = []
    forward = jax.jit(lambda p, x: traces.append(x.shape) or model.apply({"params": p}, x, train=False))
    for images in (train_size, other, train_size, other[:, :16, :8]):
        forward(params, images)
    assert traces == [(2, 12, 12, 3), (2, 18, 13, 3), (2, 16, 8, 3)]  # one compiled function per input shape
