import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

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


def small_vit_params(scan: bool = False):
    from vit_jax.models import create_model

    model = create_model("Ti/16", num_classes=3, num_layers=3, hidden_size=16, num_heads=2, mlp_dim=32, scan=scan)
    return jax.eval_shape(lambda: model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)), train=False))["params"]


def test_layer_decay_scales_each_update_by_its_layer_and_scanned_blocks_per_layer():
    """AdamW with layer decay 0.5 moves each parameter by plain AdamW's step times 0.5 ** (last - layer): 3 blocks,
    a head, so 1/16 for the embedding, 1/8, 1/4, 1/2 for the blocks (the final norm with the last), 1 for the head."""
    from vit_jax.models.encoder import stack_encoder_blocks
    from vit_jax.optim import layer_scales

    shapes = small_vit_params()
    params = jax.tree.map(lambda s: jnp.ones(s.shape), shapes)
    grads = jax.tree.map(lambda p: jnp.full_like(p, 0.3), params)
    plain = make_optimizer(optimizer_config(warmup_steps=0, grad_clip_norm=0), 10)
    decayed = make_optimizer(optimizer_config(warmup_steps=0, grad_clip_norm=0, layer_decay=0.5), 10)
    plain_updates = jax.jit(lambda g, p: plain.update(g, plain.init(p), p)[0])(grads, params)
    decayed_updates = jax.jit(lambda g, p: decayed.update(g, decayed.init(p), p)[0])(grads, params)
    expected = {"embedding/kernel": 1 / 16, "Transformer/posembed_input/pos_embedding": 1 / 16, "cls": 1 / 16,
                "Transformer/encoderblock_0/MlpBlock_0/Dense_0/kernel": 1 / 8,
                "Transformer/encoderblock_2/LayerNorm_0/scale": 1 / 2, "Transformer/encoder_norm/scale": 1 / 2,
                "head/kernel": 1.0, "head/bias": 1.0}
    flat = lambda tree: {"/".join(k): v for k, v in traverse_util.flatten_dict(tree).items()}
    ratios = {k: float(np.mean(flat(decayed_updates)[k] / flat(plain_updates)[k])) for k in expected}
    assert ratios == pytest.approx(expected)
    scanned = layer_scales(small_vit_params(scan=True), 0.5)["Transformer"]["encoderblock"]
    per_layer = stack_encoder_blocks({"Transformer": layer_scales(shapes, 0.5)["Transformer"]})
    per_layer = jax.tree.map(lambda s: np.asarray(s), per_layer["Transformer"]["encoderblock"])
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a.reshape(-1), b.reshape(-1)), scanned, per_layer)


def test_frozen_parameters_stay_put_keep_no_state_and_do_not_count_in_the_clipping():
    params = {"backbone": {"kernel": jnp.ones((4, 4))}, "head": {"kernel": jnp.ones((4, 2)), "bias": jnp.zeros(2)}}
    config = optimizer_config(warmup_steps=0, grad_clip_norm=1.0, frozen="^backbone/", learning_rate=0.1)
    tx = make_optimizer(config, 10)
    state = tx.init(params)
    moments = [leaf.shape for leaf in jax.tree.leaves(state) if hasattr(leaf, "shape") and leaf.ndim]
    assert sorted(moments) == sorted([(4, 2), (2,), (4, 2), (2,)])  # Adam's two moments, for the head only
    grads = {"backbone": {"kernel": jnp.full((4, 4), 1e6)}, "head": {"kernel": jnp.full((4, 2), 0.1), "bias": jnp.zeros(2)}}
    updates, _ = tx.update(grads, state, params)
    assert not np.asarray(updates["backbone"]["kernel"]).any()
    head_only = make_optimizer(optimizer_config(warmup_steps=0, grad_clip_norm=1.0, learning_rate=0.1), 10)
    alone = {"head": params["head"]}
    expected, _ = head_only.update({"head": grads["head"]}, head_only.init(alone), alone)
    np.testing.assert_allclose(updates["head"]["kernel"], expected["head"]["kernel"], rtol=1e-6)


@pytest.mark.parametrize("warmup", [False, True])
def test_the_weights_moving_average_is_timms_model_ema(warmup):
    """timm's ModelEmaV3 updated with the same weights after each step (`step=` the update's number, as timm's
    train loop passes it) holds the same average, from its first update (a copy) on."""
    from vit_jax.optim import ema_params, params_ema
    from vit_jax.timm_compat import import_timm

    import_timm()
    import torch
    from timm.utils.model_ema import ModelEmaV3

    rng = np.random.default_rng(0)
    weights = [rng.standard_normal((3, 2)).astype(np.float32) for _ in range(6)]
    module = torch.nn.Linear(2, 3, bias=False)
    with torch.no_grad():
        module.weight.copy_(torch.from_numpy(weights[0]))
    timm_ema = ModelEmaV3(module, decay=0.9, use_warmup=warmup)
    tx = optax.chain(optax.identity(), params_ema(0.9, warmup=warmup))
    params = {"w": jnp.asarray(weights[0])}
    state = tx.init(params)
    for step, new in enumerate(weights[1:], start=1):
        _, state = tx.update({"w": jnp.asarray(new) - params["w"]}, state, params)
        params = {"w": jnp.asarray(new)}
        with torch.no_grad():
            module.weight.copy_(torch.from_numpy(new))
        timm_ema.update(module, step=step)
        np.testing.assert_allclose(ema_params(state)["w"], timm_ema.module.weight.detach().numpy(), rtol=1e-5, atol=1e-6)
    assert not np.allclose(ema_params(state)["w"], weights[-1])
