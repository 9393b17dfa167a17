"""A ViT of any size on any TFDS dataset, from scratch: the recipe of "Better plain ViT baselines" (big_vision):
AdamW (big_vision's decoupled weight decay 1e-4, first moment in bfloat16), cosine schedule, sin-cos position
embeddings, global average pooling, Inception crop and flips, RandAugment(2, 10), Mixup (alpha 0.2, every batch),
evaluation on the central 87.5% (resize to 256, crop 224).
RandAugment here is timm's port of the TensorFlow RandAugment big_vision runs (`rand-m10-n2`: its magnitude scale
and most of its operations; TensorFlow's also has Cutout, translates by absolute pixels and draws each operation's
probability), so the recipe is big_vision's up to those details. DeiT's recipe: configs/deit.py.

    python -m vit_jax.main --config=configs/vit.py:variant=S/16,dataset=cifar10 --workdir=workdirs/s16_cifar10

The short argument sets `variant`, `dataset`, `image_size` or any config path (`optimizer.learning_rate=3e-4`).
Splits default per dataset (below): model selection on a held-out slice of train, the test split once at the
end. Other TFDS datasets must first be prepared in ArrayRecord format (`tfds build NAME
--file_format=array_record`, which needs TensorFlow and the network once); vit_jax says so when one is missing.

Result measured here (2 CPU cores, no network, so on the bundled digits):
    python -m vit_jax.main --config=configs/vit.py:variant=Ti/4,dataset=sklearn_digits,image_size=16,num_steps=2000,batch_size=128,pp.train_crop=pad,pp.crop_padding=2,pp.flip=False,pp.rand_augment=,mixup.mixup_alpha=0,pp.crop_pct=1.0,pp.crop_mode=squash,optimizer.warmup_steps=100,optimizer.learning_rate=2e-3,optimizer.weight_decay=0.05,optimizer.mu_dtype=None --workdir=workdirs/vit_digits
(the augmentation and optimizer state of that time: no RandAugment, no Mixup, Adam's moments in float32) gave 98.61% test accuracy in 22 minutes on 2 CPU cores (ViT-Ti has 40x the parameters of configs/digits.py's
model, which reaches 99.7% in 2 minutes: on 1,257 training images, bigger is not better).
CIFAR-10 and ImageNet figures are not measured in this environment (their data cannot be downloaded here).
"""

from vit_jax.config import apply_overrides, base_config, config_arguments, model_config, parse_value

# (train, eval, test) splits: evaluation for model selection never touches the test split.
SPLITS = {
    "sklearn_digits": ("train", "validation", "test"),
    "imagenet2012": ("train[:99%]", "train[99%:]", "validation"),  # big_vision's minival; test on validation
}
DEFAULT_SPLITS = ("train[:98%]", "train[98%:]", "test")


def get_config(arg: str | None = None):
    args = config_arguments(arg)
    dataset = str(parse_value(args.get("dataset", "cifar10")))

    config = base_config()
    config.dataset = dataset
    config.train_split, config.eval_split, config.test_split = SPLITS.get(dataset, DEFAULT_SPLITS)
    config.image_size = (224, 224)
    config.model = model_config("S/16", posemb="sincos2d", classifier="gap")

    config.num_steps = 90_000
    config.batch_size = 1024
    config.eval_batch_size = 1024
    config.optimizer.learning_rate = 1e-3
    config.optimizer.warmup_steps = 10_000
    # big_vision's wd 1e-4 is decoupled from the learning rate (w -= 1e-4 * schedule(t) * w); vit_jax's weight decay is
    # times the rate (PyTorch's AdamW), so it is 1e-4 / lr (0.1 at 1e-3), following any learning rate given
    config.optimizer.weight_decay = 1e-4 / config.optimizer.get_ref("learning_rate")
    config.optimizer.mu_dtype = "bfloat16"  # big_vision keeps Adam's first moment in bfloat16
    config.optimizer.grad_clip_norm = 1.0
    config.pp.rand_augment = "rand-m10-n2"
    config.pp.crop_pct, config.pp.crop_mode = 0.875, "center"  # evaluated as big_vision: resize_small(256), crop 224
    config.mixup.mixup_alpha = 0.2
    config.log_every = 100
    config.eval_every = 2_000
    config.checkpoint_every = 2_000
    return apply_overrides(config, arg)
