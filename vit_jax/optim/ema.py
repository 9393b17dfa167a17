"""The weights' moving average (`config.ema`, timm's ModelEmaV3), kept in the optimizer state so that it is
sharded, checkpointed and resumed with it."""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from ml_collections import ConfigDict


class ParamsEma(NamedTuple):
    count: jax.Array  # updates averaged so far
    ema_params: Any


def params_ema(decay: float, warmup: bool = False, warmup_power: float = 2 / 3) -> optax.GradientTransformation:
    """timm's `ModelEmaV3`: after each update, `ema += (1 - d) * (params - ema)`, with `d = 0` at the first update
    (the average starts at the updated weights) and `decay` after it, or with `warmup`,
    `min(decay, 1 - (1 + t) ** -warmup_power)` at update t + 1 (timm's warmup_gamma 1). Updates pass unchanged;
    chained last, it averages the weights the whole optimizer produced."""
    def init(params: Any) -> ParamsEma:
        return ParamsEma(jnp.zeros([], jnp.int32), jax.tree.map(jnp.copy, params))

    def update(updates: Any, state: ParamsEma, params: Any = None) -> tuple[Any, ParamsEma]:
        t = state.count.astype(jnp.float32)
        d = jnp.minimum(decay, 1 - (1 + t) ** -warmup_power) if warmup else jnp.asarray(decay, jnp.float32)
        d = jnp.where(state.count > 0, d, 0.0)
        new_params = optax.apply_updates(params, updates)
        ema = jax.tree.map(lambda e, p: (e + (1 - d) * (p.astype(jnp.float32) - e)).astype(e.dtype),
                           state.ema_params, new_params)
        return updates, ParamsEma(state.count + 1, ema)

    return optax.GradientTransformation(init, update)


def ema_params(opt_state: Any) -> Any | None:
    """The moving average an optimizer state (live, or as a checkpoint restores it) holds; None without one."""
    found = optax.tree_utils.tree_get_all_with_path(opt_state, "ema_params")
    return found[0][1] if found else None


def check_ema(config: ConfigDict) -> None:
    """`config.ema`'s fields are ones the average is defined for; a ValueError names the first that is not."""
    decay = config.get("decay", 0.0)
    if isinstance(decay, bool) or not isinstance(decay, int | float) or not 0 <= decay < 1:
        raise ValueError(f"decay: must be a number in [0, 1) (0: no moving average); got {decay!r}")
    if not isinstance(config.get("warmup", False), bool):
        raise ValueError(f"warmup: must be True or False; got {config.warmup!r}")


def with_ema(optimizer: optax.GradientTransformation, config: ConfigDict | None) -> optax.GradientTransformation:
    """`optimizer`, then `config.ema`'s average of the weights when its decay is set."""
    if not config or not config.get("decay"):
        return optimizer
    return optax.chain(optimizer, params_ema(config.decay, config.get("warmup", False)))
