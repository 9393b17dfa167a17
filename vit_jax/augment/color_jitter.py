"""torchvision's `ColorJitter(c, c, c)` on PIL images (DeiT III's, after 3-Augment): brightness, contrast and
saturation, in a random order, each by a factor uniform in [max(0, 1 - c), 1 + c] (PIL's `ImageEnhance`, as
torchvision's PIL path). Hue is not jittered (DeiT III leaves it). A video's frames get the same factors."""

from __future__ import annotations

import numpy as np
from PIL import Image, ImageEnhance

from vit_jax.augment.pictures import Picture, map_pictures

ENHANCERS = {"brightness": ImageEnhance.Brightness, "contrast": ImageEnhance.Contrast,
             "saturation": ImageEnhance.Color}

Plan = tuple[tuple[str, float], ...]  # (what, factor) in the order applied


def draw(strength: float, rng: np.random.Generator) -> Plan:
    order = rng.permutation(len(ENHANCERS))
    factors = rng.uniform(max(0.0, 1.0 - strength), 1.0 + strength, size=len(ENHANCERS))
    names = tuple(ENHANCERS)
    return tuple((names[i], float(factors[i])) for i in order)


def operate(plan: Plan, image: Image.Image) -> Image.Image:
    for name, factor in plan:
        image = ENHANCERS[name](image).enhance(factor)
    return image


def color_jitter(picture: Picture, strength: float, rng: np.random.Generator) -> Picture:
    plan = draw(strength, rng)
    return map_pictures(lambda image: operate(plan, image), picture, "ColorJitter")
