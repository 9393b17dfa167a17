"""A dataset's labels on a classifier head trained on other labels: which of the head's columns are scored, and
where each of the dataset's classes is among them.

By name where every class name of the dataset is one of the head's (a 1,000-class head's ImageNet WordNet IDs
too: a folder of ImageNet-R's 200 classes), else index for index when the counts match. A subset of the head's
classes can be scored alone (`scored`): TFDS's `imagenet_r` and `imagenet_a` keep ImageNet's 1,000 labels, and
their authors score a 1,000-class model on their 200 classes' columns, which is their default here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from vit_jax.data.imagenet_classes import IMAGENET_1K_CLASSES, imagenet_subsets, imagenet_wordnet_ids

REAL_LABELS = "real_label"  # TFDS's imagenet2012_real: ReaL's set of plausible labels of each image (maybe none)
MOST_REAL_LABELS = 32  # an image's ReaL labels padded to this many (a handful at most in ReaL's annotations)


@dataclasses.dataclass(frozen=True)
class ClassMap:
    """Which of the head's columns are scored, and where each of the dataset's labels is among them."""
    columns: np.ndarray  # (classes,) the head's column of each class scored
    positions: np.ndarray  # (dataset classes,) a label's index into `columns`; -1: a class not scored
    width: int  # the head's columns
    description: str  # for reports: "the head's 1000 classes", "200 of the head's 1000 classes (imagenet_r)"

    @property
    def whole_head(self) -> bool:
        return np.array_equal(self.columns, np.arange(self.width))

    def label_positions(self, labels: Any) -> np.ndarray:
        """Dataset labels (-1: none) as indices into `columns` (-1: not scored)."""
        labels = np.asarray(labels, np.int64)
        return np.where(labels >= 0, self.positions[np.maximum(labels, 0)], -1).astype(np.int32)


def name_keys(class_names: Sequence[str], width: int) -> dict[str, int]:
    """Names -> a head's columns: its class names (not "0", "1", ...: those name nothing), and a 1,000-class head's
    ImageNet WordNet IDs."""
    keys: dict[str, int] = {}
    for index, name in enumerate(class_names):
        if not name.isdigit():
            keys.setdefault(name, index)
    if width == IMAGENET_1K_CLASSES:
        for index, wnid in enumerate(imagenet_wordnet_ids()):
            keys.setdefault(wnid, index)
    return keys


def class_map(head_names: Sequence[str], width: int, head: str, data_names: Sequence[str], dataset: str,
              scored: Sequence[str] | None = None, scored_as: str = "") -> ClassMap:
    """`dataset`'s classes (`data_names`) on the columns of `head`'s `width`-class head (`head_names`); `scored`
    restricts the columns to those classes (names, or the head's column indices; `scored_as` names them). A
    ValueError naming the classes the head has no column for."""
    keys = name_keys(head_names, width)
    if all(name in keys for name in data_names):
        label_columns = np.asarray([keys[name] for name in data_names], np.int32)
    elif len(data_names) == width:
        label_columns = np.arange(width, dtype=np.int32)
    else:
        unknown = [name for name in data_names if name not in keys]
        raise ValueError(f"{head}'s head has {width} classes and dataset {dataset!r} has {len(data_names)}, "
                         f"{len(unknown)} of them not among the head's by name (e.g. {unknown[0]!r})")
    if scored is None:
        whole = np.array_equal(label_columns, np.arange(width))
        return ClassMap(label_columns, np.arange(len(label_columns), dtype=np.int32), width,
                        f"the head's {width} classes" if whole else
                        f"{len(label_columns)} of the head's {width} classes (matched by name)")
    unknown = [name for name in scored if name not in keys and not (name.isdigit() and int(name) < width)]
    if unknown or not scored:
        raise ValueError(f"classes: {len(unknown)} of {len(scored)} are neither a class name nor a column of "
                         f"{head}'s {width}-class head (e.g. {(unknown or [''])[0]!r})")
    columns = np.asarray([keys[name] if name in keys else int(name) for name in scored], np.int32)
    where = {int(column): index for index, column in enumerate(columns)}
    positions = np.asarray([where.get(int(column), -1) for column in label_columns], np.int32)
    return ClassMap(columns, positions, width, f"{len(columns)} of the head's {width} classes ({scored_as or 'classes'})")


def scored_classes(given: str | Sequence[str] | None, dataset: str) -> tuple[tuple[str, ...] | None, str]:
    """The classes to score and what to call them: `given` as a named subset of ImageNet's classes (`imagenet_r`,
    `imagenet_a`), a file of names / column indices (one per line) or a list of them; by default the subset TFDS's
    `imagenet_r` or `imagenet_a` (`dataset`: the builder's name) is scored on, else None (every class)."""
    subsets = imagenet_subsets()
    if given is None:
        return subsets.get(dataset), dataset
    if not isinstance(given, str):
        return tuple(str(name) for name in given), "classes"
    if given in subsets:
        return subsets[given], given
    path = Path(given).expanduser()
    if not path.is_file():
        raise ValueError(f"classes {given}: expected {' or '.join(sorted(subsets))}, or a file of class names or "
                         f"head columns, one per line")
    return tuple(line.strip() for line in path.read_text().splitlines() if line.strip()), path.name


def real_labels(example: dict[str, Any]) -> np.ndarray:
    """An example's ReaL labels, padded with -1 to `MOST_REAL_LABELS`."""
    labels = np.asarray(example[REAL_LABELS], np.int32).reshape(-1)
    if len(labels) > MOST_REAL_LABELS:
        raise ValueError(f"an image with {len(labels)} ReaL labels; at most {MOST_REAL_LABELS} are read")
    return np.pad(labels, (0, MOST_REAL_LABELS - len(labels)), constant_values=-1)
