"""Rotary position encodings: the rotation's algebra, timm's RoPE-ViTs and DINOv3's angles, prefix tokens."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY, live_params
from tests.timm_reference import perturb_timm, timm_logits, timm_vit_params
from vit_jax.models.rope import (
    axial_frequencies,
    grid_coordinates,
    init_mixed_frequencies,
    rotate,
    rotating_attention,
)
from vit_jax.models.vit import VisionTransformer
from vit_jax.timm_compat import import_timm


def angles_at(coords, frequencies):
    """`(N, H, pairs)` angles of `coords` `(N, axes)` under `(axes, H, pairs)` frequencies (axes in grid order)."""
    return jnp.einsum("na,ahp->nhp", coords, frequencies)


@pytest.mark.parametrize("pairing", ["interleaved", "halves"])
@pytest.mark.parametrize("kind", ["axial", "mixed"])
def test_the_rotation_keeps_norms_and_makes_q_dot_k_depend_on_the_coordinate_difference_only(pairing, kind, rng):
    heads, head_dim = 3, 16
    if kind == "axial":
        frequencies = np.broadcast_to(axial_frequencies(head_dim, 2, 100.0, "xy")[:, None], (2, heads, head_dim // 2))
    else:
        frequencies = np.asarray(init_mixed_frequencies(10.0)(jax.random.key(1), (2, heads, head_dim // 2)))[::-1]
    coords = rng.uniform(-5, 5, (6, 2))
    shift = rng.uniform(-3, 3, (1, 2))
    q, k = (jnp.asarray(rng.standard_normal((1, 6, heads, head_dim)), jnp.float32) for _ in range(2))

    def logits(c):
        angles = angles_at(jnp.asarray(c, jnp.float32), jnp.asarray(frequencies, jnp.float32))[None]
        rq, rk = rotate(q, angles, pairing), rotate(k, angles, pairing)
        np.testing.assert_allclose(jnp.linalg.norm(rq, axis=-1), jnp.linalg.norm(q, axis=-1), rtol=1e-5)
        return jnp.einsum("bihd,bjhd->bhij", rq, rk)

    np.testing.assert_allclose(logits(coords + shift), logits(coords), atol=2e-4)
    plain = jnp.einsum("bihd,bjhd->bhij", q, k)
    assert not np.allclose(logits(coords), plain, atol=1e-2)  # it does rotate
    # the diagonal (a token with itself, coordinate difference 0) is the plain q . k
    np.testing.assert_allclose(jnp.diagonal(logits(coords), axis1=2, axis2=3),
                               jnp.diagonal(plain, axis1=2, axis2=3), rtol=1e-4, atol=1e-4)


def test_interleaved_pairs_turn_by_the_angle_as_complex_numbers_do(rng):
    x = rng.standard_normal((1, 2, 1, 4)).astype(np.float32)
    angles = rng.uniform(-3, 3, (1, 2, 1, 2)).astype(np.float32)
    complex_x = x[..., 0::2] + 1j * x[..., 1::2]
    expected = complex_x * np.exp(1j * angles)
    got = np.asarray(rotate(jnp.asarray(x), jnp.asarray(angles), "interleaved"))
    np.testing.assert_allclose(got[..., 0::2] + 1j * got[..., 1::2], expected, rtol=1e-5)
    halves = np.asarray(rotate(jnp.asarray(x), jnp.asarray(angles), "halves"))
    np.testing.assert_allclose(halves[..., :2] + 1j * halves[..., 2:], (x[..., :2] + 1j * x[..., 2:])
                               * np.exp(1j * angles), rtol=1e-5)


def test_prefix_tokens_are_not_rotated(rng):
    seen = {}

    def capture(query, key, value, **unused):
        seen.update(query=query, key=key)
        return value

    q = jnp.asarray(rng.standard_normal((2, 5, 2, 8)), jnp.float32)
    angles = jnp.asarray(rng.uniform(-3, 3, (1, 3, 1, 4)), jnp.float32)
    rotating_attention(capture, angles, num_prefix=2, pairing="interleaved")(q, q, q)
    np.testing.assert_array_equal(seen["query"][:, :2], q[:, :2])
    np.testing.assert_allclose(seen["key"][:, 2:], rotate(q[:, 2:], angles, "interleaved"), rtol=1e-6)


def test_dinov3_convention_gives_timms_dinov3_angles():
    """`centered` coordinates, rows first (`ij`), theta 100: the angles of timm's `RotaryEmbeddingDinoV3` (a port
    of facebookresearch/dinov3's `RopePositionEmbedding`), on a non-square grid."""
    import_timm()
    from timm.layers.pos_embed_sincos import RotaryEmbeddingDinoV3

    head_dim, grid = 16, (3, 5)
    reference = RotaryEmbeddingDinoV3(dim=head_dim, temperature=100.0).get_embed(list(grid)).numpy()
    sin, cos = np.split(reference, 2, axis=-1)  # (N, head_dim) each, halves layout: [a, a]
    coords = grid_coordinates(grid, "centered")
    angles = coords @ axial_frequencies(head_dim, 2, 100.0, "ij")
    np.testing.assert_allclose(sin, np.sin(np.concatenate([angles, angles], -1)), atol=1e-5)
    np.testing.assert_allclose(cos, np.cos(np.concatenate([angles, angles], -1)), atol=1e-5)


TIMM_ROPE = {"rope_axial": "vit_small_patch16_rope_224", "rope_mixed": "vit_small_patch16_rope_mixed_224",
             "rope_mixed_ape": "vit_small_patch16_rope_mixed_ape_224"}


@pytest.mark.parametrize("name,registers", [("rope_axial", 0), ("rope_mixed", 2), ("rope_mixed_ape", 0)])
def test_the_same_weights_give_timms_rope_vit_logits_at_the_training_and_another_resolution(name, registers, rng):
    """timm's naver RoPE-ViTs (Eva), f32 and exact GELU, layer scale set to 1; with registers, three prefix tokens
    stay unrotated. The `_ape` model (plus a learned table, resized bicubic by timm) at its training grid only."""
    timm = import_timm()
    width, depth, heads = 32, 2, 2
    reference = timm.create_model(TIMM_ROPE[name], pretrained=False, embed_dim=width, depth=depth,
                                  num_heads=heads, img_size=32, patch_size=8, num_classes=5, dynamic_img_size=True,
                                  num_reg_tokens=registers)
    ape = name.endswith("_ape")
    model = VisionTransformer(num_classes=5, patch_size=(8, 8), hidden_size=width, num_layers=depth, num_heads=heads,
                              mlp_dim=4 * width, posemb=name.removesuffix("_ape"), rope_ape=ape,
                              gelu_approximate=False, num_registers=registers)
    params = timm_vit_params(perturb_timm(reference), depth, heads)
    for hw in ((32, 32),) if ape else ((32, 32), (48, 24)):  # the training grid 4x4, then 6x3: rows, columns apart
        images = rng.standard_normal((2, *hw, 3)).astype(np.float32)
        np.testing.assert_allclose(model.apply({"params": params}, images, train=False), timm_logits(reference, images),
                                   atol=2e-4, rtol=1e-4)


@pytest.mark.parametrize("options,message", [
    (dict(hidden_size=24, num_heads=4), "posemb='rope_axial' needs a head dimension .* divisible by 4 .* got head "
                                        "dimension 6"),
    (dict(tubelet_size=2, posemb="rope_mixed"), "posemb='rope_mixed' is for images .* takes 'rope_axial'"),
    (dict(rope_pairing="halves", posemb="rope_mixed"), "pairs channels 'interleaved'"),
    (dict(rope_coordinates="pixels"), r"rope_coordinates must be one of \('index', 'centered'\); got 'pixels'"),
    (dict(rope_jitter=0.5), "rope_jitter must be None .* or a number >= 1; got 0.5"),
    (dict(rope_grid=(4,)), r"rope_grid must be None or 2 positive ints \(the training grid\); got \(4,\)"),
    (dict(posemb="learn", rope_theta=10.0, rope_ape=True), "rope_theta, rope_ape set, but posemb='learn' is not a "
                                                            "rotary encoding"),
])
def test_rope_options_that_cannot_work_are_refused_when_the_model_is_built(options, message):
    with pytest.raises(ValueError, match=message):
        VisionTransformer(**{**dict(num_classes=3, patch_size=(4, 4), hidden_size=16, num_layers=1, mlp_dim=32,
                                    num_heads=2, posemb="rope_axial"), **options})


def test_a_rope_run_with_registers_patch_dropout_and_coordinate_augmentation_trains_from_the_config(
        tmp_path, digits_data_dir):
    from tests.conftest import tiny_digits_config
    from vit_jax.metric_writers import read_metrics
    from vit_jax.train import train_and_evaluate

    config = tiny_digits_config(digits_data_dir, "num_steps=6,log_every=3,eval_every=6,checkpoint_every=6,"
                                "model.posemb=rope_mixed,model.num_registers=2,model.patch_dropout=0.25,"
                                "model.rope_shift=0.5,model.rope_jitter=1.2,model.rope_rescale=1.5")
    results = train_and_evaluate(config, tmp_path)
    losses = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert len(losses) == 2 and all(np.isfinite(losses)) and 0 <= results["test/accuracy"] <= 1


def test_rope_gives_the_same_logits_scanned_rematerialised_through_the_xla_kernel_and_close_in_bfloat16(rng):
    from tests.conftest import live_params
    from vit_jax.models.encoder import stack_encoder_blocks

    images = jnp.asarray(rng.standard_normal((2, 8, 12, 3)), jnp.float32)
    model = VisionTransformer(num_classes=3, patch_size=(4, 4), posemb="rope_mixed", num_registers=1, hidden_size=16,
                              num_layers=2, mlp_dim=32, num_heads=2)
    params = live_params(model, images)
    expected = model.apply({"params": params}, images, train=False)
    scanned = model.clone(scan=True, remat=True, attention_impl="xla")
    np.testing.assert_allclose(scanned.apply({"params": stack_encoder_blocks(params)}, images, train=False),
                               expected, atol=1e-5)
    half = model.clone(dtype=jnp.bfloat16).apply({"params": params}, images, train=False)
    np.testing.assert_allclose(half, expected, atol=0.1 * float(jnp.abs(expected).max()))


def test_videos_turn_frames_rows_and_columns_each_on_their_own_pairs():
    frequencies = axial_frequencies(64, 3, 100.0, "xy")  # 32 pairs: 10 per axis, 2 left unrotated
    owner = [tuple(np.flatnonzero(frequencies[:, p])) for p in range(32)]
    assert owner == [(0,)] * 10 + [(2,)] * 10 + [(1,)] * 10 + [()] * 2  # frames, columns, rows (xy)
    np.testing.assert_allclose(frequencies[0, :10], 100.0 ** (-np.arange(10) / 10))
    assert [tuple(np.flatnonzero(f)) for f in axial_frequencies(8, 2, 100.0, "ij").T] == [(0,), (0,), (1,), (1,)]
    model = VisionTransformer(num_classes=3, patch_size=(4, 4), tubelet_size=2, posemb="rope_axial", hidden_size=24,
                              num_layers=1, mlp_dim=32, num_heads=2)  # head_dim 12: 2 pairs per axis
    video = jnp.ones((1, 4, 8, 8, 3))
    assert model.apply(model.init(jax.random.key(0), video, train=False), video, train=False).shape == (1, 3)


def test_coordinates_index_the_grid_centre_it_for_dinov3_or_span_the_training_grid_when_interpolated():
    np.testing.assert_array_equal(grid_coordinates((2, 3), "index"), [[0, 0], [0, 1], [0, 2], [1, 0], [1, 1], [1, 2]])
    np.testing.assert_allclose(grid_coordinates((1, 4), "centered")[:, 1] / (2 * np.pi), [-0.75, -0.25, 0.25, 0.75])
    # interpolated: an 8x2 grid read on a 4x4 training grid (EVA's ref_feat_shape: t / size * reference)
    interpolated = grid_coordinates((8, 2), "index", reference_grid=(4, 4))
    np.testing.assert_allclose(np.unique(interpolated[:, 0]), np.arange(8) * 0.5)
    np.testing.assert_allclose(np.unique(interpolated[:, 1]), [0.0, 2.0])


@pytest.mark.parametrize("posemb", ["rope_axial", "rope_mixed"])
def test_flexivit_patch_size_at_call_time_rotates_by_the_calls_grid(posemb, rng):
    """FlexiViT with RoPE: run at patch 8, a patch-4 model equals the same model built at patch 8 with its
    kernel PI-resized: the rotary coordinates come from the call's 2x2 grid, not the stored 4x4 one."""
    from vit_jax.models import create_model
    from vit_jax.models.patching import pi_resize_kernel

    model = create_model("Ti/4", num_classes=3, posemb=posemb, **TINY)
    params = live_params(model, jnp.zeros((1, 16, 16, 3)))
    images = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    flexi = model.apply({"params": params}, images, train=False, patch_size=(8, 8))
    kernel = pi_resize_kernel(params["embedding"]["kernel"], (8, 8))
    built = model.clone(patch_size=(8, 8)).apply({"params": {**params, "embedding": {**params["embedding"],
                                                                                      "kernel": kernel}}},
                                                 images, train=False)
    np.testing.assert_allclose(flexi, built, atol=1e-5)
