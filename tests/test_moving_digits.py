"""The `moving_digits` builder, checked from its stored clips: shapes, motion measured from the frames, splits."""

import sys

import numpy as np
import pytest

from vit_jax.data import digits
from vit_jax.data.moving_digits import DIRECTIONS, FRAMES, SIZE, digit_images
from vit_jax.data.sources import dataset_builder, dataset_spec, open_split

SPLIT_SIZES = {"train": 5028, "validation": 720, "test": 1440}


@pytest.fixture(scope="module")
def splits(moving_digits_data_dir):
    builder = dataset_builder("moving_digits", moving_digits_data_dir)
    return builder, {split: open_split(builder, split) for split in SPLIT_SIZES}


def stacked(source, field):
    return np.stack([source[i][field] for i in range(len(source))])


def circular_centre(clips: np.ndarray, axis: int) -> np.ndarray:
    """Centre of mass of each frame along `axis` (rows 2, columns 3) on the torus the digit wraps around, as an
    angle: the phase of the mass distribution's first Fourier coefficient."""
    mass = clips[..., 0].astype(np.float64).sum(axis=5 - axis)  # (N, T, SIZE)
    phase = np.exp(2j * np.pi * np.arange(SIZE) / SIZE)
    return np.angle((mass * phase).sum(-1))


def measured_direction(clips: np.ndarray) -> np.ndarray:
    """The direction each clip's digit moves, from the mean frame-to-frame shift of its centre of mass."""
    shifts = []
    for axis in (2, 3):
        steps = np.diff(circular_centre(clips, axis), axis=1)
        steps = (steps + np.pi) % (2 * np.pi) - np.pi  # the shortest way round
        shifts.append(steps.mean(1) * SIZE / (2 * np.pi))  # in pixels per frame
    dy, dx = shifts
    return np.where(np.abs(dx) > np.abs(dy), np.where(dx < 0, 0, 1), np.where(dy < 0, 2, 3)), dy, dx


def test_spec_sizes_and_decoding_without_tensorflow(splits):
    builder, sources = splits
    spec = dataset_spec(builder)
    assert (spec.num_classes, spec.class_names, spec.image_shape) == (4, DIRECTIONS, (FRAMES, SIZE, SIZE, 1))
    assert {split: len(source) for split, source in sources.items()} == SPLIT_SIZES
    example = sources["validation"][0]
    assert example["image"].shape == (8, 16, 16, 1) and example["image"].dtype == np.uint8
    assert "tensorflow" not in sys.modules


def test_labels_are_the_direction_measured_from_the_frames(splits):
    _, sources = splits
    clips, labels = stacked(sources["validation"], "image"), stacked(sources["validation"], "label")
    direction, dy, dx = measured_direction(clips)
    np.testing.assert_array_equal(direction, labels)
    speed = np.maximum(np.abs(dx), np.abs(dy))
    np.testing.assert_allclose(speed, 1.0, atol=0.05)  # one pixel per frame
    assert np.bincount(labels).tolist() == [180] * 4  # one clip per direction per digit


def test_every_frame_holds_the_whole_digit_and_one_frame_says_nothing_about_the_direction(splits):
    _, sources = splits
    clips, labels = stacked(sources["train"], "image"), stacked(sources["train"], "label")
    images, _ = digit_images()
    indices = stacked(sources["train"], "digit_index")
    mass = clips[..., 0].astype(np.int64).sum((2, 3))  # (N, T): wrapping never loses a pixel
    np.testing.assert_array_equal(mass, np.repeat(images[indices].astype(np.int64).sum((1, 2))[:, None], FRAMES, 1))
    # a nearest-class-mean classifier on any single frame is at chance: the start is uniform on the torus
    test_clips, test_labels = stacked(sources["test"], "image"), stacked(sources["test"], "label")
    for frame in (0, FRAMES - 1):
        means = np.stack([clips[labels == c, frame].reshape(-1, SIZE * SIZE).mean(0) for c in range(4)])
        flat = test_clips[:, frame].reshape(-1, SIZE * SIZE).astype(np.float64)
        guesses = np.argmin(((flat[:, None] - means[None]) ** 2).sum(-1), axis=1)
        assert np.mean(guesses == test_labels) < 0.35


def test_splits_use_disjoint_digit_images_from_sklearn_digits_splits(splits):
    _, sources = splits
    images, targets = digit_images()
    expected = digits.split_indices()
    for split, source in sources.items():
        indices = stacked(source, "digit_index")
        np.testing.assert_array_equal(np.unique(indices), expected[split])
        assert np.bincount(np.unique(indices, return_counts=True)[1]).tolist()[4] == len(expected[split])
        np.testing.assert_array_equal(stacked(source, "digit"), targets[indices])
        first = stacked(source, "image")[:50, 0, ..., 0]  # the stored pixels are that digit's, somewhere
        for clip_frame, index in zip(first, indices[:50]):
            np.testing.assert_array_equal(np.sort(clip_frame, axis=None)[-64:], np.sort(images[index], axis=None))
    train, validation, test = (set(stacked(sources[s], "digit_index")) for s in SPLIT_SIZES)
    assert not (train & validation or train & test or validation & test)
