import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models.patching import PatchEmbed
from vit_jax.models.tubelet import (
    TubeletEmbed,
    as_tubelet_size,
    embed_tubelets_conv,
    embed_tubelets_reshape,
    tubelet_grid,
    tubeletify,
)

HIGHEST = jax.lax.Precision.HIGHEST


def tubelet_tokens_reference(videos: np.ndarray, kernel: np.ndarray, bias: np.ndarray) -> np.ndarray:
    """float64 NumPy: each (t, ph, pw) block of frames x rows x columns dotted with the kernel, `(B, gt, gh, gw, D)`."""
    b, frames, h, w, c = videos.shape
    t, ph, pw, _, d = kernel.shape
    blocks = videos.astype(np.float64).reshape(b, frames // t, t, h // ph, ph, w // pw, pw, c)
    return np.einsum("bathiwjc,tijcd->bahwd", blocks, kernel.astype(np.float64)) + bias


@pytest.mark.parametrize("tubelet", [(2, 4, 4), (3, 2, 4), (1, 4, 2)])
def test_conv_and_reshape_equal_the_numpy_reference(tubelet, rng):
    t, ph, pw = tubelet
    videos = rng.standard_normal((2, 6, 8, 12, 3)).astype(np.float32)
    kernel = rng.standard_normal((t, ph, pw, 3, 5)).astype(np.float32)
    bias = rng.standard_normal(5).astype(np.float32)
    expected = tubelet_tokens_reference(videos, kernel, bias)
    assert expected.shape == (2, 6 // t, 8 // ph, 12 // pw, 5)
    conv = embed_tubelets_conv(videos, kernel, bias, HIGHEST)
    reshape = embed_tubelets_reshape(videos, kernel, bias, HIGHEST)
    np.testing.assert_allclose(conv, expected, atol=1e-4)
    np.testing.assert_allclose(reshape, expected, atol=1e-4)
    np.testing.assert_allclose(conv, reshape, atol=1e-4)


def test_tubeletify_flattens_frame_row_column_channel(rng):
    videos = rng.standard_normal((1, 4, 6, 4, 2)).astype(np.float32)
    tubelets = np.asarray(tubeletify(videos, (2, 3, 2)))
    assert tubelets.shape == (1, 2, 2, 2, 2 * 3 * 2 * 2)
    for a, h, w in np.ndindex(2, 2, 2):  # tubelet (a, h, w) covers frames 2a.., rows 3h.., columns 2w..
        block = videos[0, 2 * a : 2 * a + 2, 3 * h : 3 * h + 3, 2 * w : 2 * w + 2, :]
        np.testing.assert_array_equal(tubelets[0, a, h, w], block.reshape(-1))


def test_module_tokens_are_row_major_over_time_rows_columns_and_both_kinds_agree(rng):
    videos = jnp.asarray(rng.standard_normal((2, 4, 8, 8, 3)), jnp.float32)
    conv = TubeletEmbed(16, 2, 4, kind="conv", precision=HIGHEST)
    params = conv.init(jax.random.key(0), videos)
    assert jax.tree.map(jnp.shape, params["params"]) == {"kernel": (2, 4, 4, 3, 16), "bias": (16,)}
    tokens = conv.apply(params, videos)
    grid = TubeletEmbed(16, 2, 4, kind="reshape", output_format="grid", precision=HIGHEST).apply(params, videos)
    assert tokens.shape == (2, 2 * 2 * 2, 16) and grid.shape == (2, 2, 2, 2, 16)
    for k in range(8):
        np.testing.assert_allclose(tokens[:, k], grid[:, k // 4, k // 2 % 2, k % 2], atol=1e-5)


def test_one_frame_tubelets_are_the_image_patch_embedding_of_each_frame(rng):
    videos = jnp.asarray(rng.standard_normal((2, 3, 8, 8, 1)), jnp.float32)
    params = TubeletEmbed(8, 1, 4).init(jax.random.key(0), videos)["params"]
    video_grid = TubeletEmbed(8, 1, 4, output_format="grid").apply({"params": params}, videos)
    image_params = {"kernel": params["kernel"][0], "bias": params["bias"]}
    for frame in range(3):
        image_grid = PatchEmbed(8, 4, output_format="grid").apply({"params": image_params}, videos[:, frame])
        np.testing.assert_allclose(video_grid[:, frame], image_grid, atol=1e-5)


def test_lecun_normal_fan_in_counts_every_frame():
    params = TubeletEmbed(256, 4, 4).init(jax.random.key(0), jnp.zeros((1, 8, 8, 8, 3)))["params"]
    fan_in = 4 * 4 * 4 * 3
    assert abs(float(jnp.std(params["kernel"])) * np.sqrt(fan_in) - 1.0) < 0.05


def test_sizes_that_do_not_divide_are_clear_errors():
    with pytest.raises(ValueError, match=r"video size 5x8x8 \(frames x height x width\) is not a multiple of the "
                                         r"tubelet size 2x4x4"):
        tubelet_grid((5, 8, 8), (2, 4, 4))
    with pytest.raises(ValueError, match=r"video size 4x8x10 .* tubelet size 2x4x4"):
        TubeletEmbed(8, 2, 4).init(jax.random.key(0), jnp.zeros((1, 4, 8, 10, 1)))
    with pytest.raises(ValueError, match=r"expects \(batch, frames, height, width, channels\) videos; got shape "
                                         r"\(1, 8, 8, 1\)"):
        TubeletEmbed(8, 2, 4).init(jax.random.key(0), jnp.zeros((1, 8, 8, 1)))
    with pytest.raises(ValueError, match=r"tubelet_size \(frames per tubelet\) must be a positive int; got 0"):
        as_tubelet_size(0, 4)
    with pytest.raises(ValueError, match=r"patch_embed must be one of"):
        TubeletEmbed(8, 2, 4, kind="linear").init(jax.random.key(0), jnp.zeros((1, 4, 8, 8, 1)))
    assert tubelet_grid((8, 16, 12), (2, 4, 3)) == (4, 4, 4)
