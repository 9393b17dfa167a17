"""DeiT III's augmentations: 3-Augment and ColorJitter (vit_jax.augment.three_augment, .color_jitter) and the simple
random crop (`train_crop='simple'`) against torchvision's transforms and DeiT's augment.py lines, given the same
draws; the draws' distributions; videos alike per frame."""

import numpy as np
import pytest
from PIL import Image, ImageFilter, ImageOps
from scipy import stats

from vit_jax.augment import color_jitter, three_augment
from vit_jax.data.in_memory import batchable
from vit_jax.data.preprocessing import Preprocess
from vit_jax.data.sources import InMemorySource


@pytest.fixture(scope="module")
def torchvision():
    from vit_jax.timm_compat import import_timm

    import_timm()  # torchvision's ops, for its import on CPU PyTorch
    import torchvision

    return torchvision


def photo(rng, mode="RGB"):
    channels = 3 if mode == "RGB" else 1
    smooth = np.cumsum(rng.integers(-6, 7, (40, 48, channels)), axis=1) + rng.integers(60, 200, (1, 1, channels))
    image = np.clip(smooth, 0, 255).astype(np.uint8)
    return Image.fromarray(image[:, :, 0] if channels == 1 else image)


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_each_choice_is_deits(mode, rng, torchvision):
    """DeiT's gray_scale (torchvision's Grayscale(3)), Solarization (ImageOps.solarize) and GaussianBlur (PIL's, of
    the drawn radius); a grayscale image stays grayscale (its gray is itself)."""
    image = photo(rng, mode)
    gray = three_augment.operate(("grayscale", None), image)
    if mode == "RGB":
        np.testing.assert_array_equal(np.asarray(gray), np.asarray(torchvision.transforms.Grayscale(3)(image)))
    else:
        assert gray.mode == "L" and np.array_equal(np.asarray(gray), np.asarray(image))
    np.testing.assert_array_equal(np.asarray(three_augment.operate(("solarize", None), image)),
                                  np.asarray(ImageOps.solarize(image)))
    np.testing.assert_array_equal(np.asarray(three_augment.operate(("gaussian_blur", 1.3), image)),
                                  np.asarray(image.filter(ImageFilter.GaussianBlur(radius=1.3))))


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_color_jitter_is_torchvisions_given_its_draws(mode, rng, torchvision):
    """torchvision's ColorJitter(0.3, 0.3, 0.3).get_params draws an order and three factors; applied as its forward
    applies them (brightness, contrast, saturation by index), they give vit_jax's pixels for the same plan."""
    import torch
    from torchvision.transforms import functional as F

    jitter = torchvision.transforms.ColorJitter(0.3, 0.3, 0.3)
    image = photo(rng, mode)
    torch.manual_seed(0)
    for _ in range(6):
        order, b, c, s, _ = jitter.get_params(jitter.brightness, jitter.contrast, jitter.saturation, jitter.hue)
        expected, plan = image, []
        for index in order.tolist():
            name, factor, adjust = [("brightness", b, F.adjust_brightness), ("contrast", c, F.adjust_contrast),
                                    ("saturation", s, F.adjust_saturation), (None, None, None)][index]
            if name is not None:
                expected, plan = adjust(expected, factor), plan + [(name, factor)]
        np.testing.assert_array_equal(np.asarray(color_jitter.operate(tuple(plan), image)), np.asarray(expected))


def test_the_draws_are_uniform_choices_radii_orders_and_factors():
    rng = np.random.default_rng(0)
    plans = [three_augment.draw(rng) for _ in range(3000)]
    counts = [sum(p[0] == choice for p in plans) for choice in three_augment.CHOICES]
    assert stats.chisquare(counts).pvalue > 1e-3
    radii = [r for c, r in plans if c == "gaussian_blur"]
    assert stats.kstest(radii, stats.uniform(0.1, 1.9).cdf).pvalue > 1e-3
    jitters = [color_jitter.draw(0.3, rng) for _ in range(3000)]
    orders = {}
    for plan in jitters:
        orders[tuple(name for name, _ in plan)] = orders.get(tuple(name for name, _ in plan), 0) + 1
    assert len(orders) == 6 and stats.chisquare(list(orders.values())).pvalue > 1e-3
    factors = [factor for plan in jitters for _, factor in plan]
    assert stats.kstest(factors, stats.uniform(0.7, 0.6).cdf).pvalue > 1e-3


def test_training_views_get_them_a_video_alike_in_every_frame_and_never_batched(rng):
    frame = np.asarray(photo(rng))
    video = np.stack([frame] * 3)
    pp = Preprocess(image_size=(40, 48), three_augment=True, color_jitter=0.3)
    outputs = [pp.train_view({"image": video, "label": 0}, np.random.default_rng(seed))["image"] for seed in range(8)]
    assert all(np.array_equal(out[0], out[t]) for out in outputs for t in (1, 2))
    assert len({out.tobytes() for out in outputs}) == 8 and not any(np.array_equal(out[0], frame) for out in outputs)
    source = InMemorySource([{"image": frame, "label": 0}] * 4)
    assert batchable(source, Preprocess(image_size=(40, 48))) and not batchable(source, pp)
    with pytest.raises(ValueError, match="color_jitter must be a number >= 0"):
        Preprocess(image_size=(8, 8), color_jitter=-0.1)


@pytest.mark.parametrize("hw, size", [((40, 48), (16, 16)), ((50, 30), (24, 24)), ((32, 32), (32, 32))])
def test_simple_random_crop_is_deit3s_resize_then_reflect_padded_random_crop(hw, size, rng, torchvision):
    """DeiT III's `--src`: torchvision's Resize(size, bicubic) then RandomCrop(size, padding=4, reflect) give the
    training view's pixels at every window torchvision can draw; the windows drawn cover that range evenly."""
    from torchvision.transforms import functional as F

    image = photo(rng).resize(hw[::-1])
    pp = Preprocess(image_size=size, train_crop="simple", crop_padding=4, resize_method="bicubic")
    resized = torchvision.transforms.Resize(size[0], interpolation=F.InterpolationMode.BICUBIC)(image)
    padded = F.pad(resized, 4, padding_mode="reflect")
    rows, cols = padded.size[1] - size[0] + 1, padded.size[0] - size[1] + 1
    seen = {}
    for seed in range(60):
        generator = np.random.default_rng(seed)
        view = pp.train_view({"image": np.asarray(image), "label": 0}, generator)["image"]
        generator = np.random.default_rng(seed)  # the same draws: the window's top and left
        top, left = int(generator.integers(0, rows)), int(generator.integers(0, cols))
        expected = np.asarray(F.crop(padded, top, left, *size))
        np.testing.assert_array_equal(view, expected)
        seen[(top, left)] = True
    assert len(seen) > min(30, rows * cols // 2)
