"""DeiT's recipe (Touvron et al. 2021, facebookresearch/deit's defaults) on any TFDS dataset, from scratch: a class
token and a learned table, AdamW at 5e-4 x batch / 512 with weight decay 0.05, 5 warmup epochs, cosine to 1e-5 over
300 epochs, no clipping, stochastic depth 0.1, label smoothing 0.1, Inception crop + flip + RandAugment
`rand-m9-mstd0.5-inc1` (bicubic), random erasing 0.25, Mixup 0.8 / CutMix 1.0 (switching half the time), ImageNet's
mean and std, repeated augmentation (3 repeats: DeiT's RASampler), a head initialised normal(0.02), evaluation
on the central 87.5%. Epochs are
ImageNet's at batch 1024 (1,251 steps each). Not as DeiT: warmup from 0 (DeiT's starts at 1e-6), the weights' moving
average its script keeps by default (`ema.decay=0.99996` turns it on here), and the repeats' places (consecutive in
the global batch, as RASampler on one GPU; on several it puts them on different GPUs at the same step: the same
global batch).

    python -m vit_jax.main --config=configs/deit.py:variant=S/16,dataset=imagenet2012 --workdir=workdirs/deit_s16

DeiT's distilled models (a distillation token, hard distillation from a teacher of the same classes: any checkpoint
vit_jax reads; DeiT's was a RegNetY-16GF, a ViT here):

    python -m vit_jax.main --config=configs/deit.py:variant=S/16,dataset=imagenet2012,model.classifier=token_distilled,distillation.teacher=hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k --workdir=workdirs/deit_s16_distilled

The short argument sets `variant`, `dataset`, `image_size` or any config path; the learning rate follows
`batch_size` unless `optimizer.learning_rate` is given. Splits as configs/vit.py.

Result measured here (2 CPU cores, no network, so on the bundled digits, with configs/digits.py's model size, crop,
learning rate and schedule; DeiT's rate rule gives 6.25e-5 at batch 64, too low for 1,200 steps: 36.67%):
    python -m vit_jax.main --config=configs/deit.py:variant=Ti/4,dataset=sklearn_digits,image_size=16,model.hidden_size=64,model.num_layers=2,model.num_heads=4,model.mlp_dim=128,batch_size=64,num_steps=1200,optimizer.learning_rate=2e-3,optimizer.warmup_steps=100,pp.train_crop=pad,pp.crop_padding=1,pp.flip=False,pp.crop_pct=1.0,pp.mean=None,pp.std=None,pp.value_range=(-1,1) --workdir=workdirs/deit_digits
gave 95.00% test accuracy (360 held-out images) in 49 s on a 2-core AMD EPYC Zen 4, start-up included; 95.28% in
47 s without the repeats (`repeated_augmentation=1`); configs/digits.py's light augmentation: 98.89%. This much
regularisation is for 300 ImageNet epochs, not 1,200 steps on 1,257 digits. ImageNet is not measured in this
environment (its data cannot be downloaded here); DeiT reports 79.8% for DeiT-S and 72.2% for DeiT-Ti.
"""

from pathlib import Path

from vit_jax.checkpoint.timm_layout import IMAGENET_MEAN, IMAGENET_STD
from vit_jax.config import apply_overrides, config_arguments, load_config_file

STEPS_PER_EPOCH = 1251  # ImageNet-1k's 1,281,167 training images at batch 1024


def get_config(arg: str | None = None):
    config = load_config_file(Path(__file__).resolve().parent / "vit.py", arg)  # splits, variant, dataset
    config.model.posemb, config.model.classifier, config.model.stochastic_depth = "learn", "token", 0.1
    config.model.head_init_std = 0.02  # timm's / DeiT's initialisation of the head
    config.num_steps = 300 * STEPS_PER_EPOCH
    config.batch_size = 1024
    config.optimizer.warmup_steps = 5 * STEPS_PER_EPOCH
    config.optimizer.end_learning_rate = 1e-5
    config.optimizer.weight_decay = 0.05
    config.optimizer.mu_dtype = None  # PyTorch's AdamW keeps its moments in float32
    config.optimizer.grad_clip_norm = 0.0
    config.label_smoothing = 0.1
    config.pp.value_range, config.pp.mean, config.pp.std = (0.0, 1.0), IMAGENET_MEAN, IMAGENET_STD
    config.pp.resize_method = "bicubic"
    config.pp.rand_augment = "rand-m9-mstd0.5-inc1"
    config.random_erasing.prob = 0.25
    config.mixup.mixup_alpha, config.mixup.cutmix_alpha = 0.8, 1.0
    config.repeated_augmentation = 3
    config = apply_overrides(config, arg)  # the argument wins over the recipe
    if "optimizer.learning_rate" not in config_arguments(arg):
        config.optimizer.learning_rate = 5e-4 * config.batch_size / 512
    return config
