import numpy as np
import pytest
from PIL import Image

from vit_jax.data.preprocessing import Preprocess, inception_crop_box, pad_and_random_crop, resize, to_value_range


def test_resize_is_pil_and_keeps_channels(rng):
    gray = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    out = resize(gray, (16, 12))
    assert out.shape == (16, 12, 1) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(gray[:, :, 0]).resize((12, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[:, :, 0], expected)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert resize(rgb, (5, 7)) is rgb  # already the right size: untouched


def test_value_range_maps_0_and_255_to_the_ends():
    out = to_value_range(np.array([0, 51, 255], np.uint8), (-1.0, 1.0))
    np.testing.assert_allclose(out, [-1.0, -0.6, 1.0], atol=1e-6)
    assert out.dtype == np.float32


def test_pad_and_random_crop_equals_numpy_pad_then_crop(rng):
    image = rng.integers(1, 256, (6, 5, 3), dtype=np.uint8)
    for seed in range(30):
        generator = np.random.default_rng(seed)
        top, left = np.random.default_rng(seed).integers(-2, 3, size=2)
        reference = np.pad(image, ((2, 2), (2, 2), (0, 0)))[top + 2 : top + 8, left + 2 : left + 7]
        np.testing.assert_array_equal(pad_and_random_crop(image, 2, generator), reference)


def test_inception_crop_box_respects_scale_ratio_and_bounds():
    generator = np.random.default_rng(0)
    for _ in range(300):
        top, left, h, w = inception_crop_box(60, 80, (0.3, 1.0), (3 / 4, 4 / 3), generator)
        assert 0 <= top and top + h <= 60 and 0 <= left and left + w <= 80
        if (h, w) != (60, 80):
            assert 0.3 * 4800 * 0.9 <= h * w <= 4800 and 3 / 4 * 0.9 <= w / h <= 4 / 3 * 1.1


def test_train_preprocessing_is_deterministic_given_the_generator_and_eval_is_plain(rng):
    example = {"image": rng.integers(0, 256, (20, 24, 3), dtype=np.uint8), "label": 4}
    pp = Preprocess(image_size=(16, 16), train_crop="inception", flip=True, value_range=(0.0, 1.0))
    a = pp.train(example, np.random.default_rng(7))
    b = pp.train(example, np.random.default_rng(7))
    np.testing.assert_array_equal(a["image"], b["image"])
    assert a["image"].shape == (16, 16, 3) and a["label"] == 4 and a["label"].dtype == np.int32
    evaluated = pp.eval(example)["image"]
    np.testing.assert_allclose(evaluated, resize(example["image"], (16, 16)) / 255.0, atol=1e-6)


def test_flip_mirrors_about_half_of_the_time(rng):
    image = rng.integers(0, 256, (4, 4, 1), dtype=np.uint8)
    pp = Preprocess(image_size=(4, 4), flip=True, value_range=(0.0, 255.0))
    generator = np.random.default_rng(0)
    flipped = [np.array_equal(pp.train({"image": image, "label": 0}, generator)["image"], image[:, ::-1])
               for _ in range(400)]
    assert 0.4 < np.mean(flipped) < 0.6


def test_unknown_options_are_clear_errors():
    with pytest.raises(ValueError, match="train_crop must be one of"):
        Preprocess(image_size=(8, 8), train_crop="random")
    with pytest.raises(ValueError, match="resize_method must be one of"):
        Preprocess(image_size=(8, 8), resize_method="area")


# ---------------------------------------------------------------------------------------------------------------
# Videos (T, H, W, C): frame by frame, one crop and one flip per clip


@pytest.mark.parametrize("train_crop, flip", [("pad", True), ("inception", True), ("none", False)])
def test_a_video_gets_each_frame_the_images_treatment_with_one_draw_per_clip(train_crop, flip, rng):
    video = rng.integers(0, 256, (5, 20, 24, 1), dtype=np.uint8)
    pp = Preprocess(image_size=(16, 16), train_crop=train_crop, crop_padding=3, flip=flip, value_range=(0.0, 1.0))
    for seed in range(5):
        out = pp.train({"image": video, "label": 2}, np.random.default_rng(seed))["image"]
        assert out.shape == (5, 16, 16, 1) and out.dtype == np.float32
        for frame in range(5):  # the same generator state gives each frame the crop and flip of the whole clip
            alone = pp.train({"image": video[frame], "label": 2}, np.random.default_rng(seed))["image"]
            np.testing.assert_array_equal(out[frame], alone)
    evaluated = pp.eval({"image": video, "label": 2})["image"]
    np.testing.assert_allclose(evaluated, np.stack([resize(f, (16, 16)) for f in video]) / 255.0, atol=1e-6)


@pytest.mark.parametrize("train_crop", ["none", "pad", "inception"])
def test_a_source_resized_once_gives_the_examples_of_resizing_on_every_read(rng, train_crop):
    from vit_jax.data.sources import InMemorySource

    examples = [{"image": rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), "label": i} for i in range(5)]
    preprocess = Preprocess(image_size=(16, 16), train_crop=train_crop, crop_padding=2, flip=True)
    assert preprocess.resize_once(training=False)  # evaluation resizes first, always
    assert preprocess.resize_once(training=True) == (train_crop != "inception")  # nothing random before it
    once = InMemorySource(examples, chunk=2, transform=preprocess.resized)
    assert once[0]["image"].shape == (16, 16, 1) and examples[0]["image"].shape == (8, 8, 1)  # source untouched
    for i, example in enumerate(examples):
        np.testing.assert_array_equal(preprocess.eval(once[i])["image"], preprocess.eval(example)["image"])
        if preprocess.resize_once(training=True):
            a = preprocess.train(once[i], np.random.default_rng(i))
            b = preprocess.train(example, np.random.default_rng(i))
            np.testing.assert_array_equal(a["image"], b["image"])
            assert a["label"] == b["label"] == i
