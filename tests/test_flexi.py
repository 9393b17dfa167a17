import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import MINI, live_params
from vit_jax.flexi import draw_patch_size, flexi_patch_sizes, flexi_probabilities, patch_label
from vit_jax.models import create_model
from vit_jax.models.patching import pi_resize_kernel
from vit_jax.models.posemb import resize_posemb

TINY = {**MINI, "num_layers": 2}


def test_sizes_probabilities_and_labels():
    assert flexi_patch_sizes([1, 2, (4, 8), [3, 3]]) == ((1, 1), (2, 2), (4, 8), (3, 3))
    np.testing.assert_allclose(flexi_probabilities(((1, 1), (2, 2)), ()), [0.5, 0.5])
    np.testing.assert_allclose(flexi_probabilities(((1, 1), (2, 2)), (1, 3)), [0.25, 0.75])
    with pytest.raises(ValueError, match="must be 2 non-negative numbers"):
        flexi_probabilities(((1, 1), (2, 2)), (1, 2, 3))
    with pytest.raises(ValueError, match="must be 2 non-negative numbers"):
        flexi_probabilities(((1, 1), (2, 2)), (1, -1))
    assert (patch_label((4, 4)), patch_label((4, 8))) == ("4", "4x8")


def test_draws_depend_on_seed_and_step_only_and_follow_the_probabilities():
    sizes = ((1, 1), (2, 2), (4, 4))
    probabilities = flexi_probabilities(sizes, (0.2, 0.3, 0.5))
    draws = [draw_patch_size(0, step, sizes, probabilities) for step in range(6000)]
    assert draws == [draw_patch_size(0, step, sizes, probabilities) for step in range(6000)]
    assert draws != [draw_patch_size(1, step, sizes, probabilities) for step in range(6000)]
    frequencies = [draws.count(size) / len(draws) for size in sizes]
    np.testing.assert_allclose(frequencies, [0.2, 0.3, 0.5], atol=0.025)  # > 4 standard deviations


@pytest.fixture
def flexible_model_and_params():
    model = create_model("Ti/4", num_classes=5, **TINY, posemb_grid=(4, 4))  # 16x16 images: a 4x4 grid
    params = live_params(model, jnp.zeros((1, 16, 16, 3)))
    return model, params


@pytest.mark.parametrize("patch", [2, 8])
def test_another_patch_size_equals_a_dedicated_model_with_pi_resized_kernel_and_resized_table(
        flexible_model_and_params, patch, rng):
    model, params = flexible_model_and_params
    images = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    grid = 16 // patch
    dedicated = create_model(f"Ti/{patch}", num_classes=5, **TINY)
    resized = jax.tree.map(lambda x: x, params)
    resized["embedding"]["kernel"] = pi_resize_kernel(np.asarray(params["embedding"]["kernel"]), patch)
    table = params["Transformer"]["posembed_input"]["pos_embedding"]
    resized["Transformer"]["posembed_input"]["pos_embedding"] = resize_posemb(
        table, (4, 4), (grid, grid), num_prefix=1, method="bilinear", antialias=True)
    expected = dedicated.apply({"params": resized}, images, train=False)
    got = model.apply({"params": params}, images, train=False, patch_size=patch)
    np.testing.assert_allclose(got, expected, atol=1e-4, rtol=1e-4)


def test_at_its_own_patch_size_and_grid_the_model_is_the_fixed_one(flexible_model_and_params, rng):
    model, params = flexible_model_and_params
    images = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    fixed = model.clone(posemb_grid=None)
    np.testing.assert_array_equal(model.apply({"params": params}, images, train=False, patch_size=4),
                                  fixed.apply({"params": params}, images, train=False))


def test_one_table_serves_other_resolutions(flexible_model_and_params, rng):
    model, params = flexible_model_and_params
    images = rng.standard_normal((1, 24, 32, 3)).astype(np.float32)  # a 6x8 grid from the 4x4 table
    assert model.apply({"params": params}, images, train=False).shape == (1, 5)
