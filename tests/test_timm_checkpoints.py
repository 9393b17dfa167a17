"""timm / Hugging Face Hub checkpoints in and out, against timm itself: each family's small model (random weights,
every parameter perturbed) saved in the Hub layout by `timm.models.save_for_hf`, read by vit_jax, and compared
logit for logit; exports loaded back by timm strictly; the `hf-hub:` path through an offline Hub cache."""

import copy
import json
import math
import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import ROOT, write_hub_cache
from tests.timm_reference import timm_logits, vit_jax_logits
from vit_jax.checkpoint.adapt import fill_from_init, plan_adaptation
from vit_jax.checkpoint.hub import SMALL_TENSOR, read_timm_checkpoint
from vit_jax.checkpoint.pretrained import load_pretrained, timm_architecture
from vit_jax.checkpoint.timm_export import export_timm, params_to_timm
from vit_jax.checkpoint.trained_model import load_trained_model
from vit_jax.data.preprocessing import Preprocess
from vit_jax.models.vit import VisionTransformer
from vit_jax.timm_compat import import_timm

SMALL = dict(depth=2, embed_dim=32, num_heads=2, num_classes=5)
# family -> (timm architecture, arguments, the vit_jax options it must map to)
FAMILIES = {
    "augreg": ("vit_base_patch16_224", dict(img_size=32), dict(classifier="token")),
    "dinov2": ("vit_small_patch14_dinov2", dict(img_size=28), dict(layer_scale=1e-5)),
    "dinov2_reg4": ("vit_small_patch14_reg4_dinov2", dict(img_size=28), dict(num_registers=4, layer_scale=1e-5)),
    "deit3": ("deit3_small_patch16_224", dict(img_size=32), dict(layer_scale=1e-5)),
    "clip": ("vit_base_patch16_clip_224", dict(img_size=32),
             dict(pre_norm=True, patch_bias=False, layer_norm_epsilon=1e-5, quick_gelu=False)),
    "clip_quickgelu": ("vit_base_patch16_clip_quickgelu_224", dict(img_size=32), dict(quick_gelu=True)),
    "siglip": ("vit_base_patch16_siglip_224", dict(img_size=32), dict(classifier="map")),
    "siglip_gap": ("vit_base_patch16_siglip_gap_224", dict(img_size=32), dict(classifier="gap", fc_norm=False)),
    # SigLIP 2: tanh GELU, which only its architecture's own arguments say (timm_architectures.json)
    "siglip2": ("vit_base_patch32_siglip_256", dict(img_size=64), dict(classifier="map", gelu_approximate=True)),
    "gap_fc_norm": ("vit_base_patch16_224", dict(img_size=32, global_pool="avg", class_token=False, fc_norm=True),
                    dict(classifier="gap", fc_norm=True)),
    "registers_with_positions": ("vit_base_patch16_224", dict(img_size=32, reg_tokens=2), dict(num_registers=2)),
    "no_qkv_bias_embed_norm": ("vit_base_patch16_224", dict(img_size=32, qkv_bias=False, embed_norm_layer="layernorm"),
                               dict(qkv_bias=False, embedding_norm=True)),
    "headless": ("vit_small_patch14_dinov2", dict(img_size=28, num_classes=0), dict(num_classes=None)),
    # timm's Eva class: the naver RoPE-ViTs and DINOv3
    "rope_axial": ("vit_small_patch16_rope_224", dict(img_size=32), dict(posemb="rope_axial", layer_scale=1e-5)),
    "rope_mixed_ape": ("vit_small_patch16_rope_mixed_ape_224", dict(img_size=32, num_reg_tokens=1),
                       dict(posemb="rope_mixed", rope_ape=True, rope_theta=10.0, num_registers=1)),
    "dinov3": ("vit_small_patch16_dinov3", dict(img_size=32, global_pool="token"),
               dict(posemb="rope_axial", rope_coordinates="centered", rope_pairing="halves", rope_axis_order="ij",
                    num_registers=4, qkv_bias=False, layer_norm_epsilon=1e-5, classifier="token")),
    "dinov3_qkvb_avg": ("vit_small_patch16_dinov3_qkvb", dict(img_size=32),
                        dict(qkv_bias=True, classifier="token_gap", fc_norm=False)),
    # SwiGLU MLPs: DINOv2-g's packed fc1 (SwiGLUPacked, gate first); Eva's fc1_g / fc1_x: eva02 below
    "dinov2_giant_swiglu": ("vit_giant_patch14_dinov2", dict(img_size=28), dict(gated_mlp=True, mlp_dim=85)),
    # EVA-02 (CLIP's image tower): Eva's cat RoPE interpolated to its ref_feat_shape and an absolute table, SwiGLU
    # (fc1_g, fc1_x) with a norm inside, a norm inside attention, separate q/k/v projections
    "eva02": ("eva02_base_patch16_clip_224", dict(img_size=32),
              dict(posemb="rope_axial", rope_grid=(16, 16), rope_theta=10000.0, rope_axis_order="ij", rope_ape=True,
                   gated_mlp=True, mlp_norm=True, attention_norm=True, classifier="token")),
    # DeiT distilled: a distillation token after the class token, its own head, the two heads' logits averaged
    "deit_distilled": ("deit_tiny_distilled_patch16_224", dict(img_size=32), dict(classifier="token_distilled")),
    # AIMv2: RMSNorms (no bias, epsilon 1e-5, the patch embedding's too), no output/MLP biases, SwiGLU, average pooling
    "aimv2": ("aimv2_large_patch14_224", dict(img_size=28),
              dict(rms_norm=True, proj_bias=False, gated_mlp=True, qkv_bias=False, embedding_norm=True,
                   layer_norm_epsilon=1e-5, classifier="gap")),
    # Sapiens2: query/key norms, layer scale on the attention branch only, RMSNorms, DINOv3's RoPE, 8 registers,
    # grouped-query attention in its middle blocks only (here: full in block 0, one key/value head in block 1)
    "sapiens2": ("vit_large_patch16_sapiens2", dict(img_size=32, num_kv_heads=[2, 1]),
                 dict(qk_norm=True, layer_scale_attention_only=True, rms_norm=True, num_registers=8,
                      num_kv_heads=(2, 1))),
    # BEiT: relative position biases in every block (no position table), q/v biases, layer scale, fc_norm after
    # average pooling
    "beit": ("beit_base_patch16_224", dict(img_size=32),
             dict(relative_position_bias=True, posemb="none", classifier="token_gap", fc_norm=True)),
    # Perception Encoder (spatial): Eva's cat RoPE with rope_grid_offset 1 and columns first, pre-norm, no final norm
    "pe_spatial": ("vit_pe_spatial_tiny_patch16_512", dict(img_size=32),
                   dict(rope_offset=1.0, rope_axis_order="xy", rope_grid=(32, 32), pre_norm=True, final_norm=False)),
    # Perception Encoder (core): as spatial, plus attention pooling over every token (the class token included) with
    # its own heads and MLP width
    "pe_core": ("vit_pe_core_tiny_patch16_384", dict(img_size=32, attn_pool_mlp_ratio=2.0),
                dict(classifier="token_map", map_num_heads=8, map_mlp_dim=64, rope_offset=1.0, pre_norm=True)),
    # NVIDIA's RADIO: no final norm (its architecture's final_norm=False)
    "radio": ("vit_base_patch16_radio_v3", dict(img_size=32), dict(final_norm=False, classifier="token")),
    # the ViT paper's hybrids as timm ports them: a ResNetV2 stem (R26's 4 stages; the root alone, patch 8 on its
    # feature map), timm's epsilons
    "hybrid_r26": ("vit_small_r26_s32_224", dict(img_size=64),
                   dict(resnet_num_layers=(2, 2, 2, 2), patch_size=(1, 1), resnet_numerics="timm")),
    "hybrid_root": ("vit_tiny_r_s16_p8_224", dict(img_size=64), dict(resnet_num_layers=(), patch_size=(8, 8))),
    # LingBot-Vision: DINOv3's layout under another name (its rope_type, from its architecture's arguments)
    "lingbot": ("vit_small_patch16_lingbot", dict(img_size=32),
                dict(posemb="rope_axial", rope_coordinates="centered", qkv_bias=True, classifier="token")),
}


def perturbed_timm(name, **kwargs):
    """A timm model with Gaussian noise on every parameter (layer scales, registers and zero biases included)."""
    timm = import_timm()
    import torch

    torch.manual_seed(0)
    model = timm.create_model(name, pretrained=False, **{**SMALL, **kwargs})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (timm model, its Hub-layout directory)."""
    timm = import_timm()
    root = tmp_path_factory.mktemp("timm_hub_layout")
    out = {}
    for family, (name, kwargs, _) in FAMILIES.items():
        model = perturbed_timm(name, **kwargs)
        timm.models.save_for_hf(model, root / family, safe_serialization=True)
        out[family] = (model, root / family)
    return out


def images(size, n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, *size, 3)).astype(np.float32)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_with_its_options_and_gives_timms_logits(saved, family):
    model, directory = saved[family]
    trained = load_trained_model(directory)
    for option, value in FAMILIES[family][2].items():
        assert getattr(trained.model, option) == value, option
    x = images(trained.image_size)
    ours = vit_jax_logits(trained.model, trained.params, x)
    np.testing.assert_allclose(ours, timm_logits(model, x), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("family", ["augreg", "dinov2_reg4", "clip", "siglip", "registers_with_positions",
                                    "rope_axial", "dinov3", "eva02", "deit_distilled", "beit"])
def test_at_another_resolution_the_resized_table_gives_timms_dynamic_size_logits(saved, family):
    """timm resamples its table (bicubic, antialiased) when `dynamic_img_size=True`; fine-tuning resizes ours the
    same way (`init.posemb_method=bicubic`, antialiased), which configs/finetune.py picks for timm checkpoints, and
    the loaded model itself, run at the new size, resizes its stored table so in the forward pass."""
    model, directory = saved[family]
    name, kwargs, _ = FAMILIES[family]
    arch = timm_architecture(directory)
    pretrained = load_pretrained(directory)
    patch = arch.options["patch_size"][0]
    new_size = (arch.image_size[0] + 2 * patch, arch.image_size[1] + patch)  # another, non-square grid
    if family == "beit":  # no dynamic size: a model at the new size loads the weights as timm resizes them
        from timm.models.beit import checkpoint_filter_fn

        dynamic = perturbed_timm(name, **{**kwargs, "img_size": new_size})
        dynamic.load_state_dict(checkpoint_filter_fn(model.state_dict(), dynamic), strict=True)
    else:
        dynamic = perturbed_timm(name, **kwargs, dynamic_img_size=True)
        dynamic.load_state_dict(model.state_dict(), strict=True)
    target = VisionTransformer(**{**arch.options, "posemb_grid": None})
    shapes = jax.eval_shape(lambda: target.init(jax.random.key(0), jnp.zeros((1, *new_size, 3)), train=False))
    plan = plan_adaptation(pretrained.params, shapes["params"], old_grid=pretrained.grid,
                           new_grid=(new_size[0] // patch, new_size[1] // patch), posemb_method="bicubic",
                           posemb_antialias=True)
    params = fill_from_init(plan, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]))
    x = images(new_size, seed=1)
    expected = timm_logits(dynamic, x)
    np.testing.assert_allclose(vit_jax_logits(target, params, x), expected,
                               atol=5e-5, rtol=1e-4)
    if family != "beit":  # BEiT's relative tables are resized once, at loading (as timm's)
        stored = VisionTransformer(**arch.options)  # the table at its grid: resized in the forward pass
        np.testing.assert_allclose(vit_jax_logits(stored, pretrained.params, x), expected,
                                   atol=5e-5, rtol=1e-4)


# timm's Eva exports are DINOv3's (LayerNorms of 1e-5) or the naver RoPE-ViTs' (1e-6) architectures
NOT_EXPORTABLE = {"sapiens2": r"num_kv_heads=\(2, 1\): timm's VisionTransformer has no counterpart",
                  "pe_spatial": "layer_norm_epsilon=1e-05: timm's Eva",
                  "pe_core": "map_num_heads=8: timm's VisionTransformer has no counterpart"}


@pytest.mark.parametrize("family", FAMILIES)
def test_an_export_loads_strictly_in_timm_and_reads_back_the_same(saved, family, tmp_path):
    timm = import_timm()
    model, directory = saved[family]
    if family in NOT_EXPORTABLE:
        with pytest.raises(ValueError, match=NOT_EXPORTABLE[family]):
            export_timm(str(directory), tmp_path / "export")
        assert not (tmp_path / "export").exists()
        return
    out = export_timm(str(directory), tmp_path / "export")
    reloaded = timm.create_model(f"local-dir:{out}", pretrained=True).eval()  # strict: every tensor, no extras
    x = images(load_trained_model(directory).image_size, seed=2)
    np.testing.assert_allclose(timm_logits(reloaded, x), timm_logits(model, x), atol=1e-5, rtol=1e-5)
    assert reloaded.pretrained_cfg["mean"] == pytest.approx(model.pretrained_cfg["mean"])
    first, second = load_trained_model(directory), load_trained_model(out)  # the same model, the same numbers
    assert second.model == first.model
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), second.params, first.params)


@pytest.mark.parametrize("mlp", [dict(), dict(gated_mlp=True), dict(rms_norm=True, proj_bias=False, qk_norm=True),
                                 dict(classifier="token_map", num_registers=0),
                                 dict(posemb="sincos2d", posemb_grid=None, classifier="gap")])
def test_a_vit_jax_model_with_registers_pre_norm_and_no_patch_bias_exports_exactly(tmp_path, mlp):
    """vit_jax layouts timm lacks go through identities: registers get zero position rows, a patch bias before a
    pre-norm moves into the table, a tanh GELU is timm's `gelu_tanh` (a SwiGLU MLP: DINOv2-g's SwiGLUPacked),
    attention pooling over the class token too is `pool_include_prefix`, a fixed sin-cos table is the learned table
    of its values; grayscale and [-1, 1] inputs are timm's `in_chans=1` and mean = std = 0.5."""
    timm = import_timm()
    import torch
    from safetensors.numpy import save_file

    model = VisionTransformer(num_classes=3, patch_size=(4, 4), hidden_size=32, num_layers=1, mlp_dim=64,
                              num_heads=2, **{**dict(num_registers=2, pre_norm=True, layer_scale=0.1,
                                                     posemb_grid=(4, 4)), **mlp})
    x = images((16, 16))[..., :1]
    params = jax.tree.map(lambda a: a + 0.2 * np.random.default_rng(0).standard_normal(a.shape).astype(np.float32),
                          model.init(jax.random.key(0), x, train=False)["params"])
    from vit_jax.checkpoint.timm_export import fixed_table_as_learned, timm_config

    exported, exported_params = fixed_table_as_learned(model, params, (16, 16))  # as export_timm writes it
    config = timm_config(exported, Preprocess(image_size=(16, 16)), channels=1)
    (tmp_path / "config.json").write_text(json.dumps(config))
    save_file(params_to_timm(exported_params, exported), str(tmp_path / "model.safetensors"))
    reference = timm.create_model(f"local-dir:{tmp_path}", pretrained=True).eval()
    assert reference.pretrained_cfg["mean"] == [0.5] and reference.pretrained_cfg["std"] == [0.5]
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x.transpose(0, 3, 1, 2))).numpy()
    np.testing.assert_allclose(vit_jax_logits(model, params, x), theirs, atol=2e-5)


def test_preprocessing_from_the_config_is_timms_mean_and_std_and_grayscale_becomes_rgb():
    pp = Preprocess(image_size=(2, 2), value_range=(0.0, 1.0), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.5),
                    channels=3)
    gray = np.array([[[0], [51]], [[255], [102]]], np.uint8)
    out = pp.pixels(gray)
    expected = (np.repeat(gray / 255.0, 3, axis=-1) - [0.5, 0.4, 0.3]) / [0.2, 0.25, 0.5]
    np.testing.assert_allclose(out, expected, rtol=1e-6, atol=1e-6)
    with pytest.raises(ValueError, match="mean and std must be given together"):
        Preprocess(image_size=(2, 2), mean=(0.5,))


@pytest.mark.parametrize("mode, size, pct, interpolation", [
    ("center", 32, 0.9, "bicubic"), ("center", (32, 48), 0.875, "bilinear"), ("squash", 32, 0.95, "bicubic"),
    ("border", 32, 0.9, "bilinear"),
])
def test_a_photo_is_fed_to_the_model_as_timms_eval_transform_feeds_it(tmp_path, mode, size, pct, interpolation):
    """pretrained_cfg's input size, interpolation, crop_pct and crop_mode: `predict`'s view of an odd-sized
    photo equals timm's resolve_data_config + create_transform on the same file, and a 1,000-class head is named
    as timm names ImageNet's classes."""
    from PIL import Image

    from vit_jax.predict import preprocessed

    timm = import_timm()
    from timm.data import ImageNetInfo, create_transform, resolve_data_config

    overlay = dict(input_size=(3, *((size, size) if isinstance(size, int) else size)), crop_pct=pct,
                   crop_mode=mode, interpolation=interpolation, mean=(0.45, 0.4, 0.5), std=(0.2, 0.3, 0.25))
    model = timm.create_model("vit_base_patch16_224", pretrained=False, **{**SMALL, "num_classes": 1000},
                              img_size=size, pretrained_cfg_overlay=overlay)
    timm.models.save_for_hf(model, tmp_path / "hub", safe_serialization=True)
    y, x = np.mgrid[0:45, 0:71]
    photo = np.stack([(y * 5) % 256, (x * 3 + y) % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")

    config = resolve_data_config({}, model=model)
    expected = create_transform(**config)(Image.open(tmp_path / "photo.png").convert("RGB"))
    trained = load_trained_model(checkpoint=tmp_path / "hub")
    got = preprocessed(trained, tmp_path / "photo.png")
    np.testing.assert_allclose(got, expected.numpy().transpose(1, 2, 0), atol=1e-5)
    info = ImageNetInfo()
    assert trained.class_names[::250] == tuple(info.index_to_description(i) for i in range(0, 1000, 250))


def test_hf_hub_specs_resolve_in_an_offline_cache_and_bad_repos_fail_in_one_line(saved, offline_hub, tmp_path):
    _, directory = saved["dinov2_reg4"]
    write_hub_cache(offline_hub, "timm/tiny_dinov2_reg4", {n: directory / n for n in ("config.json", "model.safetensors")})
    trained = load_trained_model("hf-hub:timm/tiny_dinov2_reg4")
    assert trained.model.num_registers == 4 and trained.source == "hf-hub:timm/tiny_dinov2_reg4"

    write_hub_cache(offline_hub, "timm/no_weights", {"config.json": directory / "config.json"})
    with pytest.raises(FileNotFoundError, match=r"^hf-hub:timm/no_weights: no model.safetensors") as error:
        load_trained_model("hf-hub:timm/no_weights")
    assert "\n" not in str(error.value)
    with pytest.raises(FileNotFoundError, match=r"^hf-hub:timm/absent: no config.json .*HF_HUB_OFFLINE"):
        load_trained_model("hf-hub:timm/absent")

    config = json.loads((directory / "config.json").read_text())
    config["model_args"]["img_size"] = [56, 56]  # the wrong architecture for these weights' 2x2 table
    (tmp_path / "wrong.json").write_text(json.dumps(config))
    write_hub_cache(offline_hub, "timm/wrong", {"config.json": tmp_path / "wrong.json",
                                                 "model.safetensors": directory / "model.safetensors"})
    with pytest.raises(ValueError, match=r"^hf-hub:timm/wrong: the position table has 4 rows; a 56x56 image in 14x14 "
                                         r"patches has 16 \(\+ 5 prefix tokens\)$"):
        load_trained_model("hf-hub:timm/wrong")

    corrupt = tmp_path / "corrupt"
    corrupt.mkdir()
    shutil.copy(directory / "config.json", corrupt / "config.json")
    (corrupt / "model.safetensors").write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not a header}")
    with pytest.raises(ValueError, match=r"model.safetensors: not a readable safetensors file") as error:
        load_trained_model(corrupt)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("name, kwargs, config, reason", [
    ("eva02_enormous_patch14_clip_224", dict(img_size=28), True, "Eva's use_post_norm .a norm after each branch."),
    ("vit_giant_patch14_dinov2", dict(img_size=28), False, "a gated MLP .mlp.fc1 has 170 outputs, mlp.fc2 85 "
                                                           "inputs. whose gating this model's arguments do not say"),
    ("vit_small_patch16_dinov3", dict(img_size=32), False, "no position table and Eva tensors .'blocks.0.gamma_1'.,"
                                                           " so a rotary encoding whose conventions are not in the"),
    # what no tensor of its own says, from the architecture's arguments or the config's model_args
    ("vit_base_patch16_rpn_224", dict(img_size=32), True, "timm's ResPostBlock blocks"),
    ("vit_base_patch16_224", dict(img_size=32, act_layer="silu"), True, "the activation 'silu'"),
    ("test_vit3", dict(img_size=32), True, "an attention-pooling head over register tokens too"),
    ("vit_base_patch16_224", dict(img_size=32, global_pool="avg", pool_include_prefix=True), True,
     r"pooling over the prefix tokens too \(pool_include_prefix\)"),
    ("vit_base_patch16_224", dict(img_size=32, global_pool="map"), True,
     "an attention-pooling head over the patch tokens beside a class token"),
    # tensors vit_jax would leave unread or needs and does not find
    ("cait_xxs24_224", dict(img_size=32), True, r"tensors vit_jax's ViT has no place for \(blocks.N.attn.proj_l"),
    ("beit_base_patch16_224", dict(img_size=32, use_shared_rel_pos_bias=True, use_rel_pos_bias=False), True,
     "a relative position bias shared by the blocks"),
    ("vit_relpos_small_patch16_224", dict(img_size=32), True, "tensors vit_jax's ViT has no place for"),
    ("vit_small_resnet26d_224", dict(img_size=64), True, "a hybrid's CNN stem other than the ViT paper's ResNet"),
    ("vit_base_patch16_224", dict(img_size=32, embed_norm_layer="rmsnorm"), True,
     "LayerNorm and RmsNorm norms in one model"),
])
def test_families_vit_jax_cannot_run_are_refused_naming_the_tensor(name, kwargs, config, reason, tmp_path):
    """Refused in one line; a bare safetensors file (no config.json) of a rotary model among them, whose rotary
    conventions no tensor records."""
    from safetensors.torch import save_file

    model = perturbed_timm(name, **kwargs)
    if config:
        import_timm().models.save_for_hf(model, tmp_path, safe_serialization=True)
    else:
        save_file(model.state_dict(), str(tmp_path / "model.safetensors"))
    with pytest.raises(ValueError, match=reason):
        load_pretrained(tmp_path / "model.safetensors")


def test_the_architectures_own_arguments_are_the_installed_timms():
    """timm_architectures.json (what a Hub config.json does not record) is what this timm's entrypoints pass."""
    import runpy

    script = runpy.run_path(str(ROOT / "scripts" / "timm_architecture_defaults.py"))
    written = json.loads((ROOT / "vit_jax" / "checkpoint" / "timm_architectures.json").read_text())
    assert written == json.loads(json.dumps(script["architecture_defaults"]()))
    assert written["vit_so400m_patch16_siglip_256"]["act_layer"] == "gelu_tanh"
    assert written["vit_base_patch16_clip_224"]["norm_layer"] == {"name": "LayerNorm", "eps": 1e-5, "bias": True}


@pytest.mark.parametrize("family", ["dinov2", "dinov2_reg4", "dinov2_giant_swiglu"])
def test_dinov2s_own_pth_files_give_timms_logits(saved, family, tmp_path):
    """DINOv2's `torch.hub` checkpoints (`dinov2_vit*14[_reg4]_pretrain.pth`: its pre-training mask token, the
    class row in the table with registers, the giant's fused `w12` / `w3` SwiGLU), no config.json beside them. The
    file written here is DINOv2's layout as timm's own `_convert_dinov2` reads it: that converter gives back the timm
    model's state dict exactly."""
    import torch
    from timm.models.vision_transformer import _convert_dinov2

    model, _ = saved[family]
    timm_state = model.state_dict()
    official = {k.replace("mlp.fc1.", "mlp.w12.").replace("mlp.fc2.", "mlp.w3.") if family.endswith("swiglu") else k: v
                for k, v in timm_state.items() if k not in ("reg_token", "cls_token", "pos_embed")}
    official["mask_token"] = torch.randn(1, timm_state["cls_token"].shape[-1])
    class_row = torch.randn(1, 1, timm_state["cls_token"].shape[-1])
    if "reg_token" in timm_state:  # registers join after the table is added: the class row is in the table
        official.update(register_tokens=timm_state["reg_token"], cls_token=timm_state["cls_token"] - class_row,
                        pos_embed=torch.cat([class_row, timm_state["pos_embed"]], dim=1))
    else:
        official.update(cls_token=timm_state["cls_token"], pos_embed=timm_state["pos_embed"])
    converted = _convert_dinov2({k: v.clone() for k, v in official.items()}, model)
    assert converted.keys() == timm_state.keys()
    for name, value in converted.items():
        torch.testing.assert_close(value, timm_state[name], rtol=0, atol=1e-6)
    torch.save(official, tmp_path / "dinov2_pretrain.pth")
    # DINOv2's sizes have timm's head counts; this tiny width says its own
    (tmp_path / "config.json").write_text(json.dumps({"model_args": {"num_heads": 2}}))
    trained = load_trained_model(tmp_path / "dinov2_pretrain.pth")
    x = images(trained.image_size)
    np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, x),
                               timm_logits(model, x), atol=5e-5, rtol=1e-4)
    if family == "dinov2_giant_swiglu":
        return
    from configs.finetune import get_config

    init = get_config(f"init={tmp_path / 'dinov2_pretrain.pth'}").init  # fine-tuning resizes by the same rule
    assert (init.posemb_method, init.posemb_antialias, init.posemb_offset) == (
        ("bicubic", True, 0.0) if "reg_token" in timm_state else ("bicubic", False, 0.1))
    # at other grids, the table resized as DINOv2's own code resizes it: timm's model given that table
    registers = "reg_token" in timm_state
    for size in ((42, 56), (14, 42)):
        table = dinov2_interpolated(official["pos_embed"], (size[0] // 14, size[1] // 14), registers)
        at_size = copy.deepcopy(model)
        at_size.patch_embed.strict_img_size = False
        at_size.pos_embed = torch.nn.Parameter(table[:, 1:] if registers else table)
        x = images(size)
        np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, x), timm_logits(at_size, x),
                                   atol=5e-5, rtol=1e-4)


def dinov2_interpolated(table, grid: tuple[int, int], registers: bool):
    """DINOv2's `interpolate_pos_encoding` with its hub models' settings (facebookresearch/dinov2's
    hub/backbones.py): a scale factor of `(n + 0.1) / M` without registers, bicubic antialiased with them."""
    import torch

    side = math.isqrt(table.shape[1] - 1)
    kwargs = dict(size=grid) if registers else dict(scale_factor=((grid[0] + 0.1) / side, (grid[1] + 0.1) / side))
    patches = torch.nn.functional.interpolate(table[:, 1:].reshape(1, side, side, -1).permute(0, 3, 1, 2),
                                              mode="bicubic", antialias=registers, **kwargs)
    return torch.cat([table[:, :1], patches.permute(0, 2, 3, 1).reshape(1, -1, table.shape[-1])], dim=1)


@pytest.mark.parametrize("family", ["dinov3", "dinov3_qkvb_avg", "dinov3_plus_swiglu"])
def test_dinov3s_own_pth_files_give_timms_logits(saved, family, tmp_path):
    """DINOv3's own checkpoints (facebookresearch/dinov3's names: `storage_tokens`, the fused qkv bias with its key
    mask, `ls1.gamma`, the stored rotary `periods`, the S+/H+/7B SwiGLU's `w1` gated by SiLU, `w2`, `w3`; its
    mask token), no config.json beside them: heads and rotary base are read off the periods. Without SwiGLU, the
    file is what timm's own DINOv3 converter (Eva's `checkpoint_filter_fn`) turns back into the timm model's state
    dict exactly."""
    import torch
    from timm.models.eva import checkpoint_filter_fn

    if family == "dinov3_plus_swiglu":
        model = perturbed_timm("vit_small_plus_patch16_dinov3", img_size=32, global_pool="token")
    else:
        model = saved[family][0]
    timm_state = model.state_dict()
    width, head_dim = timm_state["cls_token"].shape[-1], timm_state["cls_token"].shape[-1] // 2
    names = {"reg_token": "storage_tokens", "gamma_1": "ls1.gamma", "gamma_2": "ls2.gamma", "fc1_g": "w1",
             "fc1_x": "w2", "mlp.fc2": "mlp.w3" if family == "dinov3_plus_swiglu" else "mlp.fc2"}
    official = {}
    for name, value in timm_state.items():
        for timm_name, own in names.items():
            name = name.replace(timm_name, own)
        official[name] = value
    for block in range(2):
        b = f"blocks.{block}.attn."
        q, v = official.pop(b + "q_bias", torch.zeros(width)), official.pop(b + "v_bias", torch.zeros(width))
        official[b + "qkv.bias"] = torch.cat([q, torch.randn(width), v])  # the key's third is masked out
        official[b + "qkv.bias_mask"] = torch.cat([torch.ones(width), torch.zeros(width), torch.ones(width)])
    official["mask_token"] = torch.randn(1, width)
    official["rope_embed.periods"] = 100.0 ** (4 * torch.arange(head_dim // 4) / head_dim)
    if family != "dinov3_plus_swiglu":
        converted = checkpoint_filter_fn({k: v.clone() for k, v in official.items()}, model)
        assert converted.keys() == timm_state.keys()
        for name, value in converted.items():
            torch.testing.assert_close(value, timm_state[name], rtol=0, atol=1e-6)
    torch.save(official, tmp_path / "dinov3_pretrain.pth")
    # this tiny model's size (DINOv3's is 224); timm's default pooling for the qkvb architecture (DINOv3's is token)
    model_args = {"img_size": [32, 32], **({"global_pool": "avg"} if family == "dinov3_qkvb_avg" else {})}
    (tmp_path / "config.json").write_text(json.dumps({"model_args": model_args}))
    trained = load_trained_model(tmp_path / "dinov3_pretrain.pth")
    from safetensors.torch import save_file  # the same names as safetensors: its architecture off the header
    save_file({k: v.contiguous() for k, v in official.items()}, str(tmp_path / "dinov3.safetensors"))
    assert (timm_architecture(tmp_path / "dinov3.safetensors").options
            == timm_architecture(tmp_path / "dinov3_pretrain.pth").options)
    x = images(trained.image_size)
    np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, x), timm_logits(model, x),
                               atol=5e-5, rtol=1e-4)


def test_a_bare_safetensors_file_reads_its_architecture_off_the_tensors(saved, tmp_path):
    """No config.json: width 32 is no standard size, so the heads are asked for; with the config.json beside the
    file they are read from its model_args, and the architecture from the header alone."""
    _, directory = saved["augreg"]
    shutil.copy(directory / "model.safetensors", tmp_path / "model.safetensors")
    with pytest.raises(ValueError, match=r"width-32 ViT .* config.json with \{\"model_args\": \{\"num_heads\": H\}\}"):
        load_pretrained(tmp_path / "model.safetensors")
    checkpoint = read_timm_checkpoint(directory / "model.safetensors", shapes_only=True)
    assert checkpoint.config["model_args"]["num_heads"] == 2  # found beside the file
    large = [a for a in checkpoint.state.values() if a.size > SMALL_TENSOR]
    assert large and all(a.strides == (0,) * a.ndim for a in large)  # only tensors of a few kB are read


@pytest.mark.slow
def test_fine_tuning_starts_from_hf_hub_and_from_a_safetensors_file_on_the_digits(saved, tmp_path, digits_data_dir,
                                                                                  offline_hub):
    """`configs/finetune.py:init=hf-hub:...` through the command line, offline against a Hub cache, at a new
    resolution and patch size: kernel and table resized as timm's loader resizes them, a new head,
    grayscale digits fed as RGB with the checkpoint's mean and std."""
    _, directory = saved["dinov2_reg4"]  # 28x28 in 14x14 patches
    hf_home = tmp_path / "hf"
    write_hub_cache(hf_home, "timm/tiny_dinov2_reg4", {n: directory / n for n in ("config.json", "model.safetensors")})
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(hf_home)}
    workdir = tmp_path / "from_hub"
    command = [sys.executable, "-m", "vit_jax.main", f"--workdir={workdir}",
               "--config=configs/finetune.py:init=hf-hub:timm/tiny_dinov2_reg4,res=16,patch=4,steps=4",
               f"--config.data_dir={digits_data_dir}", "--config.log_every=2", "--config.test_split=",
               "--config.log_pictures=none"]  # drawing them (other tests') took half of each run
    result = subprocess.run(command, capture_output=True, text=True, timeout=600, cwd=ROOT, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    # the kernel PI-resized as timm's loader does (resample_patch_embed: bicubic, antialiased)
    assert "embedding/kernel: PI-resized from patch 14x14 to 4x4 (bicubic, antialiased)" in result.stdout + result.stderr
    assert "pos_embedding: resized from a 2x2 to a 4x4 grid (bicubic, antialiased)" in result.stdout + result.stderr
    saved_config = json.loads((workdir / "config.json").read_text())
    assert saved_config["pp"]["mean"] == [0.485, 0.456, 0.406] and saved_config["pp"]["channels"] == 3
    assert saved_config["model"]["num_registers"] == 4 and saved_config["model"]["layer_scale"] == 1e-5
    # the bare file starts the same run: the same config (but its init) and the same parameters to adapt
    from configs.finetune import get_config

    with_file = get_config(f"init={directory / 'model.safetensors'},res=16,patch=4,steps=4")
    from_hub = get_config("init=hf-hub:timm/tiny_dinov2_reg4,res=16,patch=4,steps=4")
    with_file.init.path = from_hub.init.path
    assert with_file.to_dict() == from_hub.to_dict()
    jax.tree.map(np.testing.assert_array_equal, load_pretrained(directory / "model.safetensors").params,
                 load_pretrained("hf-hub:timm/tiny_dinov2_reg4").params)


@pytest.mark.filterwarnings("ignore::UserWarning")  # timm's interpolator's own torch deprecation notices
@pytest.mark.parametrize("old, new", [((3, 3), (5, 5)), ((4, 4), (2, 2)), ((14, 14), (24, 24)), ((2, 2), (3, 4)),
                                      ((14, 14), (7, 9)), ((1, 3), (2, 2))])
def test_relative_position_tables_resize_as_timms_beit_resize(old, new):
    """BEiT's fine-tuning resize (a geometric progression of offsets, interpolated linearly, clamped outside):
    equal to timm's `resize_rel_pos_bias_table` growing, shrinking, square or not."""
    import_timm()
    import torch
    from timm.layers.pos_embed_rel import resize_rel_pos_bias_table

    from vit_jax.models.relative_position import resize_relative_position_bias

    rows, new_rows = (2 * old[0] - 1, 2 * old[1] - 1), (2 * new[0] - 1, 2 * new[1] - 1)
    table = np.random.default_rng(0).standard_normal((rows[0] * rows[1] + 3, 4)).astype(np.float32)
    theirs = resize_rel_pos_bias_table(torch.from_numpy(table), new, (new_rows[0] * new_rows[1] + 3, 4),
                                       old_window_size=old).numpy()
    ours = resize_relative_position_bias(table[:-3].reshape(*rows, 4), new)
    np.testing.assert_allclose(ours.reshape(-1, 4), theirs[:-3], atol=5e-6)


def test_relative_position_tables_resize_half_pixel_as_transformers_beit_and_fine_tuning_takes_the_rule():
    """transformers' BEiT and data2vec resize the offsets table by PyTorch's half-pixel bilinear; fine-tuning
    resizes a loaded table by the new model's rule (`relative_position_resize`)."""
    import torch

    from vit_jax.models.relative_position import resize_relative_position_bias

    table = np.random.default_rng(0).standard_normal((7, 7, 2)).astype(np.float32)  # a 4x4 grid's offsets
    theirs = torch.nn.functional.interpolate(torch.from_numpy(table).permute(2, 0, 1)[None], size=(5, 11),
                                             mode="bilinear")[0].permute(1, 2, 0).numpy()
    np.testing.assert_allclose(resize_relative_position_bias(table, (3, 6), "bilinear"), theirs, atol=1e-6)
    attention = ("Transformer", "encoderblock_0", "MultiHeadDotProductAttention_1", "relative_position_bias")
    loaded = {"Transformer": {"encoderblock_0": {"MultiHeadDotProductAttention_1": {"relative_position_bias": table}}}}
    target = {"Transformer": {"encoderblock_0": {"MultiHeadDotProductAttention_1": {
        "relative_position_bias": jax.ShapeDtypeStruct((5, 11, 2), jnp.float32)}}}}
    for method in ("geometric", "bilinear"):
        plan = plan_adaptation(loaded, target, old_grid=None, new_grid=(3, 6), relative_position_resize=method)
        np.testing.assert_allclose(plan.flat[attention], resize_relative_position_bias(table, (3, 6), method))
    assert plan.notes == ("relative_position_bias: 1 table(s) resized to 5x11 offsets (half-pixel bilinear "
                          "interpolation)",)


@pytest.mark.parametrize("family", ["clip", "clip_quickgelu"])
def test_open_clip_files_read_as_their_image_tower(saved, family, tmp_path, offline_hub):
    """OpenCLIP's Hub files (`open_clip_model.safetensors` + `open_clip_config.json`; the text tower beside the image
    tower): written from timm's CLIP ViT in OpenCLIP's names, which timm's own `_convert_openai_clip` turns back into
    that model's state dict exactly; vit_jax gives timm's logits, reads `vision_cfg` (heads from `head_width`,
    QuickGELU) and `preprocess_cfg`, from a directory and from `hf-hub:`."""
    import torch
    from safetensors.torch import save_file
    from timm.models.vision_transformer import _convert_openai_clip

    model = copy.deepcopy(saved[family][0])
    with torch.no_grad():
        model.head.bias.zero_()  # OpenCLIP's projection has no bias
    timm_state = model.state_dict()
    renames = [("patch_embed.proj", "conv1"), ("norm_pre", "ln_pre"), ("blocks.", "transformer.resblocks."),
               ("norm1", "ln_1"), ("norm2", "ln_2"), ("attn.qkv.", "attn.in_proj_"), ("attn.proj", "attn.out_proj"),
               ("mlp.fc1", "mlp.c_fc"), ("mlp.fc2", "mlp.c_proj")]
    official = {}
    for name, value in timm_state.items():
        if name == "cls_token":
            official["visual.class_embedding"] = value[0, 0]
        elif name == "pos_embed":
            official["visual.positional_embedding"] = value[0]
        elif name == "head.weight":
            official["visual.proj"] = value.T.contiguous()
        elif name == "norm.weight" or name == "norm.bias":
            official["visual.ln_post." + name.split(".")[1]] = value
        elif name != "head.bias":
            for old, new in renames:
                name = name.replace(old, new)
            official["visual." + name] = value
    converted = _convert_openai_clip(dict(official), model)
    assert converted.keys() == timm_state.keys()
    for name, value in converted.items():
        torch.testing.assert_close(value, timm_state[name], rtol=0, atol=0)
    text_tower = {"token_embedding.weight": torch.randn(10, 32), "positional_embedding": torch.randn(7, 32),
                  "transformer.resblocks.0.attn.in_proj_weight": torch.randn(96, 32), "logit_scale": torch.ones(())}
    save_file({k: v.contiguous() for k, v in {**official, **text_tower}.items()},
              str(tmp_path / "open_clip_model.safetensors"))
    config = {"model_cfg": {"embed_dim": 5, "quick_gelu": family == "clip_quickgelu",
                            "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16,
                                           "patch_size": 16},
                            "text_cfg": {"context_length": 7, "vocab_size": 10, "width": 32, "heads": 2, "layers": 1}},
              "preprocess_cfg": {"mean": [0.5, 0.4, 0.3], "std": [0.2, 0.3, 0.25], "interpolation": "bicubic",
                                 "resize_mode": "shortest"}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    trained = load_trained_model(tmp_path)
    assert (trained.model.quick_gelu, trained.model.num_heads, trained.model.pre_norm) == (
        family == "clip_quickgelu", 2, True)
    pp = trained.preprocess
    assert (pp.mean, pp.crop_mode, pp.crop_pct, pp.resize_method) == ((0.5, 0.4, 0.3), "center", 1.0, "bicubic")
    x = images(trained.image_size)
    np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, x), timm_logits(model, x), atol=5e-5,
                               rtol=1e-4)
    write_hub_cache(offline_hub, f"laion/tiny-{family}", {n: tmp_path / n for n in (
        "open_clip_model.safetensors", "open_clip_config.json")})
    jax.tree.map(np.testing.assert_array_equal, load_pretrained(f"hf-hub:laion/tiny-{family}").params,
                 load_pretrained(tmp_path).params)
    config["model_cfg"]["vision_cfg"]["attentional_pool"] = True
    (tmp_path / "open_clip_config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="vision_cfg.attentional_pool=True: vit_jax reads OpenCLIP's ViT towers"):
        load_pretrained(tmp_path)


def test_an_open_clip_tower_that_is_a_timm_model_reads_as_that_model(tmp_path):
    """OpenCLIP's SigLIP towers (`timm_model_name`): timm's tensors under `visual.trunk.`, pooled by the trunk (MAP
    here), then OpenCLIP's Linear projection `visual.head.proj`: timm's model with that layer as its head."""
    import torch
    from safetensors.torch import save_file

    # OpenCLIP builds the named architecture as timm registers it (its 12 heads), at the config's image size
    model = perturbed_timm("vit_base_patch16_siglip_224", img_size=32, depth=1, embed_dim=96, num_heads=12)
    files = {f"visual.trunk.{k}": v for k, v in model.state_dict().items() if not k.startswith("head.")}
    files.update({"visual.head.proj.weight": model.head.weight.detach(), "visual.head.proj.bias": model.head.bias.detach(),
                  "text.token_embedding.weight": torch.randn(10, 96), "logit_bias": torch.zeros(1)})
    save_file({k: v.contiguous() for k, v in files.items()}, str(tmp_path / "open_clip_model.safetensors"))
    vision = {"timm_model_name": "vit_base_patch16_siglip_224", "timm_pool": "map", "timm_proj": "linear",
              "timm_proj_bias": True, "image_size": 32}
    (tmp_path / "open_clip_config.json").write_text(json.dumps({
        "model_cfg": {"embed_dim": 5, "vision_cfg": vision},
        "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3, "interpolation": "bicubic", "resize_mode": "squash"}}))
    trained = load_trained_model(tmp_path)
    assert trained.model.classifier == "map" and trained.preprocess.crop_mode == "squash"
    x = images(trained.image_size)
    np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, x), timm_logits(model, x), atol=5e-5,
                               rtol=1e-4)


@pytest.mark.parametrize("family", [f for f in FAMILIES if f != "registers_with_positions"])  # that one folds
def test_layer_decay_gives_each_parameter_timms_learning_rate_scale(saved, family):  # registers into the table
    """timm's `param_groups_layer_decay` (BEiT's rule, through each model's own `group_matcher`): every tensor of the
    timm model set to its lr_scale, read into vit_jax's tree; each parameter must hold `optim.layer_scales`'s."""
    from timm.optim._param_groups import param_groups_layer_decay

    from vit_jax.checkpoint.timm_layout import architecture_from_timm, params_from_timm
    from vit_jax.optim import layer_scales
    from vit_jax.param_paths import path_string

    model, directory = saved[family]
    checkpoint = read_timm_checkpoint(directory / "model.safetensors")
    names = {id(p): n for n, p in model.named_parameters()}
    scale_of = {names[id(p)]: group["lr_scale"] for group in param_groups_layer_decay(model, layer_decay=0.5)
                for p in group["params"]}
    state = {name: np.full(value.shape, scale_of.get(name, 1.0), np.float64) for name, value in checkpoint.state.items()}
    params = params_from_timm(state, architecture_from_timm(state, checkpoint.config, family))
    for (path, leaf), (_, ours) in zip(jax.tree_util.tree_flatten_with_path(params)[0],
                                       jax.tree_util.tree_flatten_with_path(layer_scales(params, 0.5))[0]):
        theirs = np.unique(leaf[leaf != 0])
        if not theirs.size:  # made by vit_jax (zero key biases where timm has none): timm has no rate for it
            continue
        assert theirs.size == 1 and theirs[0] == pytest.approx(ours, rel=1e-12), (path_string(path), theirs, ours)


def test_knn_reads_timms_pre_logits_features_and_feeds_grayscale_digits_as_rgb(saved, digits_data_dir, capsys):
    """`vit_jax.knn`'s representation of a checkpoint is timm's `forward_head(..., pre_logits=True)`: DINOv2's
    class token (a headless checkpoint too), DeiT's two tokens averaged, SigLIP's attention pool; the digits
    (grayscale, 8x8) reach the RGB model at its size with its mean and std, the gray value in every channel."""
    import dataclasses

    import torch

    from vit_jax.data.sources import dataset_builder, open_split
    from vit_jax.frozen_features import representations
    from vit_jax.knn import main

    source = open_split(dataset_builder("sklearn_digits", digits_data_dir), "test")
    first = [source[i] for i in range(6)]
    for family in ("headless", "deit_distilled", "siglip"):
        model, directory = saved[family]
        trained = load_trained_model(directory)
        features, labels = representations(trained, first, batch_size=4)
        np.testing.assert_array_equal(labels, [e["label"] for e in first])
        rgb = dataclasses.replace(trained.preprocess, channels=3)
        pixels = np.stack([rgb.eval(example)["image"] for example in first])
        assert pixels.shape == (6, *model.patch_embed.img_size, 3)
        gray = pixels * np.asarray(rgb.std) + np.asarray(rgb.mean)  # the same value in every channel
        np.testing.assert_allclose(gray[..., 0], gray[..., 2], atol=1e-5)
        assert np.ptp(gray) > 0.5
        with torch.no_grad():
            theirs = model.forward_head(model.forward_features(torch.from_numpy(pixels.transpose(0, 3, 1, 2))),
                                        pre_logits=True).numpy()
        np.testing.assert_allclose(features, theirs, atol=2e-5, rtol=1e-4, err_msg=family)
    assert main([f"--checkpoint={saved['headless'][1]}", "--dataset=sklearn_digits", f"--data-dir={digits_data_dir}",
                 "--k", "5", "--batch-size=128"]) == 0
    assert "neighbours from train: 1,257), " in capsys.readouterr().out
