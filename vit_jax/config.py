"""The config schema: every field a training run reads, with its default, and short `key=value` overrides.

Config files (`configs/*.py`) start from `base_config()` and change what they need; `get_config(arg)` passes `arg`
(`"variant=S/16,dataset=cifar10"`) to `apply_overrides`. Any field can also be set as `--config.field=value`.
"""

from __future__ import annotations

import ast
import collections.abc
import dataclasses
import importlib.util
import json
import types
import typing
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import jax.numpy as jnp
from ml_collections import ConfigDict, config_dict

from vit_jax.models import VisionTransformer, create_model

CONFIG_FILE = "config.json"  # in a workdir: the config the run used
# Keys of the short `get_config` argument that are not a config path.
SHORT_KEYS = {"variant": "model.variant"}


def value_type(hint: Any) -> type:
    """The type a command-line value for a field annotated `hint` must have: `int | None` -> int,
    `tuple[int, ...]` -> tuple, `Literal['conv', 'reshape']` -> str; `object` when the hint allows several."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        members = [arg for arg in typing.get_args(hint) if arg is not type(None)]
        return value_type(members[0]) if len(members) == 1 else object
    if typing.get_origin(hint) is typing.Literal:
        kinds = {type(choice) for choice in typing.get_args(hint)}
        return kinds.pop() if len(kinds) == 1 else object
    origin = typing.get_origin(hint) or hint
    if isinstance(origin, type) and issubclass(origin, collections.abc.Sequence) and origin is not str:
        return tuple  # ml-collections parses `(8, 16)` from the command line as a tuple
    return origin if isinstance(origin, type) else object


def model_config(variant: str, **options: Any) -> ConfigDict:
    """The `model` section: a variant (`"S/16"`) plus every `create_model` option, defaults filled in. Options
    whose default comes from the variant or means "off" (None) are placeholders typed from the model's own
    annotations, so `--config.model.qkv_dim=32` parses as an int without a list to keep."""
    config = ConfigDict()
    config.variant = variant
    hints = typing.get_type_hints(VisionTransformer)
    for field in dataclasses.fields(VisionTransformer):
        if field.name in ("parent", "name", "num_classes", "activation_sharding"):  # set by the trainer
            continue
        if field.name == "dtype":
            config.dtype = "float32"
        elif field.default is None or field.default is dataclasses.MISSING:
            config[field.name] = config_dict.placeholder(value_type(hints[field.name]))
        else:
            config[field.name] = field.default
    config.update(options)
    return config


def model_config_from(saved: ConfigDict) -> ConfigDict:
    """The `model` section of a saved (JSON) config, with its lists back as tuples."""
    options = {k: tuple(v) if isinstance(v, list) else v for k, v in saved.items() if k != "variant" and v is not None}
    return model_config(saved.variant, **options)


def build_model(model: ConfigDict, num_classes: int, packed: bool = False) -> VisionTransformer:
    """`create_model` from the `model` section; unset placeholders take the variant's values. `packed`: NaViT."""
    options = {k: v for k, v in model.items() if k != "variant" and v is not None}
    options["dtype"] = jnp.dtype(options.pop("dtype"))
    if options["dtype"] == jnp.float32:
        options["dtype"] = None
    return create_model(model.variant, num_classes=num_classes, packed=packed, **options)


def base_config() -> ConfigDict:
    """Every field with its default. Sizes are global (all devices and hosts together)."""
    c = ConfigDict()
    c.seed = 0

    # Data: any TFDS dataset prepared as ArrayRecord, `sklearn_digits`, or `folder:/path/to/images`.
    c.dataset = "sklearn_digits"
    c.data_dir = config_dict.placeholder(str)  # None: $TFDS_DATA_DIR or ~/tensorflow_datasets
    c.train_split = "train"
    c.eval_split = "validation"  # model selection (best checkpoint) happens here, never on the test split
    c.test_split = "test"  # evaluated once, at the end; "" skips it
    c.image_folder_strict = False  # folder datasets: stop at the first unreadable image instead of skipping it
    c.cache_in_memory = "auto"  # "auto": decoded splits under 512 MiB are held in memory; True / False force it
    c.data_threads = 2
    c.data_workers = 0  # >0: grain worker processes for preprocessing

    # Preprocessing (vit_jax.data.preprocessing.Preprocess).
    c.image_size = (224, 224)
    c.pp = ConfigDict()
    c.pp.value_range = (-1.0, 1.0)
    c.pp.resize_method = "bilinear"
    # training's resampling: None (resize_method) or "random" (bilinear or bicubic per image and per geometric
    # RandAugment/AutoAugment operation: timm's default --train-interpolation) or a method
    c.pp.train_resize_method = config_dict.placeholder(str)
    c.pp.train_crop = "inception"  # "none" | "pad" | "inception" | "simple" (DeiT III's SRC, crop_padding 4)
    c.pp.crop_padding = 4
    c.pp.crop_scale = (0.08, 1.0)
    c.pp.crop_ratio = (3 / 4, 4 / 3)
    c.pp.flip = True
    c.pp.mean = config_dict.placeholder(tuple)  # per channel, after value_range: (x - mean) / std (timm's models)
    c.pp.std = config_dict.placeholder(tuple)
    c.pp.channels = config_dict.placeholder(int)  # 3: grayscale images become RGB (for RGB checkpoints)
    # evaluation's view (training's is not affected): resize to image_size / crop_pct, then the central crop, as timm's
    # crop_pct and crop_mode ("squash" | "center" | "border"); big_vision's resize_small(256)|central_crop(224) is
    # crop_pct 0.875, "center"
    c.pp.crop_pct = 1.0
    c.pp.crop_mode = "squash"
    c.pp.rand_augment = ""  # timm's RandAugment string, e.g. "rand-m9-mstd0.5-inc1" (DeiT); "": none
    c.pp.auto_augment = ""  # timm's AutoAugment instead: "original", "v0", "originalr", "v0r" (+ "-mstd0.5"); "": none
    c.pp.three_augment = False  # DeiT III's 3-Augment: one of grayscale, solarization, Gaussian blur per image
    c.pp.color_jitter = 0.0  # torchvision's ColorJitter(c, c, c) after it (DeiT III: 0.3); 0: none

    c.model = model_config("B/16")

    # FlexiViT: a patch size drawn each step from these (ints or (h, w)); () trains at the model's patch size.
    # The model's own patch size is the stored kernel's; its learned position table is stored at
    # config.model.posemb_grid (default: the grid at the stored patch size).
    c.flexi = ConfigDict()
    c.flexi.patch_sizes = ()
    c.flexi.probabilities = ()  # () : uniform

    # Fine-tuning: start from a workdir or an .npz instead of a fresh initialisation (vit_jax.checkpoint.adapt).
    c.init = ConfigDict()
    c.init.path = ""  # a vit_jax workdir or an .npz file; "" trains from scratch
    c.init.step = config_dict.placeholder(int)  # workdir step; None: the latest
    c.init.grid = config_dict.placeholder(tuple)  # grid the loaded position embeddings were trained for (npz,
    # non-square); None: from the workdir's config, or square
    c.init.dont_load = ()  # regexes over parameter paths to initialise afresh instead of loading
    c.init.head = "auto"  # "auto": re-initialise when the number of classes differs; "reinit"; "load"
    c.init.posemb = "resize"  # "resize" the learned table to the new grid, or "reinit" it
    c.init.posemb_method = "bilinear_align_corners"  # or "bilinear", "bicubic" (vit_jax.models.posemb)
    c.init.posemb_antialias = False
    c.init.patch_method = "bilinear"  # a new patch size's kernel: PI-resize inverting FlexiViT's bilinear resize, or
    # "bicubic" (timm's resample_patch_embed: antialiased)
    c.init.posemb_offset = 0.0  # DINOv2's interpolate_offset (0.1 for its models without registers): not antialiased
    c.init.posemb_aspect_preserving = False  # resize to a square of the longer side, keep its top-left part (timm's
    # pos_embed_ar_preserving: NaFlex's par models, RADIO)
    # An image checkpoint for a video model (config.model.tubelet_size): its patch kernel becomes a tubelet
    # kernel by "central" (the image kernel at the central frame, zeros elsewhere) or "average" (kernel / frames
    # at every frame), and its position table is repeated over time (vit_jax.checkpoint.inflate).
    c.init.inflation = "central"

    # Patch n' pack (NaViT, vit_jax.data.packing): each image at its own size, packed with others into sequences
    # of `seq_len` tokens (at most `max_images` images each); the model is vit_jax.models.navit.NaViT.
    c.packing = ConfigDict()
    c.packing.enabled = False
    c.packing.seq_len = 256
    c.packing.max_images = 16
    c.packing.image_sizes = ()  # (h, w) sizes drawn per image; (): each image's own, shrunk to fit max_grid
    c.packing.max_grid = config_dict.placeholder(tuple)  # largest (rows, columns); None: model.posemb_grid
    c.packing.drop_rate = (0.0, 0.0)  # training token dropping: (rate at the fewest tokens, rate at the most),
    # linear in between (NaViT's resolution-dependent dropping); (r, r): every image loses a fraction r
    c.packing.num_bins = 0  # sequences filled at once (first-fit); 0: the batch size

    # Optimisation.
    c.num_steps = 10_000  # 0: only evaluate (e.g. a loaded checkpoint at a new resolution)
    c.batch_size = 512
    c.accum_steps = 1  # the batch is split into this many micro-batches whose gradients are averaged
    c.eval_batch_size = 512
    # Also evaluate at these (h, w) resolutions (`eval/r24/accuracy`, ...): one model, its learned position table
    # resized to each input's grid in the forward pass (config.model.posemb_grid is set to the training grid).
    c.eval_image_sizes = ()
    # Other datasets scored at every evaluation (vit_jax.extra_evals): NAME -> dict(dataset=..., split=...[,
    # data_dir=..., classes=...]), logged as NAME/accuracy, ... (e.g. ImageNet-V2, ReaL, -R beside ImageNet's own)
    c.extra_evals = ConfigDict()
    c.loss = "cross_entropy"  # | "binary_cross_entropy": a sigmoid per class (DeiT III's --bce-loss)
    # binary cross-entropy: targets above this become 1, others 0 (DeiT III: 0.0, both Mixup images positive)
    c.bce_target_threshold = config_dict.placeholder(float)
    c.label_smoothing = 0.0
    # Repeated augmentation (DeiT's RASampler, timm's --aug-repeats; DeiT: 3): each image this many times in a row,
    # augmented anew each time; an epoch (as many examples as the split) then sees 1/repeats of the images
    c.repeated_augmentation = 1
    c.random_erasing = ConfigDict()  # timm's RandomErasing, on the model's inputs in the step (DeiT: prob 0.25)
    c.random_erasing.prob = 0.0
    c.random_erasing.mode = "pixel"  # "pixel": per-pixel normal noise | "rand": a normal colour per box | "const": 0
    c.random_erasing.min_area = 0.02
    c.random_erasing.max_area = 1 / 3
    c.random_erasing.min_aspect = 0.3
    c.random_erasing.min_count = 1
    c.random_erasing.max_count = 1
    c.mixup = ConfigDict()  # timm's Mixup/CutMix, in the step (DeiT: mixup_alpha 0.8, cutmix_alpha 1.0)
    c.mixup.mixup_alpha = 0.0  # > 0 turns Mixup on
    c.mixup.cutmix_alpha = 0.0  # > 0 turns CutMix on
    c.mixup.cutmix_minmax = config_dict.placeholder(tuple)  # (min, max) box side fractions instead of cutmix_alpha
    c.mixup.prob = 1.0  # of mixing a batch (or pair, or image)
    c.mixup.switch_prob = 0.5  # of CutMix rather than Mixup when both are on
    c.mixup.mode = "batch"  # what shares one draw: "batch" | "pair" | "elem"
    c.mixup.correct_lam = True  # CutMix's label weight is the area actually pasted
    # Knowledge distillation (DeiT; vit_jax/distillation.py): a trained teacher's predictions on the same images
    c.distillation = ConfigDict()
    c.distillation.teacher = ""  # a workdir, .npz or Hub checkpoint of the same classes; "": no distillation
    c.distillation.kind = "hard"  # "hard": the teacher's top class (DeiT's best) | "soft": KL at temperature tau
    c.distillation.alpha = 0.5  # the distillation term's weight (the labels': 1 - alpha)
    c.distillation.tau = 1.0
    c.optimizer = ConfigDict()
    c.optimizer.name = "adamw"  # "adamw" | "sgd" | "lamb" | "lion" | "adafactor" (vit_jax/optim/update_rules.py)
    c.optimizer.learning_rate = 1e-3  # peak, after warmup
    c.optimizer.schedule = "cosine"  # "cosine" | "linear" | "constant"
    c.optimizer.warmup_steps = 500
    c.optimizer.end_learning_rate = 0.0
    c.optimizer.weight_decay = 1e-4  # times the learning rate, every rule (big_vision's decoupled wd / its lr)
    c.optimizer.weight_decay_mask = r"(^|/)kernel$"  # regex over '/'-joined parameter paths: kernels only
    c.optimizer.b1 = 0.9  # adamw
    c.optimizer.b2 = 0.999  # adamw
    c.optimizer.eps = 1e-8  # adamw
    c.optimizer.mu_dtype = config_dict.placeholder(str)  # adamw's, lamb's first moment: "bfloat16" (big_vision's)
    c.optimizer.momentum = 0.9  # sgd
    c.optimizer.nesterov = False  # sgd
    c.optimizer.grad_clip_norm = 1.0  # global norm; 0 disables clipping
    # timm's Lamb (DeiT-III): its built-in clipping at global norm 1.0 is grad_clip_norm; trust_clip: timm's lambc
    c.optimizer.lamb = ConfigDict(dict(b1=0.9, b2=0.999, eps=1e-6, trust_clip=False))
    c.optimizer.lion = ConfigDict(dict(b1=0.9, b2=0.99))  # Lion's (timm's, optax's); its paper uses 0.98 at times
    # big_vision's scale_by_adafactor (its defaults); momentum None or 0: none
    c.optimizer.adafactor = ConfigDict(dict(decay_rate=0.8, beta2_cap=0.999, min_dim_size_to_factor=32,
                                            clipping_threshold=config_dict.placeholder(float), momentum=0.9,
                                            momentum_dtype="bfloat16", eps=1e-30))
    # e.g. 0.75: block i of L learns at 0.75**(L-i) times the rate, the embedding at 0.75**(L+1), the head at 1 (timm's)
    c.optimizer.layer_decay = config_dict.placeholder(float)
    c.optimizer.frozen = ""  # regex over parameter paths left untouched, e.g. "^(?!head/)" (a linear probe)
    # timm's ModelEmaV3: a moving average of the weights, evaluated and tested beside them; with it the best checkpoint
    # is the EMA's, and predict, export and fine-tuning from the workdir read the EMA weights
    c.ema = ConfigDict()
    c.ema.decay = 0.0  # e.g. 0.9998 (timm's --model-ema-decay); 0: none
    c.ema.warmup = False  # timm's --model-ema-warmup: decay min(decay, 1 - (1 + t) ** -2/3) at update t + 1

    # Loop, logging and checkpoints.
    c.log_every = 50
    c.eval_every = 500
    c.checkpoint_every = 500
    c.keep = 2  # the last `keep` checkpoints are kept, plus the best by eval accuracy
    # TensorBoard pictures (vit_jax.interpret: position-embedding similarity, patch filters, attention maps and
    # rollout on the first eval image, mean attention distance over `pictures_images` eval images):
    # "eval" at every evaluation, "last" at the final one only, "none".
    c.log_pictures = "eval"
    c.pictures_images = 8

    # Devices: mesh axes (-1: the rest) and parameter sharding rules (see vit_jax.sharding).
    c.mesh = (("data", -1),)
    c.sharding_rules = ((".*", "replicate"),)  # e.g. ((".*", "fsdp"),) or ((".*", "tp_fsdp"),) with a model axis
    c.fsdp_min_size = 2**14  # tensors with fewer elements stay replicated under fsdp rules
    # XLA flags added to XLA_FLAGS at start-up: "auto" = vit_jax's measured defaults for the model's dtype
    # (vit_jax.xla_flags); any other string = exactly those flags ("" = XLA's own defaults).
    c.xla_flags = "auto"
    # Host memory on the CPU backend (vit_jax.host_memory): one malloc arena for all threads, and the step's freed
    # buffers kept for the next step where they fit (ViT-Ti/16 at 224px: 1.8 -> 1.45 s a step, ~4x its XLA
    # temporaries resident). Small models lose more to threads sharing one arena than they gain: configs/digits.py
    # sets False.
    c.keep_host_memory = True
    return c


def cache_setting(value: Any) -> str | bool:
    """`config.cache_in_memory`: "auto", True or False; the command line's `--config.cache_in_memory=True` arrives
    as the string "True" (the field's type is that of "auto")."""
    if value == "auto" or isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise ValueError(f"cache_in_memory must be 'auto', True or False; got {value!r}")


def split_top_level(text: str, separator: str = ",") -> list[str]:
    """Splits on `separator` outside brackets and quotes: `"a=1,mesh=(('data',-1),)"` -> two items."""
    parts, depth, quote, current = [], 0, None, []
    for char in text:
        if quote:
            quote = None if char == quote else quote
        elif char in "'\"":
            quote = char
        elif char in "([{":
            depth += 1
        elif char in ")]}":
            depth -= 1
        elif char == separator and depth == 0:
            parts.append("".join(current))
            current = []
            continue
        current.append(char)
    parts.append("".join(current))
    return [p.strip() for p in parts if p.strip()]


def parse_value(text: str) -> Any:
    """A Python literal (`16`, `(8, 16)`, `True`, `None`), or else the text itself (`S/16`, `cifar10`)."""
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text


def set_field(config: ConfigDict, key: str, value: Any) -> None:
    """Sets a config path (`optimizer.learning_rate`, or a short key such as `variant`) to `value`."""
    path = SHORT_KEYS.get(key, key)
    parent_path, _, leaf = path.rpartition(".")
    parent = config
    for part in filter(None, parent_path.split(".")):
        parent = parent.get(part) if isinstance(parent, ConfigDict) else None
    if not isinstance(parent, ConfigDict) or leaf not in parent:
        raise ValueError(f"unknown config field {key!r}; short keys: {sorted(SHORT_KEYS)} or any config path, "
                         f"e.g. 'optimizer.learning_rate'")
    if leaf == "image_size" and isinstance(value, int):
        value = (value, value)
    try:
        parent[leaf] = value
    except TypeError as error:
        raise ValueError(f"config field {path!r}: {error}") from None


def config_arguments(arg: str | None) -> dict[str, str]:
    """A config file's argument `"key=value,key=value"` (brackets and quotes kept whole) as `{key: raw value}`."""
    items = {}
    for item in split_top_level(arg or ""):
        key, sep, raw = item.partition("=")
        if not sep or not key.strip():
            raise ValueError(f"config argument {item!r} is not key=value (in {arg!r})")
        items[key.strip()] = raw.strip()
    return items


def int_argument(items: Mapping[str, str], key: str, default: int | None = None) -> int | None:
    """A config file's integer argument (`res=32`), or `default` when it is not given."""
    if key not in items:
        return default
    value = parse_value(items[key])
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"config argument {key}={items[key]!r}: expected an integer >= 0")
    return value


def apply_overrides(config: ConfigDict, arg: str | dict[str, str] | None) -> ConfigDict:
    """Applies `"key=value,key=value"` (or its `config_arguments`); keys are config paths
    (`optimizer.learning_rate`) or `variant`."""
    items = arg if isinstance(arg, dict) else config_arguments(arg)
    for key, raw in items.items():
        try:
            set_field(config, key, parse_value(raw))
        except ValueError as error:
            raise ValueError(f"{error} (in {key}={raw})") from None
    return config


def config_module(path: str | Path) -> types.ModuleType:
    """A config file (`configs/digits.py`, a sweep config) loaded by path, as `--config=path` loads it."""
    path = Path(path)
    spec = importlib.util.spec_from_file_location(f"configs_{path.stem}", path)
    if spec is None or not path.is_file():
        raise FileNotFoundError(f"config file {str(path)!r} not found")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def load_config_file(path: str | Path, arg: str | None = None) -> ConfigDict:
    """`get_config(arg)` of a config file; configs build on each other with it
    (`load_config_file(Path(__file__).parent / "digits.py")`)."""
    return config_module(path).get_config(arg)


def save_config(config: ConfigDict, workdir: str | Path) -> None:
    (Path(workdir) / CONFIG_FILE).write_text(config.to_json_best_effort(indent=2))


class SavedConfigError(ValueError):
    """A workdir's config.json that cannot be read."""


def saved_config(workdir: str | Path) -> ConfigDict:
    """The config a workdir was trained with (tuples come back as lists)."""
    path = Path(workdir) / CONFIG_FILE
    try:
        saved = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise SavedConfigError(f"{path}: not a readable config ({error})") from None
    if not isinstance(saved, dict):
        raise SavedConfigError(f"{path}: expected a JSON object (a run's config); got {type(saved).__name__}")
    return ConfigDict(saved)
