"""Model soups (Wortsman et al., 2022): the weights of several fine-tuned checkpoints of one architecture averaged
into one model, which often beats the best of them at no cost at inference.

    python -m vit_jax.soup --checkpoints workdirs/ft_a workdirs/ft_b workdirs/ft_c --out soups/uniform
    python -m vit_jax.soup --checkpoints workdirs/ft_a workdirs/ft_b workdirs/ft_c --greedy --out soups/greedy

Ingredients are anything `load_trained_model` reads (a workdir's latest step, or `WORKDIR@STEP`), of one
architecture and evaluation view (every parameter's path and shape, the model's options and the preprocessing are
checked before anything is averaged). The uniform soup averages them all. The greedy soup (the paper's recipe)
ranks them by held-out accuracy and, best first, keeps each one whose addition does not lower the soup's held-out
accuracy; the held-out split is `--dataset` / `--split`, by default the first workdir's eval split (its model
selection split, never its test split). The soup is written in timm's layout (`model.safetensors` and
`config.json` with the ingredients' evaluation view), which every vit_jax command, fine-tuning and timm read.
"""

from __future__ import annotations

import argparse
import dataclasses
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from vit_jax.checkpoint.trained_model import TrainedModel, checkpoint_kind, load_trained_model
from vit_jax.models.vit import MODEL_OPTIONS


@dataclasses.dataclass(frozen=True)
class Ingredient:
    spec: str  # as given
    trained: TrainedModel
    accuracy: float | None = None  # held-out top-1, for a greedy soup


def parse_ingredient(spec: str) -> tuple[str, int | None]:
    """`WORKDIR@STEP` -> (WORKDIR, STEP); anything else as it is."""
    path, at, step = spec.rpartition("@")
    if at and step.isdigit() and checkpoint_kind(path) == "workdir":
        return path, int(step)
    return spec, None


def load_ingredients(specs: Sequence[str]) -> list[Ingredient]:
    """Each checkpoint, checked against the first: the same parameters (paths and shapes), model and evaluation
    view; a ValueError naming the first difference."""
    if len(specs) < 2:
        raise ValueError(f"--checkpoints: {len(specs)} given; a soup averages two or more")
    ingredients = []
    for spec in specs:
        path, step = parse_ingredient(spec)
        ingredients.append(Ingredient(spec, load_trained_model(path, step=step)))
    first = ingredients[0]
    shapes = _shapes(first.trained.params)
    for other in ingredients[1:]:
        theirs = _shapes(other.trained.params)
        differ = sorted(set(shapes) ^ set(theirs)) or [p for p in shapes if shapes[p] != theirs[p]]
        if differ:
            path = differ[0]
            raise ValueError(f"{other.spec} and {first.spec} differ at {path} ({theirs.get(path, 'absent')} vs "
                             f"{shapes.get(path, 'absent')}): a soup averages checkpoints of one architecture")
        for what, mine, yours in (("model", _options(first.trained.model), _options(other.trained.model)),
                                  ("evaluation view", first.trained.preprocess, other.trained.preprocess)):
            if mine != yours:
                raise ValueError(f"{other.spec} and {first.spec} differ in their {what}: a soup is one model with "
                                 f"one evaluation view")
    return ingredients


def average(ingredients: Sequence[Ingredient]) -> TrainedModel:
    """The first ingredient's model with every parameter the mean of theirs (in float64, stored as float32)."""
    params = jax.tree.map(lambda *leaves: np.mean(np.stack([np.asarray(x, np.float64) for x in leaves]), axis=0)
                          .astype(np.float32), *[i.trained.params for i in ingredients])
    return dataclasses.replace(ingredients[0].trained, params=params, source="soup")


def greedy_soup(ingredients: Sequence[Ingredient], accuracy: Any) -> tuple[list[Ingredient], list[str]]:
    """The paper's greedy soup: ingredients ranked by `accuracy(trained)` (held-out top-1), then, best first,
    each kept if the soup with it is at least as accurate. Returns the ingredients kept and what was decided."""
    ranked = sorted((dataclasses.replace(i, accuracy=accuracy(i.trained)) for i in ingredients),
                    key=lambda i: -i.accuracy)
    soup, best = [ranked[0]], ranked[0].accuracy
    lines = [f"{i.spec}: held-out top-1 {i.accuracy:.2%}" for i in ranked]
    for candidate in ranked[1:]:
        tried = accuracy(average([*soup, candidate]))
        kept = tried >= best
        lines.append(f"{'kept' if kept else 'left out'} {candidate.spec}: the soup with it {tried:.2%} "
                     f"({'>=' if kept else '<'} {best:.2%})")
        if kept:
            soup, best = [*soup, candidate], tried
    return soup, lines


def _shapes(params: Any) -> dict[str, tuple[int, ...]]:
    return {"/".join(path): tuple(np.shape(leaf)) for path, leaf in traverse_util.flatten_dict(params).items()}


def _options(model: Any) -> dict[str, Any]:
    return {name: getattr(model, name) for name in MODEL_OPTIONS}


def main(argv: Sequence[str] | None = None) -> int:
    from vit_jax import frozen_features
    from vit_jax.checkpoint.timm_export import export_trained_timm
    from vit_jax.console import quiet_logging
    from vit_jax.data.sources import open_split
    from vit_jax.entry import check_output
    from vit_jax.evaluate import head_class_map, scores_of, scoring_extractor

    parser = argparse.ArgumentParser(prog="python -m vit_jax.soup", description=__doc__.split("\n")[0])
    parser.add_argument("--checkpoints", nargs="+", required=True, metavar="CHECKPOINT",
                        help="the ingredients: workdirs (WORKDIR@STEP for a step), .npz files, Hub checkpoints")
    parser.add_argument("--out", required=True, help="the directory for the soup (timm's layout)")
    parser.add_argument("--greedy", action="store_true", help="the greedy soup, chosen on a held-out split")
    parser.add_argument("--dataset", default=None, help="greedy: the held-out data (default: the first workdir's)")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--split", default=None, help="greedy: the held-out split (default: a workdir's eval "
                                                      "split, else validation)")
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--data-threads", type=int, default=frozen_features.DATA_THREADS)
    args = parser.parse_args(argv)
    quiet_logging()
    try:
        check_output(args.out, "--out", directory=True)
        held_out = None
        if args.greedy:
            first, _ = parse_ingredient(args.checkpoints[0])
            held_out = frozen_features.open_data(argparse.Namespace(
                checkpoint=first, dataset=args.dataset, data_dir=args.data_dir, eval_split=args.split,
                batch_size=args.batch_size, data_threads=args.data_threads, crop_pct=None, out=None, features=None),
                {"eval": "validation"})
        elif args.dataset or args.split:
            raise ValueError("--dataset / --split: used by --greedy only (the uniform soup averages every "
                             "ingredient)")
        ingredients = load_ingredients(args.checkpoints)
        classes = None if held_out is None else head_class_map(ingredients[0].trained, held_out, None)
    except (OSError, ValueError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    lines = []
    if held_out is not None:
        source = open_split(held_out.builder, held_out.splits["eval"])
        extract = scoring_extractor(ingredients[0].trained, classes, data_threads=args.data_threads)

        def accuracy(trained: TrainedModel) -> float:
            extract.set_params(trained.params)
            return scores_of(*extract(source, args.batch_size), classes, trained.model.num_classes).top1

        ingredients, lines = greedy_soup(ingredients, accuracy)
        lines.insert(0, f"greedy soup, held out: {held_out.dataset} {held_out.splits['eval']} "
                        f"({held_out.sizes['eval']:,} {held_out.examples})")
    out = export_trained_timm(average(ingredients), Path(args.out).expanduser())
    lines.append(f"wrote {out} ({'uniform' if not args.greedy else 'greedy'} soup of {len(ingredients)}: "
                 f"{', '.join(i.spec for i in ingredients)})")
    if jax.process_index() == 0:
        print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())
