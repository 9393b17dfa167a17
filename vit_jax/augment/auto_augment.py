"""AutoAugment as timm implements it (`timm.data.auto_augment.auto_augment_transform`), on PIL images.

A config names it with timm's string: `original` (the ImageNet policy of Cubuk et al. 2019), `v0` (TPU
EfficientNet's), their `r` variants (`originalr`, `v0r`: Posterize discards more bits as the magnitude grows,
Google research's variant), optionally with `-mstd<std>` magnitude noise (timm's). Each image gets one sub-policy,
chosen uniformly; each of its operations applies with its probability at its magnitude, with the operations and
arguments of `vit_jax.augment.rand_augment` (timm's). timm's `3a` policy is DeiT III's 3-Augment, which vit_jax
has as DeiT III wrote it: `pp.three_augment`.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence

import numpy as np
from PIL import Image

from vit_jax.augment.rand_augment import LEVEL_DENOM, Plan, apply, draw_operation

SubPolicy = tuple[tuple[str, float, int], ...]  # (operation, probability, magnitude) in order

V0: tuple[SubPolicy, ...] = (  # timm's auto_augment_policy_v0
    (("Equalize", 0.8, 1), ("ShearY", 0.8, 4)), (("Color", 0.4, 9), ("Equalize", 0.6, 3)),
    (("Color", 0.4, 1), ("Rotate", 0.6, 8)), (("Solarize", 0.8, 3), ("Equalize", 0.4, 7)),
    (("Solarize", 0.4, 2), ("Solarize", 0.6, 2)), (("Color", 0.2, 0), ("Equalize", 0.8, 8)),
    (("Equalize", 0.4, 8), ("SolarizeAdd", 0.8, 3)), (("ShearX", 0.2, 9), ("Rotate", 0.6, 8)),
    (("Color", 0.6, 1), ("Equalize", 1.0, 2)), (("Invert", 0.4, 9), ("Rotate", 0.6, 0)),
    (("Equalize", 1.0, 9), ("ShearY", 0.6, 3)), (("Color", 0.4, 7), ("Equalize", 0.6, 0)),
    (("Posterize", 0.4, 6), ("AutoContrast", 0.4, 7)), (("Solarize", 0.6, 8), ("Color", 0.6, 9)),
    (("Solarize", 0.2, 4), ("Rotate", 0.8, 9)), (("Rotate", 1.0, 7), ("TranslateYRel", 0.8, 9)),
    (("ShearX", 0.0, 0), ("Solarize", 0.8, 4)), (("ShearY", 0.8, 0), ("Color", 0.6, 4)),
    (("Color", 1.0, 0), ("Rotate", 0.6, 2)), (("Equalize", 0.8, 4), ("Equalize", 0.0, 8)),
    (("Equalize", 1.0, 4), ("AutoContrast", 0.6, 2)), (("ShearY", 0.4, 7), ("SolarizeAdd", 0.6, 7)),
    (("Posterize", 0.8, 2), ("Solarize", 0.6, 10)), (("Solarize", 0.6, 8), ("Equalize", 0.6, 1)),
    (("Color", 0.8, 6), ("Rotate", 0.4, 5)),
)
ORIGINAL: tuple[SubPolicy, ...] = (  # timm's auto_augment_policy_original (Cubuk et al.'s ImageNet policy)
    (("PosterizeOriginal", 0.4, 8), ("Rotate", 0.6, 9)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)), (("PosterizeOriginal", 0.6, 7), ("PosterizeOriginal", 0.6, 6)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Equalize", 0.4, 4), ("Rotate", 0.8, 8)),
    (("Solarize", 0.6, 3), ("Equalize", 0.6, 7)), (("PosterizeOriginal", 0.8, 5), ("Equalize", 1.0, 2)),
    (("Rotate", 0.2, 3), ("Solarize", 0.6, 8)), (("Equalize", 0.6, 8), ("PosterizeOriginal", 0.4, 6)),
    (("Rotate", 0.8, 8), ("Color", 0.4, 0)), (("Rotate", 0.4, 9), ("Equalize", 0.6, 2)),
    (("Equalize", 0.0, 7), ("Equalize", 0.8, 8)), (("Invert", 0.6, 4), ("Equalize", 1.0, 8)),
    (("Color", 0.6, 4), ("Contrast", 1.0, 8)), (("Rotate", 0.8, 8), ("Color", 1.0, 2)),
    (("Color", 0.8, 8), ("Solarize", 0.8, 7)), (("Sharpness", 0.4, 7), ("Invert", 0.6, 8)),
    (("ShearX", 0.6, 5), ("Equalize", 1.0, 9)), (("Color", 0.4, 0), ("Equalize", 0.6, 3)),
    (("Equalize", 0.4, 7), ("Solarize", 0.2, 4)), (("Solarize", 0.6, 5), ("AutoContrast", 0.6, 5)),
    (("Invert", 0.6, 4), ("Equalize", 1.0, 8)), (("Color", 0.6, 4), ("Contrast", 1.0, 8)),
    (("Equalize", 0.8, 8), ("Equalize", 0.6, 3)),
)


def _increasing_posterize(policy: Sequence[SubPolicy], name: str) -> tuple[SubPolicy, ...]:
    return tuple(tuple(("PosterizeIncreasing" if op == name else op, p, m) for op, p, m in sub) for sub in policy)


POLICIES = {"v0": V0, "v0r": _increasing_posterize(V0, "Posterize"), "original": ORIGINAL,
            "originalr": _increasing_posterize(ORIGINAL, "PosterizeOriginal")}


@dataclasses.dataclass(frozen=True)
class AutoAugment:
    policy: str = "v0"
    magnitude_std: float = 0.0  # Gaussian noise on each operation's magnitude (timm's mstd)

    def __post_init__(self) -> None:
        if self.policy not in POLICIES:
            raise ValueError(f"auto_augment policy {self.policy!r} is not one of {tuple(POLICIES)}"
                             + ("; timm's 3a is DeiT III's 3-Augment: pp.three_augment" if self.policy == "3a" else ""))
        if not (isinstance(self.magnitude_std, int | float) and self.magnitude_std >= 0):
            raise ValueError(f"auto_augment mstd must be >= 0; got {self.magnitude_std!r}")

    @classmethod
    def parse(cls, spec: str) -> AutoAugment:
        """timm's string: `v0`, `original-mstd0.5`, ..."""
        policy, *sections = spec.split("-")
        std = 0.0
        for section in sections:
            match = re.fullmatch(r"mstd(\d+(?:\.\d*)?)", section)
            if not match:
                raise ValueError(f"auto_augment {spec!r}: section {section!r} is not mstd<std>")
            std = float(match.group(1))
        return cls(policy=policy, magnitude_std=std)

    def draw(self, rng: np.random.Generator, random_resample: bool = False) -> Plan:
        sub_policy = POLICIES[self.policy][int(rng.integers(len(POLICIES[self.policy])))]
        drawn = (draw_operation(name, prob, magnitude, self.magnitude_std, LEVEL_DENOM, rng, random_resample)
                 for name, prob, magnitude in sub_policy)
        return tuple(operation for operation in drawn if operation is not None)

    def __call__(self, picture: np.ndarray | Image.Image, rng: np.random.Generator, *,
                 fill: Sequence[int], resample: str) -> np.ndarray | Image.Image:
        """`resample='random'`: bilinear or bicubic, drawn per geometric operation (timm's default)."""
        return apply(self.draw(rng, resample == "random"), picture, fill=fill, resample=resample)
