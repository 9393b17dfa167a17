"""NaViT on packed sequences: masking keeps images apart, per-image pooling, position embeddings per image, and the
fixed-grid ViT as the reference for one image alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY, live_params, perturbed
from vit_jax.models import create_model
from vit_jax.models.navit import NaViT
from vit_jax.models.packed_posemb import sample_table, sincos2d_at
from vit_jax.models.patching import patchify
from vit_jax.models.posemb import resize_posemb, sincos2d

PATCH = (4, 4)


def navit(**options) -> NaViT:
    return NaViT(**{**dict(num_classes=7, patch_size=PATCH, classifier="gap", posemb="learn", posemb_grid=(3, 3),
                           **TINY), **options})


def pack(images: list[np.ndarray], seq_len: int, max_images: int, *, pad_value: float = 0.0):
    """One packed sequence from whole images, built by hand (no grain), padding filled with `pad_value`."""
    patches, ids, coords, grids = [], [], [], np.zeros((max_images, 2), np.int32)
    for slot, image in enumerate(images):
        grid = patchify(image[None], PATCH)[0]
        gh, gw = grid.shape[:2]
        patches.append(grid.reshape(gh * gw, -1))
        ids += [slot + 1] * (gh * gw)
        coords.append(np.stack(np.divmod(np.arange(gh * gw), gw), axis=1))
        grids[slot] = (gh, gw)
    patches, coords = np.concatenate(patches), np.concatenate(coords)
    pad = seq_len - len(ids)
    patches = np.concatenate([patches, np.full((pad, patches.shape[1]), pad_value, np.float32)])
    return (patches[None].astype(np.float32), np.array(ids + [0] * pad, np.int32)[None],
            np.concatenate([coords, np.zeros((pad, 2), int)])[None].astype(np.int32), grids[None])


@pytest.fixture(scope="module")
def images():
    rng = np.random.default_rng(0)
    return [rng.standard_normal(shape).astype(np.float32) for shape in [(12, 12, 3), (8, 16, 3), (16, 4, 3)]]


@pytest.mark.parametrize("classifier,posemb", [("gap", "learn"), ("map", "factorized"), ("gap", "sincos2d")])
def test_packed_images_give_what_each_image_gives_alone(images, classifier, posemb):
    model = navit(classifier=classifier, posemb=posemb, posemb_grid=(4, 4))
    packed = pack(images, seq_len=40, max_images=4, pad_value=5.0)  # 9 + 8 + 4 tokens, then noisy padding
    params = live_params(model, *packed)
    together = model.apply({"params": params}, *packed, train=False)[0]
    for slot, image in enumerate(images):
        alone = model.apply({"params": params}, *pack([image], seq_len=16, max_images=1), train=False)[0, 0]
        np.testing.assert_allclose(together[slot], alone, atol=2e-5, rtol=2e-5)
    assert together.shape == (4, 7)


@pytest.mark.parametrize("classifier,posemb", [("gap", "learn"), ("map", "learn"), ("gap", "rope_mixed")])
def test_one_image_at_the_table_grid_equals_the_fixed_grid_vit(images, classifier, posemb):
    """The same parameters in the fixed-grid VisionTransformer: its output is the reference (for RoPE: each packed
    token rotated by its own row and column, as the ViT rotates its grid)."""
    image = images[0]  # 12x12: the 3x3 table grid
    vit = create_model("Ti/4", num_classes=7, classifier=classifier, posemb=posemb, **TINY)
    params = perturbed(vit.init(jax.random.key(1), image[None], train=False)["params"])
    expected = vit.apply({"params": params}, image[None], train=False)[0]
    got = navit(classifier=classifier, posemb=posemb).apply({"params": params}, *pack([image], 24, 2),
                                                            train=False)[0, 0]
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=2e-5)


@pytest.mark.parametrize("method, antialias, aspect_preserving, offset", [
    ("bilinear", False, False, 0.0), ("bilinear", True, False, 0.0), ("bicubic", True, False, 0.0),
    ("bicubic", False, True, 0.0), ("bilinear_align_corners", False, False, 0.0), ("bilinear", True, True, 0.0),
    ("bicubic", False, False, 0.1)])
@pytest.mark.parametrize("old,new", [((3, 3), (5, 7)), ((2, 5), (6, 1)), ((8, 8), (3, 5)), ((4, 6), (4, 6))])
def test_learned_table_is_sampled_as_the_resized_table(old, new, method, antialias, aspect_preserving, offset):
    table = np.random.default_rng(0).standard_normal((1, old[0] * old[1], 8)).astype(np.float32)
    rows, cols = np.divmod(np.arange(new[0] * new[1]), new[1])
    coords = np.stack([rows, cols], axis=1)
    sample = jax.jit(lambda t, c, g: sample_table(t, old, c, g, method, antialias, aspect_preserving, offset))
    sampled = sample(jnp.asarray(table[0]), jnp.asarray(coords), jnp.broadcast_to(jnp.asarray(new), coords.shape))
    expected = resize_posemb(table, old, new, num_prefix=0, method=method, antialias=antialias,
                             aspect_preserving=aspect_preserving, offset=offset)[0]
    np.testing.assert_allclose(sampled, expected, atol=1e-5)


def test_sincos_rows_at_token_positions_are_the_tables_rows():
    grid = (3, 5)
    rows, cols = np.divmod(np.arange(15), 5)
    got = sincos2d_at(jnp.stack([rows, cols], axis=1), 16)
    np.testing.assert_allclose(got, sincos2d(grid, 16), atol=1e-5)


def test_factorized_embedding_is_row_plus_column():
    model = navit(posemb="factorized", posemb_grid=(4, 5), num_layers=1)
    image = np.zeros((8, 12, 3), np.float32)
    packed = pack([image], 8, 1)
    params = model.init(jax.random.key(0), *packed, train=False)["params"]
    table = params["Transformer"]["posembed_input"]
    _, state = model.apply({"params": params}, *packed, train=False, capture_intermediates=True,
                           mutable=["intermediates"])
    embedded = state["intermediates"]["Transformer"]["posembed_input"]["__call__"][0][0, :6]
    tokens = state["intermediates"]["embedding"]["__call__"][0][0, :6]
    rows, cols = np.divmod(np.arange(6), 3)
    expected = np.asarray(table["pos_embedding_row"])[rows] + np.asarray(table["pos_embedding_col"])[cols]
    np.testing.assert_allclose(embedded - tokens, expected, atol=1e-6)


def test_bfloat16_packed_model_masks_like_float32(images):
    model = navit()
    packed = pack(images, seq_len=40, max_images=4, pad_value=5.0)
    params = live_params(model, *packed)
    f32 = model.apply({"params": params}, *packed, train=False)[0, :3]
    bf16 = model.clone(dtype=jnp.bfloat16).apply({"params": params}, *packed, train=False)[0, :3]
    np.testing.assert_allclose(bf16, f32, atol=0.1)


def test_packed_options_are_checked_when_built():
    with pytest.raises(ValueError, match="posemb_grid"):
        navit(posemb="factorized", posemb_grid=None)
    with pytest.raises(ValueError, match="classifier must be one of \\('gap', 'map'\\); got 'token'"):
        navit(classifier="token")
    with pytest.raises(ValueError, match="posemb must be one of"):
        navit(posemb="sincos3d")  # the video table: the fixed-grid ViT's only
