"""A checkpoint's classifier scored on a dataset split: top-1 and top-5 accuracy and cross-entropy, as timm's
`validate.py` scores a model.

    python -m vit_jax.evaluate --checkpoint=workdirs/digits
    python -m vit_jax.evaluate --checkpoint=hf-hub:timm/vit_base_patch16_224.augreg2_in21k_ft_in1k \
        --dataset=imagenet2012 --split=validation [--image-size 384] [--crop-pct 1.0]

Every image of the split goes through the checkpoint's evaluation view (its size, crop, interpolation, mean and
std; `--image-size` and `--crop-pct` change them, a learned table then resized in the forward pass as the
checkpoint's own code resizes it) and its head; nothing is trained, so the figures are the checkpoint's own. A
dataset of some of the head's classes is scored on those classes' columns alone, found by name: ImageNet-R's or
ImageNet-A's 200 WordNet IDs among a 1,000-class head's, as their authors evaluate them. A workdir is scored on its
run's test split unless told otherwise.
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
from vit_jax.data.imagenet_classes import IMAGENET_1K_CLASSES, imagenet_wordnet_ids

TOP = 5  # the second accuracy reported: whether the label is among the 5 highest logits


@dataclasses.dataclass(frozen=True)
class Scores:
    """What an evaluation measured: top-1 and top-5 accuracy and the mean cross-entropy (natural log) over `count`
    examples, scored on `classes` of the head's `head_classes` columns."""
    top1: float
    top5: float
    loss: float
    count: int
    classes: int
    head_classes: int


def head_columns(trained: TrainedModel, data: frozen_features.FrozenData) -> np.ndarray:
    """The head's column for each of the dataset's classes: index for index when the counts match and the names do
    not say otherwise, else by name (the head's class names; a 1,000-class head's ImageNet WordNet IDs too). A
    ValueError, before anything runs, when the head has no column for some class, or no head."""
    width = trained.model.num_classes or 0
    if not width:
        raise ValueError(f"{trained.source} has no classification head; score its representation on "
                         f"{data.dataset!r} with python -m vit_jax.knn or python -m vit_jax.linear_probe")
    keys: dict[str, int] = {}
    for index, name in enumerate(trained.class_names):
        if not name.isdigit():  # "0", "1", ...: a head whose classes have no names
            keys.setdefault(name, index)
    if width == IMAGENET_1K_CLASSES:
        for index, wnid in enumerate(imagenet_wordnet_ids()):
            keys.setdefault(wnid, index)
    if all(name in keys for name in data.class_names):
        return np.asarray([keys[name] for name in data.class_names], np.int32)
    if len(data.class_names) == width:
        return np.arange(width, dtype=np.int32)
    unknown = [name for name in data.class_names if name not in keys]
    raise ValueError(f"{trained.source}'s head has {width} classes and dataset {data.dataset!r} has "
                     f"{len(data.class_names)}, {len(unknown)} of them not among the head's by name (e.g. "
                     f"{unknown[0]!r}); score its representation on this dataset with python -m vit_jax.knn or "
                     f"python -m vit_jax.linear_probe")


def per_example(logits: jax.Array, labels: jax.Array, *, columns: jax.Array, keep_logits: bool) -> dict[str, Any]:
    """Each example's label rank (0: top-1) and cross-entropy among the dataset's columns of the head, and those
    logits if kept."""
    logits = logits[:, columns]
    outputs = {"rank": frozen_features.label_rank(logits, labels),
               "loss": -jnp.take_along_axis(jax.nn.log_softmax(logits), labels[:, None], axis=1)[:, 0]}
    return {**outputs, "logits": logits} if keep_logits else outputs


def evaluate(trained: TrainedModel, source: Sequence[dict[str, Any]], columns: np.ndarray, batch_size: int,
             dtype: str = "float32", keep_logits: bool = False) -> tuple[Scores, dict[str, np.ndarray], np.ndarray]:
    """The scores of `trained` on every example of `source` (labels index `columns`, the head's columns for the
    dataset's classes), each example's outputs (`rank`, `loss`, `logits` if kept) and labels, in order."""
    outputs = functools.partial(per_example, columns=jnp.asarray(columns), keep_logits=keep_logits)
    extract = frozen_features.Extractor(trained, dtype, head=True, outputs=outputs)
    examples, labels = extract(source, batch_size)
    rank = examples["rank"]
    scores = Scores(float(np.mean(rank == 0)), float(np.mean(rank < TOP)), float(np.mean(examples["loss"])),
                    len(labels), len(columns), int(trained.model.num_classes))
    return scores, examples, labels


def main(argv: Sequence[str] | None = None) -> int:
    from vit_jax.console import quiet_logging
    from vit_jax.data.sources import open_split

    parser = frozen_features.argument_parser("python -m vit_jax.evaluate", __doc__, {
        "test": "the split scored (default: test, or the run's test split)"}, saved="logits (the dataset's columns)")
    args = parser.parse_args(argv)
    quiet_logging()
    try:
        frozen_features.start(args)
        data = frozen_features.open_data(args, {"test": "test"})
        trained = frozen_features.load_model(args, data)
        columns = head_columns(trained, data)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    split = data.splits["test"]
    scores, examples, labels = evaluate(trained, open_split(data.builder, split), columns, args.batch_size,
                                        args.dtype, keep_logits=args.features is not None)
    view = trained.preprocess
    h, w = view.image_size
    by_name = not np.array_equal(columns, np.arange(scores.head_classes))
    classes = (f"{scores.classes} of the head's {scores.head_classes} classes (matched by name)" if by_name else
               f"the head's {scores.head_classes} classes")
    lines = [f"{trained.source} on {data.dataset} ({split}: {scores.count:,} {data.examples}) at {h}x{w} "
             f"(crop {view.crop_pct:g}, {view.resize_method}), {classes}",
             f"top-1 {scores.top1:.2%}  top-{TOP} {scores.top5:.2%}  cross-entropy {scores.loss:.4f}"]
    features = {"test": (examples["logits"], labels)} if args.features is not None else {}
    frozen_features.report(args, data, features, lines, {
        "image_size": [h, w], "crop_pct": view.crop_pct, "resize_method": view.resize_method, "top1": scores.top1,
        "top5": scores.top5, "loss": scores.loss, "classes": scores.classes, "head_classes": scores.head_classes,
        **({"columns": columns.tolist()} if by_name else {})})
    return 0


if __name__ == "__main__":
    sys.exit(main())
