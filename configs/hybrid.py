"""A small hybrid (ResNet stem + ViT, the ViT paper's R50+ViT recipe scaled down) on scikit-learn's digits, on CPU.

    python -m vit_jax.main --config=configs/hybrid.py --workdir=workdirs/hybrid

Result: 99.2% test accuracy (360 held-out images; 98.1% with seed=1; at least 97%) in about 2 minutes on 2 CPU
cores, compile included (measured on 2 cores shared with other jobs). Model selection uses the validation split.

The 8x8 digits are upsampled to 16x16 as in configs/digits.py; the stem (root conv + max pool, then one bottleneck
stage, 32 channels wide inside: `resnet_width_factor=0.5`, one GroupNorm group per channel) turns them into a 4x4
map of 128 channels, which the embedding cuts into 1x1 patches: 16 tokens, each covering 4x4 image pixels, as the
4x4 patches of configs/digits.py do.
"""

from pathlib import Path

from vit_jax.config import apply_overrides, load_config_file, model_config


def get_config(arg: str | None = None):
    # the data, preprocessing, optimizer and loop of the digits run
    config = load_config_file(Path(__file__).resolve().parent / "digits.py")
    config.batch_size = 128  # the batch and shifts its result above was measured with (configs/digits.py now
    config.pp.crop_padding = 2  # uses 64 and 1)
    config.model = model_config("Ti/1", hidden_size=64, num_layers=4, num_heads=4, mlp_dim=128, classifier="gap",
                                resnet_num_layers=(1,), resnet_width_factor=0.5)
    config.num_steps = 500  # 1000 steps: 99.4% test (seed 0)
    return apply_overrides(config, arg)
