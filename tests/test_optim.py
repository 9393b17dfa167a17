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
        make_optimizer(optimizer_config(name="lars"), 10)
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


# A parameter tree with scanned blocks (layers stacked on axis 0), tensors Adafactor factors (both of the two largest
# dimensions >= min_dim_size_to_factor) and does not (biases, the 4-D patch kernel, a 10-way head).
RULE_SHAPES = {"embedding": {"kernel": (4, 4, 3, 40), "bias": (40,)},
               "Transformer": {"encoderblock": {"Dense_0": {"kernel": (3, 40, 36), "bias": (3, 36)}},
                               "encoder_norm": {"scale": (40,)}},
               "pre_logits": {"kernel": (40, 48)}, "head": {"kernel": (48, 10), "bias": (10,)}}


def timm_optimizer_steps(name, timm_kwargs, settings, steps=4, grad_clip_norm=0.0, weight_decay=0.05):
    """vit_jax's rule and timm's optimizer of the same name, from the same weights, over `steps` updates with the same
    gradients and per-step learning rates (warmup then cosine), on decayed (kernels) and undecayed parameter groups
    as timm's `param_groups_weight_decay` makes them; each scanned layer is its own tensor on timm's side."""
    from vit_jax.param_paths import path_string
    from vit_jax.timm_compat import import_timm

    import_timm()
    import timm.optim
    import torch

    rng = np.random.default_rng(0)
    config = optimizer_config(name=name, learning_rate=0.02, warmup_steps=2, grad_clip_norm=grad_clip_norm,
                              weight_decay=weight_decay)
    config[name].update(settings)
    leaves, treedef = jax.tree_util.tree_flatten_with_path(RULE_SHAPES, is_leaf=lambda x: isinstance(x, tuple))
    paths = [path_string(path) for path, _ in leaves]
    values = [rng.standard_normal(shape).astype(np.float32) for _, shape in leaves]
    stacked = ["encoderblock/" in p for p in paths]
    torch_params = [[torch.nn.Parameter(torch.from_numpy(v[i].copy())) for i in range(len(v))] if s
                    else [torch.nn.Parameter(torch.from_numpy(v.copy()))] for v, s in zip(values, stacked)]
    decayed = [p.endswith("kernel") for p in paths]
    groups = [{"params": [t for ts, d in zip(torch_params, decayed) if d == flag for t in ts],
               "weight_decay": weight_decay if flag else 0.0} for flag in (True, False)]
    reference = getattr(timm.optim, timm_kwargs.pop("cls"))(groups, lr=0.0, **timm_kwargs)
    schedule = learning_rate_schedule(config, steps)
    tx = make_optimizer(config, steps)
    params = treedef.unflatten([jnp.asarray(v) for v in values])
    state = tx.init(params)
    update = jax.jit(tx.update)
    for step in range(steps):
        grads = [rng.standard_normal(v.shape).astype(np.float32) * 3 for v in values]
        updates, state = update(treedef.unflatten([jnp.asarray(g) for g in grads]), state, params)
        params = optax.apply_updates(params, updates)
        for group in reference.param_groups:
            group["lr"] = float(schedule(step))
        for ts, g, s in zip(torch_params, grads, stacked):
            for i, t in enumerate(ts):
                t.grad = torch.from_numpy((g[i] if s else g).copy())
        if grad_clip_norm and name != "lamb":  # timm's Lamb clips by itself
            torch.nn.utils.clip_grad_norm_([t for ts in torch_params for t in ts], grad_clip_norm)
        reference.step()
        yield step, paths, jax.tree.leaves(params), [np.stack([t.detach().numpy() for t in ts]) if s
                                                     else ts[0].detach().numpy() for ts, s in zip(torch_params, stacked)]


@pytest.mark.parametrize("name, timm_kwargs, settings, clip, rtol", [
    ("lamb", dict(cls="Lamb", max_grad_norm=1.0), {}, 1.0, 1e-5),
    ("lamb", dict(cls="Lamb", max_grad_norm=None, trust_clip=True, betas=(0.8, 0.99), eps=1e-4),
     dict(trust_clip=True, b1=0.8, b2=0.99, eps=1e-4), 0.0, 1e-5),
    ("lion", dict(cls="Lion", betas=(0.9, 0.99)), {}, 0.0, 1e-6),
    ("adafactor", dict(cls="AdafactorBigVision", min_dim_size_to_factor=32, momentum_dtype="float32", eps=1e-30),
     dict(momentum_dtype="float32"), 0.0, 1e-5),
    ("adafactor", dict(cls="AdafactorBigVision", min_dim_size_to_factor=32, momentum=None, clipping_threshold=1.0,
                       decay_rate=0.7, beta2_cap=0.9), dict(momentum=None, clipping_threshold=1.0, decay_rate=0.7,
                                                           beta2_cap=0.9), 0.0, 1e-5),
    ("adafactor", dict(cls="AdafactorBigVision", min_dim_size_to_factor=32), {}, 0.0, 2e-2),  # bfloat16 momentum
])
def test_update_rules_step_as_timms_optimizers(name, timm_kwargs, settings, clip, rtol):
    """LAMB (trust ratio per tensor and per scanned layer, undecayed tensors not adapted), Lion and big_vision's
    Adafactor (factored moments, capped beta2, update clipping per layer, momentum) move every weight as timm's
    `Lamb`, `Lion` and `AdafactorBigVision` do, step after step."""
    first = None
    for step, paths, ours, theirs in timm_optimizer_steps(name, timm_kwargs, settings, grad_clip_norm=clip):
        first = first or [np.asarray(a) for a in ours]
        for path, a, b in zip(paths, ours, theirs):
            np.testing.assert_allclose(a, b, rtol=rtol, atol=rtol * 1e-2, err_msg=f"{path} at step {step}")
    for path, a, b in zip(paths, first, ours):  # every tensor moved after the first step (warmup's lr 0)
        assert np.abs(np.asarray(b) - a).max() > 1e-3, path


def test_adamw_is_big_visions_adam_with_decoupled_weight_decay_of_weight_decay_times_the_rate():
    """big_vision's `optax.make` for `optax_name='scale_by_adam'` (its ViT configs: `mu_dtype='bfloat16'`, `lr`,
    `wd` not multiplied by `lr`, the schedule multiplying everything), built from its own chain of optax pieces,
    moves the weights as vit_jax's AdamW with `weight_decay = wd / lr` and `mu_dtype='bfloat16'`."""
    lr, wd = 1e-3, 1e-4
    config = optimizer_config(learning_rate=lr, warmup_steps=2, weight_decay=wd / lr, mu_dtype="bfloat16",
                              grad_clip_norm=1.0)
    ours = make_optimizer(config, 6)
    shape = lambda t: learning_rate_schedule(config, 6)(t) / lr  # big_vision's schedule: a multiplier from 0 to 1
    mask = weight_decay_mask(config.weight_decay_mask)
    big_vision = optax.chain(optax.clip_by_global_norm(1.0), optax.scale_by_adam(mu_dtype="bfloat16"),
                             optax.scale(lr), optax.add_decayed_weights(wd, mask), optax.scale_by_schedule(shape),
                             optax.scale(-1.0))
    rng = np.random.default_rng(0)
    params = {"dense": {"kernel": jnp.asarray(rng.standard_normal((5, 4)), jnp.float32), "bias": jnp.ones(4)}}
    states = [tx.init(params) for tx in (ours, big_vision)]
    both = [params, params]
    for _ in range(6):
        grads = jax.tree.map(lambda p: jnp.asarray(rng.standard_normal(p.shape), jnp.float32), params)
        for i, tx in enumerate((ours, big_vision)):
            updates, states[i] = tx.update(grads, states[i], both[i])
            both[i] = optax.apply_updates(both[i], updates)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-8), *both)
    assert not np.allclose(both[0]["dense"]["kernel"], params["dense"]["kernel"], atol=1e-3)
    mu = optax.tree_utils.tree_get(states[0], "mu")
    assert mu["dense"]["kernel"].dtype == jnp.bfloat16
