import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY, perturbed
from vit_jax.checkpoint.adapt import CheckpointMismatchError, fill_from_init, plan_adaptation
from vit_jax.checkpoint.inflate import inflate_kernel, inflate_posemb
from vit_jax.models import create_model
from vit_jax.models.patching import pi_resize_kernel
from vit_jax.models.posemb import resize_posemb

GAP = {**TINY, "classifier": "gap"}  # the tiny ViT, pooled by average (video models have no class token)
IMAGE_HW, FRAMES = (16, 12), 6  # a 4x3 patch grid at patch 4


def init_params(model, input_shape, seed=0):
    """Gaussian parameters of the model's shapes (std 0.2: every leaf matters, activations stay moderate)."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False))
    return perturbed(jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]), seed)


def logits(model, params, inputs):
    return jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, inputs)


def inflated(image_params, video_model, tubelet, inflation, frames=FRAMES):
    """Image params planned onto the video model's shapes (the fine-tuning path), then filled."""
    target = jax.eval_shape(lambda: video_model.init(jax.random.key(0), jnp.zeros((1, frames, *IMAGE_HW, 1)),
                                                     train=False))["params"]
    plan = plan_adaptation(image_params, target, old_grid=(4, 3), new_grid=(frames // tubelet, 4, 3),
                           inflation=inflation)
    return plan, fill_from_init(plan, jax.tree.map(np.zeros_like, image_params))


def image_and_video_models(tubelet):
    image = create_model("Ti/4", num_classes=5, **GAP)
    return image, image.clone(tubelet_size=tubelet)


def test_kernel_inflation_central_and_average():
    kernel = np.random.default_rng(0).standard_normal((4, 4, 3, 8)).astype(np.float32)
    central = inflate_kernel(kernel, 3, "central")
    assert central.shape == (3, 4, 4, 3, 8) and central.dtype == np.float32
    np.testing.assert_array_equal(central[1], kernel)
    assert not central[0].any() and not central[2].any()
    np.testing.assert_array_equal(inflate_kernel(kernel, 4, "central")[2], kernel)  # frame t // 2
    average = inflate_kernel(kernel, 4, "average")
    np.testing.assert_allclose(average.sum(0), kernel, rtol=1e-6)
    np.testing.assert_allclose(average[3], kernel / 4, rtol=1e-6)


def test_posemb_inflation_tiles_the_spatial_table_over_time_and_keeps_the_prefix_once(rng):
    table = rng.standard_normal((1, 1 + 4 * 3, 8)).astype(np.float32)
    video = inflate_posemb(table, (4, 3), (5, 4, 3), num_prefix=1)
    assert video.shape == (1, 1 + 5 * 4 * 3, 8)
    np.testing.assert_array_equal(video[0, 0], table[0, 0])
    grid = video[0, 1:].reshape(5, 4, 3, 8)  # row-major over (t, h, w)
    for t in range(5):
        np.testing.assert_array_equal(grid[t], table[0, 1:].reshape(4, 3, 8))
    resized = inflate_posemb(table, (4, 3), (2, 8, 6), num_prefix=1)
    spatial = np.asarray(resize_posemb(table, (4, 3), (8, 6), 1))
    np.testing.assert_allclose(resized[0, 1:].reshape(2, 48, 8), np.stack([spatial[0, 1:]] * 2), atol=1e-6)


@pytest.mark.parametrize("tubelet", [2, 3])
def test_average_inflation_on_a_static_video_gives_the_image_models_logits(tubelet, rng):
    # Every token of the image appears gt times: softmax attention's weighted average over keys, the MLP and
    # the mean pooling all stay the same, so the logits are the image's.
    image_model, video_model = image_and_video_models(tubelet)
    image_params = init_params(image_model, (*IMAGE_HW, 1))
    plan, video_params = inflated(image_params, video_model, tubelet, "average")
    frame = rng.standard_normal((2, *IMAGE_HW, 1)).astype(np.float32)
    video = np.repeat(frame[:, None], FRAMES, axis=1)
    image_logits = logits(image_model, image_params, frame)
    video_logits = logits(video_model, video_params, video)
    assert np.abs(image_logits).max() > 0.1  # perturbed parameters: a non-trivial function
    np.testing.assert_allclose(video_logits, image_logits, atol=2e-5)
    assert any("inflated from an image kernel to" in note and "(average)" in note for note in plan.notes)
    assert any("repeated over" in note for note in plan.notes)


def test_central_inflation_ignores_every_frame_but_each_tubelets_central_one(rng):
    # The central kernel is zero outside frame t // 2 of each tubelet: a video whose central frames all show one
    # image is that image to the model, whatever the other frames hold (here noise).
    tubelet = 3
    image_model, video_model = image_and_video_models(tubelet)
    image_params = init_params(image_model, (*IMAGE_HW, 1))
    _, video_params = inflated(image_params, video_model, tubelet, "central")
    frame = rng.standard_normal((2, *IMAGE_HW, 1)).astype(np.float32)
    video = 3.0 * rng.standard_normal((2, FRAMES, *IMAGE_HW, 1)).astype(np.float32)
    video[:, tubelet // 2 :: tubelet] = frame[:, None]  # frames 1 and 4
    image_logits = logits(image_model, image_params, frame)
    video_logits = logits(video_model, video_params, video)
    np.testing.assert_allclose(video_logits, image_logits, atol=2e-5)
    other = video.copy()
    other[:, 4] = rng.standard_normal((2, *IMAGE_HW, 1))  # change one central frame: the logits move
    assert np.abs(logits(video_model, video_params, other) - image_logits).max() > 1e-3


def test_inflation_after_pi_resize_when_the_patch_size_differs_too():
    image_model = create_model("Ti/8", num_classes=5, **GAP)
    image_params = init_params(image_model, (16, 16, 1))
    video_model = create_model("Ti/4", num_classes=5, tubelet_size=2, **GAP)
    target = jax.eval_shape(lambda: video_model.init(jax.random.key(0), jnp.zeros((1, 4, 16, 16, 1)),
                                                     train=False))["params"]
    plan = plan_adaptation(image_params, target, old_grid=(2, 2), new_grid=(2, 4, 4), inflation="average")
    expected = inflate_kernel(pi_resize_kernel(np.asarray(image_params["embedding"]["kernel"]), 4), 2, "average")
    np.testing.assert_allclose(plan.flat[("embedding", "kernel")], expected, atol=1e-6)
    table = plan.flat[("Transformer", "posembed_input", "pos_embedding")]
    assert table.shape == (1, 2 * 4 * 4, 32)  # gap: no class-token row
    assert any("PI-resized" in note for note in plan.notes)
    assert any("resized (bilinear_align_corners) and repeated over 2" in note for note in plan.notes)


def test_a_video_checkpoint_loads_into_a_video_model_with_its_table_resized_over_time():
    video_model = create_model("Ti/4", num_classes=5, tubelet_size=2, **GAP)
    video_params = init_params(video_model, (4, 8, 8, 1))  # a 2x2x2 grid
    target = jax.eval_shape(lambda: video_model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 1)),
                                                     train=False))["params"]
    # a video workdir's config tells only the spatial grid; the table's rows tell the frames
    plan = plan_adaptation(video_params, target, old_grid=(2, 2), new_grid=(4, 2, 2))
    table = np.asarray(video_params["Transformer"]["posembed_input"]["pos_embedding"])
    np.testing.assert_allclose(plan.flat[("Transformer", "posembed_input", "pos_embedding")],
                               resize_posemb(table, (2, 2, 2), (4, 2, 2), num_prefix=0), atol=1e-6)
    np.testing.assert_array_equal(plan.flat[("embedding", "kernel")], video_params["embedding"]["kernel"])
    assert any("resized from a 2x2x2 to a 4x2x2 grid" in note for note in plan.notes)


def test_a_video_checkpoint_cannot_initialise_an_image_model():
    video_model = create_model("Ti/4", num_classes=5, tubelet_size=2, **GAP)
    video_params = init_params(video_model, (4, 8, 8, 1))
    image_model = create_model("Ti/4", num_classes=5, **GAP)
    target = jax.eval_shape(lambda: image_model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)),
                                                     train=False))["params"]
    with pytest.raises(CheckpointMismatchError, match=r"video model \(2x2x2 grid\) cannot initialise an image model"):
        plan_adaptation(video_params, target, old_grid=(2, 2, 2), new_grid=(2, 2))
    with pytest.raises(CheckpointMismatchError, match=r"embedding/kernel: checkpoint \(2, 4, 4, 1, 32\), model "
                                                      r"\(4, 4, 1, 32\)"):
        plan_adaptation(video_params, target, old_grid=(2, 2, 2), new_grid=(2, 2), posemb="reinit")


def test_inflation_errors_name_the_problem(rng):
    with pytest.raises(ValueError, match=r"inflation must be one of \('central', 'average'\); got 'middle'"):
        inflate_kernel(np.zeros((4, 4, 1, 8)), 2, "middle")
    with pytest.raises(ValueError, match=r"expected an image patch kernel \(ph, pw, C, D\); got shape \(2, 4, 4, 1, 8\)"):
        inflate_kernel(np.zeros((2, 4, 4, 1, 8)), 2)
    with pytest.raises(ValueError, match=r"image table's \(gh, gw\) grid to a video's \(gt, gh, gw\) grid"):
        inflate_posemb(np.zeros((1, 5, 8)), (2, 2), (2, 2))
    with pytest.raises(ValueError, match=r"inflation must be one of"):
        plan_adaptation({}, {}, old_grid=None, new_grid=(2, 2), inflation="middle")
