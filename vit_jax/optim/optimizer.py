"""The optimizer of `config.optimizer`: an update rule (`update_rules`) on the learning-rate schedule, with
clipping by the global gradient norm, masked weight decay, layer-wise learning-rate decay and frozen parameters."""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import optax
from ml_collections import ConfigDict

from vit_jax.optim.layer_decay import scale_by_layer
from vit_jax.optim.schedule import learning_rate_schedule
from vit_jax.optim.update_rules import OPTIMIZERS, RULES, check_rule_settings
from vit_jax.param_paths import path_string


def check_optimizer(config: ConfigDict) -> None:
    """`config.optimizer`'s numbers are ones its optimizer is defined for; a ValueError names the first that is not
    (`field: problem`, the field dotted below `optimizer`), before anything is built."""
    def number(field: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False,
               optional: bool = False) -> None:
        value = config
        for part in field.split("."):
            value = value.get(part) if isinstance(value, ConfigDict) else None
        if optional and value is None:
            return
        ok = isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)
        ok = ok and (value > low if low_open else value >= low) and (value < high if high_open else value <= high)
        if not ok:
            interval = f"{'(' if low_open else '['}{low}, {high}{')' if high_open or high == math.inf else ']'}"
            raise ValueError(f"{field}: must be a finite number in {interval}{' or None' if optional else ''}; "
                             f"got {value!r}")

    number("learning_rate", 0, low_open=True)
    number("end_learning_rate", 0)
    number("weight_decay", 0)
    number("b1", 0, 1, high_open=True)
    number("b2", 0, 1, high_open=True)
    number("eps", 0, low_open=True)
    number("momentum", 0, 1, high_open=True, optional=True)
    number("grad_clip_norm", 0, optional=True)  # 0: no clipping
    number("layer_decay", 0, 1, low_open=True, optional=True)
    if not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
        raise ValueError(f"warmup_steps: must be an integer >= 0; got {config.warmup_steps!r}")
    check_rule_settings(config, number)


def weight_decay_mask(pattern: str) -> Any:
    """A function of the params giving True where the '/'-joined path matches `pattern` (`re.search`): weight decay's
    mask, and `frozen`'s."""
    regex = re.compile(pattern)
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(path_string(p))), params)


def make_optimizer(config: ConfigDict, num_steps: int) -> optax.GradientTransformation:
    """The optimizer of `config`; with `frozen` (a regex over parameter paths) the matching parameters are left
    as they are: no update, no weight decay, no optimizer state, and no part in the clipping norm."""
    optimizer = _trainable_optimizer(config, num_steps)
    frozen = config.get("frozen") or ""
    if not frozen:
        return optimizer
    matches = weight_decay_mask(frozen)
    labels = lambda params: jax.tree.map(lambda m: "frozen" if m else "trained", matches(params))
    return optax.multi_transform({"trained": optimizer, "frozen": optax.set_to_zero()}, labels)


def _trainable_optimizer(config: ConfigDict, num_steps: int) -> optax.GradientTransformation:
    if config.name not in RULES:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {config.name!r}")
    schedule = learning_rate_schedule(config, num_steps)
    optimizer = RULES[config.name](config, schedule, weight_decay_mask(config.weight_decay_mask))
    if config.get("layer_decay") is not None and config.layer_decay != 1:
        optimizer = optax.chain(optimizer, scale_by_layer(config.layer_decay))
    if config.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    return optimizer
