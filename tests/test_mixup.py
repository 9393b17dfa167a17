"""Mixup/CutMix (`vit_jax.augment.mixup`) against timm's `timm.data.mixup`, and inside the train step."""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
import scipy.stats

from tests.conftest import MINI, live_params
from vit_jax.augment.mixup import Mixup, cutmix_box
from vit_jax.augment.random_erasing import RandomErasing
from vit_jax.models import create_model
from vit_jax.steps import ERASING_STREAM, MIXUP_STREAM, TrainState, make_train_step
from vit_jax.timm_compat import import_timm


@pytest.fixture(scope="module")
def timm_mixup():
    import_timm()
    import timm.data.mixup as timm_mixup

    return timm_mixup


def test_cutmix_box_is_timms_rand_bbox(timm_mixup, monkeypatch, rng):
    for height, width in [(16, 16), (15, 22), (7, 5)]:
        for _ in range(60):
            lam = float(np.float32(rng.uniform(0, 1)))
            cy, cx = int(rng.integers(0, height)), int(rng.integers(0, width))
            centres = iter([cy, cx])
            monkeypatch.setattr(np.random, "randint", lambda *args, _draws=centres, **kwargs: next(_draws))
            expected = timm_mixup.rand_bbox((3, height, width), lam)
            got = cutmix_box(height, width, jnp.float32(lam), jnp.int32(cy), jnp.int32(cx))
            assert tuple(int(v) for v in got) == tuple(int(v) for v in expected), (height, width, lam, cy, cx)


@pytest.mark.parametrize("mode, alphas", [("batch", (0.8, 1.0)), ("pair", (0.8, 1.0)), ("elem", (0.8, 1.0)),
                                          ("elem", (0.0, 1.0)), ("batch", (0.4, 0.0))])  # both, CutMix, Mixup
def test_mixed_images_and_targets_are_timms_for_the_same_draws(timm_mixup, monkeypatch, rng, mode, alphas):
    """timm's Mixup given vit_jax's draws (lam, Mixup or CutMix, the box) through its two sources of randomness:
    the same images (NCHW there) and the same label-smoothed targets."""
    import torch

    batch, height, width, classes = 8, 9, 11, 6
    mixup = Mixup(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], prob=0.7, mode=mode)
    images = rng.standard_normal((batch, height, width, 3)).astype(np.float32)
    labels = rng.integers(0, classes, batch)
    for seed in range(4):
        key = jax.random.key(seed)
        lam, cutmix, boxes = mixup.draw(key, batch, height, width)
        lam, cutmix, boxes = np.asarray(lam), np.asarray(cutmix), [np.asarray(b) for b in boxes]
        got_images, got_targets = mixup(key, jnp.asarray(images), jnp.asarray(labels), classes, 0.1)
        drawn = range(1) if mode == "batch" else range(batch // 2 if mode == "pair" else batch)
        boxes_in_order = iter([(tuple(int(b[i]) for b in boxes), float(lam[i]))
                               for i in drawn if cutmix[i] and lam[i] != 1])
        monkeypatch.setattr(timm_mixup, "cutmix_bbox_and_lam",
                            lambda *args, _boxes=boxes_in_order, **kwargs: next(_boxes))
        theirs = timm_mixup.Mixup(mixup_alpha=alphas[0], cutmix_alpha=alphas[1], mode=mode, label_smoothing=0.1,
                                  num_classes=classes)
        monkeypatch.setattr(theirs, "_params_per_batch", lambda lam=lam, cutmix=cutmix: (float(lam[0]), bool(cutmix[0])))
        monkeypatch.setattr(theirs, "_params_per_elem", lambda n, lam=lam, cutmix=cutmix: (lam[:n].copy(), cutmix[:n].copy()))
        x, target = theirs(torch.from_numpy(images.transpose(0, 3, 1, 2).copy()), torch.from_numpy(labels))
        np.testing.assert_allclose(np.asarray(got_images), x.numpy().transpose(0, 2, 3, 1), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(np.asarray(got_targets), target.numpy(), rtol=1e-6, atol=1e-7)
        if mode == "batch":
            assert len(set(lam.tolist())) == 1


def test_draws_follow_the_beta_distribution_and_the_probabilities():
    count = 4000
    mixup_only = Mixup(mixup_alpha=0.4, mode="elem")
    lam, cutmix, _ = jax.jit(mixup_only.draw, static_argnums=(1, 2, 3))(jax.random.key(0), count, 8, 8)
    assert not np.asarray(cutmix).any()
    assert scipy.stats.kstest(np.asarray(lam), scipy.stats.beta(0.4, 0.4).cdf).pvalue > 1e-3
    both = Mixup(mixup_alpha=0.8, cutmix_alpha=1.0, prob=0.6, switch_prob=0.3, mode="elem")
    lam, cutmix, _ = jax.jit(both.draw, static_argnums=(1, 2, 3))(jax.random.key(1), count, 32, 32)
    lam, cutmix = np.asarray(lam), np.asarray(cutmix)
    applied = (lam < 1) | cutmix
    for observed, p in [(applied.mean(), 0.6), (cutmix[applied].mean(), 0.3)]:
        assert abs(observed - p) < 4 * np.sqrt(p * (1 - p) / count)


def test_the_train_step_erases_then_mixes_each_batch_and_trains_on_the_mixed_targets(rng):
    """timm's order (erasing in the loader, Mixup in the loop), each from its own key folded from the step's."""
    model = create_model("Ti/4", num_classes=5, **MINI)
    params = live_params(model, jnp.zeros((1, 8, 8, 1)))
    tx = optax.sgd(0.1)
    state = TrainState(jnp.array(3), params, tx.init(params))
    batch = {"image": jnp.asarray(rng.standard_normal((6, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 5, 6), jnp.int32)}
    mixup = Mixup(mixup_alpha=1.0, cutmix_alpha=1.0)
    dropout_key = jax.random.key(1)
    erasing = RandomErasing(prob=1.0)
    _, metrics = jax.jit(make_train_step(model, tx, lambda s: 0.1, dropout_key=dropout_key, mixup=mixup,
                                         random_erasing=erasing, label_smoothing=0.1))(state, batch)

    @jax.jit
    def reference(params, batch):
        step_key = jax.random.fold_in(dropout_key, 3)
        erased = erasing(jax.random.fold_in(step_key, ERASING_STREAM), batch["image"])
        images, targets = mixup(jax.random.fold_in(step_key, MIXUP_STREAM), erased, batch["label"], 5, 0.1)
        return images, targets, model.apply({"params": params}, images, train=False)

    images, targets, logits = reference(params, batch)
    logits = np.asarray(logits, np.float64)
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(metrics["train/loss"], -(np.asarray(targets) * log_p).sum(-1).mean(), rtol=1e-5)
    assert not np.allclose(images, batch["image"])
    np.testing.assert_allclose(metrics["train/accuracy"], (logits.argmax(-1) == batch["label"]).mean(), atol=1e-6)


def test_bad_arguments_are_refused_by_name():
    for kwargs, words in [({"mode": "pairs"}, "mode"), ({"prob": 1.5}, "prob"), ({"mixup_alpha": -1}, "mixup_alpha"),
                          ({"cutmix_minmax": (0.5, 0.2)}, "cutmix_minmax")]:
        with pytest.raises(ValueError, match=words):
            Mixup(**kwargs)
