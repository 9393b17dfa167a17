import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from tests.conftest import TINY
from vit_jax.checkpoint.npz import linen_names, load_npz, read_npz, save_npz
from vit_jax.models import create_model, stack_encoder_blocks
from vit_jax.timm_compat import import_timm


def random_params(model, image_hw=(16, 16), seed=0):
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, 3)), train=False))
    rng = np.random.default_rng(seed)
    return jax.tree.map(lambda s: (0.3 * rng.standard_normal(s.shape)).astype(np.float32), shapes["params"])


def logits(model, params, images):
    return np.asarray(model.apply({"params": params}, images, train=False))


def test_b16_written_and_read_back_gives_the_same_logits(tmp_path, rng):
    model = create_model("B/16", num_classes=1000)
    params = random_params(model, (224, 224))
    save_npz(params, tmp_path / "b16.npz")
    loaded = load_npz(tmp_path / "b16.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded, params)
    images = rng.standard_normal((1, 224, 224, 3)).astype(np.float32)
    np.testing.assert_array_equal(logits(model, loaded, images), logits(model, params, images))


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


@pytest.mark.parametrize("scan", [False, True])
def test_big_vision_layout_loads(tmp_path, rng, scan):
    model = create_model("Ti/8", num_classes=10, **TINY)
    params = random_params(model)
    params["Transformer"]["posembed_input"]["pos_embedding"][:, 0] = 0.0  # big_vision adds no posemb to the cls
    big_vision = {k: v for k, v in params.items()}
    table = params["Transformer"]["posembed_input"]["pos_embedding"]
    big_vision["pos_embedding"] = table[:, 1:]
    big_vision["Transformer"] = {k: v for k, v in params["Transformer"].items() if k != "posembed_input"}
    if scan:
        big_vision = stack_encoder_blocks(big_vision)
    flat = {"params/" + "/".join(k): v for k, v in traverse_util.flatten_dict(big_vision).items()}
    np.savez(tmp_path / "big_vision.npz", **flat)
    loaded = load_npz(tmp_path / "big_vision.npz")
    jax.tree.map(np.testing.assert_array_equal, loaded, params)


def test_pickled_arrays_are_refused(tmp_path):
    np.savez(tmp_path / "evil.npz", head=np.array([{"not": "an array"}], dtype=object))
    with pytest.raises(ValueError, match="object arrays are refused"):
        load_npz(tmp_path / "evil.npz")


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
