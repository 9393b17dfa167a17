"""`moving_digits`: a small video task that needs time, built from scikit-learn's bundled digits (no network).

Each example is an 8-frame 16x16x1 uint8 clip of one 8x8 digit moving one pixel per frame in a straight line; the
label is the direction (`left`, `right`, `up`, `down`). The digit wraps around the frame's edges (the frame is a
torus) and starts at a uniformly random position, so every single frame, whatever its index, is distributed the
same for all four directions: only the change between frames tells the direction. Every digit image yields four
clips, one per direction (balanced classes, each with its own random start). Splits follow `sklearn_digits`
(`vit_jax.data.digits.split_indices`), so no digit image is in two splits: 5,028 train, 720 validation and 1,440
test clips. Clips are stored as `Tensor` features under the key `image` (the key vit_jax's pipeline reads): TFDS's
`Image`/`Video` features would encode through TensorFlow.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds

from vit_jax.data.digits import split_indices

NAME = "moving_digits"
FRAMES, SIZE = 8, 16  # 8 frames of 16x16: an 8x8 digit has room to move and the frame is a multiple of 4
DIRECTIONS = ("left", "right", "up", "down")
STEPS = {"left": (0, -1), "right": (0, 1), "up": (-1, 0), "down": (1, 0)}  # (rows, columns) per frame
_SEED = 0


def moving_clip(digit: np.ndarray, start: tuple[int, int], direction: str, frames: int = FRAMES,
                size: int = SIZE) -> np.ndarray:
    """`(frames, size, size, 1)` uint8: `digit` (`(h, w)` uint8) with its top-left corner at `start` in frame 0,
    moved one pixel per frame towards `direction`, wrapping around the edges."""
    canvas = np.zeros((size, size), np.uint8)
    canvas[: digit.shape[0], : digit.shape[1]] = digit
    dy, dx = STEPS[direction]
    k, pixels = np.arange(frames)[:, None], np.arange(size)[None, :]
    rows = (pixels - start[0] - k * dy) % size  # frame k, pixel (r, c) shows canvas[rows[k, r], cols[k, c]]
    cols = (pixels - start[1] - k * dx) % size
    return canvas[rows[:, :, None], cols[:, None, :]][..., None]


def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """scikit-learn's digits as uint8 `(1797, 8, 8)` images (0..16 scaled to 0..255, as `sklearn_digits`) and
    their labels."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    return np.round(digits.images * (255 / 16)).astype(np.uint8), digits.target


class MovingDigits(tfds.core.GeneratorBasedBuilder):
    """Digits moving left, right, up or down: `(8, 16, 16, 1)` uint8 clips, 4 classes, train/validation/test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "One clip per direction per digit image; sklearn_digits' splits; seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(FRAMES, SIZE, SIZE, 1), dtype=np.uint8,
                                              encoding=tfds.features.Encoding.BYTES),  # raw bytes, not int64s
                "label": tfds.features.ClassLabel(names=DIRECTIONS),
                "digit": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
                "digit_index": tfds.features.Scalar(dtype=np.int64),  # into sklearn's load_digits()
            }),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # the digits ship with scikit-learn
        return {split: self._generate_examples(indices) for split, indices in split_indices().items()}

    def _generate_examples(self, indices: np.ndarray) -> Iterator[tuple[str, dict]]:
        images, labels = digit_images()
        for i in indices:
            starts = np.random.default_rng((_SEED, int(i))).integers(0, SIZE, size=(len(DIRECTIONS), 2))
            for label, (direction, start) in enumerate(zip(DIRECTIONS, starts)):
                clip = moving_clip(images[i], (int(start[0]), int(start[1])), direction)
                yield f"{i}_{direction}", {"image": clip, "label": label, "digit": int(labels[i]),
                                           "digit_index": int(i)}
