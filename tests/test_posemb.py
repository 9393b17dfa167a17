import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import perturbed
from tests.numpy_reference import patch_tokens, sincos2d_table
from vit_jax.models import create_model
from vit_jax.models.posemb import AddPositionEmbs, sincos2d


@pytest.mark.parametrize("grid, width", [((3, 5), 16), ((4, 4), 32), ((2, 7), 8)])
def test_sincos2d_matches_the_formula(grid, width):
    np.testing.assert_allclose(sincos2d(grid, width), sincos2d_table(*grid, width), atol=1e-12)


def test_sincos2d_reference_values_h14_w14_d384():
    table = sincos2d((14, 14), 384)
    assert table.shape == (196, 384)
    # Token 15 is row y=1, column x=1.
    np.testing.assert_allclose(
        table[15, [0, 1, 96, 192, 288]], [0.841471, 0.788029, 0.540302, 0.841471, 0.540302], atol=1e-6
    )
    assert table.sum() == pytest.approx(34742.763, abs=1e-3)


def test_sincos2d_layout_x_is_column_y_is_row():
    table = sincos2d((3, 4), 8)  # quarter = 2: omega = [1, 1e-4]
    # Same column, different row: the x half agrees, the y half does not; and vice versa.
    np.testing.assert_array_equal(table[1, :4], table[4 + 1, :4])
    assert not np.allclose(table[1, 4:], table[4 + 1, 4:])
    np.testing.assert_array_equal(table[4, 4:], table[4 + 3, 4:])
    np.testing.assert_allclose(table[4 * 2 + 3], [np.sin(3), np.sin(3e-4), np.cos(3), np.cos(3e-4),
                                                  np.sin(2), np.sin(2e-4), np.cos(2), np.cos(2e-4)])


@pytest.mark.parametrize("width", [6, 4, 10])
def test_sincos2d_width_must_be_divisible_by_4(width):
    with pytest.raises(ValueError, match=f"width divisible by 4 and at least 8.*got width {width}"):
        sincos2d((2, 2), width)


def test_learned_table_shape_and_init():
    module = AddPositionEmbs("learn", grid=(14, 14), num_prefix=1)
    tokens = jnp.zeros((2, 197, 384))
    table = module.init(jax.random.key(0), tokens)["params"]["pos_embedding"]
    assert table.shape == (1, 197, 384)
    assert abs(float(table.mean())) < 1e-3
    assert float(table.std()) == pytest.approx(0.02, rel=0.02)  # 75,648 draws of normal(stddev=0.02)
    out = module.apply({"params": {"pos_embedding": table}}, tokens + 1.0)
    np.testing.assert_allclose(out, 1.0 + np.broadcast_to(table, (2, 197, 384)), atol=1e-7)


def test_learned_table_without_class_token_has_no_prefix_row():
    module = AddPositionEmbs("learn", grid=(2, 3), num_prefix=0)
    assert module.init(jax.random.key(0), jnp.zeros((1, 6, 8)))["params"]["pos_embedding"].shape == (1, 6, 8)


def test_wrong_token_count_is_a_clear_error():
    with pytest.raises(ValueError, match=r"got 11 tokens; expected 1 prefix token\(s\) \+ a 3x3 patch grid"):
        AddPositionEmbs("learn", grid=(3, 3), num_prefix=1).init(jax.random.key(0), jnp.zeros((1, 11, 8)))


def test_model_adds_learned_table_after_prepending_the_class_token(rng):
    model = create_model("Ti/4", num_classes=3, hidden_size=16, num_layers=1, mlp_dim=32, num_heads=2)
    images = rng.standard_normal((2, 8, 12, 3)).astype(np.float32)
    params = perturbed(model.init(jax.random.key(0), images, train=False)["params"])
    _, state = model.apply({"params": params}, images, train=False, capture_intermediates=True)
    seen = state["intermediates"]["Transformer"]["posembed_input"]["__call__"][0]

    table = np.asarray(params["Transformer"]["posembed_input"]["pos_embedding"])
    assert table.shape == (1, 1 + 2 * 3, 16)
    patches = patch_tokens(images, np.asarray(params["embedding"]["kernel"]), np.asarray(params["embedding"]["bias"]))
    cls = np.broadcast_to(np.asarray(params["cls"]), (2, 1, 16))
    np.testing.assert_allclose(seen, np.concatenate([cls, patches], axis=1) + table, atol=2e-5)


@pytest.mark.parametrize("posemb", ["sincos2d", "none"])
@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_fixed_and_no_posemb_have_no_parameter(posemb, classifier, rng):
    model = create_model("Ti/4", num_classes=3, hidden_size=16, num_layers=1, mlp_dim=32, num_heads=2,
                         posemb=posemb, classifier=classifier)
    images = rng.standard_normal((2, 8, 12, 3)).astype(np.float32)
    params = perturbed(model.init(jax.random.key(0), images, train=False)["params"])
    assert "posembed_input" not in params["Transformer"]
    _, state = model.apply({"params": params}, images, train=False, capture_intermediates=True)
    seen = state["intermediates"]["Transformer"]["posembed_input"]["__call__"][0]

    tokens = patch_tokens(images, np.asarray(params["embedding"]["kernel"]), np.asarray(params["embedding"]["bias"]))
    if posemb == "sincos2d":
        tokens = tokens + sincos2d_table(2, 3, 16)
    if classifier == "token":  # the class token's row of a fixed table is zero
        tokens = np.concatenate([np.broadcast_to(np.asarray(params["cls"]), (2, 1, 16)), tokens], axis=1)
    np.testing.assert_allclose(seen, tokens, atol=2e-5)


def test_table_trained_at_another_resolution_is_a_clear_error():
    model = create_model("Ti/4", num_classes=3, hidden_size=16, num_layers=1, mlp_dim=32, num_heads=2)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)["params"]
    with pytest.raises(ValueError, match=r"pos_embedding has 5 rows but the input has 10 tokens .*3x3 patch grid"):
        model.apply({"params": params}, jnp.zeros((1, 12, 12, 3)), train=False)
