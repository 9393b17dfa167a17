import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import MINI, live_params, perturbed
from tests.numpy_reference import map_head
from vit_jax.models import create_model
from vit_jax.models.heads import MAPHead, num_prefix_tokens, pool_tokens


def tiny(**overrides):
    options = dict(**MINI, **overrides)
    return create_model("Ti/4", num_classes=5, **options)


def run(model, images, params=None):
    params = params or live_params(model, images)
    logits, state = model.apply({"params": params}, images, train=False, mutable=["intermediates"])
    return params, np.asarray(logits), np.asarray(state["intermediates"]["encoded"][0])


def head(params, x):
    return x @ np.asarray(params["head"]["kernel"]) + np.asarray(params["head"]["bias"])


@pytest.fixture
def images(rng):
    return rng.standard_normal((3, 8, 12, 3)).astype(np.float32)


def test_token_classifies_the_class_token(images):
    params, logits, encoded = run(tiny(classifier="token"), images)
    assert params["cls"].shape == (1, 1, 16)
    assert encoded.shape == (3, 1 + 6, 16)
    np.testing.assert_allclose(logits, head(params, encoded[:, 0]), atol=1e-5)


def test_gap_averages_all_tokens_without_a_class_token(images):
    params, logits, encoded = run(tiny(classifier="gap"), images)
    assert "cls" not in params
    assert encoded.shape == (3, 6, 16)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 6, 16)
    np.testing.assert_allclose(logits, head(params, encoded.mean(1)), atol=1e-5)


def test_map_pools_with_a_learned_probe(images):
    params, logits, encoded = run(tiny(classifier="map"), images)
    assert "cls" not in params
    assert sorted(params["MAPHead_0"]) == ["LayerNorm_0", "MlpBlock_0", "MultiHeadDotProductAttention_0", "probe"]
    assert params["MAPHead_0"]["probe"].shape == (1, 1, 16)
    np.testing.assert_allclose(logits, head(params, map_head(encoded, params["MAPHead_0"])), atol=1e-4)


def test_map_head_pools_a_permutation_invariant_summary(rng):
    x = rng.standard_normal((2, 9, 8)).astype(np.float32)
    module = MAPHead(num_heads=2, mlp_dim=16)
    params = perturbed(module.init(jax.random.key(0), x)["params"])
    np.testing.assert_allclose(module.apply({"params": params}, x),
                               module.apply({"params": params}, x[:, ::-1]), atol=1e-5)


@pytest.mark.parametrize("classifier, prefix", [("unpooled", 0), ("token_unpooled", 1)])
def test_unpooled_classifies_every_token(classifier, prefix, images):
    params, logits, encoded = run(tiny(classifier=classifier), images)
    assert logits.shape == (3, prefix + 6, 5)
    np.testing.assert_allclose(logits, head(params, encoded), atol=1e-5)


def test_representation_size_adds_pre_logits_dense_and_tanh(images):
    params, logits, encoded = run(tiny(representation_size=7), images)
    assert params["pre_logits"]["kernel"].shape == (16, 7)
    pre = np.tanh(encoded[:, 0] @ np.asarray(params["pre_logits"]["kernel"]) + np.asarray(params["pre_logits"]["bias"]))
    np.testing.assert_allclose(logits, head(params, pre), atol=1e-5)
    assert "pre_logits" not in run(tiny(), images)[0]


def test_head_starts_at_zero_kernel_and_the_configured_bias(images):
    params = tiny(head_bias_init=-6.9).init(jax.random.key(0), images, train=False)["params"]
    np.testing.assert_array_equal(params["head"]["kernel"], np.zeros((16, 5)))
    np.testing.assert_allclose(params["head"]["bias"], np.full(5, -6.9), rtol=1e-6)
    np.testing.assert_array_equal(params["cls"], np.zeros((1, 1, 16)))


def test_no_head_returns_the_representation(images):
    model = create_model("Ti/4", num_classes=None, **MINI)
    params, out, encoded = run(model, images)
    assert "head" not in params
    np.testing.assert_allclose(out, encoded[:, 0], atol=1e-6)


def test_pool_tokens_and_prefix_counts():
    x = jnp.arange(24.0).reshape(2, 3, 4)
    np.testing.assert_array_equal(pool_tokens(x, "token"), x[:, 0])
    np.testing.assert_allclose(pool_tokens(x, "gap"), x.mean(1))
    assert [num_prefix_tokens(c) for c in ["token", "gap", "map", "unpooled", "token_unpooled"]] == [1, 0, 0, 0, 1]
    with pytest.raises(ValueError, match="classifier must be one of .* got 'max'"):
        pool_tokens(x, "max")
