"""`sklearn_digits`: scikit-learn's bundled handwritten digits as a TFDS dataset, the default dataset.

Real data (1,797 8x8 grayscale images of the digits 0-9, from the UCI optical-recognition set) that ships inside
scikit-learn, so building it needs no network and no TensorFlow. The split is fixed: a stratified 360-image
`test` split, then a stratified 180-image `validation` split (for model selection) from the rest, leaving 1,257
images for `train`. Pixel values 0..16 are scaled to 0..255 and stored as PNG (TFDS's `Image` feature would
encode numpy arrays through TensorFlow).
"""

from __future__ import annotations

import io
from collections.abc import Iterator

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

NAME = "sklearn_digits"
SPLIT_SIZES = {"train": 1257, "validation": 180, "test": 360}
_SPLIT_SEED = 0


def split_indices() -> dict[str, np.ndarray]:
    """Indices into `sklearn.datasets.load_digits()` of each split; stratified, seeded, disjoint."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    labels = load_digits().target
    everything = np.arange(len(labels))
    rest, test = train_test_split(everything, test_size=SPLIT_SIZES["test"], stratify=labels,
                                  random_state=_SPLIT_SEED)
    train, validation = train_test_split(rest, test_size=SPLIT_SIZES["validation"], stratify=labels[rest],
                                         random_state=_SPLIT_SEED)
    return {"train": np.sort(train), "validation": np.sort(validation), "test": np.sort(test)}


def png_bytes(image: np.ndarray) -> bytes:
    """PNG of a `(H, W, C)` uint8 array (PIL wants grayscale as `(H, W)`)."""
    buffer = io.BytesIO()
    Image.fromarray(image[:, :, 0] if image.shape[-1] == 1 else image).save(buffer, format="PNG")
    return buffer.getvalue()


class SklearnDigits(tfds.core.GeneratorBasedBuilder):
    """scikit-learn's handwritten digits: 8x8x1 uint8 images, 10 classes, train/validation/test."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Stratified 1,257 / 180 / 360 split with seed 0."}

    def _info(self) -> tfds.core.DatasetInfo:
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Image(shape=(8, 8, 1)),
                "label": tfds.features.ClassLabel(names=[str(d) for d in range(10)]),
            }),
            supervised_keys=("image", "label"),
            homepage="https://scikit-learn.org/stable/datasets/toy_dataset.html#digits-dataset",
        )

    def _split_generators(self, dl_manager: tfds.download.DownloadManager) -> dict[str, Iterator]:
        del dl_manager  # the data ships with scikit-learn
        return {split: self._generate_examples(indices) for split, indices in split_indices().items()}

    def _generate_examples(self, indices: np.ndarray) -> Iterator[tuple[int, dict]]:
        from sklearn.datasets import load_digits

        digits = load_digits()
        images = np.round(digits.images * (255 / 16)).astype(np.uint8)
        for i in indices:
            yield int(i), {"image": png_bytes(images[i][:, :, None]), "label": int(digits.target[i])}
