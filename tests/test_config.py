import dataclasses
import re
import sys

import jax.numpy as jnp
import pytest

from tests.conftest import ROOT, load_config_file
from vit_jax.config import apply_overrides, base_config, build_model, model_config, split_top_level
from vit_jax.models import MODEL_OPTIONS


def test_model_section_has_every_model_option_so_the_command_line_can_set_it():
    section = model_config("S/16")
    assert set(section) == {"variant"} | set(MODEL_OPTIONS) - {"num_classes", "activation_sharding"}
    assert section.hidden_size is None and section.posemb == "learn" and section.dtype == "float32"


def test_build_model_takes_sizes_from_the_variant_unless_set():
    model = build_model(model_config("S/16"), num_classes=7)
    assert (model.hidden_size, model.num_layers, model.patch_size, model.num_classes) == (384, 12, (16, 16), 7)
    assert model.dtype is None
    section = model_config("S/16", hidden_size=96, num_heads=4, dtype="bfloat16")
    model = build_model(section, num_classes=7)
    assert (model.hidden_size, model.num_heads, model.dtype) == (96, 4, jnp.bfloat16)


def test_short_overrides_set_nested_fields_and_parse_literals():
    config = apply_overrides(base_config(), "variant=S/8x16,dataset=cifar10,image_size=32,"
                                            "optimizer.learning_rate=3e-4,mesh=(('data',-1),('model',2)),pp.flip=False")
    assert config.model.variant == "S/8x16" and config.dataset == "cifar10"
    assert config.image_size == (32, 32)
    assert config.optimizer.learning_rate == 3e-4
    assert config.mesh == (("data", -1), ("model", 2))
    assert config.pp.flip is False


@pytest.mark.parametrize(
    "arg, message",
    [
        ("lr=0.1", r"unknown config field 'lr'"),
        ("optimizer.lr=0.1", r"unknown config field 'optimizer.lr'"),
        ("num_steps", r"'num_steps' is not key=value"),
        ("num_steps=abc", r"config field 'num_steps'"),
    ],
)
def test_bad_short_overrides_are_clear_errors(arg, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(base_config(), arg)


def test_split_top_level_keeps_brackets_and_quotes_together():
    assert split_top_level("a=1,b=(1,2),c='x,y',d=[(1,2)]") == ["a=1", "b=(1,2)", "c='x,y'", "d=[(1,2)]"]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.py")), ids=lambda p: p.name)
def test_every_config_documents_its_command_and_result(path):
    text = path.read_text()
    docstring = re.match(r'\s*"""(.*?)"""', text, re.S)
    assert docstring, f"{path.name} must start with a docstring"
    assert f"python -m vit_jax.main --config=configs/{path.name}" in docstring.group(1)
    assert re.search(r"[Rr]esult", docstring.group(1)) and "%" in docstring.group(1)
    config = load_config_file(path.stem)
    assert set(base_config()) <= set(config)


def test_vit_config_picks_splits_that_keep_the_test_split_out_of_model_selection():
    cifar = load_config_file("vit", "variant=Ti/16,dataset=cifar10")
    assert (cifar.model.variant, cifar.train_split, cifar.eval_split, cifar.test_split) == (
        "Ti/16", "train[:98%]", "train[98%:]", "test")
    imagenet = load_config_file("vit", "dataset=imagenet2012")
    assert (imagenet.train_split, imagenet.eval_split, imagenet.test_split) == ("train[:99%]", "train[99%:]", "validation")
    explicit = load_config_file("vit", "dataset=cifar10,eval_split=test[:10%],test_split=test[10%:]")
    assert (explicit.eval_split, explicit.test_split) == ("test[:10%]", "test[10%:]")


@pytest.mark.parametrize("path", sorted((ROOT / "configs" / "sweeps").glob("*.py")), ids=lambda p: p.name)
def test_every_sweep_config_documents_its_command_and_result(path):
    docstring = re.match(r'\s*"""(.*?)"""', path.read_text(), re.S).group(1)
    assert f"python -m vit_jax.sweep --config=configs/sweeps/{path.name}" in docstring
    assert "Result" in docstring and "%" in docstring


def a_value_unlike(default, annotation: str):
    """A command-line value for a field, different from its default, chosen by the field's annotation as written
    (`int | None`, `tuple[int, ...] | None`, `bool`, a Literal alias, ...)."""
    if "tuple" in annotation:
        return (3, 5)
    if "bool" in annotation:
        return not default
    if "float" in annotation:
        return 0.25
    if "int" in annotation:
        return 7
    return "bfloat16" if default == "float32" else "some_choice"


def none_defaulted_fields(config, prefix=""):
    """Every field of `config` (nested) whose default is None, with the type ml-collections holds for it."""
    for key in config:
        value = config[key]
        if hasattr(value, "items") and key != "model":
            yield from none_defaulted_fields(value, f"{prefix}{key}.")
        elif value is None and key not in config.get("model", {}):
            yield f"{prefix}{key}", config.get_ref(key).get_type()


def test_every_model_option_and_every_none_default_can_be_set_from_the_command_line(monkeypatch):
    """Through the real flag parser `vit_jax.main` uses: each value arrives with its type."""
    from absl import flags
    from ml_collections import config_flags

    import vit_jax.models.vit as vit

    wanted = {f"model.{field.name}": a_value_unlike(field.default, field.type)
              for field in dataclasses.fields(vit.VisionTransformer)
              if field.name in model_config("S/16")}
    assert len(wanted) == len(model_config("S/16")) - 1  # every option but the variant
    samples = {int: 11, float: 0.5, tuple: (2, 6), str: "/some/dir"}
    wanted.update({path: samples[kind] for path, kind in none_defaulted_fields(base_config())})
    assert {"data_dir", "init.step", "init.grid", "packing.max_grid"} <= set(wanted)
    flag_values = flags.FlagValues()
    config_flags.DEFINE_config_file("config", None, "", flag_values=flag_values)
    as_flag = lambda v: str(v) if not isinstance(v, str) else v
    argv = ["main", f"--config={ROOT / 'configs' / 'digits.py'}",
            *(f"--config.{path}={as_flag(value)}" for path, value in wanted.items())]
    monkeypatch.setattr(sys, "argv", argv)  # ml-collections finds the `--config.*` overrides in sys.argv
    flag_values(argv)
    config = flag_values.config
    for path, value in wanted.items():
        arrived = config
        for part in path.split("."):
            arrived = arrived[part]
        assert arrived == value and type(arrived) is type(value), (path, arrived, value)


def test_the_evaluation_view_and_the_augmentations_come_from_the_config():
    from vit_jax.augment.rand_augment import RandAugment
    from vit_jax.from_config import mixup_from_config, preprocess_from_config, random_erasing_from_config

    config = load_config_file("vit")
    preprocess = preprocess_from_config(config)
    assert (preprocess.crop_pct, preprocess.crop_mode) == (0.875, "center")
    assert preprocess.rand_augment == RandAugment(num_layers=2, magnitude=10)
    assert mixup_from_config(config).mixup_alpha == 0.2 and random_erasing_from_config(config) is None
    plain = load_config_file("digits")
    assert preprocess_from_config(plain).rand_augment is None and mixup_from_config(plain) is None
    deit = load_config_file("vit", "pp.rand_augment=rand-m9-mstd0.5-inc1,random_erasing.prob=0.25,"
                                              "mixup.mixup_alpha=0.8,mixup.cutmix_alpha=1.0")
    assert preprocess_from_config(deit).rand_augment.transforms[4] == "PosterizeIncreasing"
    assert random_erasing_from_config(deit).prob == 0.25 and mixup_from_config(deit).cutmix_alpha == 1.0


def test_vit_config_decays_the_weights_as_big_vision_whatever_the_learning_rate():
    """big_vision's wd 1e-4 is not multiplied by the learning rate, vit_jax's weight decay is: their product is 1e-4
    at the recipe's rate and at any rate given (the short argument or a config flag, which sets the same field);
    a weight decay given wins."""
    for arg, rate in ((None, 1e-3), ("optimizer.learning_rate=3e-4", 3e-4)):
        config = load_config_file("vit", arg)
        assert config.optimizer.learning_rate == rate
        assert config.optimizer.weight_decay * rate == pytest.approx(1e-4)
    config.optimizer.learning_rate = 2e-3  # as --config.optimizer.learning_rate sets it
    assert config.optimizer.weight_decay == pytest.approx(0.05)
    assert load_config_file("vit", "optimizer.weight_decay=0.3").optimizer.weight_decay == 0.3
    assert config.optimizer.mu_dtype == "bfloat16" and load_config_file("deit").optimizer.mu_dtype is None


def test_deit3_config_is_deit_iiis_imagenet_command():
    """README_revenge.md's ViT-S command: --batch 256 x 8 GPUs --lr 4e-3 --unscale-lr --epochs 800 --weight-decay
    0.05 --opt fusedlamb --smoothing 0.0 --reprob 0.0 --mixup .8 --cutmix 1.0 --drop-path 0.05 --repeated-aug
    --bce-loss --color-jitter 0.3 --ThreeAugment --eval-crop-ratio 1.0, LayerScale 1e-4."""
    deit3 = load_config_file("deit3", "variant=S/16,dataset=imagenet2012,batch_size=1024")
    assert (deit3.optimizer.name, deit3.optimizer.learning_rate, deit3.optimizer.weight_decay) == ("lamb", 4e-3, 0.05)
    assert (deit3.num_steps, deit3.optimizer.warmup_steps, deit3.optimizer.end_learning_rate) == (800 * 626, 5 * 626,
                                                                                                1e-5)
    assert (deit3.label_smoothing, deit3.random_erasing.prob, deit3.mixup.mixup_alpha, deit3.mixup.cutmix_alpha,
            deit3.repeated_augmentation) == (0.0, 0.0, 0.8, 1.0, 3)
    assert (deit3.loss, deit3.bce_target_threshold, deit3.pp.three_augment, deit3.pp.color_jitter,
            deit3.pp.rand_augment) == ("binary_cross_entropy", 0.0, True, 0.3, "")
    assert (deit3.model.layer_scale, deit3.model.stochastic_depth, deit3.model.classifier) == (1e-4, 0.05, "token")
    assert (deit3.pp.crop_pct, deit3.pp.crop_mode, deit3.pp.resize_method) == (1.0, "center", "bicubic")
    assert deit3.optimizer.learning_rate == 4e-3 and deit3.batch_size == 1024  # the rate does not follow the batch


def test_deit_config_is_deits_recipe_and_its_rate_follows_the_batch():
    deit = load_config_file("deit", "variant=Ti/16,dataset=imagenet2012")
    assert (deit.model.variant, deit.model.classifier, deit.model.posemb, deit.model.stochastic_depth) == (
        "Ti/16", "token", "learn", 0.1)
    assert deit.optimizer.learning_rate == pytest.approx(1e-3) and deit.optimizer.weight_decay == 0.05
    assert (deit.pp.rand_augment, deit.random_erasing.prob, deit.mixup.mixup_alpha, deit.mixup.cutmix_alpha,
            deit.label_smoothing, deit.repeated_augmentation) == ("rand-m9-mstd0.5-inc1", 0.25, 0.8, 1.0, 0.1, 3)
    assert deit.test_split == "validation" and deit.num_steps == 300 * 1251
    assert load_config_file("deit", "batch_size=256").optimizer.learning_rate == pytest.approx(2.5e-4)
    assert load_config_file("deit", "batch_size=256,optimizer.learning_rate=0.1").optimizer.learning_rate == 0.1
