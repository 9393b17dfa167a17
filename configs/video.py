"""A tiny ViViT on `moving_digits`: which way does the digit move? (8 frames of 16x16, 4 directions, no network.)

    python -m vit_jax.main --config=configs/video.py --workdir=/tmp/video_run

Result: 100% test accuracy (1,440 held-out clips of held-out digits; chance 25%; at least 98%) in under a minute
on 2 CPU cores (54 s measured, compile included, 300 steps; eval accuracy 98.6% after 100 steps). Building the
dataset on first use adds about 2 s.

Tubelets of 2 frames x 4x4 pixels make a 4x4x4 grid of 64 tokens, with spatio-temporal attention over all of them
(`config.model.tubelet_size`; see `vit_jax.models.tubelet`). A single frame says nothing about the direction (the
digit starts anywhere and wraps around the edges), so the model has to compare frames.

Starting from an image model instead (ViViT's inflation, `vit_jax.checkpoint.inflate`): train configs/digits.py
with this model's depth (4 layers; the default digits run trains 2), then give its workdir; its 4x4 patch kernel
becomes a 2x4x4 tubelet kernel and its position table is repeated over the 4 temporal positions (the 10-class
head is re-initialised for the 4 directions):

    python -m vit_jax.main --config=configs/digits.py:model.num_layers=4,num_steps=2000,pp.crop_padding=2 \
        --workdir=/tmp/digits_run
    python -m vit_jax.main --config=configs/video.py:init.path=/tmp/digits_run,init.inflation=central \\
        --workdir=/tmp/video_inflated

Measured: 99.9% test accuracy with `central` (but slower than from scratch: 49% eval accuracy after 100 steps
against 99%), 53% with `average`. The digits model's features are about appearance, and averaging a tubelet's
frames blurs away the motion this task is about; ViViT also found central-frame inflation best.
"""

from vit_jax.config import apply_overrides, base_config, model_config


def get_config(arg: str | None = None):
    config = base_config()
    config.dataset = "moving_digits"
    config.train_split, config.eval_split, config.test_split = "train", "validation", "test"
    config.image_size = (16, 16)  # per frame, as stored
    config.pp.train_crop = "pad"  # the same shift of up to 2 pixels for every frame of a clip
    config.pp.crop_padding = 2
    config.pp.flip = False  # a flip would turn left into right: the label is the direction

    # The digits model at 4 layers, with tubelets: a configs/digits.py checkpoint at that depth inflates into it.
    config.model = model_config("Ti/4", hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128, classifier="gap",
                                tubelet_size=2)

    config.num_steps = 300
    config.batch_size = 64
    config.eval_batch_size = 256
    config.optimizer.learning_rate = 2e-3
    config.optimizer.warmup_steps = 50
    config.optimizer.weight_decay = 0.05

    config.xla_flags = ""  # XLA's defaults, as configs/digits.py
    config.keep_host_memory = False  # a small model, as configs/digits.py
    config.log_every = 50
    config.eval_every = 100
    config.checkpoint_every = 100
    config.log_pictures = "none"  # attention pictures are drawn for images only
    return apply_overrides(config, arg)
