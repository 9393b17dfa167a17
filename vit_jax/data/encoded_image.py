"""Training images left in their file format (JPEG/PNG bytes) until preprocessing, which crops the decoded picture.

TFDS's NumPy decoding turns every stored image into a whole-image array; an Inception crop then slices it and PIL
gets a copy of the slice back to resize. Reading the bytes instead (`KeepEncoded`, a TFDS decoder) lets the
preprocessing decode straight into a PIL image and crop and resize it there (`vit_jax.data.preprocessing`): the
same pixels, without two whole-image copies per example.
"""

from __future__ import annotations

import dataclasses
import io

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image

from vit_jax.data.image_files import converted, pil_mode


@dataclasses.dataclass(frozen=True)
class EncodedImage:
    """An image's file bytes and the channels its dataset stores (1: grayscale, 3: RGB)."""

    data: bytes
    channels: int

    def picture(self) -> Image.Image:
        """The decoded image, in the dataset's channel mode."""
        return converted(Image.open(io.BytesIO(self.data)), pil_mode(self.channels))

    def array(self) -> np.ndarray:
        """`(H, W, channels)` uint8, as TFDS would have decoded it."""
        array = np.asarray(self.picture())
        return array[:, :, None] if array.ndim == 2 else array


class KeepEncoded(tfds.decode.Decoder):
    """TFDS decoder for an `Image` feature that returns an `EncodedImage` instead of decoding (NumPy path only)."""

    def decode_example(self, serialized_image):  # the TensorFlow path: vit_jax reads without TensorFlow
        raise NotImplementedError("KeepEncoded is for TFDS data sources (NumPy decoding)")

    def decode_example_np(self, serialized_image: bytes) -> EncodedImage:
        return EncodedImage(bytes(serialized_image), int(self.feature.shape[-1]))


def keeps_encoded(feature: tfds.features.FeatureConnector) -> bool:
    """Whether `feature` is a still image stored encoded with a known channel count (not a video, not a tensor)."""
    return isinstance(feature, tfds.features.Image) and feature.shape[-1] in (1, 3)
