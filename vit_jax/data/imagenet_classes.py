"""ImageNet-1k class names, so a checkpoint with a 1,000-class head (timm's, the Hub's) names its predictions.

`imagenet1k_classes.tsv` is timm's table (`timm/data/_info`): the WordNet synset of each class in the standard
index order, and its lemmas, which are what timm prints (`ImageNetInfo.index_to_description`).
`imagenet_subsets.tsv`: the 200 classes of ImageNet-A and of ImageNet-R (timm's `imagenet_{a,r}_synsets.txt`, the
lists their authors' evaluation code masks a 1,000-class head's logits to).
"""

from __future__ import annotations

import functools
from importlib import resources

IMAGENET_1K_CLASSES = 1000


@functools.cache
def _table() -> tuple[tuple[str, str], ...]:
    text = resources.files(__package__).joinpath("imagenet1k_classes.tsv").read_text("utf-8")
    return tuple(tuple(line.split("\t", 1)) for line in text.splitlines())  # type: ignore[misc]


def imagenet_wordnet_ids() -> tuple[str, ...]:
    """The 1,000 classes' WordNet IDs (`n01440764`, ...) in index order: the label names of TFDS's ImageNet
    datasets and the folder names of ImageNet's own layout, so subsets (ImageNet-R's and ImageNet-A's 200 classes)
    find their columns of a 1,000-class head."""
    return tuple(wnid for wnid, _ in _table())


@functools.cache
def imagenet_subsets() -> dict[str, tuple[str, ...]]:
    """Subsets of ImageNet's classes that are scored on their own columns of a 1,000-class head: name -> WordNet
    IDs (ImageNet-A's and ImageNet-R's 200). TFDS's `imagenet_a` and `imagenet_r` keep the 1,000 labels."""
    subsets: dict[str, list[str]] = {}
    text = resources.files(__package__).joinpath("imagenet_subsets.tsv").read_text("utf-8")
    for line in text.splitlines():
        name, wnid = line.split("\t")
        subsets.setdefault(name, []).append(wnid)
    return {name: tuple(wnids) for name, wnids in subsets.items()}


def imagenet_class_names(num_classes: int | None) -> tuple[str, ...] | None:
    """The 1,000 class names (lemmas) for a 1,000-class head; None for any other head (no names to guess)."""
    if num_classes != IMAGENET_1K_CLASSES:
        return None
    return tuple(lemmas for _, lemmas in _table())

