"""`--image-size` as every command reading a checkpoint takes it: `N`, `HxW` or `H W`.

An option taking one or two values swallows the positional arguments after it (`predict --image-size 384
cat.jpg`), so commands with positional arguments take back what follows the size (`split_image_size`).
"""

from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence

IMAGE_SIZE_FORMS = "N, HxW or H W"  # how every command reading a checkpoint takes `--image-size`


def add_image_size_option(parser: argparse.ArgumentParser, help_text: str) -> None:
    """`--image-size` as every command reading a checkpoint takes it (`image_size_argument` reads it)."""
    parser.add_argument("--image-size", nargs="+", default=None, metavar="SIZE",
                        help=f"{help_text} ({IMAGE_SIZE_FORMS})")


def split_image_size(values: Sequence[str | int] | None) -> tuple[tuple[int, int] | None, list[str]]:
    """The size at the front of `--image-size`'s values (`N`, `HxW` or `H W`) as `(H, W)`, and the values after it:
    the command's positional arguments (image files), which an option taking one or two values swallows."""
    if values is None:
        return None, []
    tokens = [str(value) for value in values]
    if "x" in tokens[0].lower():
        count, sides = 1, tokens[0].lower().split("x")
    else:
        count = len(list(itertools.takewhile(str.isdigit, tokens[:2])))
        sides = tokens[:count] * (2 if count == 1 else 1)
    if count == 0 or len(sides) != 2 or not all(side.isdigit() and int(side) > 0 for side in sides):
        raise ValueError(f"--image-size {' '.join(tokens[:max(count, 1)])}: expected {IMAGE_SIZE_FORMS} (positive "
                         f"integers)")
    return (int(sides[0]), int(sides[1])), tokens[count:]


def image_size_argument(values: Sequence[str | int] | None) -> tuple[int, int] | None:
    """A command line's `--image-size` (`N`, `HxW` or `H W`) as `(H, W)`, or a ValueError naming the bad value."""
    size, rest = split_image_size(values)
    if rest:
        raise ValueError(f"--image-size {' '.join(map(str, values or ()))}: expected {IMAGE_SIZE_FORMS} "
                         f"(positive integers)")
    return size
