"""`cluttered_digits`: a 64x64 task with detail at several scales, built from scikit-learn's bundled digits.

The 8x8 digits are too small for questions about resolution and patch size: at 8x8 one patch of 8 is the whole
image, and upsampling them to a larger size adds no detail. Here each 64x64x1 uint8 image holds one digit scaled
to 20-40 pixels (bilinear) at a random position, on a canvas cluttered with pieces of other digits (random 3x3 or
4x4 crops, scaled 2-3x, 4-6 of them) and two to four one-pixel strokes; the label is the whole digit. The digit's size and
place vary, so position and scale have to be learned rather than memorised, and the strokes and small pieces are
detail that survives at 64x64 and blurs away at 16x16.

Splits follow `sklearn_digits` (`vit_jax.data.digits.split_indices`), so no digit image (as target or as clutter)
is in two splits: 8 canvases per train digit image (10,056), 4 per validation (720) and test image (1,440), each
drawn from a seeded generator. Stored as PNG under `image`, as `sklearn_digits` (no TensorFlow needed).
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw

from vit_jax.data.digits import png_bytes, split_indices
from vit_jax.data.moving_digits import digit_images

NAME = "cluttered_digits"
SIZE = 64
PER_IMAGE = {"train": 8, "validation": 4, "test": 4}  # canvases per digit image of each split
DIGIT_SIZES = (20, 40)  # the digit's side in pixels, uniform
PIECES, PIECE_CROPS, PIECE_SCALES = (4, 6), (3, 4), (2, 3)  # clutter: count, crop side, upscale (inclusive)
STROKES = (2, 4)  # one-pixel line segments
_SEED = 0


def scaled(image: np.ndarray, side: int | tuple[int, int]) -> np.ndarray:
    """`(h, w)` uint8 -> `(side, side)` (or `(h', w')`) uint8, bilinear."""
    h, w = (int(side), int(side)) if np.isscalar(side) else side
    return np.asarray(Image.fromarray(image).resize((w, h), Image.Resampling.BILINEAR))


def paste(canvas: np.ndarray, piece: np.ndarray, top: int, left: int) -> None:
    """Draws `piece` at (top, left), clipped to the canvas; overlaps keep the brighter pixel."""
    h = min(piece.shape[0], canvas.shape[0] - top)
    w = min(piece.shape[1], canvas.shape[1] - left)
    window = canvas[top:top + h, left:left + w]
    np.maximum(window, piece[:h, :w], out=window)


def cluttered_canvas(digit: np.ndarray, others: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """`(SIZE, SIZE, 1)` uint8: `digit` (8x8) at a random size and place, over clutter cut from `others` (N, 8, 8)."""
    canvas = np.zeros((SIZE, SIZE), np.uint8)
    for _ in range(rng.integers(PIECES[0], PIECES[1] + 1)):
        source = others[rng.integers(len(others))]
        crop = rng.integers(PIECE_CROPS[0], PIECE_CROPS[1] + 1)
        y, x = rng.integers(0, 8 - crop + 1, size=2)
        piece = scaled(source[y:y + crop, x:x + crop], crop * int(rng.integers(PIECE_SCALES[0], PIECE_SCALES[1] + 1)))
        paste(canvas, piece, *rng.integers(0, SIZE - piece.shape[0] + 1, size=2))
    drawing = Image.fromarray(canvas)
    draw = ImageDraw.Draw(drawing)
    for _ in range(rng.integers(STROKES[0], STROKES[1] + 1)):
        draw.line([tuple(int(v) for v in rng.integers(0, SIZE, size=2)) for _ in range(2)],
                  fill=int(rng.integers(128, 256)), width=1)
    canvas = np.asarray(drawing).copy()
    side = int(rng.integers(DIGIT_SIZES[0], DIGIT_SIZES[1] + 1))
    paste(canvas, scaled(digit, side), *rng.integers(0, SIZE - side + 1, size=2))
    return canvas[:, :, None]


class ClutteredDigits(tfds.core.GeneratorBasedBuilder):
    """One digit at a random size and place among clutter: 64x64x1 uint8 images, 10 classes."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "8 / 4 / 4 canvases per train / validation / test digit image; seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(SIZE, SIZE, 1)),
                "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                "digit_index": tfds.features.Scalar(dtype=np.int64),  # into sklearn's load_digits()
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # the digits ship with scikit-learn
        return {split: self._generate_examples(split, indices) for split, indices in split_indices().items()}

    def _generate_examples(self, split: str, indices: np.ndarray) -> Iterator[tuple[str, dict]]:
        images, labels = digit_images()
        others = images[indices]  # clutter from the same split only
        for i in indices:
            rng = np.random.default_rng((_SEED, int(i)))
            for k in range(PER_IMAGE[split]):
                canvas = cluttered_canvas(images[i], others, rng)
                yield f"{i}_{k}", {"image": png_bytes(canvas), "label": int(labels[i]), "digit_index": int(i)}
