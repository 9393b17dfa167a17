"""Register tokens (timm's `reg_tokens`, DINOv2-reg) and patch dropout (FLIP, timm's `PatchDropout`)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import MINI, live_params
from tests.timm_reference import perturb_timm, timm_logits, timm_vit_params
from vit_jax.checkpoint.adapt import plan_adaptation
from vit_jax.models.encoder import drop_patches
from vit_jax.models.navit import NaViT
from vit_jax.models.vit import VisionTransformer
from vit_jax.timm_compat import import_timm


@pytest.mark.parametrize("classifier", ["token", "gap"])
def test_registers_give_timms_logits_with_a_table_that_leaves_them_out(classifier, rng):
    """timm's ViT with `reg_tokens=2, no_embed_class=True` (DINOv2-reg's layout): registers after the class token,
    no position embedding on either prefix; `gap` averages the patches only."""
    timm = import_timm()
    width, depth, heads = 32, 2, 2
    reference = timm.create_model("vit_tiny_patch16_224", pretrained=False, embed_dim=width, depth=depth,
                                  num_heads=heads, img_size=16, patch_size=4, num_classes=5, reg_tokens=2,
                                  no_embed_class=True, class_token=classifier == "token", fc_norm=False,
                                  global_pool="token" if classifier == "token" else "avg")
    model = VisionTransformer(num_classes=5, patch_size=(4, 4), hidden_size=width, num_layers=depth, num_heads=heads,
                              mlp_dim=4 * width, classifier=classifier, num_registers=2, gelu_approximate=False)
    params = timm_vit_params(perturb_timm(reference), depth, heads)
    images = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_allclose(model.apply({"params": params}, images, train=False), timm_logits(reference, images),
                               atol=2e-4, rtol=1e-4)


def test_registers_are_attended_to_but_pooled_and_mapped_out(rng):
    model = VisionTransformer(num_classes=3, patch_size=(4, 4), classifier="token", num_registers=3,
                              record_attention=True, **MINI)
    images = jnp.asarray(rng.standard_normal((1, 8, 12, 3)), jnp.float32)  # a 2x3 grid
    params = live_params(model, images)
    assert params["Transformer"]["registers"].shape == (1, 3, 16)
    assert params["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 1 + 6, 16)  # no register rows
    logits, state = model.apply({"params": params}, images, train=False, mutable="intermediates")
    assert state["intermediates"]["encoded"][0].shape == (1, 1 + 6, 16)  # registers dropped after the encoder
    weights = state["intermediates"]["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]
    assert weights["attention_weights"][0].shape == (1, 2, 10, 10)  # class + 3 registers + 6 patches attend
    moved = jax.tree.map(lambda x: x, params)
    # not a constant shift: LayerNorm removes that from every token before anything reads the registers
    moved["Transformer"]["registers"] = params["Transformer"]["registers"] + rng.standard_normal((1, 3, 16))
    assert not np.allclose(model.apply({"params": moved}, images, train=False), logits)


def test_a_checkpoint_without_registers_initialises_them_and_says_so(rng):
    plain = VisionTransformer(num_classes=3, patch_size=(4, 4), **MINI)
    with_registers = plain.clone(num_registers=2)
    images = jnp.zeros((1, 8, 8, 3))
    adaptation = plan_adaptation(live_params(plain, images),
                                 jax.eval_shape(lambda: with_registers.init(jax.random.key(0), images,
                                                                            train=False)["params"]),
                                 old_grid=(2, 2), new_grid=(2, 2))
    assert "Transformer/registers: initialised (the checkpoint has no register tokens)" in adaptation.notes


def test_patch_dropout_keeps_the_prefix_and_a_random_subset_of_patches_each_at_its_own_position():
    b, n, prefix = 3, 12, 2
    x = jnp.broadcast_to(jnp.arange(prefix + n, dtype=jnp.float32)[None, :, None], (b, prefix + n, 4))
    coords = jnp.asarray(np.stack(np.divmod(np.arange(n), 4), axis=1), jnp.float32)[None]  # a 3x4 grid
    kept, kept_coords = drop_patches(x, coords, prefix, 0.5, jax.random.key(0))
    assert kept.shape == (b, prefix + 6, 4) and kept_coords.shape == (b, 6, 2)
    np.testing.assert_array_equal(kept[:, :prefix, 0], np.broadcast_to(np.arange(prefix), (b, prefix)))
    index = np.asarray(kept[:, prefix:, 0]).astype(int) - prefix  # which patch each kept token is
    for row in index:
        assert len(set(row)) == 6  # distinct patches
    assert len({tuple(sorted(row)) for row in index}) > 1  # each example draws its own subset
    np.testing.assert_array_equal(kept_coords, np.stack(np.divmod(index, 4), axis=-1))  # positions travel along
    assert drop_patches(x, None, prefix, 0.99, jax.random.key(0))[0].shape[1] == prefix + 1  # at least one patch


def test_patch_dropout_acts_in_training_only(rng):
    model = VisionTransformer(num_classes=3, patch_size=(4, 4), classifier="gap", posemb="rope_axial",
                              patch_dropout=0.5, **MINI)
    images = jnp.asarray(rng.standard_normal((2, 16, 16, 3)), jnp.float32)
    params = live_params(model, images)
    plain = model.clone(patch_dropout=0.0).apply({"params": params}, images, train=False)
    np.testing.assert_array_equal(model.apply({"params": params}, images, train=False), plain)
    _, state = model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(1)},
                           mutable="intermediates")
    assert state["intermediates"]["encoded"][0].shape == (2, 8, 16)  # 8 of 16 patches


@pytest.mark.parametrize("option,message", [
    (dict(num_registers=1), "num_registers=1: registers are prefix tokens of one image"),
    (dict(patch_dropout=0.2), "patch_dropout=0.2: NaViT drops tokens as it packs them"),
])
def test_navit_refuses_what_packed_sequences_cannot_hold(option, message):
    with pytest.raises(ValueError, match=message):
        NaViT(num_classes=3, patch_size=(4, 4), classifier="gap", posemb="none", **MINI, **option)
