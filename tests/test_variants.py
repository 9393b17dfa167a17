import jax
import jax.numpy as jnp
import numpy as np
import pytest

from vit_jax.models import SIZES, VisionTransformer, create_model, parse_variant


def count(model, image_hw=(224, 224), channels=3) -> int:
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, *image_hw, channels)), train=False))
    return sum(int(np.prod(leaf.shape)) for leaf in jax.tree.leaves(shapes["params"]))


def formula_count(d, depth, mlp, patch, classes, tokens, *, cls=True, posemb=True, rep=None, map_head=False, c=3):
    """Parameters written out from the architecture (independent of the code)."""
    attention = 4 * (d * d + d)
    block = attention + (d * mlp + mlp) + (mlp * d + d) + 2 * 2 * d
    total = patch[0] * patch[1] * c * d + d + depth * block + 2 * d
    total += d if cls else 0
    total += (tokens + int(cls)) * d if posemb else 0
    total += (d + attention + 2 * d + (d * mlp + mlp) + (mlp * d + d)) if map_head else 0
    if rep:
        total += d * rep + rep
        d = rep
    return total + d * classes + classes


# The counts google-research/vision_transformer's tests assert (224 px, 1000 classes, token, learned posemb).
@pytest.mark.parametrize(
    "variant, expected",
    [("Ti/16", 5_717_416), ("S/16", 22_050_664), ("B/16", 86_567_656), ("B/32", 88_224_232), ("L/16", 304_326_632),
     ("H/14", 632_045_800)],
)
def test_published_parameter_counts(variant, expected):
    assert count(create_model(variant, num_classes=1000)) == expected


@pytest.mark.parametrize(
    "options, formula",
    [
        (dict(classifier="gap"), dict(cls=False)),
        (dict(classifier="map"), dict(cls=False, map_head=True)),
        (dict(posemb="sincos2d"), dict(posemb=False)),
        (dict(representation_size=768), dict(rep=768)),
        (dict(scan=True, remat=True), dict()),
    ],
)
def test_parameter_counts_follow_the_architecture(options, formula):
    model = create_model("S/8x16", num_classes=100, **options)
    expected = formula_count(384, 12, 1536, (8, 16), 100, 28 * 14, **formula)
    assert count(model) == expected


# big_vision's `vit.py` `decode_variant` (width, depth, MLP, heads), transcribed: the source SIZES cites.
BIG_VISION = {"mu": (32, 1, 128, 2), "Ti": (192, 12, 768, 3), "S": (384, 12, 1536, 6), "M": (512, 12, 2048, 8),
              "B": (768, 12, 3072, 12), "L": (1024, 24, 4096, 16), "So400m": (1152, 27, 4304, 16),
              "H": (1280, 32, 5120, 16), "g": (1408, 40, 6144, 16), "G": (1664, 48, 8192, 16),
              "e": (1792, 56, 15360, 16)}


def test_sizes_are_big_visions():
    assert {name: tuple(size) for name, size in SIZES.items()} == BIG_VISION
    assert count(create_model("mu/16", num_classes=1000)) == formula_count(32, 1, 128, (16, 16), 1000, 196)


def test_sizes_and_patch_parsing():
    assert parse_variant("B/16") == dict(hidden_size=768, num_layers=12, mlp_dim=3072, num_heads=12, patch_size=(16, 16))
    assert parse_variant("S/8x16")["patch_size"] == (8, 16)
    assert (SIZES["Ti"], SIZES["L"], SIZES["H"]) == ((192, 12, 768, 3), (1024, 24, 4096, 16), (1280, 32, 5120, 16))
    model = create_model("S/8x16", num_classes=10)
    assert isinstance(model, VisionTransformer) and model.patch_size == (8, 16)


def test_overrides_reach_the_module():
    model = create_model("Ti/16", num_classes=10, posemb="sincos2d", classifier="gap", patch_embed="reshape",
                         dtype=jnp.bfloat16, scan=True, hidden_size=96, patch_size=4)
    assert (model.posemb, model.classifier, model.patch_embed, model.scan) == ("sincos2d", "gap", "reshape", True)
    assert (model.hidden_size, model.num_layers, model.patch_size, model.num_classes) == (96, 12, (4, 4), 10)


@pytest.mark.parametrize(
    "variant, message",
    [
        ("X/16", r"unknown model size 'X' in variant 'X/16'; valid sizes: \['mu', 'Ti', 'S', 'M', 'B', 'L'"),
        ("B16", "variant must look like 'SIZE/PATCH' or 'SIZE/PHxPW'.* got 'B16'"),
        ("B/16x", "variant must look like"),
        ("B/0", r"patch_size must be a positive int .* got \(0, 0\)"),
    ],
)
def test_bad_variants_list_what_is_valid(variant, message):
    with pytest.raises(ValueError, match=message):
        create_model(variant, num_classes=10)


def test_unknown_option_lists_the_valid_ones():
    with pytest.raises(ValueError, match=r"unknown model option\(s\) \['posemb_type'\]; valid options: .*'posemb'"):
        create_model("B/16", num_classes=10, posemb_type="learn")
