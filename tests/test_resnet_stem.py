"""The hybrid's ResNet stem (vit_jax.models.resnet_stem) against NumPy/PyTorch formulas, vision_transformer's
parameter names and count, timm's R50+ViT hybrid, and through `.npz`, predict and a short training run."""

import json
import sys
from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util
from ml_collections import ConfigDict
from PIL import Image

from tests.conftest import TINY_RUN, load_config_file, perturbed
from tests.tensorboard_events import tensorboard_images
from vit_jax import predict
from vit_jax.checkpoint.npz import load_npz, read_npz, save_npz
from vit_jax.checkpoint.trained_model import architecture_of, load_trained_model
from vit_jax.config import build_model
from vit_jax.metric_writers import read_metrics
from vit_jax.models import create_model, parse_variant
from vit_jax.models.resnet_stem import ResidualUnit, stem_stride, weight_standardize
from vit_jax.models.vit import pixel_patch_size, token_grid
from vit_jax.timm_compat import import_timm
from vit_jax.train import train_and_evaluate

# A small hybrid: root conv (32 wide) + two stages of one unit each (stride 8), a 2-layer 32-wide transformer.
SMALL = dict(hidden_size=32, num_layers=2, mlp_dim=64, num_heads=4, resnet_num_layers=(1, 1), resnet_width_factor=0.5)


def random_params(model, image_hw, seed=0):
    """Every leaf random (GroupNorm scales around 1, so no unit hides behind gn3's zero init), nothing allocated
    twice: shapes from `jax.eval_shape`."""
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, 3)), train=False))
    rng = np.random.default_rng(seed)
    draw = lambda path, s: ((1.0 if path[-1].key == "scale" else 0.0) + 0.3 * rng.standard_normal(s.shape)
                            ).astype(np.float32)
    return jax.tree_util.tree_map_with_path(draw, shapes["params"])


def logits(model, params, images):
    return np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x, train=False))(params, images))


def standardized(w):
    """vision_transformer's weight standardisation of an HWIO kernel, per output channel, in float64."""
    w = np.asarray(w, np.float64)
    mean = w.mean(axis=(0, 1, 2))
    std = np.sqrt(((w - mean) ** 2).mean(axis=(0, 1, 2)))
    return (w - mean) / (std + 1e-5)


def test_weight_standardize_is_mean_zero_unit_std_per_output_channel(rng):
    w = rng.standard_normal((3, 3, 4, 5)).astype(np.float32) * 0.05 + 0.01
    out = np.asarray(weight_standardize(w, axis=[0, 1, 2], eps=1e-5))
    np.testing.assert_allclose(out, standardized(w), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(out.mean(axis=(0, 1, 2)), 0, atol=1e-6)
    np.testing.assert_allclose(out.std(axis=(0, 1, 2)), 1 / (1 + 1e-5 / w.std(axis=(0, 1, 2))), rtol=1e-5)


def torch_same_conv(x, kernel, stride):
    """TF/flax 'SAME' conv in PyTorch: pad `total // 2` before and the rest after (asymmetric when odd)."""
    import torch
    import torch.nn.functional as F

    k, size = kernel.shape[0], x.shape[-1]
    total = max((-(-size // stride) - 1) * stride + k - size, 0)
    x = F.pad(x, (total // 2, total - total // 2, total // 2, total - total // 2))
    weight = torch.from_numpy(standardized(kernel).astype(np.float32).transpose(3, 2, 0, 1))  # HWIO -> OIHW
    return F.conv2d(x, weight, stride=stride)


def torch_group_norm(x, params):
    import torch
    import torch.nn.functional as F

    return F.group_norm(x, 32, torch.from_numpy(np.asarray(params["scale"])),
                        torch.from_numpy(np.asarray(params["bias"])), eps=1e-6)  # flax's GroupNorm epsilon


def torch_residual_unit(x, p, stride):
    """vision_transformer's bottleneck unit written out in PyTorch ops (NCHW)."""
    import torch

    relu = torch.relu
    residual = x
    if "conv_proj" in p:
        residual = torch_group_norm(torch_same_conv(x, p["conv_proj"]["kernel"], stride), p["gn_proj"])
    y = relu(torch_group_norm(torch_same_conv(x, p["conv1"]["kernel"], 1), p["gn1"]))
    y = relu(torch_group_norm(torch_same_conv(y, p["conv2"]["kernel"], stride), p["gn2"]))
    y = torch_group_norm(torch_same_conv(y, p["conv3"]["kernel"], 1), p["gn3"])
    return relu(residual + y)


@pytest.mark.parametrize("channels, strides, projects", [(64, (2, 2), True), (128, (1, 1), False)])
def test_residual_unit_matches_a_pytorch_reference(rng, channels, strides, projects):
    import torch

    unit = ResidualUnit(32, strides=strides)
    x = rng.standard_normal((2, 9, 9, channels)).astype(np.float32)  # odd size: SAME pads unevenly at stride 2
    params = perturbed(unit.init(jax.random.key(0), x)["params"])
    params = jax.tree_util.tree_map_with_path(lambda path, v: v + (path[-1].key == "scale"), params)
    assert ("conv_proj" in params) == projects
    assert params["gn3"]["scale"].shape == (128,) and params["conv2"]["kernel"].shape == (3, 3, 32, 32)
    ours = np.asarray(unit.apply({"params": params}, x))
    with torch.no_grad():
        theirs = torch_residual_unit(torch.from_numpy(x).permute(0, 3, 1, 2), params, strides[0])
    assert ours.shape == (2, 5 if projects else 9, 5 if projects else 9, 128)
    np.testing.assert_allclose(ours, theirs.permute(0, 2, 3, 1).numpy(), rtol=1e-4, atol=1e-4)


def test_r50_b16_has_vision_transformers_98_659_112_parameters_under_its_names():
    model = create_model("R50+B/16", num_classes=1000)
    assert (model.resnet_num_layers, model.patch_size, pixel_patch_size(model)) == ((3, 4, 9), (1, 1), (16, 16))
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 224, 224, 3)), train=False))
    flat = {"/".join(k): v.shape for k, v in traverse_util.flatten_dict(shapes["params"]).items()}
    assert sum(int(np.prod(s)) for s in flat.values()) == 98_659_112
    assert flat["conv_root/kernel"] == (7, 7, 3, 64) and flat["gn_root/scale"] == flat["gn_root/bias"] == (64,)
    for name in ("conv1", "conv2", "conv3", "conv_proj", "gn1", "gn2", "gn3", "gn_proj"):
        assert any(k.startswith(f"block1/unit1/{name}/") for k in flat), name
    assert flat["block1/unit1/conv_proj/kernel"] == (1, 1, 64, 256)
    assert flat["block3/unit9/conv3/kernel"] == (1, 1, 256, 1024) and "block3/unit10/conv1/kernel" not in flat
    assert not any(k.startswith(("block2/unit2/conv_proj", "block4")) for k in flat)
    assert flat["embedding/kernel"] == (1, 1, 1024, 768) and flat["cls"] == (1, 1, 768)
    assert flat["Transformer/posembed_input/pos_embedding"] == (1, 1 + 14 * 14, 768)
    assert flat["head/kernel"] == (768, 1000) and "Transformer/encoderblock_11/MlpBlock_0/Dense_1/bias" in flat
    roots = {k.split("/")[0] for k in flat}
    assert roots == {"conv_root", "gn_root", "block1", "block2", "block3", "embedding", "cls", "Transformer", "head"}


def vision_transformer_std_conv():
    """timm's StdConv2dSame with vision_transformer's standardisation `(w - mean) / (std + 1e-5)`."""
    import torch.nn.functional as F
    from timm.layers import StdConv2dSame
    from timm.layers.padding import pad_same

    class StdConv(StdConv2dSame):
        def forward(self, x):
            if self.same_pad:
                x = pad_same(x, self.kernel_size, self.stride, self.dilation)
            w = self.weight - self.weight.mean(dim=(1, 2, 3), keepdim=True)
            w = w / (w.std(dim=(1, 2, 3), keepdim=True, unbiased=False) + 1e-5)
            return F.conv2d(x, w, None, self.stride, self.padding, self.dilation, self.groups)

    return StdConv


def test_timm_loads_our_hybrid_npz_and_gives_the_same_logits(tmp_path, rng):
    import torch

    import_timm()
    from timm.layers import GroupNormAct, StdConv2dSame
    from timm.models.resnetv2 import ResNetV2
    from timm.models.vision_transformer import VisionTransformer, _load_weights
    from timm.models.vision_transformer_hybrid import HybridEmbed

    model = create_model("Ti/1", num_classes=10, **SMALL, gelu_approximate=False)
    params = random_params(model, (32, 32))
    save_npz(params, tmp_path / "hybrid.npz")
    images = rng.standard_normal((2, 32, 32, 3)).astype(np.float32)
    ours = logits(model, params, images)

    def timm_logits(conv_layer, group_norm_eps):
        # timm's `_resnetv2` (vit_base_r50_s16_224's backbone) with our stages and width.
        backbone = ResNetV2(layers=(1, 1), width_factor=0.5, num_classes=0, global_pool="", preact=False,
                            stem_type="same", conv_layer=conv_layer,
                            norm_layer=partial(GroupNormAct, num_groups=32, eps=group_norm_eps))
        reference = VisionTransformer(img_size=32, patch_size=1, embed_layer=partial(HybridEmbed, backbone=backbone),
                                      embed_dim=32, depth=2, num_heads=4, mlp_ratio=2, num_classes=10, fc_norm=False)
        _load_weights(reference, str(tmp_path / "hybrid.npz"))
        with torch.no_grad():
            return reference.eval()(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()

    # timm as it builds its R50 hybrids: weights standardised as (w - mean) / sqrt(var + 1e-8) and GroupNorm eps
    # 1e-5, where vision_transformer (and we) divide by (std + 1e-5) and flax's GroupNorm uses eps 1e-6. Measured:
    # 3.2e-5 max difference on logits of size ~4 (weights of std 0.3); the difference grows as the kernels' std
    # shrinks (relative to eps), so real checkpoints differ more than this.
    stock = timm_logits(partial(StdConv2dSame, eps=1e-8), 1e-5)
    np.testing.assert_allclose(ours, stock, rtol=1e-4, atol=1e-4)
    # The same model with vision_transformer's standardisation and flax's eps: float32 round-off (4.7e-6 measured).
    matched = timm_logits(vision_transformer_std_conv(), 1e-6)
    np.testing.assert_allclose(ours, matched, rtol=2e-5, atol=2e-5)
    assert np.abs(ours - matched).max() < np.abs(ours - stock).max()


def test_hybrid_npz_round_trip_keeps_every_tensor_and_name(tmp_path):
    model = create_model("Ti/1", num_classes=5, **SMALL)
    params = random_params(model, (16, 16))
    save_npz(params, tmp_path / "hybrid.npz")
    keys = set(read_npz(tmp_path / "hybrid.npz"))
    assert {"conv_root/kernel", "gn_root/scale", "block1/unit1/conv_proj/kernel", "block2/unit1/gn3/bias",
            "Transformer/encoderblock_0/MlpBlock_3/Dense_0/kernel"} <= keys
    loaded = load_npz(tmp_path / "hybrid.npz")
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_predict_reads_a_hybrid_npz_architecture_off_its_shapes(tmp_path, rng, capsys):
    model = create_model("Ti/1", num_classes=3, **{**SMALL, "resnet_num_layers": (1,)})
    params = random_params(model, (16, 16))
    save_npz(params, tmp_path / "hybrid.npz")
    assert architecture_of(params) == dict(
        num_classes=3, patch_size=(1, 1), hidden_size=32, num_layers=2, mlp_dim=64, num_heads=4, classifier="token",
        representation_size=None, final_norm=True, fc_norm=False, resnet_num_layers=(1,), resnet_width_factor=0.5)
    trained = load_trained_model(npz=tmp_path / "hybrid.npz")
    assert (trained.image_size, trained.channels, trained.grid) == ((16, 16), 3, (4, 4))  # 4x4 table x stride 4
    image = tmp_path / "image.png"
    Image.fromarray(rng.integers(0, 256, (16, 16, 3), dtype=np.uint8)).save(image)
    assert predict.main([f"--npz={tmp_path / 'hybrid.npz'}", "--json", "--top-k=3", str(image)]) == 0
    printed = json.loads(capsys.readouterr().out)["top_k"]
    pixels = predict.preprocessed(trained, image)[None]
    expected = np.asarray(jax.nn.softmax(logits(model, params, pixels)[0]))
    assert [name for name, _ in printed] == [str(c) for c in np.argsort(-expected)]
    np.testing.assert_allclose([p for _, p in printed], np.sort(expected)[::-1], atol=5e-5)
    with pytest.raises(SystemExit):
        predict.main([f"--npz={tmp_path / 'hybrid.npz'}", "--variant=R50+Ti/16", str(image)])
    assert "resnet_num_layers (3, 4, 9) (file: (1,))" in capsys.readouterr().err


def test_variant_names_give_vision_transformers_hybrids():
    assert parse_variant("R50+B/16") == dict(hidden_size=768, num_layers=12, mlp_dim=3072, num_heads=12,
                                             patch_size=(1, 1), resnet_num_layers=(3, 4, 9))
    assert parse_variant("R26+B/32")["resnet_num_layers"] == (2, 2, 2, 2)
    assert (parse_variant("R50+L/32")["resnet_num_layers"], parse_variant("R50+L/32")["patch_size"]) == (
        (3, 4, 6, 3), (1, 1))  # vision_transformer's R50+ViT-L_32: the real ResNet-50's stages, stride 32
    assert parse_variant("R50+Ti/32x16")["patch_size"] == (2, 1)
    assert "resnet_num_layers" not in parse_variant("B/16")
    assert [stem_stride(n) for n in (None, (), (3,), (3, 4, 9), (2, 2, 2, 2))] == [1, 4, 4, 16, 32]
    assert token_grid(create_model("R50+B/16", num_classes=1), (224, 224)) == (14, 14)
    assert token_grid(create_model("R50+B/16", num_classes=1), (200, 232)) == (13, 15)  # SAME pads: ceil(side/16)


@pytest.mark.parametrize("options, message", [
    (dict(resnet_num_layers=(3, 0, 9)), r"resnet_num_layers must be .* positive ints.*; got \(3, 0, 9\)"),
    (dict(resnet_num_layers=3), r"resnet_num_layers must be .*; got 3$"),
    (dict(resnet_num_layers=(3, "4")), r"resnet_num_layers must be .*; got \(3, '4'\)"),
    (dict(resnet_num_layers=(3,), resnet_width_factor=0.75), r"resnet_width_factor 0.75 gives .* = 48 channels"),
    (dict(resnet_num_layers=(3,), resnet_width_factor=-1.0), r"resnet_width_factor must be a positive .*got -1.0"),
    (dict(resnet_width_factor=2.0), r"resnet_width_factor 2.0 has no effect without a stem"),
    (dict(resnet_numerics="timm"), r"resnet_numerics 'timm' has no effect without a stem"),
    (dict(resnet_num_layers=(), resnet_numerics="tf"), r"resnet_numerics must be one of .*; got 'tf'"),
])
def test_bad_stem_options_name_the_value(options, message):
    with pytest.raises(ValueError, match=message):
        create_model("Ti/1", num_classes=10, **options)


@pytest.mark.parametrize("variant, message", [
    ("R50+B/8", r"variant 'R50\+B/8': the R50 stem downsamples by 16 .* the patch 8x8 .* must be a multiple"),
    ("R26+B/16", r"variant 'R26\+B/16': the R26 stem downsamples by 32"),
    ("R18+B/16", r"unknown ResNet stem 'R18' in variant 'R18\+B/16'; valid stems: \['R26', 'R50'\]"),
    ("R50+X/16", r"unknown model size 'X' in variant 'R50\+X/16'"),
    ("R50+B16", r"variant must look like .*'R50\+B/16'.*; got 'R50\+B16'"),
])
def test_bad_hybrid_variants_name_the_variant(variant, message):
    with pytest.raises(ValueError, match=message):
        create_model(variant, num_classes=10)


def test_a_patch_that_does_not_divide_the_feature_map_names_both_sizes():
    model = create_model("Ti/2", num_classes=10, hidden_size=48, resnet_num_layers=(1,))
    with pytest.raises(ValueError, match=r"turns 20x20 images into 5x5 feature maps \(stride 4\).* 5x5 .* 2x2"):
        token_grid(model, (20, 20))


def test_the_stem_is_settable_from_the_command_line(monkeypatch):
    from absl import flags
    from ml_collections import config_flags

    argv = ["main", "--config=configs/vit.py:variant=B/16", "--config.model.resnet_num_layers=(3,4,9)",
            "--config.model.resnet_width_factor=1.5", "--config.model.patch_size=(1,1)"]
    monkeypatch.setattr(sys, "argv", argv)  # ml_collections reads the overrides off sys.argv
    flag_values = flags.FlagValues()
    config = config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
    flag_values(argv)
    model = build_model(config.value.model, num_classes=10)
    assert (model.resnet_num_layers, model.resnet_width_factor, model.patch_size) == ((3, 4, 9), 1.5, (1, 1))
    assert build_model(load_config_file("hybrid", "model.resnet_num_layers=()").model, 10).resnet_num_layers == ()
    saved = ConfigDict(json.loads(load_config_file("hybrid").model.to_json()))  # as a workdir's config.json
    assert build_model(saved, 10).resnet_num_layers == (1,)  # a list in JSON, a (hashable) tuple again


@pytest.mark.slow
def test_hybrid_config_trains_on_digits(tmp_path, digits_data_dir):
    config = load_config_file("hybrid", ",".join([TINY_RUN, "num_steps=30,eval_every=30,checkpoint_every=30",
                                                  "log_every=10,optimizer.warmup_steps=5,log_pictures=last"]))
    config.data_dir = digits_data_dir
    results = train_and_evaluate(config, tmp_path)
    losses = [r["train/loss"] for r in read_metrics(tmp_path) if "train/loss" in r]
    assert len(losses) == 3 and losses[-1] < 0.9 * losses[0]  # measured: 2.26 -> 1.80
    assert results["eval/accuracy"] > 0.3 and results["test/accuracy"] > 0.3  # chance: 0.1; measured 0.54, 0.60
    pictures = tensorboard_images(tmp_path)
    assert "pictures/attention_maps" in pictures and "pictures/patch_filters" in pictures  # a 4x4 grid, drawn
