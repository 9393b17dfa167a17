"""A small ViT on `cluttered_digits` (bundled: 64x64 canvases, one digit at a random size and place among clutter),
trained at 32x32 with patch 4 (an 8x8 grid, 64 tokens): the base recipe of the resolution-transfer study and the
patch-size sweep on data with detail at several scales.

    python -m vit_jax.main --config=configs/cluttered_digits.py --workdir=workdirs/cluttered_digits

Result: 65.28% test accuracy (seed 0; 1,440 held-out canvases, chance 10%) in 1 min 25 s on 2 cores of an AMD
EPYC (Zen 4), dataset already built (building it the first time takes about 15 s). A harder task than the 8x8
digits on purpose: the digit has to be found among look-alike clutter, at any size and place.
"""

from pathlib import Path

from vit_jax.config import apply_overrides, load_config_file, model_config


def get_config(arg: str | None = None):
    config = load_config_file(Path(__file__).resolve().parent / "digits.py")
    config.dataset = "cluttered_digits"
    config.image_size = (32, 32)  # the 64x64 canvases, downsampled (antialiased) for training
    config.pp.crop_padding = 2  # shifts of up to 2 pixels
    config.model = model_config("Ti/4", hidden_size=64, num_layers=2, num_heads=4, mlp_dim=128, classifier="gap")
    config.num_steps = 1500
    config.eval_every = 500
    config.checkpoint_every = 500
    config.log_every = 100
    return apply_overrides(config, arg)
