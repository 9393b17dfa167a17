"""Objects a config describes, built without checks: the model, the preprocessing, the dataset.

`config_validation.validate` checks a config by building these and turning their errors into one-line config
errors; `build.set_up` builds them after it has checked. One home for each factory, so the two cannot disagree.
"""

from __future__ import annotations

from typing import Any

from ml_collections import ConfigDict

from vit_jax.augment.auto_augment import AutoAugment
from vit_jax.augment.mixup import Mixup
from vit_jax.augment.rand_augment import RandAugment
from vit_jax.augment.random_erasing import RandomErasing
from vit_jax.config import build_model
from vit_jax.data.packing import PackedPreprocess
from vit_jax.data.preprocessing import Preprocess
from vit_jax.data.sources import DatasetSpec, dataset_builder, dataset_spec
from vit_jax.models.vit import VisionTransformer, token_grid

SPLIT_FIELDS = ("train_split", "eval_split", "test_split")


def model_from_config(config: ConfigDict, num_classes: int) -> VisionTransformer:
    """The model of `config.model` (NaViT when `config.packing.enabled`). A model that meets other grids than its
    training one (FlexiViT patch sizes, `config.eval_image_sizes`) stores its learned table at the training grid
    unless `config.model.posemb_grid` says where."""
    model = build_model(config.model, num_classes, packed=config.packing.enabled)
    if config.packing.enabled or model.posemb_grid is not None or model.tubelet_size is not None:
        return model
    if config.flexi.patch_sizes or config.eval_image_sizes:
        return model.clone(posemb_grid=token_grid(model, tuple(config.image_size)))
    return model


def preprocess_from_config(config: ConfigDict) -> Preprocess:
    pp = config.pp
    return Preprocess(
        image_size=tuple(config.image_size), value_range=tuple(pp.value_range), resize_method=pp.resize_method,
        train_crop=pp.train_crop, crop_padding=pp.crop_padding, crop_scale=tuple(pp.crop_scale),
        crop_ratio=tuple(pp.crop_ratio), flip=pp.flip, mean=_optional_tuple(pp.mean), std=_optional_tuple(pp.std),
        channels=pp.channels, crop_pct=pp.get("crop_pct", 1.0), crop_mode=pp.get("crop_mode", "squash"),
        rand_augment=RandAugment.parse(pp.rand_augment) if pp.get("rand_augment") else None,
        auto_augment=AutoAugment.parse(pp.auto_augment) if pp.get("auto_augment") else None,
        train_resize_method=pp.get("train_resize_method"),
        three_augment=pp.get("three_augment", False), color_jitter=pp.get("color_jitter", 0.0),
    )


def mixup_from_config(config: ConfigDict) -> Mixup | None:
    """`config.mixup` (timm's Mixup/CutMix arguments), None when it mixes nothing."""
    fields = config.get("mixup") or {}  # a run saved before vit_jax had Mixup
    mixup = Mixup(**{**fields, "cutmix_minmax": _optional_tuple(fields.get("cutmix_minmax"))})
    return mixup if mixup.enabled else None


def random_erasing_from_config(config: ConfigDict) -> RandomErasing | None:
    fields = config.get("random_erasing") or {}
    erasing = RandomErasing(**fields)
    return erasing if erasing.prob > 0 else None


def _optional_tuple(value: Any) -> tuple[float, ...] | None:
    return None if value is None else tuple(value)


def packed_preprocess_from_config(config: ConfigDict, model: VisionTransformer) -> PackedPreprocess:
    """The per-image preprocessing of a packed run: config.pp at each image's size, then patches."""
    packing = config.packing
    drop_rate = packing.drop_rate
    return PackedPreprocess(
        base=preprocess_from_config(config), patch_size=tuple(model.patch_size),
        max_grid=tuple(packing.max_grid or model.posemb_grid),
        image_sizes=tuple(tuple(size) for size in packing.image_sizes),
        drop_rate=tuple(drop_rate) if isinstance(drop_rate, (tuple, list)) else drop_rate,
    )


def open_dataset(config: ConfigDict) -> tuple[Any, DatasetSpec]:
    """The dataset's builder (vit_jax's own datasets are built on first use) and what its examples hold."""
    builder = dataset_builder(config.dataset, config.data_dir, strict=config.image_folder_strict)
    return builder, dataset_spec(builder)
