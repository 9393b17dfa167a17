"""Knowledge distillation from a trained teacher (DeiT, Touvron et al. 2021): the student learns from the labels
and from the teacher's predictions on the same images.

`config.distillation.teacher` names any checkpoint vit_jax reads (a workdir, an `.npz`, a Hub checkpoint) trained
on the same classes. In the train step the teacher sees each batch as the student does (after random erasing and
Mixup/CutMix), converted to its own pixel values (value range, mean and std) and resized to its own image size,
in inference mode and without gradients. The loss is DeiT's `DistillationLoss`,
`(1 - alpha) * CE(class head, targets) + alpha * D(distillation head, teacher)`: with
`classifier='token_distilled'` the class token's head takes the first term and the distillation token's head the
second (DeiT's distilled models); any other student's one head takes both.
- hard: D = cross-entropy against the teacher's top class (DeiT's best);
- soft: D = KL(softmax(teacher / tau) || softmax(student / tau)) * tau**2, summed over the batch and the classes and
  divided by both (DeiT's `reduction='sum'` over `numel()`: 1/classes of the per-image KL's mean).
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from ml_collections import ConfigDict

from vit_jax.data.preprocessing import Preprocess
from vit_jax.models.vit import VisionTransformer

KINDS = ("hard", "soft")
# jax.image.resize's names for the pipeline's resize methods (others resize bilinearly)
_JAX_RESIZE = {"nearest": "nearest", "bilinear": "linear", "bicubic": "cubic", "lanczos": "lanczos3"}


@dataclasses.dataclass(frozen=True)
class Distillation:
    teacher: VisionTransformer
    kind: str
    alpha: float
    tau: float
    scale: np.ndarray  # the student's input values -> the teacher's: `x * scale + offset`, per channel
    offset: np.ndarray
    channels: int  # the teacher's input channels (a grayscale student's images are repeated)
    image_size: tuple[int, int]  # the teacher's
    resize_method: str  # jax.image.resize's

    def teacher_inputs(self, images: jax.Array) -> jax.Array:
        """The student's input batch `(B, H, W, C)` as the teacher's evaluation would have made those pixels."""
        x = images.astype(jnp.float32)
        if x.shape[-1] != self.channels:
            x = jnp.repeat(x, self.channels, axis=-1)
        x = x * self.scale + self.offset
        if tuple(x.shape[1:3]) != self.image_size:
            x = jax.image.resize(x, (x.shape[0], *self.image_size, x.shape[-1]), self.resize_method, antialias=True)
        return x

    def teacher_logits(self, params: Any, images: jax.Array) -> jax.Array:
        """The teacher's float32 logits for the student's input batch, without gradients."""
        logits = self.teacher.apply({"params": params}, self.teacher_inputs(images), train=False)
        return jax.lax.stop_gradient(logits).astype(jnp.float32)

    def objective(self, labels_loss: jax.Array, logits: jax.Array, teacher_logits: jax.Array, labels: jax.Array
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """`(1 - alpha) * labels_loss + alpha * D` for the (distillation head's) `logits`, and the metrics logged
        beside it: D and the teacher's accuracy on the batch."""
        distilled = jnp.mean(self.loss(logits, teacher_logits))
        metrics = {"train/distillation_loss": distilled,
                   "train/teacher_accuracy": jnp.mean(jnp.argmax(teacher_logits, -1) == labels)}
        return (1 - self.alpha) * labels_loss + self.alpha * distilled, metrics

    def loss(self, logits: jax.Array, teacher_logits: jax.Array) -> jax.Array:
        """Per-example distillation term D of the student's (distillation head's) `logits`."""
        logits = logits.astype(jnp.float32)
        if self.kind == "hard":
            teacher_class = jnp.argmax(teacher_logits, axis=-1)
            return -jnp.take_along_axis(jax.nn.log_softmax(logits), teacher_class[:, None], axis=-1)[:, 0]
        student = jax.nn.log_softmax(logits / self.tau)
        teacher = jax.nn.log_softmax(teacher_logits / self.tau)
        kl = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)
        return kl * self.tau**2 / logits.shape[-1]


def check_distillation(config: ConfigDict) -> None:
    """`config.distillation`'s fields; a ValueError names the first bad one (`field: problem`). The teacher itself
    is read and checked against the data by `distillation_from_config`."""
    if not isinstance(config.get("teacher", ""), str):
        raise ValueError(f"teacher: must be a checkpoint (a workdir, .npz or Hub checkpoint) or ''; "
                         f"got {config.teacher!r}")
    if config.get("kind") not in KINDS:
        raise ValueError(f"kind: must be one of {KINDS}; got {config.get('kind')!r}")
    alpha, tau = config.get("alpha"), config.get("tau")
    if isinstance(alpha, bool) or not isinstance(alpha, int | float) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha: must be a number in [0, 1] (the distillation term's weight); got {alpha!r}")
    if isinstance(tau, bool) or not isinstance(tau, int | float) or not tau > 0:
        raise ValueError(f"tau: must be a number > 0 (the soft targets' temperature); got {tau!r}")


def distillation_from_config(config: ConfigDict, student: Preprocess, image_shape: tuple[int, ...],
                             num_classes: int, class_names: tuple[str, ...]) -> tuple[Distillation, Any] | None:
    """The distillation of `config.distillation` and its teacher's parameters (host arrays), or None without a
    teacher. Raises ValueError (`teacher: problem`) when the teacher cannot serve: unreadable, other classes, or
    images it cannot take."""
    settings = config.get("distillation") or ConfigDict()
    if not settings.get("teacher"):
        return None
    from vit_jax.checkpoint.trained_model import load_trained_model  # reads checkpoints: only when asked

    if len(image_shape) != 3:
        raise ValueError(f"teacher: distillation takes image batches; this run's inputs are {image_shape}")
    if config.packing.enabled:
        raise ValueError("teacher: distillation takes image batches; packing.enabled=True trains on packed "
                         "patch sequences")
    try:
        trained = load_trained_model(settings.teacher)
    except (OSError, ValueError, KeyError) as error:
        raise ValueError(f"teacher: cannot be read: {error}") from None
    teacher_classes = trained.model.num_classes
    if teacher_classes != num_classes:
        raise ValueError(f"teacher: {trained.source} predicts {teacher_classes} classes; the dataset has "
                         f"{num_classes}")
    if _named(trained.class_names) and _named(class_names) and tuple(trained.class_names) != tuple(class_names):
        differ = next(i for i, (a, b) in enumerate(zip(trained.class_names, class_names)) if a != b)
        raise ValueError(f"teacher: {trained.source}'s class {differ} is {trained.class_names[differ]!r}, the "
                         f"dataset's {class_names[differ]!r}: the teacher was trained on other labels")
    channels = image_shape[-1]
    if channels != trained.channels and channels != 1:
        raise ValueError(f"teacher: {trained.source} takes {trained.channels}-channel images; this run's have "
                         f"{channels}")
    scale, offset = input_conversion(student, trained.preprocess)
    dtype = jnp.dtype(config.model.get("dtype") or "float32")  # the student's compute dtype
    teacher = trained.model.clone(dtype=None if dtype == jnp.float32 else dtype)
    distillation = Distillation(
        teacher=teacher, kind=settings.kind, alpha=float(settings.alpha), tau=float(settings.tau),
        scale=scale, offset=offset, channels=trained.channels,
        image_size=tuple(trained.image_size), resize_method=_JAX_RESIZE.get(trained.preprocess.resize_method, "linear"))
    return distillation, trained.params


def input_conversion(student: Preprocess, teacher: Preprocess) -> tuple[np.ndarray, np.ndarray]:
    """float32 `(scale, offset)` taking the student's input values to the teacher's: both are affine in the
    pixels (`u * s + o`), so the teacher's are `x * (t_s / s) + t_o - o * t_s / s`."""
    student_scale, student_offset = (np.asarray(a, np.float64) for a in student.affine())
    teacher_scale, teacher_offset = (np.asarray(a, np.float64) for a in teacher.affine())
    scale = teacher_scale / student_scale
    return scale.astype(np.float32), (teacher_offset - student_offset * scale).astype(np.float32)


def _named(names: tuple[str, ...]) -> bool:
    """Whether class names are real names rather than the "0", "1", ... of a checkpoint without them."""
    return tuple(names) != tuple(str(i) for i in range(len(names)))
