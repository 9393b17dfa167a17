"""vit-pytorch's constructor: the arguments map onto the vit_jax model they describe."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from tests.conftest import live_params
from vit_jax.models.vit_pytorch_style import ViT


def count(params) -> int:
    return sum(np.size(leaf) for leaf in jax.tree.leaves(params))


def shapes(model, image_hw, channels=3):
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, channels)), train=False))


def test_parameter_count_follows_the_vit_pytorch_formula_with_a_separate_attention_width():
    """vit-pytorch's ViT: norms around the patch projection, no q/k/v bias, an attention width heads x dim_head."""
    dim, depth, heads, dim_head, mlp, classes, patch, size = 96, 3, 4, 16, 200, 7, 8, (32, 48)
    model = ViT(image_size=size, patch_size=patch, num_classes=classes, dim=dim, depth=depth, heads=heads,
                mlp_dim=mlp, dim_head=dim_head)
    params = shapes(model, size)["params"]
    inner, tokens, patch_dim = heads * dim_head, (32 // 8) * (48 // 8) + 1, patch * patch * 3
    per_block = (4 * dim) + (3 * dim * inner + inner * dim + dim) + (dim * mlp + mlp + mlp * dim + dim)
    embedding = 2 * patch_dim + (patch_dim * dim + dim) + 2 * dim
    expected = embedding + dim + tokens * dim + depth * per_block + 2 * dim + (dim * classes + classes)
    assert count(params) == expected
    attention = params["Transformer"]["encoderblock_0"]["MultiHeadDotProductAttention_0"]
    assert attention["query"]["kernel"].shape == (dim, heads, dim_head)  # inner width heads x dim_head != dim
    assert attention["out"]["kernel"].shape == (heads, dim_head, dim)


def test_arguments_become_the_options_they_name():
    model = ViT(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048,
                pool="mean", dropout=0.1, emb_dropout=0.2)
    assert (model.patch_size, model.hidden_size, model.num_layers, model.num_heads, model.mlp_dim) == (
        (32, 32), 1024, 6, 16, 2048)
    assert model.classifier == "gap" and model.qkv_dim == 16 * 64 and model.posemb_grid == (8, 8)
    assert (model.dropout_rate, model.attention_dropout_rate, model.embedding_dropout_rate) == (0.1, 0.1, 0.2)
    assert model.gelu_approximate is False  # PyTorch's nn.GELU() is exact


def test_embedding_dropout_acts_on_the_tokens_alone(rng):
    """emb_dropout=0.5 with dropout=0: training outputs change with the dropout key; evaluation ignores both."""
    model = ViT(image_size=8, patch_size=4, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32, dim_head=8,
                channels=1, emb_dropout=0.5)
    images = rng.standard_normal((2, 8, 8, 1)).astype(np.float32)
    params = live_params(model, images)
    train = lambda seed: model.apply({"params": params}, images, train=True, rngs={"dropout": jax.random.key(seed)})
    assert not np.allclose(train(0), train(1))
    no_dropout = model.clone(embedding_dropout_rate=0.0)
    np.testing.assert_array_equal(model.apply({"params": params}, images, train=False),
                                  no_dropout.apply({"params": params}, images, train=False))


@pytest.mark.parametrize("arguments,message", [
    (dict(image_size=30), "Image dimensions must be divisible by the patch size: image_size 30x30, patch_size 8x8"),
    (dict(pool="max"), "pool must be 'cls'"),
    (dict(image_size=(32, -1)), "image_size must be a positive int or a pair"),
    (dict(dim_head=0), "dim_head must be a positive int"),
    (dict(heads=1, dim_head=16), "heads=1 with dim_head=dim=16: vit-pytorch then drops the attention's output"),
])
def test_bad_arguments_are_named(arguments, message):
    base = dict(image_size=32, patch_size=8, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32)
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        ViT(**{**base, **arguments})


# vit-pytorch itself, the reference: its README's example, and a small model whose state dict loads into ours.
EXAMPLE = dict(image_size=256, patch_size=32, num_classes=1000, dim=1024, depth=6, heads=16, mlp_dim=2048,
               dropout=0.1, emb_dropout=0.1)
SMALL = dict(image_size=(16, 24), patch_size=8, num_classes=5, dim=32, depth=2, heads=4, dim_head=16, mlp_dim=48)


def vit_pytorch():
    from vit_jax.timm_compat import import_timm

    import_timm()  # torchvision's import fix on CPU-only torch (vit-pytorch imports torchvision)
    import vit_pytorch.vit

    return vit_pytorch.vit


def test_readme_example_has_vit_pytorchs_parameter_count():
    """The issue's figure, 54,630,376, and vit-pytorch's own count of the same model."""
    import torch

    with torch.device("meta"):
        reference = vit_pytorch().ViT(**EXAMPLE)
    expected = sum(p.numel() for p in reference.parameters())
    assert expected == 54_630_376
    assert count(shapes(ViT(**EXAMPLE), (256, 256))["params"]) == expected


@pytest.mark.parametrize("pool,file", [("cls", "model.safetensors"), ("mean", "model.pt")])
def test_vit_pytorch_state_dict_gives_its_logits(tmp_path, pool, file):
    """Random non-trivial weights (norm affine parameters, biases, class token) saved by PyTorch: the same logits
    from vit_jax on channels-last images, through safetensors and through torch.load(weights_only=True)."""
    import torch
    from safetensors.torch import save_file

    from vit_jax.checkpoint.vit_pytorch import load_vit_pytorch

    torch.manual_seed(0)
    reference = vit_pytorch().ViT(**SMALL, pool=pool, channels=3).eval()
    with torch.no_grad():
        for parameter in reference.parameters():
            parameter.add_(0.1 * torch.randn_like(parameter))
    state = {k: v.contiguous() for k, v in reference.state_dict().items()}
    path = tmp_path / file
    save_file(state, path) if file.endswith(".safetensors") else torch.save(state, path)

    model = ViT(**SMALL, pool=pool)
    params = load_vit_pytorch(model, path)
    images = np.random.default_rng(0).standard_normal((2, 16, 24, 3)).astype(np.float32)
    with torch.no_grad():
        expected = reference(torch.from_numpy(images).permute(0, 3, 1, 2)).numpy()
    got = model.apply({"params": params}, images, train=False)
    np.testing.assert_allclose(got, expected, atol=2e-5, rtol=1e-4)


def test_state_dict_of_another_architecture_is_named():
    from vit_jax.checkpoint.vit_pytorch import load_vit_pytorch

    reference = vit_pytorch().ViT(**{**SMALL, "mlp_dim": 40})
    with pytest.raises(ValueError, match=r"does not fit this model at Transformer/encoderblock_0/MlpBlock_0/Dense_0/bias: the state dict "
                                         r"gives \(40,\), the model has \(48,\)"):
        load_vit_pytorch(ViT(**SMALL), reference.state_dict())
    with pytest.raises(ValueError, match="has 1 class token.*the model has 0 .classifier='gap'"):
        load_vit_pytorch(ViT(**SMALL, pool="mean"), vit_pytorch().ViT(**SMALL).state_dict())
    with pytest.raises(ValueError, match="is not a vit-pytorch ViT state dict .1.x layout.: no 'to_patch_embedding"):
        load_vit_pytorch(ViT(**SMALL), {"patch_embed.proj.weight": np.zeros((32, 3, 8, 8))})
