"""RandAugment as timm implements it (`timm.data.auto_augment.rand_augment_transform`), on PIL images.

A config names it with timm's own string, as DeiT's and timm's training recipes write it: `rand-m9-mstd0.5-inc1`
is 2 operations per image (`n`), each applied with probability 0.5 (`p`), at magnitude 9 (`m`, of 10) jittered by
a Gaussian of std 0.5 (`mstd`; above 100: uniform in [0, m]) and clipped to [0, 10] (`mmax`), from the set whose
operations grow stronger with the magnitude (`inc1`; `tweights`, `t3a`, `t3aw`: timm's other sets). Each
operation and its argument at a magnitude are timm's (`LEVEL_TO_ARG`, `NAME_TO_OP`), so the same draws give
timm's pixels.

The draws come from the pipeline's `numpy.random.Generator` (an example's augmentation repeats when it is read
again) and are made once per picture (`draw`), then applied (`apply`): a video's frames all get the same
operations. Geometric operations resample with the run's resize method and fill uncovered pixels with the mean
colour (timm's `img_mean`); grayscale images get its gray level.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Sequence

import numpy as np
from PIL import Image, ImageEnhance, ImageFilter, ImageOps

from vit_jax.augment.pictures import map_pictures

LEVEL_DENOM = 10.0  # magnitudes run 0..10; an operation's strength is magnitude / 10 of its range
TRANSLATE_PCT = 0.45  # largest relative translation (timm's `translate_pct`)
AFFINE_RESAMPLING = {"nearest": Image.Resampling.NEAREST, "bilinear": Image.Resampling.BILINEAR,
                     "bicubic": Image.Resampling.BICUBIC}  # what PIL's affine transforms take

# timm's operation sets, by the name its config string gives them (`t...`; '' is the default set)
TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "Posterize", "Solarize", "SolarizeAdd", "Color",
              "Contrast", "Brightness", "Sharpness", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
INCREASING_TRANSFORMS = ("AutoContrast", "Equalize", "Invert", "Rotate", "PosterizeIncreasing", "SolarizeIncreasing",
                         "SolarizeAdd", "ColorIncreasing", "ContrastIncreasing", "BrightnessIncreasing",
                         "SharpnessIncreasing", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")
WEIGHTED_SETS = {  # drawn without replacement, with these weights
    "weights": {"Rotate": 3, "ShearX": 2, "ShearY": 2, "TranslateXRel": 1, "TranslateYRel": 1,
                "ColorIncreasing": 0.25, "SharpnessIncreasing": 0.25, "AutoContrast": 0.25,
                "SolarizeIncreasing": 0.05, "SolarizeAdd": 0.05, "ContrastIncreasing": 0.05,
                "BrightnessIncreasing": 0.05, "Equalize": 0.05, "PosterizeIncreasing": 0.05, "Invert": 0.05},
    "3aw": {"SolarizeIncreasing": 6, "Desaturate": 6, "GaussianBlur": 6, "Rotate": 3, "ShearX": 2, "ShearY": 2,
            "PosterizeIncreasing": 1, "AutoContrast": 1, "ColorIncreasing": 1, "SharpnessIncreasing": 1,
            "ContrastIncreasing": 1, "BrightnessIncreasing": 1, "Equalize": 1, "Invert": 1},
}
DEIT = "rand-m9-mstd0.5-inc1"  # DeiT's and timm's ImageNet recipe


def _signed(value: float, rng: np.random.Generator) -> float:
    return -value if rng.random() > 0.5 else value


def _enhance(level: float, rng: np.random.Generator) -> float:
    return level * 1.8 + 0.1


def _enhance_increasing(level: float, rng: np.random.Generator) -> float:
    return max(0.1, 1.0 + _signed(level * 0.9, rng))


def _clamped(low: float, high: float) -> Callable[[float, np.random.Generator], float]:
    return lambda level, rng: max(low, min(high, low + (high - low) * level))


# An operation's argument at `level` = magnitude / 10 (None: it takes none); the sign of a symmetric operation
# is drawn here, as timm's `_randomly_negate`.
LEVEL_TO_ARG: dict[str, Callable[[float, np.random.Generator], float] | None] = {
    "AutoContrast": None, "Equalize": None, "Invert": None,
    "Rotate": lambda level, rng: _signed(level * 30.0, rng),
    "Posterize": lambda level, rng: int(level * 4),
    "PosterizeOriginal": lambda level, rng: int(level * 4) + 4,  # AutoAugment's: keep 4 to 8 bits
    "PosterizeIncreasing": lambda level, rng: 4 - int(level * 4),
    "Solarize": lambda level, rng: min(256, int(level * 256)),
    "SolarizeIncreasing": lambda level, rng: 256 - min(256, int(level * 256)),
    "SolarizeAdd": lambda level, rng: min(128, int(level * 110)),
    "Color": _enhance, "Contrast": _enhance, "Brightness": _enhance, "Sharpness": _enhance,
    "ColorIncreasing": _enhance_increasing, "ContrastIncreasing": _enhance_increasing,
    "BrightnessIncreasing": _enhance_increasing, "SharpnessIncreasing": _enhance_increasing,
    "ShearX": lambda level, rng: _signed(level * 0.3, rng),
    "ShearY": lambda level, rng: _signed(level * 0.3, rng),
    "TranslateXRel": lambda level, rng: _signed(level * TRANSLATE_PCT, rng),
    "TranslateYRel": lambda level, rng: _signed(level * TRANSLATE_PCT, rng),
    "Desaturate": _clamped(0.5, 1.0),
    "GaussianBlur": _clamped(0.1, 2.0),
}


def _affine(image: Image.Image, matrix: tuple[float, ...], fill: int | tuple[int, ...], resample: str) -> Image.Image:
    return image.transform(image.size, Image.Transform.AFFINE, matrix, fillcolor=fill,
                           resample=AFFINE_RESAMPLING[resample])


def _solarize_add(image: Image.Image, add: int, thresh: int = 128) -> Image.Image:
    lut = [min(255, i + add) if i < thresh else i for i in range(256)]
    return image.point(lut * len(image.getbands()))


def _posterize(image: Image.Image, bits: int) -> Image.Image:
    """0 bits keeps nothing: black, as TensorFlow's AutoAugment and PIL before 11 (which now raises, and with it
    timm's PosterizeIncreasing at magnitude 10 and Posterize below 2.5)."""
    if bits <= 0:
        return image.point([0] * 256 * len(image.getbands()))
    return image if bits >= 8 else ImageOps.posterize(image, bits)


Operation = Callable[[Image.Image, float, int | tuple[int, ...], str], Image.Image]
OPERATIONS: dict[str, Operation] = {  # (image, argument, fill, resample) -> image
    "AutoContrast": lambda im, arg, fill, resample: ImageOps.autocontrast(im),
    "Equalize": lambda im, arg, fill, resample: ImageOps.equalize(im),
    "Invert": lambda im, arg, fill, resample: ImageOps.invert(im),
    "Rotate": lambda im, arg, fill, resample: im.rotate(arg, resample=AFFINE_RESAMPLING[resample], fillcolor=fill),
    "Posterize": lambda im, arg, fill, resample: _posterize(im, arg),
    "Solarize": lambda im, arg, fill, resample: ImageOps.solarize(im, arg),
    "SolarizeAdd": lambda im, arg, fill, resample: _solarize_add(im, arg),
    "Color": lambda im, arg, fill, resample: ImageEnhance.Color(im).enhance(arg),
    "Contrast": lambda im, arg, fill, resample: ImageEnhance.Contrast(im).enhance(arg),
    "Brightness": lambda im, arg, fill, resample: ImageEnhance.Brightness(im).enhance(arg),
    "Sharpness": lambda im, arg, fill, resample: ImageEnhance.Sharpness(im).enhance(arg),
    "ShearX": lambda im, arg, fill, resample: _affine(im, (1, arg, 0, 0, 1, 0), fill, resample),
    "ShearY": lambda im, arg, fill, resample: _affine(im, (1, 0, 0, arg, 1, 0), fill, resample),
    "TranslateXRel": lambda im, arg, fill, resample: _affine(im, (1, 0, arg * im.size[0], 0, 1, 0), fill, resample),
    "TranslateYRel": lambda im, arg, fill, resample: _affine(im, (1, 0, 0, 0, 1, arg * im.size[1]), fill, resample),
    "Desaturate": lambda im, arg, fill, resample: ImageEnhance.Color(im).enhance(min(1.0, max(0.0, 1.0 - arg))),
    "GaussianBlur": lambda im, arg, fill, resample: im.filter(ImageFilter.GaussianBlur(radius=arg)),
}
for _name in ("Posterize", "Solarize", "Color", "Contrast", "Brightness", "Sharpness"):
    OPERATIONS[_name + "Increasing"] = OPERATIONS[_name]
OPERATIONS["PosterizeOriginal"] = OPERATIONS["Posterize"]
SETS = {"": TRANSFORMS, "3a": ("SolarizeIncreasing", "Desaturate", "GaussianBlur"),
        **{name: tuple(weights) for name, weights in WEIGHTED_SETS.items()}}

# The operations drawn for one picture, with their arguments, and for geometric ones under random resampling the
# method drawn (`(name, argument)` or `(name, argument, method)`)
Plan = tuple[tuple, ...]
RANDOM_RESAMPLING = ("bilinear", "bicubic")  # timm's `_RANDOM_INTERPOLATION` (its default --train-interpolation)
GEOMETRIC = ("Rotate", "ShearX", "ShearY", "TranslateXRel", "TranslateYRel")  # those that resample


@dataclasses.dataclass(frozen=True)
class RandAugment:
    """`num_layers` operations drawn from `transforms` (uniformly with replacement, or without replacement by
    `weights`), each applied with probability `prob` at `magnitude` (Gaussian jitter of std `magnitude_std`,
    `inf` for uniform in [0, magnitude]) clipped to [0, `magnitude_max`]."""

    num_layers: int = 2
    magnitude: float = 10.0
    prob: float = 0.5
    magnitude_std: float = 0.0
    magnitude_max: float = LEVEL_DENOM
    transforms: tuple[str, ...] = TRANSFORMS
    weights: tuple[float, ...] | None = None

    def __post_init__(self) -> None:
        numbers = {"num_layers": self.num_layers, "magnitude": self.magnitude, "prob": self.prob,
                   "magnitude_std": self.magnitude_std, "magnitude_max": self.magnitude_max}
        if (not isinstance(self.num_layers, int) or self.num_layers < 1 or not 0 <= self.prob <= 1
                or min(numbers.values()) < 0 or self.magnitude_max <= 0 or math.isnan(sum(numbers.values()))):
            raise ValueError(f"RandAugment needs num_layers >= 1, 0 <= prob <= 1, magnitude >= 0, magnitude_std >= 0 "
                             f"and magnitude_max > 0; got {numbers}")
        unknown = [name for name in self.transforms if name not in OPERATIONS]
        if unknown or not self.transforms:
            raise ValueError(f"RandAugment transforms must be among {tuple(OPERATIONS)}; got {self.transforms!r}")
        if self.weights is not None and (len(self.weights) != len(self.transforms) or min(self.weights) < 0
                                         or sum(self.weights) <= 0):
            raise ValueError(f"RandAugment weights must be one non-negative number per transform; got "
                             f"{self.weights!r}")
        if self.weights is not None and self.num_layers > sum(w > 0 for w in self.weights):
            raise ValueError(f"RandAugment draws weighted transforms without replacement: n={self.num_layers} is "
                             f"more than the {sum(w > 0 for w in self.weights)} with a weight")

    @classmethod
    def parse(cls, spec: str) -> RandAugment:
        """timm's config string (`rand-m9-n2-mstd0.5-mmax10-inc1-p0.5-tweights`); a ValueError names a section it
        does not define."""
        sections = spec.split("-") if isinstance(spec, str) else [None]
        if sections[0] != "rand":
            raise ValueError(f"rand_augment must be timm's RandAugment string starting 'rand' "
                             f"(e.g. {DEIT!r}); got {spec!r}")
        fields: dict[str, float] = {}
        increasing, set_name = False, ""
        for section in sections[1:]:
            if section.startswith("t"):
                set_name = section[1:]
                if set_name not in SETS or not set_name:
                    raise ValueError(f"rand_augment {spec!r}: {section!r} names no transform set; timm's are "
                                     f"{', '.join('t' + name for name in SETS if name)}")
                continue
            match = re.fullmatch(r"(mstd|mmax|inc|m|n|p)(\d+(?:\.\d*)?|inf)", section)
            if not match:
                raise ValueError(f"rand_augment {spec!r}: section {section!r} is not one of m<magnitude>, "
                                 f"n<layers>, p<prob>, mstd<std>, mmax<max>, inc<0|1>, t<set: "
                                 f"{', '.join(name for name in SETS if name)}>")
            key, value = match.group(1), float(match.group(2))
            if key == "inc":
                increasing = bool(int(value))
            elif key == "mstd":
                fields["magnitude_std"] = math.inf if value > 100 else value
            else:
                fields[{"m": "magnitude", "n": "num_layers", "p": "prob", "mmax": "magnitude_max"}[key]] = value
        if "num_layers" in fields:
            if fields["num_layers"] != int(fields["num_layers"]):
                raise ValueError(f"rand_augment {spec!r}: n (operations per image) must be a whole number")
            fields["num_layers"] = int(fields["num_layers"])
        if set_name in WEIGHTED_SETS:
            transforms, weights = zip(*WEIGHTED_SETS[set_name].items(), strict=True)
            fields["weights"] = tuple(float(w) for w in weights)
        else:
            transforms = SETS[set_name] if set_name else (INCREASING_TRANSFORMS if increasing else TRANSFORMS)
        try:
            return cls(transforms=tuple(transforms), **fields)
        except ValueError as error:
            raise ValueError(f"rand_augment {spec!r}: {error}") from None

    def draw(self, rng: np.random.Generator, random_resample: bool = False) -> Plan:
        """The operations one picture gets, with their arguments (skipped ones left out); `random_resample`: each
        geometric one also draws bilinear or bicubic."""
        if self.weights is None:
            names = rng.choice(len(self.transforms), self.num_layers, replace=True)
        else:
            p = np.asarray(self.weights, np.float64) / sum(self.weights)
            names = rng.choice(len(self.transforms), self.num_layers, replace=False, p=p)
        drawn = (draw_operation(self.transforms[i], self.prob, self.magnitude, self.magnitude_std,
                                self.magnitude_max, rng, random_resample) for i in names)
        return tuple(operation for operation in drawn if operation is not None)

    def __call__(self, picture: np.ndarray | Image.Image, rng: np.random.Generator, *,
                 fill: Sequence[int], resample: str) -> np.ndarray | Image.Image:
        """`resample='random'`: bilinear or bicubic, drawn per geometric operation (timm's default)."""
        return apply(self.draw(rng, resample == "random"), picture, fill=fill, resample=resample)


def draw_operation(name: str, prob: float, magnitude: float, magnitude_std: float, magnitude_max: float,
                   rng: np.random.Generator, random_resample: bool = False) -> tuple | None:
    """One operation of a policy, as timm's `AugmentOp` draws it: skipped with probability 1 - `prob`, else its
    magnitude jittered (`magnitude_std`: Gaussian; inf: uniform in [0, magnitude]), clipped to [0,
    `magnitude_max`], and turned into its argument (drawing the sign of symmetric operations), then, with
    `random_resample`, a geometric operation's resampling (timm's `random.choice` as the operation runs)."""
    if prob < 1.0 and rng.random() > prob:
        return None
    if magnitude_std == math.inf:
        magnitude = rng.uniform(0, magnitude)
    elif magnitude_std > 0:
        magnitude = rng.normal(magnitude, magnitude_std)
    magnitude = max(0.0, min(magnitude, magnitude_max))
    level_to_arg = LEVEL_TO_ARG[name]
    argument = None if level_to_arg is None else level_to_arg(magnitude / LEVEL_DENOM, rng)
    if random_resample and name in GEOMETRIC:
        return name, argument, RANDOM_RESAMPLING[int(rng.integers(len(RANDOM_RESAMPLING)))]
    return name, argument


def apply(plan: Plan, picture: np.ndarray | Image.Image, *, fill: Sequence[int], resample: str
          ) -> np.ndarray | Image.Image:
    """`plan` applied to a PIL image (returned as one), or to a uint8 `(H, W, C)` image or `(T, H, W, C)` video
    with 1 or 3 channels (returned as arrays, every frame alike)."""
    if not plan:
        return picture

    def operations(image: Image.Image) -> Image.Image:
        colour = tuple(fill) if image.mode == "RGB" else round(sum(fill) / len(fill))
        for name, argument, *method in plan:
            image = OPERATIONS[name](image, argument, colour, method[0] if method else resample)
        return image

    return map_pictures(operations, picture, "RandAugment")
