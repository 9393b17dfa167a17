"""The evaluation view of an image as timm makes it (`transforms_imagenet_eval`): resize to `size / crop_pct`, then
the central `size`, so a timm checkpoint sees in vit_jax what it sees in timm, pixel for pixel (PIL resampling on
uint8 images both sides).

`crop_mode` is timm's: `squash` resizes both sides to `size / crop_pct` (aspect ratio not kept); `center` resizes
the shorter side (the aspect ratio is kept; the long side is cut); `border` resizes the longer side and pads the
short one with the mean colour. With `crop_pct=1` and `squash` the view is the plain resize. NaFlex models are
evaluated at each image's own aspect ratio instead (`size_for_max_patches`).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

CROP_MODES = ("squash", "center", "border")
# where an odd margin puts the crop: torchvision's `center_crop` (timm) rounds half the margin to even, transformers'
# image processors (their PIL backend) floor it
CROP_ROUNDINGS = ("round", "floor")

Resize = Callable[[np.ndarray, tuple[int, int]], np.ndarray]


def check_crop(crop_pct: float, crop_mode: str = "squash", crop_rounding: str = "round") -> None:
    if not isinstance(crop_pct, float | int) or not 0 < crop_pct <= 1:
        raise ValueError(f"crop_pct must be in (0, 1] (the fraction of the resized image kept); got {crop_pct!r}")
    if crop_mode not in CROP_MODES:
        raise ValueError(f"crop_mode must be one of {CROP_MODES}; got {crop_mode!r}")
    if crop_rounding not in CROP_ROUNDINGS:
        raise ValueError(f"crop_rounding must be one of {CROP_ROUNDINGS}; got {crop_rounding!r}")


def eval_view(image: np.ndarray, size: tuple[int, int], crop_pct: float, crop_mode: str, resize: Resize,
              fill: Sequence[float] = (0.0,), rounding: str = "round") -> np.ndarray:
    """`(..., H, W, C)` uint8 -> `(..., h, w, C)`; `resize(image, (h, w))` resamples; `fill` (per channel, 0..1)
    pads in `border` mode (timm pads with the mean)."""
    scale = tuple(math.floor(s / crop_pct) for s in size)
    h, w = image.shape[-3:-1]
    if crop_mode == "squash":
        image = resize(image, scale)
    elif crop_mode == "center":
        image = resize(image, shorter_side_size((h, w), scale))
    else:
        image = resize(image, _keep_ratio((h, w), scale, longest=True))
    return center_crop_or_pad(image, size, fill, rounding)


def shorter_side_size(hw: tuple[int, int], size: tuple[int, int]) -> tuple[int, int]:
    """The size an `hw` image is resized to so that it covers `size` keeping its aspect ratio: for a square `size`,
    torchvision's `Resize(int)` (the shorter side to it, the longer in proportion, truncated), else timm's
    `ResizeKeepRatio` on the shorter side."""
    if size[0] != size[1]:
        return _keep_ratio(hw, size, longest=False)
    h, w = hw
    new_long = int(size[0] * max(h, w) / min(h, w))
    return (new_long, size[0]) if w <= h else (size[0], new_long)


def size_for_max_patches(hw: tuple[int, int], patch: int, max_patches: int, eps: float = 1e-5) -> tuple[int, int]:
    """NaFlex's view of an `hw` image (SigLIP 2's image processor, `get_image_size_for_max_num_patches`): the largest
    scale at which both sides, each rounded up to whole patches (at least one), make at most `max_patches` patches;
    found by the processor's own bisection, so the sizes are its sizes."""
    def scaled(scale: float, side: int) -> int:
        return max(patch, math.ceil(side * scale / patch) * patch)

    low, high = eps / 10, 100.0
    while high - low >= eps:
        scale = (low + high) / 2
        if (scaled(scale, hw[0]) / patch) * (scaled(scale, hw[1]) / patch) <= max_patches:
            low = scale
        else:
            high = scale
    return scaled(low, hw[0]), scaled(low, hw[1])


def _keep_ratio(hw: tuple[int, int], target: tuple[int, int], longest: bool) -> tuple[int, int]:
    """timm's `ResizeKeepRatio`: one factor for both sides, the one that fits the longer (or shorter) side."""
    ratios = (hw[0] / target[0], hw[1] / target[1])
    ratio = max(ratios) if longest else min(ratios)
    return round(hw[0] / ratio), round(hw[1] / ratio)


def center_crop_or_pad(image: np.ndarray, size: tuple[int, int], fill: Sequence[float] = (0.0,),
                       rounding: str = "round") -> np.ndarray:
    """The central `size` window (offsets: torchvision's `center_crop` rounds half the margin to even, transformers'
    floors it: `rounding`), after padding with `fill` where the image is smaller (split as timm's
    `center_crop_or_pad` splits it)."""
    h, w = image.shape[-3:-1]
    th, tw = size
    if th > h or tw > w:
        top, left = (th - h) // 2 if th > h else 0, (tw - w) // 2 if tw > w else 0
        bottom, right = (th - h + 1) // 2 if th > h else 0, (tw - w + 1) // 2 if tw > w else 0
        colour = np.round(255 * np.broadcast_to(np.asarray(fill, np.float64), (image.shape[-1],))).astype(image.dtype)
        padded = np.empty((*image.shape[:-3], h + top + bottom, w + left + right, image.shape[-1]), image.dtype)
        padded[...] = colour
        padded[..., top:top + h, left:left + w, :] = image
        image, (h, w) = padded, padded.shape[-3:-1]
    if rounding == "floor":
        top, left = (h - th) // 2, (w - tw) // 2
    else:
        top, left = int(round((h - th) / 2.0)), int(round((w - tw) / 2.0))
    return image[..., top:top + th, left:left + tw, :]
