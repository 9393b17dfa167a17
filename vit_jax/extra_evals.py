"""Other datasets scored at every evaluation of a run, beside its eval split (big_vision's extra evaluators):

    config.extra_evals.v2 = dict(dataset="imagenet_v2", split="test")
    config.extra_evals.real = dict(dataset="imagenet2012_real", split="validation")  # + ReaL accuracy
    config.extra_evals.r = dict(dataset="imagenet_r", split="test")  # on its 200 classes' columns
    config.extra_evals.pets = dict(dataset="oxford_iiit_pet", split="test", fewshot_split="train")

Each logs `NAME/accuracy`, `NAME/top5_accuracy`, `NAME/loss` (and `NAME/real_accuracy` where the dataset has
ReaL labels) at every evaluation. A dataset's labels meet the head's classes (the training dataset's) as
`vit_jax.data.class_map` matches them: by name, else index for index; `classes` restricts the columns scored
(default: ImageNet-R's and ImageNet-A's 200 on those datasets). With `fewshot_split`, the entry is instead
big_vision's few-shot evaluation of the representation (`vit_jax.fewshot`) on any label set: `shots` images per
class drawn from `fewshot_split` (`shots`, `seeds`, `l2_reg`: big_vision's by default), `split` scored, logged as
`NAME/10shot_accuracy`, ... Images go through the run's evaluation view at the model's own size and patch size;
`data_dir` defaults to the run's.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from typing import Any

import numpy as np
from ml_collections import ConfigDict

from vit_jax.data.class_map import REAL_LABELS, ClassMap, class_map, real_labels, scored_classes
from vit_jax.data.preprocessing import Preprocess
from vit_jax.data.sources import DatasetError, DatasetSpec, dataset_builder, dataset_spec, open_split, split_size
from vit_jax.fewshot import BIG_VISION_L2_REG, BIG_VISION_SEEDS, BIG_VISION_SHOTS, check_options

FIELDS = ("dataset", "split", "data_dir", "classes", "fewshot_split", "shots", "seeds", "l2_reg")
FEWSHOT_FIELDS = ("fewshot_split", "shots", "seeds", "l2_reg")
_NAME = re.compile(r"^[a-z][a-z0-9_]*$")
RESERVED = ("train", "eval", "test", "eval_ema", "test_ema", "perf")  # the run's own metric prefixes


@dataclasses.dataclass(frozen=True)
class Fewshot:
    """A few-shot evaluation's draws (`vit_jax.fewshot`): the split the shots come from, and how many."""
    source: Sequence[dict[str, Any]]
    num_classes: int
    shots: tuple[int, ...] = BIG_VISION_SHOTS
    seeds: int = BIG_VISION_SEEDS
    l2_reg: float = BIG_VISION_L2_REG


@dataclasses.dataclass(frozen=True)
class ExtraEval:
    """One extra evaluation: its examples, where their labels are among the head's columns, and whether each
    image's ReaL labels are scored too; or, with `fewshot`, a few-shot evaluation of the representation."""
    name: str
    dataset: str
    split: str
    source: Sequence[dict[str, Any]]
    classes: ClassMap | None  # None for a few-shot evaluation: its own labels
    real: bool
    channels: int  # the model's input channels (grayscale images are fed in every channel of an RGB model)
    fewshot: Fewshot | None = None

    def view(self, preprocess: Preprocess) -> ScoredView | Preprocess:
        """The run's evaluation view (`preprocess`) of this dataset's examples."""
        preprocess = dataclasses.replace(preprocess, channels=self.channels)
        return preprocess if self.classes is None else ScoredView(preprocess, self.classes, self.real)


@dataclasses.dataclass(frozen=True)
class ScoredView:
    """The run's evaluation view of an extra dataset's example, its label as an index into the scored columns
    (-1: a class not scored, weighted 0) and its ReaL labels likewise (`real`, -1 padded)."""
    preprocess: Preprocess
    classes: ClassMap
    real: bool

    def eval(self, example: dict[str, Any]) -> dict[str, np.ndarray]:
        out = self.preprocess.eval(example)
        out["label"] = self.classes.label_positions(out["label"])
        if self.real:
            out["real"] = self.classes.label_positions(real_labels(example))
        return out


def open_extra_evals(config: ConfigDict, spec: DatasetSpec, channels: int) -> dict[str, ExtraEval]:
    """`config.extra_evals`, each dataset opened and checked against the run's: its split, images (or videos)
    that the model's `channels` can take, classes its head can score. A ValueError `"FIELD: problem"` (FIELD under
    `extra_evals`) on the first problem; nothing is read but the datasets' metadata."""
    evals = {}
    for name, entry in (config.get("extra_evals") or {}).items():
        if not isinstance(name, str) or not _NAME.match(name) or name in RESERVED:
            raise ValueError(f"{name}: expected a name of lowercase letters, digits and _ (the metrics' prefix), "
                             f"not one of the run's own ({', '.join(RESERVED)})")
        entry = dict(entry) if isinstance(entry, dict | ConfigDict) else {}
        unknown = sorted(set(entry) - set(FIELDS))
        if unknown or not all(isinstance(entry.get(key), str) and entry[key] for key in ("dataset", "split")):
            raise ValueError(f"{name}: expected dict(dataset=..., split=...[, data_dir=..., classes=...]) or, for a "
                             f"few-shot evaluation, dict(dataset=..., split=..., fewshot_split=...[, shots=..., "
                             f"seeds=..., l2_reg=..., data_dir=...]); got {entry or 'no fields'}")
        evals[name] = _open(name, entry, config, spec, channels)
    if evals and config.packing.enabled:
        raise ValueError(f"{next(iter(evals))}: extra evaluations are not run on packed (NaViT) runs")
    return evals


def _open(name: str, entry: dict[str, Any], config: ConfigDict, spec: DatasetSpec, channels: int) -> ExtraEval:
    dataset, split = entry["dataset"], entry["split"]
    try:
        builder = dataset_builder(dataset, entry.get("data_dir") or config.get("data_dir"))
        theirs = dataset_spec(builder)
    except (DatasetError, OSError) as error:
        raise ValueError(f"{name}.dataset: {error}") from None
    try:
        split_size(builder, split)
    except DatasetError as error:
        raise ValueError(f"{name}.split: {error}") from None
    if len(theirs.image_shape) != len(spec.image_shape):
        kind = lambda shape: "videos" if len(shape) == 4 else "images"  # noqa: E731
        raise ValueError(f"{name}.dataset: {dataset!r} holds {kind(theirs.image_shape)} and the run trains on "
                         f"{kind(spec.image_shape)}")
    try:
        Preprocess(image_size=(1, 1), channels=channels).check_channels(theirs.image_shape[-1])
    except ValueError as error:
        raise ValueError(f"{name}.dataset: {error}") from None
    if any(key in entry for key in FEWSHOT_FIELDS):
        return _fewshot(name, entry, builder, theirs, channels)
    try:
        scored, scored_as = scored_classes(entry.get("classes"), builder.name)
        classes = class_map(spec.class_names, spec.num_classes, f"the model ({config.dataset})", theirs.class_names,
                            dataset, scored, scored_as)
    except ValueError as error:
        raise ValueError(f"{name}.{'classes' if str(error).startswith('classes') else 'dataset'}: {error}") from None
    return ExtraEval(name, dataset, split, open_split(builder, split), classes, REAL_LABELS in builder.info.features,
                     channels)


def _fewshot(name: str, entry: dict[str, Any], builder: Any, spec: DatasetSpec, channels: int) -> ExtraEval:
    if "classes" in entry:
        raise ValueError(f"{name}.classes: not used by a few-shot evaluation, which fits every class of its dataset")
    split, draws = entry["split"], entry.get("fewshot_split")
    if not isinstance(draws, str) or not draws:
        raise ValueError(f"{name}.fewshot_split: expected the split the shots are drawn from (e.g. 'train')")
    try:
        split_size(builder, draws)
    except DatasetError as error:
        raise ValueError(f"{name}.fewshot_split: {error}") from None
    options = {key: entry[key] for key in ("shots", "seeds", "l2_reg") if entry.get(key) is not None}
    options["shots"] = tuple(options.get("shots", BIG_VISION_SHOTS))
    try:
        check_options(options["shots"], options.get("seeds", BIG_VISION_SEEDS),
                      options.get("l2_reg", BIG_VISION_L2_REG), flag="")
    except ValueError as error:
        raise ValueError(f"{name}.{str(error).split(' ', 1)[0]}: {error}") from None
    return ExtraEval(name, entry["dataset"], split, open_split(builder, split), None, False, channels,
                     Fewshot(open_split(builder, draws), spec.num_classes, **options))
