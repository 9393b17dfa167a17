"""The loss and the steps (`vit_jax.steps`) against hand-computed values."""

import jax
import jax.numpy as jnp
import numpy as np
import optax

from tests.conftest import MINI, live_params
from vit_jax.models import create_model
from vit_jax.steps import TrainState, cross_entropy, make_eval_step, make_train_step


def test_cross_entropy_is_the_negative_log_likelihood_of_smoothed_targets():
    logits = jnp.array([[2.0, 0.5, -1.0], [0.0, 0.0, 3.0]])
    labels = jnp.array([0, 1])
    log_p = np.log(np.exp(logits) / np.exp(logits).sum(-1, keepdims=True))
    np.testing.assert_allclose(cross_entropy(logits, labels), -log_p[[0, 1], [0, 1]], rtol=1e-6)
    smoothed = np.full((2, 3), 0.1 / 3) + 0.9 * np.eye(3)[[0, 1]]
    np.testing.assert_allclose(cross_entropy(logits, labels, 0.1), -(smoothed * log_p).sum(-1), rtol=1e-6)


def tiny_model_and_state(rng):
    model = create_model("Ti/4", num_classes=5, **MINI)
    params = live_params(model, jnp.zeros((1, 8, 8, 1)))
    tx = optax.sgd(0.1, momentum=0.9)  # linear in the gradient, so equal gradients give equal updates
    return model, tx, TrainState(jnp.array(0), params, tx.init(params))


def test_gradient_accumulation_gives_the_same_update_as_one_batch(rng):
    model, tx, state = tiny_model_and_state(rng)
    batch = {"image": jnp.asarray(rng.standard_normal((8, 8, 8, 1)), jnp.float32),
             "label": jnp.asarray(rng.integers(0, 5, 8), jnp.int32)}
    step = lambda accum: jax.jit(make_train_step(model, tx, lambda s: 1e-2, dropout_key=jax.random.key(1),
                                                 accum_steps=accum))(state, batch)
    (one, metrics_one), (four, metrics_four) = step(1), step(4)
    np.testing.assert_allclose(metrics_four["train/loss"], metrics_one["train/loss"], rtol=1e-5)
    np.testing.assert_allclose(metrics_four["train/grad_norm"], metrics_one["train/grad_norm"], rtol=1e-4)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), four.params, one.params)
    moved = max(float(jnp.abs(a - b).max()) for a, b in zip(jax.tree.leaves(one.params), jax.tree.leaves(state.params)))
    assert moved > 1e-3
    assert int(four.step) == 1


def test_eval_step_counts_only_unmasked_examples(rng):
    model, _, state = tiny_model_and_state(rng)
    images = rng.standard_normal((6, 8, 8, 1)).astype(np.float32)
    labels = rng.integers(0, 5, 6).astype(np.int32)
    mask = np.array([1, 1, 1, 1, 0, 0], np.float32)
    sums = jax.jit(make_eval_step(model))(state.params, {"image": images, "label": labels, "mask": mask})
    logits = np.asarray(model.apply({"params": state.params}, images[:4], train=False))
    log_p = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    assert float(sums["count"]) == 4
    np.testing.assert_allclose(sums["loss"], -log_p[np.arange(4), labels[:4]].sum(), rtol=1e-5)
    assert float(sums["top1"]) == (logits.argmax(-1) == labels[:4]).sum()
    top5 = np.argsort(-logits, -1)[:, :5]
    assert float(sums["top5"]) == sum(labels[i] in top5[i] for i in range(4)) == 4  # 5 classes: always a hit


def test_uint8_images_are_turned_into_the_models_values_inside_the_step(rng):
    """A pipeline that ships uint8 (`Preprocess.train_view`) trains exactly as one that ships `Preprocess.pixels`."""
    from vit_jax.data.preprocessing import Preprocess

    model = create_model("Ti/4", num_classes=5, **MINI)
    params = live_params(model, jnp.zeros((1, 8, 8, 3)))
    tx = optax.sgd(0.1)
    state = TrainState(jnp.array(0), params, tx.init(params))
    preprocess = Preprocess((8, 8), value_range=(0.0, 1.0), mean=(0.5, 0.4, 0.3), std=(0.2, 0.25, 0.3), channels=3)
    images = rng.integers(0, 256, (6, 8, 8, 1), dtype=np.uint8)  # grayscale, made RGB by the preprocessing
    labels = rng.integers(0, 5, 6).astype(np.int32)
    step = jax.jit(make_train_step(model, tx, lambda s: 0.1, dropout_key=jax.random.key(1),
                                   pixels=preprocess.pixels_on_device))
    on_host, host_metrics = step(state, {"image": preprocess.pixels(images), "label": labels})
    on_device, device_metrics = step(state, {"image": images, "label": labels})
    np.testing.assert_allclose(device_metrics["train/loss"], host_metrics["train/loss"], rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6), on_device.params, on_host.params)
    without = jax.jit(make_train_step(model, tx, lambda s: 0.1, dropout_key=jax.random.key(1)))
    try:
        without(state, {"image": images, "label": labels})
    except ValueError as error:
        assert "pixels_on_device" in str(error)
    else:
        raise AssertionError("uint8 images without `pixels` must be refused")


def test_binary_cross_entropy_is_pytorchs_bce_with_logits_in_training_and_evaluation(rng):
    """DeiT III's criterion, `torch.nn.BCEWithLogitsLoss()` (the mean over examples and classes) against the
    smoothed one-hot targets, is the train step's loss; the eval step sums the same per-example values."""
    import torch

    model, tx, state = tiny_model_and_state(rng)
    images = jnp.asarray(rng.standard_normal((6, 8, 8, 1)), jnp.float32)
    labels = np.asarray(rng.integers(0, 5, 6), np.int32)
    _, metrics = jax.jit(make_train_step(model, tx, lambda s: 1e-2, dropout_key=jax.random.key(1),
                                         label_smoothing=0.1, loss="binary_cross_entropy"))(
        state, {"image": images, "label": jnp.asarray(labels)})
    logits = torch.from_numpy(np.array(model.apply({"params": state.params}, images, train=False)))
    targets = torch.full((6, 5), 0.1 / 5) + 0.9 * torch.nn.functional.one_hot(torch.from_numpy(labels).long(), 5)
    expected = torch.nn.BCEWithLogitsLoss()(logits, targets.float())
    np.testing.assert_allclose(metrics["train/loss"], float(expected), rtol=1e-5)
    sums = make_eval_step(model, "binary_cross_entropy")(
        state.params, {"image": images, "label": jnp.asarray(labels), "mask": jnp.ones(6)})
    unsmoothed = torch.nn.BCEWithLogitsLoss(reduction="none")(logits, torch.nn.functional.one_hot(
        torch.from_numpy(labels).long(), 5).float()).mean(-1).sum()
    np.testing.assert_allclose(sums["loss"], float(unsmoothed), rtol=1e-5)
    mixed = torch.from_numpy(rng.dirichlet(np.ones(5) * 0.3, 6).astype(np.float32))  # Mixup-like targets
    mixed[mixed < 0.05] = 0.0
    binary = torch.nn.BCEWithLogitsLoss(reduction="none")(logits, (mixed > 0.0).float()).mean(-1)  # DeiT III's
    np.testing.assert_allclose(cross_entropy(jnp.asarray(logits.numpy()), jnp.asarray(labels), targets=jnp.asarray(
        mixed.numpy()), loss="binary_cross_entropy", target_threshold=0.0), binary.numpy(), rtol=1e-5)
