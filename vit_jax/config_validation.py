"""Config checks that run before anything compiles: each failure is one line naming the field, the value and what
is allowed. `validate` runs them all and only raises; what the checks build to look at (the model, the dataset)
comes from `vit_jax.from_config`, the same factories the run is built with."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Any

import jax
from flax import traverse_util
from ml_collections import ConfigDict

from vit_jax.checkpoint.adapt import ADAPTATION_CHOICES, UnknownChoiceError, check_adaptation_choices
from vit_jax.checkpoint.hub import is_timm_spec
from vit_jax.checkpoint.npz import load_npz, split_submodel
from vit_jax.checkpoint.pretrained import is_workdir, timm_architecture
from vit_jax.config import build_model, cache_setting
from vit_jax.data.preprocessing import RESIZE_METHODS, TRAIN_CROPS
from vit_jax.data.sources import DatasetError, DatasetSpec, split_size
from vit_jax.distillation import check_distillation
from vit_jax.extra_evals import open_extra_evals
from vit_jax.flexi import flexi_patch_sizes, flexi_probabilities
from vit_jax.from_config import (
    SPLIT_FIELDS,
    mixup_from_config,
    open_dataset,
    packed_preprocess_from_config,
    preprocess_from_config,
    random_erasing_from_config,
)
from vit_jax.interpret.tensorboard import PICTURE_SCHEDULES
from vit_jax.models.posemb import check_resizing
from vit_jax.models.vit import VisionTransformer, pixel_patch_size, token_grid
from vit_jax.optim import OPTIMIZERS, SCHEDULES, check_ema, check_optimizer, weight_decay_mask
from vit_jax.param_paths import path_string
from vit_jax.sharding import DATA_AXIS, RULE_KINDS, ShardingError, mesh_shape
from vit_jax.steps import LOSSES

DTYPES = ("float32", "bfloat16", "float16")


class ConfigError(ValueError):
    """A config value that cannot work; raised before compilation or training."""


def validate(config: ConfigDict, num_devices: int, process_count: int) -> None:
    """Every check, in the order a user would fix them: the config against itself, the devices, the checkpoint to
    start from, the dataset, the model. Raises the first `ConfigError`; returns nothing."""
    check_xla_flags(config)
    check_choices(config)
    check_numbers(config)
    check_preprocessing(config)
    check_batch_augmentation(config)
    check_repeated_augmentation(config)
    check_patterns(config)
    check_devices(config, num_devices, process_count)
    check_init(config)
    spec = check_data(config)
    model = check_model(config, spec.num_classes)
    check_video(config, spec, model)
    check_rand_augment_data(config, spec)
    check_extra_evals(config, spec)


# What may differ when a run resumes from its workdir: how long it runs, what it logs and evaluates, and how it
# computes the same thing (devices, memory, kernels); not what it trains (the model, data, optimizer, seed).
RESUMABLE_CHANGES = ("num_steps", "eval_every", "log_every", "checkpoint_every", "keep", "log_pictures",
                     "pictures_images", "eval_batch_size", "eval_split", "test_split", "eval_image_sizes",
                     "extra_evals", "data_dir", "data_threads", "data_workers", "cache_in_memory",
                     "keep_host_memory", "xla_flags", "mesh", "sharding_rules", "fsdp_min_size",
                     "image_folder_strict", "init", "model.dtype", "model.attention_impl", "model.matmul",
                     "model.remat", "model.remat_policy", "model.record_attention")


def check_resume(config: ConfigDict, saved: ConfigDict, latest_step: int, workdir: str | Path) -> None:
    """A workdir with checkpoints resumes the run its `config.json` describes: a config that trains something
    else (another model, data, optimizer, seed: RESUMABLE_CHANGES lists what may differ) is refused, before its
    config.json is written over, as is one that ends before the run's latest step."""
    if config.num_steps < latest_step:
        raise field_error("num_steps", config.num_steps, f"the run in {workdir} is at step {latest_step} already; "
                                                         f"it resumes to a later step, or start a new workdir")
    now, before = (traverse_util.flatten_dict(json.loads(c.to_json_best_effort()), keep_empty_nodes=True, sep=".")
                   for c in (config, saved))
    allowed = lambda key: any(key == p or key.startswith(p + ".") for p in RESUMABLE_CHANGES)
    differ = [k for k in sorted(now) if k in before and now[k] != before[k] and not allowed(k)]  # fields added
    if differ:  # by a newer vit_jax are not in an older run's config.json: nothing to compare them with
        listed = ", ".join(f"{k} {before[k]!r} there, {now[k]!r} now" for k in differ[:4])
        more = f" and {len(differ) - 4} more" if len(differ) > 4 else ""
        raise ConfigError(f"--workdir {workdir} holds a run (step {latest_step}) of another config: {listed}{more}; "
                          f"resume it with its own config (only how long it runs, what it logs and how it computes "
                          f"may change) or start a new workdir")


def field_error(field: str, value: Any, problem: str, allowed: Any = None) -> ConfigError:
    suffix = f"; allowed: {allowed}" if allowed is not None else ""
    return ConfigError(f"config.{field} = {value!r}: {problem}{suffix}")


def check_choices(config: ConfigDict) -> None:
    """Names that must be one of a known set."""
    choices = {
        "optimizer.name": OPTIMIZERS, "optimizer.schedule": SCHEDULES, "pp.train_crop": TRAIN_CROPS,
        "pp.resize_method": tuple(RESIZE_METHODS), "model.dtype": DTYPES,
        "log_pictures": PICTURE_SCHEDULES, "loss": LOSSES,
    }
    for field, allowed in choices.items():
        value = _get(config, field)
        if value not in allowed:
            raise field_error(field, value, "unknown value", ", ".join(map(repr, allowed)))
    try:
        cache_setting(config.cache_in_memory)
    except ValueError:
        raise field_error("cache_in_memory", config.cache_in_memory, "unknown value", "'auto', True, False") from None
    try:  # the fine-tuning choices, checked by the adaptation that takes them
        check_adaptation_choices(**{name: config.init[name] for name in ADAPTATION_CHOICES})
    except UnknownChoiceError as error:
        raise field_error(f"init.{error.name}", error.value, "unknown value",
                          ", ".join(map(repr, error.allowed))) from None
    offset = config.init.get("posemb_offset", 0.0)
    try:
        check_resizing(config.init.posemb_method, config.init.posemb_antialias, offset)
    except ValueError as error:
        field = "init.posemb_offset" if offset else "init.posemb_antialias"
        raise field_error(field, _get(config, field), str(error)) from None


def check_xla_flags(config: ConfigDict) -> None:
    """Checked before they reach XLA, which aborts the process on a malformed flag."""
    setting = config.get("xla_flags", "auto")
    if not isinstance(setting, str):
        raise field_error("xla_flags", setting, "must be a string", '"auto", "" or flags like "--xla_cpu_...=value"')
    bad = [flag for flag in setting.split() if not re.fullmatch(r"--xla_[a-z0-9_]+(=\S*)?", flag)]
    if setting != "auto" and bad:
        raise field_error("xla_flags", bad[0], "is not an XLA flag", '"auto", "" or flags like "--xla_cpu_...=value"')


def check_numbers(config: ConfigDict) -> None:
    if not isinstance(config.num_steps, int) or config.num_steps < 0:
        raise field_error("num_steps", config.num_steps, "must be an integer >= 0 (0: evaluate only)")
    for field in ("batch_size", "eval_batch_size", "accum_steps", "log_every", "eval_every",
                  "checkpoint_every", "keep", "data_threads", "fsdp_min_size", "pictures_images"):
        value = _get(config, field)
        if not isinstance(value, int) or value < 1:
            raise field_error(field, value, "must be a positive integer")
    if not isinstance(config.data_workers, int) or config.data_workers < 0:
        raise field_error("data_workers", config.data_workers, "must be an integer >= 0")
    if not 0.0 <= config.label_smoothing < 1.0:
        raise field_error("label_smoothing", config.label_smoothing, "must be in [0, 1)")
    for group, check in (("optimizer", check_optimizer), ("ema", check_ema), ("distillation", check_distillation)):
        try:
            check(config.get(group) or ConfigDict())
        except ValueError as error:
            field, problem = str(error).split(": ", 1)
            raise field_error(f"{group}.{field}", _get_or_none(config, f"{group}.{field}"), problem) from None
    threshold = config.get("bce_target_threshold")
    if threshold is not None:
        if isinstance(threshold, bool) or not isinstance(threshold, int | float) or not 0 <= threshold < 1:
            raise field_error("bce_target_threshold", threshold, "must be a number in [0, 1) or None")
        if config.get("loss") != "binary_cross_entropy":
            raise field_error("bce_target_threshold", threshold, f"thresholds binary cross-entropy's targets; "
                                                                 f"config.loss is {config.get('loss')!r}")
    if not isinstance(config.seed, int) or not 0 <= config.seed < 2**32:
        raise field_error("seed", config.seed, "must be an integer in [0, 2**32)")
    size = tuple(config.image_size)
    if len(size) != 2 or not all(isinstance(s, int) and s > 0 for s in size):
        raise field_error("image_size", config.image_size, "must be (height, width) with positive integers")


def check_preprocessing(config: ConfigDict) -> None:
    """`config.pp` builds the preprocessing it describes (`Preprocess` checks its own fields)."""
    for field in ("value_range", "crop_scale", "crop_ratio"):
        if not isinstance(config.pp[field], tuple | list):
            raise field_error(f"pp.{field}", config.pp[field], "must be a pair (a, b)")
    try:
        preprocess_from_config(config)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.pp: {error}") from None


def check_batch_augmentation(config: ConfigDict) -> None:
    """`config.random_erasing` and `config.mixup` build (each checks its own fields); they act on image batches."""
    for field, build in (("random_erasing", random_erasing_from_config), ("mixup", mixup_from_config)):
        try:
            augmentation = build(config)
        except (ValueError, TypeError) as error:
            raise ConfigError(f"config.{field}: {error}") from None
        if augmentation is not None and config.packing.enabled:
            raise ConfigError(f"config.{field}: acts on batches of whole images; packing.enabled=True trains on "
                              f"packed patch sequences (turn one of them off)")


def check_repeated_augmentation(config: ConfigDict) -> None:
    """`repeated_augmentation` repeats images of the per-image stream (`pipeline.RepeatedEpochs`)."""
    repeats = config.get("repeated_augmentation", 1)
    if isinstance(repeats, bool) or not isinstance(repeats, int) or repeats < 1:
        raise field_error("repeated_augmentation", repeats, "must be an integer >= 1 (1: none; DeiT's 3)")
    if repeats > 1 and config.packing.enabled:
        raise field_error("repeated_augmentation", repeats, "repeats images of the per-image stream; "
                                                            "packing.enabled=True packs its own (turn one of them off)")


def check_rand_augment_data(config: ConfigDict, spec: DatasetSpec) -> None:
    """RandAugment's, AutoAugment's, 3-Augment's and ColorJitter's PIL operations take grayscale or RGB images."""
    for field in ("rand_augment", "auto_augment", "three_augment", "color_jitter"):
        if config.pp.get(field) and spec.image_shape[-1] not in (1, 3):
            raise field_error(f"pp.{field}", config.pp[field], f"works on grayscale or RGB images; dataset "
                                                               f"{config.dataset!r} has {spec.image_shape[-1]} "
                                                               f"channels")


def check_patterns(config: ConfigDict) -> None:
    """Regexes over parameter paths compile, and sharding rules are known kinds or axis tuples."""
    patterns = [("optimizer.weight_decay_mask", config.optimizer.weight_decay_mask),
                ("optimizer.frozen", config.optimizer.get("frozen", ""))]
    patterns += [(f"sharding_rules[{i}]", rule[0]) for i, rule in enumerate(config.sharding_rules)]
    patterns += [(f"init.dont_load[{i}]", pattern) for i, pattern in enumerate(config.init.dont_load)]
    for field, pattern in patterns:
        try:
            re.compile(pattern)
        except (re.error, TypeError) as error:
            raise field_error(field, pattern, f"not a regular expression ({error})") from None
    for i, rule in enumerate(config.sharding_rules):
        if len(rule) != 2 or not (rule[1] in RULE_KINDS or isinstance(rule[1], (tuple, list))):
            raise field_error(f"sharding_rules[{i}]", tuple(rule), "must be (regex, rule)",
                              f"rule in {RULE_KINDS} or a tuple of mesh axis names per dimension")


def check_frozen(config: ConfigDict, params: Any) -> None:
    """`optimizer.frozen` leaves some parameters to train (checked on the model's parameter tree, before anything
    compiles); a pattern that matches nothing is most likely a typo."""
    pattern = config.optimizer.get("frozen", "")
    if not pattern:
        return
    frozen = jax.tree.leaves(weight_decay_mask(pattern)(params))  # the optimizer's own matching
    if not any(frozen):
        example = path_string(jax.tree_util.tree_flatten_with_path(params)[0][0][0])
        raise field_error("optimizer.frozen", pattern, f"matches none of the model's {len(frozen)} parameters "
                                                       f"(e.g. {example!r})")
    if all(frozen):
        raise field_error("optimizer.frozen", pattern, "matches every parameter: nothing would train",
                          "e.g. '^(?!head/)' to train the head only")


def check_devices(config: ConfigDict, num_devices: int, process_count: int) -> dict[str, int]:
    """The mesh fits the devices, and batches split evenly over data-parallel devices, hosts and micro-batches."""
    try:
        shape = mesh_shape(config.mesh, num_devices)
    except ShardingError as error:
        raise field_error("mesh", config.mesh, str(error)) from None
    data = shape[DATA_AXIS]
    unit = data * config.accum_steps
    if config.batch_size % unit or config.batch_size % process_count:
        raise field_error(
            "batch_size", config.batch_size,
            f"not divisible by {data} data-parallel device(s) x accum_steps {config.accum_steps} "
            f"and by {process_count} process(es)", f"multiples of {unit * process_count // math.gcd(unit, process_count)}",
        )
    if config.eval_batch_size % data or config.eval_batch_size % process_count:
        raise field_error("eval_batch_size", config.eval_batch_size,
                          f"not divisible by {data} data-parallel device(s) and {process_count} process(es)")
    return shape


def check_data(config: ConfigDict) -> DatasetSpec:
    """The dataset opens (vit_jax's own are built on first use) and has the named splits; returns what its
    examples hold, for the checks that depend on it."""
    data_dir = config.get("data_dir")
    if data_dir is not None and (not isinstance(data_dir, str) or Path(data_dir).expanduser().is_file()):
        raise field_error("data_dir", data_dir, "not a directory (TFDS's data directory; None: TFDS's default)")
    try:
        builder, spec = open_dataset(config)
    except (DatasetError, OSError, ValueError) as error:
        raise field_error("dataset", config.dataset, str(error)) from None
    for field in SPLIT_FIELDS:
        split = config[field]
        if not split and field == "test_split":
            continue
        try:
            size = split_size(builder, split)
        except DatasetError:
            raise field_error(field, split, f"unknown split of {config.dataset!r}",
                              f"{sorted(builder.info.splits)} or slices such as 'train[:90%]'") from None
        if not size:
            raise field_error(field, split, f"no examples in this split of {config.dataset!r}")
    return spec


def check_extra_evals(config: ConfigDict, spec: DatasetSpec) -> None:
    """Each extra evaluation's dataset opens, has its split, holds what the model takes and classes its head can
    score (`vit_jax.extra_evals`)."""
    try:
        open_extra_evals(config, spec, config.pp.channels or spec.image_shape[-1])
    except ValueError as error:
        field, problem = str(error).split(": ", 1)
        name, _, key = field.partition(".")
        entry = config.extra_evals.get(name)
        value = entry.get(key) if key and isinstance(entry, ConfigDict) else entry
        raise field_error(f"extra_evals.{field}", value.to_dict() if isinstance(value, ConfigDict) else value,
                          problem) from None


def check_init(config: ConfigDict) -> None:
    """The checkpoint to fine-tune from exists (a timm checkpoint's header and config.json are also read, and an
    `.npz` archive's directory: a missing or corrupt file, a missing sub-model, or an architecture vit_jax cannot
    run fails here)."""
    path = config.init.path
    if not path:
        for field in ("step", "grid"):
            if config.init.get(field) is not None:
                raise field_error(f"init.{field}", config.init[field], "set without config.init.path (nothing to "
                                                                       "fine-tune from)")
        return
    if is_workdir(Path(path).expanduser()):
        return
    if not (is_timm_spec(path) or split_submodel(path)[0].is_file()):
        raise field_error("init.path", path, "neither an .npz file nor a vit_jax workdir (a directory with "
                                             "checkpoints/) nor a Hub checkpoint (hf-hub:REPO, a .safetensors "
                                             "file or a directory with model.safetensors or "
                                             "open_clip_model.safetensors); one model of an .npz holding several: "
                                             "FILE.npz:KEY")
    try:
        if is_timm_spec(path):
            timm_architecture(path)
        else:
            load_npz(path, shapes_only=True)  # an archive, with the model asked for
    except (OSError, ValueError) as error:
        raise field_error("init.path", path, str(error)) from None


def check_model(config: ConfigDict, num_classes: int) -> VisionTransformer:
    """The model builds, and the image sizes, FlexiViT patch sizes and packing fit it; returns the model checked,
    for the checks that depend on it."""
    try:  # as configured: the table grid `from_config.model_from_config` defaults to is only known valid after this
        model = build_model(config.model, num_classes, packed=config.packing.enabled)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"config.model (variant {config.model.variant!r}): {error}") from None
    if config.packing.enabled:
        check_packing(config, model)
        return model
    image_size = tuple(config.image_size)
    try:
        token_grid(model, image_size)
    except ValueError:
        ph, pw = pixel_patch_size(model)  # in image pixels: a hybrid's patch times its ResNet stem's stride
        raise field_error(
            "image_size", image_size,
            f"not a multiple of the patch size {ph}x{pw} (config.model.variant {config.model.variant!r})",
            "multiples of the patch size, or config.model.pad='zeros'",
        ) from None
    check_eval_image_sizes(config, model)
    if config.flexi.patch_sizes:
        check_flexi(config, model)
    elif config.flexi.probabilities:
        raise field_error("flexi.probabilities", tuple(config.flexi.probabilities), "set without "
                          "config.flexi.patch_sizes (the sizes they weigh)")
    return model


def check_flexi(config: ConfigDict, model: VisionTransformer) -> None:
    """FlexiViT: image models, known probabilities, and patch sizes that divide the images."""
    image_size = tuple(config.image_size)
    if model.tubelet_size is not None:
        raise field_error("flexi.patch_sizes", tuple(config.flexi.patch_sizes),
                          f"FlexiViT patch sizes are for images; config.model.tubelet_size = "
                          f"{model.tubelet_size} makes a video model", "() for video models")
    if model.patch_norm:
        raise field_error("flexi.patch_sizes", tuple(config.flexi.patch_sizes),
                          "config.model.patch_norm normalises the pixels of one patch size",
                          "() or config.model.patch_norm=False")
    try:
        sizes = flexi_patch_sizes(config.flexi.patch_sizes)
    except ValueError as error:
        raise field_error("flexi.patch_sizes", tuple(config.flexi.patch_sizes), str(error)) from None
    try:
        flexi_probabilities(sizes, config.flexi.probabilities)
    except ValueError as error:
        raise field_error("flexi.probabilities", tuple(config.flexi.probabilities), str(error)) from None
    for size in sizes:
        try:
            token_grid(model.clone(patch_size=size), image_size)
        except ValueError:
            raise field_error("flexi.patch_sizes", tuple(config.flexi.patch_sizes),
                              f"patch size {size[0]}x{size[1]} does not divide config.image_size {image_size}",
                              "divisors of the image size, or config.model.pad='zeros'") from None


def check_video(config: ConfigDict, spec: DatasetSpec, model: VisionTransformer) -> None:
    """Video data goes with a video model (`config.model.tubelet_size`) whose tubelets divide the clips, images with
    an image model; TensorBoard pictures are drawn for images only."""
    shape = "x".join(map(str, spec.image_shape))
    if len(spec.image_shape) == 4 and model.tubelet_size is None:
        raise field_error("model.tubelet_size", None, f"dataset {config.dataset!r} holds videos ({shape}: frames x "
                                                      f"height x width x channels) but the model is an image model",
                          f"frames per tubelet, a divisor of {spec.image_shape[0]}")
    if len(spec.image_shape) != 4 and model.tubelet_size is not None:
        raise field_error("model.tubelet_size", model.tubelet_size, f"makes a video model, but dataset "
                                                                    f"{config.dataset!r} holds images ({shape})",
                          "None for images")
    if model.tubelet_size is None:
        return
    frames = spec.image_shape[0]
    if frames is None or frames % model.tubelet_size:
        raise field_error("model.tubelet_size", model.tubelet_size,
                          f"does not divide the {frames} frames of dataset {config.dataset!r}'s clips",
                          f"divisors of {frames}")
    if config.log_pictures != "none":
        raise field_error("log_pictures", config.log_pictures, "TensorBoard pictures are drawn for image models; "
                                                               "this is a video model", "'none'")


def check_eval_image_sizes(config: ConfigDict, model: VisionTransformer) -> None:
    """Extra evaluation resolutions: (h, w) pairs the model's patches divide (or pads to), for image models."""
    sizes = tuple(config.eval_image_sizes)
    if sizes and model.tubelet_size is not None:
        raise field_error("eval_image_sizes", sizes, "extra evaluation resolutions are for image models", "()")
    for size in sizes:
        if not (isinstance(size, (tuple, list)) and len(size) == 2 and all(isinstance(s, int) and s > 0
                                                                            for s in size)):
            raise field_error("eval_image_sizes", sizes, f"{size!r} is not an (height, width) pair of positive ints")
        try:
            token_grid(model, tuple(size))
        except ValueError:
            ph, pw = pixel_patch_size(model)
            raise field_error("eval_image_sizes", sizes, f"{size[0]}x{size[1]} is not a multiple of the patch size "
                              f"{ph}x{pw}", "multiples of the patch size, or config.model.pad='zeros'") from None


def check_packing(config: ConfigDict, model: VisionTransformer) -> None:
    """Packed (NaViT) runs: sequence sizes that hold the largest image, and no option that needs a fixed grid."""
    packing = config.packing
    for field in ("seq_len", "max_images"):
        value = packing[field]
        if not isinstance(value, int) or value <= 0:
            raise field_error(f"packing.{field}", value, "must be a positive int")
    if not isinstance(packing.num_bins, int) or packing.num_bins < 0:
        raise field_error("packing.num_bins", packing.num_bins, "must be a non-negative int (0: the batch size)")
    pair = lambda v: isinstance(v, tuple | list) and len(v) == 2 and all(isinstance(s, int) and s > 0 for s in v)
    if not isinstance(packing.image_sizes, tuple | list) or not all(pair(size) for size in packing.image_sizes):
        raise field_error("packing.image_sizes", packing.image_sizes, "must be (height, width) pairs of positive "
                          "ints, e.g. ((16, 16), (8, 24))")
    if packing.max_grid is not None and not pair(packing.max_grid):
        raise field_error("packing.max_grid", packing.max_grid, "must be (rows, columns) of positive ints, or None")
    if config.flexi.patch_sizes:
        raise field_error("flexi.patch_sizes", tuple(config.flexi.patch_sizes), "FlexiViT patch sizes need the "
                          "fixed-grid model; packing.enabled makes a NaViT", "()")
    if config.eval_image_sizes:
        raise field_error("eval_image_sizes", tuple(config.eval_image_sizes), "a packed run evaluates every image "
                          "at its own size (packing.image_sizes)", "()")
    if config.log_pictures != "none":
        raise field_error("log_pictures", config.log_pictures, "TensorBoard pictures are drawn for fixed-grid "
                          "image models; packing.enabled makes a NaViT", "'none'")
    grid = packing.max_grid or model.posemb_grid
    if grid is None:
        raise field_error("packing.max_grid", None, "the largest image grid is needed (or config.model.posemb_grid)",
                          "(rows, columns)")
    if model.posemb == "factorized" and (grid[0] > model.posemb_grid[0] or grid[1] > model.posemb_grid[1]):
        raise field_error("packing.max_grid", tuple(grid), f"larger than the factorized tables' "
                          f"config.model.posemb_grid {tuple(model.posemb_grid)}", "at most posemb_grid")
    try:
        preprocess = packed_preprocess_from_config(config, model)
    except ValueError as error:
        raise field_error("packing.image_sizes", tuple(packing.image_sizes), str(error)) from None
    if preprocess.max_tokens > packing.seq_len:
        raise field_error("packing.seq_len", packing.seq_len, f"an image can have {preprocess.max_tokens} tokens "
                          f"(patch {model.patch_size[0]}x{model.patch_size[1]}), more than one sequence holds",
                          f"at least {preprocess.max_tokens}")


def _get(config: ConfigDict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config[part]
    return config


def _get_or_none(config: ConfigDict, dotted: str) -> Any:
    for part in dotted.split("."):
        config = config.get(part) if isinstance(config, ConfigDict) else None
    return config

