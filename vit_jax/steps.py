"""The loss and the jit-able steps: one optimizer update on a global batch, and evaluation sums.

Models say how a batch becomes their inputs (`model.inputs(batch)`: the images, or NaViT's packed sequences), so
the steps serve every model without a branch.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import flax
import jax
import jax.numpy as jnp
import optax
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from vit_jax.augment.mixup import Mixup
from vit_jax.augment.random_erasing import RandomErasing
from vit_jax.distillation import Distillation
from vit_jax.models.navit import NaViT
from vit_jax.models.vit import DISTILLATION_HEADS, VisionTransformer
from vit_jax.sharding import DATA_AXIS

Batch = dict[str, jax.Array]
ERASING_STREAM, MIXUP_STREAM = 1, 2  # the augmentations' keys, folded from the step's dropout key


@flax.struct.dataclass
class TrainState:
    step: jax.Array
    params: Any
    opt_state: Any



# "cross_entropy": softmax cross-entropy; "binary_cross_entropy": a sigmoid per class against the same targets,
# averaged over the classes (PyTorch's BCEWithLogitsLoss, DeiT III's `--bce-loss`; big_vision's `sigmoid_xent`
# sums over the classes instead: the same gradients up to that factor, which Adam-type optimizers do not see)
LOSSES = ("cross_entropy", "binary_cross_entropy")


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                  targets: jax.Array | None = None, loss: str = "cross_entropy",
                  target_threshold: float | None = None) -> jax.Array:
    """Per-example loss (`LOSSES`) in float32 against (optionally smoothed) one-hot labels, or against `targets`
    (class probabilities: Mixup's) when given. `target_threshold` (binary cross-entropy): targets above it become
    1, the rest 0 (timm's BinaryCrossEntropy; DeiT III's 0.0: both images of a Mixup/CutMix pair are positives)."""
    if targets is None:
        targets = jax.nn.one_hot(labels, logits.shape[-1])
        if label_smoothing:
            targets = optax.smooth_labels(targets, label_smoothing)
    if loss == "binary_cross_entropy":
        if target_threshold is not None:
            targets = (targets > target_threshold).astype(jnp.float32)
        return jnp.mean(optax.sigmoid_binary_cross_entropy(logits.astype(jnp.float32), targets), axis=-1)
    if loss != "cross_entropy":
        raise ValueError(f"loss must be one of {LOSSES}; got {loss!r}")
    return optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)


def classification_sums(logits: jax.Array, labels: jax.Array, weights: jax.Array, label_smoothing: float = 0.0,
                        targets: jax.Array | None = None, loss: str = "cross_entropy",
                        target_threshold: float | None = None) -> dict[str, jax.Array]:
    """Weighted sums of loss, top-1 and top-5 hits, and the weight, over every prediction: logits `labels.shape +
    (classes,)`, one row per image (a packed batch has K image slots per sequence, weight 0 for empty ones). The
    loss is against `targets` when given (Mixup's), the hits always against `labels`."""
    logits = logits.reshape(-1, logits.shape[-1]).astype(jnp.float32)
    labels, weights = labels.reshape(-1), weights.reshape(-1).astype(jnp.float32)
    if targets is not None:
        targets = targets.reshape(-1, targets.shape[-1])
    top5 = jax.lax.top_k(logits, min(5, logits.shape[-1]))[1]
    return {
        "loss": jnp.sum(cross_entropy(logits, labels, label_smoothing, targets, loss, target_threshold) * weights),
        "top1": jnp.sum((jnp.argmax(logits, -1) == labels) * weights),
        "top5": jnp.sum(jnp.any(top5 == labels[:, None], axis=-1) * weights),
        "count": jnp.sum(weights),
    }


def make_train_step(
    model: VisionTransformer,
    tx: optax.GradientTransformation,
    schedule: optax.Schedule,
    *,
    dropout_key: jax.Array,
    accum_steps: int = 1,
    label_smoothing: float = 0.0,
    mesh: Mesh | None = None,
    pixels: Callable[[jax.Array], jax.Array] | None = None,
    random_erasing: RandomErasing | None = None,
    mixup: Mixup | None = None,
    distillation: Distillation | None = None,
    loss: str = "cross_entropy",
    bce_target_threshold: float | None = None,
) -> Callable[..., tuple[TrainState, dict[str, jax.Array]]]:
    """One optimizer update on a global batch. The dropout key is folded from the step number, so a step's
    randomness does not depend on history (and a resumed run repeats it exactly). With `accum_steps > 1` the batch
    is cut into micro-batches `batch[i::accum_steps]` (every device keeps an equal share of each), whose gradients
    are averaged: the same update as one big batch, in less memory. A packed batch's loss is the mean over its
    real images (`mask`). uint8 images (a pipeline that leaves the pixel arithmetic to the step) become the
    model's values through `pixels` (`Preprocess.pixels_on_device`). `random_erasing` then `mixup` (timm's order)
    act on each (micro-)batch of images, drawn from the step's key; the loss is then against Mixup's targets, the
    reported accuracy against the images' own labels. With `distillation` the step takes the teacher's parameters
    (`train_step(state, batch, patch_size, teacher_params)`), the teacher sees the images the student sees, and
    the loss is `vit_jax.distillation`'s."""
    loss_kind = loss  # `loss` names the values below
    if (mixup is not None or random_erasing is not None or distillation is not None) and isinstance(model, NaViT):
        raise ValueError("random erasing, Mixup/CutMix and distillation act on image batches; a packed (NaViT) batch "
                         "holds patches")

    def loss_and_grads(params: Any, batch: Batch, rng: jax.Array, patch_size: Any, teacher_params: Any = None):
        if "image" in batch and batch["image"].dtype == jnp.uint8:  # packed (NaViT) batches carry patches
            if pixels is None:
                raise ValueError("uint8 training images need make_train_step(pixels=Preprocess.pixels_on_device)")
            batch = {**batch, "image": pixels(batch["image"])}
        targets = None
        if random_erasing is not None:
            batch = {**batch, "image": random_erasing(jax.random.fold_in(rng, ERASING_STREAM), batch["image"])}
        if mixup is not None:
            images, targets = mixup(jax.random.fold_in(rng, MIXUP_STREAM), batch["image"], batch["label"],
                                    model.num_classes, label_smoothing)
            batch = {**batch, "image": images}

        teacher_logits = None if distillation is None else distillation.teacher_logits(teacher_params, batch["image"])

        def loss_fn(p):
            flexi = {} if patch_size is None else {"patch_size": patch_size}
            apply = functools.partial(model.apply, {"params": p}, *model.inputs(batch), train=True,
                                      rngs={"dropout": rng}, **flexi)
            if distillation is not None:  # the two heads of `token_distilled` (DeiT), or the one head twice
                logits, sown = apply(mutable=[DISTILLATION_HEADS])
                class_logits, distilled_logits = sown.get(DISTILLATION_HEADS, {}).get("logits", ((logits, logits),))[0]
                labels_loss = jnp.mean(cross_entropy(class_logits, batch["label"], label_smoothing, targets, loss_kind,
                                                     bce_target_threshold))
                total, metrics = distillation.objective(labels_loss, distilled_logits, teacher_logits, batch["label"])
                return total, (jnp.mean(jnp.argmax(logits, -1) == batch["label"]), metrics)
            logits, extra = apply(), {}
            weights = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32))
            sums = classification_sums(logits, batch["label"], weights, label_smoothing, targets, loss_kind,
                                       bce_target_threshold)
            count = jnp.maximum(sums["count"], 1.0)
            return sums["loss"] / count, (sums["top1"] / count, extra)

        (loss, (accuracy, extra)), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
        return loss, accuracy, grads, extra

    def micro_batches(x: jax.Array) -> jax.Array:
        x = x.reshape(x.shape[0] // accum_steps, accum_steps, *x.shape[1:]).swapaxes(0, 1)
        if mesh is not None:
            x = jax.lax.with_sharding_constraint(x, NamedSharding(mesh, PartitionSpec(None, DATA_AXIS)))
        return x

    def accumulated(params: Any, batch: Batch, rng: jax.Array, patch_size: Any, teacher_params: Any):
        def body(carry, micro):
            index, micro_batch = micro
            results = loss_and_grads(params, micro_batch, jax.random.fold_in(rng, index), patch_size, teacher_params)
            return jax.tree.map(jnp.add, carry, results), None

        shapes = jax.eval_shape(loss_and_grads, params, jax.tree.map(lambda x: x[::accum_steps], batch), rng,
                                patch_size, teacher_params)
        zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)
        micro = (jnp.arange(accum_steps), jax.tree.map(micro_batches, batch))
        totals, _ = jax.lax.scan(body, zeros, micro)
        return jax.tree.map(lambda t: t / accum_steps, totals)

    def train_step(state: TrainState, batch: Batch, patch_size: Any = None, teacher_params: Any = None
                   ) -> tuple[TrainState, dict[str, jax.Array]]:
        rng = jax.random.fold_in(dropout_key, state.step)
        if accum_steps == 1:
            loss, accuracy, grads, extra = loss_and_grads(state.params, batch, rng, patch_size, teacher_params)
        else:
            loss, accuracy, grads, extra = accumulated(state.params, batch, rng, patch_size, teacher_params)
        updates, opt_state = tx.update(grads, state.opt_state, state.params)
        new_state = TrainState(state.step + 1, optax.apply_updates(state.params, updates), opt_state)
        metrics = {
            "train/loss": loss,
            "train/accuracy": accuracy,
            "train/grad_norm": optax.tree.norm(grads),
            # the largest change to any parameter (a norm would overflow first): non-finite where a finite loss
            # still broke the parameters; checked with the loss before anything is saved (vit_jax.train)
            "train/update_max": jax.tree.reduce(jnp.maximum, jax.tree.map(lambda u: jnp.max(jnp.abs(u)), updates),
                                                jnp.zeros((), jnp.float32)),
            "train/learning_rate": schedule(state.step),
            **extra,
        }
        if "image_ids" in batch:  # how full the packed sequences are
            metrics["train/padding_fraction"] = jnp.mean(batch["image_ids"] == 0)
            metrics["train/images_per_sequence"] = jnp.mean(jnp.sum(batch["mask"], axis=-1))
        return new_state, metrics

    return train_step


def make_eval_step(model: VisionTransformer, loss: str = "cross_entropy"
                   ) -> Callable[[Any, Batch], dict[str, jax.Array]]:
    """Sums over the real (mask = 1) examples of a batch: loss (the training's kind), top-1 and top-5 hits, count."""

    def eval_step(params: Any, batch: Batch, patch_size: Any = None) -> dict[str, jax.Array]:
        flexi = {} if patch_size is None else {"patch_size": patch_size}
        logits = model.apply({"params": params}, *model.inputs(batch), train=False, **flexi)
        return classification_sums(logits, batch["label"], batch["mask"], loss=loss)

    return eval_step


def make_scored_eval_step(model: VisionTransformer, loss: str = "cross_entropy"
                          ) -> Callable[[Any, Batch, jax.Array], dict[str, jax.Array]]:
    """`make_eval_step`'s sums on some of the head's columns (`columns`: another dataset's classes; labels index
    them, -1 for an example not scored), and with ReaL labels (`batch["real"]`: indices into `columns`, -1 padded)
    how many images have any and how many of those have their top class among them."""

    def eval_step(params: Any, batch: Batch, columns: jax.Array) -> dict[str, jax.Array]:
        logits = model.apply({"params": params}, *model.inputs(batch), train=False)[..., columns]
        labels, weights = batch["label"], batch["mask"] * (batch["label"] >= 0)
        sums = classification_sums(logits, jnp.maximum(labels, 0), weights, loss=loss)
        if "real" in batch:
            top = jnp.argmax(logits, axis=-1)
            has_real = jnp.any(batch["real"] >= 0, axis=-1) & (batch["mask"] > 0)
            sums["real_top1"] = jnp.sum(jnp.any(batch["real"] == top[:, None], axis=-1) & has_real)
            sums["real_count"] = jnp.sum(has_real)
        return sums

    return eval_step


def make_representation_step(model: VisionTransformer) -> Callable[[Any, Batch], tuple[jax.Array, ...]]:
    """The representation the head reads (float32), with the batch's labels and mask: what few-shot evaluations
    fit (`vit_jax.extra_evals`). The parameters are the whole model's; the head's are not read."""
    headless = model.clone(num_classes=0)

    def representation_step(params: Any, batch: Batch) -> tuple[jax.Array, ...]:
        x = headless.apply({"params": params}, *headless.inputs(batch), train=False).astype(jnp.float32)
        return x, batch["label"], batch["mask"]

    return representation_step
