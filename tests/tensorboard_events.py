"""Reading TensorBoard event files back, without TensorFlow: what tests check logged scalars and pictures with."""

import io
import struct
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from tensorboardX.proto import event_pb2


def tensorboard_values(logdir: Path) -> Iterator[tuple[int, Any]]:
    """`(step, summary value)` of every event file in `logdir`, read from the TFRecord framing (length, crc,
    event, crc)."""
    for path in sorted(logdir.glob("events.out.tfevents.*")):
        data = path.read_bytes()
        offset = 0
        while offset < len(data):
            (length,) = struct.unpack("<Q", data[offset : offset + 8])
            event = event_pb2.Event.FromString(data[offset + 12 : offset + 12 + length])
            offset += 12 + length + 4
            for value in event.summary.value:
                yield event.step, value


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    scalars: dict[str, list[tuple[int, float]]] = {}
    for step, value in tensorboard_values(logdir):
        if value.HasField("simple_value"):
            scalars.setdefault(value.tag, []).append((step, value.simple_value))
    return scalars


def tensorboard_images(logdir: Path) -> dict[str, list[tuple[int, np.ndarray]]]:
    """Decoded `(H, W, 3)` images by tag."""
    images: dict[str, list[tuple[int, np.ndarray]]] = {}
    for step, value in tensorboard_values(logdir):
        if value.HasField("image"):
            decoded = np.asarray(Image.open(io.BytesIO(value.image.encoded_image_string)).convert("RGB"))
            images.setdefault(value.tag, []).append((step, decoded))
    return images
