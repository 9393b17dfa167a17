"""Random erasing as timm's `timm.data.random_erasing.RandomErasing`, on a batch inside the compiled step.

Applied to the model's input values (timm erases after normalising): with probability `prob` an image gets
between `min_count` and `max_count` boxes, each of area `uniform(min_area, max_area) / count` of the image and
aspect ratio log-uniform in [min_aspect, 1 / min_aspect] (10 tries for one that fits strictly inside, as timm;
none is erased when all 10 miss), filled with per-pixel standard normal noise ('pixel', DeiT's), one normal
colour per box ('rand') or zeros ('const'). A video `(B, T, H, W, C)` gets the same boxes in every frame.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

MODES = ("pixel", "rand", "const")
TRIES = 10


@dataclasses.dataclass(frozen=True)
class RandomErasing:
    prob: float = 0.0
    mode: str = "pixel"
    min_area: float = 0.02
    max_area: float = 1 / 3
    min_aspect: float = 0.3
    min_count: int = 1
    max_count: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.prob <= 1:
            raise ValueError(f"prob must be in [0, 1]; got {self.prob!r}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        if not 0 < self.min_area <= self.max_area <= 1:
            raise ValueError(f"min_area and max_area must satisfy 0 < min_area <= max_area <= 1; got "
                             f"{self.min_area!r}, {self.max_area!r}")
        if not 0 < self.min_aspect <= 1:
            raise ValueError(f"min_aspect must be in (0, 1] (aspect ratios run to 1 / min_aspect); got "
                             f"{self.min_aspect!r}")
        if not (isinstance(self.min_count, int) and isinstance(self.max_count, int)
                and 1 <= self.min_count <= self.max_count):
            raise ValueError(f"min_count and max_count must be integers, 1 <= min_count <= max_count; got "
                             f"{self.min_count!r}, {self.max_count!r}")

    def __call__(self, key: jax.Array, images: jax.Array) -> jax.Array:
        batch, height, width = images.shape[0], images.shape[-3], images.shape[-2]
        keys = jax.random.split(key, 3 + self.max_count)
        erased = jax.random.uniform(keys[0], (batch,)) < self.prob
        counts = jax.random.randint(keys[1], (batch,), self.min_count, self.max_count + 1)
        frame = (batch,) + (1,) * (images.ndim - 4)
        for k in range(self.max_count):
            top, left, h, w, found = self.box(keys[3 + k], batch, height, width, counts)
            use = erased & found & (k < counts)
            rows, cols = jnp.arange(height), jnp.arange(width)
            inside = ((rows[None, :, None] >= top[:, None, None]) & (rows[None, :, None] < (top + h)[:, None, None])
                      & (cols[None, None, :] >= left[:, None, None]) & (cols[None, None, :] < (left + w)[:, None, None]))
            inside = (inside & use[:, None, None]).reshape(*frame, height, width, 1)
            fill = self.fill(jax.random.fold_in(keys[2], k), images.shape, images.dtype)
            images = jnp.where(inside, fill, images)
        return images

    def box(self, key: jax.Array, batch: int, height: int, width: int, counts: jax.Array
            ) -> tuple[jax.Array, ...]:
        """The first of `TRIES` draws that fits strictly inside, per image: `(top, left, h, w, found)`."""
        k_area, k_aspect, k_top, k_left = jax.random.split(key, 4)
        area = jax.random.uniform(k_area, (batch, TRIES), minval=self.min_area, maxval=self.max_area)
        area = area * (height * width) / counts[:, None]
        log_aspect = jax.random.uniform(k_aspect, (batch, TRIES), minval=math.log(self.min_aspect),
                                        maxval=-math.log(self.min_aspect))
        aspect = jnp.exp(log_aspect)
        h = jnp.round(jnp.sqrt(area * aspect)).astype(jnp.int32)  # round half to even, as Python's round()
        w = jnp.round(jnp.sqrt(area / aspect)).astype(jnp.int32)
        fits = (w < width) & (h < height)
        first = jnp.argmax(fits, axis=1)
        h, w = jnp.take_along_axis(h, first[:, None], 1)[:, 0], jnp.take_along_axis(w, first[:, None], 1)[:, 0]
        top = jax.random.randint(k_top, (batch,), 0, height - h + 1)
        left = jax.random.randint(k_left, (batch,), 0, width - w + 1)
        return top, left, h, w, jnp.any(fits, axis=1)

    def fill(self, key: jax.Array, shape: tuple[int, ...], dtype: jnp.dtype) -> jax.Array:
        if self.mode == "pixel":
            return jax.random.normal(key, shape, dtype)
        if self.mode == "rand":
            return jax.random.normal(key, (shape[0],) + (1,) * (len(shape) - 2) + (shape[-1],), dtype)
        return jnp.zeros((), dtype)
