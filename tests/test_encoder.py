import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import live_params, perturbed
from tests.numpy_reference import encoder_block, gelu, layer_norm
from vit_jax.models.block import Encoder1DBlock, MlpBlock, drop_path
from vit_jax.models.encoder import Encoder, drop_path_rates, stack_encoder_blocks, unstack_encoder_blocks
from vit_jax.models.encoder_options import EncoderOptions

TINY = dict(mlp_dim=32, num_heads=4)


def tiny_encoder(**kwargs) -> Encoder:
    layout = {key: kwargs.pop(key) for key in ("grid", "num_prefix", "posemb", "posemb_grid") if key in kwargs}
    options = EncoderOptions(**{**dict(num_layers=3, **TINY), **kwargs})
    return Encoder(options, **{**dict(grid=(2, 3), num_prefix=1), **layout})


def tokens(rng, batch: int = 2) -> np.ndarray:
    return rng.standard_normal((batch, 7, 16)).astype(np.float32)


@pytest.mark.parametrize("gelu_approximate, gated_mlp", [(True, False), (False, False), (True, True)])
def test_block_is_pre_layernorm_attention_and_mlp(gelu_approximate, gated_mlp, rng):
    x = tokens(rng)
    block = Encoder1DBlock(EncoderOptions(num_layers=1, **TINY, gelu_approximate=gelu_approximate,
                                          gated_mlp=gated_mlp))
    params = perturbed(block.init(jax.random.key(0), x, 0.0, True)["params"])
    assert ("Gate" in params["MlpBlock_0"]) == gated_mlp
    assert params["MlpBlock_0"]["Dense_0"]["kernel"].shape == (16, TINY["mlp_dim"])
    out, _ = block.apply({"params": params}, x, 0.0, True)
    np.testing.assert_allclose(out, encoder_block(x, params, gelu_approximate), atol=1e-4, rtol=1e-4)


def test_encoder_applies_blocks_then_final_norm(rng):
    x = tokens(rng)
    encoder = tiny_encoder(posemb="none")
    params = live_params(encoder, x)
    expected = x.astype(np.float64)
    for layer in range(3):
        expected = encoder_block(expected, params[f"encoderblock_{layer}"])
    expected = layer_norm(expected, params["encoder_norm"])
    np.testing.assert_allclose(encoder.apply({"params": params}, x, train=False), expected, atol=1e-4, rtol=1e-4)


def test_gelu_tanh_and_exact_are_the_two_named_conventions():
    x = np.linspace(-6, 6, 2001).astype(np.float32)
    mlp = MlpBlock(mlp_dim=1)
    params = {"Dense_0": {"kernel": np.ones((1, 1), np.float32), "bias": np.zeros(1, np.float32)},
              "Dense_1": {"kernel": np.ones((1, 1), np.float32), "bias": np.zeros(1, np.float32)}}
    tanh = np.asarray(mlp.apply({"params": params}, x[:, None], deterministic=True))[:, 0]
    exact = np.asarray(mlp.clone(gelu_approximate=False).apply({"params": params}, x[:, None],
                                                              deterministic=True))[:, 0]
    np.testing.assert_allclose(tanh, gelu(x.astype(np.float64), approximate=True), atol=1e-6)
    np.testing.assert_allclose(exact, gelu(x.astype(np.float64), approximate=False), atol=1e-6)
    assert 4e-4 < np.abs(tanh - exact).max() < 4.8e-4  # the known gap between timm's GELU and flax's default


def test_scan_gives_the_same_output_as_layers(rng):
    x = tokens(rng)
    layered = tiny_encoder()
    params = live_params(layered, x)
    expected = layered.apply({"params": params}, x, train=False)
    for options in [dict(scan=True), dict(scan=True, remat=True), dict(remat=True, remat_policy="dots_saveable")]:
        model = tiny_encoder(**options)
        converted = stack_encoder_blocks({"Transformer": params})["Transformer"] if model.options.scan else params
        np.testing.assert_allclose(model.apply({"params": converted}, x, train=False), expected, atol=1e-5)


def test_layout_conversion_round_trips_and_matches_scanned_init(rng):
    x = tokens(rng)
    params = {"Transformer": tiny_encoder().init(jax.random.key(0), x, train=False)["params"], "head": {"b": 1}}
    stacked = stack_encoder_blocks(params)
    scanned_init = tiny_encoder(scan=True).init(jax.random.key(0), x, train=False)["params"]
    assert jax.tree.map(np.shape, stacked["Transformer"]) == jax.tree.map(np.shape, scanned_init)
    assert stacked["Transformer"]["encoderblock"]["MlpBlock_0"]["Dense_0"]["kernel"].shape == (3, 16, 32)
    np.testing.assert_array_equal(stacked["Transformer"]["encoderblock"]["LayerNorm_0"]["scale"][2],
                                  params["Transformer"]["encoderblock_2"]["LayerNorm_0"]["scale"])
    assert stacked["head"] == {"b": 1}
    jax.tree.map(np.testing.assert_array_equal, unstack_encoder_blocks(stacked), params)


def test_layout_conversion_errors_name_what_was_found():
    with pytest.raises(ValueError, match="no Transformer/encoderblock_N entries to stack; found \\['encoder_norm'\\]"):
        stack_encoder_blocks({"Transformer": {"encoder_norm": {}}})
    with pytest.raises(ValueError, match="not numbered 0..1"):
        stack_encoder_blocks({"Transformer": {"encoderblock_0": {"a": np.zeros(1)}, "encoderblock_2": {"a": np.zeros(1)}}})
    with pytest.raises(ValueError, match="no Transformer/encoderblock entry to unstack"):
        unstack_encoder_blocks({"Transformer": {"encoderblock_0": {}}})


def test_drop_path_drops_whole_examples_at_the_rate_and_keeps_the_mean():
    x = jnp.ones((20_000, 3, 2))
    out = np.asarray(drop_path(x, 0.3, jax.random.key(0)))
    dropped = (out == 0).all(axis=(1, 2))
    kept = np.isclose(out, 1 / 0.7).all(axis=(1, 2))
    assert (dropped | kept).all()  # an example's branch is dropped whole or kept whole
    assert dropped.mean() == pytest.approx(0.3, abs=0.01)  # 7 standard deviations of the binomial
    assert out.mean() == pytest.approx(1.0, abs=0.02)


def test_drop_path_rates_rise_linearly_to_the_configured_rate():
    np.testing.assert_allclose(drop_path_rates(0.2, 5), [0.0, 0.05, 0.1, 0.15, 0.2])


@pytest.mark.parametrize("scan", [False, True])
def test_stochastic_depth_skips_the_last_block(scan, rng):
    # With rate ~1 for the last of two blocks (0 for the first), training output equals a one-block encoder.
    x = tokens(rng, batch=4)
    one_block = tiny_encoder(num_layers=1, posemb="none")
    params = perturbed(tiny_encoder(num_layers=2, posemb="none").init(jax.random.key(0), x, train=False)["params"])
    expected = one_block.apply({"params": {"encoderblock_0": params["encoderblock_0"],
                                           "encoder_norm": params["encoder_norm"]}}, x, train=False)
    two_blocks = tiny_encoder(num_layers=2, posemb="none", stochastic_depth=1 - 1e-7, scan=scan)
    run_params = stack_encoder_blocks({"Transformer": params})["Transformer"] if scan else params
    out = two_blocks.apply({"params": run_params}, x, train=True, rngs={"dropout": jax.random.key(1)})
    np.testing.assert_allclose(out, expected, atol=1e-5)
    evaluated = two_blocks.apply({"params": run_params}, x, train=False)
    assert np.abs(np.asarray(evaluated) - np.asarray(expected)).max() > 1e-2  # evaluation keeps every block


@pytest.mark.parametrize("scan", [False, True])
def test_dropout_is_active_in_training_only(scan, rng):
    x = tokens(rng)
    model = tiny_encoder(dropout_rate=0.1, attention_dropout_rate=0.1, stochastic_depth=0.1, scan=scan)
    params = model.init(jax.random.key(0), x, train=False)["params"]
    evaluated = model.apply({"params": params}, x, train=False)
    apply_train = jax.jit(lambda key: model.apply({"params": params}, x, train=True, rngs={"dropout": key}))
    train = lambda seed: apply_train(jax.random.key(seed))
    assert np.abs(np.asarray(train(1)) - np.asarray(evaluated)).max() > 1e-3
    assert np.abs(np.asarray(train(1)) - np.asarray(train(2))).max() > 1e-3
    np.testing.assert_array_equal(train(1), train(1))
    without = model.clone(options=dataclasses.replace(model.options, dropout_rate=0.0, attention_dropout_rate=0.0,
                                                      stochastic_depth=0.0))
    # without attention dropout the attention is vit_jax's own kernel (oneDNN's softmax where installed), with it
    # flax's: the same function, summed in other orders
    np.testing.assert_allclose(without.apply({"params": params}, x, train=True), evaluated, atol=1e-5)


def test_remat_gives_the_same_gradients(rng):
    x = tokens(rng)
    model = tiny_encoder()
    params = live_params(model, x)
    loss = lambda m: jax.jit(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, train=True) ** 2)))(params)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-5, rtol=1e-5),
                 loss(model.clone(options=dataclasses.replace(model.options, remat=True))), loss(model))


def test_remat_lowers_xlas_peak_memory_of_the_scanned_backward_pass():
    """XLA's own buffer assignment (what `python -m vit_jax.benchmark` reports as peak): with every block
    rematerialised, the backward pass keeps each block's input instead of all its activations. Over a scan: an
    unscanned model's peak is the same with and without remat on XLA:CPU (its scheduler runs the recomputations
    early, so they are all live at once), measured with this very test."""
    x = jax.ShapeDtypeStruct((256, 7, 16), jnp.float32)
    model = tiny_encoder(num_layers=4, scan=True)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 7, 16)), train=False)["params"])

    def peak(m):
        grad = jax.jit(jax.grad(lambda p, x: jnp.sum(m.apply({"params": p}, x, train=False) ** 2)))
        memory = grad.lower(params, x).compile().memory_analysis()
        return memory.temp_size_in_bytes

    plain, rematerialised = peak(model), peak(model.clone(options=dataclasses.replace(model.options, remat=True)))
    assert rematerialised < 0.7 * plain, (rematerialised, plain)


def test_dot_remat_policies_save_vit_jaxs_products(rng):
    """vit_jax's products (bf16, or oneDNN's) are a primitive of their own: `dots_saveable` must still see them as
    the dots they are, so the backward pass recomputes none of them (as with everything saved)."""
    x = jnp.asarray(tokens(rng), jnp.bfloat16)
    model = tiny_encoder(dtype=jnp.bfloat16)
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), x, train=False)["params"])

    def products(**remat):
        m = model.clone(options=dataclasses.replace(model.options, remat=True, **remat))
        text = jax.jit(jax.grad(lambda p: jnp.sum(m.apply({"params": p}, x, train=False).astype(jnp.float32))))
        text = text.lower(params).compile().as_text()
        return text.count('custom_call_target="vit_jax_matmul"') + text.count(" dot(")

    recomputed, saved = products(), products(remat_policy="everything_saveable")
    assert recomputed > saved
    assert products(remat_policy="dots_saveable") == saved


def test_unknown_remat_policy_lists_the_valid_ones(rng):
    with pytest.raises(ValueError, match="remat_policy 'fastest' is not a jax.checkpoint_policies member: .*dots_saveable"):
        tiny_encoder(remat=True, remat_policy="fastest").init(jax.random.key(0), tokens(rng), train=False)


def test_each_encoder_option_is_declared_once_and_is_a_model_and_config_option():
    from vit_jax.config import model_config
    from vit_jax.models.vit import MODEL_OPTIONS, VisionTransformer

    model_fields = {f.name: f for f in dataclasses.fields(VisionTransformer)}
    config = model_config("Ti/4")
    for option in dataclasses.fields(EncoderOptions):
        assert option.name not in VisionTransformer.__annotations__, option.name  # inherited, not redeclared
        assert model_fields[option.name].default == option.default and option.name in MODEL_OPTIONS
        assert option.name in config or option.name == "activation_sharding", option.name  # the trainer sets it
    model = VisionTransformer(num_classes=3, patch_size=(4, 4), hidden_size=16, num_layers=2, mlp_dim=32,
                              num_heads=2, stochastic_depth=0.1)
    with pytest.raises(ValueError, match=r"remat_policy 'fastest' is not a jax.checkpoint_policies member"):
        model.clone(remat=True, remat_policy="fastest")  # checked where the option is defined, at build time
