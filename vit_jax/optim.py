"""Optimizers from `config.optimizer`: AdamW or SGD with momentum, warmup + decay, clipping, masked weight decay,
layer-wise learning-rate decay and frozen parameters (fine-tuning); and the weights' moving average
(`config.ema`), kept in the optimizer state so that it is sharded, checkpointed and resumed with it."""

from __future__ import annotations

import math
import re
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
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
    number("layer_decay", 0, 1, low_open=True, optional=True)
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
    """A function of the params giving True where the '/'-joined path matches `pattern` (`re.search`): weight decay's
    mask, and `frozen`'s."""
    regex = re.compile(pattern)
    return lambda params: jax.tree_util.tree_map_with_path(lambda p, _: bool(regex.search(path_string(p))), params)


# What acts before the first block, in layer-wise decay's layer 0 (timm's `group_matcher` stem: cls_token, reg_token,
# pos_embed, patch_embed, norm_pre): the patch embedding and a hybrid's ResNet stem, the class and distillation
# tokens, the position table, registers, the pre-norm. Blocks are layers 1..L, the final norm joins the last block
# (timm's MATCH_PREV_GROUP), and everything after it (pooling, heads) is one last layer at the full rate, as are
# RoPE-Mixed's learned frequencies (one model-level tensor in timm, which its matcher leaves in no block).
STEM = re.compile(r"^(embedding|cls|dist|conv_root|gn_root|block\d+)(/|$)|^Transformer/(posembed_input|registers|pre_norm)(/|$)")
FINAL_NORM = re.compile(r"^Transformer/encoder_norm(/|$)")
FULL_RATE = re.compile(r"/rope_frequencies$")
_BLOCK = re.compile(r"^Transformer/encoderblock(?:_(\d+))?/")


def layer_scales(params: Any, decay: float) -> Any:
    """Each parameter's learning-rate multiplier under layer-wise decay, as timm's `param_groups_layer_decay`:
    `decay ** (last - layer)`, so the head learns at the full rate, block i (of L) at `decay ** (L - i)` and the
    patch embedding at `decay ** (L + 1)` (BEiT's and MAE's rule, except that their final norm keeps the full rate).
    Scanned blocks (one stacked `Transformer/encoderblock`) get one multiplier per layer along their leading axis."""
    leaves = [(path_string(path), leaf) for path, leaf in jax.tree_util.tree_flatten_with_path(params)[0]]
    blocks = {int(m.group(1)) for name, _ in leaves if (m := _BLOCK.match(name)) and m.group(1) is not None}
    stacked = {leaf.shape[0] for name, leaf in leaves if (m := _BLOCK.match(name)) and m.group(1) is None}
    num_layers = max(blocks, default=-1) + 1 + max(stacked, default=0)

    def layer(name: str) -> int:
        if STEM.search(name):
            return 0
        return num_layers if FINAL_NORM.search(name) else num_layers + 1

    last = max([num_layers, *(layer(name) for name, _ in leaves if not _BLOCK.match(name))])

    def scale(path: Any, leaf: Any) -> Any:
        name = path_string(path)
        if FULL_RATE.search(name):
            return 1.0
        if (m := _BLOCK.match(name)) is None:
            return decay ** (last - layer(name))
        if m.group(1) is not None:
            return decay ** (last - 1 - int(m.group(1)))
        layers = np.arange(leaf.shape[0], dtype=np.float64)
        return (decay ** (last - 1 - layers)).astype(np.float32).reshape(-1, *(1,) * (leaf.ndim - 1))

    return jax.tree_util.tree_map_with_path(scale, params)


def scale_by_layer(decay: float) -> optax.GradientTransformation:
    """Updates times `layer_scales` (after the optimizer: AdamW's decoupled weight decay is scaled with them, as a
    per-group learning rate scales it in PyTorch)."""
    def update(updates: Any, state: Any, params: Any = None) -> tuple[Any, Any]:
        scales = layer_scales(updates, decay)
        return jax.tree.map(lambda u, s: u * jnp.asarray(s, u.dtype), updates, scales), state

    return optax.GradientTransformation(lambda params: optax.EmptyState(), update)


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
    if config.get("layer_decay") is not None and config.layer_decay != 1:
        optimizer = optax.chain(optimizer, scale_by_layer(config.layer_decay))
    if config.grad_clip_norm:
        optimizer = optax.chain(optax.clip_by_global_norm(config.grad_clip_norm), optimizer)
    return optimizer


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
