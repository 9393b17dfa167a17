"""RandAugment and AutoAugment (`vit_jax.augment.rand_augment`, `.auto_augment`) against timm's own
`timm.data.auto_augment`."""

import random

import numpy as np
import pytest
from PIL import Image

from vit_jax.augment.auto_augment import POLICIES, AutoAugment
from vit_jax.augment.rand_augment import LEVEL_TO_ARG, OPERATIONS, RandAugment, apply
from vit_jax.data.preprocessing import Preprocess
from vit_jax.timm_compat import import_timm

FILL = (124, 116, 104)  # timm's img_mean for ImageNet's mean


@pytest.fixture(scope="module")
def auto_augment():
    import_timm()
    import timm.data.auto_augment as auto_augment

    return auto_augment


@pytest.fixture(scope="module")
def photo():
    """Smooth gradients with edges and a dark corner: every operation changes it visibly."""
    rng = np.random.default_rng(0)
    y, x = np.mgrid[0:24, 0:30]
    image = np.stack([x * 8, y * 10, (x + y) * 4], -1) + rng.integers(0, 40, (24, 30, 3))
    image[:6, :8] = 5
    return Image.fromarray(np.clip(image, 0, 255).astype(np.uint8))


class Scripted:
    """A stand-in for both random sources that returns scripted draws: ours (numpy Generator methods) and timm's
    (`random.random`, `random.gauss`, `np.random.choice`)."""

    def __init__(self, draws):
        self.draws = list(draws)

    def next(self):
        return self.draws.pop(0)

    def random(self, *args):
        return self.next()

    def normal(self, mean, std):
        return mean + std * (4 * self.next() - 2)

    gauss = normal

    def uniform(self, low, high):
        return low + (high - low) * self.next()

    def integers(self, high):
        value = self.next()
        return value if isinstance(value, int) else int(value * high)

    def choice(self, population, size, replace=True, p=None):
        indices = [self.next() for _ in range(size)]
        return indices if isinstance(population, int) else [population[i] for i in indices]


@pytest.mark.parametrize("mode", ["RGB", "L"])
def test_every_operation_at_every_magnitude_gives_timms_argument_and_pixels(auto_augment, photo, mode, monkeypatch):
    image = photo.convert(mode)
    fill = FILL if mode == "RGB" else round(sum(FILL) / 3)
    hparams = {"translate_const": 100, "img_mean": fill, "interpolation": Image.Resampling.BICUBIC}
    for name in OPERATIONS:
        for magnitude in (0.0, 2.5, 7.0, 10.0, 13.0):  # above 10 with mmax > 10
            for negate in (False, True):
                monkeypatch.setattr(auto_augment, "_randomly_negate", (lambda v: -v) if negate else (lambda v: v))
                level_fn = auto_augment.LEVEL_TO_ARG[name]
                theirs = level_fn(magnitude, hparams)[0] if level_fn else None
                ours = LEVEL_TO_ARG[name](magnitude / 10, Scripted([0.9 if negate else 0.1])) if level_fn else None
                assert ours == pytest.approx(theirs, rel=1e-12), (name, magnitude, negate)
                got = apply(((name, ours),), image, fill=FILL, resample="bicubic")
                if name.startswith("Posterize") and theirs <= 0:  # PIL >= 11 refuses 0 bits; older PIL: black
                    assert not np.asarray(got).any()
                    continue
                expected = auto_augment.NAME_TO_OP[name](image, theirs, fillcolor=fill,
                                                          resample=Image.Resampling.BICUBIC) if level_fn else \
                    auto_augment.NAME_TO_OP[name](image)
                np.testing.assert_array_equal(np.asarray(got), np.asarray(expected), err_msg=f"{name} {magnitude}")


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m7-n3-p0.8", "rand-m9-mstd101-mmax12-inc1",
                                  "rand-tweights-m8-n3", "rand-t3a-m6", "rand-t3aw-mstd1-n2", "rand-n1-p1.0"])
def test_a_config_string_means_what_it_means_to_timm(auto_augment, spec):
    theirs = auto_augment.rand_augment_transform(spec, {"img_mean": FILL})
    ours = RandAugment.parse(spec)
    assert ours.num_layers == theirs.num_layers
    assert ours.transforms == tuple(op.name for op in theirs.ops)
    op = theirs.ops[0]
    assert (ours.prob, ours.magnitude, ours.magnitude_std) == (op.prob, op.magnitude, op.magnitude_std)
    assert ours.magnitude_max == (op.magnitude_max or 10)
    if theirs.choice_weights is None:
        assert ours.weights is None
    else:
        np.testing.assert_allclose(np.asarray(ours.weights) / sum(ours.weights), theirs.choice_weights)


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "rand-m10-mstd101-n3", "rand-tweights-m8-n3-p0.7"])
def test_whole_transform_with_the_same_draws_gives_timms_pixels(auto_augment, photo, spec, monkeypatch):
    """Both sides read one script of draws (which operations, whether each applies, the magnitude noise, the
    signs), so the composition (order, probability test, clipping, sign) is checked, not only each operation."""
    theirs = auto_augment.rand_augment_transform(spec, {"img_mean": FILL,
                                                        "interpolation": Image.Resampling.BILINEAR})
    ours = RandAugment.parse(spec)
    script_rng = np.random.default_rng(1)
    for _ in range(40):
        picks = [int(i) for i in script_rng.choice(len(ours.transforms), ours.num_layers, replace=False)]
        draws = picks + [float(v) for v in script_rng.random(3 * ours.num_layers)]
        shared, mine = Scripted(draws), Scripted(draws)
        monkeypatch.setattr(random, "random", shared.random)
        monkeypatch.setattr(random, "gauss", shared.gauss)
        monkeypatch.setattr(random, "uniform", shared.uniform)
        monkeypatch.setattr(np.random, "choice", shared.choice)
        expected = np.asarray(theirs(photo))
        got = np.asarray(ours(photo, mine, fill=FILL, resample="bilinear"))
        np.testing.assert_array_equal(got, expected)
        assert len(mine.draws) == len(shared.draws)  # both read the script the same way


@pytest.mark.parametrize("spec", ["rand-m9-mstd0.5-inc1", "original-mstd0.5"])
def test_random_resampling_draws_bilinear_or_bicubic_per_geometric_operation_as_timm(auto_augment, photo, spec,
                                                                                      monkeypatch):
    """timm's default `--train-interpolation random`: no `interpolation` hparam, so each geometric operation
    picks bilinear or bicubic (`random.choice`) as it runs; one script of draws on both sides."""
    if spec.startswith("rand"):
        theirs, ours = auto_augment.rand_augment_transform(spec, {"img_mean": FILL}), RandAugment.parse(spec)
    else:
        theirs, ours = auto_augment.auto_augment_transform(spec, {"img_mean": FILL}), AutoAugment.parse(spec)
    script_rng = np.random.default_rng(3)
    methods = set()
    for _ in range(40):
        if spec.startswith("rand"):
            draws = [int(i) for i in script_rng.choice(len(ours.transforms), ours.num_layers, replace=False)]
        else:
            draws = [int(script_rng.integers(len(POLICIES[ours.policy])))]
        draws += [float(v) for v in script_rng.random(8)]
        shared, mine = Scripted(draws), Scripted(draws)
        monkeypatch.setattr(random, "random", shared.random)
        monkeypatch.setattr(random, "gauss", shared.gauss)
        monkeypatch.setattr(random, "uniform", shared.uniform)
        monkeypatch.setattr(np.random, "choice", shared.choice)
        monkeypatch.setattr(random, "choice", lambda seq, script=shared: seq[script.integers(len(seq))])
        expected = np.asarray(theirs(photo))
        plan = ours.draw(mine, random_resample=True)
        methods |= {entry[2] for entry in plan if len(entry) == 3}
        np.testing.assert_array_equal(np.asarray(apply(plan, photo, fill=FILL, resample="random")), expected)
        assert len(mine.draws) == len(shared.draws)
    assert methods == {"bilinear", "bicubic"}


def test_auto_augment_policies_are_timms(auto_augment):
    for name, policy in POLICIES.items():
        theirs = auto_augment.auto_augment_policy(name, {"img_mean": FILL})
        assert policy == tuple(tuple((op.name, op.prob, op.magnitude) for op in sub) for sub in theirs), name
    with pytest.raises(ValueError, match="timm's 3a is DeiT III's 3-Augment: pp.three_augment"):
        AutoAugment.parse("3a")
    with pytest.raises(ValueError, match="section 'm9' is not mstd<std>"):
        AutoAugment.parse("v0-m9")


@pytest.mark.parametrize("spec", ["v0", "original-mstd0.5", "originalr", "v0r-mstd1"])
def test_auto_augment_with_the_same_draws_gives_timms_pixels(auto_augment, photo, spec, monkeypatch):
    """One script of draws on both sides: the sub-policy, each operation's probability test, magnitude noise and
    sign."""
    theirs = auto_augment.auto_augment_transform(spec, {"img_mean": FILL, "interpolation": Image.Resampling.BILINEAR})
    ours = AutoAugment.parse(spec)
    script_rng = np.random.default_rng(2)
    for _ in range(40):
        draws = [int(script_rng.integers(len(POLICIES[ours.policy])))] + [float(v) for v in script_rng.random(6)]
        shared, mine = Scripted(draws), Scripted(draws)
        monkeypatch.setattr(random, "random", shared.random)
        monkeypatch.setattr(random, "gauss", shared.gauss)
        monkeypatch.setattr(random, "uniform", shared.uniform)
        monkeypatch.setattr(random, "choice", lambda seq, script=shared: seq[script.next()])
        try:
            expected = np.asarray(theirs(photo))
        except ValueError:  # v0's Posterize to 0 bits: PIL >= 11 raises (black here, tested per operation above)
            continue
        got = np.asarray(ours(photo, mine, fill=FILL, resample="bilinear"))
        np.testing.assert_array_equal(got, expected)
        assert len(mine.draws) == len(shared.draws)


def test_training_view_applies_it_after_the_flip_with_the_mean_colour_and_frames_alike(rng):
    image = rng.integers(0, 256, (12, 12, 3), dtype=np.uint8)
    augment = RandAugment(num_layers=1, prob=1.0, magnitude=10, transforms=("TranslateXRel",))
    mean, std = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
    preprocess = Preprocess((12, 12), value_range=(0.0, 1.0), mean=mean, std=std, rand_augment=augment)
    view = preprocess.train_view({"image": image, "label": 1}, np.random.default_rng(3))["image"]
    shifted = np.all(view == np.array(FILL, np.uint8), axis=-1)  # 45% of the width shifted in as the mean colour
    assert shifted.all(axis=0).sum() == round(0.45 * 12) - 1 or shifted.all(axis=0).sum() == round(0.45 * 12)
    gray = Preprocess((12, 12), rand_augment=augment).train_view(
        {"image": image[..., :1], "label": 1}, np.random.default_rng(3))["image"]
    assert gray.shape == (12, 12, 1) and (gray == 128).all(axis=0).sum() >= 5  # no mean: mid-gray
    video = np.stack([image, image, image])
    frames = Preprocess((12, 12), rand_augment=RandAugment(magnitude=9, magnitude_std=0.5)).train_view(
        {"image": video, "label": 1}, np.random.default_rng(5))["image"]
    assert frames.shape == video.shape and (frames == frames[:1]).all()


def test_bad_strings_and_resampling_are_refused_by_name():
    for spec, words in [("rand-m9-x3", "'x3'"), ("rand-tfoo", "'tfoo'"), ("augmix-m5", "'augmix-m5'"),
                        ("rand-p1.5", "prob"), ("rand-tweights-n16", "n=16")]:
        with pytest.raises(ValueError, match=words):
            RandAugment.parse(spec)
    with pytest.raises(ValueError, match="lanczos"):
        Preprocess((8, 8), resize_method="lanczos", rand_augment=RandAugment())


def test_the_training_stream_applies_it_per_example_and_repeats_it_for_the_same_seed(rng):
    """A split held in memory leaves the batched path (which only shifts and flips) for the per-example one."""
    from vit_jax.data.in_memory import batchable
    from vit_jax.data.pipeline import train_iterator
    from vit_jax.data.sources import InMemorySource

    source = InMemorySource([{"image": rng.integers(0, 256, (8, 8, 1), dtype=np.uint8), "label": i % 3}
                             for i in range(12)])
    plain = Preprocess((8, 8), train_crop="pad", crop_padding=1)
    augmented = Preprocess((8, 8), train_crop="pad", crop_padding=1, rand_augment=RandAugment.parse("rand-m9-n3"))
    assert batchable(source, plain) and not batchable(source, augmented)
    first = lambda preprocess: next(train_iterator(source, preprocess, batch_size=12, seed=0, num_threads=1))
    once, again = first(augmented), first(augmented)
    np.testing.assert_array_equal(once["image"], again["image"])
    np.testing.assert_array_equal(np.sort(once["label"]), np.sort(first(plain)["label"]))
    assert not np.array_equal(once["image"], first(plain)["image"])


def test_random_training_resampling_resizes_each_crop_bilinear_or_bicubic_and_evaluation_as_configured(rng):
    """`train_resize_method='random'` (timm's default): each Inception crop is resized one way or the other (the
    view equals one of the two resizes of the same crop, both occur), evaluation keeps `resize_method`, and a
    split resized once ahead of time would hide it, so it is not."""
    from vit_jax.data.preprocessing import crop, inception_crop_box, resize

    image = np.asarray(Image.fromarray(rng.integers(0, 256, (40, 48, 3), dtype=np.uint8)).resize((96, 80)))
    pp = Preprocess((16, 16), train_crop="inception", train_resize_method="random", resize_method="bicubic")
    used = []
    for seed in range(12):
        view = pp.train_view({"image": image, "label": 0}, np.random.default_rng(seed))["image"]
        box = inception_crop_box(80, 96, pp.crop_scale, pp.crop_ratio, np.random.default_rng(seed))
        options = {m: resize(crop(image, *box), (16, 16), m) for m in ("bilinear", "bicubic")}
        used += [m for m, option in options.items() if np.array_equal(view, option)]
    assert set(used) == {"bilinear", "bicubic"} and len(used) >= 12
    assert pp.training_resize == "random" and not Preprocess((16, 16), train_resize_method="random").resize_once(True)
    with pytest.raises(ValueError, match="train_resize_method must be None"):
        Preprocess((16, 16), train_resize_method="cubic")
