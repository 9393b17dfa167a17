"""Random erasing (`vit_jax.augment.random_erasing`) against timm's `RandomErasing` run on the same images."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.stats

from vit_jax.augment.random_erasing import RandomErasing
from vit_jax.timm_compat import import_timm


def erased_boxes(erased: np.ndarray) -> list[tuple[int, int] | None]:
    """(height, width) of the one erased rectangle of each `(H, W)` mask, None where nothing was erased."""
    boxes = []
    for mask in erased:
        rows, cols = np.flatnonzero(mask.any(1)), np.flatnonzero(mask.any(0))
        if not rows.size:
            boxes.append(None)
            continue
        assert mask[rows[0]:rows[-1] + 1, cols[0]:cols[-1] + 1].all() and mask.sum() == rows.size * cols.size
        boxes.append((rows.size, cols.size))
    return boxes


def test_boxes_are_drawn_as_timms(rng):
    """One box per image: how often an image is erased, and the boxes' heights, widths and positions, are timm's
    distribution (two-sample tests against timm's RandomErasing on the same images)."""
    import_timm()
    import torch
    from timm.data.random_erasing import RandomErasing as TimmErasing

    count, height, width = 3000, 12, 20  # small images: the 10 tries often all miss, as timm's do
    ours = RandomErasing(prob=0.6, mode="const", min_area=0.1, max_area=0.9, min_aspect=0.25)
    out = np.asarray(jax.jit(ours)(jax.random.key(0), jnp.ones((count, height, width, 2))))
    ours_boxes = erased_boxes(out[..., 0] == 0)
    assert (out[..., 0] == out[..., 1]).all()
    torch.manual_seed(0)
    import random
    random.seed(0)
    timm_out = TimmErasing(0.6, min_area=0.1, max_area=0.9, min_aspect=0.25, mode="const", device="cpu")(
        torch.ones(count, 2, height, width)).numpy()
    theirs_boxes = erased_boxes(timm_out[:, 0] == 0)
    ours_rate = np.mean([b is not None for b in ours_boxes])
    theirs_rate = np.mean([b is not None for b in theirs_boxes])
    assert abs(ours_rate - theirs_rate) < 4 * np.sqrt(2 * 0.3 / count)
    for axis in (0, 1):
        a = [b[axis] for b in ours_boxes if b is not None]
        b = [b[axis] for b in theirs_boxes if b is not None]
        assert scipy.stats.ks_2samp(a, b).pvalue > 1e-3, axis
    tops = np.argmax((out[..., 0] == 0).any(2), 1)[[b is not None and b[0] == 4 for b in ours_boxes]]
    theirs_tops = np.argmax((timm_out[:, 0] == 0).any(2), 1)[[b is not None and b[0] == 4 for b in theirs_boxes]]
    assert scipy.stats.ks_2samp(tops, theirs_tops).pvalue > 1e-3


def test_fills_counts_and_videos(rng):
    images = jnp.full((400, 3, 16, 16, 3), 7.0)  # videos: one box, in every frame
    pixel = np.asarray(jax.jit(RandomErasing(prob=1.0, mode="pixel"))(jax.random.key(1), images))
    erased = pixel != 7.0
    assert (erased == erased[:, :1]).all() and erased.any(axis=(1, 2, 3, 4)).mean() > 0.9
    noise = pixel[erased]
    assert abs(noise.mean()) < 0.05 and abs(noise.std() - 1) < 0.05  # standard normal
    rand = np.asarray(jax.jit(RandomErasing(prob=1.0, mode="rand"))(jax.random.key(2), images[:, 0]))
    for image in rand[:20]:
        colours = np.unique(image[(image != 7.0).any(-1)], axis=0)
        assert len(colours) <= 1  # one colour per box
    two = np.asarray(jax.jit(RandomErasing(prob=1.0, mode="const", min_count=2, max_count=2, max_area=0.05))(
        jax.random.key(3), jnp.ones((50, 32, 32, 1))))
    labelled = [scipy.ndimage.label(mask)[1] for mask in two[..., 0] == 0]
    assert max(labelled) == 2 and min(labelled) >= 1  # two boxes (which may touch)
    untouched = jax.jit(RandomErasing(prob=0.0001))(jax.random.key(4), jnp.ones((8, 8, 8, 1)))
    assert (np.asarray(untouched) == 1).all()


def test_bad_arguments_are_refused_by_name():
    for kwargs, words in [({"mode": "noise"}, "mode"), ({"prob": 2.0}, "prob"), ({"min_area": 0.5, "max_area": 0.1},
                          "min_area"), ({"min_aspect": 2.0}, "min_aspect"), ({"max_count": 0}, "max_count")]:
        with pytest.raises(ValueError, match=words):
            RandomErasing(**kwargs)
