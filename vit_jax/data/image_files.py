"""Decoding image files (PNG, JPEG, ...) into arrays in a model's channel mode, with errors that name the file."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError


class UnreadableImageError(ValueError):
    """An image file that is missing or that PIL cannot decode, named by path."""


SIXTEEN_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")  # 16-bit grayscale PNG / TIFF (older Pillow: "I")


def pil_mode(channels: int) -> str:
    return "L" if channels == 1 else "RGB"


def converted(image: Image.Image, mode: str) -> Image.Image:
    """`image` in `mode` (`L` or `RGB`). PIL's own conversion clips 16-bit grayscale at 255, which turns most of a
    16-bit PNG white; it is scaled to 8 bits instead (`round(v * 255 / 65535)`)."""
    if image.mode in SIXTEEN_BIT_MODES:
        levels = np.asarray(image, np.float64) * (255.0 / 65535.0)
        image = Image.fromarray(np.clip(np.rint(levels), 0, 255).astype(np.uint8), mode="L")
    return image if image.mode == mode else image.convert(mode)


@contextlib.contextmanager
def decoding(path: Path) -> Iterator[None]:
    """Turns whatever PIL or the file system raises while reading `path` into an `UnreadableImageError`."""
    try:
        yield
    except FileNotFoundError as error:
        raise UnreadableImageError(f"{str(path)!r}: no such file") from error
    except IsADirectoryError as error:
        raise UnreadableImageError(f"{str(path)!r}: a directory, not an image file") from error
    except UnidentifiedImageError as error:
        raise UnreadableImageError(f"unreadable image {str(path)!r}: not an image format PIL can decode") from error
    except Image.DecompressionBombError as error:  # more pixels than PIL decodes unasked (Image.MAX_IMAGE_PIXELS)
        raise UnreadableImageError(f"unreadable image {str(path)!r}: {error}") from error
    except (OSError, ValueError) as error:
        raise UnreadableImageError(f"unreadable image {str(path)!r}: {error}") from error


def read_image(path: str | Path, channels: int) -> np.ndarray:
    """`(H, W, channels)` uint8: the file converted to grayscale (`channels=1`) or RGB."""
    path = Path(path)
    with decoding(path), Image.open(path) as image:
        array = np.asarray(converted(image, pil_mode(channels)))
    return array[:, :, None] if channels == 1 else array
