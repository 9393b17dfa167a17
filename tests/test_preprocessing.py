import io

import numpy as np
import pytest
from PIL import Image

from vit_jax.data.encoded_image import EncodedImage
from vit_jax.data.preprocessing import Preprocess, inception_crop_box, pad_and_random_crop, resize


def test_resize_is_pil_and_keeps_channels(rng):
    gray = rng.integers(0, 256, (8, 8, 1), dtype=np.uint8)
    out = resize(gray, (16, 12))
    assert out.shape == (16, 12, 1) and out.dtype == np.uint8
    expected = np.asarray(Image.fromarray(gray[:, :, 0]).resize((12, 16), Image.Resampling.BILINEAR))
    np.testing.assert_array_equal(out[:, :, 0], expected)
    rgb = rng.integers(0, 256, (5, 7, 3), dtype=np.uint8)
    assert resize(rgb, (5, 7)) is rgb  # already the right size: untouched


def test_value_range_maps_0_and_255_to_the_ends_then_mean_and_std():
    out = Preprocess((1, 1)).pixels(np.array([0, 51, 255], np.uint8)[:, None])
    np.testing.assert_allclose(out[:, 0], [-1.0, -0.6, 1.0], atol=1e-6)
    assert out.dtype == np.float32
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    image = np.array([[[0, 128, 255], [17, 200, 3]]], np.uint8)
    out = Preprocess((1, 2), value_range=(0.0, 1.0), mean=mean, std=std).pixels(image)
    np.testing.assert_allclose(out, (image / 255.0 - mean) / std, rtol=1e-6, atol=1e-6)  # torchvision's Normalize
    gray = Preprocess((1, 2), channels=3).pixels(image[..., :1])
    np.testing.assert_allclose(gray, np.repeat(image[..., :1] / 127.5 - 1, 3, axis=-1), atol=1e-6)


@pytest.mark.parametrize("mode,fmt", [("RGB", "JPEG"), ("L", "PNG")])
def test_an_encoded_image_trains_and_evaluates_as_its_decoded_array(rng, mode, fmt):
    """Training crops the decoded PIL picture (vit_jax.data.encoded_image): the same pixels as the array path."""
    channels = 3 if mode == "RGB" else 1
    pixels = rng.integers(0, 256, (37, 53, channels)[: 3 if channels == 3 else 2], dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels, mode).save(buffer, format=fmt)
    encoded = EncodedImage(buffer.getvalue(), channels)
    decoded = np.asarray(Image.open(io.BytesIO(buffer.getvalue())))
    decoded = decoded[:, :, None] if channels == 1 else decoded
    np.testing.assert_array_equal(encoded.array(), decoded)
    preprocess = Preprocess((16, 16), train_crop="inception", flip=True, crop_scale=(0.2, 1.0))
    for seed in range(8):
        from_bytes = preprocess.train({"image": encoded, "label": 3}, np.random.default_rng(seed))
        from_array = preprocess.train({"image": decoded, "label": 3}, np.random.default_rng(seed))
        np.testing.assert_array_equal(from_bytes["image"], from_array["image"])
        assert from_bytes["image"].shape == (16, 16, channels) and from_bytes["label"] == 3
    np.testing.assert_array_equal(preprocess.eval({"image": encoded, "label": 1})["image"],
                                  preprocess.eval({"image": decoded, "label": 1})["image"])


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


def test_train_view_then_pixels_is_train(rng):
    preprocess = Preprocess((6, 6), train_crop="inception", flip=True, mean=(0.1, 0.2, 0.3), std=(0.5, 0.6, 0.7))
    image = rng.integers(0, 256, (11, 9, 3), dtype=np.uint8)
    for seed in range(4):
        view = preprocess.train_view({"image": image, "label": 2}, np.random.default_rng(seed))
        full = preprocess.train({"image": image, "label": 2}, np.random.default_rng(seed))
        assert view["image"].dtype == np.uint8 and view["label"] == full["label"] == 2
        np.testing.assert_array_equal(preprocess.pixels(view["image"]), full["image"])
        np.testing.assert_allclose(np.asarray(preprocess.pixels_on_device(view["image"])), full["image"], atol=1e-6)
