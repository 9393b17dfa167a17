"""Optimizers from `config.optimizer` (an update rule, its schedule, clipping, weight decay, layer-wise decay, frozen
parameters) and the weights' moving average from `config.ema`."""

from vit_jax.optim.ema import ParamsEma, check_ema, ema_params, params_ema, with_ema
from vit_jax.optim.layer_decay import layer_scales, scale_by_layer
from vit_jax.optim.optimizer import check_optimizer, make_optimizer, weight_decay_mask
from vit_jax.optim.schedule import SCHEDULES, learning_rate_schedule
from vit_jax.optim.update_rules import OPTIMIZERS, RULES

__all__ = ["OPTIMIZERS", "RULES", "SCHEDULES", "ParamsEma", "check_ema", "check_optimizer", "ema_params",
           "layer_scales", "learning_rate_schedule", "make_optimizer", "params_ema", "scale_by_layer",
           "weight_decay_mask", "with_ema"]
