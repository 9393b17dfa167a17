"""A checkpoint's classifier scored on a dataset split: top-1 and top-5 accuracy and cross-entropy, as timm's
`validate.py` scores a model.

    python -m vit_jax.evaluate --checkpoint=workdirs/digits
    python -m vit_jax.evaluate --checkpoint=hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k \
        --dataset=imagenet2012 --split=validation [--image-size 384] [--crop-pct 1.0]

Every image of the split goes through the checkpoint's evaluation view (its size, crop, interpolation, mean and
std; `--image-size` and `--crop-pct` change them, a learned table then resized in the forward pass as the
checkpoint's own code resizes it) and its head; nothing is trained, so the figures are the checkpoint's own. A
dataset of some of the head's classes is scored on those classes' columns alone, found by name (a folder of
ImageNet-R's 200 WordNet IDs among a 1,000-class head's); TFDS's `imagenet_r` and `imagenet_a`, which keep
ImageNet's 1,000 labels, are scored on their 200 classes' columns, as their authors score a 1,000-class model
(`--classes` for another subset). TFDS's `imagenet2012_real` is scored against ImageNet's own labels and, as
ReaL accuracy (Beyer et al., 2020), against each image's set of plausible labels. A workdir is scored on its run's
test split unless told otherwise.
"""

from __future__ import annotations

import dataclasses
import functools
import sys
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from vit_jax import frozen_features
from vit_jax.checkpoint.trained_model import TrainedModel
from vit_jax.data.class_map import REAL_LABELS, ClassMap, class_map, real_labels, scored_classes
from vit_jax.data.imagenet_classes import imagenet_subsets

TOP = 5  # the second accuracy reported: whether the label is among the 5 highest logits


@dataclasses.dataclass(frozen=True)
class Scores:
    """What an evaluation measured: top-1 and top-5 accuracy and the mean cross-entropy (natural log) over the
    `count` examples scored (`skipped`: examples of classes not scored), on `classes` of the head's `head_classes`
    columns."""
    top1: float
    top5: float | None  # None with 5 classes or fewer (always right)
    loss: float
    count: int
    skipped: int
    classes: int
    head_classes: int
    real_top1: float | None = None  # ReaL accuracy: the top class among the image's ReaL labels, over images with any
    real_count: int | None = None


def head_class_map(trained: TrainedModel, data: frozen_features.FrozenData, classes: str | None) -> ClassMap:
    """The dataset's labels on `trained`'s head (`vit_jax.data.class_map`), `--classes` restricting them; a
    ValueError, before anything runs, for a model without a head or classes it cannot score."""
    width = trained.model.num_classes or 0
    hint = (f"; score its representation on {data.dataset!r} with python -m vit_jax.knn or python -m "
            f"vit_jax.linear_probe")
    if not width:
        raise ValueError(f"{trained.source} has no classification head{hint}")
    try:
        scored, scored_as = scored_classes(classes, data.builder.name)
        return class_map(trained.class_names, width, trained.source, data.class_names, data.dataset, scored,
                         scored_as)
    except ValueError as error:
        if classes is not None and str(error).startswith("classes"):
            raise ValueError(f"--{error}") from None
        raise ValueError(f"{error}{hint}") from None


def per_example(logits: jax.Array, batch: dict[str, jax.Array], *, classes: ClassMap, keep_logits: bool
                ) -> dict[str, Any]:
    """Each example's label rank among the scored columns (0: top-1; -1: a class not scored), its cross-entropy
    over them, those logits if kept, and with ReaL labels whether the top column is one of them (-1: none)."""
    logits = logits[:, jnp.asarray(classes.columns)]
    positions = jnp.asarray(classes.positions)
    position = positions[batch["label"]]
    rank = jnp.where(position >= 0, frozen_features.label_rank(logits, position), -1)
    loss = -jnp.take_along_axis(jax.nn.log_softmax(logits), jnp.maximum(position, 0)[:, None], axis=1)[:, 0]
    outputs = {"rank": rank, "loss": loss}
    if "real" in batch:
        real = jnp.where(batch["real"] >= 0, positions[jnp.maximum(batch["real"], 0)], -1)
        top = jnp.argmax(logits, axis=1)  # the first of equal logits, as `label_rank` orders them
        hit = jnp.any(real == top[:, None], axis=1)
        outputs["real"] = jnp.where(jnp.any(real >= 0, axis=1), hit.astype(jnp.int32), -1)
    return {**outputs, "logits": logits} if keep_logits else outputs


def scoring_extractor(trained: TrainedModel, classes: ClassMap, dtype: str = "float32", keep_logits: bool = False,
                      real: bool = False, data_threads: int = 2) -> frozen_features.Extractor:
    """The compiled scoring of `trained`'s head on a dataset's classes (`per_example` for every example; with
    `real`, the examples' ReaL labels carried to it); `set_params` scores other parameters without compiling."""
    outputs = functools.partial(per_example, classes=classes, keep_logits=keep_logits)
    carry = (lambda example: {"real": real_labels(example)}) if real else None
    return frozen_features.Extractor(trained, dtype, head=True, outputs=outputs, carry=carry,
                                     data_threads=data_threads)


def scores_of(examples: dict[str, np.ndarray], labels: np.ndarray, classes: ClassMap, head_classes: int) -> Scores:
    """The figures of a split from its examples' outputs (`per_example`)."""
    rank, scored = examples["rank"], examples["rank"] >= 0
    count = int(np.sum(scored))
    if count == 0:
        raise ValueError(f"none of the {len(labels):,} examples is of a class scored")
    with_real = examples["real"][examples["real"] >= 0] if "real" in examples else None
    top5 = float(np.mean(rank[scored] < TOP)) if len(classes.columns) > TOP else None
    return Scores(float(np.mean(rank[scored] == 0)), top5, float(np.mean(examples["loss"][scored])), count,
                  len(labels) - count, len(classes.columns), int(head_classes),
                  None if with_real is None or not len(with_real) else float(np.mean(with_real)),
                  None if with_real is None else len(with_real))


def evaluate(trained: TrainedModel, source: Sequence[dict[str, Any]], classes: ClassMap, batch_size: int,
             dtype: str = "float32", keep_logits: bool = False, real: bool = False, data_threads: int = 2
             ) -> tuple[Scores, dict[str, np.ndarray], np.ndarray]:
    """The scores of `trained` on every example of `source`, each example's outputs (`rank`, `loss`, `logits` if
    kept, `real` with `real`: the examples' ReaL labels scored too) and labels, in order."""
    extract = scoring_extractor(trained, classes, dtype, keep_logits, real, data_threads)
    examples, labels = extract(source, batch_size)
    return scores_of(examples, labels, classes, trained.model.num_classes), examples, labels


def check_classes(classes: str | None, data: frozen_features.FrozenData) -> None:
    """A bad `--classes` before the model is read."""
    if classes is not None:
        try:
            scored_classes(classes, data.builder.name)
        except ValueError as error:
            raise ValueError(f"--{error}") from None


def main(argv: Sequence[str] | None = None) -> int:
    from vit_jax.data.sources import open_split

    parser = frozen_features.argument_parser("python -m vit_jax.evaluate", __doc__, {
        "test": "the split scored (default: test, or the run's test split)"}, saved="logits (the columns scored)")
    parser.add_argument("--classes", default=None,
                        help=f"score only these of the head's classes: {' or '.join(sorted(imagenet_subsets()))} "
                             f"(the default on those TFDS datasets), or a file of class names (WordNet IDs) or head "
                             f"columns, one per line")
    args = parser.parse_args(argv)
    prepared = frozen_features.prepare(args, {"test": "test"}, lambda data: check_classes(args.classes, data))
    if prepared is None:
        return 2
    data, trained = prepared
    try:
        classes = head_class_map(trained, data, args.classes)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    split = data.splits["test"]
    real = REAL_LABELS in data.builder.info.features
    try:  # what only the examples can say: none of a class scored, more ReaL labels than are read
        scores, examples, labels = evaluate(trained, open_split(data.builder, split), classes, args.batch_size,
                                            args.dtype, keep_logits=args.features is not None, real=real,
                                            data_threads=args.data_threads)
    except ValueError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    view = trained.preprocess
    h, w = view.image_size
    skipped = f"; {scores.skipped:,} of classes not scored left out" if scores.skipped else ""
    lines = [f"{trained.source} on {data.dataset} ({split}: {scores.count:,} {data.examples}{skipped}) at {h}x{w} "
             f"(crop {view.crop_pct:g}, {view.resize_method}), {classes.description}",
             f"top-1 {scores.top1:.2%}  " + ("" if scores.top5 is None else f"top-{TOP} {scores.top5:.2%}  ")
             + f"cross-entropy {scores.loss:.4f}"]
    if real:
        lines.append(f"ReaL top-1 {scores.real_top1:.2%} over the {scores.real_count:,} images with ReaL labels"
                     if scores.real_count else "ReaL: no image has ReaL labels")
    features = {"test": (examples["logits"], labels)} if args.features is not None else {}
    frozen_features.report(args, data, features, lines, {
        "image_size": [h, w], "crop_pct": view.crop_pct, "resize_method": view.resize_method,
        **dataclasses.asdict(scores), **({} if classes.whole_head else {"columns": classes.columns.tolist()})})
    return 0


if __name__ == "__main__":
    sys.exit(main())
