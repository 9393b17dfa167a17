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


def test_parameter_count_follows_the_vit_formula_with_a_separate_attention_width():
    dim, depth, heads, dim_head, mlp, classes, patch, size = 96, 3, 4, 16, 200, 7, 8, (32, 48)
    model = ViT(image_size=size, patch_size=patch, num_classes=classes, dim=dim, depth=depth, heads=heads,
                mlp_dim=mlp, dim_head=dim_head)
    params = shapes(model, size)["params"]
    inner, tokens = heads * dim_head, (32 // 8) * (48 // 8) + 1
    per_block = (4 * dim) + (3 * (dim * inner + inner) + inner * dim + dim) + (dim * mlp + mlp + mlp * dim + dim)
    expected = (patch * patch * 3 * dim + dim) + dim + tokens * dim + depth * per_block + 2 * dim + (dim * classes
                                                                                                      + classes)
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
])
def test_bad_arguments_are_named(arguments, message):
    base = dict(image_size=32, patch_size=8, num_classes=3, dim=16, depth=1, heads=2, mlp_dim=32)
    with pytest.raises(ValueError, match=message.replace("(", "\\(").replace(")", "\\)")):
        ViT(**{**base, **arguments})
