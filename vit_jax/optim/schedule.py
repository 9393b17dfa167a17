"""The learning rate over training: linear warmup, then cosine, linear or constant."""

from __future__ import annotations

import optax
from ml_collections import ConfigDict

SCHEDULES = ("cosine", "linear", "constant")


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
