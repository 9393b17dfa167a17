"""The update rules `optimizer.name` picks. Every rule applies weight decay the same way, `learning_rate(t) *
weight_decay * w` on the masked parameters (PyTorch's AdamW and optax's convention; big_vision's decoupled `wd` is
`weight_decay * learning_rate` here), and rules that look at whole tensors (LAMB's trust ratio, Adafactor's factored
moments and update clipping) see each layer of scanned blocks on its own, as they would see unscanned blocks.

- adamw, sgd: the shared `b1`, `b2`, `eps`, `mu_dtype` / `momentum`, `nesterov` fields.
- lamb: timm's `Lamb` (NVIDIA's FusedLAMB, DeiT-III's optimizer), `optimizer.lamb` and `mu_dtype`.
- lion: timm's and optax's `Lion` (Chen et al. 2023), `optimizer.lion`.
- adafactor: big_vision's `scale_by_adafactor` ("Scaling Vision Transformers": factored second moments, beta2
  capped, half-precision momentum), `optimizer.adafactor`; timm's `AdafactorBigVision` with its default
  (learning-rate scaled) weight decay.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict

from vit_jax.param_paths import path_string
from vit_jax.sharding import SCANNED_PATH

Mask = Callable[[Any], Any]
MOMENTUM_DTYPES = ("float32", "bfloat16")


def adamw(config: ConfigDict, schedule: optax.Schedule, mask: Mask) -> optax.GradientTransformation:
    """`mu_dtype`: the first moment's dtype (big_vision keeps it in bfloat16); None: the parameters'."""
    return optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps, weight_decay=config.weight_decay,
                       mask=mask, mu_dtype=_dtype(config.get("mu_dtype")))


def sgd(config: ConfigDict, schedule: optax.Schedule, mask: Mask) -> optax.GradientTransformation:
    """PyTorch's SGD: the decay joins the gradient before the momentum."""
    return optax.chain(optax.add_decayed_weights(config.weight_decay, mask=mask),
                       optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov))


def lamb(config: ConfigDict, schedule: optax.Schedule, mask: Mask) -> optax.GradientTransformation:
    """Adam's step plus the (coupled) decay, times each tensor's trust ratio `|w| / |step|` (1 where either is 0;
    at most 1 with `trust_clip`: timm's `lambc`). As in timm, only decayed tensors are adapted: the others take
    Adam's step, and with `weight_decay = 0` LAMB is Adam. timm's built-in clipping of the global gradient norm at
    1.0 is `grad_clip_norm` here (its default)."""
    settings = config.lamb
    adapted = mask if config.weight_decay else (lambda params: jax.tree.map(lambda _: False, params))
    return optax.chain(
        optax.scale_by_adam(b1=settings.b1, b2=settings.b2, eps=settings.eps, mu_dtype=_dtype(config.get("mu_dtype"))),
        optax.add_decayed_weights(config.weight_decay, mask=mask),
        optax.masked(per_tensor(scale_by_trust_ratio(settings.trust_clip)), adapted),
        optax.scale_by_learning_rate(schedule),
    )


def lion(config: ConfigDict, schedule: optax.Schedule, mask: Mask) -> optax.GradientTransformation:
    return optax.lion(schedule, b1=config.lion.b1, b2=config.lion.b2, weight_decay=config.weight_decay, mask=mask)


def adafactor(config: ConfigDict, schedule: optax.Schedule, mask: Mask) -> optax.GradientTransformation:
    """big_vision's `scale_by_adafactor`, then the decay and the learning rate: second moments factored into row
    and column means over a tensor's two largest dimensions (when both have at least `min_dim_size_to_factor`),
    decaying at `min(beta2_cap, 1 - t ** -decay_rate)` at step t; each tensor's update scaled down to an RMS of at
    most `clipping_threshold` (None: not); then a momentum kept in `momentum_dtype` (None or 0: none)."""
    settings = config.adafactor
    decay_rate_fn = lambda step, exponent: jnp.minimum(settings.beta2_cap, 1.0 - (step + 1.0) ** -exponent)
    per_tensor_steps = [optax.scale_by_factored_rms(
        factored=True, decay_rate=settings.decay_rate, min_dim_size_to_factor=settings.min_dim_size_to_factor,
        epsilon=settings.eps, decay_rate_fn=decay_rate_fn)]
    if settings.clipping_threshold:
        per_tensor_steps.append(optax.clip_by_block_rms(settings.clipping_threshold))
    steps = [per_tensor(optax.chain(*per_tensor_steps))]
    if settings.momentum:
        steps.append(optax.ema(settings.momentum, debias=False, accumulator_dtype=jnp.dtype(settings.momentum_dtype)))
    return optax.chain(*steps, optax.add_decayed_weights(config.weight_decay, mask=mask),
                       optax.scale_by_learning_rate(schedule))


RULES: dict[str, Callable[[ConfigDict, optax.Schedule, Mask], optax.GradientTransformation]] = {
    "adamw": adamw, "sgd": sgd, "lamb": lamb, "lion": lion, "adafactor": adafactor,
}
OPTIMIZERS = tuple(RULES)


def scale_by_trust_ratio(clip: bool = False) -> optax.GradientTransformation:
    """LAMB's layer-wise adaptation: the update times `|w| / |update|`, 1 where either norm is 0."""
    def scale(update: jax.Array, param: jax.Array) -> jax.Array:
        w, u = jnp.linalg.norm(param.astype(jnp.float32)), jnp.linalg.norm(update.astype(jnp.float32))
        ratio = jnp.where((w > 0) & (u > 0), w / jnp.where(u > 0, u, 1.0), 1.0)
        return update * (jnp.minimum(ratio, 1.0) if clip else ratio).astype(update.dtype)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        if params is None:
            raise ValueError(optax.NO_PARAMS_MSG)
        return jax.tree.map(scale, updates, params), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


def per_tensor(inner: optax.GradientTransformation) -> optax.GradientTransformation:
    """`inner` applied to each parameter on its own, and to each layer of a scanned block's stacked parameter
    (vmapped over axis 0), so that what it computes from a whole tensor is computed per layer. Its state mirrors
    the parameters: the state of parameter `a/b` is at `a/b`."""
    def layerwise(path: Any, fn: Callable) -> Callable:
        return jax.vmap(fn) if SCANNED_PATH.search(path_string(path)) else fn

    def init(params: Any) -> Any:
        return jax.tree_util.tree_map_with_path(lambda path, p: layerwise(path, inner.init)(p), params)

    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        leaves, treedef = jax.tree_util.tree_flatten_with_path(updates)
        states = treedef.flatten_up_to(state)
        param_leaves = treedef.flatten_up_to(params) if params is not None else [None] * len(states)
        out = [layerwise(path, inner.update)(u, s, p)
               for (path, u), s, p in zip(leaves, states, param_leaves, strict=True)]
        return treedef.unflatten([o[0] for o in out]), treedef.unflatten([o[1] for o in out])

    return optax.GradientTransformation(init, update)


def _dtype(name: str | None) -> jnp.dtype | None:
    return jnp.dtype(name) if name else None


def check_rule_settings(config: ConfigDict, number: Callable[..., None]) -> None:
    """The settings of the rule `config.name` names; `number(field, low, high, ...)` checks one (dotted) field."""
    if config.get("mu_dtype") not in (None, "", *MOMENTUM_DTYPES):
        raise ValueError(f"mu_dtype: must be one of {MOMENTUM_DTYPES} or None (the parameters'); "
                         f"got {config.mu_dtype!r}")
    if config.name == "lamb":
        number("lamb.b1", 0, 1, high_open=True)
        number("lamb.b2", 0, 1, high_open=True)
        number("lamb.eps", 0, low_open=True)
        if not isinstance(config.lamb.trust_clip, bool):
            raise ValueError(f"lamb.trust_clip: must be True or False; got {config.lamb.trust_clip!r}")
    elif config.name == "lion":
        number("lion.b1", 0, 1, high_open=True)
        number("lion.b2", 0, 1, high_open=True)
    elif config.name == "adafactor":
        number("adafactor.decay_rate", 0, low_open=True)
        number("adafactor.beta2_cap", 0, 1, low_open=True, high_open=True)
        number("adafactor.eps", 0, low_open=True)
        number("adafactor.clipping_threshold", 0, low_open=True, optional=True)
        number("adafactor.momentum", 0, 1, high_open=True, optional=True)
        size = config.adafactor.min_dim_size_to_factor
        if isinstance(size, bool) or not isinstance(size, int) or size < 1:
            raise ValueError(f"adafactor.min_dim_size_to_factor: must be an integer >= 1; got {size!r}")
        if config.adafactor.momentum_dtype not in MOMENTUM_DTYPES:
            raise ValueError(f"adafactor.momentum_dtype: must be one of {MOMENTUM_DTYPES}; "
                             f"got {config.adafactor.momentum_dtype!r}")
