import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests import big_vision_vit
from tests.conftest import TINY, load_config_file
from tests.timm_reference import vit_jax_logits
from vit_jax.checkpoint.npz import NpzError, linen_names, load_npz, read_npz, save_npz
from vit_jax.checkpoint.trained_model import load_trained_model
from vit_jax.config_validation import ConfigError, check_init
from vit_jax.models import create_model
from vit_jax.timm_compat import import_timm
from vit_jax.train import train_and_evaluate


def random_params(model, image_hw=(16, 16), seed=0):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, 3)), train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), shapes["params"])


def logits(model, params, images):
    return vit_jax_logits(model, params, images)


def test_a_12_layer_vit_written_and_read_back_is_the_same_tree_bit_for_bit(tmp_path):
    """Every one of Ti/16's 5.7M parameters (B/16's names: the same 12 blocks, narrower), under its name and shape
    (equal parameters give equal logits: the logits of files are compared against the references' own code in the
    tests below)."""
    model = create_model("Ti/16", num_classes=1000)
    params = random_params(model, (224, 224))
    save_npz(params, tmp_path / "ti16.npz")
    loaded = load_npz(tmp_path / "ti16.npz")
    assert jax.tree.structure(loaded) == jax.tree.structure(params)
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_a_failed_write_leaves_the_earlier_file_as_it_was(tmp_path, monkeypatch):
    earlier = {"head": {"kernel": np.ones((3, 2), np.float32), "bias": np.zeros(2, np.float32)}}
    save_npz(earlier, tmp_path / "head.npz")
    written = (tmp_path / "head.npz").read_bytes()

    def disk_full(file, **arrays):
        file.write(b"PK\x03\x04 half a file")
        raise OSError("No space left on device")

    monkeypatch.setattr(np, "savez", disk_full)
    with pytest.raises(OSError, match="No space left"):
        save_npz(jax.tree.map(lambda a: a + 1, earlier), tmp_path / "head.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["head.npz"] and (tmp_path / "head.npz").read_bytes() == written
    monkeypatch.undo()
    jax.tree.map(np.testing.assert_array_equal, load_npz(tmp_path / "head.npz"), earlier)


def test_written_files_have_the_released_layout_and_vision_transformers_loader_reads_them(tmp_path):
    from flax.training.checkpoints import convert_pre_linen  # what vision_transformer's checkpoint.load uses

    model = create_model("Ti/8", num_classes=10, **TINY, representation_size=16)
    params = random_params(model)
    save_npz(params, tmp_path / "model.npz")
    keys = set(read_npz(tmp_path / "model.npz"))
    assert "Transformer/encoderblock_1/MultiHeadDotProductAttention_1/query/kernel" in keys
    assert "Transformer/encoderblock_0/LayerNorm_2/scale" in keys and "Transformer/encoderblock_0/MlpBlock_3/Dense_1/bias" in keys
    assert not any("MultiHeadDotProductAttention_0" in k or "MlpBlock_0" in k for k in keys)
    assert read_npz(tmp_path / "model.npz")["Transformer/posembed_input/pos_embedding"].shape == (1, 1 + 4, 32)
    # vision_transformer's loader: np.load(allow_pickle=False), unflatten the '/' keys, convert_pre_linen.
    with np.load(tmp_path / "model.npz", allow_pickle=False) as data:
        tree = traverse_util.unflatten_dict({tuple(k.split("/")): data[k] for k in data.files})
    jax.tree.map(np.testing.assert_array_equal, dict(convert_pre_linen(tree)), params)


def test_a_synthetic_pre_linen_file_loads_into_the_current_tree(tmp_path, rng):
    model = create_model("Ti/8", num_classes=10, **TINY)
    params = random_params(model)
    pre_linen = {"LayerNorm_0": "LayerNorm_0", "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
                 "LayerNorm_1": "LayerNorm_2", "MlpBlock_0": "MlpBlock_3"}
    flat = {}
    for path, value in traverse_util.flatten_dict(params).items():
        if path[1:2] and path[1].startswith("encoderblock_"):
            path = (*path[:2], pre_linen[path[2]], *path[3:])
        flat["/".join(path)] = value
    np.savez(tmp_path / "released.npz", **flat)
    loaded = load_npz(tmp_path / "released.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    images = rng.standard_normal((2, 16, 16, 3)).astype(np.float32)
    np.testing.assert_array_equal(logits(model, loaded, images), logits(model, params, images))


def big_vision_model(rng, **options):
    """big_vision's own ViT (tests/big_vision_vit.py, its code verbatim), tiny, every parameter perturbed (its head
    starts at zero): the model, its parameters, and its logits for `images`."""
    model = big_vision_vit._Model(num_classes=5, patch_size=(4, 4), width=32, depth=2, mlp_dim=48, num_heads=2,
                                  **options)
    images = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    params = model.init(jax.random.key(0), images)["params"]
    params = jax.tree.map(lambda p: np.asarray(p) + 0.1 * rng.standard_normal(p.shape).astype(np.float32), params)
    return params, images, np.asarray(model.apply({"params": params}, images)[0])


def big_vision_old_layout(params: dict) -> dict:
    """The layout big_vision wrote before 2022, which its loader (`fix_old_checkpoints`) still reads: the table in
    `Transformer`, and with a class row (the class token prepended before the table is added)."""
    old = jax.tree.map(np.copy, params)
    table = old.pop("pos_embedding")
    class_row = np.linspace(-1, 1, table.shape[-1], dtype=np.float32)[None, None]
    old["cls"] = old["cls"] - class_row  # the loader folds the row into the token: the same model
    old["Transformer"]["pos_embedding"] = np.concatenate([class_row, table], axis=1)
    return old


@pytest.mark.parametrize("options, layout", [
    (dict(pool_type="tok", rep_size=True), "params/"),
    (dict(pool_type="gap", posemb="sincos2d"), "opt/target/"),  # flax's old optimizer state; no table
    (dict(pool_type="map", scan=True), "two towers"),  # SigLIP's: params/img/ beside a text tower, t and b
    (dict(pool_type="tok"), "before 2022"),
])
def test_big_vision_checkpoints_give_big_visions_logits(tmp_path, rng, options, layout):
    params, images, expected = big_vision_model(rng, **options)
    if layout == "before 2022":
        old, layout = big_vision_old_layout(params), ""
        same = lambda a, b: np.testing.assert_allclose(a, b, rtol=0, atol=1e-6)  # cls - row + row: one rounding
        jax.tree.map(same, big_vision_vit.fix_old_checkpoints(jax.tree.map(np.copy, old)), params)  # (adds in place)
        params = old
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    if layout == "two towers":
        text_tower = {"txt/Embed_0/embedding": np.ones((10, 32)), "txt/head/kernel": np.ones((32, 5))}
        flat, layout = {"img/" + k: v for k, v in flat.items()} | text_tower | {"t": np.ones(1), "b": np.ones(1)}, \
            "params/"
    np.savez(tmp_path / "bv.npz", **{layout + k: v for k, v in flat.items()})
    trained = load_trained_model(npz=tmp_path / "bv.npz", image_size=16)
    got = vit_jax_logits(trained.model, trained.params, images)
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_at_another_resolution_the_table_is_resized_as_big_visions_resample_posemb(tmp_path, rng):
    """big_vision (and vision_transformer) run a checkpoint at another resolution by resizing its table at load
    (`resample_posemb`: `scipy.ndimage.zoom(order=1)`); `predict --image-size` on the `.npz` gives that model's
    logits, its table resized in the forward pass by the same rule."""
    from scipy import ndimage

    params, _, _ = big_vision_model(rng, pool_type="tok")
    np.savez(tmp_path / "bv.npz", **{"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()})
    trained = load_trained_model(npz=tmp_path / "bv.npz", image_size=24)
    table = np.asarray(params["pos_embedding"]).reshape(4, 4, -1)
    resampled = ndimage.zoom(table, (6 / 4, 6 / 4, 1), order=1).reshape(1, 36, -1)  # big_vision's resample_posemb
    model = big_vision_vit._Model(num_classes=5, patch_size=(4, 4), width=32, depth=2, mlp_dim=48, num_heads=2,
                                  pool_type="tok")
    images = jnp.asarray(rng.uniform(-1, 1, (2, 24, 24, 3)), jnp.float32)
    expected = np.asarray(model.apply({"params": {**params, "pos_embedding": resampled}}, images)[0])
    np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, images), expected, rtol=0,
                               atol=1e-5 * np.abs(expected).max())


@pytest.mark.parametrize("pool_type", ["map", "gap"])
def test_big_visions_naflex_towers_give_its_outputs_one_image_per_call(tmp_path, rng, pool_type):
    """big_vision's NaFlex ViT (SigLIP 2's NaFlex towers; tests/big_vision_naflex_vit.py, its code verbatim): a
    Dense patch embedding and an (n, n, D) table resized to each image's grid. A padded batch of images of different
    grids gives, image by image, what vit_jax's model gives for each alone; the default view is the table's grid."""
    from tests import big_vision_naflex_vit

    model = big_vision_naflex_vit._Model(num_classes=5, width=32, depth=2, mlp_dim=48, num_heads=2,
                                         pool_type=pool_type, posemb="learn_2d(8)", nposemb=4)
    grids, length = [(3, 5), (6, 2), (4, 4)], 18
    images = [rng.uniform(-1, 1, (4 * h, 4 * w, 3)).astype(np.float32) for h, w in grids]
    patches, ptype, yabs, xabs = (np.zeros((3, length, 48), np.float32), np.zeros((3, length), np.int32),
                                  np.zeros((3, length), np.int32), np.zeros((3, length), np.int32))
    for i, ((h, w), image) in enumerate(zip(grids, images)):
        patches[i, :h * w] = image.reshape(h, 4, w, 4, 3).transpose(0, 2, 1, 3, 4).reshape(h * w, 48)  # extract_patches'
        ptype[i, :h * w] = 1
        yabs[i, :h * w], xabs[i, :h * w] = np.divmod(np.arange(h * w), w)
    inputs = tuple(jnp.asarray(a) for a in (patches, ptype, yabs, xabs))
    params = jax.eval_shape(lambda: model.init(jax.random.key(0), inputs))["params"]
    params = jax.tree.map(lambda p: 0.3 * rng.standard_normal(p.shape).astype(np.float32), params)
    expected = np.asarray(jax.jit(lambda p, x: model.apply({"params": p}, x)[0])(params, inputs))
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    np.savez(tmp_path / "siglip2.npz", **{"params/img/" + k: v for k, v in flat.items()}, **{"params/t": np.ones(1)})
    trained = load_trained_model(npz=tmp_path / "siglip2.npz")
    assert trained.image_size == (16, 16) and trained.model.posemb_grid == (4, 4)
    config = load_config_file("finetune", f"init={tmp_path / 'siglip2.npz'}")
    assert (config.init.posemb_method, config.init.posemb_antialias) == ("bilinear", True)  # its own resizing
    for i, image in enumerate(images):
        got = vit_jax_logits(trained.model, trained.params, image[None])[0]
        np.testing.assert_allclose(got, expected[i], rtol=0, atol=1e-5 * np.abs(expected[i]).max())


def test_big_visions_loader_reads_our_files_and_its_model_gives_our_logits(tmp_path, rng):
    """What `save_npz` writes (vision_transformer's released layout) read as big_vision reads a file (`np.load`,
    '/'-paths unflattened, `fix_old_checkpoints`) into big_vision's own model."""
    model = create_model("Ti/4", num_classes=5, hidden_size=32, num_layers=2, mlp_dim=48, num_heads=2)
    params = random_params(model)
    save_npz(params, tmp_path / "ours.npz")
    with np.load(tmp_path / "ours.npz", allow_pickle=False) as data:
        tree = traverse_util.unflatten_dict({tuple(k.split("/")): data[k] for k in data.files})
    theirs = big_vision_vit._Model(num_classes=5, patch_size=(4, 4), width=32, depth=2, mlp_dim=48, num_heads=2,
                                   pool_type="tok")
    images = jnp.asarray(rng.uniform(-1, 1, (2, 16, 16, 3)), jnp.float32)
    expected = logits(model, params, images)
    got = np.asarray(theirs.apply({"params": big_vision_vit.fix_old_checkpoints(tree)}, images)[0])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-5 * np.abs(expected).max())


def test_one_model_of_several_is_named_as_big_vision_names_it(tmp_path, rng):
    """`FILE.npz:KEY` (big_vision's `load_params`); a file with two ViTs needs it, a wrong KEY is one line listing
    the ViTs in the file, and both fail in the config's checks, before anything compiles."""
    params, images, expected = big_vision_model(rng, pool_type="map")
    flat = {"/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
    np.savez(tmp_path / "two.npz", **{f"params/{tower}/{k}": v for tower in ("img", "student") for k, v in flat.items()})
    trained = load_trained_model(npz=f"{tmp_path}/two.npz:student", image_size=16)
    np.testing.assert_allclose(vit_jax_logits(trained.model, trained.params, images),
                               expected, rtol=0, atol=1e-5 * np.abs(expected).max())
    for spec, message in [("two.npz", r"holds several models \(img, student\); name the one to read as .*two.npz:KEY"),
                          ("two.npz:txt", r"no ViT at 'txt' .*ViTs in the file: \['img', 'student'\]")]:
        with pytest.raises(NpzError, match=message):
            load_npz(tmp_path / spec)
        config = load_config_file("finetune", f"init={tmp_path / spec}")
        with pytest.raises(ConfigError, match="config.init.path = .*" + message):
            check_init(config)
    check_init(load_config_file("finetune", f"init={tmp_path}/two.npz:img"))


def test_pickled_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", head=np.array([{"not": "an array"}], dtype=object))
    with pytest.raises(ValueError, match="object arrays are refused"):
        load_npz(tmp_path / "evil.npz")
    with pytest.raises(ValueError, match="object arrays are refused"):  # from its header alone, as configs check it
        load_npz(tmp_path / "evil.npz", shapes_only=True)


def test_linen_names_renumber_per_type_in_call_order():
    tree = {"LayerNorm_0": 0, "MultiHeadDotProductAttention_1": 1, "LayerNorm_2": 2, "MlpBlock_3": {"Dense_0": 3},
            "encoderblock_10": 4, "encoderblock_2": 5, "cls": 6}
    assert linen_names(tree) == {"LayerNorm_0": 0, "LayerNorm_1": 2, "MlpBlock_0": {"Dense_0": 3},
                                 "MultiHeadDotProductAttention_0": 1, "encoderblock_0": 5, "encoderblock_1": 4,
                                 "cls": 6}
    assert linen_names(linen_names(tree)) == linen_names(tree)


@pytest.mark.parametrize("classifier", ["token", "map"])
def test_timm_loads_our_files_and_gives_the_same_logits(tmp_path, rng, classifier):
    import torch

    timm = import_timm()
    from timm.models.vision_transformer import VisionTransformer, _load_weights

    model = create_model("Ti/8", num_classes=10, **TINY, classifier=classifier, gelu_approximate=False)
    params = random_params(model, (32, 32))
    save_npz(params, tmp_path / "model.npz")
    reference = VisionTransformer(img_size=32, patch_size=8, embed_dim=32, depth=2, num_heads=4, mlp_ratio=2,
                                  num_classes=10, global_pool=classifier, class_token=classifier == "token",
                                  fc_norm=False)
    _load_weights(reference, str(tmp_path / "model.npz"))
    images = rng.standard_normal((3, 32, 32, 3)).astype(np.float32)
    with torch.no_grad():
        theirs = reference.eval()(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    ours = logits(model, params, images)
    np.testing.assert_allclose(ours, theirs, rtol=1e-4, atol=1e-4)
    tanh_gelu = logits(model.clone(gelu_approximate=True), params, images)  # vision_transformer's default
    assert 1e-5 < np.abs(tanh_gelu - theirs).max() < 1e-2 * np.abs(theirs).max()
    assert timm.__version__


def test_fine_tuning_reads_an_npz_architecture_off_its_shapes(tmp_path, rng, digits_data_dir):
    """`init=FILE.npz[:KEY]` without `variant`: the model (sizes, pooling, no table for big_vision's sincos2d) and
    the resolution its square table was trained at come from the file's `.npy` headers; then it fine-tunes."""
    for options, size in [(dict(pool_type="map"), (16, 16)), (dict(pool_type="gap", posemb="sincos2d"), None)]:
        params, _, _ = big_vision_model(rng, **options)
        flat = {"params/img/" + "/".join(k): v for k, v in traverse_util.flatten_dict(params).items()}
        np.savez(tmp_path / "siglip.npz", **flat, **{"params/t": np.ones(1)})
        config = load_config_file("finetune", f"init={tmp_path}/siglip.npz:img,steps=0,dataset=sklearn_digits")
        model = config.model
        assert (model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim, tuple(model.patch_size)) == \
            (32, 2, 2, 48, (4, 4))
        assert (model.classifier, model.posemb) == (("map", "learn") if size else ("gap", "sincos2d"))
        assert tuple(config.image_size) == (size or (224, 224)) and config.pp.channels == 3
    with_pre_logits = create_model("Ti/4", num_classes=7, **TINY, representation_size=16)  # an ImageNet-21k file's
    save_npz(random_params(with_pre_logits, (8, 12)), tmp_path / "i21k.npz")
    i21k = load_config_file("finetune", f"init={tmp_path}/i21k.npz").model
    assert (i21k.hidden_size, i21k.num_heads, i21k.classifier, i21k.representation_size) == (32, 4, "token", None)
    config.image_size, config.data_dir, config.log_pictures = (16, 16), digits_data_dir, "none"
    results = train_and_evaluate(config, tmp_path / "run")
    assert 0 <= results["test/accuracy"] <= 1  # a fresh head over the loaded sin-cos model, evaluated


@pytest.mark.parametrize("options", [
    dict(rms_norm=True, proj_bias=False, gated_mlp=True, classifier="gap"),
    dict(layer_scale=1e-5, num_registers=2, pre_norm=True, qk_norm=True, mlp_norm=True, attention_norm=True,
         qkv_bias=False, embedding_norm=True, patch_bias=False, qkv_dim=64, classifier="token_and_gap"),
    dict(layer_scale=1e-5, layer_scale_attention_only=True, classifier="token_distilled"),
    dict(relative_position_bias=True, posemb="none", classifier="token"),
    dict(classifier="token_map", map_num_heads=4, map_mlp_dim=24),
    dict(num_kv_heads=(2, 1)),
])
def test_a_vit_jax_export_with_options_of_its_own_reads_back_with_them(options, tmp_path):
    """The options that leave parameters of their own are read off an exported file's names and shapes."""
    from vit_jax.checkpoint.trained_model import architecture_of
    from vit_jax.models.vit import VisionTransformer

    model = VisionTransformer(num_classes=3, patch_size=(4, 4), hidden_size=32, num_layers=2, mlp_dim=48,
                              num_heads=2, posemb_grid=None if options.get("posemb") == "none" else (4, 4), **options)
    x = np.random.default_rng(0).standard_normal((2, 16, 16, 3)).astype(np.float32)
    params = jax.tree.map(lambda a: a + 0.1 * np.random.default_rng(1).standard_normal(a.shape).astype(np.float32),
                          model.init(jax.random.key(0), x, train=False)["params"])
    save_npz(params, tmp_path / "model.npz")
    assert {k: v for k, v in architecture_of(params).items() if k in options} == {
        k: v for k, v in options.items() if k != "posemb"}
    trained = load_trained_model(npz=tmp_path / "model.npz")  # the same model, the same numbers
    # at another grid its table is resized by the .npz format's rule (vision_transformer's scipy zoom)
    assert trained.model == model.clone(posemb_resize="bilinear_align_corners", posemb_antialias=False)
    assert trained.image_size == (16, 16)
    jax.tree.map(np.testing.assert_array_equal, trained.params, params)
