import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.numpy_reference import patch_tokens
from vit_jax.models.patching import (
    PatchEmbed,
    bilinear_resize_matrix,
    grid_shape,
    patchify,
    pi_resize_kernel,
    unpatchify,
)

# (image height, width), (patch height, width)
SHAPES = [((32, 32), (16, 16)), ((24, 40), (8, 8)), ((32, 48), (8, 16)), ((12, 10), (4, 2)), ((7, 7), (7, 7))]


def init_embed(kind: str, patch, channels: int, images: np.ndarray, hidden: int = 24, **kwargs):
    module = PatchEmbed(hidden, patch, kind=kind, **kwargs)
    params = module.init(jax.random.key(0), jnp.asarray(images))["params"]
    params = {"kernel": params["kernel"], "bias": jax.random.normal(jax.random.key(1), (hidden,))}
    return module, params


@pytest.mark.parametrize("image_hw, patch", SHAPES)
@pytest.mark.parametrize("channels", [1, 3])
def test_conv_and_reshape_agree_on_one_kernel(image_hw, patch, channels, rng):
    images = rng.standard_normal((3, *image_hw, channels)).astype(np.float32)
    conv, params = init_embed("conv", patch, channels, images)
    reshape = conv.clone(kind="reshape")
    out_conv = conv.apply({"params": params}, images)
    out_reshape = reshape.apply({"params": params}, images)
    assert params["kernel"].shape == (*patch, channels, 24)
    gh, gw = image_hw[0] // patch[0], image_hw[1] // patch[1]
    assert out_conv.shape == out_reshape.shape == (3, gh * gw, 24)
    assert np.abs(np.asarray(out_conv) - np.asarray(out_reshape)).max() < 1e-5


@pytest.mark.parametrize("kind", ["conv", "reshape"])
@pytest.mark.parametrize("image_hw, patch", SHAPES[1:4])
def test_tokens_match_per_patch_reference_in_row_major_order(kind, image_hw, patch, rng):
    images = rng.standard_normal((2, *image_hw, 3)).astype(np.float32)
    module, params = init_embed(kind, patch, 3, images)
    expected = patch_tokens(images.astype(np.float64), np.asarray(params["kernel"], np.float64),
                            np.asarray(params["bias"], np.float64))
    np.testing.assert_allclose(module.apply({"params": params}, images), expected, atol=2e-5, rtol=1e-5)


def test_conv_matches_flax_conv_as_in_vision_transformer(rng):
    # vision_transformer's `embedding` is nn.Conv(D, kernel_size=patch, strides=patch, padding='VALID').
    images = rng.standard_normal((2, 32, 48, 3)).astype(np.float32)
    module, params = init_embed("conv", (8, 16), 3, images, output_format="grid")
    flax_conv = nn.Conv(24, kernel_size=(8, 16), strides=(8, 16), padding="VALID")
    np.testing.assert_allclose(
        module.apply({"params": params}, images), flax_conv.apply({"params": params}, images), atol=1e-6
    )


def test_grid_output_is_the_token_sequence_unflattened(rng):
    images = rng.standard_normal((2, 24, 40, 3)).astype(np.float32)
    module, params = init_embed("reshape", (8, 8), 3, images)
    tokens = module.apply({"params": params}, images)
    grid = module.clone(output_format="grid").apply({"params": params}, images)
    assert grid.shape == (2, 3, 5, 24)
    np.testing.assert_array_equal(grid[:, 1, 3], tokens[:, 1 * 5 + 3])
    np.testing.assert_array_equal(grid.reshape(2, 15, 24), tokens)


def test_patchify_flattens_row_column_channel_and_unpatchify_inverts(rng):
    images = rng.standard_normal((2, 6, 8, 3)).astype(np.float32)
    patches = np.asarray(patchify(jnp.asarray(images), (3, 2)))
    assert patches.shape == (2, 2, 4, 3 * 2 * 3)
    # Patch (row 1, col 2): pixel (i, j, c) inside it sits at flat index (i * pw + j) * C + c.
    for i in range(3):
        for j in range(2):
            for c in range(3):
                assert patches[1, 1, 2, (i * 2 + j) * 3 + c] == images[1, 3 + i, 4 + j, c]
    np.testing.assert_array_equal(unpatchify(jnp.asarray(patches), (3, 2), 3), images)


@pytest.mark.parametrize("kind", ["conv", "reshape"])
@pytest.mark.parametrize("image_hw, bad", [((30, 32), "30x32"), ((32, 20), "32x20")])
def test_size_not_a_multiple_is_a_clear_error(kind, image_hw, bad):
    module = PatchEmbed(8, (16, 16), kind=kind)
    with pytest.raises(ValueError, match=f"image size {bad} .* not a multiple of the patch size 16x16"):
        module.init(jax.random.key(0), jnp.zeros((1, *image_hw, 3)))


@pytest.mark.parametrize("kind", ["conv", "reshape"])
def test_zero_padding_pads_bottom_right_to_the_next_multiple(kind, rng):
    images = rng.standard_normal((2, 13, 9, 3)).astype(np.float32)
    module, params = init_embed(kind, (4, 4), 3, images, pad="zeros", output_format="grid")
    out = module.apply({"params": params}, images)
    assert out.shape == (2, 4, 3, 24)
    padded = np.zeros((2, 16, 12, 3), np.float32)
    padded[:, :13, :9] = images
    expected = patch_tokens(padded, np.asarray(params["kernel"]), np.asarray(params["bias"]))
    np.testing.assert_allclose(out.reshape(2, 12, 24), expected, atol=2e-5)
    assert grid_shape((13, 9), 4, pad="zeros") == (4, 3)


def test_bad_options_are_clear_errors():
    with pytest.raises(ValueError, match="patch_embed must be one of .*'conv'.*'reshape'.*got 'linear'"):
        PatchEmbed(8, 4, kind="linear").init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)))
    with pytest.raises(ValueError, match="pad must be one of"):
        grid_shape((8, 8), 4, pad="reflect")
    with pytest.raises(ValueError, match=r"patch_size must be a positive int .* got \(0, 4\)"):
        grid_shape((8, 8), (0, 4))
    with pytest.raises(ValueError, match=r"expects \(batch, height, width, channels\) images; got shape \(8, 8, 3\)"):
        PatchEmbed(8, 4).init(jax.random.key(0), jnp.zeros((8, 8, 3)))


def test_dtype_computes_in_bfloat16_with_float32_parameters(rng):
    images = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    module = PatchEmbed(8, 4, dtype=jnp.bfloat16)
    variables = module.init(jax.random.key(0), images)
    assert variables["params"]["kernel"].dtype == jnp.float32
    out = module.apply(variables, images)
    assert out.dtype == jnp.bfloat16
    full = module.clone(dtype=None).apply(variables, images)
    np.testing.assert_allclose(np.asarray(out, np.float32), full, atol=0.05, rtol=0.02)


# ---------------------------------------------------------------------------------------------------------------
# PI-resize of the patch kernel (FlexiViT)


def test_resize_matrix_is_jax_bilinear_resize_as_a_matrix(rng):
    x = rng.standard_normal((4, 6))
    matrix = bilinear_resize_matrix((4, 6), (7, 5))
    expected = jax.image.resize(x, (7, 5), "bilinear", antialias=False)
    np.testing.assert_allclose(matrix @ x.ravel(), np.asarray(expected).ravel(), atol=1e-5)


@pytest.mark.parametrize("old, new", [((4, 4), (6, 6)), ((4, 4), (8, 8)), ((8, 16), (16, 16)), ((2, 3), (5, 7))])
def test_upsampling_pi_resize_keeps_every_token(old, new, rng):
    kernel = rng.standard_normal((*old, 3, 5)).astype(np.float32)
    resized = pi_resize_kernel(kernel, new)
    assert resized.shape == (*new, 3, 5)
    patches = rng.standard_normal((20, *old, 3)).astype(np.float32)
    upsampled = np.asarray(jax.vmap(lambda p: jax.image.resize(p, (*new, 3), "bilinear", antialias=False))(patches))
    before = np.einsum("nhwc,hwcd->nd", patches, kernel)
    after = np.einsum("nhwc,hwcd->nd", upsampled, resized)
    assert np.abs(after - before).max() / np.abs(before).max() < 1e-4


def test_downsampling_pi_resize_is_the_least_squares_fit(rng):
    kernel = rng.standard_normal((8, 8, 1, 2))
    resized = pi_resize_kernel(kernel, (4, 4))
    resize_t = bilinear_resize_matrix((8, 8), (4, 4)).T  # (64, 16): <x, w> vs <Bx, w'> = x . B^T w'
    for d in range(2):
        best, *_ = np.linalg.lstsq(resize_t, kernel[:, :, 0, d].ravel(), rcond=None)
        np.testing.assert_allclose(resized[:, :, 0, d].ravel(), best, atol=1e-8)


# Old and new patch sizes covering every mix of shrinking, keeping and growing each side, square and not.
MIXED_RESIZES = [((16, 16), (h, w)) for h in (12, 16, 20) for w in (12, 16, 20) if (h, w) != (16, 16)]
MIXED_RESIZES += [((8, 12), (6, 16)), ((8, 12), (8, 9)), ((8, 12), (10, 12)), ((8, 12), (4, 24)), ((8, 16), (16, 8)),
                  ((8, 16), (8, 32)), ((3, 5), (7, 2))]


@pytest.fixture(scope="module")
def timm_resample_patch_embed():
    from vit_jax.timm_compat import import_timm

    import_timm()
    from timm.layers import resample_patch_embed

    return resample_patch_embed


@pytest.mark.parametrize("method, antialias", [("bilinear", False), ("bicubic", True)])  # FlexiViT's; timm's default
@pytest.mark.parametrize("old, new", MIXED_RESIZES)
def test_pi_resize_matches_timms_resample_patch_embed(old, new, method, antialias, rng, timm_resample_patch_embed):
    import torch

    kernel = rng.standard_normal((*old, 3, 8)).astype(np.float32)
    expected = timm_resample_patch_embed(torch.from_numpy(kernel.transpose(3, 2, 0, 1)), list(new),
                                         interpolation=method, antialias=antialias).numpy().transpose(2, 3, 1, 0)
    scale = np.abs(expected).max()
    assert scale < 50  # timm's own result is of the kernel's order (the float32-noise inverse was ~1e9)
    np.testing.assert_allclose(pi_resize_kernel(kernel, new, method), expected, atol=2e-5 * scale)
    traced = jax.jit(lambda k: pi_resize_kernel(k, new, method))(jnp.asarray(kernel))  # the in-model (jit) path
    np.testing.assert_allclose(np.asarray(traced), expected, atol=2e-5 * scale)


def test_resize_matrix_rows_are_exact_interpolation_weights():
    # 4 -> 3 half-pixel: output i samples input (i + 0.5) * 4 / 3 - 0.5 = 1/6, 3/2, 17/6.
    expected_1d = np.array([[5 / 6, 1 / 6, 0, 0], [0, 1 / 2, 1 / 2, 0], [0, 0, 1 / 6, 5 / 6]])
    np.testing.assert_allclose(bilinear_resize_matrix((4, 1), (3, 1)), expected_1d, atol=1e-15)
    # Upsampling 2 -> 4: edges clamp (sample -0.25 reads input 0 alone), inside 0.25 / 0.75 weights.
    expected_up = np.array([[1, 0], [0.75, 0.25], [0.25, 0.75], [0, 1]])
    np.testing.assert_allclose(bilinear_resize_matrix((1, 2), (1, 4)), expected_up, atol=1e-15)
    assert bilinear_resize_matrix((4, 1), (3, 1)).dtype == np.float64


def test_pi_resize_to_the_same_size_is_the_identity(rng):
    kernel = rng.standard_normal((4, 4, 3, 2)).astype(np.float32)
    np.testing.assert_array_equal(pi_resize_kernel(kernel, 4), kernel)
