import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import MINI, live_params, perturbed
from tests.numpy_reference import patch_tokens, sincos2d_table
from vit_jax.models import create_model
from vit_jax.models.posemb import AddPositionEmbs, resize_posemb, sincos2d, sincos3d


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
    model = create_model("Ti/4", num_classes=3, **MINI)
    images = rng.standard_normal((2, 8, 12, 3)).astype(np.float32)
    params = live_params(model, images)
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
    model = create_model("Ti/4", num_classes=3, **MINI,
                         posemb=posemb, classifier=classifier)
    images = rng.standard_normal((2, 8, 12, 3)).astype(np.float32)
    params = live_params(model, images)
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
    model = create_model("Ti/4", num_classes=3, **MINI)
    params = model.init(jax.random.key(0), jnp.zeros((1, 8, 8, 3)), train=False)["params"]
    with pytest.raises(ValueError, match=r"pos_embedding has 5 rows but the input has 10 tokens .*3x3 patch grid"):
        model.apply({"params": params}, jnp.zeros((1, 12, 12, 3)), train=False)


# ---------------------------------------------------------------------------------------------------------------
# Resizing a learned table to a new grid


def with_prefix(grid_values: np.ndarray, prefix_value: float = 7.0) -> jnp.ndarray:
    """`(gh, gw, D)` -> a `(1, 1 + gh * gw, D)` table whose class-token row is `prefix_value`."""
    gh, gw, d = grid_values.shape
    return jnp.asarray(np.concatenate([np.full((1, d), prefix_value), grid_values.reshape(gh * gw, d)])[None],
                       jnp.float32)


@pytest.mark.parametrize("old, new", [((4, 4), (6, 6)), ((7, 7), (14, 14)), ((14, 14), (10, 10)), ((3, 5), (6, 4))])
def test_default_resize_is_scipy_zoom_order_1(old, new, rng):
    from scipy import ndimage

    grid = rng.standard_normal((*old, 8))
    resized = resize_posemb(with_prefix(grid), old, new)
    expected = ndimage.zoom(grid, (new[0] / old[0], new[1] / old[1], 1), order=1)
    assert expected.shape[:2] == new
    np.testing.assert_allclose(resized[0, 1:].reshape(*new, 8), expected, atol=1e-5)
    np.testing.assert_array_equal(resized[0, 0], np.full(8, 7.0))  # the class token's row is untouched


def test_resize_4_to_6_reference_row_identity_and_ramps():
    table = with_prefix(np.arange(16.0).reshape(4, 4, 1))
    resized = np.asarray(resize_posemb(table, (4, 4), (6, 6)))[0, 1:, 0].reshape(6, 6)
    np.testing.assert_allclose(resized[0], [0, 0.6, 1.2, 1.8, 2.4, 3.0], atol=1e-6)
    assert resize_posemb(table, (4, 4), (4, 4)) is table
    ramp = np.fromfunction(lambda r, c, d: 2.0 * r - 0.5 * c + 1.0, (5, 3, 1))
    out = np.asarray(resize_posemb(with_prefix(ramp), (5, 3), (9, 7)))[0, 1:, 0].reshape(9, 7)
    rows, cols = np.meshgrid(np.linspace(0, 4, 9), np.linspace(0, 2, 7), indexing="ij")
    np.testing.assert_allclose(out, 2.0 * rows - 0.5 * cols + 1.0, atol=1e-5)  # still the same plane


@pytest.mark.parametrize("old, new", [((4, 4), (7, 7)), ((12, 12), (5, 5)), ((4, 6), (8, 3)), ((2, 5), (9, 2))])
@pytest.mark.parametrize("method", ["bilinear", "bicubic"])
@pytest.mark.parametrize("antialias", [False, True])
def test_half_pixel_resizes_match_pytorch(old, new, method, antialias, rng):
    """Plain bicubic is PyTorch's own (a = -0.75, taps clamped at the edges: transformers' and DINOv2's resize),
    antialiased bicubic timm's (a = -0.5)."""
    import torch
    grid = rng.standard_normal((*old, 3)).astype(np.float32)
    ours = np.asarray(resize_posemb(with_prefix(grid), old, new, method=method, antialias=antialias))
    theirs = torch.nn.functional.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], size=new,
                                             mode=method, align_corners=False, antialias=antialias)
    np.testing.assert_allclose(ours[0, 1:].reshape(*new, 3), theirs[0].permute(1, 2, 0).numpy(), atol=1e-5)


@pytest.mark.parametrize("old, new", [((37, 37), (16, 16)), ((4, 4), (9, 6)), ((5, 5), (5, 3))])
def test_dinov2s_offset_is_pytorchs_bicubic_at_its_scale_factor(old, new, rng):
    """DINOv2's `interpolate_offset`: PyTorch given the scale factor `(n + 0.1) / M` instead of the size (an axis
    that keeps its length is resampled too, as PyTorch resamples it)."""
    import torch
    grid = rng.standard_normal((*old, 3)).astype(np.float32)
    ours = np.asarray(resize_posemb(with_prefix(grid), old, new, method="bicubic", offset=0.1))
    theirs = torch.nn.functional.interpolate(torch.from_numpy(grid).permute(2, 0, 1)[None], mode="bicubic",
                                             scale_factor=((new[0] + 0.1) / old[0], (new[1] + 0.1) / old[1]))
    np.testing.assert_allclose(ours[0, 1:].reshape(*new, 3), theirs[0].permute(1, 2, 0).numpy(), atol=5e-5)
    with pytest.raises(ValueError, match=r"offset 0.1 applies to 'bicubic' without antialiasing .*antialias=True"):
        resize_posemb(with_prefix(grid), old, new, method="bicubic", antialias=True, offset=0.1)


@pytest.mark.parametrize("old, new", [((4, 4), (9, 9)), ((12, 12), (5, 5))])
def test_antialiased_bicubic_matches_pil(old, new, rng):
    from PIL import Image

    grid = rng.standard_normal((*old, 2)).astype(np.float32)
    ours = np.asarray(resize_posemb(with_prefix(grid), old, new, method="bicubic", antialias=True))[0, 1:]
    for channel in range(2):  # PIL's bicubic: Keys a = -0.5, support widened when shrinking (antialiased)
        pil = Image.fromarray(grid[:, :, channel], mode="F").resize(new[::-1], Image.Resampling.BICUBIC)
        np.testing.assert_allclose(ours[:, channel].reshape(new), np.asarray(pil), atol=1e-4)


def test_resize_errors_name_the_problem():
    table = with_prefix(np.zeros((4, 4, 2)))
    with pytest.raises(ValueError, match="posemb resize method must be one of"):
        resize_posemb(table, (4, 4), (6, 6), method="nearest")
    with pytest.raises(ValueError, match="has 17 rows; expected 1 prefix \\+ 3x3 grid"):
        resize_posemb(table, (3, 3), (6, 6))
    with pytest.raises(ValueError, match="antialias applies to 'bilinear' and 'bicubic'"):
        resize_posemb(table, (4, 4), (2, 2), antialias=True)


def test_sincos2d_is_recomputed_for_the_new_grid_not_resized(rng):
    model = create_model("Ti/4", num_classes=3, **MINI,
                         posemb="sincos2d", classifier="gap")
    params = live_params(model, jnp.zeros((1, 8, 8, 3)))
    images = rng.standard_normal((1, 12, 16, 3)).astype(np.float32)  # another resolution, same parameters
    _, state = model.apply({"params": params}, images, train=False, capture_intermediates=True)
    seen = state["intermediates"]["Transformer"]["posembed_input"]["__call__"][0]
    tokens = patch_tokens(images, np.asarray(params["embedding"]["kernel"]), np.asarray(params["embedding"]["bias"]))
    np.testing.assert_allclose(seen, tokens + sincos2d_table(3, 4, 16), atol=2e-5)


# ---------------------------------------------------------------------------------------------------------------
# Video grids (gt, gh, gw): tables row-major over (t, h, w), resized over all three axes, sincos3d


def test_learned_video_table_covers_every_tubelet_and_the_prefix(rng):
    module = AddPositionEmbs("learn", grid=(2, 3, 4), num_prefix=1)
    tokens = jnp.asarray(rng.standard_normal((2, 1 + 24, 8)), jnp.float32)
    params = module.init(jax.random.key(0), tokens)["params"]
    assert params["pos_embedding"].shape == (1, 25, 8)
    np.testing.assert_allclose(module.apply({"params": params}, tokens), tokens + params["pos_embedding"], atol=1e-7)
    with pytest.raises(ValueError, match=r"got 24 tokens; expected 1 prefix token\(s\) \+ a 2x3x4 tubelet grid"):
        module.init(jax.random.key(0), jnp.zeros((1, 24, 8)))


@pytest.mark.parametrize("old, new", [((2, 4, 4), (4, 6, 6)), ((3, 5, 2), (2, 3, 4))])
def test_video_tables_resize_over_time_as_scipy_zoom_order_1(old, new, rng):
    from scipy import ndimage

    grid = rng.standard_normal((*old, 4))
    table = jnp.asarray(np.concatenate([np.full((1, 4), 7.0), grid.reshape(-1, 4)])[None], jnp.float32)
    resized = np.asarray(resize_posemb(table, old, new))
    expected = ndimage.zoom(grid, (*(n / o for n, o in zip(new, old)), 1), order=1)
    np.testing.assert_allclose(resized[0, 1:].reshape(*new, 4), expected, atol=1e-5)
    np.testing.assert_array_equal(resized[0, 0], np.full(4, 7.0))


def test_video_tables_resize_half_pixel_as_pytorch_trilinear(rng):
    import torch

    grid = rng.standard_normal((2, 4, 6, 3)).astype(np.float32)
    table = jnp.asarray(grid.reshape(1, -1, 3))
    ours = np.asarray(resize_posemb(table, (2, 4, 6), (3, 8, 5), num_prefix=0, method="bilinear"))
    theirs = torch.nn.functional.interpolate(torch.from_numpy(grid).permute(3, 0, 1, 2)[None], size=(3, 8, 5),
                                             mode="trilinear", align_corners=False)
    np.testing.assert_allclose(ours[0].reshape(3, 8, 5, 3), theirs[0].permute(1, 2, 3, 0).numpy(), atol=1e-5)


def test_resizing_between_image_and_video_grids_is_an_error():
    with pytest.raises(ValueError, match=r"cannot resize a 2x2 patch grid table to a 2x2x2 tubelet grid"):
        resize_posemb(jnp.zeros((1, 5, 8)), (2, 2), (2, 2, 2))


def test_sincos3d_layout_time_quarter_then_sincos2d_of_space():
    width, grid = 32, (3, 2, 4)
    table = sincos3d(grid, width)
    assert table.shape == (24, 32)
    omega = 1.0 / 10_000.0 ** (np.arange(4) / 3)  # width / 8 frequencies for time
    for t, h, w in np.ndindex(*grid):
        row = table[(t * 2 + h) * 4 + w]
        np.testing.assert_allclose(row[:8], np.concatenate([np.sin(t * omega), np.cos(t * omega)]), atol=1e-12)
        np.testing.assert_allclose(row[8:], sincos2d_table(2, 4, 24)[h * 4 + w], atol=1e-12)
    with pytest.raises(ValueError, match=r"divisible by 16 and at least 32"):
        sincos3d(grid, 24)
    with pytest.raises(ValueError, match=r"posemb='sincos3d' needs a 3-D grid; got a 2x2 patch grid"):
        AddPositionEmbs("sincos3d", grid=(2, 2)).init(jax.random.key(0), jnp.zeros((1, 4, 32)))


def test_factorized_adds_row_plus_column_and_nothing_to_the_prefix(rng):
    tokens = jnp.asarray(rng.standard_normal((2, 1 + 6, 8)), jnp.float32)
    module = AddPositionEmbs("factorized", grid=(2, 3), num_prefix=1)
    params = perturbed(module.init(jax.random.key(0), tokens)["params"])
    rows, cols = params["pos_embedding_row"], params["pos_embedding_col"]
    assert rows.shape == (2, 8) and cols.shape == (3, 8)
    added = module.apply({"params": params}, tokens) - tokens
    np.testing.assert_allclose(added[:, 0], 0.0)
    for r in range(2):
        for c in range(3):
            np.testing.assert_allclose(added[:, 1 + 3 * r + c], np.broadcast_to(rows[r] + cols[c], (2, 8)), atol=1e-6)


def test_factorized_tables_resized_each_along_its_axis_equal_the_resized_full_table(rng):
    """Bilinear resizing is separable and linear: resize(rows) + resize(cols) is the whole row + column table
    resized as `learn` resizes its table."""
    tokens = jnp.zeros((1, 5 * 2, 8))
    module = AddPositionEmbs("factorized", grid=(5, 2), num_prefix=0, table_grid=(3, 4))
    params = perturbed(module.init(jax.random.key(0), tokens)["params"])
    full = (params["pos_embedding_row"][:, None] + params["pos_embedding_col"][None]).reshape(1, 12, 8)
    expected = resize_posemb(full, (3, 4), (5, 2), num_prefix=0, method="bilinear", antialias=True)
    np.testing.assert_allclose(module.apply({"params": params}, tokens), expected, atol=1e-5)


def test_fine_tuning_at_a_new_grid_resizes_the_factorized_tables():
    from vit_jax.checkpoint.adapt import plan_adaptation

    model = create_model("Ti/4", num_classes=3, posemb="factorized", **MINI)
    trained = live_params(model, jnp.zeros((1, 12, 8, 3)))  # a 3x2 grid
    target = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 20, 16, 3)), train=False)["params"])
    adaptation = plan_adaptation(trained, target, old_grid=(3, 2), new_grid=(5, 4), posemb_method="bilinear")
    rows = adaptation.flat[("Transformer", "posembed_input", "pos_embedding_row")]
    expected = resize_posemb(trained["Transformer"]["posembed_input"]["pos_embedding_row"][None], (3,), (5,), 0,
                             "bilinear")[0]
    np.testing.assert_allclose(rows, expected, atol=1e-6)
    assert adaptation.flat[("Transformer", "posembed_input", "pos_embedding_col")].shape == (4, 16)
    assert "pos_embedding_row: resized from 3 to 5 positions (bilinear)" in adaptation.notes


@pytest.mark.parametrize("method", ["bilinear_align_corners", "bilinear", "bicubic"])
@pytest.mark.parametrize("kind", ["learn", "factorized"])
def test_posemb_resize_in_the_forward_pass_is_the_offline_resize_of_the_table(kind, method, rng):
    """`posemb_resize` picks how a table stored at `posemb_grid` meets another grid: the same as resizing the
    table once (`resize_posemb`, antialiased unless align-corners) and running at that grid."""
    model = create_model("Ti/4", num_classes=3, posemb=kind, posemb_grid=(4, 4), posemb_resize=method, **MINI)
    params = live_params(model, jnp.zeros((1, 16, 16, 3)))
    images = rng.standard_normal((2, 24, 20, 3)).astype(np.float32)  # a 6x5 grid: up one way, less the other
    fixed = model.clone(posemb_grid=None)
    resize = lambda table, old, new, prefix: resize_posemb(table, old, new, prefix, method=method,
                                                          antialias=method != "bilinear_align_corners")
    tables = params["Transformer"]["posembed_input"]
    if kind == "learn":
        resized = {"pos_embedding": resize(tables["pos_embedding"], (4, 4), (6, 5), 1)}
    else:
        resized = {"pos_embedding_row": resize(tables["pos_embedding_row"][None], (4,), (6,), 0)[0],
                   "pos_embedding_col": resize(tables["pos_embedding_col"][None], (4,), (5,), 0)[0]}
    moved = {**params, "Transformer": {**params["Transformer"], "posembed_input": resized}}
    np.testing.assert_allclose(model.apply({"params": params}, images, train=False),
                               fixed.apply({"params": moved}, images, train=False), atol=1e-5)
    with pytest.raises(ValueError, match="posemb_resize must be one of .*; got 'nearest'"):
        create_model("Ti/4", num_classes=3, posemb_resize="nearest", **MINI)
