"""`.npz` weights: the format of google-research/vision_transformer's and big_vision's released checkpoints.

Reading accepts both families and returns vit_jax's tree (Linen names, vision_transformer layout):
- vision_transformer: '/'-joined Linen paths, or the pre-Linen names of the released files
  (`encoderblock_N/{LayerNorm_0, MultiHeadDotProductAttention_1, LayerNorm_2, MlpBlock_3}`), renamed the way
  vision_transformer's own loader does (flax's `convert_pre_linen`: submodules renumbered per type); `Transformer/posembed_input/pos_embedding` includes the class-token row.
- big_vision: `pos_embedding` at the root without a class-token row (big_vision adds it before prepending the class
  token, which is the same as a zero row), and scanned models' stacked `Transformer/encoderblock` (unstacked here);
  the older layouts its loader still reads (the table in `Transformer`, or with the class row); a saved train state's
  `params/` (or flax's old `opt/target/`); and one model of a file holding several, named as big_vision names it,
  `FILE.npz:KEY`: `:img` is the image tower of a two-tower (SigLIP, LiT) checkpoint, chosen by itself when it is
  the only ViT in the file.

Writing produces the layout of the released vision_transformer files, because that is what other tools read:
vision_transformer's loader and timm's `_load_weights`. Nothing is ever unpickled (`allow_pickle=False`).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
import sys
import zipfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from flax import traverse_util

from vit_jax.models.encoder import ENCODER, SCANNED_BLOCKS, unstack_encoder_blocks
from vit_jax.whole_files import written_whole

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
    """A file that is not an `.npz` archive of plain arrays, or without the model asked for."""


def _unreadable(path: str | Path) -> NpzError:
    return NpzError(f"{path}: not a readable .npz file; expected a zip archive of .npy arrays (what numpy.savez "
                    f"writes, as the released vision_transformer and big_vision checkpoints are)")


def _object_array(path: str | Path, key: str) -> NpzError:
    return NpzError(f"{path}: array {key!r} is an object array; object arrays are refused (loading one means "
                    f"unpickling, which can run code; vit_jax never unpickles)")


def read_npz(path: str | Path) -> dict[str, np.ndarray]:
    """The flat `{'/'-joined path: array}` contents, read without unpickling: object arrays are refused."""
    unreadable = _unreadable(path)
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
                raise _object_array(path, key) from None
            except (OSError, EOFError, zipfile.BadZipFile):
                raise unreadable from None
    return arrays


_SUBMODEL = re.compile(r"^(.+):([\w/]+)$")  # big_vision's `load_params`: '/path/to/file.npz:img'
_WRAPPERS = ("params/", "opt/target/")  # a saved train state's parameters; flax's old optimizer's
_PATCH_KERNEL = "embedding/kernel"  # every ViT has it, at the root of its own tree


def split_submodel(spec: str | Path) -> tuple[Path, str | None]:
    """The file of `FILE.npz:KEY` and the sub-model KEY (None without one). A file whose own name holds the colon
    is that file."""
    path = Path(spec).expanduser()
    match = _SUBMODEL.match(str(spec))
    if path.is_file() or not match or not Path(match.group(1)).expanduser().is_file():
        return path, None
    return Path(match.group(1)).expanduser(), match.group(2).strip("/")


def model_arrays(flat: Mapping[str, Any], submodel: str | None, where: str) -> dict[str, Any]:
    """The arrays of the one ViT in a file's flat `{path: array}` contents, their paths relative to it: inside a
    train state's wrapper, and in `submodel` or, without one, in the only sub-tree that is a ViT (a two-tower
    checkpoint's `img`)."""
    for wrapper in _WRAPPERS:
        if any(key.startswith(wrapper) for key in flat):
            flat = {key.removeprefix(wrapper): value for key, value in flat.items() if key.startswith(wrapper)}
            break
    if submodel is None and _PATCH_KERNEL not in flat:
        towers = sorted(key.removesuffix("/" + _PATCH_KERNEL) for key in flat if key.endswith("/" + _PATCH_KERNEL))
        if len(towers) > 1:
            raise NpzError(f"{where}: holds several models ({', '.join(towers)}); name the one to read as "
                           f"{where}:KEY, e.g. {where}:{towers[0]}")
        if towers:
            submodel = towers[0]
            logging.info("%s: reading its sub-model %r (the only ViT in the file)", where, submodel)
    if submodel is not None:
        inside = {key.removeprefix(f"{submodel}/"): value for key, value in flat.items()
                  if key.startswith(f"{submodel}/")}
        if _PATCH_KERNEL not in inside:
            found = sorted(key.removesuffix(_PATCH_KERNEL).rstrip("/") or "the root" for key in flat
                           if key.endswith(_PATCH_KERNEL))
            raise NpzError(f"{where}: no ViT at {submodel!r} (no {submodel}/{_PATCH_KERNEL}); ViTs in the file: "
                           f"{found or 'none'}")
        flat = inside
    return dict(flat)


def read_npz_shapes(path: str | Path) -> dict[str, np.ndarray]:
    """`read_npz`'s contents as zero-byte stand-ins of the arrays' shapes and dtypes (read from the `.npy` headers
    alone): a file's architecture, or whether it has the model asked for, at no cost however large it is."""
    unreadable = _unreadable(path)
    headers = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
    arrays = {}
    try:
        with zipfile.ZipFile(path) as archive:
            for name in archive.namelist():
                with archive.open(name) as member:
                    version = np.lib.format.read_magic(member)
                    if version not in headers:
                        return {key: np.asarray(value) for key, value in read_npz(path).items()}
                    shape, _, dtype = headers[version](member)
                if dtype.hasobject:
                    raise _object_array(path, name.removesuffix(".npy"))
                arrays[name.removesuffix(".npy")] = np.broadcast_to(np.zeros((), dtype), shape)
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as error:
        if isinstance(error, NpzError):
            raise
        raise unreadable from None
    return arrays


def load_npz(spec: str | Path, shapes_only: bool = False) -> dict[str, Any]:
    """The parameter tree of a vision_transformer or big_vision `.npz` file (or `FILE.npz:KEY`: one of the models
    in it), in vit_jax's names and layout; `shapes_only`: of zero-byte stand-ins (`read_npz_shapes`)."""
    path, submodel = split_submodel(spec)
    flat = model_arrays((read_npz_shapes if shapes_only else read_npz)(path), submodel, str(path))
    tree = traverse_util.unflatten_dict({tuple(key.split("/")): value for key, value in flat.items()})
    tree = _with_class_row(_naflex_as_vit(linen_names(tree), str(path)))
    if SCANNED_BLOCKS in tree.get(ENCODER, {}):
        tree = unstack_encoder_blocks(tree)
    return _to_numpy(tree)


def _naflex_as_vit(tree: dict[str, Any], where: str) -> dict[str, Any]:
    """big_vision's NaFlex ViT (SigLIP 2's NaFlex towers): its `embedding` is a Dense over flattened `(p, p, 3)`
    patches, the same products as the patch convolution's `(p, p, 3, D)` kernel, and its `pos_embedding` a
    `(n, n, D)` grid, resized to each image's grid bilinearly with antialiasing (`jax.image.scale_and_translate`):
    vit_jax's default forward-pass resize of a table stored at `posemb_grid`."""
    kernel = tree.get("embedding", {}).get("kernel")
    if kernel is None or np.ndim(kernel) != 2:
        return tree
    for norm in ("patchln_pre", "patchln_post"):
        if norm in tree:
            raise NpzError(f"{where}: a NaFlex ViT with {norm} (a LayerNorm on the patches); vit_jax does not run it")
    inputs, width = np.shape(kernel)
    side = math.isqrt(inputs // 3)
    if inputs % 3 or side * side * 3 != inputs:
        raise NpzError(f"{where}: a Dense patch embedding of {inputs} inputs; a NaFlex ViT's are p x p x 3 pixels")
    tree["embedding"] = {**tree["embedding"], "kernel": np.reshape(kernel, (side, side, 3, width))}
    table = tree.get("pos_embedding")
    if table is not None and np.ndim(table) == 3:  # (n, n, D): the patches' rows, row-major
        tree["pos_embedding"] = np.reshape(table, (1, -1, np.shape(table)[-1]))
    return tree


def is_naflex(spec: str | Path) -> bool:
    """Whether `spec`'s model is big_vision's NaFlex ViT (a Dense patch embedding), from the arrays' headers."""
    path, submodel = split_submodel(spec)
    return np.ndim(model_arrays(read_npz_shapes(path), submodel, str(path))[_PATCH_KERNEL]) == 2


def _with_class_row(tree: dict[str, Any]) -> dict[str, Any]:
    """big_vision's table (at the root; in `Transformer` before 2022) moved to vision_transformer's place, with a
    zero row for the class token: big_vision adds the table before prepending the class token. Its oldest tables
    have the class row already (prepended first, then added; vision_transformer's layout), told apart by the row
    count as big_vision's own loader tells them (`fix_old_checkpoints`): a square grid plus one."""
    if "pos_embedding" in tree.get(ENCODER, {}):
        tree["pos_embedding"] = tree[ENCODER].pop("pos_embedding")
    if "pos_embedding" not in tree:
        return tree
    table = tree.pop("pos_embedding")
    rows = table.shape[1]
    has_class_row = math.isqrt(rows) ** 2 != rows and math.isqrt(rows - 1) ** 2 == rows - 1
    if "cls" in tree and not has_class_row:
        table = np.concatenate([np.zeros_like(table[:, :1]), table], axis=1)
    tree.setdefault(ENCODER, {})["posembed_input"] = {"pos_embedding": table}
    return tree


def save_npz(params: Mapping[str, Any], path: str | Path) -> None:
    """Writes `params` as the released vision_transformer files are laid out: per-layer blocks with pre-Linen
    names and '/'-joined keys (the class-token row stays in `pos_embedding`); whole or not at all."""
    params = dict(params)
    if SCANNED_BLOCKS in params.get(ENCODER, {}):
        params = unstack_encoder_blocks(params)
    flat = traverse_util.flatten_dict(_to_numpy(params))
    renamed = {"/".join(_pre_linen_path(key)): np.asarray(value) for key, value in flat.items()}
    with written_whole([path]) as (partial,), open(partial, "wb") as f:
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
    from vit_jax.checkpoint.manager import CHECKPOINT_DIR, CheckpointReadError, TrainCheckpoints, model_params
    from vit_jax.entry import check_output  # the commands' checks (which import this module)

    parser = argparse.ArgumentParser(prog="python -m vit_jax.checkpoint.npz", description=main.__doc__.split(":")[0])
    parser.add_argument("--workdir", required=True)
    parser.add_argument("--out", required=True)
    parser.add_argument("--step", type=int, default=None, help="default: the latest")
    args = parser.parse_args(argv)
    try:
        out = check_output(args.out, "--out")
    except ValueError as error:
        parser.exit(2, f"error: {error}\n")
    checkpoints = TrainCheckpoints(Path(args.workdir) / CHECKPOINT_DIR)
    step = checkpoints.latest_step() if args.step is None else args.step
    if step is None or step not in checkpoints.all_steps():
        parser.exit(2, f"error: no checkpoint {'' if step is None else step} in {checkpoints.directory}; "
                       f"steps: {checkpoints.all_steps()}\n")
    try:
        params = model_params(checkpoints.restore(step))
    except CheckpointReadError as error:
        parser.exit(2, f"error: {error}\n")
    out.parent.mkdir(parents=True, exist_ok=True)
    save_npz(params, out)
    print(f"wrote {out} (step {step} of {args.workdir})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
