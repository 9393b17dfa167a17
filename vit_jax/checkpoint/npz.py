"""`.npz` weights: the format of google-research/vision_transformer's and big_vision's released checkpoints.

Reading accepts both families and returns vit_jax's tree (Linen names, vision_transformer layout):
- vision_transformer: '/'-joined Linen paths, or the pre-Linen names of the released files
  (`encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}`), renamed the way
  vision_transformer's own loader does (flax's `convert_pre_linen`: submodules renumbered per type); `Transformer/posembed_input/pos_embedding` includes the class-token row.
- big_vision: optional `params/` prefix, `pos_embedding` at the root without a class-token row (big_vision adds
  it before prepending the class token, which is the same as a zero row), and scanned models' stacked
  `Transformer/encoderblock` (unstacked here).

Writing produces the layout of the released vision_transformer files, because that is what other tools read:
vision_transformer's loader and timm's `_load_weights`. Nothing is ever unpickled (`allow_pickle=False`).
"""

from __future__ import annotations

import argparse
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from vit_jax.models.encoder import ENCODER, SCANNED_BLOCKS, unstack_encoder_blocks

POSEMB_PATH = (ENCODER, "posembed_input", "pos_embedding")
# Linen name -> pre-Linen name inside an encoder block: pre-Linen numbered submodules in call order.
_TO_PRE_LINEN = {
    "LayerNorm_0": "LayerNorm_0",
    "MultiHeadDotProductAttention_0": "MultiHeadDotProductAttention_1",
    "LayerNorm_1": "LayerNorm_2",
    "MlpBlock_0": "MlpBlock_3",
}
_LAYER_BLOCK = re.compile(rf"^{SCANNED_BLOCKS}_\d+$")
_NUMBERED = re.compile(r"^(.*)_(\d+)$")


def linen_names(tree: Any) -> Any:
    """Pre-Linen numbered a module's submodules in call order (`LayerNorm_0, MultiHeadDotProductAttention_1,
    LayerNorm_2, MlpBlock_3`); Linen numbers them per type (`LayerNorm_0, MultiHeadDotProductAttention_0,
    LayerNorm_1, MlpBlock_0`). Renumbers per type in the order of the old numbers, as flax's
    `convert_pre_linen` (vision_transformer's loader) does; Linen names come out unchanged."""
    if not isinstance(tree, Mapping):
        return tree
    natural = lambda name: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", name)]
    counts: dict[str, int] = {}
    renamed = {}
    for name in sorted(tree, key=natural):
        match = _NUMBERED.match(name)
        new_name = name
        if match:
            module = match.group(1)
            new_name = f"{module}_{counts.get(module, 0)}"
            counts[module] = counts.get(module, 0) + 1
        renamed[new_name] = linen_names(tree[name])
    return renamed


class NpzError(ValueError):
    """A file that is not an `.npz` archive of plain arrays."""


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The flat `{'/'-joined path: array}` contents, read without unpickling: object arrays are refused."""
    unreadable = NpzError(f"{path}: not a readable .npz file; expected a zip archive of .npy arrays (what "
                          f"numpy.savez writes, as the released vision_transformer and big_vision checkpoints are)")
    try:
        archive = np.load(path, allow_pickle=False)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile):  # numpy calls any unknown bytes "pickled data"
        raise unreadable from None
    if not isinstance(archive, np.lib.npyio.NpzFile):
        raise NpzError(f"{path}: a single .npy array, not an .npz archive of named arrays")
    arrays = {}
    with archive:
        for key in archive.files:
            try:
                arrays[key] = np.asarray(archive[key])
            except ValueError as error:
                if "allow_pickle" not in str(error) and "pickled" not in str(error):
                    raise unreadable from None
                raise NpzError(f"{path}: array {key!r} is an object array; object arrays are refused (loading one "
                               f"means unpickling, which can run code; vit_jax never unpickles)") from None
            except (OSError, EOFError, zipfile.BadZipFile):
                raise unreadable from None
    return arrays


def load_npz(path: str | Path) -> dict[str, Any]:
    """The parameter tree of a vision_transformer or big_vision `.npz` file, in vit_jax's names and layout."""
    flat = read_npz(path)
    if any(key.startswith("params/") for key in flat):
        flat = {key.removeprefix("params/"): value for key, value in flat.items() if key.startswith("params/")}
    tree = traverse_util.unflatten_dict({tuple(key.split("/")): value for key, value in flat.items()})
    tree = linen_names(tree)
    if "pos_embedding" in tree:  # big_vision: the table at the root, without the class token's row
        table = tree.pop("pos_embedding")
        if "cls" in tree:
            table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
        tree.setdefault(ENCODER, {})["posembed_input"] = {"pos_embedding": table}
    if SCANNED_BLOCKS in tree.get(ENCODER, {}):
        tree = unstack_encoder_blocks(tree)
    return _to_numpy(tree)


def save_npz(params: Mapping[str, Any], path: str | Path) -> None:
    """Writes `params` as the released vision_transformer files are laid out: per-layer blocks with pre-Linen
    names and '/'-joined keys (the class-token row stays in `pos_embedding`)."""
    params = dict(params)
    if SCANNED_BLOCKS in params.get(ENCODER, {}):
        params = unstack_encoder_blocks(params)
    flat = traverse_util.flatten_dict(_to_numpy(params))
    renamed = {"/".join(_pre_linen_path(key)): np.asarray(value) for key, value in flat.items()}
    with open(path, "wb") as f:
        np.savez(f, **renamed)


def _pre_linen_path(path: tuple[str, ...]) -> tuple[str, ...]:
    if len(path) > 2 and path[0] == ENCODER and _LAYER_BLOCK.match(path[1]) and path[2] in _TO_PRE_LINEN:
        return (*path[:2], _TO_PRE_LINEN[path[2]], *path[3:])
    return path


def _to_numpy(tree: Any) -> Any:
    if isinstance(tree, Mapping):
        return {key: _to_numpy(value) for key, value in tree.items()}
    return np.asarray(tree)


def main(argv: Sequence[str] | None = None) -> int:
    """`python -m vit_jax.checkpoint.npz --workdir DIR --out FILE.npz [--step N]`: export a run's parameters."""
    from vit_jax.checkpoint.manager import CHECKPOINT_DIR, TrainCheckpoints

    parser = argparse.ArgumentParser(prog="python -m vit_jax.checkpoint.npz", description=main.__doc__.split(":")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--step", type=int, default=None, help="default: the latest")
    args = parser.parse_args(argv)
    checkpoints = TrainCheckpoints(Path(args.workdir) / CHECKPOINT_DIR)
    step = checkpoints.latest_step() if args.step is None else args.step
    if step is None or step not in checkpoints.all_steps():
        parser.exit(2, f"error: no checkpoint {'' if step is None else step} in {checkpoints.directory}; "
                       f"steps: {checkpoints.all_steps()}\n")
    save_npz(checkpoints.restore(step)["params"], args.out)
    print(f"wrote {args.out} (step {step} of {args.workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
