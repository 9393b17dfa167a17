"""Mixup and CutMix as timm's `timm.data.mixup.Mixup`, on a batch inside the compiled step.

Each image is mixed with its mirror in the batch (image i with image B-1-i, timm's `x.flip(0)`): Mixup blends the
two, `lam * x + (1 - lam) * partner`; CutMix pastes the partner's pixels into a box whose side is
`sqrt(1 - lam)` of the image's, centred anywhere in the image and cut off at its edges (then `lam` is corrected to
the area kept when `correct_lam`). The targets are mixed the same way from label-smoothed one-hots. `mode` says
what shares the draws: the whole batch ('batch'), each mirrored pair ('pair') or each image ('elem'); with
probability 1 - `prob` an image (or the batch) is left as it is.

Drawn from a JAX key (the step's, so a resumed run mixes as an uninterrupted one); videos `(B, T, H, W, C)` get one
box per clip.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import optax

MODES = ("batch", "pair", "elem")


@dataclasses.dataclass(frozen=True)
class Mixup:
    """timm's arguments: `mixup_alpha` / `cutmix_alpha` > 0 switch each on (Beta(alpha, alpha) draws of lam), with
    both on CutMix is chosen with `switch_prob`; `cutmix_minmax` (min, max) draws the box's sides as those
    fractions of the image's instead (CutMix on)."""

    mixup_alpha: float = 0.0
    cutmix_alpha: float = 0.0
    cutmix_minmax: tuple[float, float] | None = None
    prob: float = 1.0
    switch_prob: float = 0.5
    mode: str = "batch"
    correct_lam: bool = True

    def __post_init__(self) -> None:
        for name in ("mixup_alpha", "cutmix_alpha", "prob", "switch_prob"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or isinstance(value, bool) or not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0; got {value!r}")
        if self.prob > 1 or self.switch_prob > 1:
            raise ValueError(f"prob and switch_prob are probabilities, in [0, 1]; got {self.prob}, {self.switch_prob}")
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}; got {self.mode!r}")
        minmax = self.cutmix_minmax
        if minmax is not None and not (isinstance(minmax, tuple | list) and len(minmax) == 2
                                       and 0 < minmax[0] <= minmax[1] <= 1):
            raise ValueError(f"cutmix_minmax must be None or (min, max) fractions of the image side, "
                             f"0 < min <= max <= 1; got {minmax!r}")

    @property
    def enabled(self) -> bool:
        return self.prob > 0 and (self.mixup_alpha > 0 or self.cutmix_alpha > 0 or self.cutmix_minmax is not None)

    def __call__(self, key: jax.Array, images: jax.Array, labels: jax.Array, num_classes: int,
                 label_smoothing: float = 0.0) -> tuple[jax.Array, jax.Array]:
        """`(images, targets)`: the mixed batch, and float32 `(B, num_classes)` targets that sum to 1."""
        batch, height, width = images.shape[0], images.shape[-3], images.shape[-2]
        lam, cutmix, boxes = self.draw(key, batch, height, width)
        rows, cols = jnp.arange(height), jnp.arange(width)
        y0, y1, x0, x1 = (b[:, None, None] for b in boxes)
        inside = (rows[None, :, None] >= y0) & (rows[None, :, None] < y1) & (cols >= x0) & (cols < x1)
        inside = inside.reshape(batch, *(1,) * (images.ndim - 4), height, width, 1)
        partner = images[::-1]
        shape = (batch,) + (1,) * (images.ndim - 1)
        blended = (images * lam.reshape(shape).astype(images.dtype)
                   + partner * (1 - lam).reshape(shape).astype(images.dtype))
        pasted = jnp.where(inside, partner, images)
        mixed = jnp.where(cutmix.reshape(shape), pasted, blended)
        one_hot = optax.smooth_labels(jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), label_smoothing)
        targets = lam[:, None] * one_hot + (1 - lam[:, None]) * one_hot[::-1]
        return mixed, targets

    def draw(self, key: jax.Array, batch: int, height: int, width: int
             ) -> tuple[jax.Array, jax.Array, tuple[jax.Array, ...]]:
        """Per image: `lam` (the corrected one for CutMix), whether it is CutMix, and the box `(y0, y1, x0, x1)`
        (empty for Mixup), with the sharing `mode` asks for."""
        count = {"batch": 1, "pair": (batch + 1) // 2, "elem": batch}[self.mode]
        k_apply, k_switch, k_mix, k_cut, k_box = jax.random.split(key, 5)
        mixup_lam = jax.random.beta(k_mix, self.mixup_alpha, self.mixup_alpha, (count,)) if self.mixup_alpha > 0 \
            else jnp.ones((count,))
        cutmix_on = self.cutmix_alpha > 0 or self.cutmix_minmax is not None
        cutmix_lam = (jax.random.beta(k_cut, self.cutmix_alpha, self.cutmix_alpha, (count,))
                      if self.cutmix_alpha > 0 else jnp.ones((count,)))
        if self.mixup_alpha > 0 and cutmix_on:
            cutmix = jax.random.uniform(k_switch, (count,)) < self.switch_prob
        else:
            cutmix = jnp.full((count,), cutmix_on)
        applied = jax.random.uniform(k_apply, (count,)) < self.prob
        lam = jnp.where(applied, jnp.where(cutmix, cutmix_lam, mixup_lam), 1.0)
        cutmix = cutmix & applied
        if self.cutmix_minmax is None:
            centre = (jax.random.randint(k_box, (2, count), 0, jnp.array([[height], [width]])))
            y0, y1, x0, x1 = cutmix_box(height, width, lam, centre[0], centre[1])
        else:
            y0, y1, x0, x1 = minmax_box(k_box, height, width, self.cutmix_minmax, count)
        y1, x1 = jnp.where(cutmix, y1, y0), jnp.where(cutmix, x1, x0)  # Mixup and unmixed images paste nothing
        if self.correct_lam or self.cutmix_minmax is not None:
            lam = jnp.where(cutmix, 1.0 - (y1 - y0) * (x1 - x0) / (height * width), lam)
        per_image = {"batch": jnp.zeros(batch, int),
                     "pair": jnp.minimum(jnp.arange(batch), batch - 1 - jnp.arange(batch)),
                     "elem": jnp.arange(batch)}[self.mode]
        return lam[per_image], cutmix[per_image], tuple(b[per_image] for b in (y0, y1, x0, x1))


def cutmix_box(height: int, width: int, lam: jax.Array, cy: jax.Array, cx: jax.Array) -> tuple[jax.Array, ...]:
    """timm's `rand_bbox`: sides `int(side * sqrt(1 - lam))` centred on `(cy, cx)`, clipped to the image;
    `(y0, y1, x0, x1)`, ends exclusive."""
    ratio = jnp.sqrt(1.0 - lam)
    cut_h, cut_w = jnp.floor(height * ratio).astype(jnp.int32), jnp.floor(width * ratio).astype(jnp.int32)
    y0, y1 = jnp.clip(cy - cut_h // 2, 0, height), jnp.clip(cy + (cut_h + 1) // 2, 0, height)
    x0, x1 = jnp.clip(cx - cut_w // 2, 0, width), jnp.clip(cx + (cut_w + 1) // 2, 0, width)
    return y0, y1, x0, x1


def minmax_box(key: jax.Array, height: int, width: int, minmax: tuple[float, float], count: int
               ) -> tuple[jax.Array, ...]:
    """timm's `rand_bbox_minmax`: sides drawn from [int(side * min), int(side * max)) (the lower end when they
    meet), placed anywhere wholly inside the image."""
    k_h, k_w, k_y, k_x = jax.random.split(key, 4)

    def side(k: jax.Array, length: int) -> jax.Array:
        low, high = int(length * minmax[0]), int(length * minmax[1])
        return jax.random.randint(k, (count,), low, max(high, low + 1))

    cut_h, cut_w = side(k_h, height), side(k_w, width)
    y0 = jax.random.randint(k_y, (count,), 0, height - cut_h + 1)
    x0 = jax.random.randint(k_x, (count,), 0, width - cut_w + 1)
    return y0, y0 + cut_h, x0, x0 + cut_w
