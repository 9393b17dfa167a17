"""The pictures of `vit_jax.visualize`, logged to TensorBoard by the trainer at evaluation time."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import jax
import numpy as np
from jax.experimental import multihost_utils

from vit_jax.metric_writers import MetricWriter
from vit_jax.models.vit import VisionTransformer

PICTURE_SCHEDULES = ("eval", "last", "none")


def first_examples(source: Sequence[dict[str, Any]], preprocess: Any, count: int) -> np.ndarray:
    """The first `count` examples of an eval source, preprocessed as evaluation does: `(count, h, w, C)`."""
    return np.stack([preprocess.eval(source[i])["image"] for i in range(min(count, len(source)))])


@dataclasses.dataclass
class PictureLogger:
    model: VisionTransformer
    images: np.ndarray  # preprocessed eval images; the maps follow the first
    value_range: tuple[float, float]
    schedule: str  # one of PICTURE_SCHEDULES
    writer: MetricWriter

    def after_eval(self, step: int, params: Any, is_last: bool) -> None:
        """Every process must call this (multi-host runs gather the parameters); process 0 draws and writes."""
        if self.schedule == "none" or (self.schedule == "last" and not is_last):
            return
        if jax.process_count() > 1:
            params = multihost_utils.process_allgather(params, tiled=True)
        else:
            params = jax.device_get(params)
        if jax.process_index() != 0 or not len(self.images):
            return
        from vit_jax.interpret.figures import rgb_array  # matplotlib (0.3 s to import) only where pictures are drawn
        from vit_jax.interpret.pictures import compute_pictures

        pictures = compute_pictures(self.model, params, self.images, self.value_range)
        self.writer.write_images(step, {name: rgb_array(figure) for name, figure in pictures.figures().items()})
