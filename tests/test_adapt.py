import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import TINY
from vit_jax.checkpoint.adapt import CheckpointMismatchError, fill_from_init, plan_adaptation
from vit_jax.models import create_model, stack_encoder_blocks, unstack_encoder_blocks
from vit_jax.models.patching import pi_resize_kernel
from vit_jax.models.posemb import resize_posemb


def shapes(model, image_hw):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, 3)), train=False))["params"]


def values(model, image_hw, seed):
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: rng.standard_normal(s.shape).astype(np.float32), shapes(model, image_hw))


def adapt(source, target_model, image_hw, new_grid, fresh_seed=99, **kwargs):
    plan = plan_adaptation(source, shapes(target_model, image_hw), old_grid=kwargs.pop("old_grid", None),
                           new_grid=new_grid, **kwargs)
    fresh = values(target_model, image_hw, fresh_seed)
    return plan, fill_from_init(plan, fresh), fresh


def test_same_model_loads_everything(rng):
    model = create_model("Ti/8", num_classes=10, **TINY)
    source = values(model, (16, 16), 0)
    plan, merged, _ = adapt(source, model, (16, 16), (2, 2))
    jax.tree.map(np.testing.assert_array_equal, merged, source)
    assert plan.notes == ()


def test_new_resolution_resizes_posemb_keeps_the_class_row_and_reinits_a_new_head():
    source = values(create_model("Ti/8", num_classes=10, **TINY), (16, 16), 0)
    target = create_model("Ti/8", num_classes=3, **TINY)
    plan, merged, fresh = adapt(source, target, (32, 24), (4, 3))
    table = source["Transformer"]["posembed_input"]["pos_embedding"]
    np.testing.assert_allclose(merged["Transformer"]["posembed_input"]["pos_embedding"],
                               resize_posemb(table, (2, 2), (4, 3)), atol=1e-6)
    np.testing.assert_array_equal(merged["Transformer"]["posembed_input"]["pos_embedding"][0, 0], table[0, 0])
    np.testing.assert_array_equal(merged["head"]["kernel"], fresh["head"]["kernel"])  # 10 -> 3 classes
    np.testing.assert_array_equal(merged["embedding"]["kernel"], source["embedding"]["kernel"])
    assert any("another number of classes" in note for note in plan.notes)
    assert any("resized from a 2x2 to a 4x3 grid" in note for note in plan.notes)


def test_a_checkpoint_without_a_head_gets_a_fresh_one_unless_told_to_load_it():
    """Feature extractors (timm's num_classes=0: DINOv2, CLIP image towers) fine-tune with a new head."""
    source = values(create_model("Ti/8", num_classes=None, **TINY), (16, 16), 0)
    target = create_model("Ti/8", num_classes=4, **TINY)
    plan, merged, fresh = adapt(source, target, (16, 16), (2, 2), dont_load=("head",))
    jax.tree.map(np.testing.assert_array_equal, merged["head"], fresh["head"])
    np.testing.assert_array_equal(merged["cls"], source["cls"])
    assert plan.notes == ("head/bias: initialised (the checkpoint has no head)",
                          "head/kernel: initialised (the checkpoint has no head)")
    with pytest.raises(CheckpointMismatchError, match="missing from the checkpoint: head/bias"):
        adapt(source, target, (16, 16), (2, 2), head="load")


def test_new_patch_size_pi_resizes_the_kernel():
    source = values(create_model("Ti/8", num_classes=10, **TINY), (16, 16), 0)
    target = create_model("Ti/16", num_classes=10, **TINY)
    plan, merged, _ = adapt(source, target, (32, 32), (2, 2))
    np.testing.assert_allclose(merged["embedding"]["kernel"], pi_resize_kernel(source["embedding"]["kernel"], 16),
                               atol=1e-6)
    np.testing.assert_array_equal(merged["Transformer"]["posembed_input"]["pos_embedding"],
                                  source["Transformer"]["posembed_input"]["pos_embedding"])  # same 2x2 grid


def test_head_policies_pre_logits_and_dont_load():
    source = values(create_model("Ti/8", num_classes=10, **TINY, representation_size=8), (16, 16), 0)
    target = create_model("Ti/8", num_classes=10, **TINY)
    plan, merged, fresh = adapt(source, target, (16, 16), (2, 2), head="reinit",
                                dont_load=[r"encoderblock_1/MlpBlock_0/"])
    assert "pre_logits" not in merged
    assert any("pre_logits: dropped" in note for note in plan.notes)
    np.testing.assert_array_equal(merged["head"]["bias"], fresh["head"]["bias"])
    block = merged["Transformer"]["encoderblock_1"]
    np.testing.assert_array_equal(block["MlpBlock_0"]["Dense_0"]["kernel"],
                                  fresh["Transformer"]["encoderblock_1"]["MlpBlock_0"]["Dense_0"]["kernel"])
    np.testing.assert_array_equal(block["LayerNorm_0"]["scale"],
                                  source["Transformer"]["encoderblock_1"]["LayerNorm_0"]["scale"])


def test_reinitialised_posemb_comes_from_the_new_model():
    source = values(create_model("Ti/8", num_classes=10, **TINY), (16, 16), 0)
    target = create_model("Ti/8", num_classes=10, **TINY)
    _, merged, fresh = adapt(source, target, (32, 32), (4, 4), posemb="reinit")
    np.testing.assert_array_equal(merged["Transformer"]["posembed_input"]["pos_embedding"],
                                  fresh["Transformer"]["posembed_input"]["pos_embedding"])


def test_every_mismatch_is_listed_with_both_shapes():
    source = values(create_model("Ti/8", num_classes=10, **TINY), (16, 16), 0)
    target = create_model("Ti/8", num_classes=10, **{**TINY, "mlp_dim": 48, "num_layers": 3})
    with pytest.raises(CheckpointMismatchError) as error:
        adapt(source, target, (16, 16), (2, 2), head="load")
    message = str(error.value)
    assert "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel: checkpoint (32, 64), model (32, 48)" in message
    assert "Transformer/encoderblock_1/MlpBlock_0/Dense_1/kernel: checkpoint (64, 32), model (48, 32)" in message
    assert "missing from the checkpoint: Transformer/encoderblock_2/LayerNorm_0/scale (model (32,))" in message
    assert message.count("\n") == len([line for line in message.splitlines()[1:] if line.startswith("  ")])
    extra = values(create_model("Ti/8", num_classes=10, **{**TINY, "num_layers": 3}), (16, 16), 0)
    with pytest.raises(CheckpointMismatchError, match="not in the model: Transformer/encoderblock_2/LayerNorm_0/scale"):
        adapt(extra, create_model("Ti/8", num_classes=10, **TINY), (16, 16), (2, 2))


def test_loading_a_class_token_model_into_gap_needs_the_class_token_named():
    source = values(create_model("Ti/8", num_classes=10, **TINY), (16, 16), 0)
    target = create_model("Ti/8", num_classes=10, **TINY, classifier="gap")
    with pytest.raises(CheckpointMismatchError, match=r"not in the model: cls \(checkpoint \(1, 1, 32\)\)"):
        adapt(source, target, (16, 16), (2, 2))
    _, merged, _ = adapt(source, target, (16, 16), (2, 2), dont_load=["^cls$"])
    np.testing.assert_array_equal(merged["Transformer"]["posembed_input"]["pos_embedding"],
                                  source["Transformer"]["posembed_input"]["pos_embedding"][:, 1:])


@pytest.mark.parametrize("source_scan, target_scan", [(False, True), (True, False)])
def test_scanned_and_per_layer_layouts_convert(source_scan, target_scan):
    model = create_model("Ti/8", num_classes=10, **TINY)
    per_layer = values(model, (16, 16), 0)
    source = stack_encoder_blocks(per_layer) if source_scan else per_layer
    target = model.clone(scan=target_scan)
    _, merged, _ = adapt(source, target, (16, 16), (2, 2))
    jax.tree.map(np.testing.assert_array_equal, unstack_encoder_blocks(merged) if target_scan else merged, per_layer)


def test_a_non_square_table_needs_its_grid():
    source = values(create_model("Ti/8", num_classes=10, **TINY), (16, 24), 0)  # 2x3 grid
    target = create_model("Ti/8", num_classes=10, **TINY)
    with pytest.raises(CheckpointMismatchError, match=r"not a square grid; give the grid .*config.init.grid"):
        adapt(source, target, (32, 32), (4, 4))
    _, merged, _ = adapt(source, target, (32, 32), (4, 4), old_grid=(2, 3))
    assert merged["Transformer"]["posembed_input"]["pos_embedding"].shape == (1, 17, 32)


def test_a_new_patch_size_that_changes_the_grid_resizes_kernel_and_table_together():
    source = values(create_model("Ti/8", num_classes=10, **TINY), (16, 16), 0)  # 2x2 grid of 8x8 patches
    target = create_model("Ti/4", num_classes=10, **TINY)  # 4x4 grid of 4x4 patches, same image size
    plan, merged, _ = adapt(source, target, (16, 16), (4, 4))
    np.testing.assert_allclose(merged["embedding"]["kernel"], pi_resize_kernel(source["embedding"]["kernel"], 4),
                               atol=1e-6)
    table = source["Transformer"]["posembed_input"]["pos_embedding"]
    np.testing.assert_allclose(merged["Transformer"]["posembed_input"]["pos_embedding"],
                               resize_posemb(table, (2, 2), (4, 4)), atol=1e-6)
    assert len(plan.notes) == 2


@pytest.mark.parametrize("name, bad", [("head", "keep"), ("posemb", "resample"), ("posemb_method", "nearest"),
                                       ("inflation", "middle")])
def test_each_adaptation_choice_is_checked_once_for_the_api_and_the_config(name, bad):
    from vit_jax.checkpoint.adapt import ADAPTATION_CHOICES
    from vit_jax.config import base_config
    from vit_jax.config_validation import ConfigError, check_choices

    allowed = ADAPTATION_CHOICES[name]
    with pytest.raises(ValueError, match=rf"^{name} must be one of {re.escape(str(allowed))}; got '{bad}'$"):
        plan_adaptation({}, {}, old_grid=None, new_grid=(2, 2), **{name: bad})
    config = base_config()
    config.init[name] = bad
    listed = re.escape(", ".join(map(repr, allowed)))
    with pytest.raises(ConfigError, match=rf"^config.init.{name} = '{bad}': unknown value; allowed: {listed}$"):
        check_choices(config)


@pytest.mark.parametrize("source_classifier, target_classifier", [("token_distilled", "token"),
                                                                  ("token", "token_distilled")])
def test_a_distillation_token_is_dropped_or_added_with_its_table_row_and_head(source_classifier, target_classifier):
    """DeiT's rows are [class, distillation, patches]: each token's row goes with it, a new one starts at zero."""
    source = values(create_model("Ti/8", num_classes=10, classifier=source_classifier, **TINY), (16, 16), 0)
    target = create_model("Ti/8", num_classes=10, classifier=target_classifier, **TINY)
    plan, merged, fresh = adapt(source, target, (16, 16), (2, 2))
    old, new = (p["Transformer"]["posembed_input"]["pos_embedding"] for p in (source, merged))
    np.testing.assert_array_equal(new[:, 0], old[:, 0])  # the class row
    np.testing.assert_array_equal(new[:, -4:], old[:, -4:])  # the 2x2 patch rows
    if target_classifier == "token":
        assert new.shape[1] == 5 and "dist" not in merged and "head_dist" not in merged
        assert "dist, head_dist: dropped (the new model has no distillation token)" in plan.notes
    else:
        np.testing.assert_array_equal(new[:, 1], 0)
        np.testing.assert_array_equal(merged["dist"], fresh["dist"])
        np.testing.assert_array_equal(merged["head_dist"]["kernel"], fresh["head_dist"]["kernel"])
        np.testing.assert_array_equal(merged["head"]["kernel"], source["head"]["kernel"])
