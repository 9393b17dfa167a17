"""Optimizers from `config.optimizer`: AdamW or SGD with momentum, warmup + decay, clipping, masked weight decay."""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import optax
from ml_collections import ConfigDict

from vit_jax.param_paths import path_string

OPTIMIZERS = ("adamw", "sgd")
SCHEDULES = ("cosine", "linear", "constant")


def check_optimizer(config: ConfigDict) -> None:
    """`config.optimizer`'s numbers are ones its optimizer is defined for; a ValueError names the first that is not
    (`field: problem`), before anything is built."""
    def number(field: str, low: float, high: float = math.inf, low_open: bool = False, high_open: bool = False,
               optional: bool = False) -> None:
        value = config.get(field)
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
    if not isinstance(config.warmup_steps, int) or config.warmup_steps < 0:
        raise ValueError(f"warmup_steps: must be an integer >= 0; got {config.warmup_steps!r}")


def learning_rate_schedule(config: ConfigDict, num_steps: int) -> optax.Schedule:
    """Linear warmup from 0 to `learning_rate` over `warmup_steps`, then cosine or linear decay to
    `end_learning_rate` at `num_steps` (or constant)."""
    peak, end = config.learning_rate, config.end_learning_rate
    warmup = min(config.warmup_steps, num_steps)
    decay_steps = max(num_steps - warmup, 1)
    if config.schedule == "cosine":
        decay = optax.cosine_decay_schedule(peak, decay_steps, alpha=end / peak if peak else 0.0)
    elif config.schedule == "linear":
        decay = optax.linear_schedule(peak, end, decay_steps)
    elif config.schedule == "constant":
        decay = optax.constant_schedule(peak)
    else:
        raise ValueError(f"schedule must be one of {SCHEDULES}; got {config.schedule!r}")
    if not warmup:
        return decay
    return optax.join_schedules([optax.linear_schedule(0.0, peak, warmup), decay], [warmup])


def weight_decay_mask(pattern: str) -> Any:
    """A function of the params giving True where the '/'-joined path matches `pattern` (`re.search`)."""
    regex = re.compile(pattern)
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(path_string(p))), params)


def make_optimizer(config: ConfigDict, num_steps: int) -> optax.GradientTransformation:
    schedule = learning_rate_schedule(config, num_steps)
    mask = weight_decay_mask(config.weight_decay_mask)
    if config.name == "adamw":
        optimizer = optax.adamw(schedule, b1=config.b1, b2=config.b2, eps=config.eps,
                                weight_decay=config.weight_decay, mask=mask)
    elif config.name == "sgd":
        optimizer = optax.chain(
            optax.add_decayed_weights(config.weight_decay, mask=mask),
            optax.sgd(schedule, momentum=config.momentum or None, nesterov=config.nesterov),
        )
    else:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}; got {config.name!r}")
    if config.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    return optimizer
