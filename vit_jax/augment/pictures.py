"""PIL operations on the pipeline's pictures: a PIL image, a uint8 `(H, W, C)` image or a `(T, H, W, C)` video
with 1 or 3 channels, every frame of a video alike, returned as they came."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

Picture = np.ndarray | Image.Image


def map_pictures(operation: Callable[[Image.Image], Image.Image], picture: Picture, what: str) -> Picture:
    """`operation` on a PIL image (grayscale "L" or "RGB"; other modes become RGB) or on each frame of an array;
    `what` names the augmentation in the error for other channel counts."""
    if isinstance(picture, Image.Image):
        return operation(picture if picture.mode in ("L", "RGB") else picture.convert("RGB"))
    if picture.ndim == 4:
        return np.stack([map_pictures(operation, frame, what) for frame in picture])
    if picture.shape[-1] not in (1, 3):
        raise ValueError(f"{what} works on grayscale or RGB images; got {picture.shape[-1]} channels")
    out = np.asarray(operation(Image.fromarray(picture[:, :, 0] if picture.shape[-1] == 1 else picture)))
    return out[:, :, None] if out.ndim == 2 else out
