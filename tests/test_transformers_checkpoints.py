"""Hugging Face transformers' checkpoints in, against transformers itself: each family's small model (random
weights, every parameter perturbed) written by `save_pretrained` in the Hub layout (the legacy tensor names the
Hub's files have), read by vit_jax, and compared output for output; image processors' views compared pixel for
pixel; the `hf-hub:` path through an offline Hub cache."""

import json
from types import SimpleNamespace

import jax
import numpy as np
import pytest

from tests.conftest import write_hub_cache
from tests.timm_reference import vit_jax_logits
from vit_jax.checkpoint.pretrained import load_pretrained, timm_architecture
from vit_jax.checkpoint.trained_model import load_trained_model
from vit_jax.timm_compat import import_transformers

SIZE = dict(hidden_size=32, num_hidden_layers=2, num_attention_heads=2, intermediate_size=64, image_size=32,
            patch_size=8)
DINOV2 = {k: v for k, v in SIZE.items() if k != "intermediate_size"}  # DINOv2's MLP width is mlp_ratio's
TEXT = dict(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
# family -> (model class, config class, config arguments, the output vit_jax's model gives, vit_jax options)
FAMILIES = {
    # google/vit-*: LayerNorm epsilon 1e-12 as its config says; ViTModel's pooler is pre_logits (Dense + tanh)
    "vit": ("ViTForImageClassification", "ViTConfig", dict(SIZE, num_labels=5), "logits",
            dict(classifier="token", layer_norm_epsilon=1e-12)),
    "vit_pooler": ("ViTModel", "ViTConfig", SIZE, "pooler_output", dict(representation_size=32, num_classes=None)),
    "deit_distilled": ("DeiTForImageClassificationWithTeacher", "DeiTConfig", dict(SIZE, num_labels=5), "logits",
                       dict(classifier="token_distilled")),
    "msn": ("ViTMSNForImageClassification", "ViTMSNConfig", dict(SIZE, num_labels=5), "logits", {}),
    "ijepa": ("IJepaForImageClassification", "IJepaConfig", dict(SIZE, num_labels=5), "logits",
              dict(classifier="gap")),
    "mae": ("ViTMAEModel", "ViTMAEConfig", dict(SIZE, mask_ratio=0.0), "cls", dict(classifier="token")),
    # BEiT: relative position tables in every block, q/v biases, layer scale, mean pooling then fc_norm; data2vec's
    # BEiT with an absolute table too, pooled by its class token
    "beit": ("BeitForImageClassification", "BeitConfig", dict(SIZE, num_labels=5, use_relative_position_bias=True),
             "logits", dict(relative_position_bias=True, posemb="none", classifier="token_gap", fc_norm=True)),
    "data2vec": ("Data2VecVisionForImageClassification", "Data2VecVisionConfig",
                 dict(SIZE, num_labels=5, use_relative_position_bias=True, use_absolute_position_embeddings=True,
                      use_mean_pooling=False), "logits",
                 dict(relative_position_bias=True, posemb="learn", classifier="token", layer_scale=1e-5)),
    "dinov2": ("Dinov2Model", "Dinov2Config", DINOV2, "pooler_output", dict(layer_scale=1e-5, mlp_dim=128)),
    "dinov2_swiglu": ("Dinov2Model", "Dinov2Config", dict(DINOV2, use_swiglu_ffn=True), "pooler_output",
                      dict(gated_mlp=True, mlp_dim=88)),
    "dinov2_registers": ("Dinov2WithRegistersModel", "Dinov2WithRegistersConfig", dict(DINOV2, num_register_tokens=3),
                         "pooler_output", dict(num_registers=3)),
    # DINOv2's linear classifiers: the class token and the mean patch token (registers left out) side by side
    "dinov2_classifier": ("Dinov2WithRegistersForImageClassification", "Dinov2WithRegistersConfig",
                          dict(DINOV2, num_register_tokens=2, num_labels=5), "logits",
                          dict(classifier="token_and_gap", num_registers=2)),
    "dinov3": ("DINOv3ViTModel", "DINOv3ViTConfig", dict(SIZE, num_register_tokens=2), "pooler_output",
               dict(posemb="rope_axial", rope_coordinates="centered", num_registers=2, layer_norm_epsilon=1e-5)),
    "dinov3_swiglu": ("DINOv3ViTModel", "DINOv3ViTConfig", dict(SIZE, use_gated_mlp=True, hidden_act="silu"),
                      "pooler_output", dict(gated_mlp=True, num_registers=0)),
    # CLIP's image tower with its projection (a head without bias), alone and in a two-tower file
    "clip": ("CLIPVisionModelWithProjection", "CLIPVisionConfig", dict(SIZE, projection_dim=16), "image_embeds",
             dict(pre_norm=True, quick_gelu=True, patch_bias=False, num_classes=16)),
    "clip_two_towers": ("CLIPModel", "CLIPConfig", dict(vision_config=SIZE, text_config=TEXT, projection_dim=16),
                        "image_features", dict(pre_norm=True, num_classes=16)),
    # CLIP's image tower under other names: MetaCLIP 2's (with its projection), Chinese CLIP's
    "metaclip2": ("MetaClip2VisionModelWithProjection", "MetaClip2VisionConfig", dict(SIZE, projection_dim=16),
                  "image_embeds", dict(pre_norm=True, quick_gelu=True, num_classes=16)),
    "chinese_clip": ("ChineseCLIPVisionModel", "ChineseCLIPVisionConfig", SIZE, "pooler_output",
                     dict(pre_norm=True, num_classes=None)),
    "siglip": ("SiglipVisionModel", "SiglipVisionConfig", SIZE, "pooler_output",
               dict(classifier="map", gelu_approximate=True, num_classes=None)),
    "siglip_classifier": ("SiglipForImageClassification", "SiglipConfig",
                          dict(vision_config=SIZE, text_config=TEXT, num_labels=5), "logits", dict(classifier="gap")),
}


def perturbed(model_class: str, config_class: str, arguments: dict):
    transformers = import_transformers()
    import torch

    torch.manual_seed(0)
    model = getattr(transformers, model_class)(getattr(transformers, config_class)(**arguments)).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.2 * torch.randn_like(p))
    return model


def output(model, images: np.ndarray, kind: str) -> np.ndarray:
    """The output vit_jax's model gives: logits, the pooled feature, CLIP's image embedding, MAE's class token."""
    import torch

    with torch.no_grad():
        x = torch.from_numpy(images.transpose(0, 3, 1, 2))
        if kind == "image_features":
            out = model.get_image_features(pixel_values=x)
            return getattr(out, "pooler_output", out).numpy()
        if kind == "cls":
            return model(x).last_hidden_state[:, 0].numpy()
        return getattr(model(x), kind).numpy()


@pytest.fixture(scope="module")
def saved(tmp_path_factory):
    """family -> (its Hub-layout directory, transformers' output on `IMAGES`)."""
    root = tmp_path_factory.mktemp("transformers_hub_layout")
    out = {}
    for family, (model_class, config_class, arguments, kind, _) in FAMILIES.items():
        model = perturbed(model_class, config_class, arguments)
        model.save_pretrained(root / family)
        out[family] = (root / family, output(model, IMAGES, kind))
    return out


IMAGES = np.random.default_rng(0).standard_normal((2, 32, 32, 3)).astype(np.float32)


@pytest.mark.xdist_group("transformers_checkpoints")
@pytest.mark.parametrize("family", FAMILIES)
def test_each_family_loads_with_its_options_and_gives_transformers_outputs(saved, family):
    directory, expected = saved[family]
    trained = load_trained_model(directory)
    for option, value in FAMILIES[family][4].items():
        assert getattr(trained.model, option) == value, option
    assert trained.image_size == (32, 32)
    ours = vit_jax_logits(trained.model, trained.params, IMAGES)
    np.testing.assert_allclose(ours, expected, atol=5e-5, rtol=1e-4)


@pytest.mark.xdist_group("transformers_checkpoints")
@pytest.mark.parametrize("family", ["vit", "deit_distilled", "dinov2", "dinov2_registers", "clip", "siglip_classifier",
                                    "beit", "data2vec"])
def test_at_another_grid_the_table_is_resized_as_transformers_resizes_it(saved, family):
    """transformers' `interpolate_pos_encoding` (DINOv2's always on): PyTorch's bicubic, antialiased only in DINOv2
    with registers; BEiT's and data2vec's relative position tables half-pixel bilinear over the offsets. A 4x4 table
    at a 3x6 grid is shrunk along one axis and grown along the other."""
    import torch

    directory, _ = saved[family]
    model_class, config_class, arguments, kind, _ = FAMILIES[family]
    model = perturbed(model_class, config_class, arguments)
    x = np.random.default_rng(1).standard_normal((2, 24, 48, 3)).astype(np.float32)
    flag = {} if family.startswith("dinov2") else {"interpolate_pos_encoding": True}
    with torch.no_grad():
        expected = getattr(model(torch.from_numpy(x.transpose(0, 3, 1, 2)), **flag), kind).numpy()
    trained = load_trained_model(directory)
    np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, x), expected, atol=5e-5, rtol=1e-4)


@pytest.mark.xdist_group("transformers_checkpoints")
def test_an_offline_hub_repo_brings_its_class_names_and_its_image_processors_view(saved, offline_hub, tmp_path,
                                                                                  capsys):
    """`hf-hub:` resolves a transformers repo (config.json with a model_type, model.safetensors,
    preprocessor_config.json) offline; id2label names the classes; the processor's resize, crop, mean and std are
    the evaluation view; a repo without a preprocessor_config.json gets its family's mean and std."""
    directory, _ = saved["vit"]
    config = json.loads((directory / "config.json").read_text())
    config["id2label"] = {str(i): name for i, name in enumerate(["cat", "dog", "eel", "fox", "gnu"])}
    for field in ("hidden_act", "layer_norm_eps", "image_size"):  # at their defaults: an older config.json's way
        del config[field]
    (tmp_path / "config.json").write_text(json.dumps(config))
    processor = {"do_resize": True, "size": {"shortest_edge": 40}, "do_center_crop": True,
                 "crop_size": {"height": 32, "width": 32}, "resample": 3, "image_mean": [0.4, 0.5, 0.6],
                 "image_std": [0.2, 0.3, 0.25], "image_processor_type": "BitImageProcessor"}
    (tmp_path / "preprocessor_config.json").write_text(json.dumps(processor))
    write_hub_cache(offline_hub, "google/tiny-vit", {"config.json": tmp_path / "config.json",
                                                     "model.safetensors": directory / "model.safetensors",
                                                     "preprocessor_config.json": tmp_path / "preprocessor_config.json"})
    trained = load_trained_model("hf-hub:google/tiny-vit")
    assert trained.class_names == ("cat", "dog", "eel", "fox", "gnu")
    assert trained.model.layer_norm_epsilon == 1e-12 and not trained.model.gelu_approximate
    assert timm_architecture("hf-hub:google/tiny-vit").image_size == (32, 32)  # the table's 4x4 patches of 8
    pp = trained.preprocess
    assert (pp.image_size, pp.crop_pct, pp.crop_mode, pp.resize_method) == ((32, 32), 0.8, "center", "bicubic")
    assert (pp.mean, pp.std, pp.value_range) == ((0.4, 0.5, 0.6), (0.2, 0.3, 0.25), (0.0, 1.0))

    plain = load_trained_model(saved["clip"][0])  # no preprocessor_config.json: CLIP's own mean and std
    assert plain.preprocess.mean == (0.48145466, 0.4578275, 0.40821073) and plain.class_names[0] == "0"

    # the command a user types: `predict` names the checkpoint's classes, in the order of its logits
    from PIL import Image

    from vit_jax import predict

    photo = tmp_path / "photo.png"
    Image.fromarray(np.random.default_rng(3).integers(0, 256, (37, 53, 3), np.uint8)).save(photo)
    logits = trained.model.apply({"params": trained.params}, predict.preprocessed(trained, photo)[None], train=False)
    order = np.argsort(-np.asarray(logits[0]), kind="stable")
    capsys.readouterr()
    assert predict.main(["--checkpoint=hf-hub:google/tiny-vit", "--json", "--top-k=5", str(photo)]) == 0
    record = json.loads(capsys.readouterr().out)  # one JSON record per image
    assert [name for name, _ in record["top_k"]] == [trained.class_names[i] for i in order]


@pytest.mark.xdist_group("transformers_checkpoints")
def test_a_checkpoint_in_shards_reads_as_one_from_a_directory_and_from_the_hub(saved, offline_hub, tmp_path):
    """What `save_pretrained(max_shard_size=...)` writes for large models (DINOv3-7B, ViT-bigG): the index and
    its shards, every tensor where the index says; on the Hub, the index brings its shards."""
    directory, _ = saved["dinov2_swiglu"]
    sharded = tmp_path / "sharded"
    perturbed(*FAMILIES["dinov2_swiglu"][:3]).save_pretrained(sharded, max_shard_size="20KB")
    shards = sorted(sharded.glob("model-*-of-*.safetensors"))
    assert len(shards) > 2 and not (sharded / "model.safetensors").exists()
    whole = load_pretrained(directory).params
    jax.tree.map(np.testing.assert_array_equal, load_pretrained(sharded).params, whole)
    files = {p.name: p for p in [sharded / "config.json", sharded / "model.safetensors.index.json", *shards]}
    write_hub_cache(offline_hub, "facebook/tiny-sharded", files)
    jax.tree.map(np.testing.assert_array_equal, load_pretrained("hf-hub:facebook/tiny-sharded").params, whole)
    (sharded / shards[1].name).unlink()
    with pytest.raises(FileNotFoundError, match=rf"names the shard {shards[1].name}, which is not beside it"):
        load_pretrained(sharded)


@pytest.mark.xdist_group("transformers_checkpoints")
@pytest.mark.parametrize("processor, arguments", [
    ("ViTImageProcessorPil", dict(size={"height": 32, "width": 32}, resample=2)),  # google/vit-*: squashed, 0.5
    # DINOv2's; a 3-pixel margin, whose half transformers floors where torchvision rounds
    ("BitImageProcessorPil", dict(size={"shortest_edge": 35}, crop_size={"height": 32, "width": 32}, resample=3,
                               image_mean=[0.485, 0.456, 0.406], image_std=[0.229, 0.224, 0.225])),
    ("CLIPImageProcessorPil", dict(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})),
])
def test_a_photo_is_fed_to_the_model_as_the_image_processor_feeds_it(saved, processor, arguments, tmp_path):
    """`predict`'s view of an odd-sized photo equals the checkpoint's own image processor's `pixel_values` (its PIL
    backend, which the Hub's checkpoints were evaluated with; transformers 5's default torchvision backend resizes
    uint8 tensors its own way, a level apart at some pixels)."""
    import shutil

    from PIL import Image

    from vit_jax.predict import preprocessed

    transformers = import_transformers()
    directory = tmp_path / "hub"
    shutil.copytree(saved["vit"][0], directory)
    image_processor = getattr(transformers, processor)(**arguments)
    image_processor.save_pretrained(directory)
    y, x = np.mgrid[0:45, 0:71]
    photo = np.stack([(y * 5) % 256, (x * 3 + y) % 256, (x * y) % 256], axis=-1).astype(np.uint8)
    Image.fromarray(photo).save(tmp_path / "photo.png")
    expected = image_processor(Image.open(tmp_path / "photo.png").convert("RGB"), return_tensors="np")
    got = preprocessed(load_trained_model(directory), tmp_path / "photo.png")
    np.testing.assert_allclose(got, expected["pixel_values"][0].transpose(1, 2, 0), atol=1e-5)


@pytest.mark.xdist_group("transformers_checkpoints")
def test_fine_tuning_takes_the_architecture_and_preprocessing_and_drops_the_pooler(saved):
    """configs/finetune.py:init=DIR builds the checkpoint's model (options, resolution, mean and std); the
    pooler (pre_logits) is dropped as vision_transformer's fine-tuning drops it."""
    from configs.finetune import get_config
    from vit_jax.checkpoint.adapt import plan_adaptation
    from vit_jax.config import build_model

    directory, _ = saved["dinov2_registers"]
    config = get_config(f"init={directory}")
    assert config.model.num_registers == 3 and config.model.layer_scale == 1e-5
    assert tuple(config.image_size) == (32, 32) and tuple(config.pp.mean) == (0.485, 0.456, 0.406)
    # the table resized once at load as transformers' interpolate_pos_encoding resizes it in the forward pass
    assert (config.init.posemb_method, config.init.posemb_antialias) == ("bicubic", True)
    pooled, _ = saved["vit_pooler"]
    config = get_config(f"init={pooled}")
    assert config.model.get("representation_size") is None and tuple(config.pp.mean) == (0.5, 0.5, 0.5)
    assert (config.init.posemb_method, config.init.posemb_antialias) == ("bicubic", False)
    model = build_model(config.model, num_classes=10)
    import jax

    target = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0), np.zeros((1, 32, 32, 3)), train=False))
    plan = plan_adaptation(load_pretrained(pooled).params, target["params"], old_grid=timm_architecture(pooled).grid,
                           new_grid=(4, 4))
    assert any("pre_logits: dropped" in note for note in plan.notes)


@pytest.mark.xdist_group("transformers_checkpoints")
@pytest.mark.parametrize("model_class, config_class, arguments, edit, reason", [
    ("DeiTForImageClassification", "DeiTConfig", dict(SIZE, num_labels=3), None,
     "a DeiT with a distillation token and .* head reading the class token alone"),
    ("CLIPForImageClassification", "CLIPConfig", dict(vision_config=SIZE, text_config=TEXT, num_labels=3), None,
     "reads the mean patch token before the final LayerNorm"),
    ("ViTModel", "ViTConfig", dict(SIZE, hidden_act="relu"), None, "the activation 'relu'"),
    ("BeitModel", "BeitConfig", dict(SIZE, use_shared_relative_position_bias=True), None,
     "a relative position bias shared by the blocks"),
    ("ViTModel", "ViTConfig", SIZE, {"model_type": "swin"}, "model_type 'swin' is not one vit_jax reads"),
    ("ViTModel", "ViTConfig", SIZE, "no config", "its names are transformers': put its config.json"),
])
def test_what_vit_jax_cannot_run_is_refused_in_one_line(model_class, config_class, arguments, edit, reason,
                                                         tmp_path):
    perturbed(model_class, config_class, arguments).save_pretrained(tmp_path)
    if edit == "no config":
        (tmp_path / "config.json").unlink()
    elif edit:
        config = json.loads((tmp_path / "config.json").read_text())
        (tmp_path / "config.json").write_text(json.dumps({**config, **edit}))
    with pytest.raises(ValueError, match=reason) as error:
        load_trained_model(tmp_path)
    assert "\n" not in str(error.value) and str(tmp_path) in str(error.value)


@pytest.mark.xdist_group("transformers_checkpoints")  # with the others: transformers is imported once (3 s)
def test_the_config_defaults_assumed_are_transformers_own():
    """A config.json may leave out fields at their default (hand-written or older ones do): the defaults read in
    their place are the config classes' own."""
    from vit_jax.checkpoint.transformers_layout import CONFIG_DEFAULTS

    transformers = import_transformers()
    for model_type, defaults in CONFIG_DEFAULTS.items():
        config = transformers.AutoConfig.for_model(model_type)  # imports that one config module, not all of them
        config = getattr(config, "vision_config", config)
        assert {field: getattr(config, field) for field in defaults} == defaults, model_type


@pytest.mark.xdist_group("transformers_checkpoints")
@pytest.mark.parametrize("model_class, config_class, arguments, kind", [
    ("Siglip2VisionModel", "Siglip2VisionConfig", dict(SIZE, num_patches=16), "pooler_output"),
    ("Siglip2ForImageClassification", "Siglip2Config",
     dict(vision_config=dict(SIZE, num_patches=16), text_config=TEXT, num_labels=5), "logits"),
])
def test_siglip2_naflex_batches_are_one_call_per_image_at_its_own_grid(model_class, config_class, arguments, kind,
                                                                      tmp_path):
    """SigLIP 2's NaFlex towers take images of any grid as padded patch sequences; each image's output is vit_jax's
    for that image alone (its 4x4 table resized to the image's grid, bilinear and antialiased, as timm's NaFlexVit).
    `predict`'s view is the image processor's, pixel for pixel: each photo at its own aspect ratio with at most
    max_num_patches patches; the model at that view gives transformers' output on the processor's batch."""
    import torch
    from PIL import Image

    from vit_jax.predict import predict_files, preprocessed

    model = perturbed(model_class, config_class, arguments)
    model.save_pretrained(tmp_path)
    trained = load_trained_model(tmp_path)
    assert trained.model.posemb_grid == (4, 4) and trained.image_size == (32, 32)  # without a processor: the table's
    processor = import_transformers().Siglip2ImageProcessorPil(patch_size=8, max_num_patches=10)
    processor.save_pretrained(tmp_path)
    with_processor = load_trained_model(tmp_path)
    photos, best = [], []
    for height, width, grid in [(45, 45, (3, 3)), (45, 90, (2, 4)), (90, 30, (5, 2)), (17, 200, (1, 10))]:
        y, x = np.mgrid[0:height, 0:width]
        photos.append(tmp_path / f"photo_{height}x{width}.png")
        Image.fromarray(np.stack([(y * 5) % 256, (x * 3 + y) % 256, (x * y) % 256], -1).astype(np.uint8)).save(
            photos[-1])
        got = preprocessed(with_processor, photos[-1])
        batch = processor(Image.open(photos[-1]), return_tensors="np")
        assert tuple(batch["spatial_shapes"][0]) == grid and got.shape == (grid[0] * 8, grid[1] * 8, 3)
        n = grid[0] * grid[1]
        np.testing.assert_allclose(got.reshape(grid[0], 8, grid[1], 8, 3).transpose(0, 2, 1, 3, 4).reshape(n, -1),
                                   batch["pixel_values"][0, :n], atol=1e-5)
        with torch.no_grad():
            theirs = getattr(model(**{k: torch.tensor(v) for k, v in batch.items()}), kind).numpy()
        np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, got[None]), theirs, atol=5e-5,
                                   rtol=1e-4)
        best.append(str(int(np.argmax(theirs[0]))))
    if kind == "logits":  # predict batches the photos by their views' shapes
        records = predict_files(with_processor, [str(p) for p in photos], k=1, batch_size=2)
        assert [record["top_k"][0][0] for record in records] == best
    patch, grids, length = 8, [(3, 5), (2, 2), (6, 1)], 20
    rng = np.random.default_rng(0)
    pixels, masks, expected = [], [], []
    for h, w in grids:
        x = rng.standard_normal((1, h * patch, w * patch, 3)).astype(np.float32)
        expected.append(vit_jax_logits(trained.model, trained.params, x)[0])
        flat = x[0].reshape(h, patch, w, patch, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, -1)  # the processor's
        pixels.append(np.concatenate([flat, np.zeros((length - h * w, flat.shape[1]), np.float32)]))
        masks.append(np.arange(length) < h * w)
    with torch.no_grad():
        out = model(pixel_values=torch.tensor(np.stack(pixels)), pixel_attention_mask=torch.tensor(np.stack(masks)),
                    spatial_shapes=torch.tensor(grids))
    np.testing.assert_allclose(getattr(out, kind).numpy(), np.stack(expected), atol=5e-5, rtol=1e-4)


@pytest.mark.xdist_group("transformers_checkpoints")
def test_a_vit_jax_model_exports_as_transformers_vit(tmp_path, monkeypatch, capsys):
    """`transformers_export` writes what `ViTForImageClassification.from_pretrained` loads with vit_jax's logits and
    `ViTImageProcessor` preprocesses as vit_jax does; vit_jax reads it back as the same model. A model transformers'
    ViT cannot run is refused by name before anything is written; an export into an earlier one replaces its files
    only once all are written."""
    import torch
    from PIL import Image

    from tests.conftest import TINY, live_params
    from vit_jax.checkpoint.npz import save_npz
    from vit_jax.checkpoint.transformers_export import export_transformers, main
    from vit_jax.models import create_model
    from vit_jax.predict import preprocessed

    transformers = import_transformers()
    model = create_model("Ti/8", num_classes=5, **TINY)
    save_npz(live_params(model, np.zeros((1, 24, 24, 3))), tmp_path / "tiny.npz")
    trained = load_trained_model(npz=tmp_path / "tiny.npz")  # tanh GELU, value range [-1, 1], squashed, bilinear
    out = export_transformers(str(tmp_path / "tiny.npz"), tmp_path / "hf")
    theirs = transformers.ViTForImageClassification.from_pretrained(out).eval()
    assert theirs.config.hidden_act == "gelu_pytorch_tanh" and theirs.config.image_size == 24
    x = np.random.default_rng(0).standard_normal((2, 24, 24, 3)).astype(np.float32)
    ours = vit_jax_logits(trained.model, trained.params, x)
    with torch.no_grad():
        np.testing.assert_allclose(theirs(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy(), ours, atol=5e-5,
                                   rtol=1e-4)
    back = load_trained_model(out)
    np.testing.assert_allclose(vit_jax_logits(back.model, back.params, x), ours, atol=1e-5, rtol=1e-5)
    y, x_ = np.mgrid[0:37, 0:53]
    Image.fromarray(np.stack([(y * 7) % 256, (x_ * 3 + y) % 256, (x_ * y) % 256], -1).astype(np.uint8)).save(
        tmp_path / "photo.png")
    processor = transformers.ViTImageProcessorPil.from_pretrained(out)
    view = processor(Image.open(tmp_path / "photo.png"), return_tensors="np")["pixel_values"][0].transpose(1, 2, 0)
    np.testing.assert_allclose(preprocessed(trained, tmp_path / "photo.png"), view, atol=1e-5)
    pooled = create_model("Ti/8", num_classes=5, **TINY, classifier="map")
    save_npz(live_params(pooled, np.zeros((1, 24, 24, 3))), tmp_path / "map.npz")
    assert main([f"--checkpoint={tmp_path / 'map.npz'}", f"--out={tmp_path / 'refused'}"]) == 2
    assert not (tmp_path / "refused").exists()
    assert main([f"--checkpoint={tmp_path / 'tiny.npz'}", f"--out={out / 'config.json'}"]) == 2
    assert "config.json: an existing file; expected a directory" in capsys.readouterr().err
    earlier = {path.name: path.read_bytes() for path in out.iterdir()}
    save_npz(jax.tree.map(lambda p: p * 2, live_params(model, np.zeros((1, 24, 24, 3)))), tmp_path / "other.npz")
    from vit_jax.checkpoint import timm_export

    def disk_full(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(timm_export, "json", SimpleNamespace(dumps=disk_full))  # after the weights, before a config
    assert main([f"--checkpoint={tmp_path / 'other.npz'}", f"--out={out}"]) == 2
    assert "No space left on device" in capsys.readouterr().err
    assert {path.name: path.read_bytes() for path in out.iterdir()} == earlier  # as it was, no partial files left
    monkeypatch.undo()
    assert main([f"--checkpoint={tmp_path / 'other.npz'}", f"--out={out}"]) == 0
    assert "(replacing the earlier model.safetensors, config.json, preprocessor_config.json)" in capsys.readouterr().out
    assert sorted(path.name for path in out.iterdir()) == sorted(earlier)
    assert (out / "model.safetensors").read_bytes() != earlier["model.safetensors"]


@pytest.mark.xdist_group("transformers_checkpoints")
def test_dinov2_and_gap_models_export_as_transformers_dinov2_and_siglip_classifiers(tmp_path, capsys):
    """A model with DINOv2's classifier (class token and mean patch token side by side) is written as
    `Dinov2ForImageClassification`, with registers as `Dinov2WithRegistersForImageClassification`, a mean-pooled one
    (the README's digits model: grayscale, no class token) as `SiglipForImageClassification`: every tensor loads
    (nothing missing, nothing left over), the logits are vit_jax's, and vit_jax reads it back as the same model.
    Layer scale is ones where vit_jax has none."""
    import torch

    from tests.conftest import TINY, live_params
    from vit_jax.checkpoint.npz import save_npz
    from vit_jax.checkpoint.transformers_export import export_transformers, main
    from vit_jax.models import create_model

    transformers = import_transformers()
    dino = dict(classifier="token_and_gap")
    for options, architecture, channels in (
            (dino, "Dinov2ForImageClassification", 3),
            (dict(dino, layer_scale=0.5, num_registers=3), "Dinov2WithRegistersForImageClassification", 3),
            (dict(dino, gated_mlp=True, mlp_dim=48), "Dinov2ForImageClassification", 3),  # SwiGLU: mlp_ratio 2 ->
            # two thirds of 64 rounded up to a multiple of 8, as DINOv2-g's
            (dict(classifier="gap"), "SiglipForImageClassification", 1),
            (dict(classifier="gap", posemb="sincos2d"), "SiglipForImageClassification", 3)):  # big_vision's plain
        # ViT: its fixed table written as a learned one
        x = np.random.default_rng(0).standard_normal((2, 24, 24, channels)).astype(np.float32)
        model = create_model("Ti/8", num_classes=5, **{**TINY, **options})
        save_npz(live_params(model, np.zeros((1, 24, 24, channels))), tmp_path / "dino.npz")
        trained = load_trained_model(npz=tmp_path / "dino.npz", image_size=(24, 24))  # a fixed table says no size
        out = export_transformers(str(tmp_path / "dino.npz"), tmp_path / f"{architecture}_{len(options)}",
                                  image_size=(24, 24))
        theirs, info = getattr(transformers, architecture).from_pretrained(out, output_loading_info=True)
        assert not any(info[kind] for kind in ("missing_keys", "unexpected_keys", "mismatched_keys")), info
        ours = vit_jax_logits(trained.model, trained.params, x)
        with torch.no_grad():
            logits = theirs.eval()(torch.from_numpy(x.transpose(0, 3, 1, 2))).logits.numpy()
        np.testing.assert_allclose(logits, ours, atol=5e-5, rtol=1e-4)
        back = load_trained_model(out)
        assert (back.model.classifier, back.model.num_registers) == (model.classifier, model.num_registers)
        assert back.model.gated_mlp == getattr(theirs.config, "use_swiglu_ffn", False) == model.gated_mlp
        np.testing.assert_allclose(vit_jax_logits(back.model, back.params, x), ours, atol=1e-5, rtol=1e-5)
    odd = create_model("Ti/8", num_classes=5, **{**TINY, "mlp_dim": 48}, **dino)
    save_npz(live_params(odd, np.zeros((1, 24, 24, 3))), tmp_path / "odd.npz")
    with pytest.raises(ValueError, match="mlp_dim=48: transformers' DINOv2 sizes its MLP as hidden_size x mlp_ratio"):
        export_transformers(str(tmp_path / "odd.npz"), tmp_path / "refused")
    assert not (tmp_path / "refused").exists()
    # the last model (sin-cos) at a non-square size: SigLIP's config has one image side
    assert main([f"--checkpoint={tmp_path / 'dino.npz'}", f"--out={tmp_path / 'wide'}", "--image-size", "24", "32"]) == 2
    assert "image size 24x32: transformers' SigLIP has square images" in capsys.readouterr().err
    assert not (tmp_path / "wide").exists()
