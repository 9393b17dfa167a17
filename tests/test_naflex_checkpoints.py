"""timm's NaFlexVit checkpoints in, against timm itself: each architecture's small model (every parameter
perturbed) saved by `timm.models.save_for_hf`, read by vit_jax and compared logit for logit at the table's grid and
at other grids, square or not, larger and smaller (the table resized by each checkpoint's own rule); timm's padded
NaFlex batches against one vit_jax call per image; exports loaded back by timm's VisionTransformer."""

import json

import jax
import numpy as np
import pytest

from tests.timm_reference import timm_logits, vit_jax_logits
from vit_jax.checkpoint.adapt import fill_from_init, plan_adaptation
from vit_jax.checkpoint.naflex_layout import NAFLEX_DEFAULTS
from vit_jax.checkpoint.pretrained import load_pretrained
from vit_jax.checkpoint.timm_export import export_timm
from vit_jax.checkpoint.trained_model import load_trained_model
from vit_jax.timm_compat import import_timm

SMALL = dict(depth=2, embed_dim=32, num_heads=2, num_classes=5, patch_size=4)
# architecture -> (its arguments, the vit_jax options it must map to)
ARCHITECTURES = {
    # SigLIP 2's NaFlex tower: MAP head, tanh GELU, the table resized bilinear (antialiased)
    "naflexvit_base_patch16_siglip": (dict(pos_embed_grid_size=(4, 4)),
                                      dict(classifier="map", gelu_approximate=True, posemb_resize="bilinear")),
    # registers, layer scale, fc_norm after average pooling, bicubic resizing
    "naflexvit_base_patch16_gap": (dict(pos_embed_grid_size=(4, 4)),
                                   dict(classifier="gap", num_registers=4, fc_norm=True, posemb_resize="bicubic")),
    # aspect-preserving resizing ("par"), and with factorized row and column tables ("parfac")
    "naflexvit_base_patch16_par_gap": (dict(pos_embed_grid_size=(4, 4)), dict(posemb_aspect_preserving=True)),
    "naflexvit_base_patch16_parfac_gap": (dict(pos_embed_grid_size=(4, 4)),
                                          dict(posemb="factorized", posemb_aspect_preserving=True,
                                               posemb_antialias=False)),
    # C-RADIOv3: a class token, 7 registers, no final norm, a larger table resized with aligned corners
    "naflexvit_base_patch16_radio_v3": (dict(pos_embed_grid_size=(6, 6)),
                                        dict(classifier="token", num_registers=7, final_norm=False,
                                             posemb_resize="bilinear_align_corners", posemb_aspect_preserving=True)),
    # a convolution instead of the Linear, and a Linear over (C, ph, pw) patches
    "conv_projection": (dict(pos_embed_grid_size=(4, 4), embed_proj_type="conv", global_pool="avg",
                             class_token=True), dict(classifier="token_gap")),
    "channels_first_patches": (dict(pos_embed_grid_size=(4, 4), patchify_channels_last=False, reg_tokens=2),
                               dict(classifier="map", num_registers=2)),
}
GRIDS = [(4, 4), (6, 6), (2, 3), (5, 2)]  # the table's, larger, smaller and not square, mixed
BASE = "naflexvit_base_patch16_map"  # the plain NaFlexVit the last two vary


def perturbed_naflex(name, **kwargs):
    timm = import_timm()
    import torch

    torch.manual_seed(0)
    model = timm.create_model(BASE if name not in timm.list_models() else name, pretrained=False,
                              pretrained_cfg_overlay=dict(input_size=(3, 24, 24)), **{**SMALL, **kwargs})
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.3 * torch.randn_like(p))
    return model.eval()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """architecture -> (timm model, its Hub-layout directory)."""
    timm = import_timm()
    root = tmp_path_factory.mktemp("naflex_hub_layout")
    out = {}
    for name, (kwargs, _) in ARCHITECTURES.items():
        model = perturbed_naflex(name, **kwargs)
        timm.models.save_for_hf(model, root / name, safe_serialization=True)
        out[name] = (model, root / name)
    return out


def images(grid, n=2, seed=0):
    return np.random.default_rng(seed).standard_normal((n, 4 * grid[0], 4 * grid[1], 3)).astype(np.float32)


@pytest.mark.parametrize("name", ARCHITECTURES)
def test_each_architecture_loads_with_its_options_and_gives_timms_logits_at_any_grid(saved, name):
    model, directory = saved[name]
    trained = load_trained_model(directory)
    for option, value in ARCHITECTURES[name][1].items():
        assert getattr(trained.model, option) == value, option
    assert trained.image_size == (24, 24)  # pretrained_cfg's input size, not the table's
    for grid in GRIDS:
        x = images(grid)
        ours = vit_jax_logits(trained.model, trained.params, x)
        np.testing.assert_allclose(ours, timm_logits(model, x), atol=5e-5, rtol=1e-4, err_msg=str(grid))


@pytest.mark.parametrize("name", ["naflexvit_base_patch16_siglip", "naflexvit_base_patch16_gap"])
def test_timms_padded_naflex_batch_is_one_call_per_image(saved, name):
    """timm's NaFlex batches: images of different grids as padded patch sequences with coordinates and a validity
    mask (masked attention and pooling). Each image's logits are vit_jax's for that image alone."""
    import torch

    model, directory = saved[name]
    trained = load_trained_model(directory)
    grids = [(3, 5), (6, 2)]
    length = max(h * w for h, w in grids) + 3
    patches, coords, valid, expected = [], [], [], []
    for i, (h, w) in enumerate(grids):
        x = images((h, w), n=1, seed=i)
        expected.append(vit_jax_logits(trained.model, trained.params, x)[0])
        flat = x[0].reshape(h, 4, w, 4, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, -1)  # (ph, pw, C) per patch
        pad = length - h * w
        patches.append(np.concatenate([flat, np.zeros((pad, flat.shape[1]), np.float32)]))
        rows, cols = np.divmod(np.arange(h * w), w)
        coords.append(np.concatenate([np.stack([rows, cols], 1), np.zeros((pad, 2), int)]))
        valid.append(np.arange(length) < h * w)
    with torch.no_grad():
        logits = model(torch.tensor(np.stack(patches)), patch_coord=torch.tensor(np.stack(coords)),
                       patch_valid=torch.tensor(np.stack(valid))).numpy()
    np.testing.assert_allclose(logits, np.stack(expected), atol=5e-5, rtol=1e-4)


def test_navit_packs_several_images_in_one_sequence_as_timms_naflex_batch_pads_one_per_row(saved):
    """Packed training (`NaViT`, `config.packing`) on a NaFlex checkpoint: images of different grids share one
    sequence, each token's position row sampled by the checkpoint's own rule; each image's logits are those of
    timm's padded NaFlex batch, one image per row."""
    import torch

    from vit_jax.checkpoint.pretrained import timm_architecture
    from vit_jax.models.navit import NaViT

    model, directory = saved["naflexvit_base_patch16_siglip"]
    navit = NaViT(**timm_architecture(directory).options)
    params = load_pretrained(str(directory)).params
    grids = [(3, 5), (6, 2), (1, 1)]
    patches, ids, coords, rows = [], [], [], []
    for slot, (h, w) in enumerate(grids):
        flat = images((h, w), n=1, seed=slot)[0].reshape(h, 4, w, 4, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, -1)
        patches.append(flat)
        ids += [slot + 1] * (h * w)
        coords.append(np.stack(np.divmod(np.arange(h * w), w), axis=1))
        pad = 16 - h * w
        rows.append((np.concatenate([flat, np.zeros((pad, 48), np.float32)]),
                     np.concatenate([coords[-1], np.zeros((pad, 2), int)]), np.arange(16) < h * w))
    pad = 32 - len(ids)
    packed = (np.concatenate([*patches, np.full((pad, 48), 3.0, np.float32)])[None],
              np.array(ids + [0] * pad, np.int32)[None], np.concatenate([*coords, np.zeros((pad, 2), int)])[None],
              np.array(grids + [(1, 1)], np.int32)[None])
    ours = np.asarray(navit.apply({"params": params}, *packed, train=False))[0, :3]
    with torch.no_grad():
        patches_, coords_, valid = (torch.tensor(np.stack(column)) for column in zip(*rows))
        logits = model(patches_, patch_coord=coords_, patch_valid=valid)
    np.testing.assert_allclose(ours, logits.numpy(), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("name", ["naflexvit_base_patch16_par_gap", "naflexvit_base_patch16_parfac_gap"])
def test_fine_tuning_resizes_the_table_once_as_the_forward_pass_does(saved, name):
    """Fine-tuning at a new resolution resizes the loaded table to it once (configs/finetune.py takes the
    checkpoint's own rule): the model then gives timm's logits at that resolution, aspect preserving included."""
    from configs.finetune import get_config
    from vit_jax.config import build_model

    model, directory = saved[name]
    config = get_config(f"init={directory}")
    assert config.init.posemb_method == config.model.posemb_resize and config.init.posemb_aspect_preserving
    assert tuple(config.image_size) == (24, 24)  # the evaluation size (pretrained_cfg's), not the table's (16)
    pretrained = load_pretrained(str(directory))
    target = build_model(config.model, num_classes=5)
    new_grid = (3, 5)
    x = images(new_grid)
    shapes = jax.eval_shape(lambda: target.init(jax.random.key(0), x, train=False))
    plan = plan_adaptation(pretrained.params, shapes["params"], old_grid=pretrained.grid, new_grid=new_grid,
                           posemb_method=config.init.posemb_method, posemb_antialias=config.init.posemb_antialias,
                           posemb_aspect_preserving=config.init.posemb_aspect_preserving)
    params = fill_from_init(plan, jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes["params"]))
    np.testing.assert_allclose(vit_jax_logits(target, params, x), timm_logits(model, x),
                               atol=5e-5, rtol=1e-4)


def test_an_export_is_timms_vision_transformer_at_the_evaluation_size(saved, tmp_path):
    """Exported, the table is written at the export's grid, resized by the checkpoint's own rule: timm's plain
    VisionTransformer loads it strictly and gives the NaFlexVit's logits at that size."""
    timm = import_timm()
    model, directory = saved["naflexvit_base_patch16_par_gap"]
    config = json.loads((directory / "config.json").read_text())
    config["pretrained_cfg"]["input_size"] = [3, 12, 20]  # a 3x5 grid from the 4x4 table, aspect preserving
    (tmp_path / "naflex").mkdir()
    (tmp_path / "naflex" / "config.json").write_text(json.dumps(config))
    (tmp_path / "naflex" / "model.safetensors").symlink_to(directory / "model.safetensors")
    export_timm(str(tmp_path / "naflex"), tmp_path / "exported")
    exported = timm.create_model(f"local-dir:{tmp_path / 'exported'}", pretrained=True)
    assert type(exported).__name__ == "VisionTransformer"
    x = images((3, 5))
    np.testing.assert_allclose(timm_logits(exported.eval(), x), timm_logits(model, x), atol=5e-5, rtol=1e-4)


@pytest.mark.parametrize("kwargs, edit, reason", [
    (dict(rope_type="axial", pos_embed="none"), None, r"rope_type='axial' \(timm's EvaBlock"),
    (dict(swiglu_mlp=True), None, "swiglu_mlp=True"),
    (dict(input_norm_layer=True, norm_layer="layernorm"), None, "a norm on the raw patch pixels"),
    ({}, {"pos_embed_interp_mode": "nearest"}, "position tables resized by 'nearest'"),
    ({}, {"pos_embed_interp_mode": "bicubic", "pos_embed_align_corners": True}, "align_corners=True"),
    ({}, "no config", "without its config.json"),
])
def test_what_vit_jax_cannot_run_is_refused_in_one_line(kwargs, edit, reason, tmp_path):
    timm = import_timm()
    timm.models.save_for_hf(perturbed_naflex(BASE, pos_embed_grid_size=(4, 4), **kwargs), tmp_path,
                            safe_serialization=True)
    if edit == "no config":
        (tmp_path / "config.json").unlink()
    elif edit:
        config = json.loads((tmp_path / "config.json").read_text())
        config["model_args"].update(edit)
        (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match=reason) as error:
        load_trained_model(tmp_path)
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)


def test_the_defaults_assumed_are_timms_naflexvitcfg():
    import dataclasses

    timm = import_timm()
    defaults = dataclasses.asdict(timm.models.naflexvit.NaFlexVitCfg())
    assert {k: list(v) if isinstance(v, tuple) else v for k, v in defaults.items() if k in NAFLEX_DEFAULTS} == \
        NAFLEX_DEFAULTS
