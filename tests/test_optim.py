import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from vit_jax.config import base_config
from vit_jax.optim import learning_rate_schedule, make_optimizer, weight_decay_mask


def optimizer_config(**overrides):
    config = base_config().optimizer
    config.update(overrides)
    return config


@pytest.mark.parametrize("schedule", ["cosine", "linear", "constant"])
def test_warmup_then_decay_follows_the_formula(schedule):
    config = optimizer_config(schedule=schedule, learning_rate=0.1, warmup_steps=10, end_learning_rate=0.01)
    lr = learning_rate_schedule(config, num_steps=110)
    assert float(lr(0)) == 0.0 and float(lr(5)) == pytest.approx(0.05) and float(lr(10)) == pytest.approx(0.1)
    for step in (35, 60, 110):
        t = (step - 10) / 100
        expected = {"cosine": 0.01 + 0.09 * 0.5 * (1 + math.cos(math.pi * t)), "linear": 0.1 - 0.09 * t,
                    "constant": 0.1}[schedule]
        assert float(lr(step)) == pytest.approx(expected, rel=1e-5)


def test_weight_decay_mask_selects_kernels_by_path():
    params = {"embedding": {"kernel": 0, "bias": 0}, "cls": 0, "Transformer": {"encoder_norm": {"scale": 0}},
              "head": {"kernel": 0, "bias": 0}}
    mask = weight_decay_mask(r"(^|/)kernel$")(params)
    assert mask == {"embedding": {"kernel": True, "bias": False}, "cls": False,
                    "Transformer": {"encoder_norm": {"scale": False}}, "head": {"kernel": True, "bias": False}}


def apply_once(config, params, grads):
    tx = make_optimizer(config, num_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    return optax.apply_updates(params, updates)


def test_adamw_decays_only_masked_parameters():
    params = {"dense": {"kernel": jnp.full(3, 2.0), "bias": jnp.full(3, 2.0)}}
    zero_grads = jax.tree.map(jnp.zeros_like, params)
    config = optimizer_config(learning_rate=0.1, warmup_steps=0, schedule="constant", weight_decay=0.5)
    out = apply_once(config, params, zero_grads)
    np.testing.assert_allclose(out["dense"]["kernel"], 2.0 - 0.1 * 0.5 * 2.0)  # decoupled: lr * wd * w
    np.testing.assert_allclose(out["dense"]["bias"], 2.0)


def test_sgd_momentum_step_and_clipping_by_global_norm():
    params = {"w": {"kernel": jnp.zeros(2)}}
    grads = {"w": {"kernel": jnp.array([3.0, 4.0])}}  # global norm 5
    config = optimizer_config(name="sgd", learning_rate=0.1, warmup_steps=0, schedule="constant", weight_decay=0.0,
                              grad_clip_norm=1.0)
    np.testing.assert_allclose(apply_once(config, params, grads)["w"]["kernel"], [-0.1 * 0.6, -0.1 * 0.8], rtol=1e-6)
    config.grad_clip_norm = 0.0
    np.testing.assert_allclose(apply_once(config, params, grads)["w"]["kernel"], [-0.3, -0.4], rtol=1e-6)


def test_unknown_names_are_errors():
    with pytest.raises(ValueError, match="optimizer must be one of"):
        make_optimizer(optimizer_config(name="lamb"), 10)
    with pytest.raises(ValueError, match="schedule must be one of"):
        learning_rate_schedule(optimizer_config(schedule="step"), 10)
