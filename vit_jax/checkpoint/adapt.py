"""Fitting loaded weights to a new model: new classes, resolution or patch size, and explicit exclusions.

`plan_adaptation` runs on parameter shapes alone, before anything is compiled: it resizes what can be resized
(position embeddings to the new grid, the patch kernel to the new patch size by PI-resize; an image checkpoint's
kernel and table are inflated for a video model, see `vit_jax.checkpoint.inflate`), decides what the new
model initialises itself (a head for another number of classes, `pre_logits` the new model lacks, whatever
`dont_load` names) and raises one error listing every other missing, extra or differently shaped parameter with
both shapes. Nothing is skipped silently. `fill_from_init` then takes the rest from the freshly initialised model.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from vit_jax.checkpoint.inflate import INFLATION_METHODS, inflate_kernel, inflate_posemb
from vit_jax.models.encoder import ENCODER, SCANNED_BLOCKS, stack_encoder_blocks, unstack_encoder_blocks
from vit_jax.models.patching import PATCH_RESIZE_METHODS, pi_resize_kernel
from vit_jax.models.posemb import POSEMB_RESIZE_METHODS, check_resizing, resize_posemb
from vit_jax.models.relative_position import resize_relative_position_bias

HEAD_POLICIES = ("auto", "reinit", "load")
HEADS = ("head", "head_dist")  # the classifier's heads: DeiT's distilled models have two
POSEMB_POLICIES = ("resize", "reinit")
POSEMB = (ENCODER, "posembed_input", "pos_embedding")
FACTORIZED = ((ENCODER, "posembed_input", "pos_embedding_row"), (ENCODER, "posembed_input", "pos_embedding_col"))
REGISTERS = (ENCODER, "registers")
KERNEL = ("embedding", "kernel")
FROM_INIT = None  # marks a leaf the new model initialises itself
# The named choices of `plan_adaptation` (a config's `init.<name>`), each with its allowed values.
ADAPTATION_CHOICES: dict[str, tuple[str, ...]] = dict(
    head=HEAD_POLICIES, posemb=POSEMB_POLICIES, posemb_method=POSEMB_RESIZE_METHODS, patch_method=PATCH_RESIZE_METHODS,
    inflation=INFLATION_METHODS)


class UnknownChoiceError(ValueError):
    """A named adaptation choice outside its allowed values; carries both so a config check can name its field."""

    def __init__(self, name: str, value: Any, allowed: tuple[str, ...]):
        super().__init__(f"{name} must be one of {allowed}; got {value!r}")
        self.name, self.value, self.allowed = name, value, allowed


def check_adaptation_choices(**choices: Any) -> None:
    """Each of `choices` (names of `ADAPTATION_CHOICES`) is one of its allowed values, else `UnknownChoiceError`."""
    for name, value in choices.items():
        if value not in ADAPTATION_CHOICES[name]:
            raise UnknownChoiceError(name, value, ADAPTATION_CHOICES[name])


class CheckpointMismatchError(ValueError):
    """Loaded weights that do not fit the model, listing every offending parameter with both shapes."""


@dataclasses.dataclass(frozen=True)
class Adaptation:
    flat: dict[tuple[str, ...], np.ndarray | None]  # per-layer paths -> loaded/adapted array, or FROM_INIT
    scanned: bool  # whether the target model stacks its blocks
    notes: tuple[str, ...]  # what was adapted, for the log


def plan_adaptation(
    loaded: Mapping[str, Any],
    target: Mapping[str, Any],
    *,
    old_grid: Sequence[int] | None,
    new_grid: Sequence[int],
    dont_load: Sequence[str] = (),
    head: str = "auto",
    posemb: str = "resize",
    posemb_method: str = "bilinear_align_corners",
    posemb_antialias: bool = False,
    posemb_aspect_preserving: bool = False,
    posemb_offset: float = 0.0,
    relative_position_resize: str = "geometric",
    patch_method: str = "bilinear",
    inflation: str = "central",
) -> Adaptation:
    """Loaded params (arrays) fitted to the target's params (arrays or ShapeDtypeStructs).

    Args:
      old_grid: the grid the loaded position embeddings were trained for; None infers a square one.
      new_grid: the target model's patch grid; `(gt, gh, gw)` for a video model.
      dont_load: regexes (`re.search` on '/'-joined paths) of parameters to take from the new initialisation.
      head: `auto` re-initialises the head when the number of classes differs; `reinit` always; `load` never.
      posemb: `resize` the learned table to the new grid, or `reinit` it (fresh initialisation).
      posemb_method, posemb_antialias, posemb_aspect_preserving, posemb_offset: how it is resized
        (`resize_posemb`'s `method`, `antialias`, `aspect_preserving`, `offset`).
      relative_position_resize: how BEiT's relative position tables are resized (the target model's rule).
      patch_method: the resize a new patch size's PI-resized kernel inverts (`pi_resize_kernel`'s `method`).
      inflation: how an image checkpoint's patch kernel becomes a video model's tubelet kernel: `central` or
        `average` (see `vit_jax.checkpoint.inflate`).
    """
    check_adaptation_choices(head=head, posemb=posemb, posemb_method=posemb_method, patch_method=patch_method,
                             inflation=inflation)
    scanned = SCANNED_BLOCKS in target.get(ENCODER, {})
    target_flat = _flat_shapes(jax.eval_shape(unstack_encoder_blocks, target) if scanned else target)
    loaded = unstack_encoder_blocks(loaded) if SCANNED_BLOCKS in loaded.get(ENCODER, {}) else loaded
    source = {path: np.asarray(value) for path, value in traverse_util.flatten_dict(dict(loaded)).items()}
    old_prefix = (("cls",) in source) + (("dist",) in source)  # the loaded table's rows before its grid
    plan: dict[tuple[str, ...], np.ndarray | None] = {}
    notes: list[str] = []

    def from_init(path: tuple[str, ...], why: str) -> None:
        source.pop(path, None)
        plan[path] = FROM_INIT
        notes.append(f"{'/'.join(path)}: {why}")

    if head != "load" and not any(p[0] == "head" for p in source):  # a feature extractor (DINOv2, MAE, CLIP...)
        for path in [p for p in target_flat if p[0] in HEADS]:
            from_init(path, "initialised (the checkpoint has no head)")
    patterns = [re.compile(p) for p in dont_load]
    for path in list(source):
        if any(p.search("/".join(path)) for p in patterns) and path in target_flat:
            from_init(path, "not loaded (dont_load), initialised")
        elif any(p.search("/".join(path)) for p in patterns):
            source.pop(path)
            notes.append(f"{'/'.join(path)}: not loaded (dont_load); the new model has no such parameter")
    _plan_distillation_token(source, target_flat, from_init, notes)
    _plan_head(source, target_flat, head, from_init, notes)
    _plan_kernel(source, target_flat, inflation, patch_method, notes)
    check_resizing(posemb_method, posemb_antialias, posemb_offset)
    resizing = (posemb_method, posemb_antialias, posemb_aspect_preserving, posemb_offset)
    _plan_posemb(source, target_flat, old_prefix, old_grid, tuple(new_grid), posemb, resizing, from_init, notes)
    _plan_factorized(source, target_flat, posemb, resizing, from_init, notes)
    _plan_relative_position(source, target_flat, relative_position_resize, notes)
    if REGISTERS in target_flat and REGISTERS not in source:
        from_init(REGISTERS, "initialised (the checkpoint has no register tokens)")
    for path in target_flat:  # RoPE-Mixed's learned frequencies, for a checkpoint trained with another encoding
        if path[-1] == "rope_frequencies" and path not in source:
            from_init(path, "initialised (the checkpoint has no RoPE-Mixed frequencies)")

    _check_match(source, {path: shape for path, shape in target_flat.items() if path not in plan})
    for path, (_, dtype) in target_flat.items():
        if path not in plan:
            plan[path] = source[path].astype(dtype)
    return Adaptation(plan, scanned, tuple(notes))


def fill_from_init(adaptation: Adaptation, fresh: Mapping[str, Any]) -> dict[str, Any]:
    """The adapted parameters as a tree in the target's layout, with FROM_INIT leaves taken from `fresh`."""
    fresh_flat = traverse_util.flatten_dict(
        unstack_encoder_blocks(fresh) if adaptation.scanned else dict(fresh)
    )
    merged = {path: fresh_flat[path] if value is FROM_INIT else value for path, value in adaptation.flat.items()}
    tree = traverse_util.unflatten_dict(merged)
    return stack_encoder_blocks(tree) if adaptation.scanned else tree


def _flat_shapes(tree: Mapping[str, Any]) -> dict[tuple[str, ...], tuple[tuple[int, ...], np.dtype]]:
    return {path: (tuple(leaf.shape), np.dtype(leaf.dtype)) for path, leaf in traverse_util.flatten_dict(dict(tree)).items()}


def _plan_head(source, target_flat, head, from_init, notes) -> None:
    for name in (*HEADS, "pre_logits"):
        paths = [p for p in list(source) if p[0] == name]
        if not paths:
            continue
        if name == "pre_logits" and ("pre_logits", "kernel") not in target_flat:
            for path in paths:
                source.pop(path)
            notes.append("pre_logits: dropped (the new model has no representation layer)")
            continue
        if name not in HEADS or head == "load":
            continue
        target_kernel = target_flat.get((name, "kernel"))
        differs = target_kernel is None or target_kernel[0] != source.get((name, "kernel"), np.empty(0)).shape
        if target_kernel is None:
            for path in paths:
                source.pop(path)
            notes.append(f"{name}: dropped (the new model has no head)")
        elif head == "reinit" or differs:
            for path in paths:
                from_init(path, "re-initialised" + (" (another number of classes)" if differs else ""))


def _plan_distillation_token(source, target_flat, from_init, notes) -> None:
    """DeiT's distillation token and its head: dropped for a model without one, initialised for a model that has
    one and a checkpoint that has not."""
    paths = [p for p in list(source) if p[0] in ("dist", "head_dist")]
    if paths and ("dist",) not in target_flat:
        for path in paths:
            source.pop(path)
        notes.append("dist, head_dist: dropped (the new model has no distillation token)")
    elif ("dist",) in target_flat and ("dist",) not in source:
        for path in [p for p in target_flat if p[0] in ("dist", "head_dist")]:
            from_init(path, "initialised (the checkpoint has no distillation token)")


def _plan_kernel(source, target_flat, inflation, patch_method, notes) -> None:
    if KERNEL not in source or KERNEL not in target_flat:
        return
    kernel, (shape, _) = source[KERNEL], target_flat[KERNEL]
    inflate = kernel.ndim == 4 and len(shape) == 5  # an image checkpoint for a video model
    frames, shape = (shape[0], shape[1:]) if inflate else (None, shape)
    if kernel.shape[:2] != shape[:2] and kernel.shape[2:] == shape[2:]:
        if ("embedding", "patch_norm", "scale") in source:
            raise CheckpointMismatchError(
                f"embedding/patch_norm normalises the pixels of {kernel.shape[0]}x{kernel.shape[1]} patches: this "
                f"checkpoint cannot move to patch {shape[0]}x{shape[1]}; keep its patch size")
        source[KERNEL] = pi_resize_kernel(kernel, shape[:2], patch_method)
        notes.append(f"embedding/kernel: PI-resized from patch {kernel.shape[0]}x{kernel.shape[1]} to "
                     f"{shape[0]}x{shape[1]} ({'bilinear' if patch_method == 'bilinear' else 'bicubic, antialiased'})")
    if inflate:
        source[KERNEL] = inflate_kernel(source[KERNEL], frames, inflation)
        notes.append(f"embedding/kernel: inflated from an image kernel to {frames}-frame tubelets ({inflation})")


def _plan_posemb(source, target_flat, old_prefix, old_grid, new_grid, policy, resizing, from_init, notes) -> None:
    if POSEMB not in source or POSEMB not in target_flat:
        return
    if policy == "reinit":
        from_init(POSEMB, "re-initialised (posemb='reinit')")
        return
    table, (shape, _) = source[POSEMB], target_flat[POSEMB]
    new_prefix = (("cls",) in target_flat) + (("dist",) in target_flat)
    rows = table.shape[1] - old_prefix
    old_grid = tuple(old_grid) if old_grid is not None else _square_grid(rows)
    if len(old_grid) == 2 and len(new_grid) == 3 and rows != math.prod(old_grid) and rows % math.prod(old_grid) == 0:
        old_grid = (rows // math.prod(old_grid), *old_grid)  # a video workdir's config tells its spatial grid only
    if math.prod(old_grid) != rows:
        raise CheckpointMismatchError(
            f"pos_embedding has {table.shape[1]} rows ({old_prefix} prefix), not a {_text(old_grid)} grid")
    if len(old_grid) == 3 and len(new_grid) == 2:
        raise CheckpointMismatchError(f"pos_embedding of a video model ({_text(old_grid)} grid) cannot initialise "
                                      f"an image model ({_text(new_grid)} grid)")
    how = _how(*resizing)
    if len(old_grid) == 2 and len(new_grid) == 3:
        resized = inflate_posemb(table, old_grid, new_grid, old_prefix, *resizing)
        notes.append(f"pos_embedding: inflated from a {_text(old_grid)} image grid to a {_text(new_grid)} video "
                     f"grid (spatial table {'resized (' + how + ') and ' if old_grid != new_grid[1:] else ''}"
                     f"repeated over {new_grid[0]} temporal positions)")
    else:
        resized = np.asarray(resize_posemb(table, old_grid, new_grid, old_prefix, *resizing))
        if old_grid != new_grid:
            notes.append(f"pos_embedding: resized from a {_text(old_grid)} to a {_text(new_grid)} grid ({how})")
    # prefix rows are the class token's, then DeiT's distillation token's: a token's row goes with the token, and
    # a token the checkpoint lacks gets a zero row (big_vision-style tables have none: no row means a zero row)
    if old_prefix != new_prefix:
        zeros = np.zeros((1, max(new_prefix - old_prefix, 0), resized.shape[2]), resized.dtype)
        resized = np.concatenate([resized[:, :min(old_prefix, new_prefix)], zeros, resized[:, old_prefix:]], axis=1)
    if resized.shape[2] == shape[2]:
        source[POSEMB] = resized


def _plan_factorized(source, target_flat, policy, resizing, from_init, notes) -> None:
    """`factorized` row and column tables, each resized along its own axis to the new grid's rows / columns (with
    aspect preserving, both to the longer of the two, then each cut to its own)."""
    method, antialias, aspect_preserving, offset = resizing
    lengths = {path: target_flat[path][0][0] for path in FACTORIZED if path in target_flat}
    for path in FACTORIZED:
        if path not in source or path not in target_flat:
            continue
        if policy == "reinit":
            from_init(path, "re-initialised (posemb='reinit')")
            continue
        old, new = source[path].shape[0], lengths[path]
        longer = max(lengths.values()) if aspect_preserving else new
        if old == longer == new:
            continue
        if source[path].shape[1:] != target_flat[path][0][1:]:
            continue  # another width: reported by the shape check
        resized = resize_posemb(source[path][None], (old,), (longer,), 0, method, antialias, offset=offset)[0]
        source[path] = np.asarray(resized)[:new]
        notes.append(f"{path[-1]}: resized from {old} to {new} positions ({_how(*resizing)})")


def _how(method: str, antialias: bool, aspect_preserving: bool, offset: float) -> str:
    return (f"{method}{', antialiased' if antialias else ''}{', aspect preserving' if aspect_preserving else ''}"
            f"{f', offset {offset}' if offset else ''}")


HOW_RELATIVE = {"geometric": "BEiT's geometric interpolation", "bilinear": "half-pixel bilinear interpolation"}


def _plan_relative_position(source, target_flat, method, notes) -> None:
    """BEiT's relative position tables, resized for a new grid by the model's rule (by default as BEiT's fine-tuning
    resizes them: `vit_jax.models.relative_position`)."""
    resized = 0
    for path, (shape, _) in target_flat.items():
        if path[-1] != "relative_position_bias" or path not in source or source[path].shape == shape:
            continue
        if source[path].shape[-1] != shape[-1] or len(shape) != 3:
            continue  # another head count: reported by the shape check
        source[path] = resize_relative_position_bias(source[path], ((shape[0] + 1) // 2, (shape[1] + 1) // 2),
                                                     method)
        resized += 1
    if resized:
        notes.append(f"relative_position_bias: {resized} table(s) resized to {shape[0]}x{shape[1]} offsets "
                     f"({HOW_RELATIVE[method]})")


def _text(grid: Sequence[int]) -> str:
    return "x".join(map(str, grid))


def _square_grid(rows: int) -> tuple[int, int]:
    side = math.isqrt(rows)
    if side * side != rows:
        raise CheckpointMismatchError(
            f"pos_embedding has {rows} patch rows, not a square grid; give the grid it was trained for "
            f"(config.init.grid=(gh, gw))")
    return side, side


def _check_match(source: dict, target: dict) -> None:
    fmt = lambda path: "/".join(path)
    missing = [f"  missing from the checkpoint: {fmt(p)} (model {s})" for p, (s, _) in target.items() if p not in source]
    extra = [f"  not in the model: {fmt(p)} (checkpoint {source[p].shape})" for p in source if p not in target]
    shapes = [f"  shape differs: {fmt(p)}: checkpoint {source[p].shape}, model {s}"
              for p, (s, _) in target.items() if p in source and source[p].shape != s]
    problems = missing + extra + shapes
    if problems:
        raise CheckpointMismatchError(
            f"the checkpoint does not fit the model ({len(problems)} parameter(s)); list what to initialise "
            f"afresh in config.init.dont_load, or change the model:\n" + "\n".join(problems))
