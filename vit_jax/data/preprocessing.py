"""Per-example preprocessing in NumPy/PIL: resize, value range, and training augmentation (crop, flip).

Training: optional Inception crop (random area and aspect ratio, as torchvision's RandomResizedCrop) or DeiT III's
simple random crop (the shorter side resized to the size, reflect padding, a random window) -> resize to
`image_size` -> optional pad-and-crop (zero padding, then a random window of the original size, the CIFAR recipe)
-> optional horizontal flip -> optional RandAugment or AutoAugment (timm's, `vit_jax.augment`) -> optional 3-Augment
and ColorJitter (DeiT III's) -> value range (timm's and DeiT III's order). Evaluation: resize -> value range, so every example is seen whole; or, for
checkpoints evaluated that way (timm's `crop_pct`, `crop_mode`), resize larger then the central crop
(`vit_jax.data.eval_crop`).
Randomness comes from the `numpy.random.Generator` grain derives from the pipeline seed and the element's index,
so an example's augmentation is the same whenever it is read again (resumed runs included).

Videos `(T, H, W, C)` go through the same steps frame by frame, with one crop (and one flip) drawn per clip, so
that motion inside the clip is left as it was.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import numpy as np
from PIL import Image

from vit_jax.augment.auto_augment import AutoAugment
from vit_jax.augment.color_jitter import color_jitter
from vit_jax.augment.rand_augment import AFFINE_RESAMPLING, RANDOM_RESAMPLING, RandAugment
from vit_jax.augment.three_augment import three_augment
from vit_jax.data.encoded_image import EncodedImage
from vit_jax.data.eval_crop import check_crop, eval_view, shorter_side_size, size_for_max_patches

RESIZE_METHODS = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
    "lanczos": Image.Resampling.LANCZOS,
    "box": Image.Resampling.BOX,
    "hamming": Image.Resampling.HAMMING,
}
# "pad": squash to the size, zero-pad, a random window (the CIFAR recipe); "inception": torchvision's
# RandomResizedCrop; "simple": DeiT III's simple random crop (the shorter side to the size, reflect padding, a
# random window)
TRAIN_CROPS = ("none", "pad", "inception", "simple")
Picture = np.ndarray | Image.Image  # uint8 (H, W, C) / (T, H, W, C) arrays, or a decoded PIL image


def resize(image: Picture, size: tuple[int, int], method: str = "bilinear") -> Picture:
    """`(H, W, C)` uint8 -> `(h, w, C)` uint8 with PIL (which antialiases when it shrinks), a PIL image to a PIL
    image; `(T, H, W, C)` videos frame by frame."""
    h, w = size
    if isinstance(image, Image.Image):
        return image if image.size == (w, h) else image.resize((w, h), RESIZE_METHODS[method])
    if image.shape[-3:-1] == (h, w):
        return image
    if image.ndim == 4:
        return np.stack([resize(frame, size, method) for frame in image])
    channels = image.shape[-1]
    pil = Image.fromarray(image[:, :, 0] if channels == 1 else image)
    out = np.asarray(pil.resize((w, h), RESIZE_METHODS[method]))
    return out[:, :, None] if channels == 1 else out


def affine_pixels(images: np.ndarray, scale: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """uint8 `(..., W, C)` -> float32 `images * scale + offset` with per-channel `scale` and `offset`, over whole
    rows (broadcasting a length-C vector runs NumPy's inner loop C elements at a time: 6x slower at 224²)."""
    width, channels = images.shape[-2:]
    rows = images.reshape(*images.shape[:-2], width * channels).astype(np.float32)
    rows *= np.tile(np.broadcast_to(scale, (channels,)), width)
    rows += np.tile(np.broadcast_to(offset, (channels,)), width)
    return rows.reshape(images.shape)


def as_array(image: Picture) -> np.ndarray:
    """`(H, W, C)` uint8, channel axis kept for grayscale."""
    if not isinstance(image, Image.Image):
        return image
    array = np.asarray(image)
    return array[:, :, None] if array.ndim == 2 else array


def flip_left_right(image: Picture) -> Picture:
    """Mirrored; a PIL image in PIL (a strided NumPy copy of 3-byte pixels is ~10x slower)."""
    return image.transpose(Image.Transpose.FLIP_LEFT_RIGHT) if isinstance(image, Image.Image) else image[..., ::-1, :]


def pad_and_random_crop(image: np.ndarray, padding: int, rng: np.random.Generator) -> np.ndarray:
    """Zero-pad by `padding` on every side, then cut a random window of the original size (the same window for
    every frame of a `(T, H, W, C)` video)."""
    h, w = image.shape[-3:-1]
    top, left = rng.integers(-padding, padding + 1, size=2)  # where the window starts, in image coordinates
    out = np.zeros_like(image)  # slicing into zeros is ~4x faster than np.pad then slicing
    out[..., max(0, -top) : h - max(0, top), max(0, -left) : w - max(0, left), :] = image[
        ..., max(0, top) : h + min(0, top), max(0, left) : w + min(0, left), :
    ]
    return out


def reflect_pad_and_crop(image: np.ndarray, size: tuple[int, int], padding: int, top: int, left: int) -> np.ndarray:
    """Reflect-pad by `padding` on every side (NumPy's and torchvision's `reflect`: the edge pixel not repeated),
    then the `size` window at `(top, left)` of the padded image (the same for every frame of a video)."""
    widths = [(0, 0)] * (image.ndim - 3) + [(padding, padding), (padding, padding), (0, 0)]
    padded = np.pad(image, widths, mode="reflect") if padding else image
    return padded[..., top : top + size[0], left : left + size[1], :]


def inception_crop_box(
    height: int, width: int, scale: tuple[float, float], ratio: tuple[float, float], rng: np.random.Generator
) -> tuple[int, int, int, int]:
    """`(top, left, h, w)` of a crop with area fraction in `scale` and aspect ratio w/h in `ratio`
    (10 tries, then the central crop of the nearest allowed ratio: torchvision's RandomResizedCrop)."""
    area = height * width
    log_ratio = (math.log(ratio[0]), math.log(ratio[1]))
    for _ in range(10):
        target_area = area * rng.uniform(*scale)
        aspect = math.exp(rng.uniform(*log_ratio))
        w = int(round(math.sqrt(target_area * aspect)))
        h = int(round(math.sqrt(target_area / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(rng.integers(0, height - h + 1)), int(rng.integers(0, width - w + 1)), h, w
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w, h = width, int(round(width / ratio[0]))
    elif in_ratio > ratio[1]:
        h, w = height, int(round(height * ratio[1]))
    else:
        w, h = width, height
    return (height - h) // 2, (width - w) // 2, h, w


def height_width(image: Picture) -> tuple[int, int]:
    return (image.size[1], image.size[0]) if isinstance(image, Image.Image) else image.shape[-3:-1]


def crop(image: Picture, top: int, left: int, h: int, w: int) -> Picture:
    if isinstance(image, Image.Image):
        return image.crop((left, top, left + w, top + h))
    return image[..., top : top + h, left : left + w, :]


def _numbers(values: Any, count: int) -> bool:
    """`values` is a sequence of `count` finite real numbers."""
    return (isinstance(values, tuple | list) and len(values) == count
            and all(isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v) for v in values))


@dataclasses.dataclass(frozen=True)
class Preprocess:
    """Turns a decoded TFDS example into `{'image': float32 (h, w, C), 'label': int32}` (`(T, h, w, C)` for a
    video).

    Pixels go 0..255 -> `value_range`, then, for checkpoints trained that way (timm's ImageNet or CLIP
    statistics), `(x - mean) / std` per channel; `channels=3` turns grayscale images into RGB ones (the gray value
    in every channel), so RGB checkpoints fine-tune on grayscale data as timm feeds them. `crop_pct` < 1 and
    `crop_mode` shape the evaluation view as timm's `transforms_imagenet_eval` (training is not affected).
    """

    image_size: tuple[int, int]
    value_range: tuple[float, float] = (-1.0, 1.0)
    resize_method: str = "bilinear"
    train_crop: str = "none"
    crop_padding: int = 0
    crop_scale: tuple[float, float] = (0.08, 1.0)
    crop_ratio: tuple[float, float] = (3 / 4, 4 / 3)
    flip: bool = False
    mean: tuple[float, ...] | None = None
    std: tuple[float, ...] | None = None
    channels: int | None = None  # None: as stored
    crop_pct: float = 1.0
    crop_mode: str = "squash"
    crop_rounding: str = "round"  # an odd margin's central crop: "round" (timm, torchvision) or "floor" (transformers)
    # (patch side, most patches): NaFlex's evaluation view instead, each image resized to its own aspect ratio with
    # as many whole patches as fit (SigLIP 2's image processor); images then differ in size, so this is for
    # evaluating images one by one (`predict`), not for batched datasets
    max_patches: tuple[int, int] | None = None
    # training's resampling (None: resize_method); "random": bilinear or bicubic, drawn for each image's resize and
    # each geometric RandAugment/AutoAugment operation (timm's default --train-interpolation)
    train_resize_method: str | None = None
    rand_augment: RandAugment | None = None  # training only; its rotations, shears and shifts resample as training
    auto_augment: AutoAugment | None = None  # training only, instead of RandAugment; resamples as it does
    three_augment: bool = False  # training only: DeiT III's 3-Augment (vit_jax.augment.three_augment)
    color_jitter: float = 0.0  # training only: torchvision's ColorJitter(c, c, c) (vit_jax.augment.color_jitter)

    def __post_init__(self) -> None:
        if not isinstance(self.three_augment, bool):
            raise ValueError(f"three_augment must be True or False; got {self.three_augment!r}")
        jitter = self.color_jitter
        if isinstance(jitter, bool) or not isinstance(jitter, int | float) or not 0 <= jitter < math.inf:
            raise ValueError(f"color_jitter must be a number >= 0 (0: none; DeiT III: 0.3); got {jitter!r}")
        if self.resize_method not in RESIZE_METHODS:
            raise ValueError(f"resize_method must be one of {tuple(RESIZE_METHODS)}; got {self.resize_method!r}")
        if self.train_resize_method not in (None, "random", *RESIZE_METHODS):
            raise ValueError(f"train_resize_method must be None (resize_method), 'random' or one of "
                             f"{tuple(RESIZE_METHODS)}; got {self.train_resize_method!r}")
        policy = self.rand_augment or self.auto_augment
        if self.rand_augment is not None and self.auto_augment is not None:
            raise ValueError("rand_augment and auto_augment are two policies for the same place: give one")
        if policy is not None and self.training_resize not in (*AFFINE_RESAMPLING, "random"):
            raise ValueError(f"resize_method={self.training_resize!r}: {type(policy).__name__}'s rotations, shears "
                             f"and translations resample with it, and PIL's affine transforms take "
                             f"{tuple(AFFINE_RESAMPLING)} (or 'random' for training)")
        if self.train_crop not in TRAIN_CROPS:
            raise ValueError(f"train_crop must be one of {TRAIN_CROPS}; got {self.train_crop!r}")
        if any(v is not None and not (isinstance(v, tuple | list) and _numbers(v, len(v))) for v in (self.mean, self.std)):
            raise ValueError(f"mean and std must be sequences of numbers; got mean={self.mean!r}, std={self.std!r}")
        if (self.mean is None) != (self.std is None) or (self.std is not None and (
                len(self.mean) != len(self.std) or min(self.std) <= 0)):
            raise ValueError(f"mean and std must be given together, as many of each, std > 0; got mean={self.mean!r}, "
                             f"std={self.std!r}")
        if self.channels not in (None, 1, 3):
            raise ValueError(f"channels must be None (as stored), 1 or 3; got {self.channels!r}")
        check_crop(self.crop_pct, self.crop_mode, self.crop_rounding)
        if self.max_patches is not None and not (_numbers(self.max_patches, 2) and min(self.max_patches) >= 1):
            raise ValueError(f"max_patches must be (patch side, most patches), positive integers; got "
                             f"{self.max_patches!r}")
        if not _numbers(self.value_range, 2) or not self.value_range[0] < self.value_range[1]:
            raise ValueError(f"value_range must be (low, high) with low < high; got {self.value_range!r}")
        if self.mean is not None and self.channels is not None and len(self.mean) not in (1, self.channels):
            raise ValueError(f"mean and std must have 1 or channels={self.channels} values; got {len(self.mean)}")
        if not isinstance(self.crop_padding, int) or not 0 <= self.crop_padding <= max(self.image_size):
            raise ValueError(f"crop_padding must be an int in [0, {max(self.image_size)}] (the image side); got "
                             f"{self.crop_padding!r}")
        if not _numbers(self.crop_scale, 2) or not 0 < self.crop_scale[0] <= self.crop_scale[1] <= 1:
            raise ValueError(f"crop_scale must be (min, max) area fractions with 0 < min <= max <= 1; got "
                             f"{self.crop_scale!r}")
        if not _numbers(self.crop_ratio, 2) or not 0 < self.crop_ratio[0] <= self.crop_ratio[1]:
            raise ValueError(f"crop_ratio must be (min, max) aspect ratios with 0 < min <= max; got "
                             f"{self.crop_ratio!r}")

    def affine(self) -> tuple[np.ndarray, np.ndarray]:
        """float32 `(scale, offset)`, per channel (or scalars): the model's values are `uint8 * scale + offset`,
        `value_range` then `(x - mean) / std` folded into one step."""
        lo, hi = self.value_range
        scale, offset = np.float64((hi - lo) / 255.0), np.float64(lo)
        if self.mean is not None:
            mean, std = np.asarray(self.mean, np.float64), np.asarray(self.std, np.float64)
            scale, offset = scale / std, (offset - mean) / std
        return np.asarray(scale, np.float32), np.asarray(offset, np.float32)

    def mean_colour(self) -> tuple[float, ...] | None:
        """`mean` as a colour in 0..1 (what the model's inputs centre on), or None without one."""
        lo, hi = self.value_range
        return None if self.mean is None else tuple((m - lo) / (hi - lo) for m in self.mean)

    def check_channels(self, stored: int) -> None:
        """Images of `stored` channels can be fed as `channels` ones: the same number, or grayscale."""
        if self.channels is not None and stored not in (1, self.channels):
            raise ValueError(f"channels={self.channels}: cannot turn {stored}-channel images into "
                             f"{self.channels}-channel ones (only grayscale is converted)")

    def _with_channels(self, images: Any, repeat: Any) -> Any:
        if self.channels is not None and images.shape[-1] != self.channels:
            self.check_channels(images.shape[-1])
            images = repeat(images, self.channels, axis=-1)
        return images

    def pixels(self, images: np.ndarray) -> np.ndarray:
        """uint8 images (any leading axes, channels last) -> the float32 values the model takes."""
        return affine_pixels(self._with_channels(images, np.repeat), *self.affine())

    def pixels_on_device(self, images: Any) -> Any:
        """`pixels` in JAX, inside a compiled step: the input pipeline then ships uint8 batches (a quarter of the
        bytes to copy between processes and to the accelerator) and does no float arithmetic per image."""
        import jax.numpy as jnp

        scale, offset = self.affine()
        return self._with_channels(images, jnp.repeat).astype(jnp.float32) * scale + offset

    def resized(self, example: dict[str, Any]) -> dict[str, Any]:
        """`example` with its image at `image_size` (evaluation's view: with `crop_pct`, the central crop of a
        larger resize): the deterministic first step of `eval`, and of `train` unless it crops first (Inception
        crop). A source held in memory applies it once (`resize_once`), not per read."""
        method = self.resize_method
        if isinstance(example["image"], EncodedImage):
            example = {**example, "image": example["image"].array()}
        if self.max_patches is not None:
            size = size_for_max_patches(height_width(example["image"]), *self.max_patches)
            return {**example, "image": resize(example["image"], size, method)}
        if self.crop_pct == 1.0 and self.crop_mode == "squash":
            return {**example, "image": resize(example["image"], self.image_size, method)}
        fill = self.mean_colour() or (0.0,)
        view = eval_view(example["image"], tuple(self.image_size), self.crop_pct, self.crop_mode,
                         lambda image, size: resize(image, size, method), fill, self.crop_rounding)
        return {**example, "image": view}

    def resize_once(self, training: bool) -> bool:
        """Whether this path's resize may be done once per example ahead of time: nothing random comes before it,
        and doing it again changes nothing (a central crop of a larger resize would crop twice)."""
        if training:
            return (self.train_crop in ("none", "pad") and self.crop_pct == 1.0 and self.crop_mode == "squash"
                    and self.training_resize == self.resize_method)
        return self.crop_pct == 1.0 and self.max_patches is None

    @property
    def training_resize(self) -> str:
        return self.train_resize_method or self.resize_method

    def train(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        view = self.train_view(example, rng)
        return {"image": self.pixels(view["image"]), "label": view["label"]}

    def train_view(self, example: dict[str, Any], rng: np.random.Generator) -> dict[str, np.ndarray]:
        """`train` before `pixels`: the augmented uint8 image (for `pixels_on_device`)."""
        image = example["image"]
        if isinstance(image, EncodedImage):  # crop and resize the decoded picture, no whole-image array
            image = image.picture()
        if self.train_crop == "inception":
            top, left, h, w = inception_crop_box(*height_width(image), self.crop_scale, self.crop_ratio, rng)
            image = crop(image, top, left, h, w)
        method = self.training_resize
        if method == "random":  # after the crop box, as timm's RandomResizedCropAndInterpolation
            method = RANDOM_RESAMPLING[int(rng.integers(len(RANDOM_RESAMPLING)))]
        if self.train_crop == "simple":  # DeiT III's SRC: torchvision's Resize(size), RandomCrop(size, padding, reflect)
            image = as_array(resize(image, shorter_side_size(height_width(image), self.image_size), method))
            h, w = image.shape[-3:-1]
            top = int(rng.integers(0, h + 2 * self.crop_padding - self.image_size[0] + 1))
            left = int(rng.integers(0, w + 2 * self.crop_padding - self.image_size[1] + 1))
            image = reflect_pad_and_crop(image, self.image_size, self.crop_padding, top, left)
        image = resize(image, self.image_size, method)  # training squashes: crop_pct is evaluation's
        if self.train_crop == "pad" and self.crop_padding:
            image = pad_and_random_crop(as_array(image), self.crop_padding, rng)
        if self.flip and rng.random() < 0.5:
            image = flip_left_right(image)
        if (policy := self.rand_augment or self.auto_augment) is not None:
            # uncovered pixels take the mean colour (timm's img_mean), else mid-gray
            fill = tuple(max(0, min(255, round(255 * m))) for m in self.mean_colour() or (128 / 255,))
            image = policy(image, rng, fill=fill, resample=self.training_resize)
        if self.three_augment:
            image = three_augment(image, rng)
        if self.color_jitter:
            image = color_jitter(image, self.color_jitter, rng)
        return {"image": np.ascontiguousarray(as_array(image)), "label": np.int32(example["label"])}

    def eval(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        return self._output(self.resized(example)["image"], example["label"])

    def _output(self, image: np.ndarray, label: Any) -> dict[str, np.ndarray]:
        return {"image": self.pixels(image), "label": np.int32(label)}
