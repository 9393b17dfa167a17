"""DeiT III's 3-Augment (Touvron et al. 2022, facebookresearch/deit `augment.py`): after the crop and the flip,
each image gets one of grayscale, solarization and Gaussian blur, chosen uniformly (torchvision's `RandomChoice`).

- grayscale: torchvision's `Grayscale(3)` (PIL's luma, in all three channels); a grayscale image stays as it is;
- solarization: PIL's `ImageOps.solarize` (pixels at or above 128 inverted);
- Gaussian blur: PIL's `GaussianBlur` of a radius uniform in [0.1, 2.0].
DeiT III follows it with `ColorJitter(0.3, 0.3, 0.3)`: `pp.color_jitter` (`vit_jax.augment.color_jitter`).
The draws come from the example's generator (repeated when it is read again); a video's frames get the same one.
"""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageFilter, ImageOps

from vit_jax.augment.pictures import Picture, map_pictures

CHOICES = ("grayscale", "solarize", "gaussian_blur")
BLUR_RADIUS = (0.1, 2.0)

Plan = tuple[str, float | None]  # the operation, and the blur's radius


def draw(rng: np.random.Generator) -> Plan:
    choice = CHOICES[int(rng.integers(len(CHOICES)))]
    return choice, float(rng.uniform(*BLUR_RADIUS)) if choice == "gaussian_blur" else None


def operate(plan: Plan, image: Image.Image) -> Image.Image:
    choice, radius = plan
    if choice == "grayscale":
        return image if image.mode == "L" else Image.merge("RGB", [image.convert("L")] * 3)
    if choice == "solarize":
        return ImageOps.solarize(image)
    return image.filter(ImageFilter.GaussianBlur(radius=radius))


def three_augment(picture: Picture, rng: np.random.Generator) -> Picture:
    plan = draw(rng)
    return map_pictures(lambda image: operate(plan, image), picture, "3-Augment")
