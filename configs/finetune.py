"""Fine-tune a trained ViT at a new resolution and/or patch size (or on another dataset).

    python -m vit_jax.main --config=configs/finetune.py:init=workdirs/digits,res=32,steps=300 --workdir=workdirs/digits_ft32

    python -m vit_jax.main --config=configs/finetune.py:init=hf-hub:timm/vit_small_patch14_dinov2.lvd142m,res=448,dataset=NAME --workdir=workdirs/dinov2_448

Arguments: `init` (a vit_jax workdir, an `.npz` in vision_transformer's or big_vision's layout, `FILE.npz:KEY` for
one model of several such as a two-tower checkpoint's `img`, or a Hub checkpoint in timm's or transformers' layout:
`hf-hub:OWNER/NAME`, a Hub-layout directory or a `.safetensors` file, docs/hub_checkpoints.md), `res` (the new
resolution), `patch` (a new patch size: the kernel is PI-resized), `steps` (0 evaluates without training), `variant`
(another architecture than the `.npz`'s own, which is read off its shapes; a workdir brings its own), `dataset`, and
any config path (`init.posemb=reinit`, `optimizer.learning_rate=0.003`, ...). From a workdir, the dataset, splits,
preprocessing and picture schedule (`log_pictures`) of the original run are the defaults; an `.npz` brings its
architecture and the resolution of its square table; a Hub checkpoint brings its architecture, resolution and
mean/std (grayscale images are fed as RGB; a `pre_logits` layer, transformers' ViT pooler, is dropped). The position
embeddings are resized to the new grid (`init.posemb_method`, default align-corners bilinear as vision_transformer
and big_vision; for a Hub checkpoint its own rule: bicubic with antialiasing as timm's `resample_abs_pos_embed`,
plain bicubic as transformers' `interpolate_pos_encoding`, DINOv2's own with its 0.1 offset, a NaFlex checkpoint's
own, bilinear antialiased for big_vision's NaFlex `.npz`; a new patch size PI-resizes a Hub checkpoint's kernel as
timm's `resample_patch_embed` does, `init.patch_method=bicubic`); a model trained at any resolution (NaFlex) starts
at its evaluation size; a head for
another number of classes, or for a checkpoint without one, is initialised afresh; the step-0 evaluation logged in
metrics.jsonl is the loaded model before any fine-tuning step. Recipe: SGD with momentum, cosine decay, no weight
decay, clipping at 1 (vision_transformer's); `optimizer.layer_decay=0.75` (timm's layer-wise learning-rate decay)
and `optimizer.frozen='^(?!head/)'` (a linear probe) as the checkpoint's recipe asks (docs/finetuning.md).

Result: the digits demonstration (`python scripts/finetune_demo.py`: the model of configs/digits.py trained at
16x16 with patch 4, then moved), test accuracy on the 360 held-out images, measured 2026-12-05 with the current
default recipe (2 layers, 1,200 steps; 1 min 9 s in all on a 2-core Zen 4):

| | 16x16 (trained) | 32x32, posemb resized | 32x32, posemb re-initialised | after 300 steps at 32x32 |
|---|---:|---:|---:|---:|
| patch 4 | 98.89% | 79.72% | 25.56% | 99.17% |
| patch 8 (kernel PI-resized from 4) |  | 98.61% | 59.44% | 98.89% |
"""

from vit_jax.checkpoint.hub import is_timm_spec
from vit_jax.checkpoint.npz import split_submodel
from vit_jax.checkpoint.pretrained import is_workdir, timm_architecture
from vit_jax.checkpoint.trained_model import NpzArchitecture, npz_architecture
from vit_jax.config import (
    apply_overrides,
    base_config,
    config_arguments,
    int_argument,
    model_config,
    model_config_from,
    saved_config,
)
from vit_jax.models.posemb import antialiased

# Short arguments of this config; the rest are config paths.
SHORT = ("init", "res", "patch", "steps", "variant")


def get_config(arg: str | None = None):
    items = config_arguments(arg)
    short = {key: items.pop(key) for key in SHORT if key in items}
    init = short.get("init", "")
    if arg and not init:
        raise ValueError(f"init= is missing (in {arg!r}): the checkpoint to fine-tune, a vit_jax workdir, an .npz or "
                         f"hf-hub:OWNER/NAME")

    config = base_config()
    config.init.path = init
    if init and is_workdir(init):
        source = saved_config(init)
        config.model = model_config_from(source.model)
        for field in ("dataset", "data_dir", "train_split", "eval_split", "test_split", "image_size"):
            config[field] = tuple(source[field]) if isinstance(source[field], list) else source[field]
        config.pp.update({k: tuple(v) if isinstance(v, list) else v for k, v in source.pp.items()})
        # the settings measured for that model's size: host memory, and how often its pictures are worth drawing
        config.keep_host_memory = source.get("keep_host_memory", True)
        config.log_pictures = source.get("log_pictures", config.log_pictures)
    elif init and is_timm_spec(init):
        arch = timm_architecture(init)
        config.model = model_config(arch.variant, **arch.model_options)
        config.image_size = arch.fine_tuning_size
        config.pp.update(arch.preprocessing)
        config.pp.channels = arch.channels
        # the table resized as the checkpoint's own model resizes it (timm's resample_abs_pos_embed: bicubic,
        # antialiased; transformers' interpolate_pos_encoding: bicubic; NaFlexVit's and DINOv2's their own)
        config.init.posemb_method = config.model.posemb_resize
        config.init.posemb_antialias = antialiased(config.model.posemb_resize, config.model.posemb_antialias)
        config.init.posemb_aspect_preserving = config.model.posemb_aspect_preserving
        config.init.posemb_offset = config.model.posemb_resize_offset
        config.init.patch_method = "bicubic"  # a new patch size as timm's loader resizes the kernel
    elif init and "variant" not in short and (npz := _npz_architecture(init)):
        # vision_transformer's fine-tuning models have no pre_logits: adapt drops the file's, as its loader does
        config.model = model_config(npz.variant, **{**npz.model_options, "representation_size": None})
        config.image_size = npz.image_size or config.image_size
        config.pp.channels = npz.channels
        config.init.posemb_method, config.init.posemb_antialias = npz.posemb_resizing
    else:
        config.model = model_config(short.get("variant", "B/16"))
    if "variant" in short:
        config.model.variant = short["variant"]
    if "res" in short:
        config.image_size = (int_argument(short, "res"),) * 2
    if "patch" in short:
        config.model.patch_size = (int_argument(short, "patch"),) * 2

    config.num_steps = int_argument(short, "steps", 500)
    config.batch_size = 128
    config.eval_batch_size = 256
    config.optimizer.name = "sgd"
    config.optimizer.momentum = 0.9
    config.optimizer.learning_rate = 0.03  # vision_transformer's fine-tuning rate
    config.optimizer.weight_decay = 0.0
    config.optimizer.warmup_steps = min(50, config.num_steps // 10)
    config.optimizer.grad_clip_norm = 1.0
    config.log_every = 25
    config.eval_every = max(config.num_steps // 4, 1)
    config.checkpoint_every = max(config.num_steps // 4, 1)
    return apply_overrides(config, items)


def _npz_architecture(init: str) -> NpzArchitecture | None:
    """An `.npz`'s architecture from its shapes; None where the file is missing or unreadable (the config's checks
    say so, naming it)."""
    if not split_submodel(init)[0].is_file():
        return None
    try:
        return npz_architecture(init)
    except ValueError:
        return None
